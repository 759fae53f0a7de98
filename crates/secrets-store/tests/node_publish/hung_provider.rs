//! A hostile or broken external provider that accepts the call and never answers cannot wedge a
//! volume: kubelet's unpublish takes the volume from the hung publish at once (the pod's teardown
//! is not held hostage), and a publish gives up after `--publish-timeout` with a clear error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use secrets_store_api::csi::v1 as csi;
use tokio::net::UnixListener;

use crate::common::node_client;
use crate::world::{World, free_port, mount_id, publish_request, start_driver_with};

/// Accepts connections on `<dir>/<name>.sock` and holds them open without reading or writing.
struct HungProvider {
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HungProvider {
    fn start(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let listener = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
        Self { accepted, task }
    }
}

impl Drop for HungProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unpublish_request(req: &csi::NodePublishVolumeRequest) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: req.volume_id.clone(),
        target_path: req.target_path.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_is_not_held_hostage_by_a_provider_that_never_answers() {
    let w = World::new("drv-hung").await;
    let _logs = w.cluster.dump_logs_on_panic();
    let hung = HungProvider::start(&w.providers_dir(), "hung");
    w.create_class("stuck", "hung", "ok").await;
    let uid = "6f1c2a1e-0b9e-4d53-9a8e-1d6a3c9b7e01";
    let req = publish_request(&w, "stuck-pod", uid, "stuck");
    let target = w.target(uid);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();

    let mut client = node_client(&w.driver.socket);
    let publish = {
        let mut client = client.clone();
        let req = req.clone();
        tokio::spawn(async move { client.node_publish_volume(req).await })
    };
    secrets_store_testenv::eventually(
        Duration::from_secs(30),
        "the hung provider to be called",
        || async { (hung.accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;

    // Without preemption this waits forever behind the publish's volume lock.
    tokio::time::timeout(
        Duration::from_secs(30),
        client.node_unpublish_volume(unpublish_request(&req)),
    )
    .await
    .expect("unpublish must not wait for a provider that never answers")
    .expect("unpublish succeeds");
    let err = publish
        .await
        .unwrap()
        .expect_err("the publish gives way to the unpublish");
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(err.message().contains("unpublished"), "{err:?}");
    assert_eq!(mount_id(&target), None, "nothing stays mounted");
    assert!(!target.exists(), "the target is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_against_a_provider_that_never_answers_times_out() {
    let w = World::new("drv-hung-deadline").await;
    let _logs = w.cluster.dump_logs_on_panic();
    let root = tempfile::tempdir().unwrap();
    let providers = root.path().join("providers");
    let _hung = HungProvider::start(&providers, "hung");
    let driver = start_driver_with(
        root.path(),
        &providers,
        w.cluster,
        free_port(),
        free_port(),
        &["--publish-timeout", "2s", "--no-registration"],
    );
    w.create_class("stuck", "hung", "ok").await;
    let uid = "6f1c2a1e-0b9e-4d53-9a8e-1d6a3c9b7e02";
    let mut req = publish_request(&w, "stuck-pod", uid, "stuck");
    let target = root
        .path()
        .join(format!("pods/{uid}/volumes/kubernetes.io~csi/vol/mount"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    req.target_path = target.to_string_lossy().into_owned();

    let err = tokio::time::timeout(
        Duration::from_secs(60),
        node_client(&driver.socket).node_publish_volume(req),
    )
    .await
    .expect("the publish deadline ends the call")
    .expect_err("a provider that never answers fails the publish");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("did not finish within 2s"),
        "{err:?}"
    );
    assert_eq!(
        mount_id(&target),
        None,
        "a failed first mount leaves nothing behind"
    );
}
