//! AWS misbehaving behind the fault proxy: an outage keeps the last good content and does not
//! turn into a retry storm; throttling is retried within the mount.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::e2e::{self, AgentOptions, World, eventually};
use crate::proxy::{FaultProxy, ProxyMode};
use crate::schedule::count_from_env;
use crate::{SECRET, WAIT};

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
