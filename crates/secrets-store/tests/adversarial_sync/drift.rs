//! Who the drift reconciler restores a synced Secret against: someone who edited or deleted it,
//! never secrets-store's own newer write. Two pods of one class on the node hold real tmpfs
//! volumes of this driver; the test plays the order in which their refreshes land (one volume
//! rotated and written, the other still holding the old value) and calls `reconcile` on the
//! behind one, so the outcome does not depend on timing. Against a real apiserver and
//! kube-controller-manager, which makes one ReplicaSet per pod template the rollout writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use secrets_store_api::crd::{
    SecretProviderClass, SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
use secrets_store_api::labels;
use secrets_store_driver::Mounter;
use secrets_store_provider::SecretBytes;
use secrets_store_sync::reconciler::{Context, reconcile};
use secrets_store_sync::rollout::{ROLLOUT_ANNOTATION, Rollout};
use secrets_store_sync::{
    ClassLookup, NodeVolumes, SecretSync, SyncReport, SyncRequest, VolumeFiles,
};
use secrets_store_testenv::{Cluster, eventually};

use super::WAIT;

const CLASS: &str = "app-secrets";
const SECRET: &str = "app-secret";
const OBJECT: &str = "api-key";
const KEY: &str = "value";
const DEPLOYMENT: &str = "app";
const PERIOD: Duration = Duration::from_secs(300);

/// One class, whatever is asked for: syncs [`SECRET`] from [`OBJECT`], kept after its pods
/// (`retain`: the statuses here are not stored, so they cannot own anything).
struct OneClass(Arc<SecretProviderClass>);

