//! Interop with the REAL upstream Go driver (`sigs.k8s.io/secrets-store-csi-driver` v1.6.0, built by
//! `bash hack/tools.sh upstream-driver`): the upstream driver serves kubelet's CSI calls and syncs
//! Secrets, our `secrets-store provider-aws` serves it as its AWS provider over upstream's
//! `v1alpha1.CSIDriverProvider` API, against testenv's apiserver, moto and kubelet simulator.
//!
//! One node runs one driver: the tests take turns ([`ONE_DRIVER_AT_A_TIME`]), because the upstream
//! driver's controllers act on every pod of its node id, and so that moto's call counts during a
//! test are that test's.

mod common;
mod e2e;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use secrets_store_testenv::upstream::{OurAwsProvider, UpstreamDriver, UpstreamOptions};
use secrets_store_testenv::{AccountId, Cluster};
use tokio::sync::{Mutex, MutexGuard};

use e2e::{DRIVER, VOLUME, ensure_csi_driver, eventually, seed_aws, seed_file};

const WAIT: Duration = Duration::from_secs(90);
const SECRET: &str = "CSI-driver-test-secret";
const CLASS: &str = "nginx-deployment-aws-secrets";
const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";

static ONE_DRIVER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The test node: the upstream driver, our provider on its provider socket, and a kubelet
/// simulator dialing the driver's socket, for one test's namespace and AWS account.
struct UpstreamNode {
    cluster: &'static Cluster,
    namespace: String,
    account: AccountId,
    dir: tempfile::TempDir,
    kubelet: KubeletSim,
    provider: OurAwsProvider,
    driver: UpstreamDriver,
    _turn: MutexGuard<'static, ()>,
}

impl UpstreamNode {
    async fn start(prefix: &str, opts: UpstreamOptions, republish: Duration) -> Self {
        let turn = ONE_DRIVER_AT_A_TIME.lock().await;
        let cluster = Cluster::shared();
        // The CSIDriver the charts install: podInfoOnMount, requiresRepublish, STS token audience.
        ensure_csi_driver(cluster).await;
        let namespace = cluster.new_namespace(prefix).await;
        let account = cluster.moto().new_account();
        let driver = UpstreamDriver::start(cluster, &opts).expect("starting the upstream driver");
        let provider = OurAwsProvider::start(
            cluster,
            Path::new(env!("CARGO_BIN_EXE_secrets-store")),
            driver.provider_dir(),
            &cluster.moto().counting_endpoint(),
        )
        .expect("starting secrets-store provider-aws");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        // The upstream driver has no registration socket of its own (node-driver-registrar
        // does that in the chart): kubelet is given its endpoint.
        let mut config = KubeletConfig::new(cluster.node_name(), &root, &namespace)
            .with_csi_socket(DRIVER, driver.socket());
        config.plugin_registration = false;
        config.republish_period = republish;
        let kubelet = KubeletSim::start(cluster.client(), config);
        Self {
            cluster,
            namespace,
            account,
            dir,
            kubelet,
            provider,
            driver,
            _turn: turn,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.cluster.client(), &self.namespace)
    }

    /// The walk-through's ServiceAccount (IRSA role annotation) and SecretProviderClass.
    async fn apply_class(&self, role_arn: &str) {
        let sa: ServiceAccount =
            serde_yaml::from_str(&seed_file("serviceaccount.yaml").replace("ROLE_ARN", role_arn))
                .unwrap();
        let pp = PostParams::default();
        self.api::<ServiceAccount>().create(&pp, &sa).await.unwrap();
        let spc: SecretProviderClass =
            serde_yaml::from_str(&seed_file("secretproviderclass.yaml")).unwrap();
        self.api::<SecretProviderClass>()
            .create(&pp, &spc)
            .await
            .unwrap();
    }

    /// The walk-through's Deployment (3 replicas), unchanged.
    async fn apply_deployment(&self) {
        let deploy: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
        self.api::<Deployment>()
            .create(&PostParams::default(), &deploy)
            .await
            .unwrap();
    }

