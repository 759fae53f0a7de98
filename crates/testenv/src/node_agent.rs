//! Runs a DaemonSet's container as a local process standing in for the pod on the test node:
//! the same args and env as rendered (host paths moved under a temp dir), acting as the
//! DaemonSet's ServiceAccount through impersonation. This is how tests and `make demo` run what a
//! Helm chart installs, without a container runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::config::Kubeconfig;

use crate::{Cluster, Error};

/// A DaemonSet's container translated into a local command.
#[derive(Debug)]
pub struct NodeAgentCommand {
    /// The command: `binary` with the container's args and env.
    pub command: Command,
    /// Where the node's `/var/lib/kubelet` lives (the kubelet simulator's root).
    pub kubelet_root: PathBuf,
}

/// Translates the first container of `ds` (in namespace `namespace`) into a command running
/// `binary`, with the node's host paths under `host_root`. `/metrics` and `/healthz` listeners
/// are turned off because several agents may share this machine's ports.
pub fn daemonset_command(
    cluster: &Cluster,
    ds: &DaemonSet,
    namespace: &str,
    binary: &Path,
    host_root: &Path,
) -> Result<NodeAgentCommand, Error> {
    let host = |p: &str| format!("{}{p}", host_root.display());
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let pod_spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| Error::Http("DaemonSet has no pod template".into()))?;
    for volume in pod_spec.volumes.iter().flatten() {
        if let Some(hp) = &volume.host_path {
            // kubelet creates DirectoryOrCreate paths; Directory ones exist on a real node.
            let dir = PathBuf::from(host(&hp.path));
            std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
        }
    }
    let container = pod_spec
        .containers
        .first()
        .ok_or_else(|| Error::Http("DaemonSet has no container".into()))?;
    let service_account = pod_spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let expand = |s: &str| {
        s.replace("$(KUBE_NODE_NAME)", cluster.node_name())
            .replace("$(POD_NAMESPACE)", namespace)
            .replace("/var/lib/kubelet", &host("/var/lib/kubelet"))
            .replace("/var/run/", &host("/var/run/"))
    };
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| match a.split_once('=') {
            Some((flag @ ("--metrics-addr" | "--healthz-addr"), _)) => format!("{flag}="),
            _ => expand(a),
        });
    let kubeconfig = host_root.join("agent.kubeconfig");
    write_impersonating_kubeconfig(cluster, namespace, &service_account, &kubeconfig)?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ENDPOINT_URL", cluster.moto().endpoint())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for e in container.env.iter().flatten() {
        let field = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        let value = match (&e.value, field) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) if f.field_path == "spec.nodeName" => cluster.node_name().to_string(),
            (None, Some(f)) if f.field_path == "metadata.namespace" => namespace.to_string(),
            (None, Some(f)) if f.field_path == "metadata.name" => {
                format!("{}-local", ds.metadata.name.as_deref().unwrap_or("agent"))
            }
            _ => {
                return Err(Error::Http(format!(
                    "env {} has a source the local node cannot provide",
                    e.name
                )));
            }
        };
        command.env(&e.name, value);
    }
    Ok(NodeAgentCommand {
        command,
        kubelet_root: PathBuf::from(host("/var/lib/kubelet")),
    })
}

/// Writes a kubeconfig that acts as `system:serviceaccount:<namespace>:<name>` (the cluster's
/// admin credentials plus impersonation, so RBAC is the ServiceAccount's).
pub fn write_impersonating_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    path: &Path,
) -> Result<(), Error> {
    let mut kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path())
        .map_err(|e| Error::Http(format!("reading the test kubeconfig: {e}")))?;
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
            auth.impersonate_groups = Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]);
        }
    }
    let yaml = serde_yaml::to_string(&kubeconfig)
        .map_err(|e| Error::Http(format!("kubeconfig YAML: {e}")))?;
    std::fs::write(path, yaml).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
