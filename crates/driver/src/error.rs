//! The errors of `NodePublishVolume` / `NodeUnpublishVolume`, and the ONE place that maps each
//! to the gRPC code kubelet gets, the Event reason users see and the metric label.
//!
//! Messages name the object and the cause; they never contain secret bytes or tokens.

use std::path::PathBuf;

use secrets_store_provider::grpc::kind_to_code;
use secrets_store_provider::{ProviderError, ProviderErrorKind};
use tonic::Code;

use crate::mounter::MountError;
use crate::volume_context::VolumeContextError;
use crate::writer::WriteError;

/// Why a `NodePublishVolume` failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request has no `volume_id`.
    #[error("volume ID missing in request")]
    MissingVolumeId,
    /// The request has no `target_path`.
    #[error("target path missing in request")]
    MissingTargetPath,
    /// The request has no `volume_capability`.
    #[error("volume capability missing in request")]
    MissingCapability,
    /// The target path is not where kubelet mounts a pod's CSI volume:
    /// `<kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    #[error(
        "target path {0:?} is not <kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount under this agent's --kubelet-dir"
    )]
    InvalidTargetPath(String),
    /// The target path is a volume directory of another pod than the one the request is for.
    #[error(
        "target path {path:?} belongs to pod uid {path_uid:?}, not to the requesting pod (uid {pod_uid:?}); nothing was mounted"
    )]
    TargetOfAnotherPod {
        /// kubelet's target path.
        path: String,
        /// The pod UID in the path.
        path_uid: String,
        /// The pod UID of the volume context.
        pod_uid: String,
    },
    /// A block volume was requested; this driver only provides filesystems.
    #[error("block volumes are not supported; use a filesystem (mount) volume")]
    BlockUnsupported,
    /// The volume is not read-only (upstream requires `readOnly: true`).
    #[error("readonly is not true in request; secrets-store volumes must set `readOnly: true`")]
    NotReadOnly,
    /// The volume context could not be parsed.
    #[error(transparent)]
    VolumeContext(#[from] VolumeContextError),
    /// The SecretProviderClass does not exist in the pod's namespace.
    #[error("SecretProviderClass {namespace}/{name} not found")]
    ClassNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The class name from the volume attributes.
        name: String,
    },
    /// The SecretProviderClass could not be read (API server unreachable, RBAC…).
    #[error("failed to get SecretProviderClass {namespace}/{name} from the API server: {source}")]
    ClassLookup {
        /// The pod's namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// The SecretProviderClass exists but cannot be used.
    #[error("SecretProviderClass {namespace}/{name} is invalid: {reason}")]
    ClassInvalid {
        /// The pod's namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The provider name breaks `^[a-zA-Z0-9_-]{0,30}$` (it becomes a socket file name).
    #[error("invalid provider name {0:?}: must match ^[a-zA-Z0-9_-]{{0,30}}$")]
    InvalidProviderName(String),
    /// No built-in provider of that name and no `<name>.sock` in the provider directories.
    #[error("provider {name:?} not found: no built-in provider and no socket in {searched:?}")]
    ProviderNotFound {
        /// The provider name.
        name: String,
        /// The socket paths tried, in order.
        searched: Vec<PathBuf>,
    },
    /// The provider failed.
    #[error("provider {provider:?} failed to mount objects for pod {namespace}/{pod}: {source}")]
    Provider {
        /// The provider name.
        provider: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The provider's error.
        source: ProviderError,
    },
    /// The provider's files could not be written (bad paths or I/O).
    #[error("failed to write files from provider {provider:?}: {source}")]
    Write {
        /// The provider name.
        provider: String,
        /// The writer's error.
        source: WriteError,
    },
    /// The tmpfs could not be mounted.
    #[error("failed to mount tmpfs: {0}")]
    Mount(#[from] MountError),
    /// The `SecretProviderClassPodStatus` could not be written.
    #[error(
        "failed to write SecretProviderClassPodStatus {namespace}/{name} to the API server: {source}"
    )]
    PodStatus {
        /// The pod's namespace.
        namespace: String,
        /// The status object's name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Fetching, writing and recording the volume took longer than the publish deadline
    /// (typically a provider that does not answer).
    #[error(
        "publish did not finish within {after:?} (provider, file write or API server too slow); nothing new was mounted"
    )]
    TimedOut {
        /// The deadline.
        after: std::time::Duration,
    },
    /// The volume's files would take the node past its budget for mounted secret bytes.
    #[error("volume of pod {namespace}/{pod} not written: {source}")]
    NodeBudget {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The sizes involved.
        source: crate::budget::BudgetExceeded,
    },
    /// kubelet unpublished the volume while this publish was still running.
    #[error("the volume was unpublished while this publish was running")]
    Unpublished,
    /// A post-mount hook (secret sync) failed.
    #[error("{hook} failed: {source}")]
    AfterMount {
        /// The hook's name.
        hook: String,
        /// Its error, safe to show.
        source: crate::hooks::AfterMountError,
    },
}

