//! Filling a volume: fetch from the provider, write the files atomically within the node's
//! budget, record the pod status, run the after-mount hooks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_provider::{
    DEFAULT_FILE_PERMISSION, MountRequest, ObjectVersion, ProviderError, ProviderErrorKind,
    SecretBytes,
};

use super::{NodeService, PublishRequest};
use crate::error::PublishError;
use crate::hooks::MountedVolume;
use crate::status::pod_status;
use crate::volume_context::{TOKENS_KEY, VolumeContext};
use crate::writer::{AtomicWriter, WriteOutcome};

impl NodeService {
    pub(super) async fn fill_volume(
        &self,
        req: &PublishRequest,
        ctx: &VolumeContext,
        class: &SecretProviderClass,
        provider: &dyn secrets_store_provider::Provider,
        target: &Path,
        republish: bool,
    ) -> Result<bool, PublishError> {
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
        // On a republish, tell the provider what is mounted (upstream passes the same).
        let current_object_versions = if republish {
            let name = SecretProviderClassPodStatus::object_name(
                &ctx.pod_name,
                &ctx.pod_namespace,
                &ctx.secret_provider_class,
            );
            match self.cached_status(target) {
                Some(status) => status_versions(&status),
                None => {
                    self.inner
                        .effects
                        .current_versions(&ctx.pod_namespace, &name)
                        .await
                }
            }
        } else {
            Vec::new()
        };
        let request = MountRequest {
            attributes: ctx.attributes(&class.spec.parameters),
            secrets,
            target_path: target.to_path_buf(),
            permission: DEFAULT_FILE_PERMISSION,
            current_object_versions: current_object_versions.clone(),
        };
        let response = provider.mount(request).await.map_err(provider_err)?;
        if response.object_versions.is_empty() {
            return Err(provider_err(ProviderError::new(
                ProviderErrorKind::InvalidResponse,
                "provider returned no object versions",
            )));
        }
        let mut versions = response.object_versions.clone();
        versions.sort();
        // Providers that write files themselves report changes only through their versions.
        let mut changed = {
            let mut current = current_object_versions;
            current.sort();
            current != versions
        };
        if !response.files.is_empty() {
            // tmpfs pages count against the agent's memory, not the pod's: reserve them first.
            let bytes = response
                .files
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
            let files = response.files.clone();
            let outcome = tokio::task::spawn_blocking(move || writer.write(&files))
                .await
                .map_err(|e| {
                    provider_err(ProviderError::new(
                        ProviderErrorKind::Internal,
                        format!("writer task failed: {e}"),
                    ))
                })?
                .map_err(|source| PublishError::Write {
                    provider: class.spec.provider.clone(),
                    source,
                })?;
            reservation.commit();
            changed = outcome != WriteOutcome::Unchanged;
            if !changed {
                tracing::debug!(target_path = %target.display(), "content unchanged; nothing written");
            }
        }

        let status = pod_status(
            ctx,
            &self.inner.config.node_id,
            &target.to_string_lossy(),
            &versions,
        );
        let stored = match self.cached_status(target) {
            // Same content as last written: no API call.
            Some(cached) if cached.status == status.status => cached,
            _ => {
                let applied = self
                    .inner
                    .effects
                    .apply_status(&status)
                    .await
                    .map_err(|source| PublishError::PodStatus {
                        namespace: ctx.pod_namespace.clone(),
                        name: status.metadata.name.clone().unwrap_or_default(),
                        source,
                    })?;
                let applied = Arc::new(applied);
                self.lock_statuses()
                    .insert(target.to_path_buf(), applied.clone());
                applied
            }
        };

        let mounted = MountedVolume {
            context: ctx,
            class,
            target_path: target,
            files: &response.files,
            object_versions: &versions,
            pod_status: &stored,
        };
        for hook in &self.inner.hooks {
            hook.after_mount(&mounted)
                .await
                .map_err(|source| PublishError::AfterMount {
                    hook: hook.name().to_string(),
                    source,
                })?;
        }
        Ok(changed)
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
