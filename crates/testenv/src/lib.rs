//! Real test cluster harness for secrets-store-rs: etcd, kube-apiserver and
//! kube-controller-manager built from the pinned versions in `hack/versions.env`, moto on
//! loopback with a request-counting proxy, and a kubelet simulator that drives a CSI driver the
//! way kubelet does (see `KUBELET_SIM.md`).
//!
//! Tests use [`Cluster::shared`]: one cluster per test binary, isolated per test by namespace
//! ([`Cluster::new_namespace`]) and by AWS account id ([`Moto::new_account`]).

mod apiserver;
pub mod ascp;
mod certs;
mod cluster;
pub mod fixtures;
pub mod kubelet;
mod moto;
pub mod node_agent;
mod process;
mod proxy;
pub mod real_node;
pub mod seed;
mod tools;
pub mod upstream;
mod wait;

use std::path::{Path, PathBuf};

pub use apiserver::ApiserverStop;
pub use cluster::{Cluster, LogGuard, install_crypto_provider};
pub use moto::{AccountId, CallCounter, Moto};
pub use process::{Proc, free_port};
pub use tools::{TOOLS_BIN_ENV, find_tool, require, tool, tools_bin_dir};

/// Polls `check` every 200 ms until it returns `Some`, and panics naming `what` after `timeout`
/// (tests wait for the cluster to converge this way, never with fixed sleeps).
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Errors while starting or talking to the harness components.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, directory or address involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Generating the throwaway PKI failed.
    #[error("generating test PKI: {0}")]
    Pki(String),
    /// A pinned third-party tool is not installed.
    #[error("test tool `{name}` not found in {} (set SECRETS_STORE_TOOLS_BIN or run `bash hack/tools.sh {name}`)", dir.display())]
    MissingTool {
        /// Tool name.
        name: String,
        /// Directory searched.
        dir: PathBuf,
    },
    /// A component could not be started.
    #[error("starting {name}: {source}")]
    Spawn {
        /// Component name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A component exited while it should be running.
    #[error("{name} exited ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// Component name.
        name: String,
        /// Exit status.
        status: String,
        /// Tail of its log.
        log_tail: String,
    },
    /// A component did not become ready in time.
    #[error("timed out waiting for {what}; {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Last error seen and/or log tail.
        detail: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An HTTP call to a harness component failed.
    #[error("http: {0}")]
    Http(String),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
