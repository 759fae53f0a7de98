//! Steps that run after a volume's files are written and before the publish returns (secret
//! sync plugs in here): what they are given and how they fail.

use std::path::Path;

use async_trait::async_trait;
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_provider::{ObjectVersion, ProviderFile};

use crate::volume_context::VolumeContext;

/// What a successful provider call produced, handed to [`AfterMount`] hooks.
#[derive(Debug)]
pub struct MountedVolume<'a> {
    /// The parsed volume context (pod identity, class name).
    pub context: &'a VolumeContext,
    /// The SecretProviderClass used.
    pub class: &'a SecretProviderClass,
    /// The volume's target path (files are readable there).
    pub target_path: &'a Path,
    /// The files the provider returned (empty when the provider wrote them itself).
    pub files: &'a [ProviderFile],
    /// The mounted objects' versions, sorted.
    pub object_versions: &'a [ObjectVersion],
    /// The pod's SecretProviderClassPodStatus as stored (with its uid, for owner references).
    pub pod_status: &'a SecretProviderClassPodStatus,
}

/// A step run after files are written and before publish returns (secret sync plugs in here).
/// An error fails the publish with [`PublishError::AfterMount`].
#[async_trait]
pub trait AfterMount: Send + Sync + 'static {
    /// The hook's name, used in errors and logs.
    fn name(&self) -> &str;
    /// Runs the step. The error message must not contain secret values.
    async fn after_mount(&self, volume: &MountedVolume<'_>) -> Result<(), AfterMountError>;
}

/// Why a post-mount step failed: what kubelet and the Event show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AfterMountError {
    /// The Event reason and metric label (e.g. `SecretNotManaged`).
    pub reason: &'static str,
    /// Whether a retry can succeed without anyone changing anything (API server unreachable),
    /// as opposed to a configuration problem (an invalid `secretObjects` entry).
    pub retryable: bool,
    /// The cause, naming the objects involved; never secret values.
    pub message: String,
}
