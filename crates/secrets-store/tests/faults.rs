//! Fault suites of the hardening issue: the real node agent is SIGKILLed and restarted at random
//! points while a secret rotates and a reader checks every file set it observes.
//!
//! Counts are short by default (`make test`); `make soak` runs the same tests with bigger counts
//! (`SOAK_ROTATIONS`).

mod common;
mod e2e;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use e2e::{AgentOptions, World, eventually};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "CSI-driver-test-secret";
/// The files of the volume: the raw JSON plus three jmesPath aliases of it.
const FILES: [&str; 4] = [SECRET, "gen", "left", "right"];

/// A class mounting the secret and three aliases of its fields, so that a set of files mixing
/// two generations is detectable.
const CLASS: &str = r#"
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
fn value(n: u64) -> String {
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

fn expected(file: &str, n: u64) -> String {
    match file {
        "gen" => n.to_string(),
        "left" => format!("left-{n}"),
        "right" => format!("right-{n}"),
        _ => value(n),
    }
}

/// What the reader saw.
#[derive(Default, Debug)]
struct ReaderReport {
    /// Complete file sets read through one resolution of `..data`.
    sets: u64,
    /// Visible files read one by one.
    files: u64,
    /// Sets abandoned because the payload dir was swapped away mid-read (not an error).
    retried: u64,
    /// Torn, foreign, mixed or regressing observations, described.
    bad: Vec<String>,
}

/// Re-reads the volume until `stop`: each visible file must be one complete generation, no
/// file may go back in time, and the files under one `..data` resolution must be one generation.
fn reader(target: PathBuf, stop: Arc<AtomicBool>, newest: Arc<AtomicU64>) -> ReaderReport {
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

/// A small deterministic PRNG (xorshift), seeded from the clock; the seed is printed so a failing
/// schedule can be replayed with `FAULTS_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("FAULTS_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn count_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `..<timestamp>` payload dirs of a target other than the one `..data` points at, plus a
/// leftover `..data_tmp`.
fn orphans(target: &Path) -> Vec<String> {
    let current = std::fs::read_link(target.join("..data"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data" && *n != current)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_rotation_never_tears_a_read_nor_leaks_a_mount() {
    let rotations = count_from_env("SOAK_ROTATIONS", 15);
    let mut rng = Rng::from_env();
    let mut world = World::start("kill", "0s", Duration::from_millis(200)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let opts = AgentOptions {
        poll: "0s",
        aws_endpoint: world.cluster.moto().endpoint(),
        metrics_addr: String::new(),
        env: vec![],
    };
    let role = world.seed_aws(&value(0)).await;
    world.apply_service_account(&role).await;
    world.apply_class(CLASS).await;
    world.class_pod("reader", "generations").await;
    let pod = world.running_pods(1).await.remove(0);
    let target = world.target(&pod);
    assert_eq!(world.file(&pod, "gen").as_deref(), Some("0"));

    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(0));
    let reader_thread = {
        let (target, stop, newest) = (target.clone(), stop.clone(), newest.clone());
        std::thread::spawn(move || reader(target, stop, newest))
    };

    let sm = world.cluster.moto().sm_client(&world.account);
    let mut kills = 0u64;
    for n in 1..=rotations {
        // Publish the generation before the value exists in AWS, so the reader's "not put yet"
        // check never races the put.
        newest.store(n, Ordering::SeqCst);
        sm.put_secret_value()
            .secret_id(SECRET)
            .secret_string(value(n))
            .send()
            .await
            .expect("PutSecretValue");
        // Kill in about half of the rotations, at a random point of the next republish cycles
        // (before, during or after the fetch and the write).
        if rng.below(2) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
            world.agent.kill_hard();
            kills += 1;
            world.agent = world.start_agent(&opts);
        }
        let want = n.to_string();
        eventually(WAIT, &format!("generation {n} mounted"), || async {
            (world.file(&pod, "gen").as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
    }

    // A last crash and restart: the mount is still served and republish still rotates.
    world.agent.kill_hard();
    world.agent = world.start_agent(&opts);
    let last = rotations + 1;
    newest.store(last, Ordering::SeqCst);
    sm.put_secret_value()
        .secret_id(SECRET)
        .secret_string(value(last))
        .send()
        .await
        .expect("PutSecretValue");
    eventually(WAIT, "last generation after the last restart", || async {
        FILES
            .iter()
            .all(|f| world.file(&pod, f) == Some(expected(f, last)))
            .then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let report = reader_thread.join().expect("reader thread");
    eprintln!("{rotations} rotations, {kills} kills, reader: {report:?}");
    assert!(report.bad.is_empty(), "bad reads: {:?}", report.bad);
    assert!(
        report.sets > 0 && report.files > 0,
        "the reader read nothing"
    );
    let left = orphans(&target);
    assert!(
        left.is_empty(),
        "orphaned payload dirs in {target:?}: {left:?}"
    );

    world.delete_pod("reader").await;
    assert!(!target.exists(), "target {target:?} left behind");
    let mounts = world.mounts_under_root();
    assert!(mounts.is_empty(), "orphaned mounts: {mounts:?}");
}
