//! `secrets-store node`: the CSI node agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use secrets_store_api::duration::parse_duration;
use secrets_store_api::names;
use secrets_store_driver::{
    DEFAULT_PROVIDER_VOLUME, DEFAULT_TMPFS_SIZE, Metrics, Mounter, NodeConfig, NodeService,
    ProviderRegistry, ServeConfig, parse_endpoint, serve,
};
use secrets_store_provider::grpc::client::{ClientConfig, ExternalProvider};
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig};
use secrets_store_sync::rollout::Rollout;
use secrets_store_sync::{NodeVolumes, SecretSync, SecretSyncHook, SyncMetrics, reconciler};

/// Prefix of the AWS provider's metrics (`aws_provider_api_calls_total`, …).
const AWS_PROVIDER_METRICS_PREFIX: &str = "aws_provider";
/// Prefix of secret sync's metrics (`secret_sync_secrets_total`, …).
const SYNC_METRICS_PREFIX: &str = "secret_sync";

/// Flags of `secrets-store node` (names follow the upstream driver where it has one).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// CSI endpoint kubelet dials.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (NodeGetInfo, SecretProviderClassPodStatus label).
    #[arg(long, env = "KUBE_NODE_NAME")]
    pub node_id: String,
    /// kubelet's root directory (the registration socket goes in `<dir>/plugins_registry`; every
    /// publish/unpublish target must be `<dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount`
    /// of the requesting pod, and synced Secrets are read back only from such volumes).
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
    #[arg(long, default_value = "0.0.0.0:8095", value_parser = super::parse_addr)]
    pub metrics_addr: super::ListenAddr,
    /// `/healthz` listen address; empty disables.
    #[arg(long, default_value = "0.0.0.0:9808", value_parser = super::parse_addr)]
    pub healthz_addr: super::ListenAddr,
    /// tmpfs size limit of each volume (Kubernetes quantity such as `16Mi`).
    #[arg(long, default_value = DEFAULT_TMPFS_SIZE)]
    pub tmpfs_size: String,
    /// Bytes all mounted volumes on the node may hold together (a quantity such as `32Mi`).
    /// tmpfs pages are charged to the agent's memory cgroup, so the agent's memory limit must
    /// cover this plus its own working set; a volume that would exceed it fails to mount with
    /// `NodeSecretBudgetExceeded` instead of the agent being OOM-killed.
    #[arg(long, default_value = "32Mi", value_parser = super::parse_bytes)]
    pub node_secret_budget: u64,
    /// Largest gRPC message accepted from kubelet and from providers, bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_call_recv_msg_size: usize,
    /// Re-fetch mounted objects on kubelet's republishes (the CSIDriver has `requiresRepublish`).
    #[arg(long, env = "ENABLE_SECRET_ROTATION")]
    pub enable_secret_rotation: bool,
    /// How often rotation re-fetches a mounted volume, from its last successful fetch, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub rotation_poll_interval: Duration,
    /// With rotation, also re-fetch mounted volumes on the poll interval by ourselves, with the
    /// tokens of kubelet's last publish, so a change lands after the poll interval rather than
    /// after it plus kubelet's sync period. `false`: only on kubelet's republishes, as upstream.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub rotation_self_refresh: bool,
    /// How long one publish may take to fetch, write and record a volume before it fails with
    /// `DeadlineExceeded` (kubelet's own deadline is 2 minutes), e.g. `90s`.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Sync `secretObjects` as Kubernetes Secrets (needs the Secret RBAC of `syncSecret.enabled`).
    #[arg(long, env = "ENABLE_SECRET_SYNC")]
    pub enable_secret_sync: bool,
    /// How often synced Secrets are checked for drift besides on every change, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub secret_reconcile_interval: Duration,
    /// Who rolls opted-in workloads when a synced Secret's data changes: `node`, this agent right
    /// after it writes the Secret (needs `patch` on Deployments, StatefulSets and DaemonSets), or
    /// `off` (the cluster's `secrets-store controller` does it, or nobody).
    #[arg(long, value_enum, default_value_t = NodeRollout::Node)]
    pub rollout: NodeRollout,
    /// The agent's own namespace (holds the rollout digest key).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Do not serve the built-in AWS provider (use an external `aws.sock` instead).
    #[arg(long)]
    pub no_aws_provider: bool,
    /// Seconds the AWS provider shares a fetched value between pods of the same identity
    /// (fractions allowed, or `2s`-style; 0 disables). The same flag and variable as
    /// `secrets-store provider-aws`.
    #[arg(long, env = super::AWS_CACHE_TTL_ENV, default_value = "5", value_parser = parse_duration)]
    pub aws_cache_ttl_seconds: Duration,
    /// Periodically call `Version` on every external provider socket and log unhealthy ones.
    #[arg(long)]
    pub provider_health_check: bool,
    /// Period of the provider health check, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub provider_health_check_interval: Duration,
}

