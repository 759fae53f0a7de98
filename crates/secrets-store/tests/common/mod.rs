//! Helpers shared by the binary's integration tests: spawning the real `secrets-store` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `secrets-store node`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Driver {
    child: Option<Child>,
    /// The CSI socket path.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Driver {
    /// Starts `secrets-store node` with `args` after the common flags, and waits for its socket.
    pub fn start(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, kubeconfig, extra, &[])
    }

    /// Like [`Driver::start`], with extra environment variables (e.g. `AWS_ENDPOINT_URL`).
    pub fn start_with_env(
        dir: &Path,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let socket = dir.join("csi.sock");
        let log = dir.join(format!(
            "driver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(env!("CARGO_BIN_EXE_secrets-store"))
            .arg("node")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,secrets_store_driver=debug")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("driver log file"))
            .spawn()
            .expect("spawning secrets-store node");
        let mut d = Self {
            child: Some(child),
            socket,
            log,
        };
        d.wait_for_socket();
        d
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("driver exited early ({status}):\n{}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("driver socket never appeared:\n{}", self.log_text());
    }

    /// The driver's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no cleanup (simulates a crash).
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CSI Node client over the unix socket at `socket` (connects lazily).
pub fn node_client(
    socket: &Path,
) -> secrets_store_api::csi::v1::node_client::NodeClient<tonic::transport::Channel> {
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Endpoint, Uri};
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }),
    );
    secrets_store_api::csi::v1::node_client::NodeClient::new(channel)
}

/// A kubeconfig pointing at a closed loopback port: for tests that need no API server.
pub fn dead_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("dead-kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: http://127.0.0.1:9\n\
         contexts:\n- name: dead\n  context:\n    cluster: dead\n    user: dead\ncurrent-context: dead\n\
         users:\n- name: dead\n  user: {}\n",
    )
    .unwrap();
    path
}
pub mod controller;
pub mod test_provider;
