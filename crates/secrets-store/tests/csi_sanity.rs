//! csi-sanity (kubernetes-csi/csi-test v5.4.0) against the real binary over its unix socket.
//!
//! Skipped specs, and why (also listed in the README):
//! - `Controller Server`: this is a node-only plugin; it advertises no CONTROLLER_SERVICE.
//! - `should remove target path`: the spec creates its volume through the controller's
//!   CreateVolume before publishing, which a node-only plugin cannot serve. Removal of the target
//!   path on unpublish is covered by our own tests (`node_publish` tests and the mounter tests).
//!
//! The identity and node specs that remain check GetPluginInfo/Capabilities, Probe,
//! NodeGetCapabilities, NodeGetInfo, and InvalidArgument for missing volume id, target path and
//! capability on NodePublishVolume/NodeUnpublishVolume.

mod common;

use std::process::Command;

use common::{Driver, dead_kubeconfig};

#[test]
fn csi_sanity_node_and_identity() {
    let csi_sanity = secrets_store_testenv::tool("csi-sanity");
    let dir = tempfile::tempdir().unwrap();
    // No API server is needed for these specs; a dead one also proves the agent starts and
    // answers Probe while the API server is unreachable.
    let kubeconfig = dead_kubeconfig(dir.path());
    let kubelet_dir = dir.path().join("kubelet");
    let mut driver = Driver::start(
        dir.path(),
        &kubeconfig,
        &[
            "--node-id",
            "sanity-node",
            "--kubelet-dir",
            kubelet_dir.to_str().unwrap(),
            "--metrics-addr",
            "",
            "--healthz-addr",
            "",
        ],
    );
    // Both sockets are private to root, and kubelet's registration socket is where it looks.
    use std::os::unix::fs::PermissionsExt;
    let reg = kubelet_dir.join("plugins_registry/secrets-store.csi.k8s.io-reg.sock");
    for sock in [&driver.socket, &reg] {
        let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sock.display());
    }
    let run = || {
        Command::new(&csi_sanity)
            .arg(format!("--csi.endpoint=unix://{}", driver.socket.display()))
            .arg(format!(
                "--csi.mountdir={}",
                dir.path().join("mnt").display()
            ))
            .arg(format!(
                "--csi.stagingdir={}",
                dir.path().join("stage").display()
            ))
            .arg("--ginkgo.skip=Controller Server|should remove target path")
            .arg("--ginkgo.no-color")
            .output()
            .expect("running csi-sanity")
    };
    let mut output = run();
    // csi-sanity's own dialer has been seen (1 run in ~10, under heavy machine load) to time out
    // its very first connection after 60 s while every later spec connects to the same driver
    // at once. Retry once for that exact symptom only; any other failure fails the test.
    if !output.status.success()
        && String::from_utf8_lossy(&output.stdout).contains("Connection timed out")
    {
        eprintln!(
            "csi-sanity could not connect on its first try; retrying once:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        output = run();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "csi-sanity failed:\n{stdout}\n{}\ndriver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        driver.log_text()
    );
    // Guard against a vacuous pass: the node specs must actually have run.
    assert!(stdout.contains("Passed"), "{stdout}");
    let passed: usize = stdout
        .split("Passed")
        .next()
        .and_then(|s| {
            s.rsplit(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 10,
        "expected at least 10 specs to pass:\n{stdout}"
    );

    // SIGTERM: graceful exit, sockets removed.
    assert!(
        driver.stop(),
        "driver did not exit cleanly:\n{}",
        driver.log_text()
    );
    assert!(!driver.socket.exists() && !reg.exists());
}

/// With the API server unreachable the agent still serves and reports healthy, a publish fails
/// with a clear `Unavailable` error counted in the metrics, and the logs are JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_unreachable_fails_publishes_not_health() {
    use secrets_store_api::csi::v1 as csi;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dead_kubeconfig(dir.path());
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (metrics, healthz) = (port(()), port(()));
    let mut driver = Driver::start(
        dir.path(),
        &kubeconfig,
        &[
            "--log-format-json",
            "--node-id",
            "n1",
            "--no-registration",
            "--kubelet-dir",
            dir.path().to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--healthz-addr",
            &format!("127.0.0.1:{healthz}"),
        ],
    );
    let target = dir.path().join("pods/u1/volumes/kubernetes.io~csi/v/mount");
    let volume_context = [
        ("secretProviderClass", "spc"),
        ("csi.storage.k8s.io/pod.name", "p"),
        ("csi.storage.k8s.io/pod.namespace", "ns"),
        ("csi.storage.k8s.io/pod.uid", "u1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = common::node_client(&driver.socket)
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: "v".into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
                access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
            }),
            readonly: true,
            volume_context,
            ..Default::default()
        })
        .await
        .expect_err("publish must fail without an API server");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("failed to get SecretProviderClass ns/spc"),
        "{err:?}"
    );
    assert!(!target.exists(), "nothing mounted or created");

    let get = |port: u16, path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get(healthz, "/healthz").starts_with("HTTP/1.1 200"));
    let m = get(metrics, "/metrics");
    assert!(
        m.contains("node_publish_error_total{provider=\"\",error_type=\"SecretProviderClassLookupFailed\"} 1"),
        "{m}"
    );

    assert!(driver.stop());
    let log = driver.log_text();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert!(log.contains("SecretProviderClassLookupFailed"), "{log}");
}
