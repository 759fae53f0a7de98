//! A real Kubernetes node on this machine for tests: kubelet + containerd + runc + a CNI bridge,
//! registered with the shared test control plane, plus the control-plane parts a node needs
//! (kube-scheduler, a kube-controller-manager with `root-ca-cert-publisher`, `nodelifecycle`
//! and `daemonset`).
//!
//! ```no_run
//! # async fn t() -> Result<(), secrets_store_testenv::Error> {
//! use secrets_store_testenv::Cluster;
//! use secrets_store_testenv::real_node::{HostSnapshot, RealNode, RealNodeConfig};
//! let before = HostSnapshot::capture();
//! let node = RealNode::start(Cluster::shared(), RealNodeConfig::default()).await?;
//! let ns = node.new_namespace("demo").await;
//! // ... create pods (`nginx:1.14.2` is pre-imported), `node.kubectl(&["exec", ...])` ...
//! let after = node.stop()?;
//! assert_eq!(before, after);
//! # Ok(()) }
//! ```
//!
//! Everything the node writes lives under `<cluster run dir>/node`; what it must change on the
//! host (sysctls, the bridge, `/kubepods` cgroups, kubelet's hard-coded paths) is recorded
//! before it is changed and restored by [`RealNode::stop`], by `Drop` when a test panics, and by
//! the next [`RealNode::start`] when a test binary was killed. One real node runs per machine at
//! a time (a lock file in `/run/secrets-store-rs/real-node`).
//!
//! # Installing `charts/secrets-store-rs` on it
//!
//! The chart's DaemonSet runs here as on any node, given:
//! - the image: `node.import_image(&node.images_dir().join("secrets-store.tar"))` and
//!   `image.repository=localhost/secrets-store-rs`, `image.tag=dev`, `image.pullPolicy=Never`;
//! - `linux.kubeletRootDir=<node.kubelet_dir()>` and `linux.providersDir=<a dir under
//!   node.node_dir()>` (its default `/var/run/secrets-store-csi-providers` is a
//!   `DirectoryOrCreate` host path that teardown would not remove);
//! - `nodeSelector."kubernetes\.io/hostname"=<node.name()>`: the DaemonSet tolerates the cordoned
//!   simulator Node, and its pod there would stay Pending;
//! - `hostNetwork: true` plus env `KUBERNETES_SERVICE_HOST=127.0.0.1`,
//!   `KUBERNETES_SERVICE_PORT=<port of Cluster::server_url>` (no kube-proxy: the `kubernetes`
//!   Service IP kubelet injects leads nowhere; an explicit env entry overrides the injected one)
//!   and `AWS_ENDPOINT_URL=<moto>` (moto listens on 127.0.0.1): the chart values `hostNetwork`,
//!   `apiServer.host`/`apiServer.port` and `extraEnv` where the chart has them, else a patch of
//!   the rendered DaemonSet (`helm template`, edit, apply).
//!
//! Also: `metrics.port`/`healthz.port` then bind on the host; give helm its own
//! `HELM_CACHE_HOME`/`HELM_CONFIG_HOME`/`HELM_DATA_HOME` (and kubectl `--cache-dir`) under the run
//! dir, or they write to `~/.cache`, `~/.config` and `~/.kube`.

mod agent;
mod config;
mod control_plane;
mod host;
mod images;
mod registrar;
mod teardown;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::Api;

use crate::process::Proc;
use crate::wait::wait_for_while_running;
use crate::{Cluster, Error, certs, tools};
use config::{KubeletSettings, NodeDirs, PodNetwork};
use teardown::{HostState, MachineLock};

pub use agent::{AgentChart, AgentRelease};
pub use host::HostSnapshot;
pub use images::{AGENT_IMAGE, PAUSE_IMAGE, default_images_dir};
pub use registrar::{Registrar, RegistrationOutcome};
pub use teardown::mounts_under;
pub(crate) use teardown::unmount_all_under;

