//! Bad input of every kind (missing class, provider errors, invalid provider responses, unknown
//! providers): documented errors and Events, nothing mounted, nothing written outside.

use std::path::{Path, PathBuf};

use crate::common::node_client;
use crate::world::{PROVIDER, World, mount_id, publish_request};

/// Every bad input: the documented reason as a Warning Event on the pod, the error reaches
/// kubelet, nothing stays mounted, and nothing is written outside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_give_documented_errors_events_and_no_writes_outside() {
    let w = World::new("drv-bad").await;
    let _logs = w.cluster.dump_logs_on_panic();
    use tonic::Code;
    let cases = [
        // (pod, class to reference, class to create: Some((provider, mode)), reason, code)
        (
            "no-class",
            "missing",
            None,
            "SecretProviderClassNotFound",
            Code::NotFound,
        ),
        (
            "err-code",
            "errcode",
            Some((PROVIDER, "error-code")),
            "ProviderError",
            Code::Internal,
        ),
        (
            "grpc-err",
            "grpcerr",
            Some((PROVIDER, "grpc-error")),
            "ProviderError",
            Code::PermissionDenied,
        ),
        (
            "zero-ver",
            "zerover",
            Some((PROVIDER, "zero-versions")),
            "InvalidProviderResponse",
            Code::Internal,
        ),
        (
            "bad-path",
            "badpath",
            Some((PROVIDER, "bad-path")),
            "InvalidProviderResponse",
            Code::Internal,
        ),
        (
            "unclean",
            "unclean",
            Some((PROVIDER, "unclean-path")),
            "InvalidProviderResponse",
            Code::Internal,
        ),
        (
            "huge",
            "huge",
            Some((PROVIDER, "huge")),
            "InvalidProviderResponse",
            Code::Internal,
        ),
        (
            "bad-name",
            "badname",
            Some(("bad.name", "ok")),
            "FailedToLookupProviderGRPCClient",
            Code::FailedPrecondition,
        ),
        (
            "no-prov",
            "noprov",
            Some(("vault", "ok")),
            "FailedToLookupProviderGRPCClient",
            Code::FailedPrecondition,
        ),
    ];
    for (pod, class, create, _, _) in &cases {
        if let Some((provider, mode)) = create {
            w.create_class(class, provider, mode).await;
        }
        w.create_pod(pod, class).await;
    }
    let mut client = node_client(&w.driver.socket);
    for (pod, class, _, reason, code) in &cases {
        let message = w.wait_driver_event(pod, reason).await;
        if *reason == "SecretProviderClassNotFound" {
            assert!(message.contains(&format!("{}/{class}", w.ns)), "{message}");
        }
        // kubelet saw the failure too (FailedMount with our message).
        assert!(
            w.sim
                .events()
                .iter()
                .any(|e| format!("{e:?}").contains(pod)),
            "{pod}: kubelet saw no failure"
        );
        // The same request made directly, on a target the simulator does not retry: the
        // documented code, and a failed first mount leaves nothing behind.
        let uid = w.pod_uid(pod).await;
        let target = w.sim.target_path(&uid, "direct");
        let mut req = publish_request(&w, pod, &uid, class);
        req.target_path = target.to_string_lossy().into_owned();
        let err = client
            .node_publish_volume(req)
            .await
            .expect_err("bad input must fail");
        assert_eq!(err.code(), *code, "{pod}: {err:?}");
        assert!(mount_id(&target).is_none(), "{pod}: left mounted");
        assert!(!target.exists(), "{pod}: target left behind");
    }
    // Nothing escaped: the only things in the pod volume dirs are kubelet's own.
    let escape_hits: Vec<_> = walk(w.root.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "escape"))
        .collect();
    assert!(escape_hits.is_empty(), "{escape_hits:?}");
    assert!(!w.providers_dir().join("escape").exists());
    let (_, metrics) = w.http_get(w.metrics_port, "/metrics").await;
    for label in [
        "SecretProviderClassNotFound",
        "ProviderError",
        "InvalidProviderResponse",
    ] {
        assert!(
            metrics.contains(&format!("error_type=\"{label}\"")),
            "{label}: {metrics}"
        );
    }
    let log = w.driver.log_text();
    assert!(!log.contains("pwned"), "provider content in log");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
