//! Writes the Secrets of a mounted volume: called by the node service before `NodePublishVolume`
//! returns, so containers that read them through `secretKeyRef` start on the first try.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use secrets_store_api::crd::{SecretObject, SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::labels;
use secrets_store_provider::SecretBytes;
use tokio::sync::{Mutex, Notify};

use crate::consumers::{consumers_of, pod_status_owner};
use crate::desired::{DesiredSecretError, desired_secret, is_managed};
use crate::files::VolumeFiles;
use crate::lifetime::{Consumer, InvalidLifetime, SecretLifetime, owner_references};
use crate::rollout::Rollout;

/// A volume that was just mounted (or remounted) and whose synced Secrets must be written.
pub struct SyncRequest<'a> {
    /// The pod the volume belongs to.
    pub pod: &'a Pod,
    /// The pod's SecretProviderClass.
    pub class: &'a SecretProviderClass,
    /// The pod's SecretProviderClassPodStatus as stored (it must have a uid).
    pub pod_status: &'a SecretProviderClassPodStatus,
    /// The volume's files.
    pub files: VolumeFiles<'a>,
}

/// Why a synced Secret could not be written. Never contains secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A `secretObjects[]` entry is invalid or names a missing object.
    #[error("SecretProviderClass {namespace}/{class}: {source}")]
    InvalidSecretObject {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
        /// What is wrong.
        source: DesiredSecretError,
    },
    /// The class's lifetime annotation is invalid.
    #[error("SecretProviderClass {namespace}/{class}: {source}")]
    InvalidLifetime {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
        /// What is wrong.
        source: InvalidLifetime,
    },
    /// A Secret of that name exists and is not ours.
    #[error(
        "Secret {namespace}/{name} exists and is not managed by secrets-store (no label {}={}); refusing to overwrite it",
        labels::MANAGED,
        labels::MANAGED_VALUE
    )]
    NotManaged {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// The mounted objects could not be read back from the volume.
    #[error("reading the mounted objects of Secret {namespace}/{name}: {source}")]
    ReadFiles {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API server refused or could not be reached.
    #[error("writing Secret {namespace}/{name} to the API server: {source}")]
    Api {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The client error.
        source: kube::Error,
    },
}

impl SyncError {
    /// Whether retrying without changing anything can succeed (the API server was unreachable),
    /// as opposed to a configuration problem someone must fix.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Api { .. } | Self::ReadFiles { .. })
    }

    /// A stable label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSecretObject { .. } | Self::InvalidLifetime { .. } => {
                "InvalidSecretObject"
            }
            Self::NotManaged { .. } => "SecretNotManaged",
            Self::Api { .. } | Self::ReadFiles { .. } => "FailedToCreateSecret",
        }
    }
}

/// What a sync did to each Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Secrets created or changed (data, labels, annotations or owners).
    pub applied: Vec<String>,
    /// Secrets whose data changed from a previous value (a rotation, for rollout decisions),
    /// with their new data.
    pub data_changed: Vec<(String, BTreeMap<String, SecretBytes>)>,
    /// Secrets that already matched.
    pub unchanged: Vec<String>,
}

/// Looks up SecretProviderClasses by namespace and name (the node service's cache).
#[async_trait::async_trait]
pub trait ClassLookup: Send + Sync {
    /// The class, if it exists (lookup failures count as absent: the reconciler retries).
    async fn class(&self, namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>>;
}

/// How long the reconciler waits after a managed Secret changed before it looks.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(500);

/// One lock per (namespace, Secret name) being written on this node.
type SecretLocks = HashMap<(String, String), Arc<Mutex<()>>>;

/// Writes synced Secrets with server-side apply, from watched state bounded by this node.
#[derive(Clone)]
pub struct SecretSync {
    client: Client,
    field_manager: String,
    statuses: Store<SecretProviderClassPodStatus>,
    pods: Store<Pod>,
    secrets: Store<Secret>,
    classes: Arc<dyn ClassLookup>,
    locks: Arc<StdMutex<SecretLocks>>,
    secrets_changed: Arc<Notify>,
    rollout: Option<Rollout>,
}

impl SecretSync {
    /// Starts the watches this needs (this node's pods and pod statuses, and only the Secrets that
    /// carry our managed label) and returns the syncer plus the future that drives the watches.
    pub fn new(
        client: Client,
        node_name: &str,
        classes: Arc<dyn ClassLookup>,
    ) -> (Self, BoxFuture<'static, ()>) {
        let node_label = format!("{}={node_name}", labels::NODE_NAME);
        let (statuses, status_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let status_stream = reflector::reflector(
            status_writer,
            watcher(
                Api::<SecretProviderClassPodStatus>::all(client.clone()),
                watcher::Config::default().labels(&node_label),
            ),
        );
        let pod_stream = reflector::reflector(
            pod_writer,
            watcher(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
            ),
        );
        let secret_stream = reflector::reflector(
            secret_writer,
            watcher(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    labels::MANAGED,
                    labels::MANAGED_VALUE
                )),
            ),
        );
        let secrets_changed = Arc::new(Notify::new());
        let changed = secrets_changed.clone();
        let drive = async move {
            let s = status_stream.default_backoff().for_each(|_| async {});
            let p = pod_stream.default_backoff().for_each(|_| async {});
            // Every change to a managed Secret wakes the drift reconciler.
            let c = secret_stream.default_backoff().for_each(|_| {
                changed.notify_one();
                async {}
            });
            futures::join!(s, p, c);
        }
        .boxed();
        let sync = Self {
            client,
            field_manager: format!("secrets-store-rs/{node_name}"),
            statuses,
            pods,
            secrets,
            classes,
            locks: Arc::default(),
            secrets_changed,
            rollout: None,
        };
        (sync, drive)
    }

