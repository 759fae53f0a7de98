//! Item 4(b): Secrets carrying the managed label, which anyone who may write a Secret can add, do
//! not grow the agent by their size.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use secrets_store_api::labels;

use super::WAIT;
use crate::e2e::{World, eventually, seed_file};

/// The agent's resident set size, from `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Mounts the seed's class in bare pod `pod` and waits for its synced `foosecret`.
async fn synced_bare_pod(world: &World, pod: &str) {
    world.bare_pod(pod).await;
    eventually(WAIT, "foosecret synced", || async {
        world.secret_value("foosecret", "SECRET_API_KEY").await
    })
    .await;
}

/// Changes foosecret's data behind the agent's back and waits until the agent restored it.
async fn edit_and_wait_for_restore(world: &World, expected: &str) {
    Api::<Secret>::namespaced(world.cluster.client(), &world.namespace)
        .patch(
            "foosecret",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"SECRET_API_KEY": "edited"}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "foosecret restored", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(expected))
        .then_some(())
    })
    .await;
}

/// Item 4(b): 1,000 Secrets of 64 KiB carrying the managed label (a label anyone who may write a
/// Secret can add) do not grow the agent by their size, and drift of a Secret the agent does sync
/// is still restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labelled_tenant_secrets_do_not_grow_the_agent() {
    const COUNT: usize = 1_000;
    const SIZE: usize = 64 * 1024;
    const ALLOWED_GROWTH_KIB: u64 = 16 * 1024;
    let world = World::start("adv-sync-mem", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let value = "synced-value-4b1d";
    let role = world.seed_aws(value).await;
    world.apply_service_account(&role).await;
    world
        .apply_class(&seed_file("secretproviderclass.yaml"))
        .await;
    synced_bare_pod(&world, "consumer").await;
    // Settle: the first mount's allocations are not what is measured.
    edit_and_wait_for_restore(&world, value).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = world.agent.pid();
    let before = rss_kib(pid);

    let tenant = world.cluster.new_namespace("adv-sync-mem-tenant").await;
    let secrets: Api<Secret> = Api::namespaced(world.cluster.client(), &tenant);
    let started = Instant::now();
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(50) {
        let mut creates = tokio::task::JoinSet::new();
        for &i in chunk {
            let secrets = secrets.clone();
            creates.spawn(async move {
                let mut bytes = vec![0u8; SIZE];
                fill_pseudo_random(&mut bytes, i as u64);
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("bulk-{i:04}")),
                        labels: Some(BTreeMap::from([(
                            labels::MANAGED.to_string(),
                            labels::MANAGED_VALUE.to_string(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("blob".to_string(), ByteString(bytes))])),
                    ..Default::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .expect("creating a labelled tenant Secret");
            });
        }
        while let Some(done) = creates.join_next().await {
            done.unwrap();
        }
    }
    println!(
        "created {COUNT} labelled Secrets of {SIZE} bytes in {:?}",
        started.elapsed()
    );
    // The agent's one watch of managed Secrets delivers events in resourceVersion order: once it
    // has restored an edit made after the last create, it has seen every one of them.
    edit_and_wait_for_restore(&world, value).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let growth = after.saturating_sub(before);
    println!(
        "agent VmRSS: {before} KiB before, {after} KiB after {COUNT} x {SIZE} B labelled Secrets (+{growth} KiB; the Secrets hold {} KiB)",
        COUNT * SIZE / 1024
    );
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "the agent grew by {growth} KiB (from {before} to {after}) after {COUNT} labelled Secrets of {SIZE} bytes: it caches their data"
    );
    assert!(
        !world.agent.log_text().contains(value),
        "a synced value in the agent's log"
    );
    Api::<Namespace>::all(world.cluster.client())
        .delete(&tenant, &DeleteParams::default())
        .await
        .unwrap();
}

/// Cheap deterministic filler (xorshift): the bytes' content does not matter, only that they are
/// not all the same.
fn fill_pseudo_random(bytes: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}
