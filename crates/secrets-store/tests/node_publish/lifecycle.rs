//! One volume over its life: a failing republish, a driver restart between publish and
//! unpublish, and concurrent calls on the same and on different volumes.

use secrets_store_api::csi::v1 as csi;

use crate::common::node_client;
use crate::world::{PROVIDER, World, free_port, mount_id, publish_request, start_driver};

/// A failing republish keeps the last good files mounted and reports the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_republish_keeps_last_good_files() {
    let w = World::new("drv-repub").await;
    let _logs = w.cluster.dump_logs_on_panic();
    w.create_class("db", PROVIDER, "toggle").await;
    w.create_pod("web", "db").await;
    w.wait_published("web").await;
    let uid = w.pod_uid("web").await;
    let target = w.target(&uid);
    let mount_before = mount_id(&target).expect("mounted");
    let mut client = node_client(&w.driver.socket);

    // A successful republish with new content swaps files in place, same mount.
    w.provider
        .state
        .generation
        .store(1, std::sync::atomic::Ordering::SeqCst);
    client
        .node_publish_volume(publish_request(&w, "web", &uid, "db"))
        .await
        .expect("republish");
    // The provider was told what is mounted (from the pod status), as upstream does.
    let current = w.provider.state.last_current.lock().unwrap().clone();
    assert!(
        current.contains(&("username".to_string(), "v0".to_string())),
        "{current:?}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("username")).unwrap(),
        "admin-1"
    );
    assert_eq!(mount_id(&target).as_deref(), Some(mount_before.as_str()));

    // Provider down: the error reaches kubelet, files and mount stay.
    w.provider
        .state
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = client
        .node_publish_volume(publish_request(&w, "web", &uid, "db"))
        .await
        .expect_err("republish must fail while the provider fails");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        std::fs::read_to_string(target.join("username")).unwrap(),
        "admin-1"
    );
    assert_eq!(mount_id(&target).as_deref(), Some(mount_before.as_str()));
    // A failed republish is a failed rotation (upstream's reason); the metric keeps the cause.
    w.wait_driver_event("web", "SecretRotationFailed").await;
    let (_, metrics) = w.http_get(w.metrics_port, "/metrics").await;
    assert!(
        metrics.contains("error_type=\"ProviderError\""),
        "{metrics}"
    );

    w.provider
        .state
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    w.delete_pod("web").await;
    assert!(!target.exists());
}

/// Kill the driver between publish and unpublish: a new process republishes without remounting
/// and unpublishes cleanly (state comes from the filesystem).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_publish_and_unpublish() {
    let mut w = World::new("drv-restart").await;
    let _logs = w.cluster.dump_logs_on_panic();
    w.create_class("db", PROVIDER, "ok").await;
    w.create_pod("web", "db").await;
    w.wait_published("web").await;
    let uid = w.pod_uid("web").await;
    let target = w.target(&uid);
    let mount_before = mount_id(&target).expect("mounted");

    w.driver.kill_hard();
    assert!(mount_id(&target).is_some(), "the mount outlives the driver");
    let (m, h) = (free_port(), free_port());
    w.driver = start_driver(w.root.path(), &w.providers_dir(), w.cluster, m, h);

    let mut client = node_client(&w.driver.socket);
    client
        .node_publish_volume(publish_request(&w, "web", &uid, "db"))
        .await
        .expect("republish after restart");
    assert_eq!(
        mount_id(&target).as_deref(),
        Some(mount_before.as_str()),
        "remounted"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("username")).unwrap(),
        "admin-0"
    );

    w.delete_pod("web").await;
    assert!(mount_id(&target).is_none());
    assert!(!target.exists());
    // Unpublish again (kubelet may retry): idempotent.
    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: format!("csi-{uid}"),
            target_path: target.to_string_lossy().into_owned(),
        })
        .await
        .expect("second unpublish is a no-op");
}

/// Calls for one target path are serialised; calls for different targets run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_volume_serialised_different_volumes_parallel() {
    let w = World::new("drv-par").await;
    let _logs = w.cluster.dump_logs_on_panic();
    w.create_class("slow", PROVIDER, "slow").await;
    // Pods exist (for the pod status owner and Events) but the simulator does not mount them:
    // their volumes reference a class name the test calls directly below.
    let mut calls = Vec::new();
    let mut targets = Vec::new();
    for pod in ["a", "b"] {
        w.create_pod(pod, "not-used").await;
        let uid = w.pod_uid(pod).await;
        let target = w.sim.target_path(&uid, "par");
        targets.push(target.clone());
        // Two calls for each target, all four at once.
        for _ in 0..2 {
            let mut req = publish_request(&w, pod, &uid, "slow");
            req.target_path = target.to_string_lossy().into_owned();
            let mut client = node_client(&w.driver.socket);
            calls.push(tokio::spawn(async move {
                client.node_publish_volume(req).await
            }));
        }
    }
    for c in calls {
        c.await.unwrap().expect("publish");
    }
    let state = &w.provider.state;
    assert_eq!(
        state
            .max_in_flight_per_target
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "two calls for one volume overlapped"
    );
    assert!(
        state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "different volumes never ran in parallel (a global lock?)"
    );
    let mut client = node_client(&w.driver.socket);
    for target in targets {
        assert!(mount_id(&target).is_some());
        client
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: "v".into(),
                target_path: target.to_string_lossy().into_owned(),
            })
            .await
            .expect("unpublish");
        assert!(!target.exists());
    }
}
