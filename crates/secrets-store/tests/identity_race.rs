//! Identity isolation at the node agent under moto IAM enforcement (issue 8): pods of role A
//! (may read the secret) and role B (may not) on one node race for the same secret through the
//! real `secrets-store node` binary, with the built-in AWS provider and its default coalescing
//! TTL. B never receives A's value: not in a file of its volume, not from a cache, not in a
//! synced Secret, log line, Event or metric. Rotation reaches A's pods and still not B's.
//!
//! Its own test binary: moto's IAM enforcement is global to the moto server, so the tests here
//! take turns ([`ENFORCEMENT`]) and each one starts with enforcement off for its AWS setup.

mod common;
mod e2e;

#[path = "identity_race/direct.rs"]
mod direct;
#[path = "identity_race/leaks.rs"]
mod leaks;
#[path = "identity_race/support.rs"]
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_api::csi::v1 as csi;
use tonic::Code;

use direct::{DirectPod, unpublish};
use e2e::{World, eventually};
use leaks::{
    assert_coalescing_served_a, assert_no_value_under, assert_nothing_leaked, scrape, unique_value,
};
use support::*;

/// Held for a whole test: IAM enforcement is one switch for the whole moto server.
static ENFORCEMENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pods per role and round.
const PODS_PER_ROLE: usize = 10;

