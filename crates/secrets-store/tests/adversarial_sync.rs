//! Issue 13, items 4(b) and 7 (the secret sync's part), played against a real apiserver and the
//! real agent: a tenant who may label Secrets, write classes and race the agent's writes cannot
//! exhaust its memory, make it write a Secret the API server fills with a token, or have it adopt
//! a Secret of theirs; a malformed rollout key cannot crash it; and a restarted agent does not
//! serve publishes from empty caches.

mod common;
mod e2e;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::labels;
use secrets_store_provider::SecretBytes;
use secrets_store_sync::rollout::{DIGEST_ANNOTATION_PREFIX, DIGEST_KEY_SECRET};
use secrets_store_sync::{
    ClassLookup, NodeVolumes, SecretSync, SyncError, SyncRequest, VolumeFiles,
};
use secrets_store_testenv::Cluster;

use common::Driver;
use e2e::{AgentOptions, SEED_DEPLOYMENT, World, eventually, seed_file};

const WAIT: Duration = Duration::from_secs(90);

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

/// Item 7: a class cannot have the agent write a `kubernetes.io/service-account-token` Secret
/// (the API server would mint the named ServiceAccount's token into it, for whoever may read
/// Secrets) or a bootstrap token; the mount fails with an `InvalidSecretObject` Event naming the
/// type, and no such Secret is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_types_that_carry_credentials_are_never_synced() {
    let world = World::start("adv-sync-types", "1m", Duration::from_secs(1)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("type-test-value").await;
    world.apply_service_account(&role).await;
    world
        .apply_class(
            r#"
metadata:
  name: minter
spec:
  provider: aws
  parameters:
    objects: |
      - objectName: "CSI-driver-test-secret"
        objectType: "secretsmanager"
  secretObjects:
  - secretName: minted-token
    type: kubernetes.io/service-account-token
    annotations:
      kubernetes.io/service-account.name: nginx-deployment-sa
    data:
    - objectName: CSI-driver-test-secret
      key: note
  - secretName: bootstrap-token-abcdef
    type: bootstrap.kubernetes.io/token
    data:
    - objectName: CSI-driver-test-secret
      key: token-secret
"#,
        )
        .await;
    world.class_pod("minter", "minter").await;

    let verdict = eventually(WAIT, "the agent's verdict on the class", || async {
        for name in ["minted-token", "bootstrap-token-abcdef"] {
            if let Some(secret) = world.secret(name).await {
                return Some(Err((name, secret.type_)));
            }
        }
        let m = world.pod_events("minter", "InvalidSecretObject").await;
        (!m.is_empty()).then_some(Ok(m))
    })
    .await;
    let messages = match verdict {
        Ok(messages) => messages,
        Err((name, type_)) => panic!("the agent wrote Secret {name} of type {type_:?}"),
    };
    assert!(
        messages[0].contains("kubernetes.io/service-account-token")
            && messages[0].contains("allowed types"),
        "{messages:?}"
    );
    // Several of kubelet's retries later, still nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["minted-token", "bootstrap-token-abcdef"] {
        assert!(
            world.secret(name).await.is_none(),
            "the agent wrote Secret {name}"
        );
    }
    let pod = Api::<Pod>::namespaced(world.cluster.client(), &world.namespace)
        .get("minter")
        .await
        .unwrap();
    assert_ne!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "the volume must not be published"
    );
}

/// A write the agent sends for a Secret, and what the tenant does just before it reaches the
/// API server.
type TenantMove = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A tower layer on the syncer's client that lets the tenant act between the syncer's last read
/// of a Secret and its write: the first POST or PATCH under `prefix` after [`Race::arm`] runs the
/// armed move to completion first. Deterministic, where racing over the network would be luck.
#[derive(Clone)]
struct Race {
    prefix: String,
    armed: Arc<Mutex<Option<TenantMove>>>,
}

