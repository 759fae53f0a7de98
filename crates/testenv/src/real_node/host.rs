//! The host facts a real node changes, read without changing anything: [`HostSnapshot`] for tests
//! (`before == after`), and the small readers teardown shares with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sysctls that kubelet (`setupKernelTunables`) or the CNI bridge (`ip_forward`) rewrite.
/// Teardown writes back the ones that changed.
pub(crate) const SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];

/// Host paths outside the node's private dirs that kubelet, containerd, its shims or the CNI
/// plugins create (hard-coded in them), parents before children. Teardown removes the ones that
/// did not exist before.
pub(crate) const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/lib/kubelet/device-plugins",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/var/lib/containerd",
    "/opt/containerd",
    "/run/netns",
    "/etc/cni",
    "/usr/libexec/kubernetes",
    "/etc/kubernetes",
];

/// Process names (`/proc/<pid>/comm`, 15 bytes at most) of a node's daemons.
const NODE_COMMS: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim",
    "runc",
    "kube-scheduler",
];

/// What a real node may change on the host, as seen now. Tests take one before
/// [`super::RealNode::start`] and one after [`super::RealNode::stop`] and assert they are equal.
///
/// Mounts under the temp dir are left out: other tests on the machine mount there concurrently
/// (the node's own mounts live under the run dir; check those with
/// [`super::mounts_under`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// The sysctls kubelet and the CNI bridge rewrite → value, `None` when absent.
    pub sysctls: BTreeMap<String, Option<String>>,
    /// Network interface names.
    pub links: BTreeSet<String>,
    /// `iptables`/`ip6tables -t <table> -S` output per `"<cmd> <table>"` (rules without counters).
    pub iptables: BTreeMap<String, String>,
    /// `kubepods` cgroups (kubelet's pod cgroup root) in every mounted hierarchy.
    pub kubepods_cgroups: BTreeSet<PathBuf>,
    /// Each of the host paths kubelet and containerd hard-code, and `~/.kube` (kubectl's cache)
    /// → whether it exists.
    pub paths: BTreeMap<PathBuf, bool>,
    /// Mount points outside the temp dir.
    pub mounts: BTreeSet<PathBuf>,
    /// `<pid> <comm>` of running kubelets, containerds, shims, runcs and schedulers.
    pub node_processes: BTreeSet<String>,
}

impl HostSnapshot {
    /// Reads the host facts now.
    pub fn capture() -> Self {
        let tmp = std::env::temp_dir();
        let tmp = tmp.canonicalize().unwrap_or(tmp);
        Self {
            sysctls: SYSCTLS
                .iter()
                .map(|s| (s.to_string(), read_sysctl(s)))
                .collect(),
            links: links(),
            iptables: iptables_rules(),
            kubepods_cgroups: kubepods_cgroups(),
            paths: HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .chain(kube_dir())
                .map(|p| {
                    let exists = p.exists();
                    (p, exists)
                })
                .collect(),
            mounts: mounts()
                .into_iter()
                .filter(|m| !m.starts_with(&tmp))
                .collect(),
            node_processes: node_processes(),
        }
    }
}

/// `~/.kube`, where kubectl caches discovery unless told otherwise.
fn kube_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube"))
}

/// The value of `/proc/sys/<name>`, trimmed.
pub(crate) fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Network interface names.
pub(crate) fn links() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The tables the CNI plugins and kubelet write to, for both address families.
const IPTABLES: &[(&str, &str)] = &[
    ("iptables", "filter"),
    ("iptables", "nat"),
    ("iptables", "mangle"),
    ("ip6tables", "filter"),
    ("ip6tables", "nat"),
    ("ip6tables", "mangle"),
];

fn iptables_rules() -> BTreeMap<String, String> {
    IPTABLES
        .iter()
        .map(|(cmd, table)| (format!("{cmd} {table}"), iptables_list(cmd, table, None)))
        .collect()
}

/// `<cmd> -t <table> -S [chain]`, or the error text (so a missing table compares equal too).
pub(crate) fn iptables_list(cmd: &str, table: &str, chain: Option<&str>) -> String {
    let mut c = Command::new(cmd);
    c.args(["-w", "-t", table, "-S"]);
    if let Some(chain) = chain {
        c.arg(chain);
    }
    match c.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => format!("error: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("error: {e}"),
    }
}

/// Mount points of every cgroup hierarchy (v1 controllers and the v2 tree).
pub(crate) fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

fn kubepods_cgroups() -> BTreeSet<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join("kubepods"))
        .filter(|p| p.exists())
        .collect()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
}

/// The mount table of this process's mount namespace, in mount order.
pub(crate) fn mountinfo() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            // Optional fields end at "-"; the filesystem type follows.
            let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Decodes mountinfo's `\040`-style escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u32::from(b - b'0');
            let v = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> BTreeSet<PathBuf> {
    mountinfo().into_iter().map(|m| m.mount_point).collect()
}

fn node_processes() -> BTreeSet<String> {
    processes()
        .into_iter()
        .filter(|pid| !is_zombie(*pid))
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            NODE_COMMS.contains(&comm).then(|| format!("{pid} {comm}"))
        })
        .collect()
}

/// Pids of every process.
pub(crate) fn processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` has exited and waits to be reaped (or is gone already).
pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next())
        .is_none_or(|state| state == 'Z' || state == 'X')
}

/// A process's arguments, `None` once it is gone (empty for kernel threads and zombies).
pub(crate) fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn mountinfo_has_the_root_mount() {
        assert!(mountinfo().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
