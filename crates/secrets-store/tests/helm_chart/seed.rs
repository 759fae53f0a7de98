//! The seed walk-through on what the chart installed: the DaemonSet's own container command as
//! the chart's ServiceAccount, with the kubelet simulator playing the node.

use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_testenv::Cluster;
use secrets_store_testenv::eventually;

use crate::chart::{helm_release, helm_uninstall};
use crate::{INSTALL, NAME, repo_root};

/// How long the chart tests wait for the cluster to converge.
const CONVERGE: std::time::Duration = std::time::Duration::from_secs(120);

fn seed_file(name: &str) -> String {
    let path = repo_root().join("examples/seed").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seed walk-through against what the chart created (`syncSecret.enabled`,
/// `enableSecretRotation`): the DaemonSet's own container command (args and env as rendered, host
/// paths moved under a temp dir standing in for the node) runs the real binary as the chart's
/// ServiceAccount, and the kubelet simulator plays the node. This proves the chart's flags are
/// ones the agent accepts and its RBAC is enough for mounts and secret sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_walkthrough_runs_on_the_chart_daemonset_identity() {
    use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};

    let _one_release = INSTALL.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let agent_ns = cluster.new_namespace("chart-agent").await;
    let ns = cluster.new_namespace("chart-seed").await;
    let admin = cluster.client();
    helm_release(
        cluster,
        "install",
        &agent_ns,
        "syncSecret.enabled=true,enableSecretRotation=true",
    );

    // The node: the DaemonSet's container as a local process, host paths under a temp dir.
    let node = tempfile::tempdir().unwrap();
    let ds = Api::<DaemonSet>::namespaced(admin.clone(), &agent_ns)
        .get(NAME)
        .await
        .unwrap();
    let container = ds.spec.clone().unwrap().template.spec.unwrap().containers[0].clone();
    let local = secrets_store_testenv::node_agent::daemonset_command(
        cluster,
        &ds,
        &agent_ns,
        Path::new(env!("CARGO_BIN_EXE_secrets-store")),
        node.path(),
    )
    .expect("the DaemonSet's container as a local command");
    let agent = cluster
        .spawn("chart-agent", local.command)
        .expect("starting the agent");

    let root = local.kubelet_root;
    let mut kubelet = KubeletSim::start(
        cluster.client(),
        KubeletConfig::new(cluster.node_name(), &root, &ns),
    );

    // The seed's AWS side (an account of its own) and manifests, verbatim.
    let account = cluster.moto().new_account();
    cluster
        .moto()
        .sm_client(&account)
        .create_secret()
        .name("CSI-driver-test-secret")
        .secret_string("secretkey")
        .send()
        .await
        .expect("CreateSecret");
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_yaml::from_str(
        &seed_file("serviceaccount.yaml").replace("ROLE_ARN", &account.role_arn("nginx")),
    )
    .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&pp, &sa)
        .await
        .unwrap();
    let spc: secrets_store_api::crd::SecretProviderClass =
        serde_yaml::from_str(&seed_file("secretproviderclass.yaml")).unwrap();
    Api::<secrets_store_api::crd::SecretProviderClass>::namespaced(admin.clone(), &ns)
        .create(&pp, &spc)
        .await
        .unwrap();
    let deploy: k8s_openapi::api::apps::v1::Deployment =
        serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns);
    deployments.create(&pp, &deploy).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let running = eventually(
        CONVERGE,
        "3 running pods with their volume published",
        || async {
            agent
                .check_running()
                .unwrap_or_else(|e| panic!("the agent exited: {e}"));
            let list = pods.list(&ListParams::default()).await.ok()?.items;
            let running: Vec<Pod> = list
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() == 3).then_some(running)
        },
    )
    .await;
    for pod in &running {
        let uid = pod.metadata.uid.clone().unwrap();
        let file = kubelet
            .target_path(&uid, "secrets-store-inline")
            .join("CSI-driver-test-secret");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "secretkey");
    }
    // Secret sync through the chart's sync RBAC: the seed's `foosecret`, and the env var the
    // seed's container reads from it.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let synced = eventually(CONVERGE, "the synced Secret foosecret", || async {
        secrets.get_opt("foosecret").await.ok().flatten()
    })
    .await;
    let data = synced.data.unwrap_or_default();
    assert_eq!(
        data.get("SECRET_API_KEY").map(|b| b.0.as_slice()),
        Some(b"secretkey".as_slice())
    );
    let env = kubelet
        .resolved_env(&running[0], "nginx")
        .await
        .expect("the container's env resolves");
    assert_eq!(
        env.get("SECRET_API_KEY").map(String::as_str),
        Some("secretkey")
    );

    // The chart's memory limit is sized from this: the agent's peak RSS through the walk-through
    // (a debug build, larger than the release image's) must fit well inside it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    let limit = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .expect("a memory limit");
    assert_eq!(limit, "128Mi", "update this check with the chart's limit");
    eprintln!("agent peak RSS: {} MiB (limit {limit})", peak_kib / 1024);
    assert!(
        peak_kib < 128 * 1024 / 2,
        "peak RSS {peak_kib} KiB leaves less than half of the {limit} limit"
    );

    // Nothing the agent did was refused, and the value never reached its log.
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        log.contains("mounted AWS objects"),
        "the built-in AWS provider served the mounts (log at the chart's RUST_LOG):\n{log}"
    );
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the agent hit an RBAC denial:\n{log}"
    );
    assert!(
        !log.contains("secretkey"),
        "the secret value is in the agent's log"
    );

    // Tear down in kubelet's order: pods go, volumes are unpublished (tmpfs unmounted), then the
    // agent and the release.
    deployments
        .delete(
            "csi-secret-driver-test-nginx-deployment",
            &DeleteParams::foreground(),
        )
        .await
        .unwrap();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    eventually(CONVERGE, "every volume unpublished", || async {
        kubelet.published_targets().is_empty().then_some(())
    })
    .await;
    kubelet.stop();
    agent.stop();
    helm_uninstall(cluster, &agent_ns);
    let namespaces: Api<Namespace> = Api::all(admin);
    for n in [&ns, &agent_ns] {
        namespaces
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}
