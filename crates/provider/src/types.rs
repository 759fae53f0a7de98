use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::SecretBytes;

/// Unix permission bits of a file, e.g. `0o644`.
pub type FileMode = u32;

/// The default permission upstream sends to providers (`"420"` == `0o644`).
pub const DEFAULT_FILE_PERMISSION: FileMode = 0o644;

/// What a provider needs to produce one volume's files.
///
/// This mirrors the upstream `v1alpha1.MountRequest`, with the JSON fields already decoded.
#[derive(Clone, Debug, Default)]
pub struct MountRequest {
    /// SecretProviderClass `spec.parameters`, overridden by the volume context keys kubelet sent
    /// (pod name/namespace/uid, service account name, and the `csi.storage.k8s.io/serviceAccount.tokens`
    /// key). Tokens live here, so `Debug` of the whole request is redacted by [`Attributes`].
    pub attributes: Attributes,
    /// The contents of the volume's `nodePublishSecretRef` Secret, if any.
    pub secrets: BTreeMap<String, SecretBytes>,
    /// Where the volume is mounted (for providers that report or derive paths from it).
    pub target_path: PathBuf,
    /// Default permission for files the provider does not give an explicit mode.
    pub permission: FileMode,
    /// The object versions currently mounted (empty on the first mount).
    pub current_object_versions: Vec<ObjectVersion>,
}

/// The attribute map of a mount request.
///
/// A newtype so that `Debug` never prints the service account tokens it carries.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Attributes(pub BTreeMap<String, String>);

impl Attributes {
    /// The key under which kubelet passes the requested service account tokens.
    pub const TOKENS_KEY: &'static str = "csi.storage.k8s.io/serviceAccount.tokens";

    /// Looks up one attribute.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if k == Self::TOKENS_KEY {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

/// One file of a volume, relative to the volume root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderFile {
    /// Relative path inside the volume, under the contract of [`crate::validate_path`] (checked
    /// by whoever produces it and again by the driver before writing).
    pub path: String,
    /// Permission bits.
    pub mode: FileMode,
    /// The file's content.
    pub contents: SecretBytes,
}

/// The version of one mounted object, as reported to `SecretProviderClassPodStatus`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectVersion {
    /// Object identifier (for the AWS provider, the file name).
    pub id: String,
    /// Backend version (for example a Secrets Manager VersionId or an SSM parameter version).
    pub version: String,
}

/// A provider's answer to a mount request.
#[derive(Clone, Debug, Default)]
pub struct MountResponse {
    /// Files to write. Empty means the provider wrote the files itself (upstream gRPC contract).
    pub files: Vec<ProviderFile>,
    /// One version per mounted object; never empty on success.
    pub object_versions: Vec<ObjectVersion>,
}

/// Why a mount failed, coarse enough to map onto gRPC codes, Event reasons and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderErrorKind {
    /// The SecretProviderClass parameters or volume attributes are invalid.
    InvalidParameters,
    /// The pod's identity is missing or was rejected (no token, no role annotation, AssumeRole denied).
    Unauthenticated,
    /// The backend denied access to an object.
    PermissionDenied,
    /// An object does not exist.
    NotFound,
    /// The backend throttled us beyond the retry budget.
    Throttled,
    /// The backend or the provider process is unreachable or failed transiently.
    Unavailable,
    /// The provider's response violated the contract (bad paths, missing versions, too large).
    InvalidResponse,
    /// Anything else.
    Internal,
}

impl ProviderErrorKind {
    /// A stable label for metrics and the upstream `error.code` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParameters => "InvalidParameters",
            Self::Unauthenticated => "Unauthenticated",
            Self::PermissionDenied => "PermissionDenied",
            Self::NotFound => "NotFound",
            Self::Throttled => "Throttled",
            Self::Unavailable => "Unavailable",
            Self::InvalidResponse => "InvalidResponse",
            Self::Internal => "Internal",
        }
    }
}

/// A failed mount. The message names the object and the cause and never contains secret bytes
/// or tokens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// The class of failure.
    pub kind: ProviderErrorKind,
    /// Human-readable cause, safe to put in Events and logs.
    pub message: String,
}

impl ProviderError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
