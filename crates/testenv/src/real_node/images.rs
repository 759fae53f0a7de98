//! Container images without a registry: `docker save`-format tarballs from `hack/images.sh`,
//! imported into the node's containerd with `ctr -n k8s.io images import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The sandbox ("pause") image containerd is configured with (`hack/images.sh`'s `pause.tar`).
pub const PAUSE_IMAGE: &str = "localhost/secrets-store-rs/pause:3.10";

/// The images every node imports at start (`<name>.tar`): the sandbox image and the seed's
/// `nginx:1.14.2` stand-in.
pub(crate) const PRELOADED: &[&str] = &["pause", "nginx"];

/// The node agent's image as `hack/images.sh` tags it (`secrets-store.tar`).
pub const AGENT_IMAGE: &str = "localhost/secrets-store-rs:dev";

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

/// Runs `bash hack/images.sh <dir> <names>`, which rebuilds only images whose inputs changed.
/// `agent_binary` is the `secrets-store` binary to package when `names` holds `secrets-store`.
pub(crate) async fn build(
    dir: &Path,
    names: &[&str],
    agent_binary: Option<&Path>,
) -> Result<(), Error> {
    let script = images_script();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script).arg(dir).args(names);
    if let Some(bin) = agent_binary {
        cmd.env("SECRETS_STORE_BIN", bin);
    }
    let out = cmd.output().await.map_err(|source| Error::Spawn {
        name: script.display().to_string(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Exited {
            name: format!(
                "bash {} {} {}",
                script.display(),
                dir.display(),
                names.join(" ")
            ),
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