/// Whether `dir` (a dead run's dir) holds a killed run's node that the next [`RealNode::start`]
/// still has to clean up; the run dir cleanup leaves such a dir alone.
pub(crate) fn holds_unrestored_node(dir: &Path) -> bool {
    HostState::claims(dir)
}

/// The default Node name (the simulator's is [`crate::Cluster::node_name`]).
pub const REAL_NODE_NAME: &str = "testenv-real-node";

/// How a [`RealNode`] is set up.
#[derive(Debug, Clone)]
pub struct RealNodeConfig {
    /// The Node's name (kubelet's `--hostname-override`).
    pub node_name: String,
    /// kubelet's `syncFrequency`: also how often it calls `NodePublishVolume` again for CSI
    /// drivers with `requiresRepublish` (kubelet's default is 1 min).
    pub sync_frequency: Duration,
    /// Where `pause.tar` and `nginx.tar` are taken from, as they are. `None`: run
    /// `bash hack/images.sh` into [`default_images_dir`] first (it rebuilds only what changed).
    pub images_dir: Option<PathBuf>,
    /// The CNI bridge link.
    pub bridge: String,
    /// The pod network, a /24: `.1` is the bridge's address and the node's InternalIP (kubelet
    /// refuses a loopback node IP), the rest goes to pods.
    pub pod_subnet: Ipv4Addr,
    /// How long to wait for another real node on this machine to stop.
    pub lock_timeout: Duration,
    /// How long the node may take to become Ready.
    pub ready_timeout: Duration,
    /// Also package this `secrets-store` binary as [`AGENT_IMAGE`] and import it (to install the
    /// chart with; tests pass the binary under test).
    pub agent_binary: Option<PathBuf>,
}

impl Default for RealNodeConfig {
    fn default() -> Self {
        Self {
            node_name: REAL_NODE_NAME.into(),
            sync_frequency: Duration::from_secs(60),
            images_dir: None,
            bridge: "ssrs0".into(),
            pod_subnet: Ipv4Addr::new(10, 77, 0, 0),
            lock_timeout: Duration::from_secs(600),
            ready_timeout: Duration::from_secs(120),
            agent_binary: None,
        }
    }
}

/// A running real node. Stop it with [`RealNode::stop`] (or drop it) to leave the host as it was.
#[derive(Debug)]
pub struct RealNode {
    cluster: &'static Cluster,
    name: String,
    dirs: NodeDirs,
    network: PodNetwork,
    images_dir: PathBuf,
    kubectl: PathBuf,
    kubelet: Option<Proc>,
    containerd: Option<Proc>,
    control_plane: Vec<Proc>,
    /// `Some` until torn down: what to restore.
    state: Option<HostState>,
    /// Whether the simulator's Node was cordoned (and must be uncordoned).
    cordoned_simulator: bool,
    /// The host before this node changed anything (taken under the machine lock).
    host_before: HostSnapshot,
    lock: Option<MachineLock>,
}

/// Executables from the Debian packages `containerd runc containernetworking-plugins`.
const HOST_BINARIES: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
];

impl RealNode {
    /// Starts containerd, kube-scheduler, the node's controllers and kubelet, imports the pause
    /// and nginx images, and returns once the Node is Ready and untainted. Waits first for any
    /// other real node on this machine to stop, and cleans up after a killed earlier run.
    pub async fn start(cluster: &'static Cluster, config: RealNodeConfig) -> Result<Self, Error> {
        let started = Instant::now();
        let kubelet_bin = tools::require("kubelet")?;
        let kubectl = tools::require("kubectl")?;
        tools::require("kube-scheduler")?;
        tools::require("kube-controller-manager")?;
        for bin in HOST_BINARIES {
            if !Path::new(bin).exists() {
                return Err(Error::io(
                    Path::new(bin),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "missing: run `bash hack/tools.sh node-packages` (as root)",
                    ),
                ));
            }
        }
        // Build images while waiting for the lock; they are imported once containerd runs.
        let images_dir = config.images_dir.clone().unwrap_or_else(default_images_dir);
        let mut preload = images::PRELOADED.to_vec();
        if config.agent_binary.is_some() {
            preload.push("secrets-store");
        }
        let build = {
            let dir = images_dir.clone();
            let build = config.images_dir.is_none();
            let names = preload.clone();
            let agent = config.agent_binary.clone();
            tokio::spawn(async move {
                if build {
                    images::build(&dir, &names, agent.as_deref()).await
                } else {
                    Ok(())
                }
            })
        };

