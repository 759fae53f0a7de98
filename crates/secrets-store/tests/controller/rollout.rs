//! The rollout controller's semantics: once per data change, never at creation, never for a
//! workload that did not opt in; and the whole path with node agents at `--rollout=off`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use secrets_store_testenv::{Cluster, eventually};

use crate::common::controller::ControllerProc;
use crate::e2e::{self, World};
use crate::support::{
    CONTROLLER_NS, ONE_CONTROLLER, SECRET, WAIT, Workloads, controller_namespace, managed_secret,
    wait_until_leading,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_rolls_each_opted_in_deployment_once_and_creation_rolls_nothing() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-rollout").await;
    let controller = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-solo");
    wait_until_leading(&client, &controller).await;
    w.create_deployment("opted", true).await;
    w.create_deployment("plain", false).await;

    // Creation: the controller records the digest and rolls nothing.
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;
    assert_eq!(w.template_digest("opted").await, None, "creation rolled");
    assert_eq!(w.replica_sets("opted").await, 1);

    // A change: the opted-in Deployment rolls once, the other not at all.
    w.set_value("v2").await;
    w.rolled_to("opted", "v2").await;
    eventually(WAIT, "the second ReplicaSet", || async {
        (w.replica_sets("opted").await == 2).then_some(())
    })
    .await;
    assert_eq!(w.rollout_events("opted").await, 1);

    // A change of anything but the data (a label) rolls nothing; the next data change rolls
    // once more: one new ReplicaSet per data change, none for anything else.
    w.secrets()
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    w.set_value("v3").await;
    w.rolled_to("opted", "v3").await;
    eventually(WAIT, "the third ReplicaSet", || async {
        (w.replica_sets("opted").await == 3).then_some(())
    })
    .await;
    assert_eq!(
        w.replica_sets("plain").await,
        1,
        "a Deployment that did not opt in rolled"
    );
    assert_eq!(w.template_digest("plain").await, None);
    assert_eq!(w.rollout_events("plain").await, 0);
    assert_eq!(
        controller.metric("rollout_workloads_patched_total{kind=\"Deployment\"}"),
        Some(2.0),
        "{}",
        controller.log_text()
    );
}

/// The whole path with the controller: the node agent (`--rollout=off`) mounts the seed and
/// writes `foosecret`, a rotation in AWS reaches the Secret through the agent, and the controller
/// (not the agent) rolls the opted-in seed Deployment once; its new pods see the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_agent_syncs_and_the_controller_rolls_a_rotation_once() {
    let _turn = ONE_CONTROLLER.lock().await;
    let world = World::start_with_args(
        "ctl-seed",
        "1s",
        Duration::from_millis(500),
        &["--rollout=off"],
    )
    .await;
    let _logs = world.cluster.dump_logs_on_panic();
    let client = world.cluster.client();
    controller_namespace(&client).await;
    let controller = ControllerProc::start(world.cluster, CONTROLLER_NS, "ctl-seed");
    wait_until_leading(&client, &controller).await;
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    let first = world.running_pods(3).await;
    world.opt_in_rollout().await;
    let w = Workloads {
        client: client.clone(),
        ns: world.namespace.clone(),
    };
    w.first_sight("secretkey").await;

    world.rotate("rotated").await;
    let fresh = world.rolled_pods(&first, 3).await;
    for pod in &fresh {
        let env = world.env(pod).await;
        assert_eq!(
            env.get("SECRET_API_KEY").map(String::as_str),
            Some("rotated")
        );
    }
    w.rolled_to(e2e::SEED_DEPLOYMENT, "rotated").await;
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &world.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2, "exactly one rollout");
    let rolled = "rolling workloads after Secret change";
    assert!(controller.log_text().contains(rolled));
    assert!(
        !world.agent.log_text().contains(rolled),
        "the node agent rolled with --rollout=off"
    );
}
