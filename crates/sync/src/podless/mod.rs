//! Sync without a pod: a SecretProviderClass that names an opted-in ServiceAccount gets its
//! `secretObjects` Secrets kept from AWS by the cluster controller, with no pod mounting it.
//!
//! The class opts in with annotations ([`secrets_store_api::labels::PODLESS_SERVICE_ACCOUNT`],
//! [`secrets_store_api::labels::PODLESS_REFRESH_INTERVAL`]); the ServiceAccount with a label
//! ([`secrets_store_api::labels::PODLESS_OPT_IN`]), so that a class author cannot borrow an
//! identity its owner did not lend, and so that the chart's admission policy can refuse every
//! other token the controller might ask for. Each run mints a token of that ServiceAccount for
//! `sts.amazonaws.com` only, calls the in-process AWS provider exactly as a mount would (same
//! parameters, identity keys, credential cache and batching), and writes the Secrets through
//! the node path's writer (same names, types, labels, keys and precondition rules), owned by the
//! class unless it asks to retain them. Files never touch a disk.
//!
//! Shape of kube-rs's controller-rs: [`run`] drives a `Controller` over every namespace's
//! classes (bounded concurrency), [`reconcile`] and [`error_policy`] are plain functions of the
//! object and the [`PodlessContext`].

mod config;
mod error;
mod metrics;
mod reconcile;
mod request;
mod status;
mod token;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_api::labels::{PODLESS_OPT_IN, PODLESS_SERVICE_ACCOUNT};
use secrets_store_provider::Provider;

use crate::syncer::{FIELD_MANAGER_PREFIX, SecretWriter};

pub use config::{InvalidOptIn, JITTER, OptIn, RefreshBounds, jittered, opt_in};
pub use error::PodlessError;
pub use metrics::PodlessMetrics;
pub use reconcile::{error_policy, reconcile, retry_after};
pub use request::mount_request;
pub use status::{READY, STALE};
pub use token::AUDIENCE;

/// How the pod-less sync runs.
#[derive(Clone, Debug)]
pub struct PodlessConfig {
    /// The refresh intervals classes may ask for.
    pub bounds: RefreshBounds,
    /// Classes reconciled at once (each holds at most one provider call).
    pub concurrency: u16,
    /// Life of each minted token, seconds (the API server's minimum is 600; the chart's
    /// admission policy refuses more than 3600).
    pub token_expiration_seconds: i64,
    /// The field manager of the Secrets and statuses it writes; it starts with
    /// [`FIELD_MANAGER_PREFIX`], so the node agents' drift reconcilers take its data for
    /// secrets-store's own and never write an older volume's over it.
    pub field_manager: String,
}

impl Default for PodlessConfig {
    fn default() -> Self {
        Self {
            bounds: RefreshBounds::default(),
            concurrency: 8,
            token_expiration_seconds: 600,
            field_manager: format!("{FIELD_MANAGER_PREFIX}controller"),
        }
    }
}

/// What every reconcile shares: the client, the in-process AWS provider, the Secret writer,
/// the Event recorder, metrics and configuration.
pub struct PodlessContext {
    client: Client,
    provider: Arc<dyn Provider>,
    writer: SecretWriter,
    recorder: Recorder,
    metrics: PodlessMetrics,
    config: PodlessConfig,
    /// Tokens reused across runs while young (keyed by namespace and ServiceAccount).
    tokens: token::TokenCache,
    /// The writer's watch of managed Secrets, taken and driven by [`run`].
    secret_watch: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl PodlessContext {
    /// A context calling `provider` (the in-process AWS provider, built as the node agent builds
    /// it; its caches are shared with nothing else), counting into `metrics` (registered once by
    /// the caller with [`PodlessMetrics::register`]). One context serves one [`run`]: after a lost
    /// leadership, build another (the provider and the metrics can be the same).
    pub fn new(
        client: Client,
        provider: Arc<dyn Provider>,
        config: PodlessConfig,
        metrics: PodlessMetrics,
        reporter: Reporter,
    ) -> Arc<Self> {
        let (writer, secret_watch) =
            SecretWriter::new(client.clone(), config.field_manager.clone());
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            provider,
            writer,
            metrics,
            config,
            tokens: token::TokenCache::default(),
            secret_watch: Mutex::new(Some(secret_watch)),
        })
    }

    /// The metrics (for tests and the controller's `/metrics`).
    pub fn metrics(&self) -> &PodlessMetrics {
        &self.metrics
    }
}

/// Debounce of the controller's triggers: a burst of edits to one class runs it once.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// Keeps the Secrets of every opted-in class until `shutdown` completes: watches every
/// namespace's SecretProviderClasses and the ServiceAccounts that carry the opt-in label (an
/// opt-in or opt-out re-runs the classes that name it). Call once per context; a second call
/// returns at once.
pub async fn run(
    ctx: Arc<PodlessContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(secret_watch) = ctx
        .secret_watch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        tracing::error!("pod-less sync already running with this context");
        return;
    };
    let watch = tokio::spawn(secret_watch);
    ctx.writer.ready().await;
    let classes: Api<SecretProviderClass> = Api::all(ctx.client.clone());
    let controller = Controller::new(classes, watcher::Config::default()).with_config(
        controller::Config::default()
            .concurrency(ctx.config.concurrency)
            .debounce(DEBOUNCE),
    );
    let store = controller.store();
    // Labelled ServiceAccounts only, metadata only: memory follows the opted-in accounts.
    let accounts: Api<PartialObjectMeta<ServiceAccount>> = Api::all(ctx.client.clone());
    let opted = watcher::Config::default().labels(PODLESS_OPT_IN);
    controller
        .watches(accounts, opted, move |account| {
            let namespace = account.namespace();
            let name = account.name_any();
            store
                .state()
                .into_iter()
                .filter(|class| {
                    class.namespace() == namespace
                        && class
                            .annotations()
                            .get(PODLESS_SERVICE_ACCOUNT)
                            .is_some_and(|a| *a == name)
                })
                .map(|class| ObjectRef::from_obj(&*class))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "pod-less sync controller");
            }
        })
        .await;
    watch.abort();
}
