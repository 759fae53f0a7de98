//! Fault suite of the hardening issue: kube-apiserver goes away during sync and comes back on
//! the same port, certificates and etcd (`Cluster::stop_apiserver` / `start_apiserver`). Nothing
//! may be lost: mounted files keep serving (and keep rotating, since AWS is still reachable), the
//! agent stays up, no synced Secret is lost or orphaned, every SecretProviderClassPodStatus
//! converges, and the agent's watches reconnect.
//!
//! While the apiserver is down the kubelet simulator cannot run (it reads pods and tokens from the
//! API on every sync), so the test plays kubelet itself then: real kubelet keeps syncing pods from
//! its cache and republishes with the tokens its token manager cached, which this suite requests
//! just before the outage with the same audiences and pod binding.

mod common;
mod e2e;

#[path = "apiserver_restart/checks.rs"]
mod checks;
#[path = "apiserver_restart/kubelet.rs"]
mod kubelet;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::ApiserverStop;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use tonic::Code;

use checks::{
    assert_agent_alive, assert_no_orphaned_secret, assert_no_secret_value, current_version,
    is_mount_point, latest_event, pod_name, pod_statuses, publish_counts, unix_seconds,
    wait_for_secret,
};
use common::node_client;
use e2e::{World, eventually, seed_file};
use kubelet::{bound_pod, create_target_parent, kubelet_publish_request, kubelet_tokens};

const WAIT: Duration = Duration::from_secs(90);
/// The seed's AWS secret (also its file name in the volume).
const SECRET: &str = "CSI-driver-test-secret";
/// The seed's SecretProviderClass and ServiceAccount.
const CLASS: &str = "nginx-deployment-aws-secrets";
const SERVICE_ACCOUNT: &str = "nginx-deployment-sa";
/// How long kube-apiserver stays down.
const OUTAGE: Duration = Duration::from_secs(12);
/// kubelet's republish period in these tests (with a 1 s rotation poll).
const REPUBLISH: Duration = Duration::from_millis(500);

