//! The AWS provider served over upstream's `v1alpha1.CSIDriverProvider` on a real unix socket
//! (what `secrets-store provider-aws` runs), called by the gRPC client adapter the way the
//! upstream driver calls ASCP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use secrets_store_provider::grpc::client::ExternalProvider;
use secrets_store_provider::grpc::server::serve;
use secrets_store_provider::{Provider, ProviderErrorKind};
use secrets_store_testenv::Cluster;

#[tokio::test]
async fn mounts_over_the_upstream_provider_api() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-grpc", &account, "app").await;
    sm_secret(
        cluster,
        &account,
        "over-grpc",
        r#"{"user":"u1","pass":"p4ss-s3cr3t"}"#,
    )
    .await;
    let (aws, _) = provider(cluster, false, Duration::from_secs(5)).await;
    let provider: Arc<dyn Provider> = Arc::new(aws);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aws.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move {
            serve(provider, &socket, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    let client = ExternalProvider::new("aws", &socket);
    let mut version = client.probe_version().await;
    for _ in 0..50 {
        if version.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        version = client.probe_version().await;
    }
    assert_eq!(version.expect("Version").runtime_name, "aws");

    let objects = "- objectName: over-grpc\n  objectType: secretsmanager\n  jmesPath:\n    - path: user\n      objectAlias: user\n";
    let resp = client
        .mount(request(&pod, &[("objects", objects)]))
        .await
        .expect("mount over gRPC");
    let f = files(&resp);
    assert_eq!(f["user"], "u1");
    assert!(f["over-grpc"].contains("p4ss-s3cr3t"));
    let v = versions(&resp);
    assert_eq!(v.len(), 2);
    assert!(!v["over-grpc"].is_empty());

    let err = client
        .mount(request(
            &pod,
            &[(
                "objects",
                "- objectName: missing\n  objectType: secretsmanager\n",
            )],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::NotFound, "{err}");
    assert_error(&err, &["object \"missing\"", "not found"], "p4ss");

    let _ = stop.send(());
    server.await.unwrap().expect("server stops cleanly");
}
