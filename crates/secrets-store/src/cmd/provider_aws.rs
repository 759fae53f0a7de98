//! `secrets-store provider-aws`: the AWS provider alone, serving upstream's
//! `v1alpha1.CSIDriverProvider` API on a unix socket, for clusters that keep the upstream driver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrets_store_api::duration::parse_duration;
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig, Metrics, PodIdentityAgentConfig};

/// Flags of `secrets-store provider-aws`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderAwsArgs {
    /// Unix socket to serve the provider API on (the upstream driver's `--provider-dir`/aws.sock).
    #[arg(
        long,
        env = "PROVIDER_SOCKET",
        default_value = "/var/run/secrets-store-csi-providers/aws.sock"
    )]
    pub socket: PathBuf,
    /// Region for classes that set none (else the node's topology.kubernetes.io/region label).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// This node's name, to read its region label when no region is configured.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// One endpoint for every AWS service (normally unset; `AWS_ENDPOINT_URL*` also work).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Seconds a fetched value serves other mounts of the same identity (fractions allowed, or
    /// a duration such as `500ms`; 0 disables). The same flag and variable as
    /// `secrets-store node`.
    #[arg(long, env = super::AWS_CACHE_TTL_ENV, default_value = "5", value_parser = parse_duration)]
    pub aws_cache_ttl_seconds: Duration,
    /// Deprecated spelling of `--aws-cache-ttl-seconds`; still accepted (with a warning) so
    /// existing manifests keep working.
    #[arg(long = "cache-ttl-seconds", hide = true, value_parser = parse_duration)]
    pub deprecated_cache_ttl_seconds: Option<Duration>,
    /// EKS Pod Identity Agent URL (IPv4).
    #[arg(long, default_value = secrets_store_provider_aws::POD_IDENTITY_AGENT_IPV4_URL)]
    pub pod_identity_agent_ipv4_url: String,
    /// EKS Pod Identity Agent URL (IPv6).
    #[arg(long, default_value = secrets_store_provider_aws::POD_IDENTITY_AGENT_IPV6_URL)]
    pub pod_identity_agent_ipv6_url: String,
}

impl ProviderAwsArgs {
    /// The coalescing TTL: `--aws-cache-ttl-seconds`, or the deprecated `--cache-ttl-seconds`
    /// when that was given.
    fn cache_ttl(&self) -> Duration {
        match self.deprecated_cache_ttl_seconds {
            Some(ttl) => {
                tracing::warn!(
                    "--cache-ttl-seconds is deprecated and will be removed; use --aws-cache-ttl-seconds (the name `secrets-store node` uses)"
                );
                ttl
            }
            None => self.aws_cache_ttl_seconds,
        }
    }
}

/// Runs the provider server until SIGINT/SIGTERM.
pub async fn run(args: ProviderAwsArgs) -> anyhow::Result<()> {
    let client = super::kube_client("provider-aws").await.context(
        "connecting to the Kubernetes API (ServiceAccount role annotations are read there)",
    )?;
    let mut config = AwsProviderConfig::from_env();
    config.endpoint_url = args.endpoint_url.clone();
    config.cache_ttl = args.cache_ttl();
    config.pod_identity = PodIdentityAgentConfig {
        ipv4_url: args.pod_identity_agent_ipv4_url.clone(),
        ipv6_url: args.pod_identity_agent_ipv6_url.clone(),
        ..PodIdentityAgentConfig::default()
    };
    if args.region.is_some() {
        config.default_region = args.region.clone();
    }
    if config.default_region.is_none()
        && let Some(node) = &args.node_name
    {
        config.default_region = secrets_store_provider_aws::node_region(&client, node)
            .await
            .with_context(|| format!("reading the region label of node {node}"))?;
    }
    let provider: Arc<dyn secrets_store_provider::Provider> =
        Arc::new(AwsProvider::new(config, client, Metrics::default()).await);
    tracing::info!(socket = %args.socket.display(), "serving the AWS provider");
    secrets_store_provider::grpc::server::serve(provider, &args.socket, super::signal::shutdown())
        .await
        .context("serving the provider API")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProviderAwsArgs,
    }

    fn parse(flags: &[&str]) -> ProviderAwsArgs {
        let argv = std::iter::once("provider-aws").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    #[test]
    fn the_cache_ttl_has_one_name_and_a_hidden_deprecated_alias() {
        assert_eq!(
            parse(&["--aws-cache-ttl-seconds", "0.5"]).cache_ttl(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse(&["--cache-ttl-seconds", "2"]).cache_ttl(),
            Duration::from_secs(2)
        );
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--aws-cache-ttl-seconds"), "{help}");
        assert!(!help.contains("--cache-ttl-seconds"), "{help}");
    }
}
