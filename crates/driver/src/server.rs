//! Serving: the CSI socket, the registration socket, and the HTTP `/healthz` + `/metrics`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use secrets_store_api::csi::v1::identity_server::IdentityServer;
use secrets_store_api::csi::v1::node_server::NodeServer;
use secrets_store_api::registration::v1::registration_server::RegistrationServer;

use crate::controller::ControllerServer;
use crate::csi::{IdentityService, NodeGrpc, Readiness};
use crate::node::NodeService;
use crate::registration::{RegistrationService, registration_socket};

/// Why serving failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket could not be bound.
    #[error(transparent)]
    Socket(#[from] secrets_store_uds::BindError),
    /// An HTTP listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A gRPC server failed.
    #[error("gRPC server on {path:?}: {source}")]
    Grpc {
        /// Which socket.
        path: PathBuf,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Parses `unix:///csi/csi.sock` (or a bare path) into a path.
pub fn parse_endpoint(endpoint: &str) -> PathBuf {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    PathBuf::from(path)
}

/// Settings of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The CSI socket path.
    pub csi_socket: PathBuf,
    /// kubelet's root dir; `None` disables plugin registration.
    pub kubelet_dir: Option<PathBuf>,
    /// `/metrics` listen address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// What `/metrics` serves: the binary's registry, every part's metrics registered in it.
    pub metrics_registry: Arc<Registry>,
    /// `/healthz` listen address, if any.
    pub healthz_addr: Option<SocketAddr>,
    /// Largest gRPC message accepted, bytes.
    pub max_recv_msg_size: usize,
}

/// Serves everything until `shutdown` resolves, then stops accepting, finishes in-flight calls
/// and removes the sockets.
pub async fn serve(
    service: NodeService,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let csi_listener = secrets_store_uds::bind(&config.csi_socket)?;
    let csi_server = tonic::transport::Server::builder()
        .add_service(
            IdentityServer::new(IdentityService::new(readiness.clone()))
                .max_decoding_message_size(config.max_recv_msg_size),
        )
        .add_service(
            NodeServer::new(NodeGrpc::new(service.clone()))
                .max_decoding_message_size(config.max_recv_msg_size),
        )
        .add_service(ControllerServer)
        .serve_with_incoming_shutdown(
            secrets_store_uds::incoming(csi_listener),
            stopped(stop_rx.clone()),
        );
    let mut tasks = tokio::task::JoinSet::new();
    let csi_path = config.csi_socket.clone();
    tasks.spawn(async move {
        csi_server.await.map_err(|source| ServeError::Grpc {
            path: csi_path,
            source,
        })
    });

    let reg_path = config.kubelet_dir.as_deref().map(registration_socket);
    if let Some(reg_path) = &reg_path {
        let listener = secrets_store_uds::bind(reg_path)?;
        let server = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(RegistrationService::new(
                &config.csi_socket,
            )))
            // kubelet's registration client sends the socket path as `:authority`: `incoming`
            // is what lets a real kubelet register us (see secrets_store_uds).
            .serve_with_incoming_shutdown(
                secrets_store_uds::incoming(listener),
                stopped(stop_rx.clone()),
            );
        let path = reg_path.clone();
        tasks.spawn(async move {
            server
                .await
                .map_err(|source| ServeError::Grpc { path, source })
        });
    }

    for (addr, router) in [
        (
            config.healthz_addr,
            Router::new()
                .route("/healthz", get(healthz))
                .with_state(readiness.clone()),
        ),
        (
            config.metrics_addr,
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(config.metrics_registry.clone()),
        ),
    ] {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped(rx))
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        });
    }

    readiness.set(true);
    tracing::info!(csi_socket = %config.csi_socket.display(), registration_socket = ?reg_path, "serving");
    let mut result = Ok(());
    tokio::select! {
        () = shutdown => {}
        Some(Ok(Err(e))) = tasks.join_next() => result = Err(e),
    }
    readiness.set(false);
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    for path in std::iter::once(&config.csi_socket).chain(reg_path.as_ref()) {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    result
}

async fn healthz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(
    State(registry): State<Arc<Registry>>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&registry),
    )
}
