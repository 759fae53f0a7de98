//! Interop with the REAL upstream AWS provider, ASCP (`aws/secrets-store-csi-driver-provider-aws`
//! 3.1.1, built unmodified by `bash hack/tools.sh ascp`): our node agent, started with
//! `--no-aws-provider`, serves kubelet's CSI calls and syncs Secrets, and ASCP serves it as the
//! external `aws` provider on `<provider dir>/aws.sock` — what a user who keeps ASCP gets. ASCP
//! runs as its chart runs it (`testenv::ascp`: its own mount namespace, in-cluster
//! ServiceAccount files, an STS relay, qps 5 / burst 10) and writes the files itself into the
//! tmpfs our agent mounted.
//!
//! Each test has its own namespace, AWS account, agent, ASCP (with its own counting proxy in
//! front of moto) and kubelet simulator, so the tests run side by side.

mod common;
mod e2e;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_testenv::ascp::{Ascp, AscpOptions, audit_log_len};
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use secrets_store_testenv::{CallCounter, Cluster};

use common::Driver;
use e2e::{SEED_DEPLOYMENT, SEED_SECRET, World, ensure_csi_driver, eventually};

const WAIT: Duration = Duration::from_secs(90);
const CLASS: &str = "nginx-deployment-aws-secrets";
const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";
/// Long enough that neither kubelet nor our agent calls the provider again during a test that
/// counts calls per mount.
const NEVER: Duration = Duration::from_secs(600);

/// The test node: our agent without its built-in AWS provider, ASCP on the agent's provider
/// socket dir, and a kubelet simulator, for one test's namespace and AWS account.
struct AscpNode {
    // Dropped first: the kubelet stops, leftover volumes are unmounted, the agent stops.
    world: World,
    ascp: Ascp,
    /// ASCP's own counting proxy in front of moto (its STS calls come through the relay).
    aws: CallCounter,
}

impl AscpNode {
    /// `poll`: the agent's `--rotation-poll-interval`; `republish`: kubelet's republish period.
    async fn start(prefix: &str, poll: Duration, republish: Duration) -> Self {
        let cluster = Cluster::shared();
        ensure_csi_driver(cluster).await;
        let namespace = cluster.new_namespace(prefix).await;
        let account = cluster.moto().new_account();
        // Under the run dir: ASCP makes the kubelet dir a shared mount, which a killed run's
        // successor removes from there.
        let dir = tempfile::tempdir_in(cluster.run_dir()).unwrap();
        let root = dir.path().join("kubelet");
        let providers = dir.path().join("providers");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&providers).unwrap();

        let aws = cluster.moto().new_call_counter().await.unwrap();
        let ascp = Ascp::start(
            cluster,
            &providers,
            &root,
            aws.endpoint(),
            &AscpOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("starting ASCP: {e}"));

        let poll = format!("{}s", poll.as_secs());
        let agent = Driver::start(
            dir.path(),
            cluster.kubeconfig_path(),
            &[
                "--node-id",
                cluster.node_name(),
                "--kubelet-dir",
                root.to_str().unwrap(),
                "--metrics-addr",
                "",
                "--healthz-addr",
                "",
                "--no-aws-provider",
                "--provider-volume",
                providers.to_str().unwrap(),
                "--enable-secret-sync",
                "--enable-secret-rotation",
                "--rotation-poll-interval",
                &poll,
                "--namespace",
                &namespace,
            ],
        );
        let mut config = KubeletConfig::new(cluster.node_name(), &root, &namespace);
        config.republish_period = republish;
        let kubelet = KubeletSim::start(cluster.client(), config);
        Self {
            world: World {
                cluster,
                namespace,
                account,
                dir,
                agent,
                kubelet,
            },
            ascp,
            aws,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.world.cluster.client(), &self.world.namespace)
    }

    fn root(&self) -> PathBuf {
        self.world.dir.path().join("kubelet")
    }

    /// `(mount point, fs type)` of the volumes mounted below the kubelet dir (the kubelet dir
    /// itself is ASCP's shared bind mount).
    fn volume_mounts(&self) -> Vec<(String, String)> {
        let below = format!("{}/", self.root().display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let point = l.split(' ').nth(4)?;
                let fs_type = l.split(" - ").nth(1)?.split(' ').next()?;
                Some((point.to_string(), fs_type.to_string()))
            })
            .filter(|(point, _)| point.starts_with(&below))
            .collect()
    }

    async fn pod_statuses(&self) -> Vec<SecretProviderClassPodStatus> {
        self.api::<SecretProviderClassPodStatus>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// The version id moto reports for the seed secret's current value.
    async fn current_version(&self) -> String {
        self.world
            .cluster
            .moto()
            .sm_client(&self.world.account)
            .get_secret_value()
            .secret_id(SEED_SECRET)
            .send()
            .await
            .expect("GetSecretValue")
            .version_id()
            .unwrap()
            .to_string()
    }

    /// `Servicing mount request` lines in ASCP's log: the Mount calls it answered past the
    /// request's parsing.
    fn ascp_mounts(&self) -> usize {
        std::fs::read_to_string(self.ascp.log_path())
            .unwrap()
            .matches("Servicing mount request")
            .count()
    }

    async fn wait_no_pods(&self) {
        eventually(WAIT, "pods unpublished and removed", || async {
            self.world.pods().await.is_empty().then_some(())
        })
        .await;
    }

    /// Neither our agent nor ASCP wrote `value` into its log.
    fn assert_logs_free_of(&self, value: &str) {
        let logs: [&Path; 2] = [&self.world.agent.log, self.ascp.log_path()];
        for log in logs {
            let text = std::fs::read_to_string(log).unwrap();
            assert!(
                !text.contains(value),
                "{} logs a secret value",
                log.display()
            );
        }
    }
}