/// Every test of this binary shares one cluster and so one apiserver: outages must not overlap.
static APISERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apiserver_restart_during_rotation_loses_nothing() {
    let _one_outage_at_a_time = APISERVER.lock().await;
    let world = World::start("api-restart", "1s", REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    let pods = world.running_pods(3).await;
    for pod in &pods {
        assert_eq!(world.file(pod, SECRET).as_deref(), Some("secretkey"));
    }
    let synced = world.secret("foosecret").await.expect("Secret foosecret");
    let mut republishes = Vec::new();
    for pod in &pods {
        let tokens = kubelet_tokens(&world, pod).await;
        republishes.push(kubelet_publish_request(&world, pod, &tokens));
    }

    // Rotate, and take the apiserver away at once: the agent picks the new version up during
    // the outage (kubelet republishes every 500 ms, the poll interval is 1 s), so its file
    // writes, status writes and the Secret update are all in flight when the API is gone.
    world.rotate("rotated").await;
    world.cluster.stop_apiserver(ApiserverStop::Kill);
    let pending_at_stop: Vec<bool> = pods
        .iter()
        .map(|p| world.file(p, SECRET).as_deref() == Some("secretkey"))
        .collect();

    // The outage: kubelet keeps republishing; every file stays readable, the agent stays up.
    let mut agent = node_client(&world.agent.socket);
    let mut failures: Vec<Vec<tonic::Status>> = vec![Vec::new(); pods.len()];
    let mut successes = 0;
    let down_since = Instant::now();
    while down_since.elapsed() < OUTAGE {
        for (i, (pod, request)) in pods.iter().zip(&republishes).enumerate() {
            match agent.node_publish_volume(request.clone()).await {
                Ok(_) => successes += 1,
                Err(status) => failures[i].push(status),
            }
            let file = world.file(pod, SECRET);
            assert!(
                matches!(file.as_deref(), Some("secretkey" | "rotated")),
                "{} lost its file during the outage: {file:?}",
                pod_name(pod)
            );
        }
        assert_agent_alive(&world);
        tokio::time::sleep(REPUBLISH).await;
    }
    // AWS was reachable: the pods got the rotated value while the apiserver was down.
    for pod in &pods {
        assert_eq!(
            world.file(pod, SECRET).as_deref(),
            Some("rotated"),
            "{} not rotated during the outage",
            pod_name(pod)
        );
    }
    // A rotation whose pod status and Secret could not be recorded is reported to kubelet as
    // retryable, never as done (the Secret still holds the old value).
    for ((pod, pending), failed) in pods.iter().zip(&pending_at_stop).zip(&failures) {
        assert!(
            !*pending || !failed.is_empty(),
            "{}: a republish that could not record its rotation returned success",
            pod_name(pod)
        );
        for status in failed {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("API server"), "{status:?}");
            assert_no_secret_value(status.message());
        }
    }
    let all_failures: Vec<&tonic::Status> = failures.iter().flatten().collect();
    eprintln!(
        "outage: {} of 3 pods not yet rotated when the apiserver stopped; republishes during \
         the outage: {successes} ok, {} Unavailable, e.g. {:?}",
        pending_at_stop.iter().filter(|p| **p).count(),
        all_failures.len(),
        all_failures.first().map(|s| s.message())
    );

    let restart = unix_seconds();
    world
        .cluster
        .start_apiserver()
        .await
        .expect("kube-apiserver starts again");
    let published_at_restart = publish_counts(&world.kubelet);

    // The synced Secret converges to the rotated value, and it is the same object: never deleted.
    wait_for_secret(&world, &world.namespace, "rotated").await;
    let after = world.secret("foosecret").await.expect("Secret foosecret");
    assert_eq!(
        after.metadata.uid, synced.metadata.uid,
        "foosecret was replaced"
    );

    // Every pod status converges to the current version; no status without its pod.
    let version = current_version(&world).await;
    eventually(WAIT, "3 pod statuses at the rotated version", || async {
        let statuses = pod_statuses(&world, &world.namespace).await;
        let expected: BTreeSet<(String, String, String)> = pods
            .iter()
            .map(|p| {
                let target = world.target(p).display().to_string();
                (pod_name(p), target, version.clone())
            })
            .collect();
        (statuses == expected).then_some(())
    })
    .await;

    // Pods, files and published volumes are all still there.
    world.running_pods(3).await;
    for pod in &pods {
        assert_eq!(world.file(pod, SECRET).as_deref(), Some("rotated"));
    }
    assert_eq!(world.kubelet.published_targets().len(), 3);
    assert_no_orphaned_secret(&world, &world.namespace, &["foosecret"]).await;
    assert_agent_alive(&world);
    world.cluster.check_running().expect("control plane up");

    // The kubelet simulator's own republishes went through again.
    eventually(WAIT, "kubelet republishes after the restart", || async {
        let now = publish_counts(&world.kubelet);
        published_at_restart
            .iter()
            .all(|(target, before)| now.get(target).is_some_and(|n| n > before))
            .then_some(())
    })
    .await;

    // The agent's Secret watch reconnected: a deletion is seen and repaired by the reconciler.
    Api::<Secret>::namespaced(world.cluster.client(), &world.namespace)
        .delete("foosecret", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        WAIT,
        "the drift reconciler to restore foosecret",
        || async {
            let secret = world.secret("foosecret").await?;
            (secret.metadata.uid != synced.metadata.uid).then_some(())
        },
    )
    .await;
    wait_for_secret(&world, &world.namespace, "rotated").await;

    // A rotation after the restart: files, Secret, and an Event per pod recorded after it.
    world.rotate("rotated-again").await;
    for pod in &pods {
        eventually(WAIT, "the second rotation in the file", || async {
            (world.file(pod, SECRET).as_deref() == Some("rotated-again")).then_some(())
        })
        .await;
    }
    wait_for_secret(&world, &world.namespace, "rotated-again").await;
    for pod in &pods {
        let name = pod_name(pod);
        eventually(
            WAIT,
            "a SecretRotationComplete Event after the restart",
            || async {
                let latest = latest_event(&world, &name, "SecretRotationComplete").await?;
                (latest >= restart).then_some(())
            },
        )
        .await;
    }
    assert_no_orphaned_secret(&world, &world.namespace, &["foosecret"]).await;
}

