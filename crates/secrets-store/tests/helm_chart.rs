//! The Helm chart, tested for real with the pinned `helm` (`bash hack/tools.sh helm`):
//! `helm lint`, golden `helm template` output, the static manifests under `deploy/` generated from
//! it, and `helm install` into the test apiserver followed by an RBAC check that impersonates the
//! chart's ServiceAccount: it can do what the node agent needs and nothing more.
//!
//! Regenerate every committed rendering (golden files, `deploy/`, the chart's copy of the CRDs):
//! `UPDATE_GOLDEN=1 cargo test -p secrets-store --test helm_chart`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrets_store_testenv::Cluster;
use secrets_store_testenv::eventually;
use serde::Deserialize;

const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test -p secrets-store --test helm_chart";
/// Release name and namespace of the static manifests (what `kubectl apply` users get).
const STATIC_RELEASE: &str = "secrets-store-rs";
const STATIC_NAMESPACE: &str = "kube-system";
/// The chart names every object after itself.
const NAME: &str = "secrets-store-rs";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/secrets-store-rs")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The pinned helm. Never skipped: a missing tool fails the test with the command that builds it.
fn helm_bin() -> PathBuf {
    secrets_store_testenv::find_tool("helm").unwrap_or_else(|| {
        panic!(
            "helm not found in {} (set SECRETS_STORE_TOOLS_BIN or run `bash hack/tools.sh helm`)",
            secrets_store_testenv::tools_bin_dir().display()
        )
    })
}

/// Runs helm with private cache/config dirs (never the user's), returning stdout; panics with
/// stderr on failure.
fn helm(args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("helm home");
    let out = Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

/// `helm template` of the chart as the static release, with extra `--set` values.
fn render(sets: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        STATIC_RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        STATIC_NAMESPACE,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// Compares `actual` with the committed file `path` (or rewrites it under `UPDATE_GOLDEN`).
fn assert_current(path: &Path, actual: &str) {
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}: expected {:?}, rendered {:?}).\n\
             Regenerate with: {REGENERATE}",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or("<end of file>"),
            actual.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

/// The chart's cluster-scoped objects (CSIDriver, ClusterRoles) allow one release at a time.
static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HEADER: &str = "# Generated from charts/secrets-store-rs by `helm template`; do not edit.\n";

#[test]
fn helm_lint_passes_for_default_and_full_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let out = helm(&["lint", "--strict", chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "syncSecret.enabled=true,enableSecretRotation=true,providerHealthCheck=true,aws.enabled=false,metrics.enabled=false,logFormatJSON=true,logVerbosity=5,aws.region=eu-west-1",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn template_default_values_matches_golden() {
    let out = render(&[]);
    // The defaults are the secure ones: no Secret access, no rotation, one container.
    assert!(
        !out.contains("\"secrets\""),
        "Secret RBAC without syncSecret"
    );
    assert!(out.contains("requiresRepublish: false"));
    assert_eq!(out.matches("- name: secrets-store\n").count(), 1);
    assert_current(
        &chart_dir().join("tests/golden/default.yaml"),
        &format!("{HEADER}{out}"),
    );
}

#[test]
fn template_sync_and_rotation_matches_golden() {
    let out = render(&[
        "syncSecret.enabled=true",
        "enableSecretRotation=true",
        "rotationPollInterval=30s",
    ]);
    assert!(out.contains("requiresRepublish: true"));
    assert!(out.contains("- --enable-secret-sync"));
    assert!(out.contains("- --enable-secret-rotation"));
    assert!(out.contains("- --rotation-poll-interval=30s"));
    assert_current(
        &chart_dir().join("tests/golden/sync-rotation.yaml"),
        &format!("{HEADER}{out}"),
    );
}

/// `deploy/secrets-store-rs.yaml` is the chart with default values, for `kubectl apply` users
/// (after `kubectl apply -f deploy/crds/`).
#[test]
fn static_manifests_are_current() {
    let out = render(&[]);
    assert_current(
        &repo_root().join("deploy/secrets-store-rs.yaml"),
        &format!("{HEADER}{out}"),
    );
}

/// The chart ships the CRDs the api crate generates (`make crds` writes `deploy/crds/`).
#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = repo_root().join("deploy/crds");
    let copied = chart_dir().join("crds");
    let mut names: Vec<String> = std::fs::read_dir(&generated)
        .expect("deploy/crds")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "expected two generated CRDs: {names:?}");
    for name in &names {
        let want = std::fs::read_to_string(generated.join(name)).unwrap();
        assert_current(&copied.join(name), &want);
    }
    let mut shipped: Vec<String> = std::fs::read_dir(&copied)
        .expect("chart crds/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(
        shipped, names,
        "the chart's crds/ must hold exactly deploy/crds/*.yaml; regenerate with: {REGENERATE}"
    );
}

/// A client that acts as the chart's ServiceAccount (impersonated by the admin identity).
async fn impersonating(cluster: &Cluster, ns: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path()).expect("test kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from test kubeconfig");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{NAME}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("impersonating client")
}

