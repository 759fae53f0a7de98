//! `SecretProviderClass` v1: which provider to call and with which parameters, plus the optional
//! Kubernetes Secrets to sync from the mounted objects.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

// Every field is optional on the wire (upstream uses `omitempty` everywhere): an absent field
// deserializes to its empty value and an empty value is not serialized. Doc comments on these
// types become the CRD's descriptions, so they speak to users.

/// The desired state of a SecretProviderClass
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[kube(
    group = "secrets-store.csi.x-k8s.io",
    version = "v1",
    kind = "SecretProviderClass",
    plural = "secretproviderclasses",
    singular = "secretproviderclass",
    namespaced,
    status = "SecretProviderClassStatus",
    doc = "A provider and its parameters, referenced by CSI volumes through the `secretProviderClass` volume attribute"
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

/// The wire form of [`SecretProviderClassSpec`], for its `Deserialize`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecWire {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    secret_objects: Vec<SecretObject>,
}

/// Upstream accepts a class without `spec` (or with `spec: null`), but the derived root struct
/// requires the field. Deserializing through `Option` turns "missing" into the empty spec, so one
/// odd object cannot make a whole list or watch fail to decode.
impl<'de> Deserialize<'de> for SecretProviderClassSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<SpecWire>::deserialize(deserializer)?
            .map(|w| Self {
                provider: w.provider,
                parameters: w.parameters,
                secret_objects: w.secret_objects,
            })
            .unwrap_or_default())
    }
}

/// A Kubernetes Secret to keep in sync with mounted objects
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// Name of the Kubernetes Secret
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    /// Type of the Kubernetes Secret (for example `Opaque` or `kubernetes.io/tls`)
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// Labels to set on the Kubernetes Secret
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations to set on the Kubernetes Secret
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Which mounted object fills which data key
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<SecretObjectData>,
}

/// A data key of a synced Secret and the mounted object it comes from
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// Name of the mounted object (its file name in the volume)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_name: String,
    /// Key in the Secret's data
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

// Empty in v1, as upstream: the per-pod state lives in `SecretProviderClassPodStatus`. (The
// deprecated v1alpha1 schema still carries `byPod`; see `super::v1alpha1`.)

/// The observed state of a SecretProviderClass
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretProviderClassStatus {}

impl SecretProviderClass {
    /// The Secrets this class syncs, by name (for lookups during secret sync).
    pub fn secret_object(&self, secret_name: &str) -> Option<&SecretObject> {
        self.spec
            .secret_objects
            .iter()
            .find(|o| o.secret_name == secret_name)
    }
}
