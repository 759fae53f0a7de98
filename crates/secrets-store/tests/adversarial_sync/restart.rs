//! Item 7: a restarted agent serves no publish before its sync caches have listed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use super::WAIT;
use crate::common::Driver;
use crate::e2e::{World, eventually, seed_file};

/// The chart's node agent rules (`charts/secrets-store-rs/templates/rbac.yaml`), with the pod
/// statuses' `list` and `watch` only if `statuses_listable`.
fn agent_rules(statuses_listable: bool) -> serde_json::Value {
    let mut status_verbs = vec!["get", "create", "patch"];
    if statuses_listable {
        status_verbs.extend(["list", "watch"]);
    }
    serde_json::json!([
        {"apiGroups": ["secrets-store.csi.x-k8s.io"], "resources": ["secretproviderclasses"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["secrets-store.csi.x-k8s.io"], "resources": ["secretproviderclasspodstatuses"], "verbs": status_verbs},
        {"apiGroups": [""], "resources": ["pods", "serviceaccounts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list", "patch"]},
    ])
}

/// Item 7: after a restart, the agent serves no publish before its sync watches have listed. Here
/// the pod-status list is slow to come (the agent may not list statuses for the first seconds);
/// a publish served before would compute the synced Secret's owners from an empty status cache and
/// leave out the other pod: two bare pods sharing a Secret would flip it between one owner and
/// the other, and deleting either pod would have the garbage collector delete the other's Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_wait_for_the_sync_caches_after_a_restart() {
    let mut world = World::start("adv-sync-ready", "1m", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let admin = world.cluster.client();
    let role = world.seed_aws("shared-value").await;
    world.apply_service_account(&role).await;
    world
        .apply_class(&seed_file("secretproviderclass.yaml"))
        .await;
    world.bare_pod("a").await;
    world.bare_pod("b").await;
    world.running_pods(2).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &world.namespace);
    let owner_count = || async {
        secrets
            .get_opt("foosecret")
            .await
            .unwrap()
            .map(|s| s.owner_references().len())
    };
    eventually(WAIT, "foosecret owned by both pods' statuses", || async {
        (owner_count().await == Some(2)).then_some(())
    })
    .await;

    // The restarted agent runs as a ServiceAccount that may not list statuses yet.
    let account = "slow-agent";
    let role_name = format!("adv-sync-ready-{}", world.namespace);
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": role_name}, "rules": agent_rules(false)}))
            .unwrap(),
        )
        .await
        .unwrap();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": world.namespace}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let kubeconfig = world.dir.path().join("slow-agent.kubeconfig");
    secrets_store_testenv::node_agent::write_impersonating_kubeconfig(
        world.cluster,
        &world.namespace,
        account,
        &kubeconfig,
    )
    .unwrap();

    world.agent.stop();
    secrets
        .delete("foosecret", &DeleteParams::default())
        .await
        .unwrap();
    // Record every owner count the Secret shows until the test ends.
    let seen = Arc::new(Mutex::new(Vec::<usize>::new()));
    let watching = tokio::spawn({
        let seen = seen.clone();
        let secrets = secrets.clone();
        async move {
            loop {
                if let Some(s) = secrets.get_opt("foosecret").await.unwrap() {
                    seen.lock().unwrap().push(s.owner_references().len());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let granted_after = Duration::from_secs(5);
    let started = Instant::now();
    let grant = tokio::spawn({
        let roles = roles.clone();
        let role_name = role_name.clone();
        async move {
            tokio::time::sleep(granted_after).await;
            roles
                .patch(
                    &role_name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"rules": agent_rules(true)})),
                )
                .await
                .unwrap();
        }
    });
    let root = world.dir.path().join("kubelet");
    let args: Vec<String> = [
        "--node-id",
        world.cluster.node_name(),
        "--kubelet-dir",
        root.to_str().unwrap(),
        "--metrics-addr",
        "",
        "--healthz-addr",
        "",
        "--enable-secret-sync",
        "--enable-secret-rotation",
        "--rotation-poll-interval",
        "1m",
        "--namespace",
        &world.namespace,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (dir, endpoint) = (
        world.dir.path().to_path_buf(),
        world.cluster.moto().endpoint().to_string(),
    );
    world.agent = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Driver::start_with_env(&dir, &kubeconfig, &args, &[("AWS_ENDPOINT_URL", &endpoint)])
    })
    .await
    .unwrap();
    let serving_after = started.elapsed();
    grant.await.unwrap();
    eventually(WAIT, "foosecret synced again", || async {
        owner_count().await.is_some().then_some(())
    })
    .await;
    // A few of kubelet's republishes of both pods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|&n| n == 2),
        "foosecret's owner counts while the agent restarted (served after {serving_after:?}, statuses listable after {granted_after:?}): {seen:?}"
    );
    assert!(
        serving_after >= granted_after,
        "the agent served after {serving_after:?}, before it could list statuses ({granted_after:?})"
    );
    let log = world.agent.log_text();
    assert!(log.contains("secret sync caches listed"), "{log}");

    bindings
        .delete(&role_name, &DeleteParams::default())
        .await
        .unwrap();
    roles
        .delete(&role_name, &DeleteParams::default())
        .await
        .unwrap();
}
