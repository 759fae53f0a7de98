//! A kubelet simulator: binds pending pods to its node, publishes their inline CSI volumes
//! through a real CSI driver over its unix socket exactly as kubelet does, marks them Running,
//! republishes, and unpublishes and removes them on deletion. Every way it differs from kubelet
//! is listed in `crates/testenv/KUBELET_SIM.md`.

mod csi;
mod env;
pub mod grpc_go;
pub mod tokens;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use csi::RegisteredDriver;
pub use env::EnvError;
pub use volumes::volume_handle;

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node this kubelet plays.
    pub node_name: String,
    /// Kubelet root dir (`/var/lib/kubelet` on a real node); use a temp dir per test.
    pub root_dir: PathBuf,
    /// CSI endpoints known up front (driver name → socket), like a pre-registered plugin.
    pub csi_sockets: BTreeMap<String, PathBuf>,
    /// Also discover drivers through plugin registration sockets in `<root>/plugins_registry`.
    pub plugin_registration: bool,
    /// Period of `NodePublishVolume` re-calls for drivers with `requiresRepublish`
    /// (kubelet: its pod sync period, about a minute).
    pub republish_period: Duration,
    /// Namespaces whose pods this kubelet handles (tests use their own namespace).
    pub namespaces: Vec<String>,
    /// First retry delay of a failed mount (kubelet: 500 ms).
    pub backoff_initial: Duration,
    /// Longest retry delay (kubelet: 2 min 2 s).
    pub backoff_max: Duration,
    /// Bind pods without `spec.nodeName` to this node (standing in for the scheduler).
    pub bind_pending_pods: bool,
}

impl KubeletConfig {
    /// Defaults for tests: backoff scaled down (100 ms doubling to 2 s), republish every 2 s,
    /// plugin registration on, binding on.
    pub fn new(node_name: &str, root_dir: &Path, namespace: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            root_dir: root_dir.to_path_buf(),
            csi_sockets: BTreeMap::new(),
            plugin_registration: true,
            republish_period: Duration::from_secs(2),
            namespaces: vec![namespace.to_string()],
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            bind_pending_pods: true,
        }
    }

    /// Adds a known CSI endpoint for `driver`.
    pub fn with_csi_socket(mut self, driver: &str, socket: &Path) -> Self {
        self.csi_sockets
            .insert(driver.to_string(), socket.to_path_buf());
        self
    }
}

/// One published volume, as the simulator last published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedVolume {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Volume name in the pod spec.
    pub volume: String,
    /// CSI driver name.
    pub driver: String,
    /// `volume_id` sent to the driver.
    pub volume_id: String,
    /// `target_path` sent to the driver.
    pub target_path: PathBuf,
    /// Successful `NodePublishVolume` calls for this volume (more than one after republish).
    pub publish_count: u64,
}

/// An Event the simulator recorded (also written to the API as a core/v1 Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Reason, e.g. `FailedMount`.
    pub reason: String,
    /// Message, formatted like kubelet's.
    pub message: String,
}

#[derive(Debug, Default)]
struct State {
    published: BTreeMap<PathBuf, PublishedVolume>,
    events: Vec<SimEvent>,
    drivers: BTreeMap<String, RegisteredDriver>,
    registration_errors: BTreeMap<PathBuf, String>,
    workers: BTreeMap<String, Worker>,
}

/// A pod worker (kubelet has one per pod): woken on every change of its pod.
#[derive(Debug)]
struct Worker {
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

struct Shared {
    client: Client,
    config: KubeletConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("kubelet sim state lock")
    }
}

/// The running simulator. Dropping it stops it (without unpublishing anything).
#[derive(Debug)]
pub struct KubeletSim {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeletSim {
    /// Starts watching pods in the configured namespaces, on the current runtime.
    pub fn start(client: Client, config: KubeletConfig) -> Self {
        let shared = Arc::new(Shared {
            client,
            config,
            state: Mutex::new(State::default()),
        });
        let mut tasks = Vec::new();
        if shared.config.plugin_registration {
            tasks.push(tokio::spawn(watch_plugins(shared.clone())));
        }
        for ns in shared.config.namespaces.clone() {
            tasks.push(tokio::spawn(watch_pods(shared.clone(), ns)));
        }
        Self { shared, tasks }
    }

