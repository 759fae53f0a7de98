//! Writes the Secrets of a mounted volume: called by the node service before `NodePublishVolume`
//! returns, so containers that read them through `secretKeyRef` start on the first try.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::{labels, names};
use secrets_store_driver::MountTable;
use secrets_store_provider::SecretBytes;

use crate::consumers::{consumers_of, pod_status_owner};
use crate::desired::DesiredSecretError;
use crate::files::VolumeFiles;
use crate::lifetime::{Consumer, InvalidLifetime, SecretLifetime, owner_references};
use crate::metrics::{self, SyncMetrics};
use crate::rollout::Rollout;
use crate::target::{NodeVolumes, UntrustedTarget, VerifiedTarget};
pub use authorship::FIELD_MANAGER_PREFIX;
pub use watches::SyncWatches;
use write::VerifiedVersions;
pub(crate) use write::{Replace, keep_version_only};
pub(crate) use writer::SecretWriter;

mod authorship;
mod watches;
mod write;
mod writer;

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
        source: Box<DesiredSecretError>,
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
    /// The status's target path is not a volume of its pod that this agent mounted: nothing was
    /// read.
    #[error(
        "SecretProviderClassPodStatus {namespace}/{status}: {source}; no file was read and no Secret written"
    )]
    UntrustedTarget {
        /// Namespace of the status.
        namespace: String,
        /// Name of the status.
        status: String,
        /// Which rule it broke.
        source: Box<UntrustedTarget>,
    },
    /// The mount table could not be read, so no target path can be verified.
    #[error("reading the mount table /proc/self/mountinfo: {0}")]
    MountTable(std::io::Error),
    /// The Secret was created, deleted or replaced between reading and writing it every time
    /// (the writes carry a precondition, so nothing was overwritten).
    #[error(
        "Secret {namespace}/{name} was created, deleted or replaced between reading and writing it, {attempts} times in a row; nothing was overwritten"
    )]
    Contended {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// How many times it was tried.
        attempts: usize,
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
        match self {
            Self::Api { .. }
            | Self::Contended { .. }
            | Self::ReadFiles { .. }
            | Self::MountTable(_) => true,
            Self::UntrustedTarget { source, .. } => !source.is_suspicious(),
            _ => false,
        }
    }

    /// A stable label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSecretObject { .. } | Self::InvalidLifetime { .. } => {
                "InvalidSecretObject"
            }
            Self::NotManaged { .. } => "SecretNotManaged",
            Self::UntrustedTarget { .. } => "UntrustedPodStatus",
            Self::Api { .. }
            | Self::Contended { .. }
            | Self::ReadFiles { .. }
            | Self::MountTable(_) => "FailedToCreateSecret",
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
    /// Secrets the drift reconciler left as they are although this volume holds other data:
    /// secrets-store wrote that data, from a fetch of another volume or node this volume has
    /// not caught up with yet (its own refresh writes through the publish path).
    pub left_alone: Vec<String>,
}

/// Looks up SecretProviderClasses by namespace and name (the node service's cache).
#[async_trait::async_trait]
pub trait ClassLookup: Send + Sync {
    /// The class, if it exists (lookup failures count as absent: the reconciler retries).
    async fn class(&self, namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>>;
}

/// Writes synced Secrets with server-side apply, from watched state bounded by this node.
#[derive(Clone)]
pub struct SecretSync {
    client: Client,
    pub(crate) node: NodeVolumes,
    statuses: Store<SecretProviderClassPodStatus>,
    pub(crate) pods: Store<Pod>,
    /// The write path shared with the pod-less sync; its view of the managed Secrets is the
    /// watch in [`SyncWatches`], which also triggers the drift reconciler.
    pub(crate) writer: SecretWriter,
    pub(crate) classes: Arc<dyn ClassLookup>,
    rollout: Option<Rollout>,
    metrics: SyncMetrics,
}

impl SecretSync {
    /// Sets up the watches this needs (this node's pods and pod statuses, and the metadata of the
    /// Secrets that carry our managed label) and returns the syncer plus the watches, which
    /// fill its caches once driven ([`SyncWatches::drive`], or with the drift reconciler
    /// [`SyncWatches::reconcile`]).
    pub fn new(
        client: Client,
        node: NodeVolumes,
        classes: Arc<dyn ClassLookup>,
    ) -> (Self, SyncWatches) {
        let node_name = node.node_name().to_string();
        let verified = VerifiedVersions::new();
        let (watches, stores) = SyncWatches::new(&client, &node_name, verified.clone());
        let writer = SecretWriter::with_watch(
            client.clone(),
            names::secret_field_manager(&node_name),
            stores.secrets,
            verified,
        );
        let sync = Self {
            client,
            node,
            statuses: stores.statuses,
            pods: stores.pods,
            writer,
            classes,
            rollout: None,
            metrics: SyncMetrics::default(),
        };
        (sync, watches)
    }

