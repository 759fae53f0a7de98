//! Writes a volume's files with kubelet `AtomicWriter` semantics.
//!
//! Layout of a volume written by [`AtomicWriter`]:
//! ```text
//! <target>/..2026_01_02_03_04_05.123456789/<files>   the current payload
//! <target>/..data -> ..2026_01_02_03_04_05.123456789  swapped by rename(2), atomically
//! <target>/<top-level name> -> ..data/<top-level name>
//! ```
//! A reader that resolves `..data` once sees one complete payload; a reader that opens visible
//! names one by one sees each file complete, never partially written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrets_store_provider::{FileMode, PathError, ProviderFile, conflicting_path, validate_path};

/// Name of the symlink pointing at the current payload directory.
pub const DATA_DIR_NAME: &str = "..data";
/// Name of the temporary symlink renamed over [`DATA_DIR_NAME`].
pub const DATA_DIR_TMP_NAME: &str = "..data_tmp";

/// Why writing a payload failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A provider-supplied path broke a rule; nothing was written.
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    /// A file mode has bits beyond `0o7777`.
    #[error("file {path:?} has invalid mode {mode:#o}")]
    InvalidMode {
        /// The file.
        path: String,
        /// The offending mode.
        mode: FileMode,
    },
    /// A filesystem operation failed (the message names the operation and the path, never content).
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`AtomicWriter::write`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The payload equals what is on disk; nothing was touched.
    Unchanged,
    /// A new payload directory was written and swapped in.
    Written {
        /// The new payload directory's name (`..<timestamp>`).
        dir: String,
    },
}

/// Writes payloads into one target directory.
#[derive(Clone, Debug)]
pub struct AtomicWriter {
    target: PathBuf,
}