/// A rotation that reached the files while the apiserver was down still rolls the opted-in
/// Deployment once the apiserver is back, whichever path writes the Secret first: the next
/// republish or the drift reconciler (which used to write the data without rolling anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_during_an_outage_still_rolls_out_opted_in_workloads() {
    let _one_outage_at_a_time = APISERVER.lock().await;
    let world = World::start("api-rollout", "1s", REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    let pods = world.running_pods(3).await;
    world.opt_in_rollout().await;
    let mut republishes = Vec::new();
    for pod in &pods {
        let tokens = kubelet_tokens(&world, pod).await;
        republishes.push(kubelet_publish_request(&world, pod, &tokens));
    }

    world.cluster.stop_apiserver(ApiserverStop::Graceful);
    world.rotate("rotated").await;
    // Play kubelet until every pod's file holds the rotated value (AWS is reachable).
    let mut agent = node_client(&world.agent.socket);
    let down_since = Instant::now();
    while pods
        .iter()
        .any(|p| world.file(p, SECRET).as_deref() != Some("rotated"))
    {
        assert!(
            down_since.elapsed() < WAIT,
            "files not rotated during the outage"
        );
        for request in &republishes {
            // Unavailable while the Secret cannot be written: expected, and retried.
            let _ = agent.node_publish_volume(request.clone()).await;
        }
        tokio::time::sleep(REPUBLISH).await;
    }
    world
        .cluster
        .start_apiserver()
        .await
        .expect("kube-apiserver starts again");

    // One rollout: new pods whose environment has the rotated value.
    let fresh = world.rolled_pods(&pods, 3).await;
    for pod in &fresh {
        let env = world.env(pod).await;
        assert_eq!(
            env.get("SECRET_API_KEY").map(String::as_str),
            Some("rotated")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_during_apiserver_outage_fails_retryably_then_succeeds() {
    let _one_outage_at_a_time = APISERVER.lock().await;
    let mut world = World::start("api-newpod", "1s", REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    // The world's namespace is one the agent already serves (a pod mounted through kubelet), so
    // its class and ServiceAccount caches are warm; a second namespace it has never seen.
    apply_class_and_account(&world, &world.namespace, &role).await;
    world.bare_pod("warm").await;
    let warm = world.running_pods(1).await;
    assert_eq!(world.file(&warm[0], SECRET).as_deref(), Some("secretkey"));
    let cold_namespace = world.cluster.new_namespace("api-cold").await;
    apply_class_and_account(&world, &cold_namespace, &role).await;

    // kubelet has not got to the new pods when the apiserver goes away; it has their tokens.
    world.kubelet.stop();
    let new_pods = [
        bound_pod(&world, &world.namespace, "new").await,
        bound_pod(&world, &cold_namespace, "cold").await,
    ];
    let mut requests = Vec::new();
    for pod in &new_pods {
        let tokens = kubelet_tokens(&world, pod).await;
        requests.push(kubelet_publish_request(&world, pod, &tokens));
    }
    world.cluster.stop_apiserver(ApiserverStop::Graceful);

    let mut agent = node_client(&world.agent.socket);
    for (pod, request) in new_pods.iter().zip(requests) {
        let target = world.target(pod);
        create_target_parent(&target);
        let status = agent
            .node_publish_volume(request)
            .await
            .expect_err("a first publish cannot succeed without the API server");
        eprintln!("{}: {status:?}", pod_name(pod));
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("API server"),
            "the error must say the API server is the problem: {status:?}"
        );
        assert_no_secret_value(status.message());
        // Nothing written: the target is not mounted and holds no file.
        assert!(
            !is_mount_point(&target),
            "{} left mounted",
            target.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(&target)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?} left in the target");
    }
    assert_agent_alive(&world);

    world
        .cluster
        .start_apiserver()
        .await
        .expect("kube-apiserver starts again");
    // kubelet retries: a simulator on the same root and driver picks both pods up.
    let mut config = KubeletConfig::new(
        world.cluster.node_name(),
        &world.dir.path().join("kubelet"),
        &world.namespace,
    );
    config.namespaces.push(cold_namespace.clone());
    config.republish_period = REPUBLISH;
    world.kubelet = KubeletSim::start(world.cluster.client(), config);

    for (pod, namespace) in new_pods.iter().zip([&world.namespace, &cold_namespace]) {
        let name = pod_name(pod);
        eventually(WAIT, &format!("pod {namespace}/{name} Running"), || async {
            let live = Api::<Pod>::namespaced(world.cluster.client(), namespace)
                .get(&name)
                .await
                .ok()?;
            let phase = live.status.and_then(|s| s.phase);
            (phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
        assert_eq!(world.file(pod, SECRET).as_deref(), Some("secretkey"));
        wait_for_secret(&world, namespace, "secretkey").await;
        let failed: Vec<_> = world
            .kubelet
            .events()
            .into_iter()
            .filter(|e| e.pod == name && e.reason == "FailedMount")
            .collect();
        assert!(failed.is_empty(), "the retry failed: {failed:?}");
    }
    let version = current_version(&world).await;
    let expected = |pods: &[&Pod]| -> BTreeSet<(String, String, String)> {
        pods.iter()
            .map(|p| {
                let target = world.target(p).display().to_string();
                (pod_name(p), target, version.clone())
            })
            .collect()
    };
    assert_eq!(
        pod_statuses(&world, &world.namespace).await,
        expected(&[&warm[0], &new_pods[0]])
    );
    assert_eq!(
        pod_statuses(&world, &cold_namespace).await,
        expected(&[&new_pods[1]])
    );
    assert_no_orphaned_secret(&world, &world.namespace, &["foosecret"]).await;
    assert_no_orphaned_secret(&world, &cold_namespace, &["foosecret"]).await;
    assert_agent_alive(&world);
}

/// Creates the seed's ServiceAccount (role `role_arn`) and SecretProviderClass in `namespace`.
async fn apply_class_and_account(world: &World, namespace: &str, role_arn: &str) {
    let client = world.cluster.client();
    let sa: ServiceAccount =
        serde_yaml::from_str(&seed_file("serviceaccount.yaml").replace("ROLE_ARN", role_arn))
            .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let class: SecretProviderClass =
        serde_yaml::from_str(&seed_file("secretproviderclass.yaml")).unwrap();
    Api::<SecretProviderClass>::namespaced(client, namespace)
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}
