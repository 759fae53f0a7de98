//! The Helm chart, tested for real with the pinned `helm` (`bash hack/tools.sh helm`):
//! `helm lint`, golden `helm template` output, the static manifests under `deploy/` generated from
//! it, and `helm install` into the test apiserver followed by an RBAC check that impersonates the
//! chart's ServiceAccount: it can do what the node agent needs and nothing more.
//!
//! Regenerate every committed rendering (golden files, `deploy/`, the chart's copy of the CRDs):
//! `UPDATE_GOLDEN=1 cargo test -p secrets-store --test helm_chart`.

#[path = "helm_chart/chart.rs"]
mod chart;
#[path = "helm_chart/controller.rs"]
mod controller;
#[path = "common/controller.rs"]
mod controller_proc;
#[path = "helm_chart/limits.rs"]
mod limits;
#[path = "helm_chart/rbac.rs"]
mod rbac;
#[path = "helm_chart/rendering.rs"]
mod rendering;
#[path = "helm_chart/seed.rs"]
mod seed;

use chart::{NAME, chart_dir, helm, repo_root};

/// The chart's cluster-scoped objects (CSIDriver, ClusterRoles) allow one release at a time.
static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
