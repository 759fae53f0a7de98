//! Item 7: a Secret created or swapped in between the syncer's check and its write is never
//! adopted. The real syncer against the real apiserver, with the tenant's move placed exactly in
//! that window by a layer on the syncer's client.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::labels;
use secrets_store_provider::SecretBytes;
use secrets_store_sync::{
    ClassLookup, NodeVolumes, SecretSync, SyncError, SyncRequest, VolumeFiles,
};
use secrets_store_testenv::Cluster;
use secrets_store_testenv::fixtures::PodFixture;

use super::WAIT;

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
    let pod = PodFixture::new("p")
        .in_namespace(namespace)
        .with_uid("00000000-0000-0000-0000-0000000000aa")
        .build();
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
    let field_manager = secrets_store_api::names::secret_field_manager(node);
    let dir = tempfile::tempdir().unwrap();
    let (client, race) = racing_client(cluster, &ns).await;
    let (sync, watches) = SecretSync::new(
        client,
        NodeVolumes::new(node, dir.path()),
        Arc::new(NoClasses),
    );
    let watches = tokio::spawn(watches.drive());
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
