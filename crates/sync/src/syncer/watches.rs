//! The watches behind [`super::SecretSync`]'s caches, bounded by this node: its pods (by
//! `spec.nodeName`), its pod statuses (by node label) and the metadata of managed Secrets (by
//! label, metadata only: any tenant may put the label on any number of Secrets of any size, and
//! their data is read only for the Secrets this node writes).
//!
//! Driven alone ([`SyncWatches::drive`]) they only fill the caches; driven as the drift
//! reconciler ([`SyncWatches::reconcile`]) the same two streams of statuses and Secrets trigger a
//! kube-runtime `Controller`, so no object is watched twice.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_api::labels;

use super::write::{SecretVersions, VerifiedVersions, keep_version_only};
use crate::reconciler::{
    Context, RECONCILE_CONCURRENCY, RECONCILE_DEBOUNCE, error_policy, reconcile,
};

type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// The caches the watches fill.
pub(super) struct Stores {
    pub(super) statuses: Store<SecretProviderClassPodStatus>,
    pub(super) pods: Store<Pod>,
    pub(super) secrets: SecretVersions,
}

/// The syncer's watch streams, not yet driven.
pub struct SyncWatches {
    statuses: Events<SecretProviderClassPodStatus>,
    status_store: Store<SecretProviderClassPodStatus>,
    pods: Events<Pod>,
    pod_store: Store<Pod>,
    secrets: Events<PartialObjectMeta<Secret>>,
}

impl SyncWatches {
    /// The watches of node `node_name`; `verified` forgets Secrets the watch loses.
    pub(super) fn new(
        client: &Client,
        node_name: &str,
        verified: VerifiedVersions,
    ) -> (Self, Stores) {
        let (statuses, status_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let status_events = watcher(
            Api::<SecretProviderClassPodStatus>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}={node_name}", labels::NODE_NAME)),
        )
        .default_backoff()
        .reflect(status_writer)
        .boxed();
        let pod_events = watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
        )
        .default_backoff()
        .reflect(pod_writer)
        .boxed();
        let secret_events = managed_secret_events(client, secret_writer, secrets.clone(), verified);
        let watches = Self {
            statuses: status_events,
            status_store: statuses.clone(),
            pods: pod_events,
            pod_store: pods.clone(),
            secrets: secret_events,
        };
        let stores = Stores {
            statuses,
            pods,
            secrets,
        };
        (watches, stores)
    }

    /// Fills the caches, reconciling nothing (a syncer used only on publishes, as in tests).
    pub fn drive(self) -> BoxFuture<'static, ()> {
        async move {
            futures::join!(
                self.statuses.for_each(|_| async {}),
                self.pods.for_each(|_| async {}),
                self.secrets.for_each(|_| async {}),
            );
        }
        .boxed()
    }

    /// Fills the caches and runs the drift reconciler with `ctx` (built on the syncer these
    /// watches belong to): each status is reconciled when it changes, when a managed Secret it
    /// produces changes, and as [`reconcile`] and [`error_policy`] requeue it; debounced, at
    /// most [`RECONCILE_CONCURRENCY`] at once, never one status twice at once.
    pub fn reconcile(self, ctx: Arc<Context>) -> BoxFuture<'static, ()> {
        let forget = ctx.clone();
        let live = self.status_store.clone();
        let statuses = self
            .statuses
            .inspect_ok(move |event| match event {
                watcher::Event::Delete(status) => forget.forget(status),
                watcher::Event::InitDone => forget.retain(|s| live.get(s).is_some()),
                _ => {}
            })
            .applied_objects();
        let mapper_ctx = ctx.clone();
        let secrets = self.secrets.touched_objects();
        let controller = Controller::for_stream(statuses, self.status_store)
            .watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
                mapper_ctx.producers_of(&secret.namespace().unwrap_or_default(), &secret.name_any())
            })
            .with_config(
                controller::Config::default()
                    .debounce(RECONCILE_DEBOUNCE)
                    .concurrency(RECONCILE_CONCURRENCY),
            );
        let pods_listed = self.pod_store;
        let reconciles = async move {
            // Before this node's pods are listed every status would find no pod and be skipped
            // for a whole period.
            let _ = pods_listed.wait_until_ready().await;
            controller
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok(_) => {}
                        // Failed reconciles are logged and counted by `reconcile` itself.
                        Err(controller::Error::ReconcilerFailed(..)) => {}
                        Err(e) => tracing::debug!(error = %e, "drift reconciler"),
                    }
                })
                .await;
        };
        async move {
            futures::join!(reconciles, self.pods.for_each(|_| async {}));
        }
        .boxed()
    }
}

/// The watch of managed Secrets every writer of synced Secrets keeps: label-selected, metadata
/// only and cut on arrival to identity and version (any tenant may put the label on any number
/// of Secrets of any size), filling `store` (whose reader is `watched`); `verified` forgets what
/// the watch loses.
pub(super) fn managed_secret_events(
    client: &Client,
    store: reflector::store::Writer<PartialObjectMeta<Secret>>,
    watched: SecretVersions,
    verified: VerifiedVersions,
) -> Events<PartialObjectMeta<Secret>> {
    watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED,
            labels::MANAGED_VALUE
        )),
    )
    .modify(keep_version_only)
    .default_backoff()
    .reflect(store)
    .inspect_ok(move |event| match event {
        watcher::Event::Delete(secret) => {
            verified.forget(&secret.namespace().unwrap_or_default(), &secret.name_any())
        }
        // A re-list reports no deletions: keep only what it found.
        watcher::Event::InitDone => verified.retain_watched(&watched),
        _ => {}
    })
    .boxed()
}
