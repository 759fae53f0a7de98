//! State checks and small actions shared by the scenarios: what "nothing lost, nothing
//! orphaned, converged" means here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_testenv::kubelet::KubeletSim;

use crate::e2e::{World, eventually};
use crate::{SECRET, WAIT};

/// The secret's current version id in moto (what the pod statuses must record).
pub async fn current_version(world: &World) -> String {
    let out = world
        .cluster
        .moto()
        .sm_client(&world.account)
        .get_secret_value()
        .secret_id(SECRET)
        .send()
        .await
        .expect("GetSecretValue");
    out.version_id().expect("version id").to_string()
}

/// Waits until `foosecret` in `namespace` holds `value`.
pub async fn wait_for_secret(world: &World, namespace: &str, value: &str) {
    let secrets: Api<Secret> = Api::namespaced(world.cluster.client(), namespace);
    eventually(
        WAIT,
        &format!("{namespace}/foosecret to hold {value:?}"),
        || async {
            let secret = secrets.get_opt("foosecret").await.ok()??;
            let data = secret.data?.get("SECRET_API_KEY")?.0.clone();
            (data == value.as_bytes()).then_some(())
        },
    )
    .await;
}

/// The namespace's pod statuses as (pod, target path, version of the seed secret).
pub async fn pod_statuses(world: &World, namespace: &str) -> BTreeSet<(String, String, String)> {
    Api::<SecretProviderClassPodStatus>::namespaced(world.cluster.client(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.status)
        .map(|s| {
            let versions: Vec<String> = s
                .objects
                .iter()
                .map(|o| format!("{}@{}", o.id, o.version))
                .collect();
            let version = match (s.mounted, versions.as_slice()) {
                (true, [one]) if one.starts_with(&format!("{SECRET}@")) => {
                    one[SECRET.len() + 1..].to_string()
                }
                _ => format!("unexpected: mounted={} objects={versions:?}", s.mounted),
            };
            (s.pod_name, s.target_path, version)
        })
        .collect()
}

/// The managed Secrets of `namespace` are exactly `expected`, and each is owned by objects that
/// exist (nothing is left without a consumer, nothing lost).
pub async fn assert_no_orphaned_secret(world: &World, namespace: &str, expected: &[&str]) {
    let client = world.cluster.client();
    let managed = Api::<Secret>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels("secrets-store.csi.k8s.io/managed=true"))
        .await
        .unwrap()
        .items;
    let names: Vec<_> = managed
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(names, expected, "managed Secrets in {namespace}");
    for secret in &managed {
        let owners = secret.metadata.owner_references.clone().unwrap_or_default();
        assert!(!owners.is_empty(), "{names:?}: Secret without owner");
        for owner in owners {
            let uid = match owner.kind.as_str() {
                "ReplicaSet" => Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                    .get_opt(&owner.name)
                    .await
                    .unwrap()
                    .and_then(|o| o.metadata.uid),
                "Pod" => Api::<Pod>::namespaced(client.clone(), namespace)
                    .get_opt(&owner.name)
                    .await
                    .unwrap()
                    .and_then(|o| o.metadata.uid),
                "SecretProviderClassPodStatus" => {
                    Api::<SecretProviderClassPodStatus>::namespaced(client.clone(), namespace)
                        .get_opt(&owner.name)
                        .await
                        .unwrap()
                        .and_then(|o| o.metadata.uid)
                }
                other => panic!("unexpected owner kind {other}"),
            };
            assert_eq!(
                uid,
                Some(owner.uid.clone()),
                "owner {owner:?} of a synced Secret is gone"
            );
        }
    }
}

/// The newest time (Unix seconds) an Event with `reason` about pod `pod` was observed.
pub async fn latest_event(world: &World, pod: &str, reason: &str) -> Option<i64> {
    Api::<Event>::namespaced(world.cluster.client(), &world.namespace)
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| {
            let series = e.series.and_then(|s| s.last_observed_time).map(|t| t.0);
            [
                series,
                e.event_time.map(|t| t.0),
                e.last_timestamp.map(|t| t.0),
            ]
            .into_iter()
            .flatten()
            .map(|t| t.as_second())
            .max()
        })
        .max()
}

pub fn unix_seconds() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

pub fn publish_counts(kubelet: &KubeletSim) -> BTreeMap<PathBuf, u64> {
    kubelet
        .published()
        .into_iter()
        .map(|v| (v.target_path, v.publish_count))
        .collect()
}

pub fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Fails if the agent process has exited (an unreaped child shows as a zombie).
pub fn assert_agent_alive(world: &World) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", world.agent.pid()));
    let state = stat
        .ok()
        .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next());
    assert!(
        matches!(state, Some(s) if s != 'Z' && s != 'X'),
        "the node agent exited:\n{}",
        world.agent.log_text()
    );
}

pub fn is_mount_point(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// Errors go to kubelet and Events: they must never carry a secret value.
pub fn assert_no_secret_value(message: &str) {
    for value in ["secretkey", "rotated"] {
        assert!(
            !message.contains(value),
            "secret value in an error: {message}"
        );
    }
}
