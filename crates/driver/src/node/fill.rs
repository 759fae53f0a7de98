//! Filling a volume: fetch from the provider, write the files atomically within the node's
//! budget, record the pod status, run the after-mount hooks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_provider::{
    DEFAULT_FILE_PERMISSION, MountRequest, MountResponse, ObjectVersion, ProviderError,
    ProviderErrorKind, ProviderFile, SecretBytes,
};

use super::{NodeService, PublishRequest};
use crate::error::PublishError;
use crate::hooks::MountedVolume;
use crate::status::{pod_status, records_same};
use crate::volume_context::{TOKENS_KEY, VolumeContext};
use crate::writer::{AtomicWriter, WriteError, WriteOutcome};

impl NodeService {
    /// Fills a mounted volume: fetch, write, record the status, run the hooks. Returns whether
    /// the mounted content changed.
    pub(super) async fn fill_volume(
        &self,
        req: &PublishRequest,
        ctx: &VolumeContext,
        class: &SecretProviderClass,
        provider: &dyn secrets_store_provider::Provider,
        target: &Path,
        republish: bool,
    ) -> Result<bool, PublishError> {
        let (mounted_versions, stored) = if republish {
            self.mounted_state(ctx, target).await
        } else {
            (Vec::new(), None)
        };
        let response = self
            .fetch(req, ctx, class, provider, target, mounted_versions.clone())
            .await?;
        let mut versions = response.object_versions.clone();
        versions.sort();
        let changed = if response.files.is_empty() {
            // Providers that write files themselves report changes only through their versions.
            let mut mounted = mounted_versions;
            mounted.sort();
            mounted != versions
        } else {
            self.write(ctx, class, target, &response.files).await? != WriteOutcome::Unchanged
        };
        let pod_status = self.record_status(ctx, target, &versions, stored).await?;
        let mounted = MountedVolume {
            context: ctx,
            class,
            target_path: target,
            files: &response.files,
            object_versions: &versions,
            pod_status: &pod_status,
        };
        self.run_hooks(&mounted).await?;
        Ok(changed)
    }

    /// What the volume holds now, as its pod status last recorded it (upstream passes the same
    /// to providers on a republish), and the stored status when it had to be read (after an
    /// agent restart), so that recording the status needs no second read.
    async fn mounted_state(
        &self,
        ctx: &VolumeContext,
        target: &Path,
    ) -> (Vec<ObjectVersion>, Option<SecretProviderClassPodStatus>) {
        if let Some(status) = self.cached_status(target) {
            return (status_versions(&status), None);
        }
        let name = SecretProviderClassPodStatus::object_name(
            &ctx.pod_name,
            &ctx.pod_namespace,
            &ctx.secret_provider_class,
        );
        match self
            .inner
            .effects
            .get_status(&ctx.pod_namespace, &name)
            .await
        {
            Ok(stored) => (
                stored.as_ref().map(status_versions).unwrap_or_default(),
                stored,
            ),
            // A failed read only costs the provider its "what changed" hint.
            Err(e) => {
                tracing::debug!(namespace = %ctx.pod_namespace, %name, error = %e, "could not read the stored pod status");
                (Vec::new(), None)
            }
        }
    }

    /// Asks the provider for the volume's objects.
    async fn fetch(
        &self,
        req: &PublishRequest,
        ctx: &VolumeContext,
        class: &SecretProviderClass,
        provider: &dyn secrets_store_provider::Provider,
        target: &Path,
        current_object_versions: Vec<ObjectVersion>,
    ) -> Result<MountResponse, PublishError> {
        let provider_err = |source: ProviderError| PublishError::Provider {
            provider: class.spec.provider.clone(),
            namespace: ctx.pod_namespace.clone(),
            pod: ctx.pod_name.clone(),
            source,
        };
        let secrets: BTreeMap<String, SecretBytes> = req
            .secrets
            .iter()
            .filter(|(k, _)| k.as_str() != TOKENS_KEY)
            .map(|(k, v)| (k.clone(), SecretBytes::from(v.clone())))
            .collect();
        let request = MountRequest {
            attributes: ctx.attributes(&class.spec.parameters),
            secrets,
            target_path: target.to_path_buf(),
            permission: DEFAULT_FILE_PERMISSION,
            current_object_versions,
        };
        let response = provider.mount(request).await.map_err(provider_err)?;
        if response.object_versions.is_empty() {
            return Err(provider_err(ProviderError::new(
                ProviderErrorKind::InvalidResponse,
                "provider returned no object versions",
            )));
        }
        Ok(response)
    }

