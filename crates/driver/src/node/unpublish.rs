//! Taking a volume down: preempt an in-flight publish, unmount, forget its state.

use std::path::PathBuf;

use super::{NodeService, on_blocking_pool};
use crate::error::UnpublishError;

impl NodeService {
    /// Handles `NodeUnpublishVolume`: unmount and remove, idempotent, state from the filesystem.
    pub async fn unpublish(
        &self,
        volume_id: &str,
        target_path: &str,
    ) -> Result<(), UnpublishError> {
        let result = self.unpublish_inner(volume_id, target_path).await;
        match &result {
            Ok(()) => {
                self.inner.metrics.unpublish_ok();
                tracing::info!(%target_path, "volume unpublished");
            }
            Err(e) => {
                self.inner.metrics.unpublish_failed(e.metric_label());
                tracing::warn!(%target_path, error = %e, "unpublish failed");
            }
        }
        result
    }

    async fn unpublish_inner(
        &self,
        volume_id: &str,
        target_path: &str,
    ) -> Result<(), UnpublishError> {
        if volume_id.is_empty() {
            return Err(UnpublishError::MissingVolumeId);
        }
        if target_path.is_empty() {
            return Err(UnpublishError::MissingTargetPath);
        }
        if self.kubelet_target(target_path).is_none() {
            return Err(UnpublishError::InvalidTargetPath(target_path.to_string()));
        }
        let target = PathBuf::from(target_path);
        // Takes the volume from an in-flight publish rather than waiting for it.
        let _guard = self.inner.locks.preempt(&target).await;
        self.inner.rotation.forget(&target);
        self.inner.remembered.forget(&target);
        self.inner.budget.release(&target);
        self.lock_statuses().remove(&target);
        let mounter = self.inner.mounter.clone();
        on_blocking_pool(move || mounter.unmount_and_remove(&target)).await?;
        Ok(())
    }
}
