//! How long a synced Secret lives, chosen per SecretProviderClass, and the owner references that
//! make the garbage collector enforce it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The annotation on a SecretProviderClass that selects the [`SecretLifetime`] of its synced Secrets.
pub const SECRET_LIFETIME_ANNOTATION: &str = "secrets-store.csi.x-k8s.io/secret-lifetime";

/// When the garbage collector deletes a synced Secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecretLifetime {
    /// Default: owned by the consuming pods' controllers (ReplicaSet, StatefulSet, Job, …), or by
    /// the SecretProviderClassPodStatus of a bare pod, so the Secret goes when the last consuming
    /// workload is deleted and survives scaling to zero.
    #[default]
    Workload,
    /// Owned by the SecretProviderClassPodStatus of every consuming pod: deleted as soon as the
    /// last consuming pod is gone (upstream #1770). Safe for env-var consumers because the Secret
    /// is written before the first mount returns.
    Pods,
    /// No owner references: the Secret is kept after every consumer is gone (upstream #265).
    Retain,
}

/// An unknown value of [`SECRET_LIFETIME_ANNOTATION`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation {SECRET_LIFETIME_ANNOTATION} has value {0:?}; expected one of workload, pods, retain"
)]
pub struct InvalidLifetime(pub String);

impl SecretLifetime {
    /// Reads the lifetime from a SecretProviderClass's annotations (absent → [`SecretLifetime::Workload`]).
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, InvalidLifetime> {
        match annotations.and_then(|a| a.get(SECRET_LIFETIME_ANNOTATION)) {
            None => Ok(Self::Workload),
            Some(v) => match v.trim() {
                "" | "workload" => Ok(Self::Workload),
                "pods" => Ok(Self::Pods),
                "retain" => Ok(Self::Retain),
                _ => Err(InvalidLifetime(v.clone())),
            },
        }
    }
}

/// One pod that consumes a synced Secret, as far as ownership is concerned.
#[derive(Clone, Debug)]
pub struct Consumer {
    /// The pod's controller reference, if it has one.
    pub controller: Option<OwnerReference>,
    /// A reference to the pod's SecretProviderClassPodStatus (owned by the pod).
    pub pod_status: OwnerReference,
}

/// The owner references a synced Secret should carry for `consumers` under `lifetime`.
///
/// Sorted by uid and de-duplicated, so that applying the same state twice is a no-op. None of them
/// is a controller reference: the Secret has several owners and none of them manages it.
pub fn owner_references(lifetime: SecretLifetime, consumers: &[Consumer]) -> Vec<OwnerReference> {
    let mut refs: BTreeMap<String, OwnerReference> = BTreeMap::new();
    for consumer in consumers {
        let owner = match lifetime {
            SecretLifetime::Retain => continue,
            SecretLifetime::Pods => &consumer.pod_status,
            SecretLifetime::Workload => {
                consumer.controller.as_ref().unwrap_or(&consumer.pod_status)
            }
        };
        refs.entry(owner.uid.clone())
            .or_insert_with(|| OwnerReference {
                controller: None,
                block_owner_deletion: None,
                ..owner.clone()
            });
    }
    refs.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oref(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn consumer(controller: Option<(&str, &str)>, status_uid: &str) -> Consumer {
        Consumer {
            controller: controller.map(|(name, uid)| oref("ReplicaSet", name, uid)),
            pod_status: oref("SecretProviderClassPodStatus", status_uid, status_uid),
        }
    }

    #[test]
    fn lifetime_annotation_values() {
        let ann =
            |v: &str| BTreeMap::from([(SECRET_LIFETIME_ANNOTATION.to_string(), v.to_string())]);
        assert_eq!(
            SecretLifetime::from_annotations(None),
            Ok(SecretLifetime::Workload)
        );
        assert_eq!(
            SecretLifetime::from_annotations(Some(&ann("pods"))),
            Ok(SecretLifetime::Pods)
        );
        assert_eq!(
            SecretLifetime::from_annotations(Some(&ann(" retain "))),
            Ok(SecretLifetime::Retain)
        );
        assert_eq!(
            SecretLifetime::from_annotations(Some(&ann("workload"))),
            Ok(SecretLifetime::Workload)
        );
        let err = SecretLifetime::from_annotations(Some(&ann("forever"))).unwrap_err();
        assert!(err.to_string().contains("\"forever\""), "{err}");
    }

    /// Each row: a lifetime, the consumers as (controller uid, status uid), and the owner uids
    /// the Secret must carry, in order.
    #[test]
    fn owner_references_by_lifetime() {
        type Row = (
            &'static str,
            SecretLifetime,
            Vec<(Option<&'static str>, &'static str)>,
            Vec<&'static str>,
        );
        use SecretLifetime::{Pods, Retain, Workload};
        let rows: Vec<Row> = vec![
            ("no consumers", Workload, vec![], vec![]),
            ("no consumers, pods", Pods, vec![], vec![]),
            (
                "workload: controllers, bare pods by status, sorted, once each",
                Workload,
                vec![
                    (Some("u-rs-a"), "s1"),
                    (Some("u-rs-a"), "s2"),
                    (Some("u-rs-b"), "s3"),
                    (None, "s4"),
                ],
                vec!["s4", "u-rs-a", "u-rs-b"],
            ),
            (
                "workload: one controller for many pods",
                Workload,
                vec![(Some("rs"), "s1"), (Some("rs"), "s2"), (Some("rs"), "s3")],
                vec!["rs"],
            ),
            (
                "pods: every status, sorted, controllers ignored",
                Pods,
                vec![(Some("u-rs-a"), "s2"), (None, "s1"), (Some("u-rs-a"), "s3")],
                vec!["s1", "s2", "s3"],
            ),
            (
                "pods: the same status twice counts once",
                Pods,
                vec![(None, "s1"), (Some("rs"), "s1")],
                vec!["s1"],
            ),
            (
                "retain: no owners whatever the consumers",
                Retain,
                vec![(Some("u-rs-a"), "s1"), (None, "s2")],
                vec![],
            ),
        ];
        for (case, lifetime, consumers, want) in rows {
            let consumers: Vec<Consumer> = consumers
                .into_iter()
                .map(|(controller, status)| consumer(controller.map(|uid| ("rs", uid)), status))
                .collect();
            let refs = owner_references(lifetime, &consumers);
            let uids: Vec<&str> = refs.iter().map(|r| r.uid.as_str()).collect();
            assert_eq!(uids, want, "{case}");
            assert!(
                refs.iter()
                    .all(|r| r.controller.is_none() && r.block_owner_deletion.is_none()),
                "{case}: no owner is a controller or blocks deletion"
            );
            let reversed: Vec<Consumer> = consumers.iter().rev().cloned().collect();
            assert_eq!(
                owner_references(lifetime, &reversed),
                refs,
                "{case}: the order of consumers does not matter"
            );
        }
    }
}
