//! The kubelet simulator against a trivial CSI driver (Identity + Node + Registration, recording
//! every request) and against the real apiserver: what kubelet sends is what the driver gets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::csi::v1::volume_capability::AccessType;
use secrets_store_api::csi::v1::volume_capability::access_mode::Mode;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use serde_json::json;
use sha2::{Digest, Sha256};

#[path = "kubelet/recording_driver.rs"]
mod recording_driver;

use recording_driver::*;

async fn create_csi_driver(client: &kube::Client, name: &str) {
    create_csi_driver_with(client, name, false).await;
}

async fn create_csi_driver_with(client: &kube::Client, name: &str, tokens_in_secrets: bool) {
    let d: CSIDriver = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "attachRequired": false,
            "podInfoOnMount": true,
            "requiresRepublish": true,
            "volumeLifecycleModes": ["Ephemeral"],
            "tokenRequests": [
                {"audience": "sts.amazonaws.com"},
                {"audience": "vault", "expirationSeconds": 900},
            ],
            "serviceAccountTokenInSecrets": tokens_in_secrets,
        },
    }))
    .unwrap();
    Api::<CSIDriver>::all(client.clone())
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

fn csi_pod(name: &str, driver: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "secrets", "csi": {
                "driver": driver,
                "readOnly": true,
                "volumeAttributes": {"secretProviderClass": "my-spc"},
                "nodePublishSecretRef": {"name": "creds"},
            }}],
        },
    }))
    .unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after 60s waiting for {what}");
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[tokio::test]
async fn publishes_and_unpublishes_exactly_like_kubelet() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("kubelet-publish").await;
    let client = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let driver_name = format!("{ns}.csi.testenv.example");
    create_csi_driver(&client, &driver_name).await;
    let driver = serve_driver(&driver_name, &root, tmp.path());

    let mut config = KubeletConfig::new(cluster.node_name(), &root, &ns);
    config.republish_period = Duration::from_millis(500);
    let mut sim = KubeletSim::start(client.clone(), config);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"key": "value"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &csi_pod("app", &driver_name))
        .await
        .unwrap();
    wait_until("pod Running", || async {
        pods.get("app").await.is_ok_and(|p| running(&p))
    })
    .await;
    let pod = pods.get("app").await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(cluster.node_name()));
    let sa = spec.service_account_name.clone().unwrap();

    // Registration went through the plugin registration socket.
    assert!(sim.registered_drivers().contains_key(&driver_name));
    {
        let rec = driver.rec.lock().unwrap();
        assert_eq!(rec.registrations.len(), 1);
        assert!(
            rec.registrations[0].plugin_registered,
            "{:?}",
            rec.registrations
        );
    }

    let seen = driver.rec.lock().unwrap().publishes[0].clone();
    let req = &seen.request;
    let handle = format!(
        "csi-{}",
        hex::encode(Sha256::digest(format!("{uid}secrets").as_bytes()))
    );
    let target = root.join(format!(
        "pods/{uid}/volumes/kubernetes.io~csi/secrets/mount"
    ));
    assert_eq!(req.volume_id, handle);
    assert_eq!(PathBuf::from(&req.target_path), target);
    assert!(
        !seen.target_existed,
        "kubelet does not pre-create the target path"
    );
    assert!(seen.parent_existed, "kubelet creates the target's parent");
    assert!(req.readonly);
    assert_eq!(req.staging_target_path, "");
    assert!(req.publish_context.is_empty());
    let cap = req.volume_capability.clone().unwrap();
    assert_eq!(cap.access_mode.unwrap().mode, Mode::SingleNodeWriter as i32);
    match cap.access_type {
        Some(AccessType::Mount(m)) => {
            assert_eq!(m.fs_type, "");
            assert!(m.mount_flags.is_empty());
        }
        other => panic!("expected a mount capability, got {other:?}"),
    }
    assert_eq!(
        req.secrets,
        [("key".to_string(), "value".to_string())]
            .into_iter()
            .collect()
    );

    let keys: BTreeSet<&str> = req.volume_context.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "secretProviderClass",
            "csi.storage.k8s.io/pod.name",
            "csi.storage.k8s.io/pod.namespace",
            "csi.storage.k8s.io/pod.uid",
            "csi.storage.k8s.io/serviceAccount.name",
            "csi.storage.k8s.io/ephemeral",
            "csi.storage.k8s.io/serviceAccount.tokens",
        ])
    );
    let ctx = &req.volume_context;
    assert_eq!(ctx["secretProviderClass"], "my-spc");
    assert_eq!(ctx["csi.storage.k8s.io/pod.name"], "app");
    assert_eq!(ctx["csi.storage.k8s.io/pod.namespace"], ns);
    assert_eq!(ctx["csi.storage.k8s.io/pod.uid"], uid);
    assert_eq!(ctx["csi.storage.k8s.io/serviceAccount.name"], sa);
    assert_eq!(ctx["csi.storage.k8s.io/ephemeral"], "true");

    let tokens: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&ctx["csi.storage.k8s.io/serviceAccount.tokens"]).unwrap();
    assert_eq!(
        tokens.keys().map(String::as_str).collect::<Vec<_>>(),
        ["sts.amazonaws.com", "vault"]
    );
    let reviews: Api<TokenReview> = Api::all(client.clone());
    for (aud, t) in &tokens {
        let obj = t.as_object().unwrap();
        assert_eq!(
            obj.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            BTreeSet::from(["token", "expirationTimestamp"])
        );
        let exp = obj["expirationTimestamp"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(exp).unwrap();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(obj["token"].as_str().unwrap().to_string()),
                audiences: Some(vec![aud.clone()]),
            },
            ..Default::default()
        };
        let status = reviews
            .create(&PostParams::default(), &review)
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(
            status.authenticated,
            Some(true),
            "audience {aud}: {:?}",
            status.error
        );
        let user = status.user.unwrap();
        assert_eq!(
            user.username.unwrap(),
            format!("system:serviceaccount:{ns}:{sa}")
        );
        assert_eq!(
            user.extra.unwrap()["authentication.kubernetes.io/pod-uid"],
            vec![uid.clone()]
        );
    }
    assert_eq!(sim.published_targets(), BTreeSet::from([target.clone()]));

    // requiresRepublish: NodePublishVolume again with the same handle and path.
    wait_until("a republish", || async {
        driver.rec.lock().unwrap().publishes.len() >= 2
    })
    .await;
    let again = driver.rec.lock().unwrap().publishes[1].request.clone();
    assert_eq!(again.volume_id, handle);
    assert_eq!(again.target_path, req.target_path);
    assert!(sim.published()[0].publish_count >= 2);

    // Deletion: NodeUnpublishVolume, then the pod is removed.
    pods.delete("app", &DeleteParams::default()).await.unwrap();
    wait_until("pod removed", || async {
        pods.get_opt("app").await.unwrap().is_none()
    })
    .await;
    let unpublishes = driver.rec.lock().unwrap().unpublishes.clone();
    assert_eq!(unpublishes.len(), 1);
    assert_eq!(unpublishes[0].volume_id, handle);
    assert_eq!(PathBuf::from(&unpublishes[0].target_path), target);
    assert!(sim.published_targets().is_empty());
    assert!(!target.exists());

    sim.stop();
    Api::<CSIDriver>::all(client)
        .delete(&driver_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_mount_records_warning_event_and_retries() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("kubelet-retry").await;
    let client = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let driver_name = format!("{ns}.csi.testenv.example");
    create_csi_driver(&client, &driver_name).await;
    let driver = serve_driver(&driver_name, &root, tmp.path());
    driver.rec.lock().unwrap().fail_next = 2;

    // An explicit socket this time, instead of plugin registration.
    let mut config = KubeletConfig::new(cluster.node_name(), &root, &ns)
        .with_csi_socket(&driver_name, &driver.csi_socket);
    config.plugin_registration = false;
    config.republish_period = Duration::from_secs(3600);
    let sim = KubeletSim::start(client.clone(), config);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"key": "value"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &csi_pod("app", &driver_name))
        .await
        .unwrap();
    wait_until("pod Running after retries", || async {
        pods.get("app").await.is_ok_and(|p| running(&p))
    })
    .await;

    assert_eq!(driver.rec.lock().unwrap().publishes.len(), 3);
    let expected = "MountVolume.SetUp failed for volume \"secrets\" : rpc error: code = PermissionDenied desc = denied by test driver";
    let warnings: Vec<_> = sim
        .events()
        .into_iter()
        .filter(|e| e.reason == "FailedMount")
        .collect();
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings
            .iter()
            .all(|e| e.type_ == "Warning" && e.message == expected)
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|e| {
        e.reason.as_deref() == Some("FailedMount")
            && e.message.as_deref() == Some(expected)
            && e.involved_object.name.as_deref() == Some("app")
    }));

    drop(sim);
    Api::<CSIDriver>::all(client)
        .delete(&driver_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn deployment_replicas_are_bound_and_run() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("kubelet-deploy").await;
    let client = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let _sim = KubeletSim::start(
        client.clone(),
        KubeletConfig::new(cluster.node_name(), tmp.path(), &ns),
    );
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    wait_until("3 ready replicas", || async {
        deployments
            .get("web")
            .await
            .is_ok_and(|d| d.status.and_then(|s| s.ready_replicas) == Some(3))
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    for p in &list.items {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some(cluster.node_name())
        );
        assert!(running(p));
    }
}

#[tokio::test]
async fn resolved_env_reads_secret_refs_like_kubelet() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("kubelet-env").await;
    let client = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let sim = KubeletSim::start(
        client.clone(),
        KubeletConfig::new(cluster.node_name(), tmp.path(), &ns),
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": "busybox", "env": [
            {"name": "PLAIN", "value": "x"},
            {"name": "DERIVED", "value": "$(PLAIN)-y"},
            {"name": "SECRET_API_KEY", "valueFrom": {"secretKeyRef": {"name": "foosecret", "key": "SECRET_API_KEY"}}},
            {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
        ]}]},
    }))
    .unwrap();

    let err = sim.resolved_env(&pod, "app").await.unwrap_err();
    assert_eq!(err.to_string(), "secret \"foosecret\" not found");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "foosecret"}, "stringData": {"OTHER": "v"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let err = sim.resolved_env(&pod, "app").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("couldn't find key SECRET_API_KEY in Secret {ns}/foosecret")
    );

    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "foosecret"}, "stringData": {"SECRET_API_KEY": "secretkey"},
    }))
    .unwrap();
    secrets
        .replace("foosecret", &PostParams::default(), &s)
        .await
        .unwrap();
    let env = sim.resolved_env(&pod, "app").await.unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("PLAIN".to_string(), "x".to_string()),
            ("DERIVED".to_string(), "x-y".to_string()),
            ("SECRET_API_KEY".to_string(), "secretkey".to_string()),
        ])
    );
}