/// Who rolls workloads after a synced Secret changes (`--rollout`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRollout {
    /// The node agent that wrote the Secret (the behaviour without the controller).
    Node,
    /// Not the node agent (with `secrets-store controller`, which rolls from the cluster).
    Off,
}

/// Runs the node agent until SIGTERM/SIGINT.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.node_id.is_empty(),
        "--node-id (KUBE_NODE_NAME) is empty"
    );
    let client = super::kube_client("node")
        .await
        .context("building the Kubernetes client (in-cluster config or KUBECONFIG)")?;

    // The binary owns the registry `/metrics` serves: the driver keeps upstream's unprefixed
    // names at its root, every other part gets a sub-registry under its own prefix.
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut providers = ProviderRegistry::new(
        args.provider_volume.clone(),
        args.additional_provider_volume_paths.clone(),
    )
    .with_connector(Arc::new(external_connector(args.max_call_recv_msg_size)));
    if !args.no_aws_provider {
        providers = providers.with_builtin(Arc::new(
            aws_provider(
                &client,
                &args,
                registry.sub_registry_with_prefix(AWS_PROVIDER_METRICS_PREFIX),
            )
            .await,
        ));
    }

    tracing::info!(
        node = %args.node_id,
        rotation = args.enable_secret_rotation,
        rotation_poll_interval = ?args.rotation_poll_interval,
        secret_sync = args.enable_secret_sync,
        rollout = ?args.rollout,
        "starting node agent"
    );
    let mut service = NodeService::new(
        NodeConfig {
            node_id: args.node_id.clone(),
            kubelet_dir: args.kubelet_dir.clone(),
        },
        client.clone(),
        Mounter::new(args.tmpfs_size.clone()),
        providers,
        metrics,
        Vec::new(),
    );
    service = service
        .with_publish_timeout(args.publish_timeout)
        .with_node_budget(args.node_secret_budget);
    if args.enable_secret_rotation {
        service = service.with_rotation(args.rotation_poll_interval);
    }
    let mut secret_sync = None;
    if args.enable_secret_sync {
        let node = NodeVolumes::new(&args.node_id, &args.kubelet_dir);
        let (sync, watches) = SecretSync::new(client.clone(), node, Arc::new(service.classes()));
        let sync = match args.rollout {
            NodeRollout::Node => sync.with_rollout(node_rollout(&client, &args)),
            NodeRollout::Off => sync,
        };
        let sync = sync.with_metrics(SyncMetrics::register(
            registry.sub_registry_with_prefix(SYNC_METRICS_PREFIX),
        ));
        // The watches fill the syncer's caches and trigger its drift reconciler.
        tokio::spawn(watches.reconcile(reconciler::Context::new(
            sync.clone(),
            names::reporter(&args.node_id),
            args.secret_reconcile_interval,
        )));
        secret_sync = Some(sync.clone());
        service = service.with_hook(Arc::new(SecretSyncHook::new(sync)));
    }
    if args.provider_health_check {
        let dirs: Vec<PathBuf> = args
            .additional_provider_volume_paths
            .iter()
            .chain(std::iter::once(&args.provider_volume))
            .cloned()
            .collect();
        tokio::spawn(provider_health_check(
            dirs,
            args.provider_health_check_interval,
        ));
    }
    // Before anything publishes: kubelet's calls and the self-refresh alike.
    if let Some(sync) = secret_sync {
        await_secret_sync(&sync).await;
    }
    if args.rotation_self_refresh {
        // Rotation reaches pods after the poll interval, not after it plus kubelet's sync period.
        tokio::spawn(service.clone().refresh_mounted());
    }
    let config = ServeConfig {
        csi_socket: parse_endpoint(&args.endpoint),
        kubelet_dir: (!args.no_registration).then(|| args.kubelet_dir.clone()),
        metrics_addr: args.metrics_addr.0,
        metrics_registry: Arc::new(registry),
        healthz_addr: args.healthz_addr.0,
        max_recv_msg_size: args.max_call_recv_msg_size,
    };
    serve(service, config, super::signal::shutdown())
        .await
        .context("serving the node agent")
}

