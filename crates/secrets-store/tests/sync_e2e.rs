//! The seed walk-through end to end (issue 5): AWS Secrets Manager (moto) → the node agent's
//! built-in AWS provider → files on tmpfs → the synced Kubernetes Secret `foosecret` → the
//! container's `SECRET_API_KEY`, against a real apiserver, controller manager and kubelet simulator.

mod common;
mod e2e;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};

use e2e::{World, eventually};
use secrets_store_testenv::fixtures::PodFixture;

const WAIT: Duration = Duration::from_secs(90);
const DEPLOYMENT: &str = "csi-secret-driver-test-nginx-deployment";

async fn scale(world: &World, replicas: i32) {
    Api::<Deployment>::namespaced(world.cluster.client(), &world.namespace)
        .patch(
            DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_walkthrough_sync_rotation_and_garbage_collection() {
    let world = World::start("seed", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;

    // 3 pods, each with the file, the synced Secret, and the env var on the first try.
    let pods = world.running_pods(3).await;
    for pod in &pods {
        assert_eq!(
            world.file(pod, "CSI-driver-test-secret").as_deref(),
            Some("secretkey")
        );
        let env = world.env(pod).await;
        assert_eq!(
            env.get("SECRET_API_KEY").map(String::as_str),
            Some("secretkey")
        );
    }
    let secret = world.secret("foosecret").await.expect("Secret foosecret");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("secrets-store.csi.k8s.io/managed")
            .map(String::as_str),
        Some("true")
    );
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].kind, "ReplicaSet");
    assert_eq!(
        world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("secretkey")
    );

    // Scaling down keeps the Secret (its owner, the ReplicaSet, still exists).
    scale(&world, 1).await;
    let pods = world.running_pods(1).await;
    assert!(world.secret("foosecret").await.is_some());

    // Rotation: the new value reaches the file and the Secret within interval + republish.
    world.rotate("rotated").await;
    let pod = &pods[0];
    wait_for_value(&world, pod, "rotated").await;

    // Someone deletes the synced Secret: it is restored from the mounted files.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(world.cluster.client(), &world.namespace)
        .delete("foosecret", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "restored Secret", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("rotated"))
        .then_some(())
    })
    .await;

    // Deleting the Deployment lets the garbage collector delete the Secret.
    delete_deployment(&world).await;
    eventually(WAIT, "Secret garbage-collected", || async {
        world.secret("foosecret").await.is_none().then_some(())
    })
    .await;
    eventually(WAIT, "volumes unpublished", || async {
        world.pods().await.is_empty().then_some(())
    })
    .await;
    for p in pods {
        assert!(
            !world.target(&p).exists(),
            "target path of {} left behind",
            p.metadata.name.unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_rolls_out_opted_in_deployment_once() {
    let world = World::start("rollout", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    let first = world.running_pods(3).await;
    let deployments: Api<Deployment> = Api::namespaced(world.cluster.client(), &world.namespace);
    world.opt_in_rollout().await;

    world.rotate("rotated").await;

    // New pods (a second ReplicaSet) see the new value in their environment.
    let fresh = world.rolled_pods(&first, 3).await;
    for pod in &fresh {
        let env = world.env(pod).await;
        assert_eq!(
            env.get("SECRET_API_KEY").map(String::as_str),
            Some("rotated")
        );
    }
    let sets = Api::<ReplicaSet>::namespaced(world.cluster.client(), &world.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(
        sets.len(),
        2,
        "exactly one rollout: {:?}",
        sets.iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let template = deployments
        .get(DEPLOYMENT)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    let digest = template.metadata.unwrap().annotations.unwrap()["secrets-store.csi.x-k8s.io/secret-digest-foosecret"].clone();
    assert_eq!(digest.len(), 64);
    assert!(!digest.contains("rotated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_rotation_keeps_last_good_content_and_recovers() {
    let world = World::start("failure", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    scale(&world, 1).await;
    let pods = world.running_pods(1).await;
    let pod = &pods[0];
    let sm = world.cluster.moto().sm_client(&world.account);
    sm.delete_secret()
        .secret_id("CSI-driver-test-secret")
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();

    let pod_name = pod.metadata.name.clone().unwrap();
    let messages = eventually(
        WAIT,
        "a Warning Event about the failed rotation",
        || async {
            let m = world.pod_events(&pod_name, "SecretRotationFailed").await;
            (!m.is_empty()).then_some(m)
        },
    )
    .await;
    assert!(
        messages[0].contains("CSI-driver-test-secret"),
        "{messages:?}"
    );
    assert_eq!(
        world.file(pod, "CSI-driver-test-secret").as_deref(),
        Some("secretkey")
    );
    assert_eq!(
        world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("secretkey")
    );

    sm.create_secret()
        .name("CSI-driver-test-secret")
        .secret_string("back")
        .send()
        .await
        .unwrap();
    wait_for_value(&world, pod, "back").await;
}

/// kubelet republishes only once per sync period (about a minute); the agent refreshes mounted
/// volumes on its own poll interval with the tokens of kubelet's last publish, so a rotation
/// reaches the file and the synced Secret without any republish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_lands_on_the_poll_interval_without_a_kubelet_republish() {
    let world = World::start("selfrefresh", "1s", Duration::from_secs(3600)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    scale(&world, 1).await;
    let pods = world.running_pods(1).await;
    wait_for_value(&world, &pods[0], "secretkey").await;

    world.rotate("rotated-by-the-agent").await;
    wait_for_value(&world, &pods[0], "rotated-by-the-agent").await;
    let pod_name = pods[0].metadata.name.clone().unwrap();
    // The Event is recorded after the file and the Secret are written, so it may trail them.
    eventually(WAIT, "the refresh reports like a republish", || async {
        let events = world.pod_events(&pod_name, "SecretRotationComplete").await;
        (!events.is_empty()).then_some(())
    })
    .await;
}

/// Waits until `pod`'s mounted secret file and the synced `foosecret` both hold `value`.
async fn wait_for_value(world: &World, pod: &Pod, value: &str) {
    eventually(WAIT, &format!("the file to hold {value:?}"), || async {
        (world.file(pod, "CSI-driver-test-secret").as_deref() == Some(value)).then_some(())
    })
    .await;
    eventually(WAIT, &format!("foosecret to hold {value:?}"), || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some(value))
        .then_some(())
    })
    .await;
}

/// Deletes the seed Deployment (background propagation, as kubectl does).
async fn delete_deployment(world: &World) {
    Api::<Deployment>::namespaced(world.cluster.client(), &world.namespace)
        .delete(
            DEPLOYMENT,
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_lifetime_deletes_the_secret_when_scaled_to_zero() {
    let world = World::start("life-pods", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed_with_lifetime(&role, Some("pods")).await;
    world.running_pods(3).await;
    // One SecretProviderClassPodStatus per pod (concurrent publishes converge through the
    // reconciler, which recomputes the owners from the node's watched state).
    eventually(WAIT, "three pod-status owners", || async {
        let secret = world.secret("foosecret").await?;
        let owners = secret.metadata.owner_references.unwrap_or_default();
        (owners.len() == 3
            && owners
                .iter()
                .all(|o| o.kind == "SecretProviderClassPodStatus"))
        .then_some(())
    })
    .await;

    scale(&world, 0).await;
    eventually(WAIT, "Secret deleted with its last pod", || async {
        world.secret("foosecret").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retain_lifetime_keeps_the_secret_after_the_workload() {
    let world = World::start("life-retain", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    world.apply_seed_with_lifetime(&role, Some("retain")).await;
    world.running_pods(3).await;
    delete_deployment(&world).await;
    eventually(WAIT, "pods gone", || async {
        world.pods().await.is_empty().then_some(())
    })
    .await;
    // Give the garbage collector time to act if it (wrongly) could.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secret = world.secret("foosecret").await.expect("retained Secret");
    assert!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(
        world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("secretkey")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bare_pods_secret_goes_with_the_pod() {
    let world = World::start("life-bare", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    let client = world.cluster.client();
    // The ServiceAccount and class of the seed, but a bare pod instead of the Deployment.
    world.apply_service_account(&role).await;
    world
        .apply_class(&e2e::seed_file("secretproviderclass.yaml"))
        .await;
    world.bare_pod("lonely").await;
    let pods = world.running_pods(1).await;
    assert_eq!(
        world
            .env(&pods[0])
            .await
            .get("SECRET_API_KEY")
            .map(String::as_str),
        Some("secretkey")
    );
    let owners = world
        .secret("foosecret")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "SecretProviderClassPodStatus");

    Api::<Pod>::namespaced(client, &world.namespace)
        .delete("lonely", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "Secret deleted with the bare pod", || async {
        world.secret("foosecret").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_classes_many_secret_objects_tls_and_jmespath() {
    let world = World::start("multi", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("unused").await;
    let sm = world.cluster.moto().sm_client(&world.account);
    let creds = r#"{"username":"admin","password-value":"s3cret","port":5432}"#;
    sm.create_secret()
        .name("db-creds")
        .secret_string(creds)
        .send()
        .await
        .unwrap();
    let tls = rcgen::generate_simple_self_signed(vec!["app.example".into()]).unwrap();
    let bundle = format!("{}{}", tls.cert.pem(), tls.signing_key.serialize_pem());
    sm.create_secret()
        .name("tls-bundle")
        .secret_string(&bundle)
        .send()
        .await
        .unwrap();

    let client = world.cluster.client();
    world.apply_service_account(&role).await;
    world
        .apply_class(
            r#"
metadata: {name: app-db}
spec:
  provider: aws
  parameters:
    objects: |
      - objectName: db-creds
        objectType: secretsmanager
        jmesPath:
          - {path: username, objectAlias: db-user}
          - {path: '"password-value"', objectAlias: db-pass}
          - {path: port, objectAlias: db-port}
  secretObjects:
  - secretName: db
    type: kubernetes.io/basic-auth
    data:
    - {objectName: db-user, key: username}
    - {objectName: db-pass, key: password}
  - secretName: db-extra
    type: Opaque
    labels: {team: payments}
    annotations: {owner: dba}
    data:
    - {objectName: db-creds, key: raw.json}
    - {objectName: db-port, key: port}
"#,
        )
        .await;
    world
        .apply_class(
            r#"
metadata: {name: app-tls}
spec:
  provider: aws
  parameters:
    objects: |
      - {objectName: tls-bundle, objectType: secretsmanager}
  secretObjects:
  - secretName: app-tls
    type: kubernetes.io/tls
    data:
    - {objectName: tls-bundle, key: tls.crt}
    - {objectName: tls-bundle, key: tls.key}
"#,
        )
        .await;
    PodFixture::new("app")
        .service_account("nginx-deployment-sa")
        .with_csi_volume("db", "app-db")
        .with_csi_volume("tls", "app-tls")
        .env_from_secret("DB_USER", "db", "username")
        .env_from_secret("DB_PASSWORD", "db", "password")
        .env_from_secret("DB_PORT", "db-extra", "port")
        .create(&client, &world.namespace)
        .await
        .unwrap();
    let pods = world.running_pods(1).await;

    let env = world.env(&pods[0]).await;
    assert_eq!(env.get("DB_USER").map(String::as_str), Some("admin"));
    assert_eq!(env.get("DB_PASSWORD").map(String::as_str), Some("s3cret"));
    assert_eq!(
        env.get("DB_PORT").map(String::as_str),
        Some("5432"),
        "numbers are written as their JSON text"
    );

    let db = world.secret("db").await.unwrap();
    assert_eq!(db.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    let extra = world.secret("db-extra").await.unwrap();
    assert_eq!(extra.metadata.labels.as_ref().unwrap()["team"], "payments");
    assert_eq!(extra.metadata.annotations.as_ref().unwrap()["owner"], "dba");
    assert_eq!(
        world.secret_value("db-extra", "raw.json").await.as_deref(),
        Some(creds)
    );

    let tls_secret = world.secret("app-tls").await.unwrap();
    assert_eq!(tls_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let crt = world.secret_value("app-tls", "tls.crt").await.unwrap();
    let key = world.secret_value("app-tls", "tls.key").await.unwrap();
    assert!(
        crt.starts_with("-----BEGIN CERTIFICATE-----") && !crt.contains("PRIVATE KEY"),
        "{crt}"
    );
    assert!(
        key.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "the PKCS#8 key is re-encoded as SEC1"
    );
    // The mounted file keeps the whole bundle, as the provider wrote it.
    let uid = pods[0].metadata.uid.clone().unwrap();
    let mounted =
        std::fs::read_to_string(world.kubelet.target_path(&uid, "tls").join("tls-bundle")).unwrap();
    assert_eq!(mounted, bundle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_we_do_not_manage_is_never_taken_over() {
    let world = World::start("unmanaged", "1m", Duration::from_secs(5)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("secretkey").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(world.cluster.client(), &world.namespace);
    let theirs: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "foosecret"},
        "stringData": {"SECRET_API_KEY": "someone-elses"}
    }))
    .unwrap();
    secrets
        .create(&kube::api::PostParams::default(), &theirs)
        .await
        .unwrap();
    world.apply_seed(&role).await;

    let pod = eventually(WAIT, "a pod", || async {
        world.pods().await.into_iter().next()
    })
    .await;
    let pod_name = pod.metadata.name.clone().unwrap();
    let messages = eventually(WAIT, "a SecretNotManaged Event", || async {
        let m = world.pod_events(&pod_name, "SecretNotManaged").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(
        messages[0].contains("not managed by secrets-store"),
        "{messages:?}"
    );
    // kubelet sees a precondition failure, not an internal error.
    let failed = eventually(WAIT, "kubelet's FailedMount", || async {
        let m = world.pod_events(&pod_name, "FailedMount").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(
        failed[0].contains("code = FailedPrecondition"),
        "{failed:?}"
    );
    let secret = world.secret("foosecret").await.unwrap();
    assert_eq!(
        world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("someone-elses")
    );
    assert!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}
