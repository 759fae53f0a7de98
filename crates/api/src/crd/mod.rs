//! The custom resources of group `secrets-store.csi.x-k8s.io` and their CRDs.
//!
//! Field names, optionality and CRD shape follow upstream secrets-store-csi-driver v1.6: v1 is
//! the storage version, v1alpha1 is served and deprecated, and neither CRD has a status
//! subresource (upstream writes `status` with ordinary create/update calls, and so do we).

mod generate;
mod pod_status;
mod spc;
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

#[cfg(test)]
mod tests;
