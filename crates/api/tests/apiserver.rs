//! The generated CRDs against a real kube-apiserver (installed by testenv from `crds()`):
//! the seed class round-trips, v1alpha1 is served, and status is written without a status
//! subresource, as upstream clients do.

use std::collections::BTreeMap;

use kube::api::{Api, ListParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use secrets_store_api::crd::{
    SecretProviderClass, SecretProviderClassObject, SecretProviderClassPodStatus,
    SecretProviderClassPodStatusStatus,
};
use secrets_store_api::labels;
use secrets_store_testenv::Cluster;

#[tokio::test]
async fn seed_class_round_trips_and_v1alpha1_is_served() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("crd-spc").await;
    let client = cluster.client();

    let spc: SecretProviderClass = serde_yaml::from_str(&secrets_store_testenv::seed::file(
        "secretproviderclass.yaml",
    ))
    .unwrap();
    let api: Api<SecretProviderClass> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &spc).await.unwrap();
    let stored = api.get("nginx-deployment-aws-secrets").await.unwrap();
    assert_eq!(stored.spec, spc.spec, "nothing pruned or defaulted");

    // Old manifests and clients keep working through the deprecated version.
    let gvk = GroupVersionKind::gvk(labels::API_GROUP, "v1alpha1", "SecretProviderClass");
    let old: Api<DynamicObject> = Api::namespaced_with(
        client,
        &ns,
        &ApiResource::from_gvk_with_plural(&gvk, "secretproviderclasses"),
    );
    let via_alpha = old.get("nginx-deployment-aws-secrets").await.unwrap();
    assert_eq!(via_alpha.data["spec"]["provider"], "aws");
    assert_eq!(
        via_alpha.data["spec"]["secretObjects"][0]["secretName"],
        "foosecret"
    );
}

#[tokio::test]
async fn pod_status_is_written_with_the_object_and_found_by_node_label() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("crd-status").await;
    let api: Api<SecretProviderClassPodStatus> = Api::namespaced(cluster.client(), &ns);

    let status = SecretProviderClassPodStatusStatus {
        pod_name: "web-0".into(),
        secret_provider_class_name: "aws-secrets".into(),
        mounted: true,
        target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
        objects: vec![SecretProviderClassObject {
            id: "db".into(),
            version: "v1".into(),
        }],
    };
    let mut obj = SecretProviderClassPodStatus::for_pod(&ns, status.clone());
    obj.metadata.labels = Some(BTreeMap::from([(
        labels::NODE_NAME.to_owned(),
        cluster.node_name().to_owned(),
    )]));
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(
        created.status.as_ref(),
        Some(&status),
        "status is kept on create (no status subresource)"
    );

    let selector = format!("{}={}", labels::NODE_NAME, cluster.node_name());
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["web-0-".to_owned() + &ns + "-aws-secrets"]);
}