/// Whether the impersonated identity may do `verb` on `resource` (`group/resource[/sub]`).
async fn can(client: &Client, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let (group, rest) = resource.split_once('/').unwrap_or(("", resource));
    let (resource, subresource) = match rest.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (rest, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                subresource,
                verb: Some(verb.to_string()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .expect("review status")
        .allowed
}

/// Every (group/resource, verb) the identity holds in `ns`, minus what every authenticated user
/// holds (the self-review APIs).
async fn rules_in(client: &Client, ns: &str) -> BTreeSet<String> {
    let api: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(ns.to_string()),
        },
        ..Default::default()
    };
    let status = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview")
        .status
        .expect("rules status");
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        let groups = rule.api_groups.unwrap_or_default();
        if groups
            .iter()
            .any(|g| g == "authorization.k8s.io" || g == "authentication.k8s.io")
        {
            continue;
        }
        let names = rule.resource_names.unwrap_or_default();
        for g in &groups {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    let suffix = if names.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", names.join(","))
                    };
                    out.insert(format!("{g}/{r} {v}{suffix}"));
                }
            }
        }
    }
    out
}

/// The rules the node agent needs without secret sync: exactly these, nothing else.
fn base_rules() -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let mut add = |res: &str, verbs: &[&str]| {
        for v in verbs {
            want.insert(format!("{res} {v}"));
        }
    };
    let read = ["get", "list", "watch"];
    add("secrets-store.csi.x-k8s.io/secretproviderclasses", &read);
    add(
        "secrets-store.csi.x-k8s.io/secretproviderclasspodstatuses",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    );
    add("/pods", &read);
    add("/events", &["create", "patch"]);
    add("events.k8s.io/events", &["create", "patch"]);
    add("/serviceaccounts", &read);
    add("/nodes", &["get"]);
    want
}

fn sync_rules() -> BTreeSet<String> {
    let mut want = base_rules();
    for v in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        want.insert(format!("/secrets {v}"));
    }
    for r in ["deployments", "statefulsets", "daemonsets"] {
        for v in ["get", "list", "patch"] {
            want.insert(format!("apps/{r} {v}"));
        }
    }
    want
}