    /// Counts sync outcomes and rollouts in `metrics` (registered by the binary).
    pub fn with_metrics(mut self, metrics: SyncMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this syncer counts into.
    pub fn metrics(&self) -> &SyncMetrics {
        &self.metrics
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
            self.writer.ready()
        );
    }

    /// Creates or updates every Secret of `volume.class.spec.secretObjects` from content just
    /// fetched (a publish or refresh): whatever a Secret holds, it takes the volume's data.
    ///
    /// Every Secret is attempted; the first error is returned after the others were written.
    pub async fn sync_volume(&self, volume: &SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        self.write_volume(volume, Replace::Any).await
    }

    /// Restores the Secrets of `volume.class.spec.secretObjects` from a volume read back by the
    /// drift reconciler: creates missing ones, brings labels, annotations and owners back, and
    /// replaces data only where someone other than secrets-store changed it. Data another
    /// volume's or node's write set (from a fetch this volume may not have made yet) is left
    /// alone and reported in [`SyncReport::left_alone`].
    pub async fn restore_volume(&self, volume: &SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        self.write_volume(volume, Replace::OthersChanges).await
    }

    async fn write_volume(
        &self,
        volume: &SyncRequest<'_>,
        replace: Replace,
    ) -> Result<SyncReport, SyncError> {
        let namespace = volume.class.namespace().unwrap_or_default();
        let class_name = volume.class.name_any();
        let lifetime = SecretLifetime::from_annotations(volume.class.metadata.annotations.as_ref())
            .map_err(|source| SyncError::InvalidLifetime {
                namespace: namespace.clone(),
                class: class_name.clone(),
                source,
            })?;
        let namespace_ref = namespace.as_str();
        let owners = |secret: String| async move {
            owner_references(
                lifetime,
                &self.consumers(namespace_ref, &secret, volume).await,
            )
        };
        let (report, first_error) = self
            .writer
            .write_class(volume.class, volume.files, owners, replace)
            .await;
        self.metrics.secrets(&report, first_error.as_ref());
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
                    for _ in &patched {
                        self.metrics.rollout(metrics::ROLLED);
                    }
                    tracing::info!(%namespace, %secret, workloads = ?patched, "rolling workloads after Secret change");
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.rollout(metrics::ROLLOUT_FAILED);
                    tracing::warn!(error = %e, "rollout after Secret change failed");
                }
            }
        }
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

    /// The resourceVersion of managed Secret `namespace/name` as this syncer's watch last saw it:
    /// a write that has not reached the watch yet has not triggered the drift reconciler yet
    /// either.
    pub fn watched_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.writer.watched_version(namespace, name)
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

    /// The directory `status` claims for `pod`'s volume, if [`NodeVolumes::verify`] accepts it
    /// against the current mount table.
    pub fn verify_target(
        &self,
        status: &SecretProviderClassPodStatus,
        pod: &Pod,
    ) -> Result<VerifiedTarget, SyncError> {
        let mounts = MountTable::read().map_err(SyncError::MountTable)?;
        self.node
            .verify(status, pod, &mounts)
            .map_err(|source| SyncError::UntrustedTarget {
                namespace: status.namespace().unwrap_or_default(),
                status: status.name_any(),
                source: Box::new(source),
            })
    }
}

enum Outcome {
    Unchanged,
    /// See [`SyncReport::left_alone`].
    LeftAlone,
    Applied {
        data_changed: Option<BTreeMap<String, SecretBytes>>,
    },
}