/// The walk-through (`examples/seed/`) with our agent and ASCP: 3 pods get the file, written
/// by ASCP into the tmpfs our agent mounted; our agent records each mount in a
/// SecretProviderClassPodStatus and syncs `foosecret` (read back from the volume, since ASCP
/// returns no file contents), which the container env reads; every mount cost ASCP one STS
/// call through the relay, one GetSecretValue, and GETs of the ServiceAccount, pod and Node;
/// unpublish removes the mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_walkthrough_served_by_our_driver_with_ascp() {
    let node = AscpNode::start("ascp-seed", NEVER, NEVER).await;
    let _logs = node.world.cluster.dump_logs_on_panic();
    let cluster = node.world.cluster;
    let audit = audit_log_len(cluster);
    let value = "seed-value-via-ascp-7d2e";
    let role = node.world.seed_aws(value).await;
    node.world.apply_seed(&role).await;

    let pods = node.world.running_pods(3).await;
    let version = node.current_version().await;
    let mounts = node.volume_mounts();
    for pod in &pods {
        assert_eq!(node.world.file(pod, SEED_SECRET).as_deref(), Some(value));
        let target = node.world.target(pod).to_string_lossy().into_owned();
        assert!(
            mounts.contains(&(target.clone(), "tmpfs".into())),
            "{target} is not a tmpfs mount: {mounts:?}"
        );
    }

    // One status object per pod, written by our agent with the versions ASCP returned.
    let statuses = node.pod_statuses().await;
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    for pod in &pods {
        let pod_name = pod.metadata.name.as_deref().unwrap();
        let name =
            SecretProviderClassPodStatus::object_name(pod_name, &node.world.namespace, CLASS);
        let spcps = statuses
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no status {name}"));
        let labels = spcps.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(NODE_LABEL).map(String::as_str),
            Some(cluster.node_name())
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
        assert_eq!(Path::new(&status.target_path), node.world.target(pod));
        assert_eq!(
            status
                .objects
                .iter()
                .map(|o| (o.id.as_str(), o.version.as_str()))
                .collect::<Vec<_>>(),
            vec![(SEED_SECRET, version.as_str())]
        );
    }

    // Our sync creates foosecret from the files ASCP wrote; the containers' env resolves.
    let secret = eventually(WAIT, "foosecret synced by our agent", || async {
        let secret = node.world.secret("foosecret").await?;
        let data = secret.data.as_ref()?.get("SECRET_API_KEY")?;
        (data.0 == value.as_bytes()).then_some(secret)
    })
    .await;
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("secrets-store.csi.k8s.io/managed")
            .map(String::as_str),
        Some("true")
    );
    for pod in &pods {
        let env = node.world.env(pod).await;
        assert_eq!(env.get("SECRET_API_KEY").map(String::as_str), Some(value));
    }

    // ASCP's calls: per mount, STS (IRSA, through the relay) and GetSecretValue on AWS, and
    // GETs of the ServiceAccount (role ARN) and, the class naming no region, pod and Node.
    let mounts = node.ascp_mounts();
    assert_eq!(mounts, 3, "ASCP answered {mounts} mounts for 3 pods");
    let aws = node.aws.calls();
    let kube = node.ascp.kube_requests(cluster, audit).unwrap();
    eprintln!("ASCP for {mounts} mounts: AWS {aws:?}; Kubernetes {kube:?}");
    let per_mount = |n: Option<&u64>| n.copied().unwrap_or(0) as f64 / mounts as f64;
    assert_eq!(
        per_mount(aws.get("AssumeRoleWithWebIdentity")),
        1.0,
        "{aws:?}"
    );
    assert_eq!(
        per_mount(aws.get("secretsmanager.GetSecretValue")),
        1.0,
        "{aws:?}"
    );
    for request in ["get serviceaccounts", "get pods", "get nodes"] {
        assert_eq!(per_mount(kube.get(request)), 1.0, "{request}: {kube:?}");
    }

    // Deleting the Deployment: kubelet unpublishes each volume through our agent.
    node.api::<Deployment>()
        .delete(SEED_DEPLOYMENT, &DeleteParams::background())
        .await
        .unwrap();
    node.wait_no_pods().await;
    assert_eq!(node.volume_mounts(), Vec::new());
    for pod in &pods {
        assert!(!node.world.target(pod).exists());
    }
    node.ascp.check_running().unwrap();
    node.assert_logs_free_of(value);
}