/// Same namespace, two ServiceAccounts, one SecretProviderClass: the cache keys of A and B differ
/// only by identity (role and ServiceAccount). Three rounds of 10 + 10 pods created interleaved
/// (A first, then B first), then a rotation while the last round's pods stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_namespace_pods_of_a_denied_role_never_get_the_value() {
    let _turn = ENFORCEMENT.lock().await;
    let mut world = World::start("race-same", POLL, REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let metrics = restart_agent_observed(&mut world);
    let ns = world.namespace.clone();
    watch_namespaces(&mut world, std::slice::from_ref(&ns));

    let first = unique_value("first");
    let second = unique_value("second");
    let aws = setup_aws(world.cluster, &world.account, &first, B_EXPLICIT_DENY).await;
    service_account(world.cluster, &ns, "sa-a", &aws.role_a).await;
    service_account(world.cluster, &ns, "sa-b", &aws.role_b).await;
    apply_class(world.cluster, &ns).await;
    enforce_iam(&world, true).await;

    let a = Side::new(&ns, "sa-a", Role::A);
    let b = Side::new(&ns, "sa-b", Role::B);
    let last_round = race(&world, (&a, &b), &aws, &first, 3, |round| round % 2 == 1).await;
    let synced = Api::<Secret>::namespaced(world.cluster.client(), &ns);
    eventually(WAIT, "synced Secret with the first value", || async {
        (secret_value(&synced, SYNCED).await.as_deref() == Some(first.as_str())).then_some(())
    })
    .await;

    rotate_and_check(&world, &last_round, &aws, &first, &second).await;
    eventually(WAIT, "synced Secret with the second value", || async {
        (secret_value(&synced, SYNCED).await.as_deref() == Some(second.as_str())).then_some(())
    })
    .await;

    // The Secret is A's: owned only by A pods' SecretProviderClassPodStatuses, and no B pod has
    // a status (it never mounted anything).
    let secret = synced.get(SYNCED).await.unwrap();
    let owners = secret.metadata.owner_references.unwrap_or_default();
    assert!(!owners.is_empty(), "synced Secret without owners");
    for o in &owners {
        assert!(
            o.kind == "SecretProviderClassPodStatus" && o.name.starts_with("a-"),
            "synced Secret owned by {} {}",
            o.kind,
            o.name
        );
    }
    let statuses = Api::<SecretProviderClassPodStatus>::namespaced(world.cluster.client(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(!statuses.is_empty(), "A pods have statuses");
    for s in &statuses {
        let pod = s.status.as_ref().map(|s| s.pod_name.as_str()).unwrap_or("");
        assert!(pod.starts_with("a-"), "a pod status for {pod:?}");
    }

    let metrics_text = scrape(&metrics).await;
    assert_coalescing_served_a(&metrics_text);
    delete_pods(world.cluster, &last_round).await;
    enforce_iam(&world, false).await;
    world.agent.stop();
    assert_nothing_leaked(&world, &[ns], &metrics_text, &[&first, &second]).await;
}

/// A and B in different namespaces with the same ServiceAccount name and the same class: the
/// keys differ only by namespace and role. B's role has no Allow at all. Nothing is synced in
/// B's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_namespace_same_service_account_name_never_gets_the_value() {
    let _turn = ENFORCEMENT.lock().await;
    let mut world = World::start("race-ns-a", POLL, REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let metrics = restart_agent_observed(&mut world);
    let ns_a = world.namespace.clone();
    let ns_b = world.cluster.new_namespace("race-ns-b").await;
    watch_namespaces(&mut world, &[ns_a.clone(), ns_b.clone()]);

    let first = unique_value("first");
    let second = unique_value("second");
    let aws = setup_aws(world.cluster, &world.account, &first, B_NO_ALLOW).await;
    service_account(world.cluster, &ns_a, "app", &aws.role_a).await;
    service_account(world.cluster, &ns_b, "app", &aws.role_b).await;
    apply_class(world.cluster, &ns_a).await;
    apply_class(world.cluster, &ns_b).await;
    enforce_iam(&world, true).await;

    let a = Side::new(&ns_a, "app", Role::A);
    let b = Side::new(&ns_b, "app", Role::B);
    let last_round = race(&world, (&a, &b), &aws, &first, 2, |round| round % 2 == 0).await;
    rotate_and_check(&world, &last_round, &aws, &first, &second).await;
    let synced_a = Api::<Secret>::namespaced(world.cluster.client(), &ns_a);
    eventually(WAIT, "synced Secret in A's namespace rotated", || async {
        (secret_value(&synced_a, SYNCED).await.as_deref() == Some(second.as_str())).then_some(())
    })
    .await;

    let secrets_b = Api::<Secret>::namespaced(world.cluster.client(), &ns_b);
    assert!(
        secrets_b.get_opt(SYNCED).await.unwrap().is_none(),
        "a synced Secret in B's namespace"
    );
    let managed = secrets_b
        .list(&ListParams::default().labels("secrets-store.csi.k8s.io/managed=true"))
        .await
        .unwrap()
        .items;
    assert!(managed.is_empty(), "managed Secrets in B's namespace");
    let statuses_b = Api::<SecretProviderClassPodStatus>::namespaced(world.cluster.client(), &ns_b)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(statuses_b.is_empty(), "pod statuses in B's namespace");

    let metrics_text = scrape(&metrics).await;
    assert_coalescing_served_a(&metrics_text);
    delete_pods(world.cluster, &last_round).await;
    enforce_iam(&world, false).await;
    world.agent.stop();
    assert_nothing_leaked(&world, &[ns_a, ns_b], &metrics_text, &[&first, &second]).await;
}

/// NodePublishVolume straight over the CSI socket, with the tokens kubelet would send, in exact
/// orders: B right after A (A's value fresh in the coalescing cache), A right after B, and
/// bursts of 10 + 10 concurrent interleaved calls; five rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_publishes_in_every_order_within_the_coalescing_ttl() {
    let _turn = ENFORCEMENT.lock().await;
    let mut world = World::start("race-direct", POLL, REPUBLISH).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let metrics = restart_agent_observed(&mut world);
    let ns = world.namespace.clone();
    let value = unique_value("direct");
    let aws = setup_aws(world.cluster, &world.account, &value, B_EXPLICIT_DENY).await;
    service_account(world.cluster, &ns, "sa-a", &aws.role_a).await;
    service_account(world.cluster, &ns, "sa-b", &aws.role_b).await;
    apply_class(world.cluster, &ns).await;
    let a = Side::new(&ns, "sa-a", Role::A);
    let b = Side::new(&ns, "sa-b", Role::B);
    // Pods without volumes: they exist (Events, status owners, bound tokens) and the kubelet
    // simulator leaves the publishing to this test.
    let mut pods = Vec::new();
    for i in 0..PODS_PER_ROLE {
        for side in [&a, &b] {
            pods.push(
                DirectPod::create(world.cluster, side, &format!("{}-{i}", side.prefix())).await,
            );
        }
    }
    let (pods_a, pods_b): (Vec<&DirectPod>, Vec<&DirectPod>) =
        pods.iter().partition(|p| p.role == Role::A);
    enforce_iam(&world, true).await;

    let client = common::node_client(&world.agent.socket);
    let mut denials = 0;
    for round in 0..5 {
        // kubelet's layout under the simulator's root (the agent accepts no other target); World's
        // Drop detaches mounts there if the test fails.
        let target_of = |pod: &DirectPod, volume: &str| {
            world
                .kubelet
                .target_path(&pod.uid, &format!("r{round}-{volume}"))
        };
        let mut targets = Vec::new();
        // B right after A, then A right after B: sequential, each call waits for the previous.
        for (label, order) in [
            ("ab", [pods_a[0], pods_b[0]]),
            ("ba", [pods_b[1], pods_a[1]]),
        ] {
            for pod in order {
                let target = target_of(pod, label);
                let result = pod.publish(client.clone(), CLASS, &target).await;
                denials += check_direct(pod, &target, result, &aws, &value);
                targets.push(target);
            }
        }
        // A burst: every pod at once, interleaved, A first on even rounds and B first on odd.
        let mut burst = tokio::task::JoinSet::new();
        let order: Vec<&DirectPod> = if round % 2 == 0 {
            pods_a
                .iter()
                .zip(&pods_b)
                .flat_map(|(x, y)| [*x, *y])
                .collect()
        } else {
            pods_b
                .iter()
                .zip(&pods_a)
                .flat_map(|(x, y)| [*x, *y])
                .collect()
        };
        for pod in order {
            let target = target_of(pod, "burst");
            let (pod, client, t) = (pod.clone(), client.clone(), target.clone());
            burst.spawn(async move {
                let r = pod.publish(client, CLASS, &t).await;
                (pod, t, r)
            });
            targets.push(target);
        }
        while let Some(done) = burst.join_next().await {
            let (pod, target, result) = done.unwrap();
            denials += check_direct(&pod, &target, result, &aws, &value);
        }
        for target in &targets {
            unpublish(client.clone(), target).await;
        }
    }
    assert_eq!(
        denials,
        5 * (2 + PODS_PER_ROLE),
        "every B publish was denied"
    );

    // A's volume context with B's token, while A's credentials are cached: refused on the token's
    // subject before any cache is consulted, and nothing is mounted.
    let forged = pods_a[0].with_tokens_of(pods_b[0]);
    let target = world.kubelet.target_path(&pods_a[0].uid, "forged");
    let status = forged
        .publish(client.clone(), CLASS, &target)
        .await
        .expect_err("A's volume context with B's token was served");
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    assert!(
        status.message().contains("another subject") && status.message().contains("sa-a"),
        "{status}"
    );
    assert!(!is_mount_point(&target), "forged publish left a mount");
    assert_no_value_under(target.parent().unwrap(), &[&value]);
    unpublish(client.clone(), &target).await;
    let events = pod_events(world.cluster, &ns, &pods_b[0].name, "ProviderError").await;
    assert!(
        !events.is_empty(),
        "no ProviderError Event on {}",
        pods_b[0].name
    );
    for message in &events {
        assert_denial(message, &aws.role_b, &[&value]);
    }
    eprintln!("B's ProviderError Event: {}", events[0]);

    let metrics_text = scrape(&metrics).await;
    assert_coalescing_served_a(&metrics_text);
    enforce_iam(&world, false).await;
    world.agent.stop();
    assert_nothing_leaked(&world, &[ns], &metrics_text, &[&value]).await;
}

/// Checks one direct publish: A succeeds with the value, B fails with PermissionDenied naming
/// the secret and its role and leaves nothing. Returns 1 for a checked denial.
fn check_direct(
    pod: &DirectPod,
    target: &std::path::Path,
    result: Result<tonic::Response<csi::NodePublishVolumeResponse>, tonic::Status>,
    aws: &Aws,
    value: &str,
) -> usize {
    match pod.role {
        Role::A => {
            result.unwrap_or_else(|e| panic!("A pod {} denied: {e}", pod.name));
            let file = std::fs::read_to_string(target.join(SECRET)).unwrap();
            assert_eq!(file, value, "A pod {}", pod.name);
            0
        }
        Role::B => {
            let status = match result {
                Ok(_) => panic!("B pod {} published {}", pod.name, target.display()),
                Err(status) => status,
            };
            assert_eq!(status.code(), Code::PermissionDenied, "{status}");
            assert_denial(status.message(), &aws.role_b, &[value]);
            assert!(!is_mount_point(target), "B's target left mounted");
            assert_no_value_under(target.parent().unwrap(), &[value]);
            1
        }
    }
}

/// Puts a new value, waits for every A pod to show it and for every B pod to have failed again
/// after the change, and checks B's volumes hold neither value.
async fn rotate_and_check(world: &World, racers: &[Racer], aws: &Aws, first: &str, second: &str) {
    let failures_before: Vec<usize> = racers
        .iter()
        .map(|r| failed_mounts(world, r).len())
        .collect();
    aws.rotator
        .put_secret_value()
        .secret_id(SECRET)
        .secret_string(second)
        .send()
        .await
        .expect("PutSecretValue as the rotator role");
    for (racer, before) in racers.iter().zip(failures_before) {
        let uid = pod_uid(world.cluster, racer).await;
        match racer.role {
            Role::A => {
                let target = world.kubelet.target_path(&uid, e2e::VOLUME);
                eventually(WAIT, &format!("{} rotated", racer.name), || async {
                    (std::fs::read_to_string(target.join(SECRET)).ok().as_deref() == Some(second))
                        .then_some(())
                })
                .await;
            }
            Role::B => {
                eventually(
                    WAIT,
                    &format!("{} denied after rotation", racer.name),
                    || async { (failed_mounts(world, racer).len() > before).then_some(()) },
                )
                .await;
                check_b_pod(world, racer, &uid, aws, &[first, second]).await;
            }
        }
    }
}

/// Turns moto's IAM enforcement on or off (global to the moto server: tests take turns).
async fn enforce_iam(world: &World, on: bool) {
    world
        .cluster
        .moto()
        .set_iam_enforcement(on)
        .await
        .unwrap_or_else(|e| panic!("IAM enforcement {on}: {e}"));
}

/// `rounds` rounds of interleaved A and B pods created at once through the kubelet simulator,
/// each checked (A mounts `value`, B gets nothing); B's pods go first when `b_first(round)`.
/// Every round but the last is deleted; the last round's pods are returned still mounted.
async fn race(
    world: &World,
    (a, b): (&Side, &Side),
    aws: &Aws,
    value: &str,
    rounds: usize,
    b_first: impl Fn(usize) -> bool,
) -> Vec<Racer> {
    let mut last_round = Vec::new();
    for round in 0..rounds {
        let racers = interleaved(round, a, b, PODS_PER_ROLE, b_first(round));
        create_pods(world.cluster, &racers).await;
        check_round(world, &racers, aws, value, &[value]).await;
        if round + 1 < rounds {
            delete_pods(world.cluster, &racers).await;
        } else {
            last_round = racers;
        }
    }
    last_round
}
