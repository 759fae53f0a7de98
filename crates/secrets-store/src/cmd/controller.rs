//! `secrets-store controller`: the cluster-wide controllers, one leader at a time.
//!
//! Every replica serves `/healthz` and `/metrics` and competes for a Lease; only the holder runs
//! the leader-only controllers ([`leader_only_controllers`]), and it stops them as soon as it can
//! no longer vouch for the lease.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::runtime::events::Reporter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig};
use secrets_store_sync::leader::{Leadership, LeaseConfig, run_while_leader, unique_identity};
use secrets_store_sync::podless::{self, PodlessConfig, PodlessContext, PodlessMetrics};
use secrets_store_sync::rollout::RolloutMetrics;
use secrets_store_sync::rollout::controller as rollout;

use super::{ListenAddr, parse_addr};
use secrets_store_api::duration::parse_duration;

/// Flags of `secrets-store controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The controller's own namespace: it holds the leader Lease and the rollout digest key (the
    /// release namespace, shared with the node agents).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "secrets-store-rs-controller")]
    pub lease_name: String,
    /// This replica's name in the Lease (a random suffix is added so that no two processes share
    /// one). Default: the pod name, else the host name.
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
    /// Seconds a standby waits, after last seeing the Lease renewed, before taking it over
    /// (fractions allowed).
    #[arg(long, default_value = "15", value_parser = parse_duration)]
    pub lease_duration_seconds: Duration,
    /// Seconds the leader keeps acting without a successful renewal; must be shorter than the
    /// lease duration, so it stops before a standby may take over.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    pub lease_renew_deadline_seconds: Duration,
    /// Seconds between acquire tries and between renewals.
    #[arg(long, default_value = "2", value_parser = parse_duration)]
    pub lease_retry_period_seconds: Duration,
    /// `/metrics` listen address; empty disables.
    #[arg(long, default_value = "0.0.0.0:8095", value_parser = parse_addr)]
    pub metrics_addr: ListenAddr,
    /// `/healthz` listen address; empty disables.
    #[arg(long, default_value = "0.0.0.0:9808", value_parser = parse_addr)]
    pub healthz_addr: ListenAddr,
    /// Keep the `secretObjects` Secrets of SecretProviderClasses that opted in to sync without a
    /// pod (the chart's `controller.podlessSync.enabled`, which also grants the token minting it
    /// needs and confines it by admission policy).
    #[arg(long)]
    pub podless_sync: bool,
}

/// What the leader-only controllers share: built once per process, used by every leadership.
/// Each holds the process's `Leadership` and checks it before every write.
struct Shared {
    rollout: Arc<rollout::Context>,
    podless: Option<PodlessParts>,
}

/// What each leadership's pod-less sync is built from: the AWS provider (and its credential
/// caches) and the metrics outlive a leadership; the context, its watches and tokens do not.
struct PodlessParts {
    client: kube::Client,
    provider: Arc<dyn secrets_store_provider::Provider>,
    metrics: PodlessMetrics,
    reporter: Reporter,
}

/// The controllers that run only while this replica holds the Lease; each is dropped (stopped)
/// when the lease is lost, and built anew on the next leadership.
fn leader_only_controllers(shared: &Shared) -> Vec<BoxFuture<'static, ()>> {
    let mut controllers = vec![rollout::run(shared.rollout.clone()).boxed()];
    if let Some(parts) = &shared.podless {
        let ctx = PodlessContext::new(
            parts.client.clone(),
            parts.provider.clone(),
            PodlessConfig::default(),
            parts.metrics.clone(),
            parts.reporter.clone(),
        );
        // Stopped by being dropped when the lease is lost, like the rollout controller.
        controllers.push(podless::run(ctx, std::future::pending()).boxed());
    }
    controllers
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = super::kube_client("controller").await?;
    let prefix = args.leader_identity.clone().unwrap_or_else(host_name);
    let lease = LeaseConfig {
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: unique_identity(&prefix),
        lease_duration: args.lease_duration_seconds,
        renew_deadline: args.lease_renew_deadline_seconds,
        retry_period: args.lease_retry_period_seconds,
    };
    lease
        .validate()
        .map_err(|e| anyhow::anyhow!("leader election flags: {e}"))?;

    let mut registry = Registry::default();
    let leader = Gauge::<i64>::default();
    registry.register(
        "controller_leader",
        "1 while this replica holds the leader Lease and runs the leader-only controllers",
        leader.clone(),
    );
    let rollout_metrics = RolloutMetrics::register(registry.sub_registry_with_prefix("rollout"));
    let reporter = secrets_store_api::names::controller_reporter(&lease.identity);
    let leadership = Leadership::default();
    let podless = if args.podless_sync {
        Some(podless_parts(&client, &reporter, &mut registry).await)
    } else {
        None
    };
    let shared = Shared {
        rollout: Arc::new(rollout::Context::new(
            client.clone(),
            &args.namespace,
            reporter,
            rollout_metrics,
            leadership.clone(),
        )),
        podless,
    };
    let http = serve_http(&args, Arc::new(registry)).await?;
    tracing::info!(identity = %lease.identity, lease = %format!("{}/{}", lease.namespace, lease.name), "starting controller");
    let result = run_while_leader(
        client,
        lease,
        leadership,
        || leader_only_controllers(&shared),
        super::signal::shutdown(),
        |leading| {
            leader.set(i64::from(leading));
        },
    )
    .await;
    http.abort();
    result.context("leader election")?;
    tracing::info!("stopped");
    Ok(())
}

/// The in-process AWS provider for pod-less sync, configured from the environment as the node
/// agent's is (IRSA only: the provider refuses Pod Identity for classes without a pod).
async fn podless_parts(
    client: &kube::Client,
    reporter: &Reporter,
    registry: &mut Registry,
) -> PodlessParts {
    let aws_metrics = secrets_store_provider_aws::Metrics::default();
    aws_metrics.register(registry.sub_registry_with_prefix("aws_provider"));
    let provider =
        AwsProvider::new(AwsProviderConfig::from_env(), client.clone(), aws_metrics).await;
    let metrics = PodlessMetrics::default();
    metrics.register(registry);
    PodlessParts {
        client: client.clone(),
        provider: Arc::new(provider),
        metrics,
        reporter: reporter.clone(),
    }
}

/// Serves `/metrics` and `/healthz` (every replica, leader or not) until aborted.
async fn serve_http(
    args: &ControllerArgs,
    registry: Arc<Registry>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let healthz = Router::new().route("/healthz", get(|| async { "ok" }));
    let mut servers = tokio::task::JoinSet::new();
    for (addr, router) in [(args.metrics_addr, metrics), (args.healthz_addr, healthz)] {
        let Some(addr) = addr.0 else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        servers.spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(%addr, error = %e, "HTTP server failed");
            }
        });
    }
    Ok(tokio::spawn(async move {
        while servers.join_next().await.is_some() {}
    }))
}

/// The host name (a pod's name when `POD_NAME` is not set), for the leader identity.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "secrets-store-controller".into())
}
