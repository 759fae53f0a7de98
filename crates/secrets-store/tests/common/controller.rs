//! A running `secrets-store controller`, spawned through the test cluster (so it dies with the
//! test binary) and stopped when dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use secrets_store_testenv::{Cluster, Proc, free_port};

/// Lease timing of the test controllers (seconds): short, so that a failover takes seconds.
pub const LEASE_DURATION: &str = "4";
const RENEW_DEADLINE: &str = "3";
const RETRY_PERIOD: &str = "0.5";

/// One controller replica.
pub struct ControllerProc {
    proc: Option<Proc>,
    /// The prefix of its identity in the Lease (`<prefix>_<random>`).
    pub name: String,
    metrics: SocketAddr,
    log: PathBuf,
}

impl ControllerProc {
    /// Starts a replica named `name` whose Lease and digest key live in `namespace`, and waits
    /// until it serves `/healthz`.
    pub fn start(cluster: &Cluster, namespace: &str, name: &str) -> Self {
        Self::start_as(cluster, cluster.kubeconfig_path(), namespace, name)
    }

    /// [`ControllerProc::start`] with another identity's kubeconfig.
    pub fn start_as(
        cluster: &Cluster,
        kubeconfig: &std::path::Path,
        namespace: &str,
        name: &str,
    ) -> Self {
        Self::start_with(cluster, kubeconfig, namespace, name, &[], &[])
    }

    /// [`ControllerProc::start_as`] with extra flags (e.g. `--podless-sync`) and environment
    /// variables (e.g. `AWS_ENDPOINT_URL`).
    pub fn start_with(
        cluster: &Cluster,
        kubeconfig: &std::path::Path,
        namespace: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let healthz: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secrets-store"));
        cmd.arg("controller")
            .args(["--namespace", namespace])
            .args(["--leader-identity", name])
            .args(["--lease-duration-seconds", LEASE_DURATION])
            .args(["--lease-renew-deadline-seconds", RENEW_DEADLINE])
            .args(["--lease-retry-period-seconds", RETRY_PERIOD])
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--healthz-addr={healthz}"))
            .env("KUBECONFIG", kubeconfig)
            .args(extra)
            .env("RUST_LOG", "info,secrets_store_sync=debug")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE");
        let log_name = format!("controller-{name}-{}", free_port().unwrap());
        let proc = cluster
            .spawn(&log_name, cmd)
            .expect("spawning secrets-store controller");
        let log = proc.log_path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Err(e) = proc.check_running() {
                panic!("controller {name} exited early: {e}");
            }
            if TcpStream::connect(healthz).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "controller {name} never served /healthz"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            proc: Some(proc),
            name: name.to_string(),
            metrics,
            log,
        }
    }

    /// Whether `holder` (a Lease's holderIdentity) is this replica.
    pub fn is(&self, holder: &str) -> bool {
        holder
            .strip_prefix(&self.name)
            .is_some_and(|rest| rest.starts_with('_'))
    }

    /// The value of metric `name` (a sample without labels), if served.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(self.metrics).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The process id (for /proc readings).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a leader frozen by a long pause or cut off, then back.
    pub fn pause(&self, stopped: bool) {
        let pid = self.pid().expect("running");
        let signal = if stopped {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(pid as i32), signal).expect("signalling the controller");
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no release of the Lease, no cleanup (a crashed or partitioned leader).
    pub fn kill_hard(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop();
        }
    }

    /// SIGTERM, then waits (20 s at most, then SIGKILL) for the exit; returns whether it exited
    /// by itself.
    pub fn stop(&mut self) -> bool {
        let Some(proc) = self.proc.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(proc.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if proc.check_running().is_err() {
                proc.stop();
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        proc.stop();
        false
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.stop();
    }
}
