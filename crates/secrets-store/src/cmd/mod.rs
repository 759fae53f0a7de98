//! One module per subcommand.

pub mod controller;
pub mod crds;
pub mod node;
pub mod provider_aws;
pub mod signal;

/// The Kubernetes client of `component` (in-cluster config or `KUBECONFIG`), sending
/// `User-Agent: secrets-store-rs/<version> (<component>)` so that audit logs and API server
/// metrics tell our requests apart (kube-rs sends none of its own).
pub async fn kube_client(component: &str) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes client config (in-cluster or KUBECONFIG)")?;
    let agent = format!(
        "{}/{} ({component})",
        secrets_store_api::names::PRODUCT,
        env!("CARGO_PKG_VERSION")
    );
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("user agent")?,
    ));
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// A listen address, or none (the flag set to the empty string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub Option<std::net::SocketAddr>);

/// A listen address flag as a clap value parser: `host:port`, or empty for none.
pub fn parse_addr(s: &str) -> Result<ListenAddr, String> {
    if s.is_empty() {
        return Ok(ListenAddr(None));
    }
    s.parse()
        .map(|a| ListenAddr(Some(a)))
        .map_err(|e| format!("invalid address {s:?}: {e}"))
}

/// The environment variable of the AWS provider's coalescing TTL (`--aws-cache-ttl-seconds`),
/// read by `secrets-store node` and `secrets-store provider-aws` alike.
pub const AWS_CACHE_TTL_ENV: &str = "AWS_PROVIDER_CACHE_TTL_SECONDS";

/// A byte count as a Kubernetes quantity (`32Mi`, `512Ki`, `1Gi`) or plain bytes, as a clap
/// value parser.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|d| (d, unit)))
        .unwrap_or((s, 1));
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("invalid size {s:?}: expected e.g. 32Mi, 512Ki or 1048576"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn empty_address_disables() {
        assert_eq!(super::parse_addr(""), Ok(super::ListenAddr(None)));
        assert!(super::parse_addr("127.0.0.1:9808").unwrap().0.is_some());
        assert!(super::parse_addr("nope").is_err());
    }

    #[test]
    fn bytes_take_binary_quantities() {
        assert_eq!(super::parse_bytes("32Mi"), Ok(32 << 20));
        assert_eq!(super::parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(super::parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(super::parse_bytes("4096"), Ok(4096));
        for bad in ["", "Mi", "-1Mi", "1.5Mi", "32MB", "99999999999Gi"] {
            assert!(super::parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