    /// Writes the files atomically, within the node's byte budget (tmpfs pages count against
    /// the agent's memory, not the pod's: they are reserved before anything is written).
    async fn write(
        &self,
        ctx: &VolumeContext,
        class: &SecretProviderClass,
        target: &Path,
        files: &[ProviderFile],
    ) -> Result<WriteOutcome, PublishError> {
        let bytes = files
            .iter()
            .map(|f| f.contents.len() as u64 + f.path.len() as u64)
            .sum();
        let reservation = self.inner.budget.reserve(target, bytes).map_err(|source| {
            PublishError::NodeBudget {
                namespace: ctx.pod_namespace.clone(),
                pod: ctx.pod_name.clone(),
                source,
            }
        })?;
        let writer = AtomicWriter::new(target);
        let files = files.to_vec();
        let write_err = |source| PublishError::Write {
            provider: class.spec.provider.clone(),
            source,
        };
        let outcome = tokio::task::spawn_blocking(move || writer.write(&files))
            .await
            .map_err(|e| {
                write_err(WriteError::Io {
                    op: "writer task",
                    path: target.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(write_err)?;
        reservation.commit();
        if outcome == WriteOutcome::Unchanged {
            tracing::debug!(target_path = %target.display(), "content unchanged; nothing written");
        }
        Ok(outcome)
    }

    /// Records the volume's objects in its SecretProviderClassPodStatus; when the status is the
    /// one last written, or `stored` (read for this publish) already says the same, makes no
    /// API call.
    async fn record_status(
        &self,
        ctx: &VolumeContext,
        target: &Path,
        versions: &[ObjectVersion],
        stored: Option<SecretProviderClassPodStatus>,
    ) -> Result<Arc<SecretProviderClassPodStatus>, PublishError> {
        let status = pod_status(
            ctx,
            &self.inner.config.node_id,
            &target.to_string_lossy(),
            versions,
        );
        let effects = &self.inner.effects;
        let stored = match (self.cached_status(target), stored) {
            (Some(cached), _) if cached.status == status.status => return Ok(cached),
            (Some(cached), _) => effects.apply_status(&status, Some(&cached)).await,
            (None, Some(live)) if records_same(&live, &status) => Ok(live),
            (None, Some(live)) => effects.apply_status(&status, Some(&live)).await,
            (None, None) => self.first_status_write(&ctx.pod_namespace, &status).await,
        };
        let stored = Arc::new(stored.map_err(|source| PublishError::PodStatus {
            namespace: ctx.pod_namespace.clone(),
            name: status.metadata.name.clone().unwrap_or_default(),
            source,
        })?);
        self.lock_statuses()
            .insert(target.to_path_buf(), stored.clone());
        Ok(stored)
    }

    /// The status write of a volume this agent has no status for (first publish, or after a
    /// restart): a plain create, the cheapest write, when the object does not exist; else the
    /// stored object when it already records the same (a remount of the same pod), or the
    /// server-side apply that republishes use.
    async fn first_status_write(
        &self,
        namespace: &str,
        status: &SecretProviderClassPodStatus,
    ) -> Result<SecretProviderClassPodStatus, kube::Error> {
        let effects = &self.inner.effects;
        if let Some(created) = effects.create_status(status).await? {
            return Ok(created);
        }
        let name = status.metadata.name.as_deref().unwrap_or_default();
        match effects.get_status(namespace, name).await? {
            Some(live) if records_same(&live, status) => Ok(live),
            live => effects.apply_status(status, live.as_ref()).await,
        }
    }

    /// Runs the after-mount steps (secret sync) in order; the first failure fails the publish.
    async fn run_hooks(&self, mounted: &MountedVolume<'_>) -> Result<(), PublishError> {
        for hook in &self.inner.hooks {
            hook.after_mount(mounted)
                .await
                .map_err(|source| PublishError::AfterMount {
                    hook: hook.name().to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The object versions a stored pod status records.
fn status_versions(status: &SecretProviderClassPodStatus) -> Vec<ObjectVersion> {
    status
        .status
        .iter()
        .flat_map(|s| &s.objects)
        .map(|o| ObjectVersion {
            id: o.id.clone(),
            version: o.version.clone(),
        })
        .collect()
}
