//! The chart and the pinned `helm`, and clients that act as another identity: shared by the chart
//! tests and the adversarial suite (both install the chart into their test apiserver).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrets_store_testenv::Cluster;

/// The chart names every object after itself.
pub const NAME: &str = "secrets-store-rs";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/secrets-store-rs")
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
pub fn helm(args: &[&str]) -> String {
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

/// `helm <verb> NAME <chart> --namespace <ns>` with the test kubeconfig and `--set <sets>`.
pub fn helm_release(cluster: &Cluster, verb: &str, ns: &str, sets: &str) {
    let chart = chart_dir();
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    let mut args = vec![
        verb,
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

/// `helm uninstall NAME --namespace <ns>` with the test kubeconfig.
pub fn helm_uninstall(cluster: &Cluster, ns: &str) {
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    helm(&[
        "uninstall",
        NAME,
        "--namespace",
        ns,
        "--kubeconfig",
        &kubeconfig,
    ]);
}

/// A client that acts as `user` in `groups` (impersonated by the admin identity).
pub async fn impersonating(cluster: &Cluster, user: &str, groups: Vec<String>) -> Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path()).expect("test kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from test kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups);
    Client::try_from(config).expect("impersonating client")
}

/// A client that acts as the chart's ServiceAccount in `ns` (the node agent's identity).
pub async fn as_agent(cluster: &Cluster, ns: &str) -> Client {
    impersonating(
        cluster,
        &format!("system:serviceaccount:{ns}:{NAME}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    )
    .await
}

/// A client that acts as the chart's controller ServiceAccount in `ns`.
pub async fn as_controller(cluster: &Cluster, ns: &str) -> Client {
    impersonating(
        cluster,
        &format!("system:serviceaccount:{ns}:{NAME}-controller"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    )
    .await
}

/// A kubeconfig file acting as the chart's controller ServiceAccount of release namespace `ns`
/// (impersonated by the admin identity), written into `dir`: for the controller binary.
pub fn controller_kubeconfig(cluster: &Cluster, ns: &str, dir: &Path) -> PathBuf {
    let mut config = Kubeconfig::read_from(cluster.kubeconfig_path()).unwrap();
    for user in &mut config.auth_infos {
        let auth = user.auth_info.get_or_insert_with(Default::default);
        auth.impersonate = Some(format!("system:serviceaccount:{ns}:{NAME}-controller"));
        auth.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ]);
    }
    let path = dir.join("controller-kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}
