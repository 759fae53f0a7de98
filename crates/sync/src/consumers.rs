//! Which pods on this node consume a synced Secret: the input to its owner references.
//!
//! Derived from watched state (this node's SecretProviderClassPodStatuses, its pods and the
//! classes they name) rather than remembered, so a restarted agent computes the same owners.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};

use crate::lifetime::Consumer;

/// An owner reference to a SecretProviderClassPodStatus (which is itself owned by its pod).
pub fn pod_status_owner(status: &SecretProviderClassPodStatus) -> Option<OwnerReference> {
    let meta = status.meta();
    Some(OwnerReference {
        api_version: SecretProviderClassPodStatus::api_version(&()).into_owned(),
        kind: SecretProviderClassPodStatus::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// The pod's controller (ReplicaSet, StatefulSet, Job, …), if any.
pub fn pod_controller(pod: &Pod) -> Option<OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .cloned()
}

/// The consumers of Secret `secret_name` among `statuses` (all in one namespace).
///
/// A status counts when its class syncs `secret_name` and its pod is not terminating. `class_of`
/// and `pod_of` look objects up by name in that namespace; a status whose class or pod is unknown
/// is skipped (the reconciler will see it again once the caches catch up).
pub fn consumers_of<'a>(
    secret_name: &str,
    statuses: impl IntoIterator<Item = &'a SecretProviderClassPodStatus>,
    class_of: impl Fn(&str) -> Option<std::sync::Arc<SecretProviderClass>>,
    pod_of: impl Fn(&str) -> Option<std::sync::Arc<Pod>>,
) -> Vec<Consumer> {
    let mut consumers = Vec::new();
    for status in statuses {
        let Some(fields) = status.status.as_ref() else {
            continue;
        };
        let Some(class) = class_of(&fields.secret_provider_class_name) else {
            continue;
        };
        if class.secret_object(secret_name).is_none() {
            continue;
        }
        let Some(pod) = pod_of(&fields.pod_name) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(pod_status) = pod_status_owner(status) else {
            continue;
        };
        consumers.push(Consumer {
            controller: pod_controller(&pod),
            pod_status,
        });
    }
    consumers
}
