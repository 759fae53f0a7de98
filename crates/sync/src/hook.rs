//! Plugs secret sync into the node service: after a volume's files are written and its pod
//! status recorded, write the class's Secrets before `NodePublishVolume` returns (the syncer
//! also rolls opted-in workloads whose Secret data changed).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_driver::ClassCache;
use secrets_store_driver::{AfterMount, AfterMountError, MountedVolume};
use secrets_store_provider::SecretBytes;

use crate::files::VolumeFiles;
use crate::syncer::{ClassLookup, SecretSync, SyncError, SyncRequest};

/// The [`AfterMount`] hook that syncs Kubernetes Secrets.
pub struct SecretSyncHook {
    sync: SecretSync,
}

impl SecretSyncHook {
    /// A hook writing Secrets through `sync`.
    pub fn new(sync: SecretSync) -> Self {
        Self { sync }
    }
}

#[async_trait]
impl ClassLookup for ClassCache {
    async fn class(&self, namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>> {
        self.get(namespace, name).await.ok().flatten()
    }
}

#[async_trait]
impl AfterMount for SecretSyncHook {
    fn name(&self) -> &str {
        "secret-sync"
    }

    async fn after_mount(&self, volume: &MountedVolume<'_>) -> Result<(), AfterMountError> {
        let class = volume.class;
        if class.spec.secret_objects.is_empty() {
            return Ok(());
        }
        let ctx = volume.context;
        let (namespace, pod_name) = (&ctx.pod_namespace, &ctx.pod_name);
        let pod = self
            .sync
            .pod(namespace, pod_name)
            .await
            .map_err(|e| AfterMountError {
                reason: "FailedToCreateSecret",
                retryable: true,
                message: format!("reading pod {namespace}/{pod_name} from the API server: {e}"),
            })?;
        let in_memory: BTreeMap<String, SecretBytes> = volume
            .files
            .iter()
            .map(|f| (f.path.clone(), f.contents.clone()))
            .collect();
        // A provider that wrote the files itself returns none; read them back from the volume,
        // through the same check as the drift reconciler.
        let on_disk = if volume.files.is_empty() {
            Some(
                self.sync
                    .verify_target(volume.pod_status, &pod)
                    .map_err(after_mount_error)?,
            )
        } else {
            None
        };
        let files = match &on_disk {
            Some(target) => VolumeFiles::OnDisk(target),
            None => VolumeFiles::InMemory(&in_memory),
        };
        let request = SyncRequest {
            pod: &pod,
            class,
            pod_status: volume.pod_status,
            files,
        };
        self.sync
            .sync_volume(&request)
            .await
            .map_err(after_mount_error)?;
        Ok(())
    }
}

/// What kubelet and the pod's Event show for a sync failure.
fn after_mount_error(e: SyncError) -> AfterMountError {
    AfterMountError {
        reason: e.reason(),
        retryable: e.retryable(),
        message: e.to_string(),
    }
}
