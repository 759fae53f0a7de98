//! The upstream Go driver (`sigs.k8s.io/secrets-store-csi-driver`, built by
//! `bash hack/tools.sh upstream-driver`) on the test node, started with the flags its Helm chart
//! gives it, and our `secrets-store provider-aws` on the driver's provider socket. Interop tests
//! use the pair to prove that the upstream driver can use our AWS provider; the benchmark runner
//! uses the driver for its side-by-side column.
//!
//! ```no_run
//! # async fn demo(our_binary: &std::path::Path) -> Result<(), secrets_store_testenv::Error> {
//! use secrets_store_testenv::Cluster;
//! use secrets_store_testenv::upstream::{OurAwsProvider, UpstreamDriver, UpstreamOptions};
//! let cluster = Cluster::shared();
//! let driver = UpstreamDriver::start(cluster, &UpstreamOptions::default())?;
//! let moto = cluster.moto().counting_endpoint();
//! let _aws = OurAwsProvider::start(cluster, our_binary, driver.provider_dir(), &moto)?;
//! // KubeletConfig::new(..).with_csi_socket("secrets-store.csi.k8s.io", driver.socket())
//! # Ok(()) }
//! ```
//!
//! Both processes are spawned through [`Cluster::spawn`] (they die with the test binary) and
//! stop when their handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::process::free_port;
use crate::{Cluster, Error, Proc, tools};

/// The tool name of the upstream driver binary in the tools bin dir.
pub const UPSTREAM_DRIVER_TOOL: &str = "secrets-store-csi-driver";

/// How long a freshly started process may take to open its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// The upstream driver's settings that tests vary; everything else is the chart's.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// `--enable-secret-rotation` (chart value `enableSecretRotation`, default off).
    pub enable_secret_rotation: bool,
    /// `--rotation-poll-interval` (chart value `rotationPollInterval`, default 2 minutes).
    pub rotation_poll_interval: Duration,
    /// klog verbosity `-v` (chart value `logVerbosity`, default 0; 5 logs every CSI request).
    pub log_verbosity: u8,
}

impl Default for UpstreamOptions {
    /// The chart's defaults, with `-v=2` so that failures can be read from the log.
    fn default() -> Self {
        Self {
            enable_secret_rotation: false,
            rotation_poll_interval: Duration::from_secs(120),
            log_verbosity: 2,
        }
    }
}

/// A running upstream driver (its node server, secret-sync controller and rotation included).
///
/// v1.6.0 has no flag for secret sync: its `SecretProviderClassPodStatus` controller always runs
/// in the driver process and the chart's `syncSecret.enabled` only grants the RBAC on Secrets.
/// The driver uses the cluster's admin kubeconfig, so sync is always permitted here.
#[derive(Debug)]
pub struct UpstreamDriver {
    proc: Proc,
    socket: PathBuf,
    provider_dir: PathBuf,
    metrics_port: u16,
    opts: UpstreamOptions,
    // Removed on drop, after `proc` (fields drop in declaration order).
    _dir: tempfile::TempDir,
}

impl UpstreamDriver {
    /// Starts the driver with its own socket and provider dir under the cluster's run dir, and
    /// waits until its CSI socket accepts connections.
    pub fn start(cluster: &Cluster, opts: &UpstreamOptions) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("upstream-")
            .tempdir_in(cluster.run_dir())
            .map_err(|e| Error::io(cluster.run_dir(), e))?;
        let socket = dir.path().join("csi.sock");
        let provider_dir = dir.path().join("providers");
        std::fs::create_dir_all(&provider_dir).map_err(|e| Error::io(&provider_dir, e))?;
        let metrics_port = free_port()?;
        let proc = spawn_driver(cluster, opts, &socket, &provider_dir, metrics_port)?;
        Ok(Self {
            proc,
            socket,
            provider_dir,
            metrics_port,
            opts: opts.clone(),
            _dir: dir,
        })
    }

    /// Kills the driver and starts it again with the same flags, socket and provider dir (what
    /// a restarted driver pod sees on its node), and waits for the socket. Mounts it made stay.
    pub fn restart(&mut self, cluster: &Cluster) -> Result<(), Error> {
        self.proc.stop();
        // A dead server's socket file would satisfy the wait below at once.
        let _ = std::fs::remove_file(&self.socket);
        self.proc = spawn_driver(
            cluster,
            &self.opts,
            &self.socket,
            &self.provider_dir,
            self.metrics_port,
        )?;
        Ok(())
    }

    /// The CSI socket kubelet dials (`KubeletConfig::with_csi_socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory where the driver looks for `<provider>.sock`.
    pub fn provider_dir(&self) -> &Path {
        &self.provider_dir
    }

    /// The loopback port of the driver's Prometheus `/metrics`.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The driver's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The driver's log file (klog on stderr).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Fails with the log tail if the driver has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.proc.check_running()
    }
}

