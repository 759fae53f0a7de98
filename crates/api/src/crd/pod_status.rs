//! `SecretProviderClassPodStatus` v1: what one pod has mounted from one class on one node.
//!
//! Upstream's object has a `status` and no `spec`; `#[kube(no_spec)]` gives the same wire shape.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The (empty) top-level fields of a `SecretProviderClassPodStatus` besides `status`.
///
/// The object has no `spec`; this exists because the derive needs a struct to hang the resource
/// on. Build objects with [`SecretProviderClassPodStatus::for_pod`].
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "secrets-store.csi.x-k8s.io",
    version = "v1",
    kind = "SecretProviderClassPodStatus",
    plural = "secretproviderclasspodstatuses",
    singular = "secretproviderclasspodstatus",
    namespaced,
    no_spec,
    status = "SecretProviderClassPodStatusStatus",
    doc = "The objects a pod has mounted from a SecretProviderClass, written by the node's driver"
)]
pub struct SecretProviderClassPodStatusFields {}

/// The observed state of one pod's volume
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassPodStatusStatus {
    /// Name of the pod
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Name of the SecretProviderClass in the pod's namespace
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_provider_class_name: String,
    /// Whether the volume is mounted
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mounted: bool,
    /// The volume's target path on the node
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_path: String,
    /// The mounted objects and their versions
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<SecretProviderClassObject>,
}

/// An object fetched from the external store
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct SecretProviderClassObject {
    /// The object's identifier, unique within the volume
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The object's version in the external store
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl SecretProviderClassPodStatus {
    /// The object name upstream uses: `<pod>-<namespace>-<class>`.
    pub fn object_name(pod: &str, namespace: &str, class: &str) -> String {
        format!("{pod}-{namespace}-{class}")
    }

    /// A status object named [`Self::object_name`] in the pod's namespace with `status` set.
    ///
    /// Labels and owner references are left to the caller (the driver adds the node label and
    /// the pod owner reference).
    pub fn for_pod(namespace: &str, status: SecretProviderClassPodStatusStatus) -> Self {
        let name = Self::object_name(
            &status.pod_name,
            namespace,
            &status.secret_provider_class_name,
        );
        let mut obj = Self::new(&name, SecretProviderClassPodStatusFields {});
        obj.metadata.namespace = Some(namespace.to_owned());
        obj.status = Some(status);
        obj
    }
}
