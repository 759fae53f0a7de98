//! The drift reconciler's `reconcile` and `error_policy`, called directly on constructed status
//! objects (never stored in the API server) against a real apiserver: a forged target path reads
//! nothing and writes no Secret, with one Warning Event per version of the status; a status of a
//! pod that is not on the node is skipped silently; failures back off per status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use secrets_store_api::crd::{
    SecretProviderClass, SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
use secrets_store_api::labels;
use secrets_store_sync::reconciler::{Context, error_policy, reconcile};
use secrets_store_sync::{ClassLookup, NodeVolumes, SecretSync, SyncError, SyncMetrics};
use secrets_store_testenv::Cluster;

use super::WAIT;

const CLASS: &str = "c";
const SECRET: &str = "stolen";
const OBJECT: &str = "passwd";
/// What the file a forged status points at holds: must reach no Secret and no Event.
const CONTENT: &str = "root-only-content-7d1e";
const PERIOD: Duration = Duration::from_secs(300);

/// One class, whatever is asked for: syncs [`SECRET`] from the object [`OBJECT`].
struct OneClass(Arc<SecretProviderClass>);

#[async_trait::async_trait]
impl ClassLookup for OneClass {
    async fn class(&self, _namespace: &str, name: &str) -> Option<Arc<SecretProviderClass>> {
        (name == CLASS).then(|| self.0.clone())
    }
}

/// Status `name` in `ns` for `pod`'s volume of [`CLASS`] claiming `target`, owned by `pod`.
fn status(
    ns: &str,
    name: &str,
    pod: &Pod,
    target: &str,
    version: &str,
) -> SecretProviderClassPodStatus {
    let pod_name = pod.metadata.name.clone().unwrap();
    let mut status = SecretProviderClassPodStatus::for_pod(
        ns,
        SecretProviderClassPodStatusStatus {
            pod_name: pod_name.clone(),
            secret_provider_class_name: CLASS.into(),
            mounted: true,
            target_path: target.into(),
            objects: Vec::new(),
        },
    );
    status.metadata.name = Some(name.into());
    status.metadata.uid = Some(format!("uid-of-{name}"));
    status.metadata.resource_version = Some(version.into());
    status.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod_name,
        uid: pod.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    status
}

