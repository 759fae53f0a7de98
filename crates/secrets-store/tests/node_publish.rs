//! The real `secrets-store node` binary against a real API server, driven by the kubelet
//! simulator (which finds the driver through our own plugin registration socket), with a test
//! provider speaking upstream's v1alpha1 API over a real unix socket, and real tmpfs mounts.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::test_provider::TestProvider;
use common::{Driver, node_client};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::csi::v1 as csi;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use serde_json::json;

const DRIVER: &str = "secrets-store.csi.k8s.io";
const PROVIDER: &str = "testprov";

/// One test's world: namespace, kubelet root, provider, driver process and kubelet simulator.
struct World {
    cluster: &'static Cluster,
    client: kube::Client,
    ns: String,
    root: tempfile::TempDir,
    provider: TestProvider,
    driver: Driver,
    sim: KubeletSim,
    metrics_port: u16,
    healthz_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn ensure_csidriver(client: &kube::Client) {
    let api: Api<CSIDriver> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": DRIVER},
        "spec": {
            "attachRequired": false,
            "podInfoOnMount": true,
            "volumeLifecycleModes": ["Ephemeral"],
            "tokenRequests": [{"audience": "sts.amazonaws.com"}],
        }
    });
    api.patch(
        DRIVER,
        &PatchParams::apply("node-publish-test").force(),
        &Patch::Apply(body),
    )
    .await
    .expect("applying CSIDriver");
}

fn start_driver(
    root: &Path,
    providers: &Path,
    cluster: &Cluster,
    metrics: u16,
    healthz: u16,
) -> Driver {
    // The built-in AWS provider talks to moto (aws-config reads AWS_ENDPOINT_URL).
    let moto = cluster.moto().endpoint();
    let env = [("AWS_ENDPOINT_URL", moto.as_str())];
    Driver::start_with_env(
        root,
        cluster.kubeconfig_path(),
        &[
            "--node-id",
            cluster.node_name(),
            "--kubelet-dir",
            root.to_str().unwrap(),
            "--provider-volume",
            providers.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--healthz-addr",
            &format!("127.0.0.1:{healthz}"),
            "--tmpfs-size",
            "8Mi",
            // Every republish fetches, so tests can republish at once.
            "--enable-secret-rotation",
            "--rotation-poll-interval",
            "0s",
        ],
        &env,
    )
}

impl World {
    async fn new(prefix: &str) -> Self {
        let cluster = Cluster::shared();
        let client = cluster.client();
        ensure_csidriver(&client).await;
        let ns = cluster.new_namespace(prefix).await;
        let root = tempfile::tempdir().unwrap();
        let providers = root.path().join("providers");
        let provider = TestProvider::start(&providers, PROVIDER);
        let (metrics_port, healthz_port) = (free_port(), free_port());
        let driver = start_driver(root.path(), &providers, cluster, metrics_port, healthz_port);
        // No pre-known socket: the simulator must find us through plugin registration.
        let sim = KubeletSim::start(
            client.clone(),
            KubeletConfig::new(cluster.node_name(), root.path(), &ns),
        );
        Self {
            cluster,
            client,
            ns,
            root,
            provider,
            driver,
            sim,
            metrics_port,
            healthz_port,
        }
    }

    fn providers_dir(&self) -> PathBuf {
        self.root.path().join("providers")
    }

    async fn create_class(&self, name: &str, provider: &str, mode: &str) {
        let api: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), &self.ns);
        let spc: SecretProviderClass = serde_json::from_value(json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": name},
            "spec": {"provider": provider, "parameters": {"mode": mode, "region": "class-region"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &spc).await.unwrap();
    }

    async fn create_pod(&self, name: &str, class: &str) -> Pod {
        // A volume attribute overrides the class parameter of the same name.
        let attrs = json!({"secretProviderClass": class, "region": "pod-region"});
        self.create_pod_as(name, "default", attrs).await
    }

    async fn create_pod_as(
        &self,
        name: &str,
        service_account: &str,
        attrs: serde_json::Value,
    ) -> Pod {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "example.invalid/app:1",
                    "volumeMounts": [{"name": "secrets", "mountPath": "/mnt/secrets", "readOnly": true}]}],
                "volumes": [{"name": "secrets", "csi": {
                    "driver": DRIVER,
                    "readOnly": true,
                    "volumeAttributes": attrs
                }}]
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap()
    }

    async fn pod_uid(&self, name: &str) -> String {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.get(name).await.unwrap().metadata.uid.unwrap()
    }

    fn target(&self, uid: &str) -> PathBuf {
        self.sim.target_path(uid, "secrets")
    }

    fn diagnostics(&self) -> String {
        format!(
            "sim events: {:#?}\nregistration errors: {:?}\ndriver log:\n{}",
            self.sim.events(),
            self.sim.registration_errors(),
            self.driver.log_text()
        )
    }

    async fn wait_published(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.sim.published().iter().any(|v| v.pod == pod) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "pod {pod} never got its volume published\n{}",
            self.diagnostics()
        );
    }

    /// Waits for a Warning Event from our driver on `pod` with `reason`; returns its message.
    async fn wait_driver_event(&self, pod: &str, reason: &str) -> String {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let events = api.list(&ListParams::default()).await.unwrap();
            if let Some(e) = events.items.iter().find(|e| {
                e.reporting_component.as_deref() == Some("secrets-store-rs")
                    && e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
            }) {
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                return e.message.clone().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let events = api.list(&ListParams::default()).await.unwrap();
        let seen: Vec<_> = events
            .items
            .iter()
            .map(|e| {
                (
                    e.involved_object.name.clone(),
                    e.reason.clone(),
                    e.message.clone(),
                )
            })
            .collect();
        panic!(
            "no {reason} Event from the driver on {pod}; seen {seen:#?}\n{}",
            self.diagnostics()
        );
    }

    async fn delete_pod(&self, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if api.get_opt(name).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name} was never torn down\n{}", self.diagnostics());
    }

    async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }
}

/// The mount id of `path` in /proc/self/mountinfo, if it is a mount point.
fn mount_id(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .map(|l| l.split(' ').next().unwrap().to_string())
}

fn publish_request(w: &World, pod: &str, uid: &str, class: &str) -> csi::NodePublishVolumeRequest {
    let volume_context: std::collections::HashMap<String, String> = [
        ("secretProviderClass", class),
        ("csi.storage.k8s.io/pod.name", pod),
        ("csi.storage.k8s.io/pod.namespace", w.ns.as_str()),
        ("csi.storage.k8s.io/pod.uid", uid),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: format!("csi-{uid}"),
        target_path: w.target(uid).to_string_lossy().into_owned(),
        volume_capability: Some(csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
        }),
        readonly: true,
        volume_context,
        ..Default::default()
    }
}

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
        let target = w.root.path().join("direct").join(pod).join("mount");
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

    w.create_pod_as("app", "app", json!({"secretProviderClass": "aws-db"}))
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
        let target = w.root.path().join("par").join(pod).join("mount");
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
