//! The provider contract shared by the CSI node service and every secret backend.
//!
//! A [`Provider`] turns a mount request (the SecretProviderClass parameters merged with the pod's
//! volume context) into files and object versions. Built-in providers (AWS) implement the trait in
//! process; external providers are reached through the upstream `v1alpha1.CSIDriverProvider` gRPC
//! API by an adapter that implements the same trait, and our AWS provider can be served over that
//! API to the upstream Go driver by the reverse adapter.

mod file_path;
pub mod grpc;
mod secret;
mod types;

pub use file_path::{
    MAX_ELEMENT_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN, PathError, conflicting_path, validate_path,
};
pub use secret::SecretBytes;
pub use types::{
    Attributes, DEFAULT_FILE_PERMISSION, FileMode, MountRequest, MountResponse, ObjectVersion,
    ProviderError, ProviderErrorKind, ProviderFile,
};

use async_trait::async_trait;

/// A secret backend that can produce the files of one volume.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The name used in `SecretProviderClass.spec.provider` (for example `aws`).
    fn name(&self) -> &str;

    /// The provider's version string, reported by the upstream `Version` RPC.
    fn version(&self) -> &str;

    /// Fetches the objects described by `request` and returns them as files.
    ///
    /// Providers return file contents and never write to `request.target_path` themselves; the
    /// driver owns the atomic write. (External gRPC providers that write the files themselves are
    /// handled by the gRPC adapter, which returns an empty file list.)
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError>;
}
