//! A stand-in for the Go `node-driver-registrar` sidecar, for CSI drivers that do not register
//! themselves with kubelet (the upstream Go driver: its chart runs the sidecar, which the Go
//! module proxy here refuses to serve). It answers kubelet's plugin watcher exactly as the
//! sidecar does: `GetInfo` → type `CSIPlugin`, the driver's name, its CSI socket path and
//! versions `["1.0.0"]`.
//!
//! ```no_run
//! # async fn t(node: &secrets_store_testenv::real_node::RealNode, csi: &std::path::Path)
//! # -> Result<(), secrets_store_testenv::Error> {
//! let registrar = node.register_csi_driver(csi)?; // <kubelet dir>/plugins_registry/…-reg.sock
//! node.wait_registered(std::time::Duration::from_secs(60)).await?;
//! drop(registrar); // the socket goes, kubelet deregisters the driver
//! node.wait_unregistered(std::time::Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::storage::v1::CSINode;
use kube::api::Api;
use secrets_store_api::registration::v1 as reg;
use secrets_store_api::registration::v1::registration_server::{Registration, RegistrationServer};
use tonic::{Request, Response, Status};

use super::RealNode;
use crate::Error;

/// The driver name kubelet registers (the only one these nodes run).
const DRIVER: &str = "secrets-store.csi.k8s.io";
/// The plugin type kubelet expects from a CSI driver.
const PLUGIN_TYPE: &str = "CSIPlugin";
/// What node-driver-registrar answers for CSI drivers.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// What kubelet reported through `NotifyRegistrationStatus`: `Ok(())` for a registration, the
/// error text otherwise.
pub type RegistrationOutcome = Result<(), String>;

/// A running registrar: serves `<kubelet dir>/plugins_registry/<driver>-reg.sock` until dropped,
/// then removes the socket (kubelet's plugin watcher then deregisters the driver).
#[derive(Debug)]
pub struct Registrar {
    socket: PathBuf,
    outcomes: Arc<Mutex<Vec<RegistrationOutcome>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct Service {
    endpoint: String,
    outcomes: Arc<Mutex<Vec<RegistrationOutcome>>>,
}

#[tonic::async_trait]
impl Registration for Service {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let outcome = if status.plugin_registered {
            Ok(())
        } else {
            // node-driver-registrar logs this and keeps serving: kubelet retries.
            eprintln!(
                "testenv: kubelet failed to register {DRIVER}: {}",
                status.error
            );
            Err(status.error)
        };
        self.outcomes
            .lock()
            .expect("registrar outcomes lock")
            .push(outcome);
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

impl Registrar {
    /// Binds `<kubelet_dir>/plugins_registry/secrets-store.csi.k8s.io-reg.sock` and serves it on
    /// the current tokio runtime, announcing `csi_socket` (a filesystem path, as kubelet dials
    /// it) as the driver's endpoint.
    pub fn start(kubelet_dir: &Path, csi_socket: &Path) -> Result<Self, Error> {
        let socket = kubelet_dir
            .join("plugins_registry")
            .join(format!("{DRIVER}-reg.sock"));
        let listener = secrets_store_uds::bind(&socket)
            .map_err(|e| Error::io(&socket, std::io::Error::other(e)))?;
        let outcomes = Arc::<Mutex<Vec<RegistrationOutcome>>>::default();
        let service = Service {
            endpoint: csi_socket.to_string_lossy().into_owned(),
            outcomes: outcomes.clone(),
        };
        let path = socket.clone();
        let task = tokio::spawn(async move {
            // kubelet's registration client sends the %-encoded socket path as `:authority`;
            // `incoming` rewrites it so that the HTTP/2 layer accepts the stream.
            let served = tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(service))
                .serve_with_incoming(secrets_store_uds::incoming(listener))
                .await;
            if let Err(e) = served {
                eprintln!("testenv: registrar on {}: {e}", path.display());
            }
        });
        Ok(Self {
            socket,
            outcomes,
            task,
        })
    }

    /// The registration socket kubelet's plugin watcher found.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What kubelet reported so far, oldest first.
    pub fn outcomes(&self) -> Vec<RegistrationOutcome> {
        self.outcomes
            .lock()
            .expect("registrar outcomes lock")
            .clone()
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl RealNode {
    /// Registers a CSI driver serving `csi_socket` (a host process: the upstream Go driver) with
    /// this node's kubelet, as `node-driver-registrar` would: see [`Registrar`]. Follow with
    /// [`RealNode::wait_registered`].
    pub fn register_csi_driver(&self, csi_socket: &Path) -> Result<Registrar, Error> {
        Registrar::start(self.kubelet_dir(), csi_socket)
    }

    /// Waits until the node's CSINode no longer lists the driver (kubelet deregistered it after
    /// its registration socket went away, or the node has no CSINode).
    pub async fn wait_unregistered(&self, timeout: Duration) -> Result<(), Error> {
        let api: Api<CSINode> = Api::all(self.cluster.client());
        let what = format!("kubelet to drop {DRIVER} from CSINode {}", self.name());
        crate::wait::wait_for(&what, timeout, || async {
            let node = api.get_opt(self.name()).await.map_err(|e| e.to_string())?;
            Ok(!node.is_some_and(|n| n.spec.drivers.iter().any(|d| d.name == DRIVER)))
        })
        .await
    }
}