/// Rotation with ASCP: a new value in Secrets Manager (PutSecretValue) reaches the mounted file
/// (ASCP rewrites it in our tmpfs), our status object's version and the synced Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_with_ascp_reaches_file_and_synced_secret() {
    let node = AscpNode::start(
        "ascp-rotate",
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await;
    let _logs = node.world.cluster.dump_logs_on_panic();
    let role = node.world.seed_aws("before-rotation").await;
    node.world.apply_service_account(&role).await;
    node.world
        .apply_class(&e2e::seed_file("secretproviderclass.yaml"))
        .await;
    node.world.bare_pod("rotating").await;
    let pod = node.world.running_pods(1).await.remove(0);
    assert_eq!(
        node.world.file(&pod, SEED_SECRET).as_deref(),
        Some("before-rotation")
    );
    eventually(WAIT, "foosecret synced", || async {
        (node
            .world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("before-rotation"))
        .then_some(())
    })
    .await;

    node.world.rotate("after-rotation").await;
    let rotated = node.current_version().await;
    eventually(WAIT, "rotated file, status and Secret", || async {
        let file = node.world.file(&pod, SEED_SECRET);
        let secret = node.world.secret_value("foosecret", "SECRET_API_KEY").await;
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
    // ASCP checked the mounted version with DescribeSecret before fetching the new one.
    let aws = node.aws.calls();
    eprintln!(
        "ASCP for {} mounts (rotation): AWS {aws:?}",
        node.ascp_mounts()
    );
    assert!(aws.contains_key("secretsmanager.DescribeSecret"), "{aws:?}");

    node.api::<Pod>()
        .delete("rotating", &DeleteParams::default())
        .await
        .unwrap();
    node.wait_no_pods().await;
    assert_eq!(node.volume_mounts(), Vec::new());
    node.ascp.check_running().unwrap();
    node.assert_logs_free_of("before-rotation");
    node.assert_logs_free_of("after-rotation");
}

/// A secret that does not exist: ASCP's error crosses our agent to kubelet (a FailedMount
/// Warning Event naming the object), and nothing is mounted, recorded or synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ascp_error_crosses_our_driver() {
    let mut node = AscpNode::start("ascp-bad", NEVER, NEVER).await;
    let _logs = node.world.cluster.dump_logs_on_panic();
    let role = node.world.seed_aws("unused").await;
    node.world.apply_service_account(&role).await;
    node.world
        .apply_class(
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
        .await;
    node.world.class_pod("broken", "missing").await;

    let message = eventually(WAIT, "FailedMount from our agent", || async {
        node.world
            .kubelet
            .events()
            .into_iter()
            .find(|e| e.pod == "broken" && e.reason == "FailedMount")
            .map(|e| e.message)
    })
    .await;
    assert!(message.contains("does-not-exist"), "{message:?}");
    // The same Event in the API, as a Warning.
    let events: Api<Event> = node.api();
    let warning = eventually(WAIT, "FailedMount Event in the API", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("broken")
                    && e.reason.as_deref() == Some("FailedMount")
            })
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .message
            .as_deref()
            .is_some_and(|m| m.contains("does-not-exist")),
        "{warning:?}"
    );
    eprintln!("FailedMount with ASCP: {message}");

    // Stop kubelet's retries, then nothing may remain: our agent unmounts a failed volume.
    node.world.kubelet.stop();
    eventually(WAIT, "no mount left by the failed publish", || async {
        node.volume_mounts().is_empty().then_some(())
    })
    .await;
    let pod = node.api::<Pod>().get("broken").await.unwrap();
    assert_ne!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let target = node.world.target(&pod);
    let files = std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "{} has files", target.display());
    assert!(node.pod_statuses().await.is_empty());
    assert!(node.world.secret("missing-secret").await.is_none());
    node.ascp.check_running().unwrap();
    node.api::<Pod>()
        .delete("broken", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}