    /// A bare pod `name` from the walk-through Deployment's pod template, using `class`.
    async fn bare_pod(&self, name: &str, class: &str) {
        let deploy: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
        let mut spec = deploy.spec.unwrap().template.spec.unwrap();
        for volume in spec.volumes.iter_mut().flatten() {
            if let Some(csi) = volume.csi.as_mut() {
                csi.volume_attributes = Some(BTreeMap::from([(
                    "secretProviderClass".into(),
                    class.into(),
                )]));
            }
        }
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Pod::default()
        };
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    async fn pods(&self) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits until exactly `n` pods exist and are Running (their volume published).
    async fn running_pods(&self, n: usize) -> Vec<Pod> {
        eventually(WAIT, &format!("{n} running pods"), || async {
            let pods = self.pods().await;
            let running: Vec<Pod> = pods
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .cloned()
                .collect();
            (running.len() == n && pods.len() == n).then_some(running)
        })
        .await
    }

    /// Waits until the namespace has no pods (the kubelet unpublished and removed them).
    async fn no_pods(&self) {
        eventually(WAIT, "pods unpublished and removed", || async {
            self.pods().await.is_empty().then_some(())
        })
        .await;
    }

    fn target(&self, pod: &Pod) -> std::path::PathBuf {
        self.kubelet
            .target_path(pod.metadata.uid.as_deref().unwrap(), VOLUME)
    }

    fn file(&self, pod: &Pod, name: &str) -> Option<String> {
        std::fs::read_to_string(self.target(pod).join(name)).ok()
    }

    async fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.api::<Secret>().get_opt(name).await.unwrap()?;
        let bytes = secret.data?.get(key)?.0.clone();
        Some(String::from_utf8(bytes).unwrap())
    }

    async fn pod_statuses(&self) -> Vec<SecretProviderClassPodStatus> {
        self.api::<SecretProviderClassPodStatus>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// The version id moto reports for the secret's current value.
    async fn current_version(&self) -> String {
        self.cluster
            .moto()
            .sm_client(&self.account)
            .get_secret_value()
            .secret_id(SECRET)
            .send()
            .await
            .expect("GetSecretValue")
            .version_id()
            .unwrap()
            .to_string()
    }

    /// `(mount point, fs type)` of every mount under this node's kubelet root.
    fn mounts_under_root(&self) -> Vec<(String, String)> {
        let root = self.dir.path().join("kubelet");
        let root = root.to_string_lossy();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let point = l.split(' ').nth(4)?;
                let fs_type = l.split(" - ").nth(1)?.split(' ').next()?;
                Some((point.to_string(), fs_type.to_string()))
            })
            .filter(|(point, _)| point.starts_with(root.as_ref()))
            .collect()
    }

    /// Neither process wrote `value` into its log.
    fn assert_logs_free_of(&self, value: &str) {
        for log in [self.driver.log_path(), self.provider.log_path()] {
            let text = std::fs::read_to_string(log).unwrap();
            assert!(
                !text.contains(value),
                "{} logs a secret value",
                log.display()
            );
        }
    }
}