    /// Rolls opted-in workloads whenever this syncer changes a Secret's data, on a mount or in
    /// the drift reconciler alike (a rotation the reconciler writes first must roll too).
    pub fn with_rollout(mut self, rollout: Rollout) -> Self {
        self.rollout = Some(rollout);
        self
    }

    /// Waits until the watches have listed once (before serving publishes).
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.statuses.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.secrets.wait_until_ready()
        );
    }

    /// Creates or updates every Secret of `volume.class.spec.secretObjects`.
    ///
    /// Every Secret is attempted; the first error is returned after the others were written.
    pub async fn sync_volume(&self, volume: &SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        let namespace = volume.class.namespace().unwrap_or_default();
        let class_name = volume.class.name_any();
        let lifetime = SecretLifetime::from_annotations(volume.class.metadata.annotations.as_ref())
            .map_err(|source| SyncError::InvalidLifetime {
                namespace: namespace.clone(),
                class: class_name.clone(),
                source,
            })?;
        let mut report = SyncReport::default();
        let mut first_error = None;
        for (index, object) in volume.class.spec.secret_objects.iter().enumerate() {
            match self
                .write(&namespace, index, object, lifetime, volume)
                .await
            {
                Ok(Outcome::Unchanged) => report.unchanged.push(object.secret_name.clone()),
                Ok(Outcome::Applied { data_changed }) => {
                    report.applied.push(object.secret_name.clone());
                    if let Some(data) = data_changed {
                        report.data_changed.push((object.secret_name.clone(), data));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.roll_out(&namespace, &report.data_changed).await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Rolls the workloads that opted in to changes of these Secrets. The Secrets themselves
    /// are right already, so a failed rollout is logged, never returned.
    async fn roll_out(&self, namespace: &str, changed: &[(String, BTreeMap<String, SecretBytes>)]) {
        let Some(rollout) = &self.rollout else {
            return;
        };
        for (secret, data) in changed {
            match rollout.secret_changed(namespace, secret, data).await {
                Ok(patched) if !patched.is_empty() => {
                    tracing::info!(%namespace, %secret, workloads = ?patched, "rolling workloads after Secret change");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "rollout after Secret change failed"),
            }
        }
    }

    async fn write(
        &self,
        namespace: &str,
        index: usize,
        object: &SecretObject,
        lifetime: SecretLifetime,
        volume: &SyncRequest<'_>,
    ) -> Result<Outcome, SyncError> {
        let lock = self.lock_for(namespace, object.secret_name.trim());
        let _guard = lock.lock().await;
        // Read the objects under the lock: a concurrent publish that rotates them then applies
        // after us, so the newest content always lands last.
        let files =
            volume
                .files
                .for_secret(object)
                .await
                .map_err(|source| SyncError::ReadFiles {
                    namespace: namespace.to_string(),
                    name: object.secret_name.clone(),
                    source,
                })?;
        let desired = desired_secret(index, object, &files).map_err(|source| {
            SyncError::InvalidSecretObject {
                namespace: namespace.to_string(),
                class: volume.class.name_any(),
                source,
            }
        })?;
        let desired = &desired;
        let consumers = self.consumers(namespace, &desired.name, volume).await;
        let owners = owner_references(lifetime, &consumers);
        let api_error = |source| SyncError::Api {
            namespace: namespace.to_string(),
            name: desired.name.clone(),
            source,
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let cached = self
            .secrets
            .get(&ObjectRef::new(&desired.name).within(namespace));
        let live = match cached {
            Some(secret) => Some(secret),
            // Not in our (managed-only) cache: either absent, just created, or someone else's.
            None => api
                .get_opt(&desired.name)
                .await
                .map_err(api_error)?
                .map(Arc::new),
        };
        if let Some(live) = &live {
            if !is_managed(live) {
                return Err(SyncError::NotManaged {
                    namespace: namespace.to_string(),
                    name: desired.name.clone(),
                });
            }
            if desired.is_satisfied_by(live, &owners) {
                return Ok(Outcome::Unchanged);
            }
        }
        let data_changed = live.as_ref().is_some_and(|l| {
            let live_data = l.data.clone().unwrap_or_default();
            live_data.len() != desired.data.len()
                || desired
                    .data
                    .iter()
                    .any(|(k, v)| live_data.get(k).is_none_or(|b| b.0 != v.expose()))
        });
        let params = PatchParams::apply(&self.field_manager).force();
        api.patch(
            &desired.name,
            &params,
            &Patch::Apply(desired.to_secret(namespace, owners)),
        )
        .await
        .map_err(api_error)?;
        Ok(Outcome::Applied {
            data_changed: data_changed.then(|| desired.data.clone()),
        })
    }

    /// This node's consumers of a Secret, always including the volume being published (the
    /// watches may not have seen its pod status yet).
    async fn consumers(
        &self,
        namespace: &str,
        secret: &str,
        volume: &SyncRequest<'_>,
    ) -> Vec<Consumer> {
        let statuses: Vec<_> = self
            .statuses
            .state()
            .into_iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(namespace) && s.uid() != volume.pod_status.uid()
            })
            .collect();
        let mut classes = HashMap::new();
        for status in &statuses {
            let Some(name) = status
                .status
                .as_ref()
                .map(|s| &s.secret_provider_class_name)
            else {
                continue;
            };
            if !classes.contains_key(name) {
                classes.insert(name.clone(), self.classes.class(namespace, name).await);
            }
        }
        let mut consumers = consumers_of(
            secret,
            statuses.iter().map(|s| s.as_ref()),
            |class| classes.get(class).cloned().flatten(),
            |pod| self.pods.get(&ObjectRef::new(pod).within(namespace)),
        );
        if let Some(pod_status) = pod_status_owner(volume.pod_status) {
            consumers.push(Consumer {
                controller: crate::consumers::pod_controller(volume.pod),
                pod_status,
            });
        }
        consumers
    }

    /// A client for callers that need their own API calls.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The pod `name` in `namespace`: from this node's pod watch, else from the API server.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, kube::Error> {
        if let Some(pod) = self.pods.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(pod);
        }
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map(Arc::new)
    }

    /// Restores synced Secrets that were edited or deleted, and retries failed syncs: runs on
    /// every change to a managed Secret (debounced) and every `period`. Reads the objects back
    /// from this node's mounted volumes; it never calls a provider.
    pub async fn run_reconciler(self, period: Duration, reporter: Reporter) {
        let recorder = Recorder::new(self.client.clone(), reporter);
        loop {
            tokio::select! {
                () = self.secrets_changed.notified() => {
                    // Let a burst of changes (a rotation across many pods) settle first.
                    tokio::time::sleep(RECONCILE_DEBOUNCE).await;
                }
                () = tokio::time::sleep(period) => {}
            }
            self.reconcile_once(&recorder).await;
        }
    }

    /// One pass over this node's mounted volumes that sync Secrets.
    pub async fn reconcile_once(&self, recorder: &Recorder) {
        for status in self.statuses.state() {
            let Some(fields) = status.status.as_ref().filter(|f| f.mounted) else {
                continue;
            };
            let namespace = status.namespace().unwrap_or_default();
            let Some(class) = self
                .classes
                .class(&namespace, &fields.secret_provider_class_name)
                .await
            else {
                continue;
            };
            if class.spec.secret_objects.is_empty() {
                continue;
            }
            let Some(pod) = self
                .pods
                .get(&ObjectRef::new(&fields.pod_name).within(&namespace))
            else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let request = SyncRequest {
                pod: &pod,
                class: &class,
                pod_status: &status,
                files: VolumeFiles::OnDisk(Path::new(&fields.target_path)),
            };
            match self.sync_volume(&request).await {
                Ok(report) if !report.applied.is_empty() => {
                    tracing::info!(%namespace, secrets = ?report.applied, "restored synced Secrets");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%namespace, pod = %fields.pod_name, error = %e, "secret sync failed");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: e.reason().into(),
                        note: Some(e.to_string()),
                        action: "SyncSecret".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
                        tracing::debug!(error = %e, "could not record secret sync event");
                    }
                }
            }
        }
    }

    fn lock_for(&self, namespace: &str, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().expect("lock map poisoned");
        // Drop locks nobody holds so the map stays as small as the set of busy Secrets.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .clone()
    }
}

enum Outcome {
    Unchanged,
    Applied {
        data_changed: Option<BTreeMap<String, SecretBytes>>,
    },
}
