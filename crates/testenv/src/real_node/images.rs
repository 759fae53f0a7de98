//! Container images without a registry: `docker save`-format tarballs from `hack/images.sh`,
//! imported into the node's containerd with `ctr -n k8s.io images import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The sandbox ("pause") image containerd is configured with (`hack/images.sh`'s `pause.tar`).
pub const PAUSE_IMAGE: &str = "localhost/secrets-store-rs/pause:3.10";

/// The tarballs every node imports at start: the sandbox image and the seed's `nginx:1.14.2`
/// stand-in.
pub(crate) const PRELOADED: &[&str] = &["pause.tar", "nginx.tar"];

/// Where `hack/images.sh` writes by default: `$SECRETS_STORE_CACHE/images`, else
/// `~/.cache/secrets-store-rs/images`.
pub fn default_images_dir() -> PathBuf {
    if let Some(cache) = std::env::var_os("SECRETS_STORE_CACHE").filter(|c| !c.is_empty()) {
        return PathBuf::from(cache).join("images");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/secrets-store-rs/images")
}

/// The repository's `hack/images.sh`.
fn images_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/images.sh")
}

/// Runs `bash hack/images.sh <dir>`, which rebuilds only images whose inputs changed (it also
/// packages the product image: see the script for how it finds the binary).
pub(crate) async fn build(dir: &Path) -> Result<(), Error> {
    let script = images_script();
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            name: script.display().to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Exited {
            name: format!("bash {} {}", script.display(), dir.display()),
            status: out.status.to_string(),
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `ctr -n k8s.io images import <tar>` against the containerd at `socket`.
pub(crate) fn import(socket: &Path, tar: &Path) -> Result<(), Error> {
    if !tar.is_file() {
        return Err(Error::io(
            tar,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "image tarball missing (build it with `bash hack/images.sh`)",
            ),
        ));
    }
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(tar)
        .output()
        .map_err(|source| Error::Spawn {
            name: "ctr".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Exited {
            name: format!("ctr images import {}", tar.display()),
            status: out.status.to_string(),
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
