//! Issue 13, items 2 and 3, played by a hostile tenant against a real apiserver, moto, the real
//! agent and the kubelet simulator: no class input crashes the agent or makes it spend unbounded
//! memory or CPU.
//!
//! Each test creates one hostile SecretProviderClass (a 100,000-`!` jmesPath, 4,000 `!`, 2,047
//! nested parentheses, the `[@,@][]` array-doubling expression, a YAML alias bomb in `objects`)
//! and a pod using it, and requires: a Warning Event from the agent and kubelet's FailedMount
//! that name the object and the limit or rule (gRPC `InvalidArgument`), nothing mounted, the
//! agent process still alive, its peak memory small, and a good volume served afterwards by
//! the same process. The agent runs with its address space capped a little above its size at
//! start, so a regression aborts the agent (and fails the test) instead of taking the machine's
//! memory. The same classes through `secrets-store check` exit 1 with the same messages.

mod common;
mod e2e;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use secrets_store_api::crd::SecretProviderClass;

use e2e::{SEED_SECRET, World, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// How much the agent's address space may grow past its size at start.
const ADDRESS_SPACE_HEADROOM: u64 = 2 << 30;
/// The agent's peak resident memory must stay under this, hostile classes included.
const PEAK_RSS_LIMIT_KB: u64 = 512 * 1024;
/// The seed secret's value here: JSON, so jmesPath entries have something to evaluate.
const SECRET_JSON: &str = r#"{"username":"admin","password":"correct horse"}"#;

/// One hostile `objects` value and what the errors must say about it.
struct Hostile {
    /// Class and pod name.
    name: &'static str,
    /// The `objects` parameter.
    objects: String,
    /// Every one of these must appear in the agent's Event and kubelet's FailedMount.
    needles: Vec<String>,
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// An `objects` list with the seed secret and one jmesPath entry of `path`.
fn with_jmes_path(path: &str) -> String {
    format!(
        "- objectName: {SEED_SECRET}\n  objectType: secretsmanager\n  jmesPath:\n    - path: '{path}'\n      objectAlias: picked\n"
    )
}

/// The 100,000-`!` expression of the issue: over the 64 KiB `objects` cap before any parsing.
fn bang_100k() -> Hostile {
    let objects = with_jmes_path(&"!".repeat(100_000));
    Hostile {
        name: "bang-100k",
        needles: vec![format!(
            "parameter objects: is {} bytes; the limit is 65536 bytes",
            objects.len()
        )],
        objects,
    }
}

/// 4,000 `!`: inside every size cap, over the nesting limit (the old parser recursed per `!`).
fn bang_4k() -> Hostile {
    Hostile {
        name: "bang-4k",
        objects: with_jmes_path(&format!("{}username", "!".repeat(4000))),
        needles: strings(&[
            "object \"CSI-driver-test-secret\": jmesPath entry 0: path nests 4000 levels deep",
            "the limit is 32",
        ]),
    }
}

/// 2,047 nested parentheses: 4,095 bytes, just inside the jmesPath length limit.
fn nested_parens() -> Hostile {
    Hostile {
        name: "parens",
        objects: with_jmes_path(&format!("{}a{}", "(".repeat(2047), ")".repeat(2047))),
        needles: strings(&[
            "jmesPath entry 0: path nests 2047 levels deep",
            "the limit is 32",
        ]),
    }
}

/// 30 doubling stages: 2^30 array elements from 241 bytes, were it evaluated.
fn doubling() -> Hostile {
    Hostile {
        name: "doubling",
        objects: with_jmes_path(&format!("@{}", "|[@,@][]".repeat(30))),
        needles: strings(&[
            "invalid jmesPath",
            "'@' (current node) is not supported",
            "jmesPath supports key paths",
        ]),
    }
}

/// A billion-laughs `objects` inside the 64 KiB cap, shaped as a valid object list: a 27,000
/// byte scalar behind an anchor, a jmesPath entry of three aliases to it, a list of 120 such
/// entries, and 1,000 objects whose `jmesPath` is that list. 63 KB of text; expanded, 9.7 GB of
/// strings (serde_yaml's repetition limit counts alias jumps, 120,000 per 1,000 objects here,
/// not bytes).
fn billion_laughs() -> Hostile {
    let mut y = format!(
        "- objectName: &s {}\n  objectType: secretsmanager\n  jmesPath: &j\n    - &e {{path: *s, objectAlias: *s, filePermission: *s}}\n",
        "x".repeat(27_000)
    );
    for _ in 1..120 {
        y.push_str("    - *e\n");
    }
    for i in 1..1000 {
        y.push_str(&format!("- {{objectName: o{i}, jmesPath: *j}}\n"));
    }
    assert!(y.len() < 64 * 1024, "{} bytes", y.len());
    Hostile {
        name: "laughs",
        objects: y,
        needles: strings(&[
            "parameter objects: invalid YAML: YAML anchors and aliases (&name, *name) are not supported",
        ]),
    }
}

/// The agent's pid is alive and not a zombie (an exited child stays a zombie until reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with(['R', 'S', 'D']))
        })
        .unwrap_or(false)
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// Caps `pid`'s address space at its current size plus [`ADDRESS_SPACE_HEADROOM`]: an input
/// that makes the agent allocate gigabytes aborts it instead of exhausting the machine.
fn cap_address_space(pid: u32) {
    let limit = status_kb(pid, "VmSize:") * 1024 + ADDRESS_SPACE_HEADROOM;
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--as={limit}")])
        .status()
        .expect("prlimit (util-linux) caps the agent's address space");
    assert!(status.success(), "prlimit --pid {pid} failed");
}

