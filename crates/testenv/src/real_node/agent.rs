//! Our Helm chart installed on a [`RealNode`] the way a user installs it (`helm install`), with
//! the values a node without kube-proxy needs: the agent then runs as the chart's DaemonSet pod,
//! in its own container, registers itself with the real kubelet and serves CSI through the
//! chart's hostPath socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, ListParams};

use super::RealNode;
use super::images::AGENT_IMAGE;
use crate::{Error, free_port, tools};

/// The driver name kubelet registers.
const DRIVER: &str = "secrets-store.csi.k8s.io";
/// The chart's object names (its default `nameOverride`).
const CHART_NAME: &str = "secrets-store-rs";

/// The repository's chart.
fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/secrets-store-rs")
}

/// Values of one installation besides what the node itself dictates.
#[derive(Debug, Clone)]
pub struct AgentChart {
    /// `rotationPollInterval` (rotation and sync are on).
    pub rotation_poll_interval: String,
    /// `rotationSelfRefresh`: `false` rotates only on kubelet's republishes.
    pub rotation_self_refresh: bool,
    /// The moto endpoint the agent uses as `AWS_ENDPOINT_URL`.
    pub aws_endpoint: String,
    /// More `--set` values.
    pub extra_values: Vec<String>,
}

/// A chart release on the node. [`AgentRelease::uninstall`] it before the node stops.
#[derive(Debug)]
pub struct AgentRelease {
    namespace: String,
    release: String,
    helm_home: PathBuf,
    /// `helm`'s arguments and standard output of the install (for `make demo` to show).
    install_args: Vec<String>,
    install_output: String,
}

impl RealNode {
    /// `helm install`s `charts/secrets-store-rs` into a fresh namespace with the agent image
    /// imported at start ([`super::RealNodeConfig::agent_binary`]), waits for the DaemonSet pod
    /// and for kubelet to list the driver on the node's CSINode (plugin registration done).
    pub async fn install_agent(&self, chart: &AgentChart) -> Result<AgentRelease, Error> {
        let namespace = self.new_namespace("agent").await;
        let mut release = AgentRelease {
            namespace,
            release: "secrets-store".into(),
            helm_home: self.node_dir().join("helm"),
            install_args: Vec::new(),
            install_output: String::new(),
        };
        let (repository, tag) = AGENT_IMAGE.rsplit_once(':').expect("image has a tag");
        let api_port = self
            .cluster
            .server_url()
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let providers = self.node_dir().join("providers");
        let mut values = vec![
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".into(),
            format!("linux.kubeletRootDir={}", self.kubelet_dir().display()),
            format!("linux.providersDir={}", providers.display()),
            format!("nodeSelector.kubernetes\\.io/hostname={}", self.name()),
            // No kube-proxy on this node and everything listens on loopback.
            "hostNetwork=true".into(),
            "apiServer.host=127.0.0.1".into(),
            format!("apiServer.port={api_port}"),
            "extraEnv[0].name=AWS_ENDPOINT_URL".into(),
            format!("extraEnv[0].value={}", chart.aws_endpoint),
            "extraEnv[1].name=AWS_EC2_METADATA_DISABLED".into(),
            "extraEnv[1].value=true".into(),
            // With hostNetwork these bind on the host: take free ports.
            format!("metrics.port={}", free_port()?),
            format!("healthz.port={}", free_port()?),
            "syncSecret.enabled=true".into(),
            "enableSecretRotation=true".into(),
            format!("rotationPollInterval={}", chart.rotation_poll_interval),
            format!("rotationSelfRefresh={}", chart.rotation_self_refresh),
            "logVerbosity=1".into(),
        ];
        values.extend(chart.extra_values.iter().cloned());
        let chart_dir = chart_dir();
        let mut args: Vec<String> = vec![
            "install".into(),
            release.release.clone(),
            chart_dir.display().to_string(),
            "--namespace".into(),
            release.namespace.clone(),
            "--wait".into(),
            "--timeout".into(),
            "120s".into(),
        ];
        for v in values {
            // --set-string: "true" stays a string where the chart wants one (env values).
            let flag = if v.starts_with("extraEnv") {
                "--set-string"
            } else {
                "--set"
            };
            args.extend([flag.into(), v]);
        }
        release.install_output = release.helm(self, &args)?;
        release.install_args = args;
        self.wait_registered(Duration::from_secs(60)).await?;
        Ok(release)
    }