    /// Target paths currently published.
    pub fn published_targets(&self) -> BTreeSet<PathBuf> {
        self.shared.state().published.keys().cloned().collect()
    }

    /// Volumes currently published.
    pub fn published(&self) -> Vec<PublishedVolume> {
        self.shared.state().published.values().cloned().collect()
    }

    /// Events recorded so far.
    pub fn events(&self) -> Vec<SimEvent> {
        self.shared.state().events.clone()
    }

    /// Drivers registered through plugin registration.
    pub fn registered_drivers(&self) -> BTreeMap<String, RegisteredDriver> {
        self.shared.state().drivers.clone()
    }

    /// Registration sockets whose registration failed, with the error.
    pub fn registration_errors(&self) -> BTreeMap<PathBuf, String> {
        self.shared.state().registration_errors.clone()
    }

    /// The kubelet's target path for `volume` of the pod with `pod_uid`.
    pub fn target_path(&self, pod_uid: &str, volume: &str) -> PathBuf {
        volumes::target_path(&self.shared.config.root_dir, pod_uid, volume)
    }

    /// The environment kubelet would give `container` of `pod` (see [`EnvError`]).
    pub async fn resolved_env(
        &self,
        pod: &Pod,
        container: &str,
    ) -> Result<BTreeMap<String, String>, EnvError> {
        env::resolved_env(&self.shared.client, pod, container).await
    }

    /// Stops the simulator's tasks.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let workers = std::mem::take(&mut self.shared.state().workers);
        for w in workers.into_values() {
            w.task.abort();
        }
    }
}

impl Drop for KubeletSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment kubelet would give `container` of `pod`, without a running simulator.
pub async fn resolved_env(
    client: &Client,
    pod: &Pod,
    container: &str,
) -> Result<BTreeMap<String, String>, EnvError> {
    env::resolved_env(client, pod, container).await
}

async fn watch_pods(shared: Arc<Shared>, namespace: String) {
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                let uid = p.metadata.uid.unwrap_or_default();
                if let Some(w) = shared.state().workers.get(&uid) {
                    w.notify.notify_one();
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "kubelet sim pod watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        handle_pod(&shared, &pods, pod).await;
    }
}

async fn handle_pod(shared: &Arc<Shared>, pods: &Api<Pod>, pod: Pod) {
    let (Some(name), Some(uid)) = (pod.metadata.name.clone(), pod.metadata.uid.clone()) else {
        return;
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    match node {
        None if shared.config.bind_pending_pods && pod.metadata.deletion_timestamp.is_none() => {
            bind(pods, &name, &shared.config.node_name).await;
        }
        Some(n) if n == shared.config.node_name => {
            let mut st = shared.state();
            match st.workers.get(&uid) {
                Some(w) => w.notify.notify_one(),
                None => {
                    let notify = Arc::new(Notify::new());
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    let task = tokio::spawn(volumes::pod_worker(
                        shared.clone(),
                        ns,
                        name,
                        uid.clone(),
                        notify.clone(),
                    ));
                    st.workers.insert(uid, Worker { notify, task });
                }
            }
        }
        _ => {}
    }
}

/// Binds through the `binding` subresource, as the scheduler does.
async fn bind(pods: &Api<Pod>, name: &str, node: &str) {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    // A conflict means someone bound it first; the watch brings the bound pod back either way.
    if let Err(e) = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        tracing::debug!(pod = name, error = %e, "kubelet sim binding failed");
    }
}

/// Kubelet's plugin watcher: registers every new socket in `<root>/plugins_registry`.
async fn watch_plugins(shared: Arc<Shared>) {
    let dir = shared.config.root_dir.join("plugins_registry");
    let _ = std::fs::create_dir_all(&dir);
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let sockets: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                    .collect()
            })
            .unwrap_or_default();
        for socket in sockets {
            if seen.contains(&socket) {
                continue;
            }
            match csi::register(&socket).await {
                Ok(driver) => {
                    seen.insert(socket.clone());
                    let mut st = shared.state();
                    st.registration_errors.remove(&socket);
                    st.drivers.insert(driver.name.clone(), driver);
                }
                Err(e) => {
                    shared.state().registration_errors.insert(socket, e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
