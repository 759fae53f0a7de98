//! What a tenant cannot exhaust: the agent's memory through tmpfs (pages written into a volume
//! are charged to the agent's memory cgroup, so the node caps the bytes all volumes hold
//! together with `--node-secret-budget`; a volume that would cross it fails with a clear error
//! naming the pod, what is mounted stays mounted, the budget comes back on unpublish), and the
//! metrics' series (a class's provider name is a label only once it names a real provider).

use secrets_store_api::csi::v1 as csi;

use crate::common::node_client;
use crate::common::test_provider::TestProvider;
use crate::world::{PROVIDER, World, free_port, mount_id, publish_request, start_driver_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_share_a_node_budget_for_secret_bytes() {
    let w = World::new("drv-budget").await;
    let _logs = w.cluster.dump_logs_on_panic();
    let root = tempfile::tempdir().unwrap();
    let providers = root.path().join("providers");
    let _provider = TestProvider::start(&providers, PROVIDER);
    // Each volume holds one 384 KiB secret under 8 aliases: 3 MiB. Two do not fit in 4 MiB.
    let driver = start_driver_with(
        root.path(),
        &providers,
        w.cluster,
        free_port(),
        free_port(),
        &["--node-secret-budget", "4Mi", "--no-registration"],
    );
    w.create_class("aliased", PROVIDER, "aliases").await;
    let mut client = node_client(&driver.socket);
    let request = |uid: &str| {
        let mut req = publish_request(&w, &format!("pod-{}", &uid[..8]), uid, "aliased");
        let target = root
            .path()
            .join(format!("pods/{uid}/volumes/kubernetes.io~csi/vol/mount"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        req.target_path = target.to_string_lossy().into_owned();
        (req, target)
    };

    let (first, first_target) = request("1b6f9c1e-2d1f-4e7b-9a51-000000000001");
    client
        .node_publish_volume(first.clone())
        .await
        .expect("the first volume fits");
    assert_eq!(
        std::fs::metadata(first_target.join("alias-7"))
            .unwrap()
            .len(),
        384 * 1024
    );

    let (second, second_target) = request("1b6f9c1e-2d1f-4e7b-9a51-000000000002");
    let err = client
        .node_publish_volume(second.clone())
        .await
        .expect_err("the second volume would take the node past its budget");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("budget of 4194304 bytes"), "{err:?}");
    assert!(
        err.message().contains("pod-1b6f9c1e"),
        "names the pod: {err:?}"
    );
    assert_eq!(mount_id(&second_target), None, "nothing is left mounted");
    assert!(
        first_target.join("alias-0").exists(),
        "the first volume is untouched"
    );

    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: first.volume_id.clone(),
            target_path: first.target_path.clone(),
        })
        .await
        .unwrap();
    client
        .node_publish_volume(second)
        .await
        .expect("the budget is given back on unpublish");
    assert!(second_target.join("alias-0").exists());
    // Leave the host as found: the temp dir cannot be removed while a tmpfs is mounted in it.
    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: second_target.to_string_lossy().into_owned(),
            target_path: second_target.to_string_lossy().into_owned(),
        })
        .await
        .unwrap();
    assert_eq!(mount_id(&second_target), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_provider_names_do_not_become_metric_series() {
    let w = World::new("drv-series").await;
    let _logs = w.cluster.dump_logs_on_panic();
    for i in 0..5 {
        let name = format!("tenant-made-{i}");
        w.create_class(&name, &name, "ok").await;
        w.create_pod(&format!("p{i}"), &name).await;
    }
    for i in 0..5 {
        w.wait_driver_event(&format!("p{i}"), "FailedToLookupProviderGRPCClient")
            .await;
    }
    let (_, metrics) = w.http_get(w.metrics_port, "/metrics").await;
    assert!(
        metrics.contains("error_type=\"FailedToLookupProviderGRPCClient\""),
        "the failures are counted: {metrics}"
    );
    assert!(
        !metrics.contains("tenant-made"),
        "no series per made-up name: {metrics}"
    );
}
