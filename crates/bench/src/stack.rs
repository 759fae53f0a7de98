//! The stacks under test: how each is started on the test node, and what the runner needs to
//! measure it (its CSI socket and the pids of its node-side processes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use secrets_store_testenv::ascp::{ASCP_TOOL, Ascp, AscpOptions, USER_AGENT_PREFIX};
use secrets_store_testenv::upstream::{
    OurAwsProvider, UPSTREAM_DRIVER_TOOL, UpstreamDriver, UpstreamOptions,
};
use secrets_store_testenv::{CallCounter, Cluster, Proc, find_tool, tools_bin_dir};

/// How long a freshly started process may take to open its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// Which implementation a column measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// Our node agent with the built-in AWS provider (one process).
    Ours,
    /// Upstream `secrets-store-csi-driver` v1.6.0 with our AWS provider (`secrets-store
    /// provider-aws`) behind it over upstream's provider API: the "third column". It
    /// isolates the driver half, since both sides use the same provider.
    UpstreamDriver,
    /// Upstream `secrets-store-csi-driver` v1.6.0 + `secrets-store-csi-driver-provider-aws` 3.1.1
    /// (ASCP), both unmodified, ASCP at its chart's Kubernetes client limits (qps 5, burst 10).
    UpstreamPair,
    /// The same pair with ASCP's client-side limiter lifted (`--qps`/`--burst` 100000).
    UpstreamPairUnlimited,
}

impl StackKind {
    /// Column title.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::UpstreamDriver => "upstream driver + our provider",
            Self::UpstreamPair => "upstream pair (driver + ASCP)",
            Self::UpstreamPairUnlimited => "upstream pair, ASCP limiter lifted",
        }
    }

    /// Whether a request with this `User-Agent` came from one of this stack's processes (ours
    /// name their component; the upstream driver's controller-runtime client sends
    /// `csi-secrets-store/…`; ASCP sends client-go's default, its binary name). The upstream
    /// columns share agents, so the runner counts one stack's span at a time.
    pub fn owns_user_agent(self, agent: &str) -> bool {
        let ours = |component: &str| {
            agent.starts_with("secrets-store-rs/") && agent.ends_with(&format!("({component})"))
        };
        match self {
            Self::Ours => ours("node"),
            Self::UpstreamDriver => agent.starts_with("csi-secrets-store/") || ours("provider-aws"),
            Self::UpstreamPair | Self::UpstreamPairUnlimited => {
                agent.starts_with("csi-secrets-store/") || agent.starts_with(USER_AGENT_PREFIX)
            }
        }
    }

    /// Short name for namespaces and pod names.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::UpstreamDriver => "updriver",
            Self::UpstreamPair => "uppair",
            Self::UpstreamPairUnlimited => "uppair-nolimit",
        }
    }

    /// Whether this is one of the upstream pair's columns.
    pub fn is_pair(self) -> bool {
        matches!(self, Self::UpstreamPair | Self::UpstreamPairUnlimited)
    }
}

/// A started stack. Dropping it stops its processes.
#[derive(Debug)]
pub struct RunningStack {
    /// Which stack this is.
    pub kind: StackKind,
    /// The CSI socket kubelet (and scenario 1) dials.
    pub socket: PathBuf,
    /// The node's kubelet root dir used with this stack.
    pub kubelet_root: PathBuf,
    /// This stack's own counting proxy in front of moto: AWS calls per stack, even when the
    /// stacks alternate.
    pub aws: CallCounter,
    processes: Processes,
    /// Ours: how the agent was started, for [`RunningStack::restart`].
    ours_launch: Option<OursLaunch>,
    _dir: tempfile::TempDir,
}

/// Where and how our agent runs, so that a restart starts it the same way.
#[derive(Debug, Clone)]
struct OursLaunch {
    socket: PathBuf,
    root: PathBuf,
    providers: PathBuf,
    cfg: StackConfig,
}

/// The node-side processes of a stack; dropping them stops them.
#[derive(Debug)]
enum Processes {
    Ours(Proc),
    UpstreamDriver(UpstreamDriver, OurAwsProvider),
    UpstreamPair(UpstreamDriver, Box<Ascp>),
}

impl RunningStack {
    /// Pids of every node-side process of the stack (memory and CPU are summed over them).
    pub fn pids(&self) -> Vec<u32> {
        match &self.processes {
            Processes::Ours(p) => vec![p.pid()],
            Processes::UpstreamDriver(d, p) => vec![d.pid(), p.pid()],
            Processes::UpstreamPair(d, a) => vec![d.pid(), a.pid()],
        }
    }