#[async_trait::async_trait]
impl ClassLookup for OneClass {
    async fn class(&self, _namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>> {
        (name == CLASS).then(|| self.0.clone())
    }
}

/// A pod of the node with its mounted volume and its status, as the driver writes them.
struct Volume {
    pod: Pod,
    status: Arc<SecretProviderClassPodStatus>,
    target: PathBuf,
}

impl Volume {
    /// What the provider fetched into the volume.
    fn holds(&self, value: &str) {
        std::fs::write(self.target.join(OBJECT), value).unwrap();
    }
}

/// The node, its pods' volumes, the syncer and the drift reconciler's context, an opted-in
/// Deployment consuming the Secret.
struct Fixture {
    cluster: &'static Cluster,
    ns: String,
    node: String,
    class: Arc<SecretProviderClass>,
    sync: SecretSync,
    ctx: Arc<Context>,
    volumes: Vec<Volume>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    kubelet_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(prefix: &str, pods: &[&str]) -> Self {
        let cluster = Cluster::shared();
        let ns = cluster.new_namespace(prefix).await;
        let node = format!("{ns}-node");
        let kubelet_dir = tempfile::tempdir().unwrap();
        let class: SecretProviderClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": CLASS, "namespace": &ns,
                "annotations": {"secrets-store.csi.x-k8s.io/secret-lifetime": "retain"}},
            "spec": {"provider": "aws", "parameters": {"objects": "x"},
                "secretObjects": [{"secretName": SECRET, "type": "Opaque",
                    "data": [{"objectName": OBJECT, "key": KEY}]}]}
        }))
        .unwrap();
        let class = Arc::new(class);
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": DEPLOYMENT, "annotations": {ROLLOUT_ANNOTATION: "true"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": DEPLOYMENT}},
                "template": {
                    "metadata": {"labels": {"app": DEPLOYMENT}},
                    "spec": {"containers": [{"name": "app", "image": "app",
                        "env": [{"name": "API_KEY", "valueFrom":
                            {"secretKeyRef": {"name": SECRET, "key": KEY}}}]}]}
                }
            }
        }))
        .unwrap();
        Api::<Deployment>::namespaced(cluster.client(), &ns)
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();

        let (sync, watches) = node_syncer(cluster, &ns, &node, kubelet_dir.path(), &class);
        let watches = vec![tokio::spawn(watches)];
        tokio::time::timeout(WAIT, sync.ready())
            .await
            .expect("the syncer's watches listed");
        let ctx = Context::new(
            sync.clone(),
            Reporter {
                controller: "secrets-store-rs".into(),
                instance: Some(node.clone()),
            },
            PERIOD,
        );
        let mut fixture = Self {
            cluster,
            ns,
            node,
            class,
            sync,
            ctx,
            volumes: Vec::new(),
            watches,
            kubelet_dir,
        };
        for pod in pods {
            let volume = fixture.mount(pod).await;
            fixture.volumes.push(volume);
        }
        fixture
    }

    /// Creates `name` on the node and mounts its volume as the driver does (a tmpfs of ours at
    /// kubelet's path for it), with the status the driver would record.
    async fn mount(&self, name: &str) -> Volume {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": &self.node,
                "volumes": [{"name": "secrets", "csi": {"driver": labels::DRIVER_NAME,
                    "readOnly": true, "volumeAttributes": {"secretProviderClass": CLASS}}}],
                "containers": [{"name": "app", "image": "app"}]
            }
        }))
        .unwrap();
        let pod = Api::<Pod>::namespaced(self.cluster.client(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        let target = self.kubelet_dir.path().join(format!(
            "pods/{uid}/volumes/kubernetes.io~csi/secrets/mount"
        ));
        Mounter::default().mount(&target).unwrap();
        let mut status = SecretProviderClassPodStatus::for_pod(
            &self.ns,
            SecretProviderClassPodStatusStatus {
                pod_name: name.into(),
                secret_provider_class_name: CLASS.into(),
                mounted: true,
                target_path: target.to_str().unwrap().into(),
                objects: Vec::new(),
            },
        );
        status.metadata.uid = Some(format!("status-of-{name}"));
        status.metadata.resource_version = Some("1".into());
        status.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid,
            ..Default::default()
        }]);
        // The syncer's pod watch must have the pod before a reconcile looks for it.
        eventually(WAIT, "the pod in the syncer's watch", || async {
            self.sync.pod(&self.ns, name).await.ok()
        })
        .await;
        Volume {
            pod,
            status: Arc::new(status),
            target,
        }
    }

    /// The publish path after a fetch of `value` into volume `index` (a mount or a refresh).
    async fn publish(&self, sync: &SecretSync, index: usize, value: &str) -> SyncReport {
        let volume = &self.volumes[index];
        volume.holds(value);
        let files = [(
            OBJECT.to_string(),
            SecretBytes::from(value.as_bytes().to_vec()),
        )]
        .into();
        sync.sync_volume(&SyncRequest {
            pod: &volume.pod,
            class: &self.class,
            pod_status: &volume.status,
            files: VolumeFiles::InMemory(&files),
        })
        .await
        .expect("publish sync")
    }

    /// The drift reconciler on volume `index`, once the syncer's watch has seen the Secret as it
    /// is now (in the agent, that watch event is what triggers the reconcile).
    async fn reconcile(&self, index: usize) {
        let live = self
            .secret()
            .await
            .and_then(|s| s.metadata.resource_version);
        eventually(WAIT, "the Secret's latest version in the watch", || async {
            (self.sync.watched_version(&self.ns, SECRET) == live).then_some(())
        })
        .await;
        reconcile(self.volumes[index].status.clone(), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    async fn secret(&self) -> Option<Secret> {
        Api::<Secret>::namespaced(self.cluster.client(), &self.ns)
            .get_opt(SECRET)
            .await
            .unwrap()
    }

    async fn value(&self) -> Option<String> {
        let secret = self.secret().await?;
        let bytes = secret.data?.get(KEY)?.0.clone();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// The Deployment's generation: one more per pod-template change, i.e. per rollout.
    async fn generation(&self) -> i64 {
        Api::<Deployment>::namespaced(self.cluster.client(), &self.ns)
            .get(DEPLOYMENT)
            .await
            .unwrap()
            .metadata
            .generation
            .unwrap()
    }

    /// The ReplicaSets kube-controller-manager made, once it has seen the latest template.
    async fn replica_sets(&self) -> usize {
        let deployments = Api::<Deployment>::namespaced(self.cluster.client(), &self.ns);
        eventually(WAIT, "the Deployment controller caught up", || async {
            let d = deployments.get(DEPLOYMENT).await.ok()?;
            let observed = d.status.as_ref()?.observed_generation?;
            (Some(observed) == d.metadata.generation).then_some(())
        })
        .await;
        Api::<ReplicaSet>::namespaced(self.cluster.client(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
    }

    async fn stop(self) {
        for watch in &self.watches {
            watch.abort();
        }
        for volume in &self.volumes {
            Mounter::default()
                .unmount_and_remove(&volume.target)
                .unwrap();
        }
        Api::<Namespace>::all(self.cluster.client())
            .delete(&self.ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// A syncer of node `node` rolling opted-in workloads, and its watches to drive.
fn node_syncer(
    cluster: &Cluster,
    ns: &str,
    node: &str,
    kubelet_dir: &std::path::Path,
    class: &Arc<SecretProviderClass>,
) -> (SecretSync, futures::future::BoxFuture<'static, ()>) {
    let (sync, watches) = SecretSync::new(
        cluster.client(),
        NodeVolumes::new(node, kubelet_dir),
        Arc::new(OneClass(class.clone())),
    );
    let rollout = Rollout::new(
        cluster.client(),
        ns,
        Reporter {
            controller: "secrets-store-rs".into(),
            instance: Some(node.into()),
        },
    );
    (sync.with_rollout(rollout), watches.drive())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_behind_a_rotation_never_writes_the_old_value_back() {
    let fixture = Fixture::start("adv-sync-drift", &["pod-a", "pod-b"]).await;
    let _logs = fixture.cluster.dump_logs_on_panic();
    let (a, b) = (0, 1);
    fixture.publish(&fixture.sync, a, "v1").await;
    fixture.publish(&fixture.sync, b, "v1").await;
    assert_eq!(fixture.value().await.as_deref(), Some("v1"));
    let created = fixture.generation().await;

    // Rotation on this node: pod-a's volume refreshes first and writes the Secret; pod-b's still
    // holds the old value when the reconciler looks at it (the Secret change triggers it).
    let report = fixture.publish(&fixture.sync, a, "v2").await;
    assert_eq!(report.data_changed.len(), 1, "{report:?}");
    assert_eq!(
        fixture.generation().await,
        created + 1,
        "the rotation rolls"
    );
    fixture.reconcile(b).await;
    assert_eq!(
        fixture.value().await.as_deref(),
        Some("v2"),
        "the reconciler wrote pod-b's older value over the rotation"
    );
    assert_eq!(fixture.generation().await, created + 1, "rolled again");
    // pod-b catches up through its own refresh; nothing changes any more.
    let report = fixture.publish(&fixture.sync, b, "v2").await;
    assert_eq!(report.unchanged, [SECRET], "{report:?}");
    fixture.reconcile(a).await;
    fixture.reconcile(b).await;
    assert_eq!(fixture.value().await.as_deref(), Some("v2"));

    // Rotation written by another node's agent (its own field manager): both volumes here are
    // behind and neither writes back.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, other_watches) = node_syncer(
        fixture.cluster,
        &fixture.ns,
        "another-node",
        other_dir.path(),
        &fixture.class,
    );
    let other_watches = tokio::spawn(other_watches);
    tokio::time::timeout(WAIT, other.ready()).await.unwrap();
    // Its pod and status stand in for one of that node's (the publish path reads neither's
    // volume: the files are the provider's answer).
    let files = [(OBJECT.to_string(), SecretBytes::from(b"v3".to_vec()))].into();
    other
        .sync_volume(&SyncRequest {
            pod: &fixture.volumes[a].pod,
            class: &fixture.class,
            pod_status: &fixture.volumes[a].status,
            files: VolumeFiles::InMemory(&files),
        })
        .await
        .unwrap();
    other_watches.abort();
    assert_eq!(fixture.generation().await, created + 2);
    fixture.reconcile(a).await;
    fixture.reconcile(b).await;
    assert_eq!(fixture.value().await.as_deref(), Some("v3"));
    assert_eq!(fixture.generation().await, created + 2, "rolled again");

    // One ReplicaSet for the Deployment's creation and one per rotation, none for a flap.
    assert_eq!(fixture.replica_sets().await, 3);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_edited_by_someone_else_is_restored_and_a_deleted_one_recreated() {
    let fixture = Fixture::start("adv-sync-edit", &["pod-a"]).await;
    let _logs = fixture.cluster.dump_logs_on_panic();
    fixture.publish(&fixture.sync, 0, "v1").await;
    let secrets = Api::<Secret>::namespaced(fixture.cluster.client(), &fixture.ns);

    // `kubectl edit`: an Update under its own field manager.
    let mut edited = fixture.secret().await.unwrap();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert(KEY.into(), k8s_openapi::ByteString(b"edited".to_vec()));
    let params = PostParams {
        field_manager: Some("kubectl-edit".into()),
        ..PostParams::default()
    };
    secrets.replace(SECRET, &params, &edited).await.unwrap();
    fixture.reconcile(0).await;
    assert_eq!(fixture.value().await.as_deref(), Some("v1"), "kubectl edit");

    // An update through `stringData` (recorded as owning `f:stringData`, not the data key).
    let mut edited = fixture.secret().await.unwrap();
    edited.string_data = Some([(KEY.to_string(), "string-data".to_string())].into());
    secrets.replace(SECRET, &params, &edited).await.unwrap();
    assert_eq!(fixture.value().await.as_deref(), Some("string-data"));
    fixture.reconcile(0).await;
    assert_eq!(
        fixture.value().await.as_deref(),
        Some("v1"),
        "stringData update"
    );

    // `kubectl apply --server-side --force-conflicts`.
    let applied = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {KEY: "applied"}
    });
    secrets
        .patch(
            SECRET,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(fixture.value().await.as_deref(), Some("applied"));
    fixture.reconcile(0).await;
    assert_eq!(
        fixture.value().await.as_deref(),
        Some("v1"),
        "kubectl apply"
    );

    // Deleted: recreated.
    secrets
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the Secret gone", || async {
        fixture.secret().await.is_none().then_some(())
    })
    .await;
    fixture.reconcile(0).await;
    assert_eq!(fixture.value().await.as_deref(), Some("v1"), "deleted");
    fixture.stop().await;
}
