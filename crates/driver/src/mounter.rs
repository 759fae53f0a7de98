//! tmpfs mounts at kubelet's target paths.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Default tmpfs size: secrets are ≤64 KiB each, so this fits well over a hundred objects.
pub const DEFAULT_TMPFS_SIZE: &str = "16Mi";

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
    /// unmounted (a misdirected call must not detach a host filesystem).
    pub fn is_mount_point(&self, path: &Path) -> Result<bool, MountError> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        // The last matching line is the top of a stack of mounts on the same point.
        let fs_type = mount_points(&info)
            .filter(|(mp, _)| Path::new(mp) == canonical || Path::new(mp) == path)
            .map(|(_, fs)| fs)
            .last();
        match fs_type {
            None => Ok(false),
            Some(fs) if fs == "tmpfs" => Ok(true),
            Some(fs) => Err(MountError::ForeignMount {
                path: path.to_path_buf(),
                fs_type: fs,
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
        let data = format!("mode=0755,size={}", self.size);
        nix::mount::mount(
            Some("tmpfs"),
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
            match nix::mount::umount2(target, MntFlags::empty()) {
                Ok(()) => {}
                Err(nix::Error::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
                    .map_err(nix_err("lazy unmount", target))?,
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

/// (mount point, filesystem type) of each mountinfo line, with octal escapes decoded. The mount
/// point is the 5th field; the type is the first field after the ` - ` separator.
fn mount_points(info: &str) -> impl Iterator<Item = (String, String)> + '_ {
    info.lines().filter_map(|line| {
        let mount_point = line.split(' ').nth(4)?;
        let (_, after) = line.split_once(" - ")?;
        let fs_type = after.split(' ').next()?;
        Some((unescape_octal(mount_point), fs_type.to_string()))
    })
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
        let mps: Vec<_> = mount_points(info).collect();
        assert_eq!(
            mps,
            [
                ("/mnt with space".to_string(), "ext3".to_string()),
                (
                    "/var/lib/kubelet/pods/x/mount".to_string(),
                    "tmpfs".to_string()
                )
            ]
        );
    }

    #[test]
    fn mount_unmount_real_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pods/uid/volumes/v/mount");
        let m = Mounter::new("1Mi");
        m.mount(&target).unwrap();
        assert!(m.is_mount_point(&target).unwrap());
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
    fn foreign_mounts_are_refused() {
        // `/proc` is always mounted and never a tmpfs.
        let m = Mounter::default();
        let err = m.unmount_and_remove(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, MountError::ForeignMount { .. }), "{err}");
        assert!(Path::new("/proc/self").exists());
    }
}