impl Drop for UpstreamNode {
    /// Leaves no tmpfs mount behind when a test ends early.
    fn drop(&mut self) {
        self.kubelet.stop();
        for (mount, _) in self.mounts_under_root() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn sts_calls(cluster: &Cluster) -> u64 {
    let calls = cluster.moto().calls();
    calls.get("AssumeRoleWithWebIdentity").copied().unwrap_or(0)
}

fn secrets_manager_calls(cluster: &Cluster) -> u64 {
    let calls = cluster.moto().calls();
    calls
        .iter()
        .filter(|(action, _)| action.starts_with("secretsmanager."))
        .map(|(_, n)| n)
        .sum()
}

/// `GET /metrics` on the driver's loopback port, as plain text.
fn metrics(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The walk-through (`examples/seed/`) with the upstream driver and our provider: 3 pods get
/// the file; the driver records each mount in a SecretProviderClassPodStatus (our CRD);
/// upstream's sync controller creates `foosecret`, which the container env reads; the pods' own
/// ServiceAccount tokens went through STS (IRSA); unpublish removes the mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_walkthrough_served_by_upstream_driver_with_our_provider() {
    let node = UpstreamNode::start(
        "up-seed",
        UpstreamOptions::default(),
        Duration::from_secs(2),
    )
    .await;
    let _logs = node.cluster.dump_logs_on_panic();
    let (sts_before, sm_before) = (sts_calls(node.cluster), secrets_manager_calls(node.cluster));
    let value = "seed-value-4b1c9e";
    let role = seed_aws(node.cluster, &node.account, value).await;
    node.apply_class(&role).await;
    node.apply_deployment().await;

    let pods = node.running_pods(3).await;
    let version = node.current_version().await;
    let mounts = node.mounts_under_root();
    for pod in &pods {
        assert_eq!(node.file(pod, SECRET).as_deref(), Some(value));
        let target = node.target(pod).to_string_lossy().into_owned();
        assert!(
            mounts.contains(&(target.clone(), "tmpfs".into())),
            "{target} is not a tmpfs mount: {mounts:?}"
        );
    }

    // One status object per pod, written by the upstream driver through our CRD's schema.
    let statuses = node.pod_statuses().await;
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    for pod in &pods {
        let pod_name = pod.metadata.name.as_deref().unwrap();
        let name = SecretProviderClassPodStatus::object_name(pod_name, &node.namespace, CLASS);
        let spcps = statuses
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no status {name}"));
        let labels = spcps.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(NODE_LABEL).map(String::as_str),
            Some(node.cluster.node_name())
        );
        let owner = &spcps.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Pod", pod.metadata.uid.as_deref().unwrap())
        );
        let status = spcps.status.clone().unwrap();
        assert_eq!(status.pod_name, pod_name);
        assert_eq!(status.secret_provider_class_name, CLASS);
        assert!(status.mounted);
        assert_eq!(Path::new(&status.target_path), node.target(pod));
        assert_eq!(status.objects.len(), 1, "{:?}", status.objects);
        assert_eq!(
            (
                status.objects[0].id.as_str(),
                status.objects[0].version.as_str()
            ),
            (SECRET, version.as_str())
        );
    }

    // Upstream syncs the Secret after the mount (its CreateContainerConfigError window, upstream
    // #600): kubelet retries the container until the env resolves; so does this check.
    eventually(WAIT, "foosecret synced by upstream", || async {
        (node
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(value))
        .then_some(())
    })
    .await;
    let secret = node.api::<Secret>().get("foosecret").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("secrets-store.csi.k8s.io/managed")
            .map(String::as_str),
        Some("true")
    );
    for pod in &pods {
        let env = eventually(WAIT, "container env", || async {
            node.kubelet.resolved_env(pod, "nginx").await.ok()
        })
        .await;
        assert_eq!(env.get("SECRET_API_KEY").map(String::as_str), Some(value));
    }
    // Upstream's patcher makes the pods' ReplicaSet own the Secret (it reads our status objects).
    eventually(WAIT, "foosecret owned by the ReplicaSet", || async {
        let secret = node.api::<Secret>().get("foosecret").await.ok()?;
        let owners = secret.metadata.owner_references.unwrap_or_default();
        owners.iter().any(|o| o.kind == "ReplicaSet").then_some(())
    })
    .await;

    // IRSA: the secret lives in a fresh account that only the annotated role can read; our
    // provider got there by AssumeRoleWithWebIdentity with the pod's kubelet-minted token,
    // which the upstream driver forwarded in `csi.storage.k8s.io/serviceAccount.tokens`.
    assert!(
        sts_calls(node.cluster) > sts_before,
        "no AssumeRoleWithWebIdentity went through moto"
    );
    assert!(secrets_manager_calls(node.cluster) > sm_before);

    let metrics = metrics(node.driver.metrics_port());
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("node_publish_total{") && l.contains("provider=\"aws\"")),
        "upstream's node_publish_total for provider aws missing:\n{metrics}"
    );

    // Deleting the Deployment: kubelet unpublishes each volume through the upstream driver.
    node.api::<Deployment>()
        .delete(
            "csi-secret-driver-test-nginx-deployment",
            &DeleteParams::background(),
        )
        .await
        .unwrap();
    node.no_pods().await;
    assert_eq!(node.mounts_under_root(), Vec::new());
    for pod in &pods {
        assert!(!node.target(pod).exists());
    }
    node.assert_logs_free_of(value);
}

