//! Leaving the host as found. Before a real node changes anything, [`HostState::record`] writes
//! what teardown must restore to a state file at a fixed path; [`HostState::restore`] undoes it,
//! whether the node stops normally, its test panics (Drop), or its test binary was killed and the
//! next [`super::RealNode::start`] finds the file.
//!
//! Order matters: kubelet first (it would restart containers), then the pods' processes (their
//! shims reap them), then containerd and the shims, then mounts, cgroups, links, iptables,
//! sysctls and the hard-coded host paths.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::host::{self, HOST_PATHS, SYSCTLS};
use crate::Error;

/// Where the lock and the state file live: fixed, so a later run finds what a killed one left.
pub(crate) const STATE_DIR: &str = "/run/secrets-store-rs/real-node";

/// Host paths that other containerd instances on the machine may share: only the entries this
/// node made are removed, and the directory only once it is empty.
const SHARED_PATHS: &[&str] = &["/run/containerd"];

/// Holds the machine-wide lock: one real node per machine (kubelet's sysctls, `/kubepods`, the
/// hard-coded host paths and the bridge are global).
#[derive(Debug)]
pub(crate) struct MachineLock {
    _lock: Flock<File>,
}

impl MachineLock {
    /// Takes the lock, waiting up to `timeout` for another node (in this or another process) to
    /// stop. The kernel releases it when its holder dies.
    pub(crate) async fn acquire(timeout: Duration) -> Result<Self, Error> {
        let dir = Path::new(STATE_DIR);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("lock");
        let deadline = Instant::now() + timeout;
        let mut said = false;
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {}
                Err((_, errno)) => return Err(Error::io(&path, errno.into())),
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the real-node lock {}", path.display()),
                    detail: "another real node runs on this machine".into(),
                });
            }
            if !said {
                eprintln!("testenv: waiting for another real node on this machine to stop");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What a node changes on the host and how to undo it; saved as JSON in [`STATE_DIR`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HostState {
    /// The test process that owns the node.
    pub owner_pid: u32,
    /// The node's private dir (kubelet root, containerd root/state, CNI config, logs).
    pub node_dir: PathBuf,
    /// containerd's gRPC socket (its shims carry it in their command lines).
    pub containerd_socket: PathBuf,
    /// The CNI bridge this node creates.
    pub bridge: String,
    /// The CNI network name (its results are cached in `/var/lib/cni/results/<name>-*`).
    pub network: String,
    /// Sysctl values before the node started.
    pub sysctls: BTreeMap<String, String>,
    /// Hard-coded host paths that did not exist before.
    pub absent_paths: Vec<PathBuf>,
    /// `CNI-*` chains per `"<cmd> <table>"` that existed before (kept).
    pub cni_chains: BTreeMap<String, BTreeSet<String>>,
}

impl HostState {
    fn path() -> PathBuf {
        Path::new(STATE_DIR).join("state.json")
    }

    /// Reads the host as it is now and saves it, before anything is changed.
    pub(crate) fn record(
        node_dir: &Path,
        containerd_socket: &Path,
        bridge: &str,
        network: &str,
    ) -> Result<Self, Error> {
        let state = Self {
            owner_pid: std::process::id(),
            node_dir: node_dir.to_path_buf(),
            containerd_socket: containerd_socket.to_path_buf(),
            bridge: bridge.to_string(),
            network: network.to_string(),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|s| Some((s.to_string(), host::read_sysctl(s)?)))
                .collect(),
            absent_paths: HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
            cni_chains: CNI_TABLES
                .iter()
                .map(|(cmd, table)| (format!("{cmd} {table}"), cni_chains(cmd, table)))
                .collect(),
        };
        let path = Self::path();
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Http(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(state)
    }

    /// The state a killed earlier run left, if any. Call only while holding [`MachineLock`].
    pub(crate) fn left_behind() -> Result<Option<Self>, Error> {
        let path = Self::path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::io(&path, std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Whether a killed run's node, still to be cleaned up, lives under `dir`: its containerd
    /// state there names the shim sockets teardown removes, so the dir must stay until then.
    pub(crate) fn claims(dir: &Path) -> bool {
        Self::left_behind()
            .ok()
            .flatten()
            .is_some_and(|s| s.node_dir.starts_with(dir))
    }

    /// Undoes everything the node did on the host, best effort: every step runs even when an
    /// earlier one failed, and the failures are reported together. The node's own processes
    /// (started by the harness) must be stopped first except for what is killed here.
    pub(crate) fn restore(&self) -> Result<(), Error> {
        let mut failures = Vec::new();
        let node_dir = self.node_dir.display().to_string();

        // kubelet first, or it starts the containers killed next again.
        kill_and_wait(|args| {
            args.first().is_some_and(|a| a.ends_with("kubelet"))
                && args.iter().any(|a| a.contains(&node_dir))
        });
        kill_cgroup_processes(&mut failures);
        // containerd and the shims (`-address <socket>`): anything naming the node dir.
        kill_and_wait(|args| args.iter().any(|a| a.contains(&node_dir)));

        remove_links(&self.bridge, &mut failures);
        remove_shim_sockets(&self.node_dir);
        if let Err(e) = unmount_all_under(&self.node_dir) {
            failures.push(e.to_string());
        }
        remove_kubepods_cgroups(&mut failures);
        remove_cni_chains(&self.cni_chains, &mut failures);
        self.restore_sysctls(&mut failures);
        self.remove_host_paths(&mut failures);
        // Never delete through a mount point (a failed unmount is reported above).
        if self.node_dir.exists()
            && mounts_under(&self.node_dir).is_empty()
            && let Err(e) = std::fs::remove_dir_all(&self.node_dir)
        {
            failures.push(format!("removing {}: {e}", self.node_dir.display()));
        }
        if failures.is_empty() {
            let _ = std::fs::remove_file(Self::path());
            Ok(())
        } else {
            Err(Error::io(
                &self.node_dir,
                std::io::Error::other(format!(
                    "real node teardown incomplete (state kept in {} for the next start): {}",
                    Self::path().display(),
                    failures.join("; ")
                )),
            ))
        }
    }

    fn restore_sysctls(&self, failures: &mut Vec<String>) {
        for (name, value) in &self.sysctls {
            if host::read_sysctl(name).as_deref() == Some(value.as_str()) {
                continue;
            }
            let path = Path::new("/proc/sys").join(name);
            if let Err(e) = std::fs::write(&path, value) {
                failures.push(format!("restoring {}: {e}", path.display()));
            }
        }
    }

    /// Removes what the node added under the hard-coded host paths: whole paths that did not
    /// exist before, else only the node's own entries.
    fn remove_host_paths(&self, failures: &mut Vec<String>) {
        let node_dir = &self.node_dir;
        // Dangling links into this node's pod log dir.
        remove_entries("/var/log/containers", |p| {
            std::fs::read_link(p).is_ok_and(|t| t.starts_with(node_dir))
        });
        let prefix = format!("{}-", self.network);
        remove_entries("/var/lib/cni/results", |p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        });
        remove_entries("/var/lib/cni/networks", |p| p.ends_with(&self.network));
        // Children before parents.
        for path in self.absent_paths.iter().rev() {
            if !path.exists() {
                continue;
            }
            let shared = SHARED_PATHS.iter().any(|s| path == Path::new(s));
            let result = if shared {
                remove_empty_dirs(path)
            } else {
                std::fs::remove_dir_all(path)
            };
            if let Err(e) = result {
                // A shared dir that another containerd still uses stays.
                if !shared {
                    failures.push(format!("removing {}: {e}", path.display()));
                }
            }
        }
    }
}

/// Mount points at or under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    host::mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// Unmounts everything at or under `dir`, latest mount first (so stacked and nested mounts come
/// off before what they cover), until nothing is left. A busy mount is detached lazily.
pub(crate) fn unmount_all_under(dir: &Path) -> Result<(), Error> {
    for _ in 0..20 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts.iter().rev() {
            if umount2(m, MntFlags::empty()).is_err() {
                let _ = umount2(m, MntFlags::MNT_DETACH);
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::io(
            dir,
            std::io::Error::other(format!("mounts left: {left:?}")),
        ))
    }
}

/// SIGKILLs every process whose arguments match until none is left (up to 10 s): a shim may
/// still start `runc` while it is being killed.
fn kill_and_wait(matches: impl Fn(&[String]) -> bool) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let victims: Vec<i32> = host::processes()
            .into_iter()
            .filter(|pid| *pid != me && !host::is_zombie(*pid))
            .filter(|pid| host::cmdline(*pid).is_some_and(|a| !a.is_empty() && matches(&a)))
            .collect();
        if victims.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in &victims {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every cgroup dir at or under `/kubepods` in every hierarchy, deepest first.
fn kubepods_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for mount in host::cgroup_mounts() {
        let root = mount.join("kubepods");
        if root.is_dir() {
            walk(&root, &mut out);
        }
    }
    out
}

/// SIGKILLs every process in a pod cgroup until none is left (containers may fork meanwhile).
fn kill_cgroup_processes(failures: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: BTreeSet<i32> = kubepods_dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            failures.push(format!("pod processes survive SIGKILL: {pids:?}"));
            return;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_kubepods_cgroups(failures: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dirs = kubepods_dirs();
        let mut last_error = None;
        for dir in &dirs {
            // rmdir on a cgroup removes it with its control files; EBUSY while a task is in it.
            if let Err(e) = std::fs::remove_dir(dir) {
                last_error = Some(format!("removing cgroup {}: {e}", dir.display()));
            }
        }
        match last_error {
            None => return,
            Some(e) if Instant::now() > deadline => {
                failures.push(e);
                return;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Deletes the pods' veths on `bridge` (their peers in the pod network namespaces go with them)
/// and the bridge itself.
fn remove_links(bridge: &str, failures: &mut Vec<String>) {
    for link in host::links() {
        let master = std::fs::read_link(format!("/sys/class/net/{link}/master"));
        if master.is_ok_and(|m| m.file_name().is_some_and(|n| n == bridge)) {
            let _ = ip(&["link", "del", &link]);
        }
    }
    if Path::new("/sys/class/net").join(bridge).exists()
        && let Err(e) = ip(&["link", "del", bridge])
    {
        failures.push(e);
    }
}

/// Runs `ip <args>`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// containerd's shims listen on `/run/containerd/s/<hash>` (a fixed root in containerd 1.6) and
/// write that address into their bundle dir; a killed shim leaves the socket behind.
fn remove_shim_sockets(node_dir: &Path) {
    let tasks = node_dir.join("containerd/state/io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&tasks) else {
        return;
    };
    for ns in namespaces.flatten() {
        for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(addr) = std::fs::read_to_string(bundle.path().join("address"))
                && let Some(path) = addr.trim().strip_prefix("unix://")
                && path.starts_with("/run/containerd/s/")
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The tables where CNI plugins (bridge `ipMasq`, portmap, firewall) add `CNI-*` chains.
const CNI_TABLES: &[(&str, &str)] = &[
    ("iptables", "nat"),
    ("iptables", "filter"),
    ("ip6tables", "nat"),
    ("ip6tables", "filter"),
];

/// Names of the `CNI-*` chains in a table.
fn cni_chains(cmd: &str, table: &str) -> BTreeSet<String> {
    host::iptables_list(cmd, table, None)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with("CNI-"))
        .map(str::to_string)
        .collect()
}

/// Deletes the `CNI-*` chains that did not exist before, with every rule jumping to them.
fn remove_cni_chains(before: &BTreeMap<String, BTreeSet<String>>, failures: &mut Vec<String>) {
    for (cmd, table) in CNI_TABLES {
        let kept = before.get(&format!("{cmd} {table}"));
        let ours: BTreeSet<String> = cni_chains(cmd, table)
            .into_iter()
            .filter(|c| kept.is_none_or(|k| !k.contains(c)))
            .collect();
        if ours.is_empty() {
            continue;
        }
        let listing = host::iptables_list(cmd, table, None);
        // Rule numbers per chain, deleted from the last so the earlier numbers stay valid.
        let mut numbers: BTreeMap<&str, Vec<(usize, bool)>> = BTreeMap::new();
        for line in listing.lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split(' ').next().unwrap_or_default();
            let entry = numbers.entry(chain).or_default();
            let jumps_to_ours = rule
                .split(' ')
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.contains(w[1]));
            entry.push((entry.len() + 1, jumps_to_ours));
        }
        for (chain, rules) in &numbers {
            if ours.contains(*chain) {
                continue;
            }
            for (n, _) in rules.iter().rev().filter(|(_, j)| *j) {
                run_iptables(cmd, &["-t", table, "-D", chain, &n.to_string()], failures);
            }
        }
        for chain in &ours {
            run_iptables(cmd, &["-t", table, "-F", chain], failures);
        }
        for chain in &ours {
            run_iptables(cmd, &["-t", table, "-X", chain], failures);
        }
    }
}

fn run_iptables(cmd: &str, args: &[&str], failures: &mut Vec<String>) {
    match Command::new(cmd).arg("-w").args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => failures.push(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => failures.push(format!("{cmd}: {e}")),
    }
}

/// Removes the entries of `dir` that `matches`, keeping `dir`.
fn remove_entries(dir: &str, matches: impl Fn(&Path) -> bool) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if matches(&path) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Removes `dir` if it holds nothing but empty directories.
fn remove_empty_dirs(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_empty_dirs(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