#[tokio::test]
async fn tokens_move_to_secrets_with_service_account_token_in_secrets() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("kubelet-tokensecrets").await;
    let client = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let driver_name = format!("{ns}.csi.testenv.example");
    create_csi_driver_with(&client, &driver_name, true).await;
    let stored = Api::<CSIDriver>::all(client.clone())
        .get(&driver_name)
        .await
        .unwrap();
    assert_eq!(
        stored.spec.service_account_token_in_secrets,
        Some(true),
        "the test apiserver must keep serviceAccountTokenInSecrets (Kubernetes 1.35)"
    );
    let driver = serve_driver(&driver_name, &root, tmp.path());
    let sim = KubeletSim::start(
        client.clone(),
        KubeletConfig::new(cluster.node_name(), &root, &ns),
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"key": "value"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &csi_pod("app", &driver_name))
        .await
        .unwrap();
    wait_until("a publish", || async {
        !driver.rec.lock().unwrap().publishes.is_empty()
    })
    .await;
    let req = driver.rec.lock().unwrap().publishes[0].request.clone();
    assert!(
        !req.volume_context
            .contains_key("csi.storage.k8s.io/serviceAccount.tokens")
    );
    assert_eq!(
        req.secrets
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["key", "csi.storage.k8s.io/serviceAccount.tokens"])
    );
    let tokens: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&req.secrets["csi.storage.k8s.io/serviceAccount.tokens"]).unwrap();
    assert_eq!(tokens.len(), 2);
    drop(sim);
    Api::<CSIDriver>::all(client)
        .delete(&driver_name, &DeleteParams::default())
        .await
        .unwrap();
}
