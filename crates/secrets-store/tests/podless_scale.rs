//! What a refresh of the pod-less sync costs, counted on real peers: many classes of a few
//! identities, each class with several secrets. A refresh round must cost one Secrets Manager
//! call per class (its objects batched), no STS call (credentials cached per identity), no
//! TokenRequest (tokens reused per ServiceAccount) and no Secret write when nothing changed. Its
//! own test binary: the only controller on its cluster, so every count is its own.

#[path = "helm_chart/chart.rs"]
mod chart;
mod podless_world;

use std::collections::BTreeMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassSync};
use secrets_store_api::labels::{PODLESS_REFRESH_INTERVAL, PODLESS_SERVICE_ACCOUNT};
use secrets_store_sync::podless::READY;
use secrets_store_testenv::{Cluster, eventually};

use podless_world::*;

const NAMESPACES: usize = 4;
const CLASSES_PER_NAMESPACE: usize = 10;
const SECRETS_PER_CLASS: usize = 5;
const CLASSES: usize = NAMESPACES * CLASSES_PER_NAMESPACE;

fn class(ns_index: usize, class_index: usize) -> SecretProviderClass {
    let names: Vec<String> = (0..SECRETS_PER_CLASS)
        .map(|k| format!("scale-{ns_index}-{class_index}-{k}"))
        .collect();
    let objects: String = names
        .iter()
        .map(|n| format!("- objectName: \"{n}\"\n  objectType: \"secretsmanager\"\n"))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("class-{class_index}"),
            "annotations": {
                PODLESS_SERVICE_ACCOUNT: SEED_SA,
                PODLESS_REFRESH_INTERVAL: "5s",
            },
        },
        "spec": {
            "provider": "aws",
            "parameters": {"objects": objects},
            "secretObjects": [{
                "secretName": format!("synced-{class_index}"),
                "type": "Opaque",
                "data": names.iter().map(|n| serde_json::json!({"objectName": n, "key": n})).collect::<Vec<_>>(),
            }],
        },
    }))
    .unwrap()
}

/// Requests by the controller's ServiceAccount in the audit log from byte `offset`, by
/// `verb resource[/subresource]`.
fn controller_requests(cluster: &Cluster, offset: u64) -> BTreeMap<String, u64> {
    let user = format!(
        "system:serviceaccount:{}:{}-controller",
        release(),
        chart::NAME
    );
    let mut file = std::fs::File::open(cluster.audit_log()).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut counts = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        // The test impersonates the controller: the audit log names it as the impersonated user.
        let who = event["impersonatedUser"]["username"]
            .as_str()
            .or(event["user"]["username"].as_str());
        if who != Some(user.as_str()) || event["stage"].as_str() != Some("ResponseComplete") {
            continue;
        }
        let object = &event["objectRef"];
        let mut key = format!(
            "{} {}",
            event["verb"].as_str().unwrap_or("?"),
            object["resource"].as_str().unwrap_or("-")
        );
        if let Some(sub) = object["subresource"].as_str() {
            key = format!("{key}/{sub}");
        }
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_costs_one_batch_call_per_class_and_nothing_else_when_unchanged() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    release();
    let admin = cluster.client();
    let moto = cluster.moto();
    let account = moto.new_account();
    let role = moto
        .iam_client(&account)
        .create_role()
        .role_name("podless-scale")
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#)
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_string();
    let sm = moto.sm_client(&account);
    let mut namespaces = Vec::new();
    for n in 0..NAMESPACES {
        let ns = cluster.new_namespace("podless-scale").await;
        service_account(&admin, &ns, &role, true).await;
        for c in 0..CLASSES_PER_NAMESPACE {
            for k in 0..SECRETS_PER_CLASS {
                sm.create_secret()
                    .name(format!("scale-{n}-{c}-{k}"))
                    .secret_string(format!("value-{n}-{c}-{k}"))
                    .send()
                    .await
                    .unwrap();
            }
            Api::<SecretProviderClass>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &class(n, c))
                .await
                .unwrap();
        }
        namespaces.push(ns);
    }

    let counter = moto.new_call_counter().await.unwrap();
    let started = Instant::now();
    let controller = Controller::start(cluster, counter.endpoint().to_string()).await;
    let ready = || async {
        let mut ready = 0;
        for ns in &namespaces {
            let syncs = Api::<SecretProviderClassSync>::namespaced(admin.clone(), ns)
                .list(&ListParams::default())
                .await
                .unwrap();
            ready += syncs
                .items
                .iter()
                .filter(|s| {
                    s.status.as_ref().is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.type_ == READY && c.status == "True")
                    })
                })
                .count();
        }
        ready
    };
    eventually(Duration::from_secs(180), "every class Ready", || async {
        (ready().await == CLASSES).then_some(())
    })
    .await;
    let first_sync = started.elapsed();
    let initial = counter.calls();
    let ctx = controller.ctx.clone();
    let metrics = ctx.metrics();
    // One STS call and one TokenRequest per identity (namespace, ServiceAccount, role), however
    // many classes share it.
    assert_eq!(
        initial.get("AssumeRoleWithWebIdentity").copied(),
        Some(NAMESPACES as u64),
        "{initial:?}"
    );
    assert_eq!(metrics.tokens_requested(), NAMESPACES as u64);

    // One refresh round: every class runs about once more.
    let audit_offset = std::fs::metadata(cluster.audit_log()).unwrap().len();
    let ok_before = metrics.reconciles_with("ok");
    let round = Instant::now();
    eventually(
        Duration::from_secs(60),
        "a refresh of every class",
        || async { (metrics.reconciles_with("ok") >= ok_before + CLASSES as u64).then_some(()) },
    )
    .await;
    let round = round.elapsed();
    controller.stop().await;
    let refreshes = metrics.reconciles_with("ok") - ok_before;
    let after = counter.calls();
    let batch = diff(&after, &initial, "secretsmanager.BatchGetSecretValue");
    let api = controller_requests(cluster, audit_offset);
    eprintln!(
        "pod-less refresh cost: {CLASSES} classes x {SECRETS_PER_CLASS} secrets in {NAMESPACES} namespaces \
         (one ServiceAccount each); first sync of all {first_sync:.1?}; AWS calls of the first sync {initial:?}; \
         one round ({round:.1?}): {refreshes} refreshes, {batch} BatchGetSecretValue, AWS calls {:?}, \
         API requests {api:?}",
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - initial.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>()
    );
    // Runs in flight when the round started may have made their call before it was counted as
    // a refresh of the round (at most one per concurrent reconcile).
    let in_flight = u64::from(secrets_store_sync::podless::PodlessConfig::default().concurrency);
    assert!(
        batch.abs_diff(refreshes) <= in_flight,
        "{batch} batch calls for {refreshes} refreshes"
    );
    for (action, n) in &after {
        if action != "secretsmanager.BatchGetSecretValue" {
            assert_eq!(
                initial.get(action),
                Some(n),
                "{action} called during the refresh round"
            );
        }
    }
    assert_eq!(metrics.tokens_requested(), NAMESPACES as u64);
    assert!(
        api.get("patch secretproviderclasssyncs/status")
            .copied()
            .unwrap_or(0)
            >= refreshes,
        "the audit log shows the controller's requests: {api:?}"
    );
    for write in [
        "create secrets",
        "patch secrets",
        "update secrets",
        "create serviceaccounts/token",
    ] {
        assert_eq!(
            api.get(write),
            None,
            "{write} during a refresh without change: {api:?}"
        );
    }

    let all: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin);
    for ns in &namespaces {
        all.delete(ns, &DeleteParams::default()).await.unwrap();
    }
}
