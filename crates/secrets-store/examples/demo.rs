//! `make demo`: the seed walk-through ("Sync AWS Secrets Manager to Kubernetes Secrets") end to
//! end on this machine. A real kube-apiserver, kube-controller-manager and etcd, moto standing in
//! for AWS, our Helm chart installed with `helm`, the chart's DaemonSet container running as a
//! local process for the one node, and a kubelet simulator mounting the pods' volumes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use secrets_store_testenv::{Cluster, eventually, node_agent};

const RELEASE: &str = "secrets-store";
/// How long each step may take to converge.
const CONVERGE: Duration = Duration::from_secs(120);
const DEPLOYMENT: &str = "csi-secret-driver-test-nginx-deployment";

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}/9] {text}\x1b[0m");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seed(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples/seed").join(name)).expect("examples/seed file")
}

fn helm(cluster: &Cluster, args: &[&str]) {
    let out = Command::new(secrets_store_testenv::tool("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn running_pods(pods: &Api<Pod>, n: usize) -> Vec<Pod> {
    eventually(CONVERGE, &format!("{n} running pods"), || async {
        let all = pods.list(&ListParams::default()).await.ok()?.items;
        let running: Vec<Pod> = all
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .cloned()
            .collect();
        (all.len() == n && running.len() == n).then_some(running)
    })
    .await
}

async fn secret_value(secrets: &Api<Secret>, name: &str, key: &str) -> Option<String> {
    let secret = secrets.get_opt(name).await.ok()??;
    let bytes = secret.data?.get(key)?.0.clone();
    String::from_utf8(bytes).ok()
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("secrets-store");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p secrets-store` first",
        binary.display()
    );

    step(
        1,
        "Starting a local cluster: etcd, kube-apiserver, kube-controller-manager, moto (AWS emulator)",
    );
    let cluster = Cluster::shared();
    let client = cluster.client();
    println!(
        "apiserver {}  moto {}",
        cluster.server_url(),
        cluster.moto().endpoint()
    );
    let account = cluster.moto().new_account();
    let agent_ns = cluster.new_namespace("secrets-store-system").await;
    let ns = cluster.new_namespace("demo").await;

    step(
        2,
        "aws secretsmanager create-secret --name CSI-driver-test-secret --secret-string secretkey",
    );
    let sm = cluster.moto().sm_client(&account);
    let created = sm
        .create_secret()
        .name("CSI-driver-test-secret")
        .secret_string("secretkey")
        .send()
        .await
        .unwrap();
    println!("ARN {}", created.arn().unwrap_or_default());
    let iam = cluster.moto().iam_client(&account);
    let policy = iam
        .create_policy()
        .policy_name("deployment-policy")
        .policy_document(seed("policy.json").replace("SECRET_ARN", created.arn().unwrap()))
        .send()
        .await
        .unwrap();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
    let role = iam
        .create_role()
        .role_name("nginx-deployment-role")
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap();
    let role_arn = role.role().unwrap().arn().to_string();
    iam.attach_role_policy()
        .role_name("nginx-deployment-role")
        .policy_arn(policy.policy().unwrap().arn().unwrap())
        .send()
        .await
        .unwrap();
    println!("IAM policy deployment-policy attached to {role_arn}");

    step(
        3,
        "helm install secrets-store charts/secrets-store-rs --set syncSecret.enabled=true (one chart instead of two)",
    );
    let chart = repo().join("charts/secrets-store-rs");
    helm(
        cluster,
        &[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            &agent_ns,
            "--set",
            "syncSecret.enabled=true,enableSecretRotation=true,rotationPollInterval=2s",
        ],
    );
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &agent_ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the chart's DaemonSet");
    let containers = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.len());
    println!(
        "DaemonSet {} with {} container(s); starting it as this node's process",
        ds.metadata.name.clone().unwrap(),
        containers.unwrap_or(0)
    );
    let node = tempfile::tempdir().unwrap();
    let local = node_agent::daemonset_command(cluster, &ds, &agent_ns, &binary, node.path())
        .expect("agent command");
    let agent = cluster
        .spawn("demo-agent", local.command)
        .expect("starting the agent");
    let mut config = KubeletConfig::new(cluster.node_name(), &local.kubelet_root, &ns);
    config.republish_period = Duration::from_secs(1);
    let mut kubelet = KubeletSim::start(client.clone(), config);

    step(
        4,
        "kubectl apply -f examples/seed/ (ServiceAccount with the IRSA annotation, SecretProviderClass, Deployment)",
    );
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_yaml::from_str(&seed("serviceaccount.yaml").replace("ROLE_ARN", &role_arn)).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&pp, &sa)
        .await
        .unwrap();
    let spc: SecretProviderClass = serde_yaml::from_str(&seed("secretproviderclass.yaml")).unwrap();
    Api::<SecretProviderClass>::namespaced(client.clone(), &ns)
        .create(&pp, &spc)
        .await
        .unwrap();
    let mut deploy: Deployment = serde_yaml::from_str(&seed("test-nginx.yaml")).unwrap();
    // The one addition to the walk-through: opt in to a rolling restart when the Secret rotates.
    deploy.metadata.annotations = Some(
        [(
            "secrets-store.csi.x-k8s.io/rollout-on-secret-change".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    deployments.create(&pp, &deploy).await.unwrap();

    step(
        5,
        "Waiting for 3 pods (kubelet mounts each volume through the CSI driver)",
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = running_pods(&pods, 3).await;
    for pod in &running {
        let target =
            kubelet.target_path(pod.metadata.uid.as_deref().unwrap(), "secrets-store-inline");
        let file = std::fs::read_to_string(target.join("CSI-driver-test-secret")).unwrap();
        println!(
            "{}  /mnt/secrets-store/CSI-driver-test-secret = {file}",
            pod.metadata.name.clone().unwrap()
        );
    }

    step(
        6,
        "kubectl get secret foosecret; kubectl exec <pod> -- env | grep SECRET_API_KEY",
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets.get("foosecret").await.unwrap();
    let owners: Vec<String> = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    println!(
        "Secret foosecret (type {}, owned by {})",
        secret.type_.clone().unwrap_or_default(),
        owners.join(", ")
    );
    let env = kubelet.resolved_env(&running[0], "nginx").await.unwrap();
    println!(
        "$ kubectl exec {} -- env | grep SECRET_API_KEY",
        running[0].metadata.name.clone().unwrap()
    );
    println!("SECRET_API_KEY={}", env["SECRET_API_KEY"]);

    step(
        7,
        "aws secretsmanager put-secret-value --secret-string rotated-value (rotation)",
    );
    sm.put_secret_value()
        .secret_id("CSI-driver-test-secret")
        .secret_string("rotated-value")
        .send()
        .await
        .unwrap();
    eventually(CONVERGE, "the synced Secret to rotate", || async {
        (secret_value(&secrets, "foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("rotated-value"))
        .then_some(())
    })
    .await;
    println!(
        "Secret foosecret now has SECRET_API_KEY=rotated-value; the opted-in Deployment rolls"
    );
    let old: Vec<_> = running.iter().map(|p| p.metadata.uid.clone()).collect();
    let fresh = eventually(CONVERGE, "new pods after the rollout", || async {
        let pods = running_pods(&pods, 3).await;
        pods.iter()
            .all(|p| !old.contains(&p.metadata.uid))
            .then_some(pods)
    })
    .await;
    let env = kubelet.resolved_env(&fresh[0], "nginx").await.unwrap();
    println!(
        "$ kubectl exec {} -- env | grep SECRET_API_KEY",
        fresh[0].metadata.name.clone().unwrap()
    );
    println!("SECRET_API_KEY={}", env["SECRET_API_KEY"]);

    step(
        8,
        "kubectl delete deployment (the garbage collector removes foosecret with its workload)",
    );
    deployments
        .delete(
            DEPLOYMENT,
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(CONVERGE, "foosecret to be garbage-collected", || async {
        secrets
            .get_opt("foosecret")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually(CONVERGE, "volumes unpublished", || async {
        kubelet.published_targets().is_empty().then_some(())
    })
    .await;
    println!("Secret foosecret deleted; every tmpfs volume unmounted");

    step(9, "Tearing down");
    kubelet.stop();
    drop(agent);
    helm(cluster, &["uninstall", RELEASE, "--namespace", &agent_ns]);
    println!("done in {:.0?}", started.elapsed());
}