async fn create_class(w: &World, name: &str, objects: &str) {
    let spc: SecretProviderClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name},
        "spec": {"provider": "aws", "parameters": {"objects": objects}}
    }))
    .unwrap();
    Api::<SecretProviderClass>::namespaced(w.cluster.client(), &w.namespace)
        .create(&PostParams::default(), &spc)
        .await
        .unwrap();
}

/// Plays one hostile class against a fresh agent, then checks the agent still serves.
async fn play(hostile: Hostile) {
    let w = World::start(
        &format!("adv-{}", hostile.name),
        "3600s",
        Duration::from_secs(3600),
    )
    .await;
    let _logs = w.cluster.dump_logs_on_panic();
    let pid = w.agent.pid();
    cap_address_space(pid);
    let role = w.seed_aws(SECRET_JSON).await;
    w.apply_service_account(&role).await;

    create_class(&w, hostile.name, &hostile.objects).await;
    w.class_pod(hostile.name, hostile.name).await;
    let (agent_event, kubelet_event) =
        eventually(WAIT, "Warning Events on the hostile pod", || async {
            assert!(
                alive(pid),
                "the agent died on {}:\n{}",
                hostile.name,
                tail(&w.agent.log_text())
            );
            let agent = w.pod_events(hostile.name, "ProviderError").await;
            let kubelet = w.pod_events(hostile.name, "FailedMount").await;
            Some((agent.first()?.clone(), kubelet.first()?.clone()))
        })
        .await;
    for needle in &hostile.needles {
        assert!(
            agent_event.contains(needle),
            "agent Event lacks {needle:?}: {agent_event}"
        );
        assert!(
            kubelet_event.contains(needle),
            "FailedMount lacks {needle:?}: {kubelet_event}"
        );
    }
    assert!(kubelet_event.contains("InvalidArgument"), "{kubelet_event}");
    assert!(
        agent_event.len() <= 1000,
        "the Event is short: {agent_event}"
    );
    assert!(
        !agent_event.contains("correct horse") && !kubelet_event.contains("correct horse"),
        "a secret value reached an Event"
    );
    assert!(
        w.mounts_under_root().is_empty(),
        "nothing is mounted: {:?}",
        w.mounts_under_root()
    );
    assert!(w.kubelet.published().is_empty(), "nothing is published");

    // The same process serves a good volume afterwards.
    create_class(
        &w,
        "good",
        &format!(
            "- objectName: {SEED_SECRET}\n  objectType: secretsmanager\n  jmesPath:\n    - path: username\n      objectAlias: user\n"
        ),
    )
    .await;
    w.class_pod("good", "good").await;
    let user = eventually(WAIT, "the good volume", || async {
        assert!(alive(pid), "the agent died:\n{}", tail(&w.agent.log_text()));
        let pod = w
            .pods()
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some("good"))?;
        w.file(&pod, "user")
    })
    .await;
    assert_eq!(user, "admin");
    assert!(
        alive(pid),
        "the agent process that got the hostile class still runs"
    );
    let peak = status_kb(pid, "VmHWM:");
    assert!(peak < PEAK_RSS_LIMIT_KB, "agent peak RSS {peak} kB");
    assert!(
        !w.agent.log_text().contains("correct horse"),
        "a secret value reached the log"
    );
    w.delete_pod("good").await;
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmes_path_of_100000_bangs() {
    play(bang_100k()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmes_path_of_4000_bangs() {
    play(bang_4k()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmes_path_of_nested_parentheses() {
    play(nested_parens()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmes_path_that_doubles_an_array() {
    play(doubling()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_billion_laughs() {
    play(billion_laughs()).await;
}

/// `secrets-store check -f <class>` under the same address-space cap, with a deadline: exit code
/// and report.
fn check(dir: &Path, name: &str, manifest: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--as={}", 3u64 << 30))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_secrets-store"))
        .args(["check", "--region", "us-east-1", "-f"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the check");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn manifest(name: &str, objects: &str) -> String {
    let spc = serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name},
        "spec": {"provider": "aws", "parameters": {"objects": objects}}
    });
    // JSON is YAML; it keeps the hostile strings exactly as the apiserver would store them.
    serde_json::to_string_pretty(&spc).unwrap()
}

#[test]
fn check_refuses_the_same_classes_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    for hostile in [
        bang_100k(),
        bang_4k(),
        nested_parens(),
        doubling(),
        billion_laughs(),
    ] {
        let started = Instant::now();
        let (code, out) = check(
            dir.path(),
            hostile.name,
            &manifest(hostile.name, &hostile.objects),
        );
        assert_eq!(code, Some(1), "{}: {out}", hostile.name);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            hostile.name
        );
        for needle in &hostile.needles {
            assert!(
                out.contains(needle.as_str()),
                "{}: lacks {needle:?}: {out}",
                hostile.name
            );
        }
        assert!(out.contains("result: invalid"), "{out}");
        assert!(
            out.len() < 4096,
            "{}: the report is short: {} bytes",
            hostile.name,
            out.len()
        );
    }

    // The manifest itself as an alias bomb: anchors are fine in a manifest, but replaying them
    // is budgeted. 34,000 aliases to one 100 KB scalar: 3.4 GB from 200 KB of text (a
    // repetition limit that counts alias jumps, as serde_yaml's does, lets it through).
    let bomb = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: bomb\n  annotations:\n    a: &s {}\nspec:\n  provider: aws\n  parameters:\n    objects: '- {{objectName: a, objectType: secretsmanager}}'\n  secretObjects: [{}]\n",
        "x".repeat(100_000),
        vec!["*s"; 34_000].join(",")
    );
    let started = Instant::now();
    let (code, out) = check(dir.path(), "manifest-bomb", &bomb);
    assert_eq!(code, Some(1), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.contains("invalid YAML: budget breached"), "{out}");

    // And a class with anchors that expand to little is still a class.
    let fine = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: &n fine\n  labels: {app: *n}\nspec:\n  provider: aws\n  parameters:\n    objects: '- {objectName: a, objectType: secretsmanager}'\n";
    let (code, out) = check(dir.path(), "anchors", fine);
    assert_eq!(code, Some(0), "{out}");
}