/// Rotation through the upstream driver's republish path: a new value in Secrets Manager reaches
/// the mounted file, the status object's version and the synced Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_by_upstream_driver_reaches_file_and_synced_secret() {
    let opts = UpstreamOptions {
        enable_secret_rotation: true,
        rotation_poll_interval: Duration::from_secs(2),
        ..UpstreamOptions::default()
    };
    let node = UpstreamNode::start("up-rotate", opts, Duration::from_millis(500)).await;
    let _logs = node.cluster.dump_logs_on_panic();
    let role = seed_aws(node.cluster, &node.account, "before-rotation").await;
    node.apply_class(&role).await;
    node.bare_pod("rotating", CLASS).await;
    let pod = node.running_pods(1).await.remove(0);
    assert_eq!(node.file(&pod, SECRET).as_deref(), Some("before-rotation"));
    eventually(WAIT, "foosecret synced", || async {
        (node
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("before-rotation"))
        .then_some(())
    })
    .await;

    e2e::rotate_seed_secret(node.cluster, &node.account, "after-rotation").await;
    let rotated = node.current_version().await;
    eventually(WAIT, "rotated file, status and Secret", || async {
        let file = node.file(&pod, SECRET);
        let secret = node.secret_value("foosecret", "SECRET_API_KEY").await;
        let statuses = node.pod_statuses().await;
        let version = statuses
            .first()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.objects.first())
            .map(|o| o.version.clone());
        (file.as_deref() == Some("after-rotation")
            && secret.as_deref() == Some("after-rotation")
            && version.as_deref() == Some(rotated.as_str()))
        .then_some(())
    })
    .await;

    node.api::<Pod>()
        .delete("rotating", &DeleteParams::default())
        .await
        .unwrap();
    node.no_pods().await;
    assert_eq!(node.mounts_under_root(), Vec::new());
    node.assert_logs_free_of("before-rotation");
    node.assert_logs_free_of("after-rotation");
}

/// A secret that does not exist: our provider's gRPC error crosses the upstream driver to kubelet
/// (the FailedMount Event names the object and carries our NotFound), and nothing is mounted,
/// recorded or synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_error_crosses_the_upstream_driver() {
    let mut node =
        UpstreamNode::start("up-bad", UpstreamOptions::default(), Duration::from_secs(2)).await;
    let _logs = node.cluster.dump_logs_on_panic();
    let role = seed_aws(node.cluster, &node.account, "unused").await;
    node.apply_class(&role).await;
    let missing: SecretProviderClass = serde_yaml::from_str(
        r#"
metadata: {name: missing}
spec:
  provider: aws
  secretObjects:
  - {secretName: missing-secret, type: Opaque, data: [{key: K, objectName: does-not-exist}]}
  parameters:
    objects: |
      - objectName: "does-not-exist"
        objectType: "secretsmanager"
"#,
    )
    .unwrap();
    node.api::<SecretProviderClass>()
        .create(&PostParams::default(), &missing)
        .await
        .unwrap();
    node.bare_pod("broken", "missing").await;

    let message = eventually(WAIT, "FailedMount from the upstream driver", || async {
        node.kubelet
            .events()
            .into_iter()
            .find(|e| e.pod == "broken" && e.reason == "FailedMount")
            .map(|e| e.message)
    })
    .await;
    let wrapped = format!(
        "failed to mount secrets store objects for pod {}/broken",
        node.namespace
    );
    for part in [
        wrapped.as_str(),
        "code = NotFound",
        "\"does-not-exist\"",
        "not found",
    ] {
        assert!(message.contains(part), "{part:?} missing in {message:?}");
    }

    // Stop kubelet's retries, then nothing may remain: the driver unmounts a failed volume.
    node.kubelet.stop();
    eventually(WAIT, "no mount left by the failed publish", || async {
        node.mounts_under_root().is_empty().then_some(())
    })
    .await;
    let pod = node.api::<Pod>().get("broken").await.unwrap();
    assert_ne!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let target = node.target(&pod);
    let files = std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "{} has files", target.display());
    assert!(node.pod_statuses().await.is_empty());
    assert!(
        node.api::<Secret>()
            .get_opt("missing-secret")
            .await
            .unwrap()
            .is_none()
    );
    node.api::<Pod>()
        .delete("broken", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}
