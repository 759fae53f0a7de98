//! The real node (kubelet + containerd + runc + CNI bridge) against the test control plane: a
//! scheduled pod runs the seed's `nginx:1.14.2` stand-in, answers HTTP on its pod IP, `kubectl
//! exec` reaches it through apiserver → kubelet → containerd, it stops promptly on deletion, and
//! the host is left exactly as found, also after a test binary running a node was SIGKILLed.
//!
//! Needs root and `bash hack/tools.sh node-packages kubelet kube-scheduler kubectl`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_testenv::real_node::{HostSnapshot, RealNode, RealNodeConfig, mounts_under};
use secrets_store_testenv::{Cluster, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests compare host snapshots, so they must not overlap (each would see the other's node).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Set for the child process of [`killed_run_is_cleaned_up_at_the_next_start`].
const CHILD_ENV: &str = "SECRETS_STORE_TESTENV_REAL_NODE_CHILD";

fn config() -> RealNodeConfig {
    RealNodeConfig {
        sync_frequency: Duration::from_secs(10),
        ..Default::default()
    }
}

fn nginx_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "nginx"}},
        "spec": {
            "containers": [{
                "name": "nginx",
                "image": "nginx:1.14.2",
                "ports": [{"containerPort": 80}],
                "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
            }],
        },
    }))
    .unwrap()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `GET /` from the host to the pod's IP on the node's bridge.
async fn http_get(ip: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect((ip, 80)).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: nginx\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The seed's Deployment (examples/seed/test-nginx.yaml) without its CSI volume and the synced
/// Secret's env (no driver runs here).
fn seed_deployment() -> Deployment {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/seed/test-nginx.yaml"),
    )
    .unwrap();
    let mut doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let spec = &mut doc["spec"]["template"]["spec"];
    spec.as_object_mut().unwrap().remove("volumes");
    let container = spec["containers"][0].as_object_mut().unwrap();
    container.remove("volumeMounts");
    container.remove("env");
    serde_json::from_value(doc).unwrap()
}

#[tokio::test]
async fn pods_run_on_the_real_node_and_the_host_is_left_as_found() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();

    let started = Instant::now();
    let node = RealNode::start(cluster, config()).await.unwrap();
    let node_start = started.elapsed();
    let ns = node.new_namespace("real-node").await;
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // A bare pod: scheduled by kube-scheduler (the simulator's Node is cordoned), run by kubelet.
    let started = Instant::now();
    pods.create(&PostParams::default(), &nginx_pod("web"))
        .await
        .unwrap();
    let pod = eventually(Duration::from_secs(60), "pod web Ready", || async {
        pods.get("web").await.ok().filter(is_ready)
    })
    .await;
    let pod_start = started.elapsed();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.name()));
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(pod_ip.starts_with("10.77.0."), "pod IP {pod_ip}");

    // Host → bridge → pod.
    let page = http_get(&pod_ip).await.unwrap();
    assert!(page.contains("Welcome to nginx!"), "{page}");

    // kubectl → apiserver → kubelet (x509, the node's serving cert) → containerd.
    let out = node
        .kubectl(&["exec", "-n", &ns, "web", "--", "cat", "/etc/hostname"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web");
    let out = node
        .kubectl(&["exec", "-n", &ns, "web", "--", "printenv", "HOSTNAME"])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web");
    let node_obj: k8s_openapi::api::core::v1::Node =
        Api::all(client.clone()).get(node.name()).await.unwrap();
    let labels = node_obj.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("us-east-1")
    );

    // Deletion with the default 30 s grace: the stand-in exits on SIGTERM, so it goes at once.
    let started = Instant::now();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "pod web gone", || async {
        matches!(pods.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
    let pod_delete = started.elapsed();

    // The seed's Deployment (3 replicas, its own ServiceAccount), minus the CSI volume.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "nginx-deployment-sa"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &seed_deployment())
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "3 ready seed replicas", || async {
        let list = pods
            .list(&ListParams::default().labels("app=nginx"))
            .await
            .ok()?;
        (list.items.iter().filter(|p| is_ready(p)).count() == 3).then_some(())
    })
    .await;
    let deployment_ready = started.elapsed();

    let started = Instant::now();
    let before = node.host_before().clone();
    let run_dir = cluster.run_dir().to_path_buf();
    let after = node.stop().unwrap();
    let teardown = started.elapsed();
    assert_eq!(before, after);
    assert_eq!(mounts_under(&run_dir), Vec::<std::path::PathBuf>::new());
    assert!(!run_dir.join("node").exists());
    eprintln!(
        "real node: start {:.1}s, pod Ready {:.1}s, pod deleted {:.1}s, \
         3-replica Deployment ready {:.1}s, teardown {:.1}s",
        node_start.as_secs_f64(),
        pod_start.as_secs_f64(),
        pod_delete.as_secs_f64(),
        deployment_ready.as_secs_f64(),
        teardown.as_secs_f64()
    );
}

/// A test binary SIGKILLed while its node runs pods leaves containers, shims, mounts, cgroups,
/// the bridge and changed sysctls behind; the next test binary's node cleans them up first. Both
/// runs are child processes (this test's own cluster would hide the next run's start-up path).
#[tokio::test]
async fn killed_run_is_cleaned_up_at_the_next_start() {
    let _serial = SERIAL.lock().await;
    let before = HostSnapshot::capture();
    let helper = |mode: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "node_run_by_a_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, mode)
            .stdout(Stdio::piped());
        cmd
    };

    let mut killed = helper("killed").spawn().unwrap();
    let stdout = killed.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CHILD NODE RUNNING"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(120), ready).await;
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(
        matches!(ready, Ok(Ok(true))),
        "the killed run's node never ran its pod"
    );
    let left = HostSnapshot::capture();
    assert_ne!(before, left, "the killed run should have left traces");

    let next = tokio::task::spawn_blocking(move || helper("next").output().unwrap());
    let next = tokio::time::timeout(Duration::from_secs(120), next)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&next.stdout);
    assert!(
        next.status.success() && stdout.contains("CHILD NODE STOPPED"),
        "the next run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("cleaning up the real node of a killed run"),
        "the next run found nothing to clean up"
    );
    assert_eq!(before, HostSnapshot::capture());
}

/// Run only by [`killed_run_is_cleaned_up_at_the_next_start`], in child processes: `killed`
/// runs a pod until it is SIGKILLed; `next` starts and stops a node.
#[tokio::test]
#[ignore = "helper: run by killed_run_is_cleaned_up_at_the_next_start"]
async fn node_run_by_a_child() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let cluster = Cluster::shared();
    let node = RealNode::start(cluster, config()).await.unwrap();
    if mode == "next" {
        node.stop().unwrap();
        println!("CHILD NODE STOPPED");
        return;
    }
    let ns = node.new_namespace("killed").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    pods.create(&PostParams::default(), &nginx_pod("web"))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "pod web Ready", || async {
        pods.get("web").await.ok().filter(is_ready)
    })
    .await;
    println!("CHILD NODE RUNNING");
    std::future::pending::<()>().await;
}