impl Race {
    fn arm(&self, tenant: TenantMove) {
        *self.armed.lock().unwrap() = Some(tenant);
    }

    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

struct RaceService<S> {
    inner: S,
    race: Race,
}

impl<S> tower::Service<http::Request<kube::client::Body>> for RaceService<S>
where
    S: tower::Service<http::Request<kube::client::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let write = matches!(*req.method(), http::Method::POST | http::Method::PATCH);
        if write && req.uri().path().starts_with(&self.race.prefix) {
            let tenant = self.race.armed.lock().unwrap().take();
            if let Some(tenant) = tenant {
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(tenant));
            }
        }
        self.inner.call(req)
    }
}

/// A client for the test cluster whose Secret writes in `namespace` the tenant can race.
async fn racing_client(cluster: &Cluster, namespace: &str) -> (Client, Race) {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let race = Race {
        prefix: format!("/api/v1/namespaces/{namespace}/secrets"),
        armed: Arc::default(),
    };
    let layer_race = race.clone();
    let client = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&tower::layer::layer_fn(move |inner| RaceService {
            inner,
            race: layer_race.clone(),
        }))
        .build();
    (client, race)
}

/// The syncer looks classes up only for other pods' statuses; these tests have none.
struct NoClasses;

#[async_trait::async_trait]
impl ClassLookup for NoClasses {
    async fn class(&self, _: &str, _: &str) -> Option<Arc<SecretProviderClass>> {
        None
    }
}

/// Syncs Secret `secret` (key `value`) as a volume of a class that keeps its Secrets (no owner
/// references, so nothing else deletes them) would.
async fn sync_secret(
    sync: &SecretSync,
    namespace: &str,
    secret: &str,
    value: &str,
) -> Result<(), SyncError> {
    let class: SecretProviderClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": "raced", "namespace": namespace,
            "annotations": {"secrets-store.csi.x-k8s.io/secret-lifetime": "retain"}},
        "spec": {"provider": "aws", "secretObjects": [{"secretName": secret, "type": "Opaque",
            "data": [{"objectName": "object", "key": "value"}]}]}
    }))
    .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": namespace, "uid": "00000000-0000-0000-0000-0000000000aa"}
    }))
    .unwrap();
    let status: SecretProviderClassPodStatus = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "p-status", "namespace": namespace,
            "uid": "00000000-0000-0000-0000-0000000000bb"},
    }))
    .unwrap();
    let files = BTreeMap::from([("object".to_string(), SecretBytes::from(value.to_string()))]);
    let request = SyncRequest {
        pod: &pod,
        class: &class,
        pod_status: &status,
        files: VolumeFiles::InMemory(&files),
    };
    sync.sync_volume(&request).await.map(|_| ())
}

/// The tenant's Secret `name` with `value`, carrying no managed label.
fn tenants_secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"value": value},
    }))
    .unwrap()
}

/// Asserts the tenant's Secret `name` is as the tenant wrote it: its value, no managed label, no
/// field the agent wrote.
async fn assert_not_adopted(secrets: &Api<Secret>, name: &str, value: &str, field_manager: &str) {
    let secret = secrets.get(name).await.unwrap();
    let data = secret.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("value").map(|v| v.0.as_slice()),
        Some(value.as_bytes()),
        "{name}: the tenant's value was overwritten"
    );
    assert!(
        !secret.labels().contains_key(labels::MANAGED),
        "{name}: the tenant's Secret was labelled managed"
    );
    let managers: Vec<_> = secret
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == field_manager),
        "{name}: the agent owns fields of the tenant's Secret: {managers:?}"
    );
}

