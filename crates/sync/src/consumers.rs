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
        // Trimmed as the desired Secret's name is: a class naming " foo " syncs Secret "foo".
        if !class
            .spec
            .secret_objects
            .iter()
            .any(|o| o.secret_name.trim() == secret_name)
        {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use secrets_store_api::crd::SecretProviderClassPodStatusStatus;

    use super::*;

    const NS: &str = "team";

    /// A class syncing the named Secrets.
    fn class(name: &str, secrets: &[&str]) -> SecretProviderClass {
        let objects: Vec<_> = secrets
            .iter()
            .map(|s| serde_json::json!({"secretName": s, "type": "Opaque", "data": []}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "aws", "parameters": {}, "secretObjects": objects},
        }))
        .unwrap()
    }

    /// A pod, builder style.
    struct PodFixture(Pod);

    impl PodFixture {
        fn named(name: &str) -> Self {
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.into());
            pod.metadata.namespace = Some(NS.into());
            Self(pod)
        }

        /// Owned by a ReplicaSet, as its controller or not.
        fn owned_by(mut self, uid: &str, controller: bool) -> Self {
            self.0
                .metadata
                .owner_references
                .get_or_insert_with(Vec::new)
                .push(OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("rs-{uid}"),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                });
            self
        }

        fn terminating(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(Default::default()));
            self
        }
    }

    /// The status of `pod`'s volume of `class`, with uid `uid` (`None`: not yet stored).
    fn status(pod: &str, class: &str, uid: Option<&str>) -> SecretProviderClassPodStatus {
        let mut status = SecretProviderClassPodStatus::for_pod(
            NS,
            SecretProviderClassPodStatusStatus {
                pod_name: pod.into(),
                secret_provider_class_name: class.into(),
                mounted: true,
                ..Default::default()
            },
        );
        status.metadata.uid = uid.map(String::from);
        status
    }

    /// A status whose `status` was never written.
    fn empty_status(uid: &str) -> SecretProviderClassPodStatus {
        let mut status = status("p", "c", Some(uid));
        status.status = None;
        status
    }

    /// Each row: the watched statuses, classes and pods, and the consumers of Secret `s` as
    /// (status uid, controller uid).
    #[test]
    fn consumers_are_the_live_pods_whose_class_syncs_the_secret() {
        type Row = (
            &'static str,
            Vec<SecretProviderClassPodStatus>,
            Vec<SecretProviderClass>,
            Vec<PodFixture>,
            Vec<(&'static str, Option<&'static str>)>,
        );
        let rows: Vec<Row> = vec![
            (
                "a pod of a ReplicaSet is consumed by its status and controller",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1").owned_by("rs1", true)],
                vec![("s1", Some("rs1"))],
            ),
            (
                "a bare pod has no controller",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1")],
                vec![("s1", None)],
            ),
            (
                "an owner that is not the controller does not count",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1").owned_by("other", false)],
                vec![("s1", None)],
            ),
            (
                "a class that does not sync the Secret",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &["t"])],
                vec![PodFixture::named("p1")],
                vec![],
            ),
            (
                "a class named with spaces around the Secret name syncs it",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &[" s "])],
                vec![PodFixture::named("p1")],
                vec![("s1", None)],
            ),
            (
                "an unknown class is skipped",
                vec![status("p1", "missing", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1")],
                vec![],
            ),
            (
                "an unknown pod is skipped",
                vec![status("gone", "c", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1")],
                vec![],
            ),
            (
                "a terminating pod no longer consumes",
                vec![status("p1", "c", Some("s1"))],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1").owned_by("rs1", true).terminating()],
                vec![],
            ),
            (
                "a status never written is skipped",
                vec![empty_status("s1")],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p")],
                vec![],
            ),
            (
                "a status without a uid cannot be an owner",
                vec![status("p1", "c", None)],
                vec![class("c", &["s"])],
                vec![PodFixture::named("p1")],
                vec![],
            ),
            (
                "every consuming pod, in the order of the statuses",
                vec![
                    status("p1", "c", Some("s1")),
                    status("p2", "d", Some("s2")),
                    status("p3", "e", Some("s3")),
                    status("p4", "c", Some("s4")),
                ],
                vec![
                    class("c", &["s"]),
                    class("d", &["s", "t"]),
                    class("e", &["t"]),
                ],
                vec![
                    PodFixture::named("p1").owned_by("rs1", true),
                    PodFixture::named("p2").owned_by("rs2", true),
                    PodFixture::named("p3").owned_by("rs3", true),
                    PodFixture::named("p4").owned_by("rs1", true),
                ],
                vec![
                    ("s1", Some("rs1")),
                    ("s2", Some("rs2")),
                    ("s4", Some("rs1")),
                ],
            ),
        ];
        for (case, statuses, classes, pods, want) in rows {
            let classes: HashMap<String, Arc<SecretProviderClass>> = classes
                .into_iter()
                .map(|c| (c.metadata.name.clone().unwrap(), Arc::new(c)))
                .collect();
            let pods: HashMap<String, Arc<Pod>> = pods
                .into_iter()
                .map(|p| (p.0.metadata.name.clone().unwrap(), Arc::new(p.0)))
                .collect();
            let consumers = consumers_of(
                "s",
                statuses.iter(),
                |name| classes.get(name).cloned(),
                |name| pods.get(name).cloned(),
            );
            let got: Vec<(&str, Option<&str>)> = consumers
                .iter()
                .map(|c| {
                    (
                        c.pod_status.uid.as_str(),
                        c.controller.as_ref().map(|o| o.uid.as_str()),
                    )
                })
                .collect();
            assert_eq!(got, want, "{case}");
            for consumer in &consumers {
                assert_eq!(
                    consumer.pod_status.kind, "SecretProviderClassPodStatus",
                    "{case}"
                );
            }
        }
    }
}
