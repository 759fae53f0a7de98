//! `secrets-store controller` against a real apiserver and kube-controller-manager (issue 16):
//! the rollout controller rolls an opted-in Deployment once per change of the managed Secret it
//! reads, never at the Secret's creation, never a Deployment that did not opt in; and when the
//! leader is killed, the standby takes over and no change is rolled twice.
//!
//! No kubelet is needed: kube-controller-manager creates one ReplicaSet per distinct pod template,
//! so the ReplicaSets of a Deployment count its rollouts exactly.

mod common;
mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use common::controller::ControllerProc;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use secrets_store_sync::rollout::{
    DIGEST_KEY_FIELD, DIGEST_KEY_SECRET, ROLLED_OUT_ANNOTATION, ROLLOUT_ANNOTATION, data_digest,
    digest_annotation,
};
use secrets_store_testenv::{Cluster, eventually};

use e2e::World;

const WAIT: Duration = Duration::from_secs(90);
/// The controllers' own namespace (Lease, digest key): one per cluster, as in a real install.
const CONTROLLER_NS: &str = "secrets-store-ctl";
const LEASE: &str = "secrets-store-rs-controller";
const SECRET: &str = "foosecret";

/// One controller deployment per cluster: the tests of this binary take turns.
static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn controller_namespace(client: &Client) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(CONTROLLER_NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {CONTROLLER_NS}: {e}"),
    }
}

/// A Deployment whose container reads `SECRET` through `secretKeyRef`, opted in or not.
fn deployment(name: &str, opted_in: bool) -> Deployment {
    let annotations = if opted_in {
        serde_json::json!({ROLLOUT_ANNOTATION: "true"})
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.14.2", "env": [{
                    "name": "SECRET_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "SECRET_API_KEY"}},
                }]}]},
            },
        },
    }))
    .unwrap()
}

/// The managed Secret as the node agents write it.
fn managed_secret(value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            labels: Some(BTreeMap::from([(
                "secrets-store.csi.k8s.io/managed".into(),
                "true".into(),
            )])),
            ..Default::default()
        },
        data: Some(data(value)),
        ..Default::default()
    }
}

fn data(value: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([(
        "SECRET_API_KEY".to_string(),
        ByteString(value.as_bytes().to_vec()),
    )])
}

/// A namespace for one test's workloads, with the helpers the assertions read.
struct Workloads {
    client: Client,
    ns: String,
}

