//! What the controller tests share: the controller namespace, workload fixtures and the reads
//! their assertions make.

use std::collections::BTreeMap;
use std::time::Duration;

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

use crate::common::controller::ControllerProc;

pub const WAIT: Duration = Duration::from_secs(90);
/// The controllers' own namespace (Lease, digest key): one per cluster, as in a real install.
pub const CONTROLLER_NS: &str = "secrets-store-ctl";
pub const LEASE: &str = "secrets-store-rs-controller";
pub const SECRET: &str = "foosecret";

/// One controller deployment per cluster: the tests of this binary take turns.
pub static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn controller_namespace(client: &Client) {
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
pub fn deployment(name: &str, opted_in: bool) -> Deployment {
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
pub fn managed_secret(value: &str) -> Secret {
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

pub fn data(value: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([(
        "SECRET_API_KEY".to_string(),
        ByteString(value.as_bytes().to_vec()),
    )])
}

/// A namespace for one test's workloads, with the helpers the assertions read.
pub struct Workloads {
    pub client: Client,
    pub ns: String,
}

impl Workloads {
    pub async fn new(cluster: &Cluster, prefix: &str) -> Self {
        Self {
            client: cluster.client(),
            ns: cluster.new_namespace(prefix).await,
        }
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_deployment(&self, name: &str, opted_in: bool) {
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
    pub async fn replica_sets(&self, name: &str) -> usize {
        Api::<ReplicaSet>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap()
            .items
            .len()
    }

    /// The secret-digest annotation on Deployment `name`'s pod template.
    pub async fn template_digest(&self, name: &str) -> Option<String> {
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
    pub async fn recorded(&self) -> Option<String> {
        self.secrets()
            .get(SECRET)
            .await
            .unwrap()
            .annotations()
            .get(ROLLED_OUT_ANNOTATION)
            .cloned()
    }

    pub async fn set_value(&self, value: &str) {
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
    pub async fn digest_of(&self, value: &str) -> String {
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
    pub async fn rolled_to(&self, name: &str, value: &str) {
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
    pub async fn first_sight(&self, value: &str) {
        let want = self.digest_of(value).await;
        eventually(WAIT, "the digest recorded at first sight", || async {
            (self.recorded().await.as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
    }

    /// `SecretChangedRollout` Events about Deployment `name`.
    pub async fn rollout_events(&self, name: &str) -> usize {
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
pub async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), CONTROLLER_NS)
        .get_opt(LEASE)
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

pub async fn wait_until_leading(client: &Client, replica: &ControllerProc) {
    eventually(
        WAIT,
        &format!("{} holding the Lease", replica.name),
        || async { holder(client).await.filter(|h| replica.is(h)).map(|_| ()) },
    )
    .await;
}
