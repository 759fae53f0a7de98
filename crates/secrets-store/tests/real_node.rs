//! The promises that matter, on a real node: kubelet v1.35 + containerd + runc (testenv's
//! `RealNode`), our chart installed with `helm install`, the agent running from its own image as
//! the chart's one-container DaemonSet, and the seed's manifests applied with `kubectl` as the
//! walk-through does. What is checked here is what kubelet does, not what our simulator does:
//! plugin registration (grpc-go's `:authority`), the tokens in `secrets`
//! (`serviceAccountTokenInSecrets`), republish, pod teardown, and an agent that dies.
//!
//! One scenario, in phases: one real node runs per machine, and each phase builds on the last.
//! Needs root and `bash hack/tools.sh core` (kubelet, containerd, helm, kubectl).

mod common;
mod e2e;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, ListParams, Patch, PatchParams};
use secrets_store_testenv::real_node::{
    AgentChart, AgentRelease, RealNode, RealNodeConfig, mounts_under,
};
use secrets_store_testenv::{AccountId, Cluster, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
/// kubelet's republish period here (its `syncFrequency`; 1 min by default).
const KUBELET_SYNC: Duration = Duration::from_secs(5);
const SECRET_FILE: &str = "/mnt/secrets-store/CSI-driver-test-secret";

struct Seed<'a> {
    node: &'a RealNode,
    cluster: &'static Cluster,
    namespace: String,
    account: AccountId,
}