impl Workloads {
    async fn new(cluster: &Cluster, prefix: &str) -> Self {
        Self {
            client: cluster.client(),
            ns: cluster.new_namespace(prefix).await,
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create_deployment(&self, name: &str, opted_in: bool) {
        self.deployments()
            .create(&PostParams::default(), &deployment(name, opted_in))
            .await
            .unwrap();
        eventually(WAIT, "the first ReplicaSet", || async {
            (self.replica_sets(name).await == 1).then_some(())
        })
        .await;
    }

    /// ReplicaSets of Deployment `name`: one per distinct pod template it has had.
    async fn replica_sets(&self, name: &str) -> usize {
        Api::<ReplicaSet>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap()
            .items
            .len()
    }

    /// The secret-digest annotation on Deployment `name`'s pod template.
    async fn template_digest(&self, name: &str) -> Option<String> {
        self.deployments()
            .get(name)
            .await
            .unwrap()
            .spec?
            .template
            .metadata?
            .annotations?
            .get(&digest_annotation(SECRET))
            .cloned()
    }

    /// The digest the controller recorded on the Secret.
    async fn recorded(&self) -> Option<String> {
        self.secrets()
            .get(SECRET)
            .await
            .unwrap()
            .annotations()
            .get(ROLLED_OUT_ANNOTATION)
            .cloned()
    }

    async fn set_value(&self, value: &str) {
        self.secrets()
            .patch(
                SECRET,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": data(value)})),
            )
            .await
            .unwrap();
    }

    /// The digest of `value` under the cluster's key (what the controller patches in).
    async fn digest_of(&self, value: &str) -> String {
        let key = Api::<Secret>::namespaced(self.client.clone(), CONTROLLER_NS)
            .get(DIGEST_KEY_SECRET)
            .await
            .unwrap()
            .data
            .unwrap()
            .remove(DIGEST_KEY_FIELD)
            .unwrap();
        let data = BTreeMap::from([(
            "SECRET_API_KEY".to_string(),
            secrets_store_provider::SecretBytes::new(value.as_bytes().to_vec()),
        )]);
        data_digest(&key.0, SECRET, &data)
    }

    /// Waits until the controller recorded the digest of `value` and Deployment `name`'s template
    /// carries it.
    async fn rolled_to(&self, name: &str, value: &str) {
        let want = self.digest_of(value).await;
        eventually(WAIT, &format!("{name} rolled to {value}"), || async {
            (self.recorded().await.as_deref() == Some(want.as_str())
                && self.template_digest(name).await.as_deref() == Some(want.as_str()))
            .then_some(())
        })
        .await;
    }

    /// Waits until the controller has seen the Secret holding `value` (the digest recorded at
    /// first sight). A change before that is the Secret's first state, not a change.
    async fn first_sight(&self, value: &str) {
        let want = self.digest_of(value).await;
        eventually(WAIT, "the digest recorded at first sight", || async {
            (self.recorded().await.as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
    }

    /// `SecretChangedRollout` Events about Deployment `name`.
    async fn rollout_events(&self, name: &str) -> usize {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("SecretChangedRollout")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .count()
    }
}

/// The Lease's current holder.
async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), CONTROLLER_NS)
        .get_opt(LEASE)
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

async fn wait_until_leading(client: &Client, replica: &ControllerProc) {
    eventually(
        WAIT,
        &format!("{} holding the Lease", replica.name),
        || async { holder(client).await.filter(|h| replica.is(h)).map(|_| ()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_rolls_each_opted_in_deployment_once_and_creation_rolls_nothing() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-rollout").await;
    let controller = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-solo");
    wait_until_leading(&client, &controller).await;
    w.create_deployment("opted", true).await;
    w.create_deployment("plain", false).await;

    // Creation: the controller records the digest and rolls nothing.
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;
    assert_eq!(w.template_digest("opted").await, None, "creation rolled");
    assert_eq!(w.replica_sets("opted").await, 1);

    // A change: the opted-in Deployment rolls once, the other not at all.
    w.set_value("v2").await;
    w.rolled_to("opted", "v2").await;
    eventually(WAIT, "the second ReplicaSet", || async {
        (w.replica_sets("opted").await == 2).then_some(())
    })
    .await;
    assert_eq!(w.rollout_events("opted").await, 1);

    // A change of anything but the data (a label) rolls nothing; the next data change rolls
    // once more: one new ReplicaSet per data change, none for anything else.
    w.secrets()
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    w.set_value("v3").await;
    w.rolled_to("opted", "v3").await;
    eventually(WAIT, "the third ReplicaSet", || async {
        (w.replica_sets("opted").await == 3).then_some(())
    })
    .await;
    assert_eq!(
        w.replica_sets("plain").await,
        1,
        "a Deployment that did not opt in rolled"
    );
    assert_eq!(w.template_digest("plain").await, None);
    assert_eq!(w.rollout_events("plain").await, 0);
    assert_eq!(
        controller.metric("rollout_workloads_patched_total{kind=\"Deployment\"}"),
        Some(2.0),
        "{}",
        controller.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_no_change_rolls_twice() {
    let _turn = ONE_CONTROLLER.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let client = cluster.client();
    controller_namespace(&client).await;
    let w = Workloads::new(cluster, "ctl-failover").await;
    let mut first = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-a");
    wait_until_leading(&client, &first).await;
    let second = ControllerProc::start(cluster, CONTROLLER_NS, "ctl-b");
    w.create_deployment("half-rolled", true).await;
    w.create_deployment("untouched", true).await;
    w.secrets()
        .create(&PostParams::default(), &managed_secret("v1"))
        .await
        .unwrap();
    w.first_sight("v1").await;
    w.set_value("v2").await;
    w.rolled_to("half-rolled", "v2").await;
    w.rolled_to("untouched", "v2").await;
    // One leader: the standby runs nothing while the first holds the Lease.
    assert_eq!(first.metric("controller_leader"), Some(1.0));
    assert_eq!(second.metric("controller_leader"), Some(0.0));
    assert!(first.is(&holder(&client).await.unwrap()));

    // The leader dies without releasing anything, in the middle of rolling v3 out: it had
    // patched one consumer and not yet recorded the digest on the Secret.
    first.kill_hard();
    w.set_value("v3").await;
    let v3 = w.digest_of("v3").await;
    w.deployments()
        .patch(
            "half-rolled",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                digest_annotation(SECRET): v3}}}}}),
            ),
        )
        .await
        .unwrap();

    // The standby takes over and finishes the rollout: the consumer left behind rolls once, the
    // one already patched does not roll again.
    wait_until_leading(&client, &second).await;
    w.rolled_to("untouched", "v3").await;
    w.rolled_to("half-rolled", "v3").await;
    assert_eq!(second.metric("controller_leader"), Some(1.0));
    for name in ["half-rolled", "untouched"] {
        eventually(WAIT, &format!("{name}'s ReplicaSet for v3"), || async {
            (w.replica_sets(name).await == 3).then_some(())
        })
        .await;
    }
    // The new leader keeps rolling: v4 gives each exactly one more ReplicaSet.
    w.set_value("v4").await;
    for name in ["half-rolled", "untouched"] {
        w.rolled_to(name, "v4").await;
        eventually(WAIT, &format!("{name}'s ReplicaSet for v4"), || async {
            (w.replica_sets(name).await == 4).then_some(())
        })
        .await;
    }
    let log = second.log_text();
    assert!(log.contains("taking the leader Lease"), "{log}");
}

/// The whole path with the controller: the node agent (`--rollout=off`) mounts the seed and
/// writes `foosecret`, a rotation in AWS reaches the Secret through the agent, and the controller
/// (not the agent) rolls the opted-in seed Deployment once; its new pods see the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_agent_syncs_and_the_controller_rolls_a_rotation_once() {
    let _turn = ONE_CONTROLLER.lock().await;
    let world = World::start_with_args(
        "ctl-seed",
        "1s",
        Duration::from_millis(500),
        &["--rollout=off"],
    )
    .await;
    let _logs = world.cluster.dump_logs_on_panic();
    let client = world.cluster.client();
    controller_namespace(&client).await;
    let controller = ControllerProc::start(world.cluster, CONTROLLER_NS, "ctl-seed");
    wait_until_leading(&client, &controller).await;
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    let first = world.running_pods(3).await;
    world.opt_in_rollout().await;
    let w = Workloads {
        client: client.clone(),
        ns: world.namespace.clone(),
    };
    w.first_sight("secretkey").await;

    world.rotate("rotated").await;
    let fresh = world.rolled_pods(&first, 3).await;
    for pod in &fresh {
        let env = world.env(pod).await;
        assert_eq!(
            env.get("SECRET_API_KEY").map(String::as_str),
            Some("rotated")
        );
    }
    w.rolled_to(e2e::SEED_DEPLOYMENT, "rotated").await;
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &world.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2, "exactly one rollout");
    let rolled = "rolling workloads after Secret change";
    assert!(controller.log_text().contains(rolled));
    assert!(
        !world.agent.log_text().contains(rolled),
        "the node agent rolled with --rollout=off"
    );
}
