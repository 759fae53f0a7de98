//! The custom resources of group `secrets-store.csi.x-k8s.io` and their CRDs, plus our own
//! `SecretProviderClassSync` (group `secrets-store-rs.io`), the pod-less sync's status.
//!
//! Field names, optionality and CRD shape follow upstream secrets-store-csi-driver v1.6: v1 is
//! the storage version, v1alpha1 is served and deprecated, and neither CRD has a status
//! subresource (upstream writes `status` with ordinary create/update calls, and so do we).

mod generate;
mod pod_status;
mod spc;
mod sync_status;
pub mod v1alpha1;

pub use generate::{crd_files, crds, crds_yaml};
pub use pod_status::{
    SecretProviderClassObject, SecretProviderClassPodStatus, SecretProviderClassPodStatusFields,
    SecretProviderClassPodStatusStatus,
};
pub use spc::{
    SecretObject, SecretObjectData, SecretProviderClass, SecretProviderClassSpec,
    SecretProviderClassStatus,
};
pub use sync_status::{
    SYNC_API_GROUP, SecretProviderClassSync, SecretProviderClassSyncSpec,
    SecretProviderClassSyncStatus, SyncedObjectVersion,
};

#[cfg(test)]
mod tests;
