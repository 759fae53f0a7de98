//! The happy paths: a volume published and unpublished through an external provider (files,
//! wire contract, pod status, health and metrics) and through the built-in AWS provider.

use std::collections::BTreeMap;

use kube::api::{Api, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use serde_json::json;

use crate::world::{PROVIDER, World, mount_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_unpublish_through_an_external_provider() {
    let w = World::new("drv-ok").await;
    let _logs = w.cluster.dump_logs_on_panic();
    w.create_class("db", PROVIDER, "ok").await;
    w.create_pod("web", "db").await;
    w.wait_published("web").await;
    let uid = w.pod_uid("web").await;
    let target = w.target(&uid);

    // Files: content, mode, atomic-writer layout, tmpfs mount.
    assert_eq!(
        std::fs::read_to_string(target.join("username")).unwrap(),
        "admin-0"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("nested/password")).unwrap(),
        "s3cret-0"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(target.join("username"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(std::fs::read_link(target.join("..data")).is_ok());
    assert!(mount_id(&target).is_some(), "target is not a mount point");
    let dir_mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        dir_mode & 0o002,
        0,
        "volume root is world-writable: {dir_mode:o}"
    );

    // Wire contract seen by the provider.
    let (attrs, secrets, permission) = w.provider.state.last.lock().unwrap().clone().unwrap();
    let attrs: BTreeMap<String, String> = serde_json::from_str(&attrs).unwrap();
    assert_eq!(attrs["mode"], "ok");
    assert_eq!(
        attrs["region"], "pod-region",
        "volume attributes override class parameters"
    );
    assert_eq!(attrs["csi.storage.k8s.io/pod.name"], "web");
    assert_eq!(attrs["csi.storage.k8s.io/pod.uid"], uid);
    assert!(
        attrs.contains_key("csi.storage.k8s.io/serviceAccount.tokens"),
        "tokens forwarded"
    );
    assert_eq!(secrets, "{}");
    assert_eq!(permission, "420");

    // SecretProviderClassPodStatus: name, label, owner, sorted objects.
    let statuses: Api<SecretProviderClassPodStatus> = Api::namespaced(w.client.clone(), &w.ns);
    let name = format!("web-{}-db", w.ns);
    let st = statuses.get(&name).await.unwrap();
    assert_eq!(
        st.metadata.labels.as_ref().unwrap()["internal.secrets-store.csi.k8s.io/node-name"],
        w.cluster.node_name()
    );
    assert_eq!(st.metadata.owner_references.as_ref().unwrap()[0].uid, uid);
    let status = st.status.unwrap();
    assert!(status.mounted);
    assert_eq!(status.pod_name, "web");
    assert_eq!(status.target_path, target.to_string_lossy());
    let ids: Vec<_> = status.objects.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["password", "username"]);

    // Health and metrics.
    let (code, _) = w.http_get(w.healthz_port, "/healthz").await;
    assert_eq!(code, 200);
    let (_, metrics) = w.http_get(w.metrics_port, "/metrics").await;
    assert!(
        metrics.contains("node_publish_total{provider=\"testprov\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("node_publish_duration_seconds_bucket"),
        "{metrics}"
    );

    // Secrets never reach the driver's log.
    let log = w.driver.log_text();
    assert!(
        !log.contains("s3cret-0") && !log.contains("admin-0"),
        "secret in log:\n{log}"
    );

    // Unpublish on pod deletion: unmounted and removed.
    w.delete_pod("web").await;
    assert!(mount_id(&target).is_none());
    assert!(!target.exists());
    let (_, metrics) = w.http_get(w.metrics_port, "/metrics").await;
    assert!(metrics.contains("node_unpublish_total 1"), "{metrics}");
}

/// The built-in AWS provider (in process) end to end: IRSA role annotation, the token kubelet
/// requested for `sts.amazonaws.com`, moto's STS and Secrets Manager, files in the pod's volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_the_builtin_aws_provider() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let w = World::new("drv-aws").await;
    let _logs = w.cluster.dump_logs_on_panic();
    let account = w.cluster.moto().new_account();
    w.cluster
        .moto()
        .sm_client(&account)
        .create_secret()
        .name("db-password")
        .secret_string("hunter2-from-moto")
        .send()
        .await
        .expect("create_secret in moto");
    let sas: Api<ServiceAccount> = Api::namespaced(w.client.clone(), &w.ns);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {
            "eks.amazonaws.com/role-arn": account.role_arn("app")
        }}
    }))
    .unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let classes: Api<SecretProviderClass> = Api::namespaced(w.client.clone(), &w.ns);
    let spc: SecretProviderClass = serde_json::from_value(json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": "aws-db"},
        "spec": {"provider": "aws", "parameters": {
            "objects": "- objectName: db-password\n  objectType: secretsmanager\n"
        }}
    }))
    .unwrap();
    classes.create(&PostParams::default(), &spc).await.unwrap();

    w.create_pod_as("app", "app", [("secretProviderClass", "aws-db")])
        .await;
    w.wait_published("app").await;
    let uid = w.pod_uid("app").await;
    let target = w.target(&uid);
    assert_eq!(
        std::fs::read_to_string(target.join("db-password")).unwrap(),
        "hunter2-from-moto"
    );
    let statuses: Api<SecretProviderClassPodStatus> = Api::namespaced(w.client.clone(), &w.ns);
    let st = statuses
        .get(&format!("app-{}-aws-db", w.ns))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.objects.len(), 1);
    assert_eq!(st.objects[0].id, "db-password");
    assert!(!st.objects[0].version.is_empty());
    let log = w.driver.log_text();
    assert!(!log.contains("hunter2"), "secret in driver log");
    w.delete_pod("app").await;
    assert!(!target.exists());
}