    /// Waits until kubelet lists our driver on this node's CSINode: it called the agent's
    /// registration socket, `GetInfo` and `NodeGetInfo` succeeded.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), Error> {
        let api: Api<CSINode> = Api::all(self.cluster.client());
        let what = format!("kubelet to register {DRIVER} on CSINode {}", self.name());
        crate::wait::wait_for(&what, timeout, || async {
            let node = api.get_opt(self.name()).await.map_err(|e| e.to_string())?;
            Ok(node.is_some_and(|n| n.spec.drivers.iter().any(|d| d.name == DRIVER)))
        })
        .await
    }
}

impl AgentRelease {
    /// The release's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The arguments `helm` was run with to install the release (the chart as an absolute path;
    /// helm's `--kubeconfig` and its `HELM_*_HOME` environment left out).
    pub fn install_args(&self) -> &[String] {
        &self.install_args
    }

    /// What `helm install` printed on its standard output.
    pub fn install_output(&self) -> &str {
        &self.install_output
    }

    /// The DaemonSet's pod on the node, if there is one.
    pub async fn pod(&self, node: &RealNode) -> Result<Option<Pod>, Error> {
        let pods: Api<Pod> = Api::namespaced(node.cluster.client(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={CHART_NAME}")))
            .await?;
        Ok(list.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.name())
        }))
    }

    /// The agent container's id and restart count, once it runs.
    pub async fn container(&self, node: &RealNode) -> Result<Option<(String, i32)>, Error> {
        let Some(pod) = self.pod(node).await? else {
            return Ok(None);
        };
        let status = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next());
        Ok(status.and_then(|s| {
            let running = s.state.as_ref().is_some_and(|st| st.running.is_some());
            let id = s.container_id?.rsplit_once("://")?.1.to_string();
            running.then_some((id, s.restart_count))
        }))
    }

    /// Kills the agent container with SIGKILL through containerd, as an OOM kill or a crash
    /// would; kubelet restarts it.
    pub async fn kill_container(&self, node: &RealNode) -> Result<(), Error> {
        let (id, _) = self
            .container(node)
            .await?
            .ok_or_else(|| Error::Http("the agent container is not running".into()))?;
        let out = Command::new("ctr")
            .arg("--address")
            .arg(node.containerd_socket())
            .args([
                "--namespace",
                "k8s.io",
                "tasks",
                "kill",
                "--signal",
                "SIGKILL",
                &id,
            ])
            .output()
            .map_err(|source| Error::Spawn {
                name: "ctr".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Http(format!(
                "ctr tasks kill {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The agent's log (the running or last container), through the API server and kubelet.
    pub async fn logs(&self, node: &RealNode) -> String {
        let Ok(Some(pod)) = self.pod(node).await else {
            return String::new();
        };
        let name = pod.metadata.name.unwrap_or_default();
        match node
            .kubectl(&["logs", "-n", &self.namespace, &name, "--tail=200"])
            .await
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(kubectl logs failed: {e})"),
        }
    }

    /// `helm uninstall --wait`: the release's objects (the DaemonSet among them) are gone when
    /// this returns; the DaemonSet's pod may still be terminating. Returns what helm printed on
    /// its standard output.
    pub fn uninstall(self, node: &RealNode) -> Result<String, Error> {
        let args: Vec<String> = [
            "uninstall",
            &self.release,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "120s",
        ]
        .map(String::from)
        .into();
        self.helm(node, &args)
    }

    /// `helm upgrade --reuse-values --wait` with more `--set` values (e.g. the controller's);
    /// returns helm's arguments (as [`AgentRelease::install_args`]) and what it printed.
    pub fn upgrade(
        &self,
        node: &RealNode,
        sets: &[String],
    ) -> Result<(Vec<String>, String), Error> {
        let chart_dir = chart_dir();
        let mut args: Vec<String> = vec![
            "upgrade".into(),
            self.release.clone(),
            chart_dir.display().to_string(),
            "--namespace".into(),
            self.namespace.clone(),
            "--reuse-values".into(),
            "--wait".into(),
            "--timeout".into(),
            "120s".into(),
        ];
        for v in sets {
            args.extend(["--set".into(), v.clone()]);
        }
        let out = self.helm(node, &args)?;
        Ok((args, out))
    }

    /// Runs the pinned helm against the cluster, with its caches under the node dir (never the
    /// user's home).
    fn helm(&self, node: &RealNode, args: &[String]) -> Result<String, Error> {
        let out = Command::new(tools::require("helm")?)
            .args(args)
            .arg("--kubeconfig")
            .arg(node.cluster.kubeconfig_path())
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"))
            .output()
            .map_err(|source| Error::Spawn {
                name: "helm".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Http(format!(
                "helm {}: {}{}",
                args.first().map_or("", String::as_str),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
