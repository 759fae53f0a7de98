//! The identity race's world: two IAM roles in a moto account, their ServiceAccounts, the pods
//! of each role racing through the kubelet simulator, and the checks that B got nothing.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_testenv::fixtures::PodFixture;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use secrets_store_testenv::{AccountId, Cluster};

use crate::e2e::{AgentOptions, VOLUME, World, eventually};
use crate::leaks::assert_no_value_under;

/// The secret both roles ask for (also its file name in the volume).
pub const SECRET: &str = "race-db-password";
/// The one SecretProviderClass name (one object per namespace).
pub const CLASS: &str = "race";
/// The synced Secret of the class.
pub const SYNCED: &str = "race-synced";
/// Its key.
pub const KEY: &str = "password";
/// `--rotation-poll-interval`: every republish past a second re-fetches (hitting the cache).
pub const POLL: &str = "1s";
/// The kubelet simulator's republish period.
pub const REPUBLISH: Duration = Duration::from_millis(500);
/// Longest wait for the cluster to converge.
pub const WAIT: Duration = Duration::from_secs(90);

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
/// Role A: may read the secret, batched or not.
const A_READER: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRoleWithWebIdentity","Resource":"*"},{"Effect":"Allow","Action":["secretsmanager:GetSecretValue","secretsmanager:BatchGetSecretValue","secretsmanager:DescribeSecret"],"Resource":"*"}]}"#;
/// Role B, variant 1: an explicit Deny.
pub const B_EXPLICIT_DENY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRoleWithWebIdentity","Resource":"*"},{"Effect":"Deny","Action":["secretsmanager:GetSecretValue","secretsmanager:BatchGetSecretValue"],"Resource":"*"}]}"#;
/// Role B, variant 2: no Allow for Secrets Manager at all.
pub const B_NO_ALLOW: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRoleWithWebIdentity","Resource":"*"}]}"#;
/// The test's own role for PutSecretValue while IAM is enforced.
const ROTATOR: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:PutSecretValue","Resource":"*"}]}"#;

/// Which role a pod has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May read the secret.
    A,
    /// May not.
    B,
}

/// The AWS side: role ARNs and a Secrets Manager client of the rotator role.
pub struct Aws {
    pub role_a: String,
    pub role_b: String,
    pub rotator: aws_sdk_secretsmanager::Client,
}

/// Creates roles A, B (with `b_policy`) and the rotator, and the secret with `value`, with IAM
/// enforcement off (setup clients are not IAM principals).
pub async fn setup_aws(cluster: &Cluster, account: &AccountId, value: &str, b_policy: &str) -> Aws {
    let moto = cluster.moto();
    moto.set_iam_enforcement(false)
        .await
        .expect("IAM enforcement off for setup");
    let iam = moto.iam_client(account);
    for (role, policy) in [
        ("role-a", A_READER),
        ("role-b", b_policy),
        ("rotator", ROTATOR),
    ] {
        iam.create_role()
            .role_name(role)
            .assume_role_policy_document(TRUST)
            .send()
            .await
            .expect("CreateRole");
        iam.put_role_policy()
            .role_name(role)
            .policy_name("race")
            .policy_document(policy)
            .send()
            .await
            .expect("PutRolePolicy");
    }
    moto.sm_client(account)
        .create_secret()
        .name(SECRET)
        .secret_string(value)
        .send()
        .await
        .expect("CreateSecret");
    let out = moto
        .sts_client(account)
        .assume_role_with_web_identity()
        .role_arn(account.role_arn("rotator"))
        .role_session_name("identity-race-rotator")
        .web_identity_token("rotator-token")
        .send()
        .await
        .expect("AssumeRoleWithWebIdentity(rotator)");
    let c = out.credentials().expect("rotator credentials");
    let creds = aws_sdk_secretsmanager::config::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "rotator",
    );
    Aws {
        role_a: account.role_arn("role-a"),
        role_b: account.role_arn("role-b"),
        rotator: moto.sm_client_with(&moto.endpoint(), creds),
    }
}

/// A ServiceAccount `name` with the IRSA annotation `role`.
pub async fn service_account(cluster: &Cluster, ns: &str, name: &str, role: &str) {
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {"eks.amazonaws.com/role-arn": role}}
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
}

