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

/// What the fault proxy does with the next connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum ProxyMode {
    /// Forward to moto.
    Forward = 0,
    /// Accept and close at once: AWS is unreachable.
    Refuse = 1,
    /// Answer every other JSON-protocol request (Secrets Manager) with a ThrottlingException.
    ThrottleEveryOther = 2,
}

/// A loopback TCP proxy in front of moto that this test alone uses, so its faults touch no
/// other test. moto answers with `Connection: close`, so one connection carries one request.
struct FaultProxy {
    addr: std::net::SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    /// Connections accepted (= requests attempted).
    connections: Arc<AtomicU64>,
    /// Requests answered with a ThrottlingException.
    throttled: Arc<AtomicU64>,
    /// Requests forwarded to moto.
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: &str) -> Self {
        let upstream: std::net::SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("moto endpoint is http://IP:PORT");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(ProxyMode::Forward as u8));
        let connections = Arc::new(AtomicU64::new(0));
        let throttled = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let json_requests = Arc::new(AtomicU64::new(0));
        let task = {
            let (mode, connections, throttled, forwarded) = (
                mode.clone(),
                connections.clone(),
                throttled.clone(),
                forwarded.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let mode = mode.load(Ordering::SeqCst);
                    if mode == ProxyMode::Refuse as u8 {
                        drop(client);
                        continue;
                    }
                    let throttle = mode == ProxyMode::ThrottleEveryOther as u8;
                    let (throttled, forwarded, json_requests) =
                        (throttled.clone(), forwarded.clone(), json_requests.clone());
                    tokio::spawn(async move {
                        let _ = serve(
                            client,
                            upstream,
                            throttle,
                            &throttled,
                            &forwarded,
                            &json_requests,
                        )
                        .await;
                    });
                }
            })
        };
        Self {
            addr,
            mode,
            connections,
            throttled,
            forwarded,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, mode: ProxyMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: read it whole, then either answer a ThrottlingException or forward it and relay
/// moto's answer until moto closes.
async fn serve(
    mut client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    throttle: bool,
    throttled: &AtomicU64,
    forwarded: &AtomicU64,
    json_requests: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let header_end = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < header_end + length {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    // Only JSON-protocol calls (Secrets Manager) are throttled; STS (query protocol) passes.
    if throttle
        && head.contains("x-amz-target:")
        && json_requests
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(2)
    {
        throttled.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n\
             x-amzn-ErrorType: ThrottlingException\r\nx-amzn-RequestId: fault-proxy\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    }
    forwarded.fetch_add(1, Ordering::SeqCst);
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    tokio::io::copy(&mut server, &mut client).await?;
    client.shutdown().await
}

/// How many publishes kubelet's backoff (`initial` doubling to `max`) allows in `window`, plus the
/// one in flight when it starts.
fn kubelet_attempts(window: Duration, initial: Duration, max: Duration) -> u64 {
    let (mut spent, mut backoff, mut n) = (Duration::ZERO, initial, 1);
    while spent < window {
        spent += backoff;
        backoff = (backoff * 2).min(max);
        n += 1;
    }
    n
}

/// The seed's class (the secret into `foosecret`).
fn seed_class() -> String {
    e2e::seed_file("secretproviderclass.yaml")
}

/// Restarts the world's agent with AWS behind `proxy` (rotation polling every `poll`).
fn behind_proxy(world: &mut World, proxy: &FaultProxy, poll: &'static str) {
    world.agent.stop();
    world.agent = world.start_agent(&AgentOptions {
        poll,
        aws_endpoint: proxy.endpoint(),
        metrics_addr: String::new(),
        env: vec![],
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_outage_keeps_last_good_content_and_bounds_calls() {
    let outage = Duration::from_secs(count_from_env("SOAK_OUTAGE_SECS", 10));
    let republish = Duration::from_millis(500);
    let mut world = World::start("outage", "1s", republish).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let proxy = FaultProxy::start(&world.cluster.moto().endpoint()).await;
    behind_proxy(&mut world, &proxy, "1s");
    let role = world.seed_aws("before").await;
    world.apply_service_account(&role).await;
    world.apply_class(&seed_class()).await;
    world.bare_pod("first").await;
    let first = world.running_pods(1).await.remove(0);
    assert_eq!(world.file(&first, SECRET).as_deref(), Some("before"));
    eventually(WAIT, "synced Secret", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("before"))
        .then_some(())
    })
    .await;

    // AWS goes away; the value changes behind it.
    proxy.set(ProxyMode::Refuse);
    let started = std::time::Instant::now();
    let before = proxy.connections.load(Ordering::SeqCst);
    world.rotate("after").await;
    let warnings = eventually(WAIT, "SecretRotationFailed Event", || async {
        let m = world.pod_events("first", "SecretRotationFailed").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(warnings[0].contains(SECRET), "{warnings:?}");
    world.bare_pod("second").await;
    let failure = eventually(WAIT, "FailedMount of the new pod", || async {
        world
            .kubelet
            .events()
            .into_iter()
            .find(|e| e.pod == "second" && e.reason == "FailedMount")
            .map(|e| e.message)
    })
    .await;
    // The kubelet-facing error says what failed and where, not just "failed".
    assert!(
        failure.contains(SECRET) || failure.to_lowercase().contains("secretsmanager"),
        "unclear mount error: {failure}"
    );
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    // Last good content stays, in the file and in the synced Secret.
    assert_eq!(world.file(&first, SECRET).as_deref(), Some("before"));
    assert_eq!(
        world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("before")
    );
    let during = proxy.connections.load(Ordering::SeqCst) - before;
    let window = started.elapsed();
    proxy.set(ProxyMode::Forward);

    // No retry storm: the first pod republishes every `republish` (each due, as its last good
    // fetch ages past the 1 s poll), the second pod retries on kubelet's backoff; each publish
    // makes at most 4 attempts (the provider's max) of at most 2 calls (STS, Secrets Manager).
    let republishes = window.as_millis() as u64 / republish.as_millis() as u64 + 1;
    let mounts = kubelet_attempts(window, Duration::from_millis(100), Duration::from_secs(2));
    let bound = (republishes + mounts) * 4 * 2;
    eprintln!(
        "outage {window:?}: {during} connection attempts (bound {bound}: {republishes} republishes, {mounts} mounts)"
    );
    assert!(during > 0, "the agent never tried AWS during the outage");
    assert!(during <= bound, "retry storm: {during} attempts > {bound}");

    // AWS is back: the new pod mounts, the first pod and the Secret rotate.
    let pods = world.running_pods(2).await;
    let second = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("second"))
        .unwrap();
    assert_eq!(world.file(second, SECRET).as_deref(), Some("after"));
    eventually(WAIT, "first pod rotated after the outage", || async {
        (world.file(&first, SECRET).as_deref() == Some("after")).then_some(())
    })
    .await;
    eventually(WAIT, "Secret rotated after the outage", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("after"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_is_retried_with_backoff_within_the_mount() {
    let mut world = World::start("throttle", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let proxy = FaultProxy::start(&world.cluster.moto().endpoint()).await;
    behind_proxy(&mut world, &proxy, "1m");
    let role = world.seed_aws("unused").await;
    world.apply_service_account(&role).await;
    proxy.set(ProxyMode::ThrottleEveryOther);
    let sm = world.cluster.moto().sm_client(&world.account);
    let pods = 3;
    for i in 0..pods {
        let name = format!("throttled-{i}");
        sm.create_secret()
            .name(&name)
            .secret_string(format!("value-{i}"))
            .send()
            .await
            .unwrap();
        world
            .apply_class(&format!(
                "metadata: {{name: {name}}}\nspec:\n  provider: aws\n  parameters:\n    objects: |\n      - {{objectName: {name}, objectType: secretsmanager}}\n"
            ))
            .await;
        // One mount at a time, so the every-other pattern is the only thing each mount sees.
        world.class_pod(&name, &name).await;
        let pod = world.running_pods(i + 1).await;
        let pod = pod
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap();
        assert_eq!(world.file(pod, &name), Some(format!("value-{i}")));
    }
    let failed: Vec<_> = world
        .kubelet
        .events()
        .into_iter()
        .filter(|e| e.reason == "FailedMount")
        .map(|e| e.message)
        .collect();
    assert!(
        failed.is_empty(),
        "a throttled call failed a mount a retry could have saved: {failed:?}"
    );
    let throttled = proxy.throttled.load(Ordering::SeqCst);
    let forwarded = proxy.forwarded.load(Ordering::SeqCst);
    eprintln!("throttled {throttled}, forwarded {forwarded}");
    assert!(
        throttled >= pods as u64,
        "the proxy throttled only {throttled} calls"
    );
    assert!(forwarded >= throttled, "no retry reached moto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_interrupted_by_a_crash_leaves_nothing_behind_after_the_next_write() {
    let mut world = World::start("crash-dir", "0s", Duration::from_millis(300)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws(&value(0)).await;
    world.apply_service_account(&role).await;
    world.apply_class(CLASS).await;
    world.class_pod("crashed", "generations").await;
    let pod = world.running_pods(1).await.remove(0);
    let target = world.target(&pod);
    // What a SIGKILL inside the writer leaves: a payload dir with a half-written file (killed
    // between mkdir and the `..data` swap) and a `..data_tmp` symlink to it (killed just before
    // the rename). The random kills above rarely land in that window; here it is exact.
    world.agent.kill_hard();
    let stale = "..2020_01_01_00_00_00.000000001";
    std::fs::create_dir(target.join(stale)).unwrap();
    std::fs::write(target.join(stale).join("gen"), "9").unwrap();
    std::os::unix::fs::symlink(stale, target.join("..data_tmp")).unwrap();
    world.agent = world.start_agent(&AgentOptions {
        poll: "0s",
        aws_endpoint: world.cluster.moto().endpoint(),
        metrics_addr: String::new(),
        env: vec![],
    });
    world
        .cluster
        .moto()
        .sm_client(&world.account)
        .put_secret_value()
        .secret_id(SECRET)
        .secret_string(value(1))
        .send()
        .await
        .unwrap();
    eventually(WAIT, "generation 1 after the restart", || async {
        (world.file(&pod, "gen").as_deref() == Some("1")).then_some(())
    })
    .await;
    let left = orphans(&target);
    assert!(left.is_empty(), "left behind in {target:?}: {left:?}");
    world.delete_pod("crashed").await;
    assert!(world.mounts_under_root().is_empty());
}
