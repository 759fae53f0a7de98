//! What the shared control plane lacks for a real node, started only while one runs (simulator
//! tests stay unaffected): kube-scheduler, and a second kube-controller-manager with the
//! controllers a node needs.

use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::process::Proc;
use crate::{Cluster, Error, tools};

/// Component (and log file) names.
pub(crate) const SCHEDULER: &str = "kube-scheduler";
pub(crate) const NODE_CONTROLLERS: &str = "kube-controller-manager-node";

/// Controllers the shared kube-controller-manager does not run and a real node needs:
/// `root-ca-cert-publisher` (every pod mounts the `kube-root-ca.crt` ConfigMap; kubelet holds
/// the pod until it exists), `nodelifecycle` (removes the `not-ready` taint kubelet registers
/// with), `daemonset` (a Helm chart's node agent).
const CONTROLLERS: &str = "root-ca-cert-publisher,nodelifecycle,daemonset";

/// Starts kube-scheduler (admin kubeconfig, no leader election, no serving port).
pub(crate) fn start_scheduler(cluster: &Cluster) -> Result<Proc, Error> {
    let mut cmd = Command::new(tools::require("kube-scheduler")?);
    cmd.arg(format!(
        "--kubeconfig={}",
        cluster.kubeconfig_path().display()
    ))
    .arg(format!(
        "--authentication-kubeconfig={}",
        cluster.kubeconfig_path().display()
    ))
    .arg(format!(
        "--authorization-kubeconfig={}",
        cluster.kubeconfig_path().display()
    ))
    .arg("--leader-elect=false")
    .arg("--secure-port=0");
    cluster.spawn(SCHEDULER, cmd)
}

/// Starts the second kube-controller-manager with [`CONTROLLERS`].
pub(crate) fn start_node_controllers(cluster: &Cluster) -> Result<Proc, Error> {
    let mut cmd = Command::new(tools::require("kube-controller-manager")?);
    cmd.arg(format!(
        "--kubeconfig={}",
        cluster.kubeconfig_path().display()
    ))
    .arg("--leader-elect=false")
    .arg(format!("--controllers={CONTROLLERS}"))
    .arg(format!(
        "--root-ca-file={}",
        cluster.pki().ca_cert.display()
    ))
    // The simulator's Node never heartbeats: with the default 50 s grace the controller
    // would mark it unreachable and its pods NotReady, under simulator tests in the same
    // binary.
    .arg("--node-monitor-grace-period=1h")
    .arg("--secure-port=0")
    .arg("--cluster-name=testenv");
    cluster.spawn(NODE_CONTROLLERS, cmd)
}

/// Cordons the simulator's Node, which is Ready with capacity but runs nothing unless a
/// simulator does: the scheduler must not pick it for a real node's pods. (Teardown uncordons it
/// with kubectl, synchronously, as it may run in `Drop`.)
pub(crate) async fn cordon_simulator(cluster: &Cluster) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(cluster.client());
    let patch = json!({"spec": {"unschedulable": true}});
    nodes
        .patch(
            cluster.node_name(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}
