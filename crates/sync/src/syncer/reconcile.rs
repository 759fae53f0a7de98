//! The drift reconciler: restores synced Secrets that were edited or deleted and retries failed
//! syncs, reading each volume back from disk, but only from a target path
//! [`crate::target::NodeVolumes::verify`] accepts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_driver::mounter::MountTable;

use super::{SecretSync, SyncError, SyncRequest};
use crate::files::VolumeFiles;
use crate::target::UntrustedTarget;

/// How long the reconciler waits after a managed Secret changed before it looks.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(500);

impl SyncError {
    /// The Warning Event the drift reconciler records for this error.
    fn warning(&self) -> Event {
        Event {
            type_: EventType::Warning,
            reason: self.reason().into(),
            note: Some(self.to_string()),
            action: "SyncSecret".into(),
            secondary: None,
        }
    }
}

impl SecretSync {
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

    /// One pass over this node's mounted volumes that sync Secrets. A volume is read only from
    /// a target [`crate::target::NodeVolumes::verify`] accepts; a refused status gets a Warning Event instead.
    pub async fn reconcile_once(&self, recorder: &Recorder) {
        let mounts = match MountTable::read() {
            Ok(mounts) => mounts,
            Err(e) => {
                tracing::warn!(error = %e, "reading the mount table; drift reconciliation skipped");
                return;
            }
        };
        let statuses = self.statuses.state();
        self.forget_refusals_except(&statuses);
        self.writer.forget_unwatched();
        for status in statuses {
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
            // A status outlives its pod until it is garbage collected: nothing to do.
            let Some(pod) = self
                .pods
                .get(&ObjectRef::new(&fields.pod_name).within(&namespace))
            else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let target = match self.node.verify(&status, &pod, &mounts) {
                Ok(target) => target,
                Err(refused) => {
                    self.refuse(recorder, &status, refused).await;
                    continue;
                }
            };
            let request = SyncRequest {
                pod: &pod,
                class: &class,
                pod_status: &status,
                files: VolumeFiles::OnDisk(&target),
            };
            match self.sync_volume(&request).await {
                Ok(report) if !report.applied.is_empty() => {
                    tracing::info!(%namespace, secrets = ?report.applied, "restored synced Secrets");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%namespace, pod = %fields.pod_name, error = %e, "secret sync failed");
                    if let Err(e) = recorder.publish(&e.warning(), &pod.object_ref(&())).await {
                        tracing::debug!(error = %e, "could not record secret sync event");
                    }
                }
            }
        }
    }

    /// Reports a refused status: a Warning Event on the status object itself, once per version
    /// of it. The status, not the pod: it is what makes the false claim, it exists when the pod
    /// it names does not, and a forger cannot fill a victim pod's Events this way.
    async fn refuse(
        &self,
        recorder: &Recorder,
        status: &SecretProviderClassPodStatus,
        refused: UntrustedTarget,
    ) {
        let suspicious = refused.is_suspicious();
        let error = SyncError::UntrustedTarget {
            namespace: status.namespace().unwrap_or_default(),
            status: status.name_any(),
            source: Box::new(refused),
        };
        if !suspicious {
            tracing::debug!(error = %error, "stale pod status skipped");
            return;
        }
        let version = status.resource_version().unwrap_or_default();
        let first = {
            let mut refused = self.refused.lock().expect("refusals poisoned");
            refused.insert(status.uid().unwrap_or_default(), version.clone()) != Some(version)
        };
        if !first {
            return;
        }
        tracing::warn!(error = %error, "pod status refused");
        if let Err(e) = recorder
            .publish(&error.warning(), &status.object_ref(&()))
            .await
        {
            tracing::debug!(error = %e, "could not record pod status event");
        }
    }

    /// Drops remembered refusals of statuses that no longer exist.
    fn forget_refusals_except(&self, statuses: &[Arc<SecretProviderClassPodStatus>]) {
        let live: HashSet<String> = statuses.iter().filter_map(|s| s.uid()).collect();
        self.refused
            .lock()
            .expect("refusals poisoned")
            .retain(|uid, _| live.contains(uid));
    }
}
