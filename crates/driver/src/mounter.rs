//! tmpfs mounts at kubelet's target paths.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Default tmpfs size: secrets are ≤64 KiB each, so this fits well over a hundred objects.
pub const DEFAULT_TMPFS_SIZE: &str = "16Mi";

/// The mount source ("device") of every tmpfs this agent mounts: in the mount table it tells
/// our volumes from any other tmpfs (kubelet's own `kubernetes.io~projected` token volumes,
/// `emptyDir: {medium: Memory}`, another driver's) and from our own older ones. tmpfs ignores
/// the source otherwise.
pub const MOUNT_SOURCE: &str = "secrets-store-rs";

/// Files and directories one volume may hold: the writer needs a handful of its own entries
/// (`..data`, the payload directory, one link per top-level name) besides the provider's files.
pub const MAX_INODES: u32 = 4096;

/// The mount source of volumes mounted before [`MOUNT_SOURCE`] existed, by an earlier version or
/// by the upstream driver before a migration: their pods keep them until they are recreated, so
/// they still count as ours. (A tmpfs with this source at a volume path kubelet had this driver
/// mount can only have been made there by whoever served this driver's name, or by root.)
pub const LEGACY_MOUNT_SOURCE: &str = "tmpfs";

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A filesystem or mount syscall failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Something other than our tmpfs is mounted at the target.
    #[error(
        "target path {path:?} is a {fs_type} mount, not a secrets-store tmpfs; refusing to touch it"
    )]
    ForeignMount {
        /// The target.
        path: PathBuf,
        /// Its filesystem type.
        fs_type: String,
    },
    /// The target exists but is not a directory.
    #[error("target path {0:?} exists and is not a directory")]
    NotADirectory(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn nix_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |e| MountError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// Mounts and unmounts the volume tmpfs.
#[derive(Clone, Debug)]
pub struct Mounter {
    size: String,
}

impl Default for Mounter {
    fn default() -> Self {
        Self::new(DEFAULT_TMPFS_SIZE)
    }
}

impl Mounter {
    /// A mounter whose tmpfs mounts get `size=<size>` (a kubernetes-style quantity such as `16Mi`
    /// or a tmpfs size such as `16m`).
    pub fn new(size: impl Into<String>) -> Self {
        Self {
            size: tmpfs_size(&size.into()),
        }
    }

    /// Whether `path` is a mount point, from `/proc/self/mountinfo` (exact match of the mount
    /// point field, so a mount below or above the path does not count).
    ///
    /// A mount point that is not a tmpfs is an error: this driver only ever mounts tmpfs, so
    /// anything else at a target path was not made by us and must be neither written into nor
    /// unmounted (a misdirected call must not detach a host filesystem). Any tmpfs counts, not
    /// only [`MOUNT_SOURCE`]'s: volumes mounted by an earlier version (source `tmpfs`) must still
    /// be unmounted when their pods go.
    pub fn is_mount_point(&self, path: &Path) -> Result<bool, MountError> {
        let table = MountTable::read().map_err(io_err("read", Path::new(MountTable::PROC_PATH)))?;
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let top = table.top(&canonical).or_else(|| table.top(path));
        match top {
            None => Ok(false),
            Some(m) if m.fs_type == "tmpfs" => Ok(true),
            Some(m) => Err(MountError::ForeignMount {
                path: path.to_path_buf(),
                fs_type: m.fs_type.clone(),
            }),
        }
    }

    /// Creates `target` (mode 0750 for parents kubelet did not create) and mounts a tmpfs on it
    /// with mode 0755, `nosuid,nodev,noexec`.
    pub fn mount(&self, target: &Path) -> Result<(), MountError> {
        match fs::metadata(target) {
            Ok(m) if !m.is_dir() => return Err(MountError::NotADirectory(target.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(target)
                .map_err(io_err("mkdir", target))?,
            Err(e) => return Err(io_err("stat", target)(e)),
        }
        // nr_inodes bounds the files and directories a provider response can create in one
        // volume (each costs kernel memory on top of the bytes the size limit counts).
        let data = format!("mode=0755,size={},nr_inodes={MAX_INODES}", self.size);
        nix::mount::mount(
            Some(MOUNT_SOURCE),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        )
        .map_err(nix_err("mount tmpfs on", target))?;
        // The mount options set the root mode; re-assert in case a tmpfs default changes.
        fs::set_permissions(target, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", target))?;
        Ok(())
    }

    /// Unmounts `target` if mounted (lazily when busy) and removes the directory. Already gone
    /// is success.
    pub fn unmount_and_remove(&self, target: &Path) -> Result<(), MountError> {
        // A stacked mount (should not happen) would leave another layer: loop until clean.
        for _ in 0..8 {
            if !self.is_mount_point(target)? {
                break;
            }
            // Never through a symlink: a target swapped for a link to a host path between the
            // mount-point check and here must not detach what the link names.
            match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => {}
                Err(nix::Error::EBUSY) => {
                    nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                        .map_err(nix_err("lazy unmount", target))?
                }
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(e) => return Err(nix_err("unmount", target)(e)),
            }
        }
        match fs::remove_dir(target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", target)(e)),
        }
    }
}

/// Converts a Kubernetes quantity suffix (`Ki`, `Mi`, `Gi`) to tmpfs's (`k`, `m`, `g`); other
/// forms pass through for the kernel to judge.
fn tmpfs_size(size: &str) -> String {
    for (k8s, tmpfs) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(n) = size.strip_suffix(k8s) {
            return format!("{n}{tmpfs}");
        }
    }
    size.to_string()
}

/// Where kubelet has a CSI driver mount a pod's inline volume:
/// `<kubelet dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletTarget {
    /// The pod's UID.
    pub pod_uid: String,
    /// The volume's name in the pod spec.
    pub volume: String,
}

impl KubeletTarget {
    /// The target named by `path` if it is exactly that layout under `kubelet_dir`, byte for
    /// byte: no `.` or `..`, no doubled or trailing `/`, nothing below `mount`.
    pub fn parse(kubelet_dir: &Path, path: &str) -> Option<Self> {
        let pods = kubelet_dir.join("pods");
        let rest = path.strip_prefix(pods.to_str()?)?.strip_prefix('/')?;
        let name = |s: &str| !s.is_empty() && s != "." && s != "..";
        match rest.split('/').collect::<Vec<_>>()[..] {
            [pod_uid, "volumes", "kubernetes.io~csi", volume, "mount"]
                if name(pod_uid) && name(volume) =>
            {
                Some(Self {
                    pod_uid: pod_uid.to_string(),
                    volume: volume.to_string(),
                })
            }
            _ => None,
        }
    }

    /// The target's path under `kubelet_dir`.
    pub fn path(&self, kubelet_dir: &Path) -> PathBuf {
        kubelet_dir
            .join("pods")
            .join(&self.pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(&self.volume)
            .join("mount")
    }
}

/// The mounts of this process's mount namespace, as `/proc/self/mountinfo` lists them.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    mounts: Vec<Mount>,
}

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    mount_point: String,
    fs_type: String,
    source: String,
}

