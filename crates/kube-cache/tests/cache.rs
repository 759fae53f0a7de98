//! `NamespacedCache` against a real kube-apiserver: a lookup never waits for a namespace's first
//! list, the cache serves once synced, metadata-only caches carry annotations, idle namespaces
//! lose their reflector.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ObjectMeta, PartialObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use secrets_store_kube_cache::NamespacedCache;
use secrets_store_testenv::{Cluster, eventually};
use serde_json::json;

async fn config_map(client: &kube::Client, ns: &str, name: &str) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".into(), "v".into())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

/// A client acting as `user`, who may only `get` ConfigMaps in `ns`: its watches never list.
async fn get_only_client(cluster: &Cluster, ns: &str, user: &str) -> kube::Client {
    let admin = cluster.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "get-only"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "get-only"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "get-only"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let mut kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path()).unwrap();
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.into());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn a_lookup_never_waits_for_a_first_list() {
    let cluster = Cluster::shared();
    let ns = cluster.new_namespace("cache-nolist").await;
    config_map(&cluster.client(), &ns, "present").await;
    let client = get_only_client(cluster, &ns, "cache-reader").await;
    let cache = NamespacedCache::<ConfigMap>::new(client);
    // The watch is forbidden to list, so it never syncs: an answer within the bound can only come
    // from the direct read (a cache that waits for the first list would wait it out first).
    for name in ["present", "present", "absent"] {
        let got = tokio::time::timeout(Duration::from_secs(2), cache.get(&ns, name))
            .await
            .unwrap_or_else(|_| panic!("looking up {name} waited for the watch"))
            .unwrap();
        assert_eq!(got.is_some(), name == "present", "{name}");
    }
}

#[tokio::test]
async fn a_synced_namespace_is_served_from_the_cache() {
    let cluster = Cluster::shared();
    let admin = cluster.client();
    let ns = cluster.new_namespace("cache-synced").await;
    config_map(&admin, &ns, "a").await;
    let cache = NamespacedCache::<ConfigMap>::new(admin.clone());
    assert!(cache.get(&ns, "a").await.unwrap().is_some());
    // An object created later reaches the cache through the watch.
    config_map(&admin, &ns, "b").await;
    let found = eventually(Duration::from_secs(10), "b from the cache", || async {
        cache.get(&ns, "b").await.ok().flatten()
    })
    .await;
    assert_eq!(found.data.as_ref().unwrap()["k"], "v");
    assert_eq!(cache.watched_namespaces(), vec![ns.clone()]);
}

#[tokio::test]
async fn metadata_caches_carry_annotations_and_idle_namespaces_are_evicted() {
    let cluster = Cluster::shared();
    let admin = cluster.client();
    let (ns_a, ns_b) = (
        cluster.new_namespace("cache-meta-a").await,
        cluster.new_namespace("cache-meta-b").await,
    );
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("app".into()),
            annotations: Some(BTreeMap::from([(
                "eks.amazonaws.com/role-arn".into(),
                "arn:aws:iam::111122223333:role/app".into(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns_a)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let cache = NamespacedCache::<PartialObjectMeta<ServiceAccount>>::new(admin)
        .with_idle_eviction(Duration::ZERO);
    let meta = cache.get(&ns_a, "app").await.unwrap().expect("found");
    assert_eq!(
        meta.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/app"
    );
    assert_eq!(cache.watched_namespaces(), vec![ns_a.clone()]);
    assert!(cache.get(&ns_b, "default").await.unwrap().is_some());
    assert_eq!(
        cache.watched_namespaces(),
        vec![ns_b],
        "the idle namespace lost its reflector"
    );
}
