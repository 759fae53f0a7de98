//! Sync without a pod through the real binary (issue 16): two `secrets-store controller
//! --podless-sync` replicas, running as the chart's controller ServiceAccount under the chart's
//! RBAC and admission policies, against a real apiserver, kube-controller-manager (ReplicaSets,
//! garbage collection) and moto. No pod mounts anything: the seed's class alone gives
//! `foosecret`; a rotation in AWS reaches it on the next refresh and rolls the opted-in
//! Deployment that reads it once; a killed leader's standby carries on with both, rolling nothing
//! twice; deleting the class deletes the Secret.

#[path = "helm_chart/chart.rs"]
mod chart;
mod common;
mod podless_world;
#[allow(dead_code)]
#[path = "controller/support.rs"]
mod support;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_sync::rollout::{ROLLED_OUT_ANNOTATION, digest_annotation};
use secrets_store_testenv::{Cluster, eventually, seed};

use common::controller::ControllerProc;
use podless_world::*;
use support::Workloads;

/// The class's refresh interval: the shortest the controller accepts.
const EVERY: &str = "30s";
/// A reconcile of the pod-less sync that succeeded, as `/metrics` shows it.
const OK_RECONCILES: &str = "podless_sync_reconciles_total{result=\"ok\"}";

/// One replica of the controller with pod-less sync, as the chart's controller identity.
fn replica(cluster: &Cluster, kubeconfig: &std::path::Path, name: &str) -> ControllerProc {
    let endpoint = cluster.moto().endpoint();
    ControllerProc::start_with(
        cluster,
        kubeconfig,
        release(),
        name,
        &["--podless-sync"],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", seed::REGION),
        ],
    )
}

/// What the rollout controller recorded on `foosecret`, and the digest on `app`'s template.
async fn digests(w: &Workloads) -> (Option<String>, Option<String>) {
    let recorded = w
        .secrets()
        .get(support::SECRET)
        .await
        .unwrap()
        .annotations()
        .get(ROLLED_OUT_ANNOTATION)
        .cloned();
    let template = w
        .deployments()
        .get("app")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(&digest_annotation(support::SECRET)).cloned());
    (recorded, template)
}

/// Waits until `foosecret` holds `value`, then until the Deployment rolled to it: a digest other
/// than `before` recorded, the template carrying it, and `replica_sets` ReplicaSets.
async fn rolled_to(w: &Workloads, value: &str, before: &str, replica_sets: usize) -> String {
    eventually(WAIT, &format!("foosecret = {value}"), || async {
        (secret_value(&w.client, &w.ns, support::SECRET, "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(value))
        .then_some(())
    })
    .await;
    let recorded = eventually(WAIT, &format!("app rolled to {value}"), || async {
        match digests(w).await {
            (Some(r), Some(t)) if r == t && r != before => Some(r),
            _ => None,
        }
    })
    .await;
    eventually(WAIT, &format!("{replica_sets} ReplicaSets"), || async {
        (w.replica_sets("app").await == replica_sets).then_some(())
    })
    .await;
    recorded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_binary_syncs_rotates_rolls_once_and_survives_its_leader() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let release_ns = release();
    let admin = cluster.client();
    let w = Workloads {
        client: admin.clone(),
        ns: cluster.new_namespace("podless-bin").await,
    };
    let account = cluster.moto().new_account();
    let role = seed::seed_aws(cluster, &account, "secretkey").await;
    service_account(&admin, &w.ns, &role, true).await;
    podless_class(&admin, &w.ns, EVERY).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = chart::controller_kubeconfig(cluster, release_ns, dir.path());
    let a = replica(cluster, &kubeconfig, "podless-a");
    let b = replica(cluster, &kubeconfig, "podless-b");
    let lease = format!("{}-controller", chart::NAME);
    let leader_of = || async {
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), release_ns)
            .get_opt(&lease)
            .await
            .unwrap()?
            .spec?
            .holder_identity
    };
    let holder = eventually(WAIT, "a leader", || async {
        leader_of().await.filter(|h| a.is(h) || b.is(h))
    })
    .await;
    let (mut leader, standby) = if a.is(&holder) { (a, b) } else { (b, a) };

    // No pod anywhere in the namespace, and yet the seed's Secret.
    eventually(WAIT, "foosecret with SECRET_API_KEY", || async {
        (secret_value(&admin, &w.ns, support::SECRET, "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("secretkey"))
        .then_some(())
    })
    .await;
    let pods = Api::<Pod>::namespaced(admin.clone(), &w.ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(pods.items.is_empty(), "a pod in {}", w.ns);
    let class_uid = Api::<SecretProviderClass>::namespaced(admin.clone(), &w.ns)
        .get(SEED_CLASS)
        .await
        .unwrap()
        .uid();
    let secret: Secret = w.secrets().get(support::SECRET).await.unwrap();
    assert_eq!(
        secret.owner_references().first().map(|o| Some(&o.uid)),
        Some(class_uid.as_ref())
    );

    // A Deployment that opted in to rollout, created once the Secret exists: its creation is
    // not a change, so it keeps its one ReplicaSet.
    w.create_deployment("app", true).await;
    let first = eventually(WAIT, "the digest recorded at first sight", || async {
        digests(&w).await.0
    })
    .await;

    // A rotation in AWS: the next refresh writes it, the Deployment rolls once.
    seed::rotate(cluster, &account, "rotated-1").await;
    let second = rolled_to(&w, "rotated-1", &first, 2).await;
    assert_eq!(leader.metric("controller_leader"), Some(1.0));
    assert_eq!(standby.metric("controller_leader"), Some(0.0));
    assert_eq!(standby.metric(OK_RECONCILES), None, "the standby synced");

    // The leader dies without releasing anything; the next rotation is the standby's to sync
    // and to roll, once.
    leader.kill_hard();
    seed::rotate(cluster, &account, "rotated-2").await;
    eventually(WAIT, "the standby leading", || async {
        leader_of().await.filter(|h| standby.is(h)).map(|_| ())
    })
    .await;
    rolled_to(&w, "rotated-2", &second, 3).await;
    eventually(WAIT, "two SecretChangedRollout Events", || async {
        (w.rollout_events("app").await == 2).then_some(())
    })
    .await;
    // Another refresh by the new leader, with nothing changed, rolls nothing.
    let synced = standby.metric(OK_RECONCILES).unwrap_or(0.0);
    eventually(WAIT, "another refresh by the new leader", || async {
        (standby.metric(OK_RECONCILES).unwrap_or(0.0) > synced).then_some(())
    })
    .await;
    assert_eq!(w.replica_sets("app").await, 3);
    assert_eq!(w.rollout_events("app").await, 2);

    // Deleting the class: the garbage collector deletes the Secret it owns.
    Api::<SecretProviderClass>::namespaced(admin.clone(), &w.ns)
        .delete(SEED_CLASS, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "foosecret garbage-collected", || async {
        w.secrets()
            .get_opt(support::SECRET)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let log = standby.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the controller was refused something:\n{log}"
    );
}