/// How long the agent waits for the secret sync watches' first list before it serves anyway
/// (well inside the chart's liveness allowance of 10 s + 5 × 15 s: `/healthz` is served with the
/// CSI socket).
const SYNC_CACHE_WAIT: Duration = Duration::from_secs(30);

/// Waits (at most [`SYNC_CACHE_WAIT`]) until the secret sync watches have listed once. A publish
/// served before would compute a synced Secret's owners from an empty list of this node's pod
/// statuses and drop every other consumer from them. Past the bound kubelet gets served anyway:
/// an unreachable API server must not keep the driver unregistered.
async fn await_secret_sync(sync: &SecretSync) {
    let started = std::time::Instant::now();
    match tokio::time::timeout(SYNC_CACHE_WAIT, sync.ready()).await {
        Ok(()) => tracing::info!(
            waited = ?started.elapsed(),
            "secret sync caches listed; serving"
        ),
        Err(_) => tracing::warn!(
            waited = ?SYNC_CACHE_WAIT,
            "secret sync caches not listed yet (is the API server reachable?); serving anyway: until they are, a synced Secret's owners may miss other pods on this node"
        ),
    }
}

/// Builds the in-process AWS provider; its metrics go into `registry` (its sub-registry).
async fn aws_provider(
    client: &kube::Client,
    args: &NodeArgs,
    registry: &mut Registry,
) -> AwsProvider {
    let mut aws_config = AwsProviderConfig {
        cache_ttl: args.aws_cache_ttl_seconds,
        ..AwsProviderConfig::from_env()
    };
    if aws_config.default_region.is_none() {
        // Best effort: an unreachable API server must not stop the agent from starting.
        match secrets_store_provider_aws::node_region(client, &args.node_id).await {
            Ok(region) => aws_config.default_region = region,
            Err(e) => tracing::warn!(error = %e, "could not read the node's region label"),
        }
    }
    let metrics = secrets_store_provider_aws::Metrics::default();
    metrics.register(registry);
    AwsProvider::new(aws_config, client.clone(), metrics).await
}

/// Connects provider names without a built-in implementation to `<dir>/<name>.sock`.
fn external_connector(
    max_response_bytes: usize,
) -> impl Fn(&str, &std::path::Path) -> Arc<dyn secrets_store_provider::Provider> + Send + Sync + 'static
{
    move |name, socket| {
        Arc::new(ExternalProvider::with_config(
            name,
            socket,
            ClientConfig {
                max_response_bytes,
                ..ClientConfig::default()
            },
        ))
    }
}

/// The node agent's rollout. Opt-in per workload; its key is loaded on first use (and retried), so
/// an unreachable API server or a malformed key Secret never stops the agent or the sync.
fn node_rollout(client: &kube::Client, args: &NodeArgs) -> Rollout {
    let rollout = Rollout::new(
        client.clone(),
        &args.namespace,
        names::reporter(&args.node_id),
    );
    tokio::spawn({
        let rollout = rollout.clone();
        async move {
            if let Err(e) = rollout.load_key().await {
                tracing::warn!(error = %e, "rollout on Secret change unavailable for now");
            }
        }
    });
    rollout
}

/// Calls `Version` on every provider socket each `period` and logs the ones that do not answer
/// (upstream's `--provider-health-check`; our own providers are in process).
async fn provider_health_check(dirs: Vec<PathBuf>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        for dir in &dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".sock"))
                else {
                    continue;
                };
                let provider = ExternalProvider::new(name, &path);
                match provider.probe_version().await {
                    Ok(_) => tracing::debug!(provider = name, "provider healthy"),
                    Err(e) => {
                        tracing::warn!(provider = name, socket = %path.display(), error = %e, "provider health check failed")
                    }
                }
            }
        }
    }
}