    /// Kills every node-side process of the stack and starts them again the same way (same
    /// sockets, kubelet dir, flags and AWS counter), as a node whose driver pods restart; the
    /// volumes stay mounted. Returns once the CSI socket accepts connections again.
    pub fn restart(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        match &mut self.processes {
            Processes::Ours(p) => {
                let launch = self
                    .ours_launch
                    .as_ref()
                    .expect("ours keeps its launch settings");
                p.stop();
                let _ = std::fs::remove_file(&launch.socket);
                *p = spawn_ours(cluster, launch, &self.aws)?;
            }
            Processes::UpstreamDriver(d, _) => {
                // Our provider keeps running: only the driver half restarts here.
                d.restart(cluster)?;
            }
            Processes::UpstreamPair(d, a) => {
                d.restart(cluster)?;
                a.restart(cluster)?;
            }
        }
        Ok(())
    }

    /// Fails if a process of the stack died.
    pub fn check_running(&self) -> anyhow::Result<()> {
        match &self.processes {
            Processes::Ours(p) => p.check_running()?,
            Processes::UpstreamDriver(d, p) => {
                d.check_running()?;
                p.check_running()?;
            }
            Processes::UpstreamPair(d, a) => {
                d.check_running()?;
                a.check_running()?;
            }
        }
        Ok(())
    }
}

/// How the stacks are configured: the same for all, as their charts would be set.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Rotation poll interval passed to the driver (scaled down from the charts' 2m).
    pub rotation_poll: Duration,
    /// The agent's own namespace (rollout key of secret sync).
    pub namespace: String,
    /// Seconds our AWS provider shares a fetched value (the chart's 5 s, scaled like the
    /// rotation intervals: at 60× a 5 s TTL would outlast the 2 s poll and hide fetches).
    pub aws_cache_ttl_seconds: String,
}

/// Starts `kind`, or explains why it cannot run on this machine.
pub async fn start(
    kind: StackKind,
    cluster: &Cluster,
    cfg: &StackConfig,
) -> Result<RunningStack, String> {
    let aws = cluster
        .moto()
        .new_call_counter()
        .await
        .map_err(|e| format!("counting proxy: {e}"))?;
    let started = match kind {
        StackKind::Ours => start_ours(cluster, cfg, aws),
        StackKind::UpstreamDriver => start_upstream_driver(cluster, cfg, aws),
        StackKind::UpstreamPair | StackKind::UpstreamPairUnlimited => {
            if let Some(reason) = upstream_pair_unavailable() {
                return Err(reason);
            }
            let opts = if kind == StackKind::UpstreamPair {
                AscpOptions::default()
            } else {
                AscpOptions::limiter_lifted()
            };
            start_upstream_pair(kind, cluster, cfg, aws, &opts).await
        }
    };
    started.map_err(|e| format!("{} did not start: {e:#}", kind.label()))
}

/// Our binary: `$SECRETS_STORE_BIN`, else `secrets-store` next to this runner (cargo puts every
/// binary of the workspace in the same profile dir; test executables live one level down).
pub fn our_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SECRETS_STORE_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating the runner: {e}"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("secrets-store");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (`cargo build --release -p secrets-store` for `make bench`, \
             `cargo build -p secrets-store` for the smoke test) or set SECRETS_STORE_BIN",
            bin.display()
        ))
    }
}

fn start_ours(
    cluster: &Cluster,
    cfg: &StackConfig,
    aws: CallCounter,
) -> anyhow::Result<RunningStack> {
    let dir = tempfile::tempdir()?;
    let launch = OursLaunch {
        socket: dir.path().join("csi.sock"),
        root: dir.path().join("kubelet"),
        // An empty external-provider dir of its own: only the built-in AWS provider answers.
        providers: dir.path().join("providers"),
        cfg: cfg.clone(),
    };
    std::fs::create_dir_all(&launch.root)?;
    std::fs::create_dir_all(&launch.providers)?;
    let proc = spawn_ours(cluster, &launch, &aws)?;
    Ok(RunningStack {
        kind: StackKind::Ours,
        socket: launch.socket.clone(),
        kubelet_root: launch.root.clone(),
        aws,
        processes: Processes::Ours(proc),
        ours_launch: Some(launch),
        _dir: dir,
    })
}