        let lock = MachineLock::acquire(config.lock_timeout).await?;
        if let Some(stale) = HostState::left_behind()? {
            eprintln!(
                "testenv: cleaning up the real node of a killed run (pid {}, {})",
                stale.owner_pid,
                stale.node_dir.display()
            );
            stale.restore()?;
        }
        if Path::new("/sys/class/net").join(&config.bridge).exists() {
            return Err(Error::io(
                Path::new("/sys/class/net").join(&config.bridge).as_path(),
                std::io::Error::other("the bridge exists already: another node uses it?"),
            ));
        }

        let host_before = HostSnapshot::capture();
        // Teardown kills whatever runs in `/kubepods`: it must be ours alone.
        if let Some(cgroup) = host_before.kubepods_cgroups.iter().next() {
            return Err(Error::io(
                cgroup,
                std::io::Error::other("another kubelet runs pods on this machine"),
            ));
        }
        let dirs = NodeDirs::new(&cluster.run_dir().join("node"));
        let network = PodNetwork {
            name: "ssrs".into(),
            bridge: config.bridge.clone(),
            subnet: config.pod_subnet,
        };
        let state = HostState::record(
            &dirs.root,
            &dirs.containerd_socket,
            &network.bridge,
            &network.name,
        )?;
        // From here on, dropping `node` (an error below, a panic) tears everything down.
        let mut node = Self {
            cluster,
            name: config.node_name.clone(),
            dirs,
            network,
            images_dir,
            kubectl,
            kubelet: None,
            containerd: None,
            control_plane: Vec::new(),
            state: Some(state),
            cordoned_simulator: false,
            host_before,
            lock: Some(lock),
        };
        node.dirs.create()?;
        node.create_bridge()?;