/// Item 7: a Secret the tenant creates between the syncer's "absent or managed?" read and its
/// write is never adopted, whether the syncer was about to create the Secret or to update its
/// own: the write fails its precondition, the syncer reads again and refuses with
/// `SecretNotManaged`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_created_between_the_check_and_the_write_is_never_adopted() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("adv-sync-race").await;
    let node = "adv-sync-race-node";
    let field_manager = format!("secrets-store-rs/{node}");
    let dir = tempfile::tempdir().unwrap();
    let (client, race) = racing_client(cluster, &ns).await;
    let (sync, watches) = SecretSync::new(
        client,
        NodeVolumes::new(node, dir.path()),
        Arc::new(NoClasses),
    );
    let watches = tokio::spawn(watches);
    tokio::time::timeout(WAIT, sync.ready())
        .await
        .expect("the syncer's watches listed");
    let tenant: Api<Secret> = Api::namespaced(cluster.client(), &ns);

    // The Secret does not exist when the syncer looks; the tenant creates it before the write.
    race.arm(Box::pin({
        let tenant = tenant.clone();
        async move {
            tenant
                .create(
                    &PostParams::default(),
                    &tenants_secret("raced-create", "tenant-1"),
                )
                .await
                .unwrap();
        }
    }));
    let result = sync_secret(&sync, &ns, "raced-create", "agent-1").await;
    assert!(race.fired(), "the syncer never wrote raced-create");
    assert!(
        matches!(result, Err(SyncError::NotManaged { .. })),
        "raced-create: {result:?}"
    );
    assert_not_adopted(&tenant, "raced-create", "tenant-1", &field_manager).await;

    // The syncer's own Secret, rotated: between the syncer's read and its write, the tenant
    // deletes it and creates an unlabelled one of the same name.
    sync_secret(&sync, &ns, "raced-update", "agent-1")
        .await
        .expect("first sync of raced-update");
    race.arm(Box::pin({
        let tenant = tenant.clone();
        async move {
            tenant
                .delete("raced-update", &DeleteParams::default())
                .await
                .unwrap();
            tenant
                .create(
                    &PostParams::default(),
                    &tenants_secret("raced-update", "tenant-2"),
                )
                .await
                .unwrap();
        }
    }));
    let result = sync_secret(&sync, &ns, "raced-update", "agent-2").await;
    assert!(race.fired(), "the syncer never wrote raced-update");
    assert!(
        matches!(result, Err(SyncError::NotManaged { .. })),
        "raced-update: {result:?}"
    );
    assert_not_adopted(&tenant, "raced-update", "tenant-2", &field_manager).await;

    // Without a tenant in the way, a Secret the syncer created itself is fully its own: a key the
    // class no longer lists goes (a create by POST must not leave fields behind that a later
    // apply cannot remove).
    let two_keys: SecretProviderClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": "c", "namespace": &ns,
            "annotations": {"secrets-store.csi.x-k8s.io/secret-lifetime": "retain"}},
        "spec": {"provider": "aws", "secretObjects": [{"secretName": "owned", "type": "Opaque",
            "data": [{"objectName": "object", "key": "value"}, {"objectName": "object", "key": "old"}]}]}
    }))
    .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
    let status: SecretProviderClassPodStatus = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "s", "namespace": &ns}}))
    .unwrap();
    let files = BTreeMap::from([("object".to_string(), SecretBytes::from("v1".to_string()))]);
    sync.sync_volume(&SyncRequest {
        pod: &pod,
        class: &two_keys,
        pod_status: &status,
        files: VolumeFiles::InMemory(&files),
    })
    .await
    .unwrap();
    sync_secret(&sync, &ns, "owned", "v2").await.unwrap();
    let owned = tenant.get("owned").await.unwrap().data.unwrap_or_default();
    assert_eq!(
        owned.keys().collect::<Vec<_>>(),
        ["value"],
        "the dropped key stayed"
    );

    watches.abort();
    Api::<Namespace>::all(cluster.client())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// Item 7: a malformed rollout digest key Secret (wrong data key, empty, no data) does not crash