/// Starts our agent as `launch` says and waits for its CSI socket.
fn spawn_ours(cluster: &Cluster, launch: &OursLaunch, aws: &CallCounter) -> anyhow::Result<Proc> {
    let binary = our_binary().map_err(anyhow::Error::msg)?;
    let cfg = &launch.cfg;
    let mut cmd = Command::new(binary);
    cmd.arg("node")
        .arg("--endpoint")
        .arg(format!("unix://{}", launch.socket.display()))
        .args(["--node-id", cluster.node_name()])
        .arg("--kubelet-dir")
        .arg(&launch.root)
        .args(["--metrics-addr", "", "--healthz-addr", ""])
        // kubelet's registration is not needed: the simulator is given the socket directly,
        // as it is for the upstream driver.
        .arg("--no-registration")
        .arg("--provider-volume")
        .arg(&launch.providers)
        .args(["--enable-secret-rotation", "--enable-secret-sync"])
        .arg("--rotation-poll-interval")
        .arg(format!("{}s", cfg.rotation_poll.as_secs()))
        .args(["--namespace", &cfg.namespace])
        .args(["--aws-cache-ttl-seconds", &cfg.aws_cache_ttl_seconds])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        // `BENCH_OURS_LOG=debug` gives the per-stage timestamps BENCHMARKS.md's profile uses.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OURS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", aws.endpoint());
    let proc = cluster.spawn("bench-ours", cmd)?;
    proc.wait_for_socket(&launch.socket, SOCKET_TIMEOUT)?;
    Ok(proc)
}

/// Why the upstream pair cannot run here, or `None` when its binaries are installed.
pub fn upstream_pair_unavailable() -> Option<String> {
    let missing: Vec<&str> = [UPSTREAM_DRIVER_TOOL, ASCP_TOOL]
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "not available: {} missing in {} (`bash hack/tools.sh upstream-driver ascp` builds \
             them)",
            missing.join(" and "),
            tools_bin_dir().display()
        )
    })
}

/// The upstream driver as its chart runs it on a node (`testenv::upstream`), with rotation on.
fn upstream_driver(cluster: &Cluster, cfg: &StackConfig) -> anyhow::Result<UpstreamDriver> {
    let opts = UpstreamOptions {
        enable_secret_rotation: true,
        rotation_poll_interval: cfg.rotation_poll,
        // The chart's default verbosity.
        log_verbosity: 0,
    };
    Ok(UpstreamDriver::start(cluster, &opts)?)
}

/// A kubelet root dir of the stack's own, under the cluster's run dir (ASCP makes it a shared
/// mount, which only the run dir's clean-up removes after a killed run).
fn kubelet_root(cluster: &Cluster) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir_in(cluster.run_dir())?;
    let root = dir.path().join("kubelet");
    std::fs::create_dir_all(&root)?;
    Ok((dir, root))
}

/// The upstream driver with our `secrets-store provider-aws` on `<provider dir>/aws.sock`.
fn start_upstream_driver(
    cluster: &Cluster,
    cfg: &StackConfig,
    aws: CallCounter,
) -> anyhow::Result<RunningStack> {
    let (dir, root) = kubelet_root(cluster)?;
    let driver = upstream_driver(cluster, cfg)?;
    let binary = our_binary().map_err(anyhow::Error::msg)?;
    let provider = OurAwsProvider::start_with(
        cluster,
        &binary,
        driver.provider_dir(),
        aws.endpoint(),
        &["--cache-ttl-seconds", &cfg.aws_cache_ttl_seconds],
        "warn",
    )?;
    Ok(RunningStack {
        kind: StackKind::UpstreamDriver,
        socket: driver.socket().to_path_buf(),
        kubelet_root: root,
        aws,
        processes: Processes::UpstreamDriver(driver, provider),
        ours_launch: None,
        _dir: dir,
    })
}

/// The upstream pair as its charts run it: the driver, and ASCP on its provider dir started by
/// `testenv::ascp` (mount namespace, STS relay, in-cluster files) with `opts` as its limits.
async fn start_upstream_pair(
    kind: StackKind,
    cluster: &Cluster,
    cfg: &StackConfig,
    aws: CallCounter,
    opts: &AscpOptions,
) -> anyhow::Result<RunningStack> {
    let (dir, root) = kubelet_root(cluster)?;
    let driver = upstream_driver(cluster, cfg)?;
    let ascp = Ascp::start(cluster, driver.provider_dir(), &root, aws.endpoint(), opts).await?;
    Ok(RunningStack {
        kind,
        socket: driver.socket().to_path_buf(),
        kubelet_root: root,
        aws,
        processes: Processes::UpstreamPair(driver, Box::new(ascp)),
        ours_launch: None,
        _dir: dir,
    })
}
