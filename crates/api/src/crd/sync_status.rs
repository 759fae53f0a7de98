//! `SecretProviderClassSync` (group `secrets-store-rs.io`, ours, not upstream's): what the
//! pod-less sync of one SecretProviderClass last did. One per opted-in class, of the same name,
//! in the same namespace, owned by the class. Never holds a value or a hash of one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of our own custom resources (upstream's group keeps upstream's kinds only).
pub const SYNC_API_GROUP: &str = "secrets-store-rs.io";

/// Which class this object reports on (written by the controller, never read as input)
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "secrets-store-rs.io",
    version = "v1alpha1",
    kind = "SecretProviderClassSync",
    plural = "secretproviderclasssyncs",
    singular = "secretproviderclasssync",
    shortname = "spcsync",
    namespaced,
    status = "SecretProviderClassSyncStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Stale","type":"string","jsonPath":".status.conditions[?(@.type==\"Stale\")].status"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    doc = "The state of the pod-less sync of the SecretProviderClass of the same name"
)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSyncSpec {
    /// The SecretProviderClass (same namespace) whose Secrets are synced without a pod
    pub secret_provider_class: String,
    /// The ServiceAccount (same namespace) whose identity fetches the objects
    pub service_account: String,
}

/// What the last sync attempts did
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSyncStatus {
    /// `Ready`: whether the latest attempt synced every Secret. `Stale`: whether the Secrets
    /// keep the values of an earlier sync because the latest attempt failed
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the Secrets were last written or confirmed from the provider
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When the next refresh is due
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// The provider's version of each object at the last successful sync (for AWS, the Secrets
    /// Manager VersionId or the SSM parameter version); never a value or a hash of one
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<SyncedObjectVersion>,
    /// The Secrets the last successful sync wrote or confirmed
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// The version of one fetched object
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedObjectVersion {
    /// The object's file name (its alias, or its name with `/` translated)
    pub id: String,
    /// The provider's version of it
    pub version: String,
}