/// the agent, is reported clearly and never overwritten; sync keeps working without rollout, and
/// rollout resumes (a new key) once the Secret is deleted, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_rollout_key_neither_crashes_the_agent_nor_stops_sync() {
    let mut world = World::start("adv-sync-key", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let secrets: Api<Secret> = Api::namespaced(world.cluster.client(), &world.namespace);
    let options = AgentOptions {
        poll: "1s",
        aws_endpoint: world.cluster.moto().endpoint().to_string(),
        metrics_addr: String::new(),
        env: vec![],
    };
    let malformed: [(&str, serde_json::Value); 3] = [
        (
            "data keys present: [hmac]",
            serde_json::json!({"hmac": "c2VjcmV0LWJ1dC13cm9uZy1uYW1l"}),
        ),
        ("holds 0 bytes", serde_json::json!({"key": ""})),
        ("data keys present: []", serde_json::json!(null)),
    ];
    for (problem, data) in &malformed {
        world.agent.stop();
        let _ = secrets
            .delete(DIGEST_KEY_SECRET, &DeleteParams::default())
            .await;
        eventually(WAIT, "the old key Secret gone", || async {
            secrets
                .get_opt(DIGEST_KEY_SECRET)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        let key: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": DIGEST_KEY_SECRET}, "data": data}))
        .unwrap();
        secrets.create(&PostParams::default(), &key).await.unwrap();
        // The old agent panicked here, before serving.
        world.agent = world.start_agent(&options);
        let log = eventually(WAIT, "the malformed key reported", || async {
            let log = world.agent.log_text();
            log.contains("is malformed").then_some(log)
        })
        .await;
        assert!(
            log.contains(problem) && log.contains(DIGEST_KEY_SECRET),
            "the report names the Secret and {problem:?}:\n{log}"
        );
    }

    // Sync works; a rotation reaches the Secret but rolls nothing.
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    world.running_pods(3).await;
    world.opt_in_rollout().await;
    world.rotate("rotated").await;
    eventually(WAIT, "foosecret rotated", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("rotated"))
        .then_some(())
    })
    .await;
    eventually(WAIT, "the failed rollout logged", || async {
        world
            .agent
            .log_text()
            .contains("rollout after Secret change failed")
            .then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(world.cluster.client(), &world.namespace);
    assert!(
        digest_of(&deployments.get(SEED_DEPLOYMENT).await.unwrap()).is_none(),
        "rolled out without a usable key"
    );
    let kept = secrets.get(DIGEST_KEY_SECRET).await.unwrap();
    assert!(
        kept.data.unwrap_or_default().is_empty(),
        "the agent rewrote the key Secret"
    );

    // Deleted, it is created anew on the next change and the workload rolls.
    secrets
        .delete(DIGEST_KEY_SECRET, &DeleteParams::default())
        .await
        .unwrap();
    world.rotate("rotated-again").await;
    eventually(WAIT, "the Deployment's template annotated", || async {
        digest_of(&deployments.get(SEED_DEPLOYMENT).await.unwrap())
    })
    .await;
    assert!(secrets.get_opt(DIGEST_KEY_SECRET).await.unwrap().is_some());
}

/// The rollout digest annotation on a Deployment's pod template, if any.
fn digest_of(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .iter()
        .find(|(k, _)| k.starts_with(DIGEST_ANNOTATION_PREFIX))
        .map(|(_, v)| v.clone())
}

/// The chart's node agent rules (`charts/secrets-store-rs/templates/rbac.yaml`), with the pod
/// statuses' `list` and `watch` only if `statuses_listable`.
fn agent_rules(statuses_listable: bool) -> serde_json::Value {
    let mut status_verbs = vec!["get", "create", "patch"];
    if statuses_listable {
        status_verbs.extend(["list", "watch"]);
    }
    serde_json::json!([
        {"apiGroups": ["secrets-store.csi.x-k8s.io"], "resources": ["secretproviderclasses"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["secrets-store.csi.x-k8s.io"], "resources": ["secretproviderclasspodstatuses"], "verbs": status_verbs},
        {"apiGroups": [""], "resources": ["pods", "serviceaccounts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list", "patch"]},
    ])
}

/// Item 7: after a restart, the agent serves no publish before its sync watches have listed. Here
/// the pod-status list is slow to come (the agent may not list statuses for the first seconds);
/// a publish served before would compute the synced Secret's owners from an empty status cache and
/// leave out the other pod: two bare pods sharing a Secret would flip it between one owner and
/// the other, and deleting either pod would have the garbage collector delete the other's Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_wait_for_the_sync_caches_after_a_restart() {
    let mut world = World::start("adv-sync-ready", "1m", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let admin = world.cluster.client();
    let role = world.seed_aws("shared-value").await;
    world.apply_service_account(&role).await;
    world
        .apply_class(&seed_file("secretproviderclass.yaml"))
        .await;
    world.bare_pod("a").await;
    world.bare_pod("b").await;
    world.running_pods(2).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &world.namespace);
    let owner_count = || async {
        secrets
            .get_opt("foosecret")
            .await
            .unwrap()
            .map(|s| s.owner_references().len())
    };
    eventually(WAIT, "foosecret owned by both pods' statuses", || async {
        (owner_count().await == Some(2)).then_some(())
    })
    .await;

    // The restarted agent runs as a ServiceAccount that may not list statuses yet.
    let account = "slow-agent";
    let role_name = format!("adv-sync-ready-{}", world.namespace);
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": role_name}, "rules": agent_rules(false)}))
            .unwrap(),
        )
        .await
        .unwrap();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": world.namespace}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let kubeconfig = world.dir.path().join("slow-agent.kubeconfig");
    secrets_store_testenv::node_agent::write_impersonating_kubeconfig(
        world.cluster,
        &world.namespace,
        account,
        &kubeconfig,
    )
    .unwrap();

    world.agent.stop();
    secrets
        .delete("foosecret", &DeleteParams::default())
        .await
        .unwrap();
    // Record every owner count the Secret shows until the test ends.
    let seen = Arc::new(Mutex::new(Vec::<usize>::new()));
    let watching = tokio::spawn({
        let seen = seen.clone();
        let secrets = secrets.clone();
        async move {
            loop {
                if let Some(s) = secrets.get_opt("foosecret").await.unwrap() {
                    seen.lock().unwrap().push(s.owner_references().len());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let granted_after = Duration::from_secs(5);
    let started = Instant::now();
    let grant = tokio::spawn({
        let roles = roles.clone();
        let role_name = role_name.clone();
        async move {
            tokio::time::sleep(granted_after).await;
            roles
                .patch(
                    &role_name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"rules": agent_rules(true)})),
                )
                .await
                .unwrap();
        }
    });
    let root = world.dir.path().join("kubelet");
    let args: Vec<String> = [
        "--node-id",
        world.cluster.node_name(),
        "--kubelet-dir",
        root.to_str().unwrap(),
        "--metrics-addr",
        "",
        "--healthz-addr",
        "",
        "--enable-secret-sync",
        "--enable-secret-rotation",
        "--rotation-poll-interval",
        "1m",
        "--namespace",
        &world.namespace,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (dir, endpoint) = (
        world.dir.path().to_path_buf(),
        world.cluster.moto().endpoint().to_string(),
    );
    world.agent = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Driver::start_with_env(&dir, &kubeconfig, &args, &[("AWS_ENDPOINT_URL", &endpoint)])
    })
    .await
    .unwrap();
    let serving_after = started.elapsed();
    grant.await.unwrap();
    eventually(WAIT, "foosecret synced again", || async {
        owner_count().await.is_some().then_some(())
    })
    .await;
    // A few of kubelet's republishes of both pods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|&n| n == 2),
        "foosecret's owner counts while the agent restarted (served after {serving_after:?}, statuses listable after {granted_after:?}): {seen:?}"
    );
    assert!(
        serving_after >= granted_after,
        "the agent served after {serving_after:?}, before it could list statuses ({granted_after:?})"
    );
    let log = world.agent.log_text();
    assert!(log.contains("secret sync caches listed"), "{log}");

    bindings
        .delete(&role_name, &DeleteParams::default())
        .await
        .unwrap();
    roles
        .delete(&role_name, &DeleteParams::default())
        .await
        .unwrap();
}
