//! The deprecated `v1alpha1` versions, served (not stored) so that existing manifests and objects
//! keep working, as upstream v1.6 does. Only used to generate the CRD versions; code reads and
//! writes v1 (the apiserver converts with the `None` strategy, i.e. same fields).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pod_status::SecretProviderClassPodStatusStatus;
use super::spc::SecretObject;

/// The warning the apiserver returns to clients that use `v1alpha1` (upstream's wording).
pub const DEPRECATION_WARNING: &str =
    "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated. Use secrets-store.csi.x-k8s.io/v1 instead.";

/// The desired state of a SecretProviderClass
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "secrets-store.csi.x-k8s.io",
    version = "v1alpha1",
    kind = "SecretProviderClass",
    plural = "secretproviderclasses",
    singular = "secretproviderclass",
    namespaced,
    status = "SecretProviderClassStatus",
    storage = false,
    deprecated = "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated. Use secrets-store.csi.x-k8s.io/v1 instead.",
    doc = "A provider and its parameters (deprecated v1alpha1 version)"
)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSpec {
    /// Name of the provider that fetches the objects (for example `aws`)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Provider-specific configuration, passed to the provider as the mount attributes
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Kubernetes Secrets to create from the mounted objects (secret sync)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_objects: Vec<SecretObject>,
}

// v1alpha1 status still has the `byPod` list that v1 dropped.

/// The observed state of a SecretProviderClass
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassStatus {
    /// Pods that used this class (no longer written by current drivers)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_pod: Vec<ByPodStatus>,
}

/// A pod that used the class
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ByPodStatus {
    /// Identifier of the pod
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Namespace of the pod
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The (empty) top-level fields of a SecretProviderClassPodStatus besides `status`
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "secrets-store.csi.x-k8s.io",
    version = "v1alpha1",
    kind = "SecretProviderClassPodStatus",
    plural = "secretproviderclasspodstatuses",
    singular = "secretproviderclasspodstatus",
    namespaced,
    no_spec,
    status = "SecretProviderClassPodStatusStatus",
    storage = false,
    deprecated,
    doc = "The objects a pod has mounted from a SecretProviderClass (deprecated v1alpha1 version)"
)]
pub struct SecretProviderClassPodStatusFields {}