/// The race's SecretProviderClass (with a `secretObjects` sync) in `ns`.
pub async fn apply_class(cluster: &Cluster, ns: &str) {
    let spc: secrets_store_api::crd::SecretProviderClass =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": CLASS},
            "spec": {
                "provider": "aws",
                "secretObjects": [{"secretName": SYNCED, "type": "Opaque",
                    "data": [{"key": KEY, "objectName": SECRET}]}],
                "parameters": {"objects": format!("- objectName: \"{SECRET}\"\n  objectType: \"secretsmanager\"\n")}
            }
        }))
        .unwrap();
    Api::<secrets_store_api::crd::SecretProviderClass>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &spc)
        .await
        .unwrap();
}

/// Replaces the world's agent by one at trace level with `/metrics` on; returns its address.
pub fn restart_agent_observed(world: &mut World) -> String {
    let metrics = format!(
        "127.0.0.1:{}",
        secrets_store_testenv::free_port().expect("free port")
    );
    world.agent.stop();
    world.agent = world.start_agent(&AgentOptions {
        poll: POLL,
        aws_endpoint: world.cluster.moto().endpoint(),
        metrics_addr: metrics.clone(),
        env: vec![("RUST_LOG", "trace".to_string())],
    });
    metrics
}

/// Replaces the world's kubelet simulator by one that handles pods of `namespaces`.
pub fn watch_namespaces(world: &mut World, namespaces: &[String]) {
    world.kubelet.stop();
    let root = world.dir.path().join("kubelet");
    let mut config = KubeletConfig::new(world.cluster.node_name(), &root, &namespaces[0]);
    config.namespaces = namespaces.to_vec();
    config.republish_period = REPUBLISH;
    world.kubelet = KubeletSim::start(world.cluster.client(), config);
}

/// Pods of one role: namespace and ServiceAccount.
pub struct Side {
    pub namespace: String,
    pub service_account: String,
    pub role: Role,
}

impl Side {
    /// A side.
    pub fn new(namespace: &str, service_account: &str, role: Role) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            role,
        }
    }

    /// Pod name prefix: `a` or `b`.
    pub fn prefix(&self) -> &'static str {
        match self.role {
            Role::A => "a",
            Role::B => "b",
        }
    }
}

/// One pod of the race (mounted through the kubelet simulator).
#[derive(Clone, Debug)]
pub struct Racer {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub role: Role,
}

/// `n` pods of each side for `round`, alternating A, B, A, B (or B, A, … with `b_first`).
pub fn interleaved(round: usize, a: &Side, b: &Side, n: usize, b_first: bool) -> Vec<Racer> {
    let (first, second) = if b_first { (b, a) } else { (a, b) };
    (0..n)
        .flat_map(|i| [first, second].map(|s| (s, i)))
        .map(|(s, i)| Racer {
            namespace: s.namespace.clone(),
            name: format!("{}-r{round}-{i}", s.prefix()),
            service_account: s.service_account.clone(),
            role: s.role,
        })
        .collect()
}

