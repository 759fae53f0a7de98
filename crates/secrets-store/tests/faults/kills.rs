//! The agent SIGKILLed: at random points while the secret rotates under a reader, and exactly
//! inside the atomic writer. No torn read, no leaked mount, nothing left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::e2e::{AgentOptions, World, eventually};
use crate::generations::{CLASS, FILES, expected, orphans, reader, value};
use crate::schedule::{Rng, count_from_env};
use crate::{SECRET, WAIT};

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
