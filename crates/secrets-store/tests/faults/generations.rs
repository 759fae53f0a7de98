//! The volume under rotation, seen by a reader: what each generation of the secret looks like in
//! every file, the reader that checks each file set it observes is one whole generation that
//! never goes back in time, and the leftovers of the atomic writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::SECRET;

/// The files of the volume: the raw JSON plus three jmesPath aliases of it.
pub const FILES: [&str; 4] = [SECRET, "gen", "left", "right"];

/// A class mounting the secret and three aliases of its fields, so that a set of files mixing
/// two generations is detectable.
pub const CLASS: &str = r#"
metadata: {name: generations}
spec:
  provider: aws
  parameters:
    objects: |
      - objectName: CSI-driver-test-secret
        objectType: secretsmanager
        jmesPath:
          - {path: gen, objectAlias: gen}
          - {path: left, objectAlias: left}
          - {path: right, objectAlias: right}
"#;

/// The secret value of generation `n`.
pub fn value(n: u64) -> String {
    format!(r#"{{"gen":{n},"left":"left-{n}","right":"right-{n}"}}"#)
}

/// The generation a file's content belongs to, or `None` if the content is torn or foreign.
fn generation_of(file: &str, content: &str) -> Option<u64> {
    let n = match file {
        "gen" => content.parse().ok()?,
        "left" => content.strip_prefix("left-")?.parse().ok()?,
        "right" => content.strip_prefix("right-")?.parse().ok()?,
        _ => {
            let v: serde_json::Value = serde_json::from_str(content).ok()?;
            v.get("gen")?.as_u64()?
        }
    };
    (content == expected(file, n)).then_some(n)
}

/// What `file` holds at generation `n`.
pub fn expected(file: &str, n: u64) -> String {
    match file {
        "gen" => n.to_string(),
        "left" => format!("left-{n}"),
        "right" => format!("right-{n}"),
        _ => value(n),
    }
}

/// What the reader saw.
#[derive(Default, Debug)]
pub struct ReaderReport {
    /// Complete file sets read through one resolution of `..data`.
    pub sets: u64,
    /// Visible files read one by one.
    pub files: u64,
    /// Sets abandoned because the payload dir was swapped away mid-read (not an error).
    pub retried: u64,
    /// Torn, foreign, mixed or regressing observations, described.
    pub bad: Vec<String>,
}

/// Re-reads the volume until `stop`: each visible file must be one complete generation, no
/// file may go back in time, and the files under one `..data` resolution must be one generation.
pub fn reader(target: PathBuf, stop: Arc<AtomicBool>, newest: Arc<AtomicU64>) -> ReaderReport {
    let mut report = ReaderReport::default();
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        for file in FILES {
            match std::fs::read_to_string(target.join(file)) {
                Ok(content) => {
                    report.files += 1;
                    match generation_of(file, &content) {
                        Some(n) => {
                            let prev = last.insert(file, n).unwrap_or(0);
                            if n < prev {
                                report
                                    .bad
                                    .push(format!("{file}: went back from {prev} to {n}"));
                            }
                            if n > newest.load(Ordering::SeqCst) {
                                report
                                    .bad
                                    .push(format!("{file}: generation {n} not put yet"));
                            }
                        }
                        None => report.bad.push(format!(
                            "{file}: torn or foreign content ({} bytes)",
                            content.len()
                        )),
                    }
                }
                Err(e) => report.bad.push(format!("{file}: {e}")),
            }
        }
        match read_set(&target) {
            Ok(Some(gens)) => {
                report.sets += 1;
                let distinct: std::collections::BTreeSet<_> = gens.values().collect();
                if distinct.len() != 1 {
                    report.bad.push(format!("mixed set {gens:?}"));
                }
            }
            Ok(None) => report.retried += 1,
            Err(e) => report.bad.push(e),
        }
        // Leave the 2 CPUs to the agent and the cluster between passes; a pass still lands
        // thousands of times per rotation.
        std::thread::sleep(Duration::from_micros(200));
    }
    report
}

/// Reads every file under one resolution of `..data`: generation per file, `None` when the
/// payload dir vanished mid-read (swapped and removed), an error for torn content.
fn read_set(target: &Path) -> Result<Option<BTreeMap<&'static str, u64>>, String> {
    let dir = match std::fs::read_link(target.join("..data")) {
        Ok(d) => target.join(d),
        Err(e) => return Err(format!("..data: {e}")),
    };
    let mut gens = BTreeMap::new();
    for file in FILES {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(content) => match generation_of(file, &content) {
                Some(n) => {
                    gens.insert(file, n);
                }
                None => return Err(format!("{file} under ..data: torn content")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{file} under ..data: {e}")),
        }
    }
    Ok(Some(gens))
}

/// The `..<timestamp>` payload dirs of a target other than the one `..data` points at, plus a
/// leftover `..data_tmp`.
pub fn orphans(target: &Path) -> Vec<String> {
    let current = std::fs::read_link(target.join("..data"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data" && *n != current)
        .collect()
}
