//! Child processes of the harness: spawned with their output in a log file and with
//! `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the test binary even when it panics or is killed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;

/// A running child process whose stdout and stderr go to `log`.
#[derive(Debug)]
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Mutex<Child>,
}

impl Proc {
    /// Spawns `cmd`, appending its output to `<log_dir>/<name>.log`.
    ///
    /// Must be called from a thread that outlives the child's useful life: the kernel delivers
    /// the parent-death signal when the spawning *thread* exits.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        set_parent_death_signal(&mut cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            log,
            child: Mutex::new(child),
        })
    }

    /// The component name (`etcd`, `kube-apiserver`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of this process's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("child lock").id()
    }

    /// Fails if the process has already exited (it should run for the whole test binary).
    pub fn check_running(&self) -> Result<(), Error> {
        let mut child = self.child.lock().expect("child lock");
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: tail(&self.log, 40),
            }),
            Err(e) => Err(Error::io(&self.log, e)),
        }
    }

    /// Waits up to `timeout` until the unix `socket` accepts a connection, failing early (with
    /// the log tail) if the process exits.
    pub fn wait_for_socket(&self, socket: &Path, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{} to listen on {}", self.name, socket.display()),
                    detail: tail(&self.log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills and reaps the process.
    pub fn stop(&self) {
        let mut child = self.child.lock().expect("child lock");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory shared with the parent. Without it a panicking or
    // SIGKILLed test binary would leave etcd/apiserver/moto running forever.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// The last `lines` lines of a log file (lossy UTF-8), or a note saying why it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    // Logs can be large (apiserver at default verbosity); read only the end.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = file.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State letter from /proc/<pid>/stat, or None once the pid is gone.
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.trim_start().chars().next()
    }

    #[test]
    fn child_is_killed_when_its_spawning_thread_exits() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().to_path_buf();
        let pid = std::thread::spawn(move || {
            let mut cmd = Command::new("sleep");
            cmd.arg("1000");
            let proc = Proc::spawn("sleep", cmd, &log_dir).unwrap();
            let pid = proc.pid();
            // Leak it: only the parent-death signal can stop it now.
            std::mem::forget(proc);
            pid
        })
        .join()
        .unwrap();
        for _ in 0..200 {
            // Killed children stay zombies until reaped by this (still living) process.
            if matches!(proc_state(pid), None | Some('Z')) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("child {pid} survived its spawning thread");
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&path, 2), "b\nc");
    }
}
