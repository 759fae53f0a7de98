//! Locating the pinned third-party binaries built by `hack/tools.sh`.

use std::path::PathBuf;

/// Env var naming the directory with the tool symlinks.
pub const TOOLS_BIN_ENV: &str = "SECRETS_STORE_TOOLS_BIN";

/// The directory holding the tool symlinks: `$SECRETS_STORE_TOOLS_BIN`, else
/// `$HOME/.cache/secrets-store-rs/bin`.
pub fn tools_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(TOOLS_BIN_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/secrets-store-rs/bin")
}

/// Path of the tool `name`, if it is installed.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = tools_bin_dir().join(name);
    // `exists` follows the symlink, so a dangling link counts as missing.
    path.exists().then_some(path)
}

/// Path of the tool `name`; panics with the command that installs it when it is missing.
///
/// Tests never skip on a missing tool: in CI that would hide a broken install step.
pub fn tool(name: &str) -> PathBuf {
    require(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the tool `name`, or an error naming the command that installs it.
pub fn require(name: &str) -> Result<PathBuf, crate::Error> {
    find_tool(name).ok_or_else(|| crate::Error::MissingTool {
        name: name.to_string(),
        dir: tools_bin_dir(),
    })
}
