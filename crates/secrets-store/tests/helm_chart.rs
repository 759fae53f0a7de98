//! The Helm chart, tested for real with the pinned `helm` (`bash hack/tools.sh helm`):
//! `helm lint`, golden `helm template` output, the static manifests under `deploy/` generated from
//! it, and `helm install` into the test apiserver followed by an RBAC check that impersonates the
//! chart's ServiceAccount: it can do what the node agent needs and nothing more.
//!
//! Regenerate every committed rendering (golden files, `deploy/`, the chart's copy of the CRDs):
//! `UPDATE_GOLDEN=1 cargo test -p secrets-store --test helm_chart`.

#[path = "helm_chart/rbac.rs"]
mod rbac;
#[path = "helm_chart/rendering.rs"]
mod rendering;
#[path = "helm_chart/seed.rs"]
mod seed;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The chart names every object after itself.
const NAME: &str = "secrets-store-rs";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart_dir() -> PathBuf {
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

/// The chart's cluster-scoped objects (CSIDriver, ClusterRoles) allow one release at a time.
static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