/// How many Events were recorded about object `name` in `ns`, and their (reason, message).
async fn events_about(client: &kube::Client, ns: &str, name: &str) -> (i32, Vec<(String, String)>) {
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let about: Vec<&Event> = events
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .collect();
    // A repeat of an Event is recorded as a series on the first one (events.k8s.io), which the
    // core view shows in `series.count`, not in `count`.
    let count = about
        .iter()
        .map(|e| {
            e.series
                .as_ref()
                .and_then(|s| s.count)
                .unwrap_or(e.count.unwrap_or(1))
        })
        .sum();
    let texts = about
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect();
    (count, texts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_on_constructed_statuses_refuses_forged_targets_once_per_version() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("adv-sync-reconcile").await;
    let node = "adv-sync-reconcile-node";
    let kubelet_dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join(OBJECT), CONTENT).unwrap();

    // The victim pod: on this node, with a volume of ours using the class (no kubelet serves it).
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "victim"},
        "spec": {
            "nodeName": node,
            "volumes": [{"name": "secrets", "csi": {"driver": labels::DRIVER_NAME, "readOnly": true,
                "volumeAttributes": {"secretProviderClass": CLASS}}}],
            "containers": [{"name": "app", "image": "app"}]
        }
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(cluster.client(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let class: SecretProviderClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": CLASS, "namespace": &ns},
        "spec": {"provider": "aws", "parameters": {"objects": "x"},
            "secretObjects": [{"secretName": SECRET, "type": "Opaque",
                "data": [{"objectName": OBJECT, "key": "value"}]}]}
    }))
    .unwrap();

    let (sync, watches) = SecretSync::new(
        cluster.client(),
        NodeVolumes::new(node, kubelet_dir.path()),
        Arc::new(OneClass(Arc::new(class))),
    );
    let mut registry = Registry::default();
    let sync = sync.with_metrics(SyncMetrics::register(
        registry.sub_registry_with_prefix("secret_sync"),
    ));
    let watches = tokio::spawn(watches.drive());
    tokio::time::timeout(WAIT, sync.ready())
        .await
        .expect("the syncer's watches listed");
    let ctx = Context::new(
        sync.clone(),
        Reporter {
            controller: "secrets-store-rs".into(),
            instance: Some(node.into()),
        },
        PERIOD,
    );

    // A target outside kubelet's volume layout, and the pod's own volume path where nothing of
    // ours is mounted.
    let in_layout = kubelet_dir.path().join(format!(
        "pods/{}/volumes/kubernetes.io~csi/secrets/mount",
        pod.metadata.uid.clone().unwrap()
    ));
    std::fs::create_dir_all(&in_layout).unwrap();
    std::fs::write(in_layout.join(OBJECT), CONTENT).unwrap();
    let forgeries = [
        ("outside", outside.path().to_path_buf(), "is not"),
        (
            "not-mounted",
            in_layout,
            "not a tmpfs mounted by this driver",
        ),
    ];
    for (name, target, rule) in &forgeries {
        let target = target.to_str().unwrap();
        let v1 = Arc::new(status(&ns, name, &pod, target, "1"));
        for _ in 0..3 {
            let action = reconcile(v1.clone(), ctx.clone()).await.unwrap();
            assert_eq!(action, Action::requeue(PERIOD), "{target}");
        }
        let (count, texts) = events_about(&cluster.client(), &ns, name).await;
        assert_eq!(count, 1, "{target}: one Warning per version: {texts:?}");
        let (reason, message) = &texts[0];
        assert_eq!(reason, "UntrustedPodStatus");
        assert!(
            message.contains(rule),
            "{target}: names the rule: {message}"
        );
        assert!(!message.contains(CONTENT), "file contents in an Event");

        // A new version of the forged status is worth a new Event, and only one.
        let v2 = Arc::new(status(&ns, name, &pod, target, "2"));
        for _ in 0..2 {
            reconcile(v2.clone(), ctx.clone()).await.unwrap();
        }
        let (count, texts) = events_about(&cluster.client(), &ns, name).await;
        assert_eq!(
            count, 2,
            "{target}: one more Warning for version 2: {texts:?}"
        );
    }
    assert!(
        Api::<Secret>::namespaced(cluster.client(), &ns)
            .get_opt(SECRET)
            .await
            .unwrap()
            .is_none(),
        "a forged status made the reconciler write a Secret"
    );

    // A status naming a pod this node does not run is skipped without an Event; one not mounted
    // yet waits for its next change.
    let mut elsewhere = pod.clone();
    elsewhere.metadata.name = Some("not-here".into());
    let skipped = Arc::new(status(&ns, "elsewhere", &elsewhere, "/x", "1"));
    assert_eq!(
        reconcile(skipped.clone(), ctx.clone()).await.unwrap(),
        Action::requeue(PERIOD)
    );
    let (count, _) = events_about(&cluster.client(), &ns, "elsewhere").await;
    assert_eq!(count, 0, "a skipped status gets no Event");
    let mut unmounted = status(&ns, "unmounted", &pod, "/x", "1");
    unmounted.status.as_mut().unwrap().mounted = false;
    assert_eq!(
        reconcile(Arc::new(unmounted), ctx.clone()).await.unwrap(),
        Action::await_change()
    );

    // Failures back off per status, doubling, and one status's failures do not delay another.
    let failed = SyncError::Contended {
        namespace: ns.clone(),
        name: SECRET.into(),
        attempts: 3,
    };
    let first = Arc::new(status(&ns, "failing", &pod, "/a", "1"));
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(first.clone(), &failed, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert_eq!(
        error_policy(skipped.clone(), &failed, ctx.clone()),
        Action::requeue(Duration::from_secs(1)),
        "another status starts its own backoff"
    );
    let not_managed = SyncError::NotManaged {
        namespace: ns.clone(),
        name: SECRET.into(),
    };
    assert_eq!(
        error_policy(first, &not_managed, ctx.clone()),
        Action::requeue(PERIOD),
        "what only a change of configuration fixes waits for the period"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        r#"secret_sync_reconciles_total{outcome="UntrustedPodStatus"} 10"#,
        r#"secret_sync_reconciles_total{outcome="skipped"} 2"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains(CONTENT));

    watches.abort();
    Api::<Namespace>::all(cluster.client())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