impl PublishError {
    /// The gRPC code kubelet receives.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingVolumeId
            | Self::MissingTargetPath
            | Self::MissingCapability
            | Self::InvalidTargetPath(_)
            | Self::TargetOfAnotherPod { .. }
            | Self::BlockUnsupported
            | Self::NotReadOnly
            | Self::VolumeContext(_) => Code::InvalidArgument,
            Self::ClassNotFound { .. } => Code::NotFound,
            Self::ClassLookup { .. } => Code::Unavailable,
            Self::ClassInvalid { .. } | Self::InvalidProviderName(_) => Code::FailedPrecondition,
            Self::ProviderNotFound { .. } => Code::FailedPrecondition,
            Self::Provider { source, .. } => kind_to_code(source.kind),
            Self::Write { source, .. } => match source {
                WriteError::InvalidPath(_) | WriteError::InvalidMode { .. } => Code::Internal,
                WriteError::Io { .. } => Code::Internal,
            },
            Self::Mount(MountError::ForeignMount { .. }) => Code::FailedPrecondition,
            Self::Mount(_) => Code::Internal,
            Self::PodStatus { .. } => Code::Unavailable,
            Self::TimedOut { .. } => Code::DeadlineExceeded,
            Self::NodeBudget { .. } => Code::ResourceExhausted,
            Self::Unpublished => Code::Aborted,
            Self::AfterMount { source, .. } if source.retryable => Code::Unavailable,
            Self::AfterMount { .. } => Code::FailedPrecondition,
        }
    }

    /// The Event reason shown on the pod, also the metric `error_type` label (upstream names
    /// where upstream has one).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingVolumeId
            | Self::MissingTargetPath
            | Self::MissingCapability
            | Self::InvalidTargetPath(_)
            | Self::TargetOfAnotherPod { .. }
            | Self::BlockUnsupported
            | Self::NotReadOnly
            | Self::VolumeContext(_) => "InvalidVolumeRequest",
            Self::ClassNotFound { .. } => "SecretProviderClassNotFound",
            Self::ClassLookup { .. } => "SecretProviderClassLookupFailed",
            Self::ClassInvalid { .. } => "InvalidSecretProviderClass",
            Self::InvalidProviderName(_) | Self::ProviderNotFound { .. } => {
                "FailedToLookupProviderGRPCClient"
            }
            Self::Provider { source, .. } if source.kind == ProviderErrorKind::InvalidResponse => {
                "InvalidProviderResponse"
            }
            Self::Provider { .. } => "ProviderError",
            Self::Write { source, .. } => match source {
                WriteError::InvalidPath(_) | WriteError::InvalidMode { .. } => {
                    "InvalidProviderResponse"
                }
                WriteError::Io { .. } => "FailedToWriteFiles",
            },
            Self::Mount(_) => "FailedToEnsureMountPoint",
            Self::PodStatus { .. } => "FailedToUpdatePodStatus",
            Self::TimedOut { .. } => "PublishTimedOut",
            Self::NodeBudget { .. } => "NodeSecretBudgetExceeded",
            Self::Unpublished => "VolumeUnpublished",
            Self::AfterMount { source, .. } => source.reason,
        }
    }

    /// The metric `error_type` label (same as [`Self::reason`], so dashboards and Events agree).
    pub fn metric_label(&self) -> &'static str {
        self.reason()
    }

    /// The gRPC status kubelet receives.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), self.to_string())
    }
}

/// Why a `NodeUnpublishVolume` failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishError {
    /// The request has no `volume_id`.
    #[error("volume ID missing in request")]
    MissingVolumeId,
    /// The request has no `target_path`.
    #[error("target path missing in request")]
    MissingTargetPath,
    /// The target path is not where kubelet mounts a pod's CSI volume.
    #[error(
        "target path {0:?} is not <kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount under this agent's --kubelet-dir"
    )]
    InvalidTargetPath(String),
    /// Unmounting or removing the directory failed.
    #[error("failed to unmount and remove target path: {0}")]
    Unmount(#[from] MountError),
}

impl UnpublishError {
    /// The gRPC code kubelet receives.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingVolumeId | Self::MissingTargetPath | Self::InvalidTargetPath(_) => {
                Code::InvalidArgument
            }
            Self::Unmount(MountError::ForeignMount { .. }) => Code::FailedPrecondition,
            Self::Unmount(_) => Code::Internal,
        }
    }

    /// The metric `error_type` label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingVolumeId | Self::MissingTargetPath | Self::InvalidTargetPath(_) => {
                "InvalidVolumeRequest"
            }
            Self::Unmount(_) => "FailedToUnmount",
        }
    }

    /// The gRPC status kubelet receives.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csi_sanity_argument_errors_are_invalid_argument() {
        for e in [
            PublishError::MissingVolumeId,
            PublishError::MissingTargetPath,
            PublishError::MissingCapability,
            PublishError::NotReadOnly,
        ] {
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        }
        assert_eq!(
            UnpublishError::MissingVolumeId.code(),
            Code::InvalidArgument
        );
        assert_eq!(
            UnpublishError::MissingTargetPath.code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn class_errors_name_class_and_namespace() {
        let e = PublishError::ClassNotFound {
            namespace: "team-a".into(),
            name: "db-creds".into(),
        };
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.reason(), "SecretProviderClassNotFound");
        assert!(e.to_string().contains("team-a/db-creds"));
    }

    #[test]
    fn provider_kinds_map_to_codes() {
        let e = |kind| PublishError::Provider {
            provider: "aws".into(),
            namespace: "n".into(),
            pod: "p".into(),
            source: ProviderError::new(kind, "boom"),
        };
        assert_eq!(e(ProviderErrorKind::NotFound).code(), Code::NotFound);
        assert_eq!(
            e(ProviderErrorKind::Throttled).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            e(ProviderErrorKind::PermissionDenied).reason(),
            "ProviderError"
        );
    }
}