        config::write_containerd_config(&node.dirs, PAUSE_IMAGE)?;
        config::write_cni_config(&node.dirs, &node.network)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&node.dirs.containerd_config);
        node.containerd = Some(cluster.spawn("containerd", cmd)?);
        node.control_plane
            .push(control_plane::start_scheduler(cluster)?);
        node.control_plane
            .push(control_plane::start_node_controllers(cluster)?);
        control_plane::cordon_simulator(cluster).await?;
        node.cordoned_simulator = true;

        let creds = certs::node_credentials(
            cluster.pki(),
            &node.dirs.pki,
            &node.name,
            &[
                IpAddr::V4(node.network.gateway()),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
        )?;
        let settings = KubeletSettings {
            server_url: cluster.server_url(),
            node_ip: node.network.gateway(),
            port: crate::free_port()?,
            healthz_port: crate::free_port()?,
            sync_frequency: config.sync_frequency,
            pki: cluster.pki(),
            creds: &creds,
        };
        config::write_kubelet_config(&node.dirs, &settings)?;

        let containerd = node.containerd.as_ref().expect("containerd just started");
        containerd.wait_for_socket(&node.dirs.containerd_socket, Duration::from_secs(30))?;
        let containerd_up = started.elapsed();

        let mut cmd = Command::new(kubelet_bin);
        cmd.arg(format!("--config={}", node.dirs.kubelet_config.display()))
            .arg(format!(
                "--kubeconfig={}",
                node.dirs.kubelet_kubeconfig.display()
            ))
            .arg(format!("--root-dir={}", node.dirs.kubelet.display()))
            .arg(format!("--hostname-override={}", node.name))
            .arg(format!("--node-ip={}", node.network.gateway()))
            .arg(format!(
                "--node-labels=topology.kubernetes.io/region={}",
                crate::moto::REGION
            ))
            .arg("--v=2");
        node.kubelet = Some(cluster.spawn("kubelet", cmd)?);

        // Images go in while kubelet registers; pods need them only once the Node is Ready.
        build
            .await
            .map_err(|e| Error::Http(format!("image build task: {e}")))??;
        for name in preload {
            node.import_image(&node.images_dir.join(format!("{name}.tar")))?;
        }
        node.wait_ready(config.ready_timeout).await?;
        eprintln!(
            "testenv: real node {} ready in {:.1}s (containerd {:.1}s; kubelet root {}, logs {})",
            node.name,
            started.elapsed().as_secs_f64(),
            containerd_up.as_secs_f64(),
            node.dirs.kubelet.display(),
            cluster.log_dir().display(),
        );
        Ok(node)
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// kubelet's root dir (`/var/lib/kubelet` on a real node; a Helm chart's `kubeletDir`).
    pub fn kubelet_dir(&self) -> &Path {
        &self.dirs.kubelet
    }

    /// The node's private dir (kubelet root, containerd root and state, CNI config, pod logs).
    pub fn node_dir(&self) -> &Path {
        &self.dirs.root
    }

    /// The node's InternalIP: the bridge's address, reachable from the host and from pods.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.network.gateway()
    }

    /// containerd's socket (for `ctr --address`).
    pub fn containerd_socket(&self) -> &Path {
        &self.dirs.containerd_socket
    }

    /// Where the image tarballs came from.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// Imports a `docker save`-format tarball into the node's containerd (`ctr -n k8s.io images
    /// import`), under the tags in its `manifest.json`.
    pub fn import_image(&self, tar: &Path) -> Result<(), Error> {
        images::import(&self.dirs.containerd_socket, tar)
    }

    /// Runs the real `kubectl` with the cluster's admin kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output, Error> {
        tokio::process::Command::new(&self.kubectl)
            .args(self.kubectl_globals())
            .args(args)
            .output()
            .await
            .map_err(|source| Error::Spawn {
                name: "kubectl".into(),
                source,
            })
    }

    /// kubectl's admin kubeconfig, and its discovery cache in the run dir (its default is
    /// `~/.kube/cache`).
    fn kubectl_globals(&self) -> [String; 2] {
        [
            format!("--kubeconfig={}", self.cluster.kubeconfig_path().display()),
            format!(
                "--cache-dir={}",
                self.cluster.run_dir().join("kubectl-cache").display()
            ),
        ]
    }

    /// [`Cluster::new_namespace`], also waiting for its `kube-root-ca.crt` ConfigMap (kubelet
    /// holds every pod until it exists).
    pub async fn new_namespace(&self, prefix: &str) -> String {
        let ns = self.cluster.new_namespace(prefix).await;
        let cms: Api<ConfigMap> = Api::namespaced(self.cluster.client(), &ns);
        crate::eventually(
            Duration::from_secs(30),
            &format!("ConfigMap {ns}/kube-root-ca.crt"),
            || async { cms.get_opt("kube-root-ca.crt").await.ok().flatten() },
        )
        .await;
        ns
    }

    /// Fails if kubelet, containerd, kube-scheduler or the node's controllers exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.kubelet
            .iter()
            .chain(&self.containerd)
            .chain(&self.control_plane)
            .try_for_each(Proc::check_running)
    }

    /// The host as it was before this node changed anything, taken while holding the machine
    /// lock (after cleaning up a killed earlier run).
    pub fn host_before(&self) -> &HostSnapshot {
        &self.host_before
    }

    /// Stops everything and restores the host (see the module docs). Returns the host as left,
    /// taken before the machine lock is released (so no other real node can have started):
    /// compare it with [`RealNode::host_before`]. Fails with what could not be undone (the state
    /// is then kept for the next start to retry).
    pub fn stop(mut self) -> Result<HostSnapshot, Error> {
        self.teardown()?;
        let after = HostSnapshot::capture();
        drop(self.lock.take());
        Ok(after)
    }

    fn create_bridge(&self) -> Result<(), Error> {
        let br = &self.network.bridge;
        let addr = format!("{}/24", self.network.gateway());
        for args in [
            vec!["link", "add", br.as_str(), "type", "bridge"],
            vec!["addr", "add", addr.as_str(), "dev", br.as_str()],
            vec!["link", "set", br.as_str(), "up"],
        ] {
            teardown::ip(&args)
                .map_err(|e| Error::io(Path::new("/sys/class/net"), std::io::Error::other(e)))?;
        }
        Ok(())
    }

    /// Waits until the Node is Ready without the `not-ready` taint and the root CA ConfigMap is
    /// published (both need the node's controllers).
    async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.cluster.client());
        let cms: Api<ConfigMap> = Api::namespaced(self.cluster.client(), "default");
        let procs: Vec<&Proc> = self
            .kubelet
            .iter()
            .chain(&self.containerd)
            .chain(&self.control_plane)
            .collect();
        let what = format!("Node {} Ready and untainted", self.name);
        let result = wait_for_while_running(&what, timeout, &procs, || async {
            let node = nodes.get_opt(&self.name).await.map_err(|e| e.to_string())?;
            let Some(node) = node else {
                return Err("not registered yet".into());
            };
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let taints: Vec<String> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .map(|t| t.iter().map(|t| t.key.clone()).collect())
                .unwrap_or_default();
            let root_ca = cms
                .get_opt("kube-root-ca.crt")
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if ready && taints.is_empty() && root_ca {
                Ok(true)
            } else {
                Err(format!(
                    "ready={ready}, taints={taints:?}, kube-root-ca.crt published={root_ca}"
                ))
            }
        })
        .await;
        result.map_err(|e| Error::Timeout {
            what: what.clone(),
            detail: format!("{e}\n{}", self.cluster.log_tails(20)),
        })
    }

    /// kubelet, then (in [`HostState::restore`]) the pods and containerd, then the host; then
    /// the API objects: the node's pods and Node go, the simulator's Node is uncordoned.
    fn teardown(&mut self) -> Result<(), Error> {
        let Some(state) = self.state.take() else {
            return Ok(());
        };
        let started = Instant::now();
        drop(self.kubelet.take());
        let restored = state.restore();
        drop(self.containerd.take());
        for p in self.control_plane.drain(..) {
            drop(p);
        }
        self.clean_api_objects();
        eprintln!(
            "testenv: real node {} stopped in {:.1}s",
            self.name,
            started.elapsed().as_secs_f64()
        );
        restored
    }

    /// Synchronous (it runs in `Drop`): force-deletes the pods bound to the node (a later node of
    /// the same name would run them again) and the Node, and uncordons the simulator's Node.
    fn clean_api_objects(&mut self) {
        let selector = format!("--field-selector=spec.nodeName={}", self.name);
        let mut calls: Vec<Vec<&str>> = vec![
            vec![
                "delete",
                "pods",
                "--all-namespaces",
                &selector,
                "--force",
                "--grace-period=0",
                "--wait=false",
            ],
            vec![
                "delete",
                "node",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
        ];
        if self.cordoned_simulator {
            calls.push(vec!["uncordon", self.cluster.node_name()]);
        }
        for args in calls {
            let out = Command::new(&self.kubectl)
                .args(self.kubectl_globals())
                .arg("--request-timeout=10s")
                .args(&args)
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "testenv: kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("testenv: kubectl: {e}"),
            }
        }
        self.cordoned_simulator = false;
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("testenv: {e}");
        }
        drop(self.lock.take());
    }
}
