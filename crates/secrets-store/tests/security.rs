//! Security suite of the hardening issue: secret bytes and tokens never leak into logs, Events,
//! metrics, error messages or files outside tmpfs; the agent's sockets are private; a
//! SecretProviderClass of another namespace is never used.

mod common;
mod e2e;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};

use e2e::{AgentOptions, World, eventually};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "CSI-driver-test-secret";

/// A value no log line, Event or metric could contain by chance.
fn unique_value(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mix =
        nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23) ^ u64::from(std::process::id());
    format!("{tag}-{nanos:016x}{mix:016x}")
}

/// The forms in which a value could leak: as is, and base64 (as Secret data travels).
fn leak_forms(value: &str) -> Vec<String> {
    let b64 = serde_json::to_value(k8s_openapi::ByteString(value.as_bytes().to_vec())).unwrap();
    vec![
        value.to_string(),
        b64.as_str().unwrap().trim_end_matches('=').to_string(),
    ]
}

/// Markers of credentials: a JWT (every ServiceAccount token starts with `eyJ`, base64 of `{"`)
/// and the session tokens moto's STS hands out.
const TOKEN_MARKERS: [&str; 2] = ["eyJhbGci", "FQoGZXIvYXdzE"];

/// Every place a leak could hide, with what found it.
fn find_leaks(haystacks: &[(String, String)], values: &[String]) -> Vec<String> {
    let mut leaks = Vec::new();
    for (place, text) in haystacks {
        for value in values {
            for form in leak_forms(value) {
                if text.contains(&form) {
                    leaks.push(format!("{place} contains a secret value ({value})"));
                }
            }
        }
        for marker in TOKEN_MARKERS {
            if text.contains(marker) {
                leaks.push(format!("{place} contains a token ({marker}…)"));
            }
        }
    }
    leaks
}