impl MountTable {
    /// Where the kernel lists this process's mounts.
    pub const PROC_PATH: &'static str = "/proc/self/mountinfo";

    /// The current mount table.
    pub fn read() -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string(Self::PROC_PATH)?))
    }

    /// Parses mountinfo text. The mount point is the 5th field; the filesystem type and the
    /// source are the first two fields after the ` - ` separator; octal escapes are decoded.
    pub fn parse(info: &str) -> Self {
        let mounts = info
            .lines()
            .filter_map(|line| {
                let mount_point = line.split(' ').nth(4)?;
                let (_, after) = line.split_once(" - ")?;
                let mut after = after.split(' ');
                let fs_type = after.next()?;
                let source = after.next()?;
                Some(Mount {
                    mount_point: unescape_octal(mount_point),
                    fs_type: fs_type.to_string(),
                    source: unescape_octal(source),
                })
            })
            .collect();
        Self { mounts }
    }

    /// The mount on top of the stack at exactly `path` (the last line naming it; a mount below
    /// or above the path does not count). No symlink is resolved.
    fn top(&self, path: &Path) -> Option<&Mount> {
        self.mounts
            .iter()
            .rfind(|m| Path::new(&m.mount_point) == path)
    }

    /// Whether the mount at exactly `path` is a tmpfs this driver mounted: type `tmpfs`, source
    /// [`MOUNT_SOURCE`] (or [`LEGACY_MOUNT_SOURCE`]), on top of anything else mounted there.
    pub fn is_ours(&self, path: &Path) -> bool {
        self.top(path).is_some_and(|m| {
            m.fs_type == "tmpfs" && (m.source == MOUNT_SOURCE || m.source == LEGACY_MOUNT_SOURCE)
        })
    }
}

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
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_convert() {
        assert_eq!(tmpfs_size("16Mi"), "16m");
        assert_eq!(tmpfs_size("512Ki"), "512k");
        assert_eq!(tmpfs_size("1Gi"), "1g");
        assert_eq!(tmpfs_size("1048576"), "1048576");
    }

    #[test]
    fn mountinfo_fields_are_decoded() {
        let info = "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /var/lib/kubelet/pods/x/mount rw - tmpfs tmpfs rw\n";
        let table = MountTable::parse(info);
        assert_eq!(
            table.mounts,
            [
                Mount {
                    mount_point: "/mnt with space".into(),
                    fs_type: "ext3".into(),
                    source: "/dev/root".into(),
                },
                Mount {
                    mount_point: "/var/lib/kubelet/pods/x/mount".into(),
                    fs_type: "tmpfs".into(),
                    source: "tmpfs".into(),
                },
            ]
        );
    }

    #[test]
    fn only_our_tmpfs_on_top_of_the_exact_path_is_ours() {
        let ours = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount";
        let table = |lines: &[(&str, &str, &str)]| {
            let info: String = lines
                .iter()
                .enumerate()
                .map(|(i, (mp, fs, src))| format!("{i} 1 0:{i} / {mp} rw - {fs} {src} rw\n"))
                .collect();
            MountTable::parse(&info)
        };
        let path = Path::new(ours);
        assert!(table(&[(ours, "tmpfs", MOUNT_SOURCE)]).is_ours(path));
        // Mounted before an upgrade (an earlier version's, the upstream driver's).
        assert!(table(&[(ours, "tmpfs", LEGACY_MOUNT_SOURCE)]).is_ours(path));
        // Any other tmpfs or filesystem is not ours.
        assert!(!table(&[(ours, "tmpfs", "shm")]).is_ours(path));
        assert!(!table(&[(ours, "tmpfs", "other-driver")]).is_ours(path));
        assert!(!table(&[(ours, "ext4", MOUNT_SOURCE)]).is_ours(path));
        // Something mounted over ours hides it.
        assert!(!table(&[(ours, "tmpfs", MOUNT_SOURCE), (ours, "tmpfs", "shm")]).is_ours(path));
        assert!(
            !table(&[(ours, "tmpfs", MOUNT_SOURCE), (ours, "overlay", "overlay")]).is_ours(path)
        );
        // Above, below, or a prefix of the path does not count.
        let parent = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v";
        assert!(!table(&[(parent, "tmpfs", MOUNT_SOURCE)]).is_ours(path));
        assert!(!table(&[(ours, "tmpfs", MOUNT_SOURCE)]).is_ours(Path::new(parent)));
        assert!(!table(&[(&format!("{ours}2"), "tmpfs", MOUNT_SOURCE)]).is_ours(path));
        assert!(!MountTable::default().is_ours(path));
    }

    #[test]
    fn kubelet_targets_parse_only_in_their_exact_layout() {
        let dir = Path::new("/var/lib/kubelet");
        let good = "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/v/mount";
        let target = KubeletTarget::parse(dir, good).unwrap();
        assert_eq!(
            (target.pod_uid.as_str(), target.volume.as_str()),
            ("u-1", "v")
        );
        assert_eq!(target.path(dir), Path::new(good));
        // A trailing slash on the configured dir changes nothing.
        assert_eq!(
            KubeletTarget::parse(Path::new("/var/lib/kubelet/"), good),
            Some(target)
        );
        for bad in [
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~projected/v/mount",
            "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/v/mount/",
            "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/v/mount/x",
            "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/v",
            "/var/lib/kubelet/pods/u-1/volumes//kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/pods/../volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/../mount",
            "/var/lib/kubelet/pods/./volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/pods//volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/podsX/u-1/volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet2/pods/u-1/volumes/kubernetes.io~csi/v/mount",
            "var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/v/mount",
            "",
        ] {
            assert_eq!(KubeletTarget::parse(dir, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mount_unmount_real_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pods/uid/volumes/v/mount");
        let m = Mounter::new("1Mi");
        m.mount(&target).unwrap();
        assert!(m.is_mount_point(&target).unwrap());
        let canonical = fs::canonicalize(&target).unwrap();
        assert!(MountTable::read().unwrap().is_ours(&canonical));
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        // The size limit is enforced by the kernel.
        let big = vec![0u8; 2 * 1024 * 1024];
        assert!(fs::write(target.join("big"), &big).is_err());
        m.unmount_and_remove(&target).unwrap();
        assert!(!target.exists());
        // Idempotent.
        m.unmount_and_remove(&target).unwrap();
        assert!(!m.is_mount_point(&target).unwrap());
    }

    #[test]
    fn a_symlinked_target_never_unmounts_what_it_points_at() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("pods/uid/volumes/v/mount");
        let m = Mounter::new("1Mi");
        m.mount(&real).unwrap();
        let link = dir.path().join("pods/uid/volumes/w/mount");
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(
            m.unmount_and_remove(&link).is_err(),
            "a link is not a target"
        );
        assert!(
            m.is_mount_point(&real).unwrap(),
            "what it names stays mounted"
        );
        m.unmount_and_remove(&real).unwrap();
    }

    #[test]
    fn foreign_mounts_are_refused() {
        // `/proc` is always mounted and never a tmpfs.
        let m = Mounter::default();
        let err = m.unmount_and_remove(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, MountError::ForeignMount { .. }), "{err}");
        assert!(Path::new("/proc/self").exists());
    }
}
