//! The one way our unix sockets come into being.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Creating, securing or publishing the socket failed.
    #[error("cannot create the socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Binds a unix socket at `path` with mode 0600, replacing a stale socket left by an earlier run
/// (never any other kind of file) and creating the parent directory if needed.
///
/// The socket is bound inside a fresh 0700 directory next to `path`, restricted, then renamed into
/// place: at no moment can anyone but the owner connect to it, whatever the umask.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Socket {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(_) => return Err(BindError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let file_name = path.file_name().ok_or_else(|| {
        io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path has no file name",
        ))
    })?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(file_name);
    staging_name.push(format!(".{}.tmp", std::process::id()));
    let staging_dir = parent.join(staging_name);
    let _ = std::fs::remove_dir_all(&staging_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging_dir)
        .map_err(io)?;
    let staging = staging_dir.join("s");
    let result = bind_in(&staging_dir, &staging).and_then(|listener| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staging);
    let _ = std::fs::remove_dir(&staging_dir);
    result.map_err(io)
}

/// The longest path `bind(2)` takes (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds `socket`, a file `s` in `dir`. The staging path is longer than the final one, so when it
/// does not fit in `sun_path` the socket is bound through the directory's `/proc/self/fd` link.
fn bind_in(dir: &Path, socket: &Path) -> io::Result<UnixListener> {
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixListener::bind(socket);
    }
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/s", dir.as_raw_fd()));
    UnixListener::bind(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn binds_0600_and_replaces_only_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let first = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(first);
        bind(&path).expect("a stale socket is replaced");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotASocket(_))));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging directory is left behind");
    }

    #[tokio::test]
    async fn a_path_near_the_sun_path_limit_still_binds() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_string_lossy().len() + 1;
        let name = "r".repeat(MAX_SOCKET_PATH - base - 5) + ".sock";
        let path = dir.path().join(name);
        assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
        let _listener = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let client = std::os::unix::net::UnixStream::connect(&path);
        assert!(client.is_ok(), "the renamed socket accepts connections");
    }
}