/// Our `secrets-store provider-aws`, serving upstream's provider API on `<provider dir>/aws.sock`.
#[derive(Debug)]
pub struct OurAwsProvider {
    proc: Proc,
    socket: PathBuf,
}

impl OurAwsProvider {
    /// Starts `binary provider-aws` (testenv cannot depend on the binary crate, so its caller
    /// passes the path) on `provider_dir/aws.sock`, calling AWS at `aws_endpoint` (moto or its
    /// counting proxy), and waits for the socket. Like the chart's `NODE_NAME`, `--node-name`
    /// lets the provider take its default region from the Node's label.
    pub fn start(
        cluster: &Cluster,
        binary: &Path,
        provider_dir: &Path,
        aws_endpoint: &str,
    ) -> Result<Self, Error> {
        Self::start_with(cluster, binary, provider_dir, aws_endpoint, &[], "info")
    }

    /// [`OurAwsProvider::start`] with extra flags (e.g. `--aws-cache-ttl-seconds`) and a `RUST_LOG`.
    pub fn start_with(
        cluster: &Cluster,
        binary: &Path,
        provider_dir: &Path,
        aws_endpoint: &str,
        extra_args: &[&str],
        rust_log: &str,
    ) -> Result<Self, Error> {
        let socket = provider_dir.join("aws.sock");
        let mut cmd = Command::new(binary);
        cmd.arg("provider-aws")
            .arg("--socket")
            .arg(&socket)
            .args(["--node-name", cluster.node_name()])
            .args(extra_args)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", rust_log);
        let proc = cluster.spawn(&process_name("our-provider-aws"), cmd)?;
        proc.wait_for_socket(&socket, SOCKET_TIMEOUT)?;
        Ok(Self { proc, socket })
    }

    /// The provider socket (`<provider dir>/aws.sock`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The provider's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The provider's log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Fails with the log tail if the provider has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.proc.check_running()
    }
}

/// Spawns the driver with its chart's flags and waits until its CSI socket accepts connections.
fn spawn_driver(
    cluster: &Cluster,
    opts: &UpstreamOptions,
    socket: &Path,
    provider_dir: &Path,
    metrics_port: u16,
) -> Result<Proc, Error> {
    let binary = tools::require(UPSTREAM_DRIVER_TOOL)?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--nodeid={}", cluster.node_name()))
        .arg(format!("--provider-volume={}", provider_dir.display()))
        // The chart adds /etc/kubernetes/secrets-store-csi-providers here, and the driver looks
        // there *first*: a provider socket on this machine's real path must not answer tests.
        .arg(format!(
            "--additional-provider-volume-paths={}",
            provider_dir.display()
        ))
        .arg(format!(
            "--enable-secret-rotation={}",
            opts.enable_secret_rotation
        ))
        .arg(format!(
            "--rotation-poll-interval={}ms",
            opts.rotation_poll_interval.as_millis()
        ))
        // The default `:8095` would listen on every interface and collide between runs.
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("-v={}", opts.log_verbosity))
        .env("KUBECONFIG", cluster.kubeconfig_path());
    let proc = cluster.spawn(&process_name("upstream-driver"), cmd)?;
    proc.wait_for_socket(socket, SOCKET_TIMEOUT)?;
    Ok(proc)
}

/// A log name unique within this test binary: `<what>-<n>`.
fn process_name(what: &str) -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    format!("{what}-{}", STARTED.fetch_add(1, Ordering::Relaxed))
}