impl AtomicWriter {
    /// A writer for the volume at `target` (the directory must exist).
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
        }
    }

    /// Validates every path of `files` (the provider path contract, and no two files colliding)
    /// and every mode without touching the disk.
    pub fn validate(files: &[ProviderFile]) -> Result<(), WriteError> {
        let mut seen: BTreeMap<&str, ()> = BTreeMap::new();
        for f in files {
            validate_path(&f.path)?;
            if f.mode & !0o7777 != 0 {
                return Err(WriteError::InvalidMode {
                    path: f.path.clone(),
                    mode: f.mode,
                });
            }
            // The same path twice, or a file that is also a directory of another ("a", "a/b"):
            // named by the shorter path, the one that would have to be both.
            if let Some((other, ())) = conflicting_path(&seen, &f.path) {
                let both = if other.len() < f.path.len() {
                    *other
                } else {
                    f.path.as_str()
                };
                return Err(PathError::Conflict(both.to_owned()).into());
            }
            seen.insert(f.path.as_str(), ());
        }
        Ok(())
    }

    /// Makes the target contain exactly `files`: validates, skips the write when nothing changed,
    /// otherwise writes a new payload dir, swaps `..data`, and removes stale names and the old dir.
    pub fn write(&self, files: &[ProviderFile]) -> Result<WriteOutcome, WriteError> {
        Self::validate(files)?;
        let old_dir = self.current_dir()?;
        self.remove_orphaned_payloads(old_dir.as_deref())?;
        if let Some(old) = &old_dir
            && self.payload_matches(old, files)?
        {
            return Ok(WriteOutcome::Unchanged);
        }
        let old_names = match &old_dir {
            Some(old) => top_level_names(&self.target.join(old))?,
            None => BTreeSet::new(),
        };

        let new_dir = self.create_payload_dir()?;
        let new_path = self.target.join(&new_dir);
        if let Err(e) = write_payload(&new_path, files) {
            let _ = fs::remove_dir_all(&new_path);
            return Err(e);
        }

        let tmp = self.target.join(DATA_DIR_TMP_NAME);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale", &tmp)(e)),
        }
        std::os::unix::fs::symlink(&new_dir, &tmp).map_err(io_err("symlink", &tmp))?;
        let data = self.target.join(DATA_DIR_NAME);
        // rename(2) over the old symlink is the atomic switch readers rely on.
        fs::rename(&tmp, &data).map_err(io_err("rename", &data))?;

        let new_names: BTreeSet<String> = files
            .iter()
            .map(|f| f.path.split('/').next().unwrap_or_default().to_string())
            .collect();
        for name in &new_names {
            let link = self.target.join(name);
            let want = Path::new(DATA_DIR_NAME).join(name);
            match fs::read_link(&link) {
                Ok(existing) if existing == want => continue,
                Ok(_) => fs::remove_file(&link).map_err(io_err("remove", &link))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Something that is not a symlink sits on a visible name (a provider that wrote
                // files itself earlier): replace it so the volume shows the new payload.
                Err(_) => remove_any(&link)?,
            }
            std::os::unix::fs::symlink(&want, &link).map_err(io_err("symlink", &link))?;
        }
        for stale in old_names.difference(&new_names) {
            let link = self.target.join(stale);
            remove_any(&link)?;
        }
        if let Some(old) = old_dir {
            let old_path = self.target.join(old);
            fs::remove_dir_all(&old_path).map_err(io_err("remove old payload", &old_path))?;
        }
        Ok(WriteOutcome::Written { dir: new_dir })
    }

    /// The payload directory `..data` points at, if any. Only a payload name of ours counts: one
    /// `..`-prefixed entry of the volume itself. A `..data` planted by someone else (a provider
    /// that writes into the volume itself can create one) pointing elsewhere, `/etc` say, is
    /// ignored, so the writer never reads, compares or removes anything outside the volume; the
    /// next swap replaces the link.
    pub fn current_dir(&self) -> Result<Option<String>, WriteError> {
        let data = self.target.join(DATA_DIR_NAME);
        match fs::read_link(&data) {
            Ok(p) => Ok(p
                .to_str()
                .filter(|name| is_payload_name(name))
                .map(str::to_string)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("readlink", &data)(e)),
        }
    }

    /// Removes payload dirs nothing points at: a process killed between creating a payload dir
    /// and the `..data` swap leaves one behind. Provider paths never start with `..`, so every
    /// `..` entry other than `..data`, `..data_tmp` and the current payload is such a leftover.
    fn remove_orphaned_payloads(&self, current: Option<&str>) -> Result<(), WriteError> {
        let entries = match fs::read_dir(&self.target) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read dir", &self.target)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read dir", &self.target))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..")
                || name == DATA_DIR_NAME
                || name == DATA_DIR_TMP_NAME
                || Some(name.as_str()) == current
            {
                continue;
            }
            remove_any(&entry.path())?;
        }
        Ok(())
    }

    fn payload_matches(&self, old: &str, files: &[ProviderFile]) -> Result<bool, WriteError> {
        let dir = self.target.join(old);
        let on_disk = list_files(&dir)?;
        if on_disk.len() != files.len() {
            return Ok(false);
        }
        for f in files {
            let Some(mode) = on_disk.get(&f.path) else {
                return Ok(false);
            };
            if *mode != f.mode {
                return Ok(false);
            }
            let path = dir.join(&f.path);
            let current = fs::read(&path).map_err(io_err("read", &path))?;
            // Content comparison stays in memory; neither side is logged.
            if current != f.contents.expose() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn create_payload_dir(&self) -> Result<String, WriteError> {
        let stamp = chrono::Utc::now()
            .format("..%Y_%m_%d_%H_%M_%S.%9f")
            .to_string();
        for attempt in 0u32.. {
            let name = if attempt == 0 {
                stamp.clone()
            } else {
                format!("{stamp}{attempt}")
            };
            let path = self.target.join(&name);
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &path))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("mkdir", &path)(e)),
            }
        }
        unreachable!("the attempt counter is unbounded")
    }
}

fn write_payload(dir: &Path, files: &[ProviderFile]) -> Result<(), WriteError> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("mkdir", parent))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(f.contents.expose())
            .map_err(io_err("write", &path))?;
        // The process umask may have cleared bits the provider asked for.
        file.set_permissions(fs::Permissions::from_mode(f.mode))
            .map_err(io_err("chmod", &path))?;
    }
    Ok(())
}

/// Every regular file below `dir`, relative path → mode bits.
fn list_files(dir: &Path) -> Result<BTreeMap<String, FileMode>, WriteError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in fs::read_dir(&path).map_err(io_err("read dir", &path))? {
            let entry = entry.map_err(io_err("read dir", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel_name = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            if meta.is_dir() {
                stack.push((entry.path(), rel_name));
            } else {
                out.insert(rel_name, meta.permissions().mode() & 0o7777);
            }
        }
    }
    Ok(out)
}

fn top_level_names(dir: &Path) -> Result<BTreeSet<String>, WriteError> {
    let mut out = BTreeSet::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err("read dir", dir))?;
                out.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read dir", dir)(e)),
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Result<(), WriteError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("remove", path))
    } else {
        fs::remove_file(path).map_err(io_err("remove", path))
    }
}

#[cfg(test)]
mod tests;

/// Whether `name` can be one of our payload directories: a single `..`-prefixed path element
/// that is none of the writer's own links.
fn is_payload_name(name: &str) -> bool {
    name.starts_with("..")
        && name.len() > 2
        && !name.contains('/')
        && name != DATA_DIR_NAME
        && name != DATA_DIR_TMP_NAME
}
