//! Control-plane components that tests can stop and start again with the same command line:
//! kube-apiserver (same binary, port, certs, flags and etcd, so every kubeconfig and client stays
//! valid across the outage) and kube-controller-manager (restarted with it, as a control-plane
//! restart does, instead of waiting out client-go's growing reconnect backoff).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::certs::Pki;
use crate::process::{Proc, tail};
use crate::{Error, cluster::SA_ISSUER};

/// The apiserver's component (and log file) name.
pub(crate) const NAME: &str = "kube-apiserver";

/// How long a graceful stop may take before the process is killed.
const GRACEFUL_STOP: Duration = Duration::from_secs(30);

/// The audit log's file name in the log dir: one JSON line per finished request, with the
/// client's user agent, so a benchmark can tell which process made which requests.
pub(crate) const AUDIT_LOG: &str = "audit.log";

/// Metadata only (never request or response bodies, which hold Secret data), once per request.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
";

/// How [`crate::Cluster::stop_apiserver`] ends the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiserverStop {
    /// SIGTERM, as a control-plane upgrade does: open watches are closed and in-flight requests
    /// drained (killed after 30 s if it has not exited).
    Graceful,
    /// SIGKILL, as a crash or an OOM kill does: connections are reset mid-request.
    Kill,
}

/// A component's command line (kept to start it again) and its current process.
#[derive(Debug)]
pub(crate) struct Restartable {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    log_dir: PathBuf,
    /// `None` while stopped. An `Arc` so that waiters need not hold the lock.
    current: Mutex<Option<Arc<Proc>>>,
    /// How many times it was stopped; names the log files of earlier runs.
    stops: Mutex<usize>,
}

/// The addresses and files the apiserver is started with.
pub(crate) struct ApiserverFlags<'a> {
    pub etcd_url: &'a str,
    pub port: u16,
    pub run_dir: &'a Path,
    pub pki: &'a Pki,
}

/// kube-apiserver's command line, with a metadata-level audit log in `log_dir`.
pub(crate) fn apiserver_args(
    flags: &ApiserverFlags<'_>,
    log_dir: &Path,
) -> Result<Vec<String>, Error> {
    let policy = flags.run_dir.join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).map_err(|e| Error::io(&policy, e))?;
    let mut args = args(flags);
    args.extend([
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", log_dir.join(AUDIT_LOG).display()),
        "--audit-log-format=json".into(),
    ]);
    Ok(args)
}

impl Restartable {
    /// Starts `name` from the current thread, which must outlive it (the cluster thread: the
    /// parent-death signal follows the spawning thread).
    pub(crate) fn start(
        name: &'static str,
        bin: PathBuf,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let component = Self {
            name,
            bin,
            args,
            log_dir: log_dir.to_path_buf(),
            current: Mutex::new(None),
            stops: Mutex::new(0),
        };
        let proc = Proc::spawn(name, component.command(), log_dir)?;
        *component.lock() = Some(Arc::new(proc));
        Ok(component)
    }

    /// The component (and log file) name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// A command identical to the first start's.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        cmd
    }

    /// The running process, `None` while stopped.
    pub(crate) fn process(&self) -> Option<Arc<Proc>> {
        self.lock().clone()
    }

    /// Fails if it exited on its own or was stopped.
    pub(crate) fn check_running(&self) -> Result<(), Error> {
        match self.process() {
            Some(proc) => proc.check_running(),
            None => {
                let stops = *self.stops.lock().unwrap_or_else(|e| e.into_inner());
                Err(Error::Exited {
                    name: self.name.into(),
                    status: "stopped by the test (Cluster::stop_apiserver)".into(),
                    log_tail: tail(&self.log_dir.join(format!("{}.{stops}.log", self.name)), 40),
                })
            }
        }
    }

    /// Stops it (no-op when already stopped) and moves its log to `<name>.<n>.log`, so
    /// that the next run's log starts empty at the usual path and the earlier runs stay readable
    /// in [`crate::Cluster::log_tails`].
    pub(crate) fn stop(&self, how: ApiserverStop) {
        let Some(proc) = self.lock().take() else {
            return;
        };
        if how == ApiserverStop::Graceful {
            let _ = kill(Pid::from_raw(proc.pid() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + GRACEFUL_STOP;
            while proc.check_running().is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        proc.stop();
        let mut stops = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        *stops += 1;
        let log = proc.log_path();
        let _ = std::fs::rename(
            log,
            log.with_file_name(format!("{}.{}.log", self.name, *stops)),
        );
    }

    /// Records a process started with [`Restartable::command`] as the current one. Fails if one
    /// is already running (the apiserver's port would be taken).
    pub(crate) fn set_started(&self, proc: Proc) -> Result<Arc<Proc>, Error> {
        let mut current = self.lock();
        if current.is_some() {
            return Err(Error::Http(format!("{} is already running", self.name)));
        }
        let proc = Arc::new(proc);
        *current = Some(proc.clone());
        Ok(proc)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Proc>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn args(f: &ApiserverFlags<'_>) -> Vec<String> {
    let pki = f.pki;
    vec![
        format!("--etcd-servers={}", f.etcd_url),
        format!("--secure-port={}", f.port),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--cert-dir={}", f.run_dir.join("pki").display()),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        "--authorization-mode=Node,RBAC".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        format!("--service-account-issuer={SA_ISSUER}"),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        format!("--api-audiences={SA_ISSUER}"),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        "--enable-priority-and-fairness=false".into(),
        // For a real kubelet (`crate::real_node`): `logs`, `exec` and `port-forward` go through
        // the apiserver to the kubelet's API, verified with the cluster CA, at the node's
        // InternalIP (its hostname resolves nowhere).
        format!(
            "--kubelet-client-certificate={}",
            pki.kubelet_client_cert.display()
        ),
        format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
        format!("--kubelet-certificate-authority={}", pki.ca_cert.display()),
        "--kubelet-preferred-address-types=InternalIP".into(),
    ]
}