/// What the agent must never be able to do, whatever the values.
async fn assert_never(client: &Client, other_ns: &str) {
    for (verb, resource) in [
        ("create", "/serviceaccounts/token"),
        ("create", "/pods"),
        ("delete", "/pods"),
        ("create", "/pods/exec"),
        ("update", "/nodes"),
        ("patch", "/nodes"),
        ("list", "/configmaps"),
        ("create", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("update", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("delete", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("escalate", "rbac.authorization.k8s.io/clusterroles"),
        ("bind", "rbac.authorization.k8s.io/clusterroles"),
        ("create", "rbac.authorization.k8s.io/rolebindings"),
        ("impersonate", "/serviceaccounts"),
        ("create", "apps/deployments"),
        ("delete", "apps/deployments"),
    ] {
        assert!(
            !can(client, verb, resource, Some(other_ns)).await,
            "the agent must not {verb} {resource}"
        );
    }
}

/// `helm install` into the test apiserver, then the RBAC check (issue 8): impersonating the
/// chart's ServiceAccount, with and without `syncSecret.enabled` (a `helm upgrade`).
#[tokio::test]
async fn helm_install_creates_driver_and_least_privilege_rbac() {
    let _one_release = INSTALL.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("chart").await;
    let workload_ns = cluster.new_namespace("chart-workload").await;
    let admin = cluster.client();
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap().to_string();
    let install = |verb: &'static str, sets: &'static str| {
        let mut args = vec![
            verb,
            NAME,
            chart.as_str(),
            "--namespace",
            ns.as_str(),
            "--kubeconfig",
            kubeconfig.as_str(),
            "--timeout",
            "120s",
        ];
        if !sets.is_empty() {
            args.extend(["--set", sets]);
        }
        helm(&args)
    };
    install("install", "");

    // CSIDriver exactly as kubelet needs it.
    let driver = Api::<CSIDriver>::all(admin.clone())
        .get("secrets-store.csi.k8s.io")
        .await
        .expect("CSIDriver installed");
    let spec = driver.spec;
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(spec.volume_lifecycle_modes, Some(vec!["Ephemeral".into()]));
    assert_eq!(spec.requires_republish, Some(false));
    let audiences: Vec<String> = spec
        .token_requests
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.audience)
        .collect();
    assert_eq!(audiences, ["sts.amazonaws.com", "pods.eks.amazonaws.com"]);

    // One container, privileged only for mounting, read-only root filesystem.
    let ds = Api::<DaemonSet>::namespaced(admin.clone(), &ns)
        .get(NAME)
        .await
        .expect("DaemonSet installed");
    let pod_spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.containers.len(),
        1,
        "the DaemonSet has ONE container"
    );
    assert_eq!(pod_spec.service_account_name.as_deref(), Some(NAME));
    let container = &pod_spec.containers[0];
    let sc = container.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let bidirectional: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(bidirectional, ["/var/lib/kubelet/pods"]);
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .get(NAME)
        .await
        .expect("ServiceAccount installed");

    // CRDs present (the chart's crds/ are the generated files; see chart_crds_are_the_generated_ones).
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
    ] {
        crds.get(name).await.expect("CRD present");
    }
    let role = Api::<ClusterRole>::all(admin.clone())
        .get(NAME)
        .await
        .expect("ClusterRole installed");
    assert!(
        role.rules
            .iter()
            .flatten()
            .all(|r| !r.resources.iter().flatten().any(|x| x == "secrets")),
        "no Secret rule in the base ClusterRole: {:?}",
        role.rules
    );

    // RBAC as the agent, without sync: exactly the base rules, in any namespace.
    let agent = impersonating(cluster, &ns).await;
    assert_eq!(rules_in(&agent, &workload_ns).await, base_rules());
    assert_never(&agent, &workload_ns).await;
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            !can(&agent, verb, "/secrets", None).await,
            "without syncSecret the agent must not {verb} Secrets"
        );
    }
    // And for real against the apiserver: what it needs works, the rest is refused.
    Api::<Pod>::all(agent.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", cluster.node_name())))
        .await
        .expect("the agent lists its node's pods");
    let forbidden = Api::<Secret>::all(agent.clone())
        .list(&ListParams::default())
        .await
        .expect_err("cluster-wide Secret list must be refused");
    assert!(
        matches!(forbidden, kube::Error::Api(ref e) if e.code == 403),
        "{forbidden}"
    );

    // With secret sync: Secret and rollout verbs are added, nothing else.
    install(
        "upgrade",
        "syncSecret.enabled=true,enableSecretRotation=true",
    );
    let driver = Api::<CSIDriver>::all(admin.clone())
        .get("secrets-store.csi.k8s.io")
        .await
        .unwrap();
    assert_eq!(driver.spec.requires_republish, Some(true));
    assert_eq!(rules_in(&agent, &workload_ns).await, sync_rules());
    assert_never(&agent, &workload_ns).await;
    // The rollout key: get by name and create in the agent's own namespace.
    let own = rules_in(&agent, &ns).await;
    assert!(
        own.contains("/secrets get (secrets-store-rs-rollout-key)")
            && own.contains("/secrets create"),
        "{own:?}"
    );
    Api::<Secret>::all(agent.clone())
        .list(&ListParams::default().labels("secrets-store.csi.k8s.io/managed=true"))
        .await
        .expect("with syncSecret the agent lists managed Secrets");

    helm(&[
        "uninstall",
        NAME,
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(
        Api::<CSIDriver>::all(admin.clone())
            .get_opt("secrets-store.csi.k8s.io")
            .await
            .unwrap()
            .is_none(),
        "uninstall removes the CSIDriver"
    );
    let namespaces: Api<Namespace> = Api::all(admin);
    for n in [&ns, &workload_ns] {
        namespaces
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// `helm install <sets>` into `ns` with the test kubeconfig.
fn helm_install(cluster: &Cluster, ns: &str, sets: &str) {
    let chart = chart_dir();
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    let mut args = vec![
        "install",
        NAME,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--kubeconfig",
        &kubeconfig,
        "--timeout",
        "120s",
    ];
    if !sets.is_empty() {
        args.extend(["--set", sets]);
    }
    helm(&args);
}

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
    helm_install(
        cluster,
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
    helm(&[
        "uninstall",
        NAME,
        "--namespace",
        &agent_ns,
        "--kubeconfig",
        cluster.kubeconfig_path().to_str().unwrap(),
    ]);
    let namespaces: Api<Namespace> = Api::all(admin);
    for n in [&ns, &agent_ns] {
        namespaces
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Every flag the chart can render (all options on) is one `secrets-store node` accepts, with a
/// value its parser takes: clap stops at the first bad argument, before the trailing `--help`.
#[test]
fn every_rendered_flag_is_accepted_by_the_agent() {
    let out = render(&[
        "syncSecret.enabled=true",
        "enableSecretRotation=true",
        "rotationPollInterval=45s",
        "providerHealthCheck=true",
        "aws.enabled=false",
        "aws.region=eu-west-1",
        "logFormatJSON=true",
        "logVerbosity=5",
        "metrics.enabled=false",
        "maxCallRecvMsgSize=8388608",
    ]);
    let ds = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("DaemonSet"))
        .expect("a DaemonSet");
    let ds: DaemonSet = serde_yaml::from_value(ds).unwrap();
    let container = ds.spec.unwrap().template.spec.unwrap().containers.remove(0);
    let args: Vec<String> = container.args.unwrap_or_default();
    for flag in [
        "--enable-secret-sync",
        "--enable-secret-rotation",
        "--provider-health-check",
        "--no-aws-provider",
        "--log-format-json",
        "--metrics-addr=",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} rendered: {args:?}");
    }
    let run = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_secrets-store"))
            .args(args)
            .arg("--help")
            .env("KUBE_NODE_NAME", "n")
            .env("POD_NAMESPACE", "ns")
            .output()
            .unwrap()
    };
    let out = run(&args);
    assert!(
        out.status.success(),
        "secrets-store rejected the chart's args {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check has teeth: an unknown flag fails the same way.
    let mut bad = args.clone();
    bad.push("--no-such-flag".into());
    assert!(!run(&bad).status.success());
}
