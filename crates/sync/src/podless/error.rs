//! Why a pod-less sync failed: one enum, each variant with its condition/Event reason, its metric
//! label and whether a retry soon can help. Never holds a value or a token.

use secrets_store_api::labels::PODLESS_OPT_IN;
use secrets_store_provider::{ProviderError, ProviderErrorKind};

use super::config::InvalidOptIn;
use crate::lifetime::InvalidLifetime;
use crate::syncer::SyncError;

/// A failed pod-less sync of one SecretProviderClass.
#[derive(Debug, thiserror::Error)]
pub enum PodlessError {
    /// The class's opt-in annotations are invalid.
    #[error("SecretProviderClass {namespace}/{class}: {source}")]
    InvalidOptIn {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
        /// What is wrong.
        source: InvalidOptIn,
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
    /// The class names another provider than the built-in AWS one.
    #[error(
        "SecretProviderClass {namespace}/{class}: provider {provider:?} cannot sync without a pod; only the built-in \"aws\" provider can"
    )]
    UnsupportedProvider {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
        /// The provider it names.
        provider: String,
    },
    /// The class asks for EKS Pod Identity, which needs a pod.
    #[error(
        "SecretProviderClass {namespace}/{class}: usePodIdentity cannot sync without a pod (the EKS Pod Identity Agent serves the pods of its node, for the audience pods.eks.amazonaws.com, which the controller may not mint); use IRSA (eks.amazonaws.com/role-arn on the ServiceAccount)"
    )]
    PodIdentityUnsupported {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
    },
    /// The class has no `secretObjects`: nothing to keep without a pod.
    #[error(
        "SecretProviderClass {namespace}/{class}: no secretObjects; pod-less sync keeps Kubernetes Secrets and has nothing to write"
    )]
    NothingToSync {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
    },
    /// The ServiceAccount does not exist or did not opt in: no token was asked for.
    #[error(
        "ServiceAccount {namespace}/{service_account} does not exist or lacks the label {PODLESS_OPT_IN}=true; its owner must opt in before a SecretProviderClass may use its identity (no token was requested)"
    )]
    ServiceAccountNotOptedIn {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// Its name.
        service_account: String,
    },
    /// TokenRequest failed (refused by RBAC or the admission policy, or the API server is down).
    #[error("requesting a token of ServiceAccount {namespace}/{service_account}: {source}")]
    Token {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// Its name.
        service_account: String,
        /// The client error (carries no token: the request failed).
        source: kube::Error,
    },
    /// The provider failed; the Secrets keep their last good values.
    #[error("SecretProviderClass {namespace}/{class}: provider aws: {source}")]
    Provider {
        /// Namespace of the class.
        namespace: String,
        /// Name of the class.
        class: String,
        /// The provider's error (kind and a message without values).
        source: ProviderError,
    },
    /// Writing a Secret failed (the node path's errors, unchanged).
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl PodlessError {
    /// The condition reason and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidOptIn { .. } => "InvalidOptIn",
            Self::InvalidLifetime { .. } => "InvalidSecretObject",
            Self::UnsupportedProvider { .. } => "UnsupportedProvider",
            Self::PodIdentityUnsupported { .. } => "PodIdentityUnsupported",
            Self::NothingToSync { .. } => "NoSecretObjects",
            Self::ServiceAccountNotOptedIn { .. } => "ServiceAccountNotOptedIn",
            Self::Token { .. } => "TokenRequestFailed",
            Self::Provider { .. } => "FetchFailed",
            Self::Sync(e) => e.reason(),
        }
    }

    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Provider { source, .. } => match source.kind {
                ProviderErrorKind::InvalidParameters => "provider_invalid_parameters",
                ProviderErrorKind::Unauthenticated => "provider_unauthenticated",
                ProviderErrorKind::PermissionDenied => "provider_permission_denied",
                ProviderErrorKind::NotFound => "provider_not_found",
                ProviderErrorKind::Throttled => "provider_throttled",
                ProviderErrorKind::Unavailable => "provider_unavailable",
                ProviderErrorKind::InvalidResponse => "provider_invalid_response",
                ProviderErrorKind::Internal => "provider_internal",
            },
            Self::InvalidOptIn { .. } => "invalid_opt_in",
            Self::InvalidLifetime { .. } => "invalid_lifetime",
            Self::UnsupportedProvider { .. } => "unsupported_provider",
            Self::PodIdentityUnsupported { .. } => "pod_identity_unsupported",
            Self::NothingToSync { .. } => "no_secret_objects",
            Self::ServiceAccountNotOptedIn { .. } => "service_account_not_opted_in",
            Self::Token { .. } => "token_request",
            Self::Sync(_) => "secret_write",
        }
    }

    /// Whether trying again soon, with nothing changed, can succeed (an outage, a throttle), as
    /// opposed to something a person must fix (whose fix, an edit of the class or the
    /// ServiceAccount, triggers a sync by itself).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Token { .. } => true,
            Self::Provider { source, .. } => matches!(
                source.kind,
                ProviderErrorKind::Throttled
                    | ProviderErrorKind::Unavailable
                    | ProviderErrorKind::Internal
            ),
            Self::Sync(e) => e.retryable(),
            _ => false,
        }
    }
}