/// Every regular file under `dir` that is not on a mount of its own (the tmpfs volumes).
fn files_on_disk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1."), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_values_and_tokens_never_leak() {
    let mut world = World::start("leak", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let metrics = format!("127.0.0.1:{}", free_port());
    world.agent.stop();
    world.agent = world.start_agent(&AgentOptions {
        poll: "1s",
        aws_endpoint: world.cluster.moto().endpoint(),
        metrics_addr: metrics.clone(),
        env: vec![("RUST_LOG", "trace".to_string())],
    });
    let first = unique_value("first");
    let second = unique_value("second");
    let role = world.seed_aws(&first).await;
    world.apply_service_account(&role).await;
    world
        .apply_class(&e2e::seed_file("secretproviderclass.yaml"))
        .await;
    world.bare_pod("leak-a").await;
    world.bare_pod("leak-b").await;
    let pods = world.running_pods(2).await;
    for pod in &pods {
        assert_eq!(world.file(pod, SECRET).as_deref(), Some(first.as_str()));
    }
    eventually(WAIT, "synced Secret", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(&*first))
        .then_some(())
    })
    .await;

    // Rotate once; then a failing rotation (the secret deleted) to put errors on every path.
    let sm = world.cluster.moto().sm_client(&world.account);
    sm.put_secret_value()
        .secret_id(SECRET)
        .secret_string(&second)
        .send()
        .await
        .unwrap();
    for pod in &pods {
        eventually(WAIT, "rotated file", || async {
            (world.file(pod, SECRET).as_deref() == Some(second.as_str())).then_some(())
        })
        .await;
    }
    eventually(WAIT, "rotated Secret", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(&*second))
        .then_some(())
    })
    .await;
    sm.delete_secret()
        .secret_id(SECRET)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    eventually(WAIT, "SecretRotationFailed", || async {
        let m = world.pod_events("leak-a", "SecretRotationFailed").await;
        (!m.is_empty()).then_some(())
    })
    .await;

    let metrics_text = scrape(&metrics).await;
    world.delete_pod("leak-a").await;
    world.delete_pod("leak-b").await;
    world.agent.stop();

    let mut haystacks = vec![
        ("agent log".to_string(), world.agent.log_text()),
        ("/metrics".to_string(), metrics_text),
    ];
    let events: Api<Event> = Api::namespaced(world.cluster.client(), &world.namespace);
    for e in events.list(&ListParams::default()).await.unwrap().items {
        haystacks.push((
            format!("Event {}", e.reason.unwrap_or_default()),
            e.message.unwrap_or_default(),
        ));
    }
    for e in world.kubelet.events() {
        haystacks.push((format!("kubelet {}", e.reason), e.message));
    }
    // Nothing of ours on disk outside the (now unmounted) tmpfs volumes: logs, sockets, kubelet
    // dirs. Every file under the world's dir is read back.
    for path in files_on_disk(world.dir.path()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        haystacks.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let log = world.agent.log_text();
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "the agent did not log at trace level"
    );
    // The AWS SDK's and HTTP stack's own trace events print whole requests (session token and
    // signature headers, the web identity token in STS bodies): they must not appear at all.
    for dump in [
        "transmitting request",
        "calculated signing parameters",
        "X-Amz-Security-Token",
    ] {
        assert!(!log.contains(dump), "the agent log holds {dump:?}");
    }
    // The scanner itself finds a planted value and token (so an empty result means something).
    let planted = format!("x{}y", leak_forms(&second)[1]);
    assert_eq!(
        find_leaks(&[("probe".into(), planted)], std::slice::from_ref(&second)).len(),
        1
    );
    assert_eq!(
        find_leaks(&[("probe".into(), "a eyJhbGciOi".into())], &[]).len(),
        1
    );
    let scanned: usize = haystacks.iter().map(|(_, t)| t.len()).sum();
    eprintln!("scanned {} places, {scanned} bytes", haystacks.len());
    let leaks = find_leaks(&haystacks, &[first.clone(), second.clone()]);
    assert!(leaks.is_empty(), "leaks: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_are_private() {
    let world = World::start("sockets", "1m", Duration::from_secs(5)).await;
    let csi = std::fs::metadata(&world.agent.socket).unwrap();
    assert_eq!(
        csi.permissions().mode() & 0o777,
        0o600,
        "CSI socket {:?}",
        world.agent.socket
    );
    let reg = world
        .dir
        .path()
        .join("kubelet/plugins_registry")
        .join(format!("{}-reg.sock", e2e::DRIVER));
    // The registration socket is bound after the CSI socket the start waits for.
    let meta = eventually(
        Duration::from_secs(30),
        "the registration socket",
        || async { std::fs::metadata(&reg).ok() },
    )
    .await;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "registration socket {reg:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_class_of_another_namespace_is_never_used() {
    let world = World::start("spc-ns", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("must-not-mount").await;
    world.apply_service_account(&role).await;
    // The seed class, synced Secret included, exists only in another namespace.
    let other = world.cluster.new_namespace("spc-other").await;
    let spc: secrets_store_api::crd::SecretProviderClass =
        serde_yaml::from_str(&e2e::seed_file("secretproviderclass.yaml")).unwrap();
    Api::<secrets_store_api::crd::SecretProviderClass>::namespaced(world.cluster.client(), &other)
        .create(&Default::default(), &spc)
        .await
        .unwrap();
    world.bare_pod("borrower").await;
    let messages = eventually(WAIT, "SecretProviderClassNotFound Event", || async {
        let m = world
            .pod_events("borrower", "SecretProviderClassNotFound")
            .await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let expected = format!("{}/nginx-deployment-aws-secrets", world.namespace);
    assert!(messages[0].contains(&expected), "{messages:?}");
    let failed = eventually(WAIT, "FailedMount", || async {
        world
            .kubelet
            .events()
            .into_iter()
            .find(|e| e.pod == "borrower" && e.reason == "FailedMount")
            .map(|e| e.message)
    })
    .await;
    assert!(failed.contains("not found"), "{failed}");
    let pod = world
        .pods()
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("borrower"))
        .unwrap();
    assert!(
        world.file(&pod, SECRET).is_none(),
        "mounted through a class of another namespace"
    );
    for ns in [&world.namespace, &other] {
        let secrets: Api<Secret> = Api::namespaced(world.cluster.client(), ns);
        assert!(
            secrets.get_opt("foosecret").await.unwrap().is_none(),
            "foosecret synced into {ns}"
        );
    }
}