/// Creates every racer's pod at once (one task each, spawned in the racers' order).
pub async fn create_pods(cluster: &Cluster, racers: &[Racer]) {
    let mut tasks = tokio::task::JoinSet::new();
    for r in racers {
        let pod = PodFixture::new(&r.name)
            .service_account(&r.service_account)
            .with_csi_volume(VOLUME, CLASS);
        let (client, namespace) = (cluster.client(), r.namespace.clone());
        tasks.spawn(async move { pod.create(&client, &namespace).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().expect("creating a racer pod");
    }
}

/// Deletes every racer's pod and waits until the kubelet simulator has removed them all.
pub async fn delete_pods(cluster: &Cluster, racers: &[Racer]) {
    for r in racers {
        Api::<Pod>::namespaced(cluster.client(), &r.namespace)
            .delete(&r.name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for r in racers {
        let api = Api::<Pod>::namespaced(cluster.client(), &r.namespace);
        eventually(WAIT, &format!("pod {} gone", r.name), || async {
            api.get_opt(&r.name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
}

async fn get_pod(cluster: &Cluster, r: &Racer) -> Pod {
    Api::<Pod>::namespaced(cluster.client(), &r.namespace)
        .get(&r.name)
        .await
        .unwrap()
}

/// The racer's pod uid.
pub async fn pod_uid(cluster: &Cluster, r: &Racer) -> String {
    get_pod(cluster, r).await.metadata.uid.unwrap()
}

/// kubelet's FailedMount messages for the racer's pod so far.
pub fn failed_mounts(world: &World, r: &Racer) -> Vec<String> {
    world
        .kubelet
        .events()
        .into_iter()
        .filter(|e| e.namespace == r.namespace && e.pod == r.name && e.reason == "FailedMount")
        .map(|e| e.message)
        .collect()
}

/// Waits for every A pod to run with `value` and every B pod to be denied, then checks B's.
pub async fn check_round(world: &World, racers: &[Racer], aws: &Aws, value: &str, values: &[&str]) {
    for r in racers {
        let uid = pod_uid(world.cluster, r).await;
        match r.role {
            Role::A => {
                let target = world.kubelet.target_path(&uid, VOLUME);
                eventually(
                    WAIT,
                    &format!("{} running with the value", r.name),
                    || async {
                        let running = get_pod(world.cluster, r).await.status.and_then(|s| s.phase)
                            == Some("Running".into());
                        let file = std::fs::read_to_string(target.join(SECRET)).ok();
                        (running && file.as_deref() == Some(value)).then_some(())
                    },
                )
                .await;
            }
            Role::B => {
                let target = world.kubelet.target_path(&uid, VOLUME);
                eventually(WAIT, &format!("{} denied", r.name), || async {
                    // Fail at once, not at the timeout, if B's volume was published.
                    let published = world.kubelet.published_targets().contains(&target);
                    assert!(
                        !published,
                        "B pod {} was published: {}",
                        r.name,
                        target.display()
                    );
                    (!failed_mounts(world, r).is_empty()).then_some(())
                })
                .await;
                eventually(
                    WAIT,
                    &format!("ProviderError Event on {}", r.name),
                    || async {
                        let events =
                            pod_events(world.cluster, &r.namespace, &r.name, "ProviderError");
                        let events = events.await;
                        (!events.is_empty()).then_some(events)
                    },
                )
                .await
                .iter()
                .for_each(|m| assert_denial(m, &aws.role_b, values));
                check_b_pod(world, r, &uid, aws, values).await;
            }
        }
    }
}

/// B's pod: every mount attempt failed with PermissionDenied naming the secret and role B, the
/// pod is not running, nothing is published or mounted, and no file of its pod dir holds a value.
pub async fn check_b_pod(world: &World, r: &Racer, uid: &str, aws: &Aws, values: &[&str]) {
    let failures = failed_mounts(world, r);
    assert!(!failures.is_empty(), "{} never failed", r.name);
    for m in &failures {
        assert!(m.contains("code = PermissionDenied"), "{}: {m}", r.name);
        assert_denial(m, &aws.role_b, values);
    }
    let phase = get_pod(world.cluster, r).await.status.and_then(|s| s.phase);
    assert_ne!(phase.as_deref(), Some("Running"), "{} running", r.name);
    let target = world.kubelet.target_path(uid, VOLUME);
    assert!(
        !world.kubelet.published_targets().contains(&target),
        "{} published",
        r.name
    );
    // kubelet keeps retrying B's mount: an attempt in flight may have its (empty) tmpfs mounted
    // right now, so the pod dir is scanned, mounts included, rather than asserted unmounted.
    assert_no_value_under(&world.dir.path().join("kubelet/pods").join(uid), values);
}

/// A denial message names the secret, says access denied for role B, and carries no value.
pub fn assert_denial(message: &str, role_b: &str, values: &[&str]) {
    let want = [
        format!("object \"{SECRET}\""),
        "access denied".into(),
        role_b.into(),
    ];
    for w in &want {
        assert!(message.contains(w.as_str()), "{w:?} missing in: {message}");
    }
    for v in values {
        assert!(!message.contains(v), "a value in: {message}");
    }
}

/// Whether `path` is a mount point (from `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// Messages of Events about pod `name` with `reason`.
pub async fn pod_events(cluster: &Cluster, ns: &str, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(cluster.client(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

/// One data value of Secret `name`, as text.
pub async fn secret_value(api: &Api<Secret>, name: &str) -> Option<String> {
    let data = api.get_opt(name).await.unwrap()?.data?;
    Some(String::from_utf8(data.get(KEY)?.0.clone()).unwrap())
}
