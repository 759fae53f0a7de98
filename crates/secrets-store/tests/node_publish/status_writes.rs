//! The pod-status writes of a publish against the real API server: a first publish creates the
//! object with a plain POST, and a later server-side apply by the agent still changes and
//! removes what that create wrote (field ownership stays the agent's).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use secrets_store_api::crd::{
    SecretProviderClassObject, SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
use secrets_store_api::names::STATUS_FIELD_MANAGER as FIELD_MANAGER;
use secrets_store_driver::{PodEffects, records_same};
use secrets_store_testenv::Cluster;

/// The status of pod `web`'s volume, owned by `owner` (name, uid).
fn status(
    ns: &str,
    owner: &(String, String),
    objects: &[(&str, &str)],
) -> SecretProviderClassPodStatus {
    let (owner_name, pod_uid) = owner;
    let mut s = SecretProviderClassPodStatus::for_pod(
        ns,
        SecretProviderClassPodStatusStatus {
            pod_name: "web".into(),
            secret_provider_class_name: "db".into(),
            mounted: true,
            target_path: format!("/pods/{pod_uid}/mount"),
            objects: objects
                .iter()
                .map(|(id, version)| SecretProviderClassObject {
                    id: id.to_string(),
                    version: version.to_string(),
                })
                .collect(),
        },
    );
    s.metadata.labels = Some(BTreeMap::from([(
        "internal.secrets-store.csi.k8s.io/node-name".to_string(),
        "node-1".to_string(),
    )]));
    s.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: owner_name.clone(),
        uid: pod_uid.clone(),
        ..Default::default()
    }]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_status_is_still_changed_and_pruned_by_the_agents_apply() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("status-writes").await;
    let effects = PodEffects::new(cluster.client(), "node-1");
    // Real owners: the garbage collector deletes a status whose owner does not exist.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    let mut owners = Vec::new();
    for name in ["web", "web-again"] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let pod = pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod");
        owners.push((name.to_string(), pod.metadata.uid.unwrap()));
    }
    let first = status(&ns, &owners[0], &[("a", "1"), ("b", "1")]);

    let created = effects
        .create_status(&first)
        .await
        .expect("create")
        .expect("absent before");
    assert!(records_same(&created, &first));
    let managers: Vec<_> = created
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect();
    assert_eq!(managers, [FIELD_MANAGER], "the create is the agent's");
    // A second create finds it there (a remount of the same pod, an agent restart).
    assert!(
        effects
            .create_status(&first)
            .await
            .expect("create")
            .is_none()
    );
    let name = first.metadata.name.clone().unwrap();
    let live = effects.get_status(&ns, &name).await.expect("get").unwrap();
    assert!(records_same(&live, &first), "nothing to write");

    // A republish whose objects changed, with another owner (as for a pod recreated under the
    // same name): the apply replaces the owner and drops object `b` the create wrote.
    let second = status(&ns, &owners[1], &[("a", "2")]);
    assert!(!records_same(&live, &second));
    let applied = effects
        .apply_status(&second, Some(&live))
        .await
        .expect("apply");
    assert!(
        records_same(&applied, &second),
        "the apply left fields of the create behind: {:?} {:?}",
        applied.metadata.owner_references,
        applied.status
    );
    let stored = effects.get_status(&ns, &name).await.expect("get").unwrap();
    assert!(records_same(&stored, &second));
    let entries: Vec<_> = stored
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(entries, [(FIELD_MANAGER.to_string(), "Apply".to_string())]);
    // And back again: a later apply still owns what it wrote.
    let third = status(&ns, &owners[1], &[("a", "2"), ("c", "1")]);
    let applied = effects
        .apply_status(&third, Some(&stored))
        .await
        .expect("apply");
    assert!(records_same(&applied, &third));
    let fourth = status(&ns, &owners[1], &[("c", "2")]);
    let applied = effects
        .apply_status(&fourth, Some(&applied))
        .await
        .expect("apply");
    assert!(records_same(&applied, &fourth));
}
