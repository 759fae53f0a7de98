//! Target paths are kubelet's, never the caller's: a publish or unpublish is served only for
//! `<kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount` of the pod the request
//! names. Anything else is refused before a directory is created, mounted, unmounted or removed.

use secrets_store_api::csi::v1 as csi;
use tonic::Code;

use crate::common::node_client;
use crate::world::{PROVIDER, World, mount_id, publish_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_requesting_pods_volume_dirs_are_targets() {
    let w = World::new("drv-targets").await;
    let _logs = w.cluster.dump_logs_on_panic();
    w.create_class("plain", PROVIDER, "ok").await;
    // Two pods the simulator does not mount (their volumes name a class nobody creates): the
    // test makes kubelet's calls itself.
    for pod in ["owner", "victim"] {
        w.create_pod(pod, "not-used").await;
    }
    let owner = w.pod_uid("owner").await;
    let victim = w.pod_uid("victim").await;
    let mut client = node_client(&w.driver.socket);

    let kubelet = w.root.path();
    let outside = [
        // A host directory: root could be mounted over, or read back by sync.
        kubelet.join("elsewhere/mount"),
        // kubelet's layout, but not a CSI volume dir.
        kubelet.join(format!(
            "pods/{owner}/volumes/kubernetes.io~empty-dir/v/mount"
        )),
        // Below a volume's mount dir.
        w.sim.target_path(&owner, "v").join("nested"),
        // Lexically under the pods dir, resolving out of it.
        kubelet.join(format!(
            "pods/{owner}/volumes/kubernetes.io~csi/../../../../x/mount"
        )),
    ];
    for target in &outside {
        let mut req = publish_request(&w, "owner", &owner, "plain");
        req.target_path = target.to_string_lossy().into_owned();
        let err = client
            .node_publish_volume(req)
            .await
            .expect_err("a target outside kubelet's pod volume dirs was served");
        assert_eq!(err.code(), Code::InvalidArgument, "{target:?}: {err:?}");
        assert!(
            err.message().contains("kubernetes.io~csi/<volume>/mount"),
            "{target:?}: {err:?}"
        );
        assert!(!target.exists(), "{target:?} was created");
    }

    // The owner's volume context on the victim's volume dir: refused, nothing mounted there.
    let victims_dir = w.sim.target_path(&victim, "v");
    let mut req = publish_request(&w, "owner", &owner, "plain");
    req.target_path = victims_dir.to_string_lossy().into_owned();
    let err = client
        .node_publish_volume(req)
        .await
        .expect_err("one pod's request was served on another pod's volume dir");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&victim) && err.message().contains(&owner),
        "{err:?}"
    );
    assert!(mount_id(&victims_dir).is_none() && !victims_dir.exists());

    // Unpublish never removes a directory that is not a pod's CSI volume dir (an empty host
    // directory would have been removed as "already unmounted").
    let host_dir = kubelet.join("host-dir/mount");
    std::fs::create_dir_all(&host_dir).unwrap();
    let err = client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-any".into(),
            target_path: host_dir.to_string_lossy().into_owned(),
        })
        .await
        .expect_err("unpublish of a host directory was served");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(host_dir.is_dir(), "unpublish removed a host directory");

    // The owner's own volume dir works, end to end.
    let own = w.sim.target_path(&owner, "v");
    let mut req = publish_request(&w, "owner", &owner, "plain");
    req.target_path = own.to_string_lossy().into_owned();
    client.node_publish_volume(req).await.expect("own target");
    assert!(mount_id(&own).is_some());
    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-any".into(),
            target_path: own.to_string_lossy().into_owned(),
        })
        .await
        .expect("unpublish own target");
    assert!(!own.exists());
}
