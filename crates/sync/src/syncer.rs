//! Writes the Secrets of a mounted volume: called by the node service before `NodePublishVolume`
//! returns, so containers that read them through `secretKeyRef` start on the first try.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex as StdMutex};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::labels;
use secrets_store_provider::SecretBytes;
use tokio::sync::Mutex;

use crate::consumers::{consumers_of, pod_status_owner};
use crate::desired::{DesiredSecret, DesiredSecretError, desired_secret, is_managed};
use crate::lifetime::{Consumer, InvalidLifetime, SecretLifetime, owner_references};

/// A volume that was just mounted (or remounted) and whose synced Secrets must be written.
pub struct SyncRequest<'a> {
    /// The pod the volume belongs to.
    pub pod: &'a Pod,
    /// The pod's SecretProviderClass.
    pub class: &'a SecretProviderClass,
    /// The pod's SecretProviderClassPodStatus as stored (it must have a uid).
    pub pod_status: &'a SecretProviderClassPodStatus,
    /// The volume's files by path relative to the volume root.
    pub files: &'a BTreeMap<String, SecretBytes>,
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
    /// The API server refused or could not be reached.
    #[error("writing Secret {namespace}/{name}: {source}")]
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
    /// A stable label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSecretObject { .. } | Self::InvalidLifetime { .. } => {
                "InvalidSecretObject"
            }
            Self::NotManaged { .. } => "SecretNotManaged",
            Self::Api { .. } => "FailedToCreateSecret",
        }
    }
}

/// What a sync did to each Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Secrets created or changed (data, labels, annotations or owners).
    pub applied: Vec<String>,
    /// Secrets whose data changed from a previous value (a rotation, for rollout decisions).
    pub data_changed: Vec<String>,
    /// Secrets that already matched.
    pub unchanged: Vec<String>,
}

/// Looks up SecretProviderClasses by namespace and name (the node service's cache).
#[async_trait::async_trait]
pub trait ClassLookup: Send + Sync {
    /// The class, if it exists (lookup failures count as absent: the reconciler retries).
    async fn class(&self, namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>>;
}

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
        let drive = async move {
            let s = status_stream.default_backoff().for_each(|_| async {});
            let p = pod_stream.default_backoff().for_each(|_| async {});
            let c = secret_stream.default_backoff().for_each(|_| async {});
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
        };
        (sync, drive)
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
            let result = match desired_secret(index, object, volume.files) {
                Ok(desired) => self.write(&namespace, &desired, lifetime, volume).await,
                Err(source) => Err(SyncError::InvalidSecretObject {
                    namespace: namespace.clone(),
                    class: class_name.clone(),
                    source,
                }),
            };
            match result {
                Ok(Outcome::Unchanged) => report.unchanged.push(object.secret_name.clone()),
                Ok(Outcome::Applied { data_changed }) => {
                    report.applied.push(object.secret_name.clone());
                    if data_changed {
                        report.data_changed.push(object.secret_name.clone());
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn write(
        &self,
        namespace: &str,
        desired: &DesiredSecret,
        lifetime: SecretLifetime,
        volume: &SyncRequest<'_>,
    ) -> Result<Outcome, SyncError> {
        let lock = self.lock_for(namespace, &desired.name);
        let _guard = lock.lock().await;
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
        Ok(Outcome::Applied { data_changed })
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
    Applied { data_changed: bool },
}