impl Seed<'_> {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client(), &self.namespace)
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["--namespace", self.namespace.as_str()];
        full.extend_from_slice(args);
        let out = self.node.kubectl(&full).await.expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f` of a seed manifest, with `ROLE_ARN` filled in where it appears.
    async fn apply(&self, file: &str, role_arn: &str) {
        let path = self.node.node_dir().join(file);
        std::fs::write(&path, e2e::seed_file(file).replace("ROLE_ARN", role_arn)).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]).await;
    }

    /// The seed Deployment's `n` pods, once all are Ready.
    async fn ready_pods(&self, n: usize) -> Vec<Pod> {
        eventually(WAIT, &format!("{n} Ready seed pods"), || async {
            let pods = self.pods().list(&ListParams::default()).await.ok()?.items;
            let live: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (live.len() == n && live.iter().all(is_ready)).then_some(live)
        })
        .await
    }

    /// What `kubectl exec <pod> -- <cmd>` prints.
    async fn exec(&self, pod: &Pod, cmd: &[&str]) -> String {
        let name = pod.metadata.name.as_deref().unwrap();
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args).await
    }

    async fn synced_value(&self) -> Option<String> {
        let secret = Api::<Secret>::namespaced(self.cluster.client(), &self.namespace)
            .get_opt("foosecret")
            .await
            .ok()??;
        let bytes = secret.data?.get("SECRET_API_KEY")?.0.clone();
        String::from_utf8(bytes).ok()
    }

    /// Waits until every pod's file and `foosecret` hold `value`; returns how long that took.
    async fn wait_for_value(&self, pods: &[Pod], value: &str) -> Duration {
        let started = Instant::now();
        for pod in pods {
            eventually(
                WAIT,
                &format!("the mounted file to hold {value:?}"),
                || async { (self.exec(pod, &["cat", SECRET_FILE]).await == value).then_some(()) },
            )
            .await;
        }
        eventually(WAIT, &format!("foosecret to hold {value:?}"), || async {
            (self.synced_value().await.as_deref() == Some(value)).then_some(())
        })
        .await;
        started.elapsed()
    }

    async fn rotate(&self, value: &str) {
        e2e::rotate_seed_secret(self.cluster, &self.account, value).await;
    }

    /// Events kubelet recorded for failed container creation (`CreateContainerConfigError`).
    async fn container_config_errors(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.cluster.client(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Failed"))
            .filter_map(|e| e.message)
            .collect()
    }

    /// The tmpfs mounts of the volumes of the pod with `uid`.
    fn volume_mounts(&self, uid: &str) -> Vec<PathBuf> {
        mounts_under(&self.node.kubelet_dir().join("pods").join(uid))
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_walkthrough_on_a_real_kubelet() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let node = RealNode::start(
        cluster,
        RealNodeConfig {
            sync_frequency: KUBELET_SYNC,
            agent_binary: Some(env!("CARGO_BIN_EXE_secrets-store").into()),
            ..RealNodeConfig::default()
        },
    )
    .await
    .expect("starting the real node");

    // 1. helm install: the DaemonSet pod runs our image and kubelet registers the driver.
    //    Rotation on kubelet's republishes only, so that path is what phase 3 proves.
    let agent = node
        .install_agent(&AgentChart {
            rotation_poll_interval: "2s".into(),
            rotation_self_refresh: false,
            aws_endpoint: cluster.moto().endpoint(),
            extra_values: Vec::new(),
        })
        .await
        .expect("installing the chart on the real node");
    let csinode = Api::<CSINode>::all(cluster.client())
        .get(node.name())
        .await
        .unwrap();
    let driver = csinode
        .spec
        .drivers
        .iter()
        .find(|d| d.name == e2e::DRIVER)
        .expect("kubelet registered the driver");
    assert_eq!(
        driver.node_id,
        node.name(),
        "NodeGetInfo answered through the CSI socket"
    );
    let (_, restarts) = agent
        .container(&node)
        .await
        .unwrap()
        .expect("agent running");
    assert_eq!(
        restarts,
        0,
        "the agent container started once:\n{}",
        agent.logs(&node).await
    );
    let ds = Api::<DaemonSet>::namespaced(cluster.client(), agent.namespace())
        .get("secrets-store-rs")
        .await
        .unwrap();
    let containers = ds.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1, "one container, no sidecars");

    // 2. The seed, verbatim: three pods Running, the file and SECRET_API_KEY from the real
    //    containers, foosecret synced before any container needed it.
    let seed = Seed {
        node: &node,
        cluster,
        namespace: node.new_namespace("seed").await,
        account: cluster.moto().new_account(),
    };
    let role = e2e::seed_aws(cluster, &seed.account, "secretkey").await;
    seed.apply("serviceaccount.yaml", &role).await;
    seed.apply("secretproviderclass.yaml", &role).await;
    seed.apply("test-nginx.yaml", &role).await;
    let pods = seed.ready_pods(3).await;
    for pod in &pods {
        assert_eq!(seed.exec(pod, &["cat", SECRET_FILE]).await, "secretkey");
        let env = seed.exec(pod, &["env"]).await;
        assert!(
            env.lines().any(|l| l == "SECRET_API_KEY=secretkey"),
            "{env}"
        );
    }
    assert_eq!(seed.synced_value().await.as_deref(), Some("secretkey"));
    let errors = seed.container_config_errors().await;
    assert!(errors.is_empty(), "CreateContainerConfigError: {errors:?}");

    // 3. Rotation through kubelet's own republish (requiresRepublish, syncFrequency 5 s).
    seed.rotate("rotated-by-republish").await;
    let took = seed.wait_for_value(&pods, "rotated-by-republish").await;
    eprintln!("rotation through kubelet's republish landed in {took:.1?}");

    // 4. The agent container is SIGKILLed: pods keep their files; kubelet restarts it, it
    //    registers again, and republishes work again.
    agent.kill_container(&node).await.unwrap();
    for pod in &pods {
        assert_eq!(
            seed.exec(pod, &["cat", SECRET_FILE]).await,
            "rotated-by-republish"
        );
    }
    eventually(WAIT, "the agent container to run again", || async {
        let (_, restarts) = agent.container(&node).await.ok()??;
        (restarts >= 1).then_some(())
    })
    .await;
    node.wait_registered(WAIT).await.unwrap();
    seed.rotate("rotated-after-restart").await;
    seed.wait_for_value(&pods, "rotated-after-restart").await;

    // 5. A pod deleted while no agent runs on the node is cleaned up once it is back.
    let daemonsets: Api<DaemonSet> = Api::namespaced(cluster.client(), agent.namespace());
    let select = |host: &str| {
        Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": {
            "kubernetes.io/hostname": host
        }}}}}))
    };
    daemonsets
        .patch(
            "secrets-store-rs",
            &PatchParams::default(),
            &select("nowhere"),
        )
        .await
        .unwrap();
    eventually(WAIT, "the agent pod to be gone", || async {
        agent.pod(&node).await.ok()?.is_none().then_some(())
    })
    .await;
    let victim = pods[0].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    seed.kubectl(&["delete", "pod", &victim_name, "--wait=false"])
        .await;
    assert!(
        !seed.volume_mounts(&uid(&victim)).is_empty(),
        "without the agent, kubelet cannot unpublish"
    );
    daemonsets
        .patch(
            "secrets-store-rs",
            &PatchParams::default(),
            &select(node.name()),
        )
        .await
        .unwrap();
    eventually(
        WAIT,
        "the deleted pod to be unpublished and gone",
        || async {
            let gone = seed.pods().get_opt(&victim_name).await.ok()?.is_none();
            (gone && seed.volume_mounts(&uid(&victim)).is_empty()).then_some(())
        },
    )
    .await;
    let pods = seed.ready_pods(3).await;
    seed.rotate("rotated-after-outage").await;
    seed.wait_for_value(&pods, "rotated-after-outage").await;

    // 6. Deleting the Deployment unmounts every volume and garbage-collects foosecret.
    seed.kubectl(&["delete", "deployment", e2e::SEED_DEPLOYMENT, "--wait=false"])
        .await;
    eventually(WAIT, "every seed pod gone and unmounted", || async {
        let left = seed.pods().list(&ListParams::default()).await.ok()?.items;
        let mounted = pods.iter().any(|p| !seed.volume_mounts(&uid(p)).is_empty());
        (left.is_empty() && !mounted).then_some(())
    })
    .await;
    eventually(WAIT, "foosecret garbage-collected", || async {
        seed.synced_value().await.is_none().then_some(())
    })
    .await;

    uninstall(agent, &node);
    let before = node.host_before().clone();
    let run_dir = cluster.run_dir().to_path_buf();
    let after = node.stop().expect("stopping the real node");
    assert_eq!(before, after, "the host is left as it was found");
    assert!(
        mounts_under(&run_dir).is_empty(),
        "{:?}",
        mounts_under(&run_dir)
    );
}

fn uninstall(agent: AgentRelease, node: &RealNode) {
    agent.uninstall(node).expect("helm uninstall");
}
