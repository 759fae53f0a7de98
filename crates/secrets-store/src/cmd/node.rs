//! `secrets-store node`: the CSI node agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrets_store_driver::mounter::DEFAULT_TMPFS_SIZE;
use secrets_store_driver::server::{ServeConfig, parse_endpoint, serve};
use secrets_store_driver::{
    DEFAULT_PROVIDER_VOLUME, Metrics, Mounter, NodeConfig, NodeService, ProviderRegistry,
};
use secrets_store_provider::grpc::client::{ClientConfig, ExternalProvider};
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig};

/// Flags of `secrets-store node` (names follow the upstream driver where it has one).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// CSI endpoint kubelet dials.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (NodeGetInfo, SecretProviderClassPodStatus label).
    #[arg(long, env = "KUBE_NODE_NAME")]
    pub node_id: String,
    /// kubelet's root directory (the registration socket goes in `<dir>/plugins_registry`).
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Do not serve kubelet's plugin registration API (when node-driver-registrar is deployed).
    #[arg(long)]
    pub no_registration: bool,
    /// Directory of external provider sockets (`<dir>/<provider>.sock`).
    #[arg(long, env = "PROVIDER_VOLUME", default_value = DEFAULT_PROVIDER_VOLUME)]
    pub provider_volume: PathBuf,
    /// Further provider socket directories, searched before `--provider-volume`.
    #[arg(long, value_delimiter = ',')]
    pub additional_provider_volume_paths: Vec<PathBuf>,
    /// `/metrics` listen address; empty disables.
    #[arg(long, default_value = "0.0.0.0:8095", value_parser = parse_addr)]
    pub metrics_addr: ListenAddr,
    /// `/healthz` listen address; empty disables.
    #[arg(long, default_value = "0.0.0.0:9808", value_parser = parse_addr)]
    pub healthz_addr: ListenAddr,
    /// tmpfs size limit of each volume (Kubernetes quantity such as `16Mi`).
    #[arg(long, default_value = DEFAULT_TMPFS_SIZE)]
    pub tmpfs_size: String,
    /// Largest gRPC message accepted from kubelet and from providers, bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_call_recv_msg_size: usize,
    /// How often rotation re-fetches mounted objects (used once rotation is enabled), e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub rotation_poll_interval: Duration,
}

/// A listen address, or none (the flag set to the empty string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

fn parse_addr(s: &str) -> Result<ListenAddr, String> {
    if s.is_empty() {
        return Ok(ListenAddr(None));
    }
    s.parse()
        .map(|a| ListenAddr(Some(a)))
        .map_err(|e| format!("invalid address {s:?}: {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 2m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Runs the node agent until SIGTERM/SIGINT.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.node_id.is_empty(),
        "--node-id (KUBE_NODE_NAME) is empty"
    );
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster config or KUBECONFIG)")?;

    let mut aws_config = AwsProviderConfig::from_env();
    if aws_config.default_region.is_none() {
        // Best effort: an unreachable API server must not stop the agent from starting.
        match secrets_store_provider_aws::node_region(&client, &args.node_id).await {
            Ok(region) => aws_config.default_region = region,
            Err(e) => tracing::warn!(error = %e, "could not read the node's region label"),
        }
    }
    let aws = AwsProvider::new(
        aws_config,
        client.clone(),
        secrets_store_provider_aws::Metrics::default(),
    )
    .await;

    let max_response = args.max_call_recv_msg_size;
    let providers = ProviderRegistry::new(
        args.provider_volume.clone(),
        args.additional_provider_volume_paths.clone(),
    )
    .with_builtin(Arc::new(aws))
    .with_connector(Arc::new(
        move |name: &str, socket: &std::path::Path| -> Arc<dyn secrets_store_provider::Provider> {
            Arc::new(ExternalProvider::with_config(
                name,
                socket,
                ClientConfig {
                    max_response_bytes: max_response,
                    ..ClientConfig::default()
                },
            ))
        },
    ));

    tracing::info!(
        node = %args.node_id,
        rotation_poll_interval = ?args.rotation_poll_interval,
        "starting node agent"
    );
    let service = NodeService::new(
        NodeConfig {
            node_id: args.node_id.clone(),
        },
        client,
        Mounter::new(args.tmpfs_size.clone()),
        providers,
        Metrics::default(),
        Vec::new(),
    );
    let config = ServeConfig {
        csi_socket: parse_endpoint(&args.endpoint),
        kubelet_dir: (!args.no_registration).then(|| args.kubelet_dir.clone()),
        metrics_addr: args.metrics_addr.0,
        healthz_addr: args.healthz_addr.0,
        max_recv_msg_size: args.max_call_recv_msg_size,
    };
    serve(service, config, super::signal::shutdown())
        .await
        .context("serving the node agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn empty_address_disables() {
        assert_eq!(parse_addr(""), Ok(ListenAddr(None)));
        assert!(parse_addr("127.0.0.1:9808").unwrap().0.is_some());
        assert!(parse_addr("nope").is_err());
    }
}
