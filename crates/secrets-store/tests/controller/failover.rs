//! Leader election: one leader of two racing replicas, a killed leader replaced without a double
//! rollout, a stopped leader handing over at once, a leader that lost its Lease stopping.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use secrets_store_sync::rollout::digest_annotation;
use secrets_store_testenv::{Cluster, eventually};

use crate::common::controller::ControllerProc;
use crate::support::{
    CONTROLLER_NS, LEASE, ONE_CONTROLLER, SECRET, WAIT, Workloads, controller_namespace, holder,
    managed_secret, wait_until_leading,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_no_change_rolls_twice() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-failover").await;
    // Both start at once and race for the Lease: one leads, the other stands by.
    let (mut first, second) = one_leader_of_two(cluster, "ctl-a", "ctl-b").await;
    w.create_deployment("half-rolled", true).await;
    w.create_deployment("untouched", true).await;
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;
    w.set_value("v2").await;
    w.rolled_to("half-rolled", "v2").await;
    w.rolled_to("untouched", "v2").await;
    // One leader: the standby runs nothing while the first holds the Lease.
    assert_eq!(first.metric("controller_leader"), Some(1.0));
    assert_eq!(second.metric("controller_leader"), Some(0.0));
    assert!(first.is(&holder(&client).await.unwrap()));

    // The leader dies without releasing anything, in the middle of rolling v3 out: it had
    // patched one consumer and not yet recorded the digest on the Secret.
    first.kill_hard();
    w.set_value("v3").await;
    let v3 = w.digest_of("v3").await;
    w.deployments()
        .patch(
            "half-rolled",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                digest_annotation(SECRET): v3}}}}}),
            ),
        )
        .await
        .unwrap();

    // The standby takes over and finishes the rollout: the consumer left behind rolls once, the
    // one already patched does not roll again.
    wait_until_leading(&client, &second).await;
    w.rolled_to("untouched", "v3").await;
    w.rolled_to("half-rolled", "v3").await;
    assert_eq!(second.metric("controller_leader"), Some(1.0));
    for name in ["half-rolled", "untouched"] {
        eventually(WAIT, &format!("{name}'s ReplicaSet for v3"), || async {
            (w.replica_sets(name).await == 3).then_some(())
        })
        .await;
    }
    // The new leader keeps rolling: v4 gives each exactly one more ReplicaSet.
    w.set_value("v4").await;
    for name in ["half-rolled", "untouched"] {
        w.rolled_to(name, "v4").await;
        eventually(WAIT, &format!("{name}'s ReplicaSet for v4"), || async {
            (w.replica_sets(name).await == 4).then_some(())
        })
        .await;
    }
    let log = second.log_text();
    assert!(log.contains("taking the leader Lease"), "{log}");

    // A graceful stop (a rolling update) releases the Lease: the next replica takes it at its
    // next try, and the stopped one exits cleanly.
    let mut second = second;
    let third = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-c");
    assert!(second.stop(), "the leader did not exit cleanly on SIGTERM");
    assert!(second.log_text().contains("released the leader Lease"));
    wait_until_leading(&client, &third).await;
    w.set_value("v5").await;
    w.rolled_to("untouched", "v5").await;
    eventually(WAIT, "untouched's ReplicaSet for v5", || async {
        (w.replica_sets("untouched").await == 5).then_some(())
    })
    .await;
}

/// Starts two replicas at once; returns (leader, standby) once one holds the Lease, after
/// checking that exactly one of them says it leads.
async fn one_leader_of_two(
    cluster: &'static Cluster,
    a: &str,
    b: &str,
) -> (ControllerProc, ControllerProc) {
    let client = cluster.client();
    let a = ControllerProc::start(cluster, CONTROLLER_NS, a);
    let b = ControllerProc::start(cluster, CONTROLLER_NS, b);
    let holder = eventually(WAIT, "a holder of the Lease", || async {
        holder(&client).await.filter(|h| a.is(h) || b.is(h))
    })
    .await;
    let (leader, standby) = if a.is(&holder) { (a, b) } else { (b, a) };
    eventually(WAIT, "the leader's gauge", || async {
        (leader.metric("controller_leader") == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(standby.metric("controller_leader"), Some(0.0));
    (leader, standby)
}

/// A leader whose Lease is taken away (here by an admin writing another holder into it, as a
/// replica that saw it expire would) stops its controllers at its next renewal, while nobody
/// rolls; once the Lease is free again a replica takes it and rolls the change made meanwhile,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_loses_its_lease_stops_its_controllers() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-lost").await;
    let leader = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-lost");
    wait_until_leading(&client, &leader).await;
    w.create_deployment("app", true).await;
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), CONTROLLER_NS);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "intruder",
                "renewTime": now, "leaseDurationSeconds": 3600}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "the leader stepping down", || async {
        (leader.metric("controller_leader") == Some(0.0)).then_some(())
    })
    .await;
    assert!(leader.log_text().contains("no longer leading"));

    // The intruder "crashes" by releasing the Lease: the replica takes it back and rolls the
    // change made while it was not leading, once.
    w.set_value("v2").await;
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"holderIdentity": null}})),
        )
        .await
        .unwrap();
    wait_until_leading(&client, &leader).await;
    w.rolled_to("app", "v2").await;
    eventually(WAIT, "the one ReplicaSet for v2", || async {
        (w.replica_sets("app").await == 2).then_some(())
    })
    .await;
    assert_eq!(leader.metric("controller_leader"), Some(1.0));
}

/// A leader frozen past its lease (SIGSTOP: a long pause, or cut off from the API server) is
/// replaced; when it resumes it finds its renew deadline passed and stops leading instead of
/// acting, and the changes made meanwhile and after are rolled once each by the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_that_resumes_does_not_act() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-frozen").await;
    let (frozen, standby) = one_leader_of_two(cluster, "ctl-f1", "ctl-f2").await;
    w.create_deployment("app", true).await;
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;

    frozen.pause(true);
    w.set_value("v2").await;
    wait_until_leading(&client, &standby).await;
    w.rolled_to("app", "v2").await;
    frozen.pause(false);
    eventually(WAIT, "the resumed replica stepping down", || async {
        (frozen.metric("controller_leader") == Some(0.0)).then_some(())
    })
    .await;
    assert!(frozen.log_text().contains("no longer leading"));
    assert_eq!(standby.metric("controller_leader"), Some(1.0));
    assert!(standby.is(&holder(&client).await.unwrap()));

    w.set_value("v3").await;
    w.rolled_to("app", "v3").await;
    eventually(WAIT, "one ReplicaSet per change", || async {
        (w.replica_sets("app").await == 3).then_some(())
    })
    .await;
}
