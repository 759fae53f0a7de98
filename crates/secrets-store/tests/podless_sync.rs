//! Sync without a pod (issue 16), against a real apiserver, kube-controller-manager (garbage
//! collection) and moto, with the chart's RBAC and admission policies installed: the pod-less
//! sync runs in this test process as the controller's ServiceAccount (impersonated), so every
//! call it makes is authorized and admitted exactly as the controller's would be.

#[path = "helm_chart/chart.rs"]
mod chart;
mod podless_world;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassSync};
use secrets_store_api::labels::{MANAGED, PODLESS_OPT_IN, PODLESS_SERVICE_ACCOUNT};
use secrets_store_sync::podless::{self, PodlessError, READY, STALE};
use secrets_store_testenv::{Cluster, eventually, seed};

use podless_world::*;

/// The seed's class with pod-less sync and no Deployment at all: `foosecret` appears with the
/// value, owned by the class, Ready; a rotation in AWS reaches it on the next refresh; deleting
/// the class lets the garbage collector delete the Secret and the status object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_class_without_pods_syncs_rotates_and_goes_with_its_class() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    release();
    let admin = cluster.client();
    let ns = cluster.new_namespace("podless-seed").await;
    let account = cluster.moto().new_account();
    let role = seed::seed_aws(cluster, &account, "secretkey").await;
    service_account(&admin, &ns, &role, true).await;
    let controller = Controller::start(cluster, cluster.moto().endpoint()).await;
    let class = podless_class(&admin, &ns, "2s").await;

    eventually(WAIT, "foosecret with SECRET_API_KEY", || async {
        (secret_value(&admin, &ns, "foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("secretkey"))
        .then_some(())
    })
    .await;
    let secret = Api::<Secret>::namespaced(admin.clone(), &ns)
        .get("foosecret")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret.labels().get(MANAGED).map(String::as_str),
        Some("true")
    );
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].kind, "SecretProviderClass");
    assert_eq!(owners[0].uid, class.uid().unwrap());
    let (ready, reason, _) = eventually(WAIT, "Ready", || async {
        condition(&admin, &ns, SEED_CLASS, READY)
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Synced"));
    let status = Api::<SecretProviderClassSync>::namespaced(admin.clone(), &ns)
        .get(SEED_CLASS)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.secrets, ["foosecret"]);
    assert_eq!(status.objects.len(), 1);
    assert_eq!(status.objects[0].id, seed::SECRET);
    let first_version = status.objects[0].version.clone();
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(!status_json.contains("secretkey"), "{status_json}");

    // Rotation in AWS: the next refresh (2 s, jittered) writes the new value and version.
    seed::rotate(cluster, &account, "rotated").await;
    eventually(WAIT, "rotated foosecret", || async {
        (secret_value(&admin, &ns, "foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("rotated"))
        .then_some(())
    })
    .await;
    eventually(WAIT, "the new version id in the status", || async {
        let status = Api::<SecretProviderClassSync>::namespaced(admin.clone(), &ns)
            .get(SEED_CLASS)
            .await
            .ok()?
            .status?;
        (status.objects.first()?.version != first_version).then_some(())
    })
    .await;
    assert!(controller.ctx.metrics().reconciles_with("ok") >= 2);
    // Many runs, one TokenRequest per controller instance of this test binary (the other test's
    // controller reconciles every namespace too): a token is reused for half its 10 minutes.
    let minted = token_requests_in_audit_log(cluster, &ns, SEED_SA);
    assert!((1..=2).contains(&minted), "{minted} TokenRequests");

    // AWS fails (the secret is gone): the Secret keeps its last good value, the status says why.
    cluster
        .moto()
        .sm_client(&account)
        .delete_secret()
        .secret_id(seed::SECRET)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let (_, reason, message) = eventually(WAIT, "Stale=True", || async {
        condition(&admin, &ns, SEED_CLASS, STALE)
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(reason, "FetchFailed");
    assert!(
        message.contains("keep the values synced at") && message.contains(seed::SECRET),
        "{message}"
    );
    let (ready, _, _) = condition(&admin, &ns, SEED_CLASS, READY).await.unwrap();
    assert_eq!(ready, "False");
    assert_eq!(
        secret_value(&admin, &ns, "foosecret", "SECRET_API_KEY")
            .await
            .as_deref(),
        Some("rotated")
    );
    eventually(WAIT, "a FetchFailed Warning Event on the class", || async {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FetchFailed")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(SEED_CLASS)
                    && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;

    // Deleting the class: the garbage collector deletes what it owns.
    Api::<SecretProviderClass>::namespaced(admin.clone(), &ns)
        .delete(SEED_CLASS, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "foosecret garbage-collected", || async {
        let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
        let syncs = Api::<SecretProviderClassSync>::namespaced(admin.clone(), &ns);
        (secrets.get_opt("foosecret").await.unwrap().is_none()
            && syncs.get_opt(SEED_CLASS).await.unwrap().is_none())
        .then_some(())
    })
    .await;
    controller.stop().await;
}

/// A class naming a ServiceAccount that did not opt in gets a clear condition, and not one
/// TokenRequest reaches the apiserver for it; once its owner adds the label, the Secret follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_that_did_not_opt_in_is_never_asked_for_a_token() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    release();
    let admin = cluster.client();
    let ns = cluster.new_namespace("podless-borrow").await;
    let account = cluster.moto().new_account();
    let role = seed::seed_aws(cluster, &account, "secretkey").await;
    service_account(&admin, &ns, &role, false).await;
    let controller = Controller::start(cluster, cluster.moto().endpoint()).await;
    let class = podless_class(&admin, &ns, "1s").await;

    let (status, reason, message) = eventually(WAIT, "Ready=False", || async {
        condition(&admin, &ns, SEED_CLASS, READY).await
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason, "ServiceAccountNotOptedIn");
    assert!(
        message.contains(&format!("ServiceAccount {ns}/{SEED_SA}"))
            && message.contains(PODLESS_OPT_IN)
            && message.contains("no token was requested"),
        "{message}"
    );
    // reconcile() called directly says the same.
    let error = podless::reconcile(Arc::new(class), controller.ctx.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PodlessError::ServiceAccountNotOptedIn { .. }),
        "{error}"
    );
    assert_eq!(token_requests_in_audit_log(cluster, &ns, SEED_SA), 0);
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt("foosecret")
            .await
            .unwrap()
            .is_none()
    );

    // The owner opts in: the label's watch re-runs the class.
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .patch(
            SEED_SA,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {PODLESS_OPT_IN: "true"}}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "foosecret after the opt-in", || async {
        (secret_value(&admin, &ns, "foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("secretkey"))
        .then_some(())
    })
    .await;
    assert!(token_requests_in_audit_log(cluster, &ns, SEED_SA) >= 1);

    // EKS Pod Identity needs a pod: a clear condition, before any token.
    let mut pod_identity: SecretProviderClass =
        serde_yaml::from_str(&seed::file("secretproviderclass.yaml")).unwrap();
    pod_identity.metadata.name = Some("pod-identity".into());
    pod_identity.spec.secret_objects[0].secret_name = "other".into();
    pod_identity
        .spec
        .parameters
        .insert("usePodIdentity".into(), "true".into());
    pod_identity
        .annotations_mut()
        .insert(PODLESS_SERVICE_ACCOUNT.into(), SEED_SA.into());
    Api::<SecretProviderClass>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pod_identity)
        .await
        .unwrap();
    let (status, reason, message) = eventually(WAIT, "Pod Identity refused", || async {
        condition(&admin, &ns, "pod-identity", READY).await
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PodIdentityUnsupported")
    );
    assert!(
        message.contains("usePodIdentity cannot sync without a pod"),
        "{message}"
    );
    controller.stop().await;
}

/// Asserts `result` is a refusal by one of the chart's admission policies `policies` (where two
/// policies both refuse, the apiserver names the first it evaluated).
fn assert_refused_by<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
    policies: &[&str],
    what: &str,
) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            assert!(
                e.message.contains("ValidatingAdmissionPolicy")
                    && policies
                        .iter()
                        .any(|p| e.message.contains(&format!("'{}-{p}'", chart::NAME))),
                "{what}: refused, but not by {policies:?}: {}",
                e.message
            );
        }
        other => panic!("{what}: expected {policies:?} to refuse, got {other:?}"),
    }
}

/// The policy that confines the controller's Secret writes with pod-less sync (managed Secrets of
/// the types sync allows; the rollout's controller-secrets policy is not rendered then).
const SECRET_POLICIES: &[&str] = &["synced-secrets"];

fn token_request(audiences: &[&str], seconds: i64) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(seconds),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    }
}

/// The admission policies hold even if the controller's code were to ask: as the controller's
/// ServiceAccount (whose RBAC allows every call below), a token of a ServiceAccount without the
/// label, one for another audience, or one living longer than an hour is refused; the one the
/// code asks for passes. Secrets without the managed label cannot be written either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_confines_the_controllers_tokens_and_secret_writes() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    release();
    let admin = cluster.client();
    let ns = cluster.new_namespace("podless-vap").await;
    let admin_sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    for (name, labels) in [
        ("opted", serde_json::json!({PODLESS_OPT_IN: "true"})),
        ("other", serde_json::json!({})),
        ("wrong-value", serde_json::json!({PODLESS_OPT_IN: "yes"})),
    ] {
        let sa: ServiceAccount = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": labels}}),
        )
        .unwrap();
        admin_sas.create(&PostParams::default(), &sa).await.unwrap();
    }
    let controller = as_controller(cluster).await;
    let sas: Api<ServiceAccount> = Api::namespaced(controller.clone(), &ns);
    let pp = PostParams::default();

    // Policies reach the admission chain asynchronously: wait until the first refusal.
    let refused = eventually(WAIT, "the token policy in force", || async {
        sas.create_token_request("other", &pp, &token_request(&[podless::AUDIENCE], 600))
            .await
            .err()
    })
    .await;
    assert_refused_by(
        Err::<(), _>(refused),
        &["podless-token-subjects"],
        "a ServiceAccount without the label",
    );
    assert_refused_by(
        sas.create_token_request(
            "wrong-value",
            &pp,
            &token_request(&[podless::AUDIENCE], 600),
        )
        .await,
        &["podless-token-subjects"],
        "a ServiceAccount whose label is not true",
    );
    eventually(WAIT, "the audience policy in force", || async {
        sas.create_token_request(
            "opted",
            &pp,
            &token_request(&["https://kubernetes.default.svc.cluster.local"], 600),
        )
        .await
        .is_err()
        .then_some(())
    })
    .await;
    assert_refused_by(
        sas.create_token_request(
            "opted",
            &pp,
            &token_request(&["https://kubernetes.default.svc.cluster.local"], 600),
        )
        .await,
        &["podless-token-audience"],
        "a token the API server accepts",
    );
    assert_refused_by(
        sas.create_token_request(
            "opted",
            &pp,
            &token_request(&[podless::AUDIENCE, "other"], 600),
        )
        .await,
        &["podless-token-audience"],
        "a second audience",
    );
    assert_refused_by(
        sas.create_token_request("opted", &pp, &token_request(&[podless::AUDIENCE], 7200))
            .await,
        &["podless-token-audience"],
        "a token of two hours",
    );
    let minted = sas
        .create_token_request("opted", &pp, &token_request(&[podless::AUDIENCE], 600))
        .await
        .expect("an opted-in ServiceAccount, sts.amazonaws.com, 10 minutes");
    assert!(!minted.status.unwrap().token.is_empty());

    // Secrets: only managed ones.
    let secrets: Api<Secret> = Api::namespaced(controller.clone(), &ns);
    let secret = |name: &str, labels: BTreeMap<String, String>| -> Secret {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}})).unwrap()
    };
    let managed = BTreeMap::from([(MANAGED.to_string(), "true".to_string())]);
    eventually(WAIT, "the Secret policy in force", || async {
        match secrets.create(&pp, &secret("probe", BTreeMap::new())).await {
            Ok(_) => {
                Api::<Secret>::namespaced(admin.clone(), &ns)
                    .delete("probe", &DeleteParams::default())
                    .await
                    .unwrap();
                None
            }
            Err(_) => Some(()),
        }
    })
    .await;
    assert_refused_by(
        secrets
            .create(&pp, &secret("unmanaged", BTreeMap::new()))
            .await,
        SECRET_POLICIES,
        "creating an unmanaged Secret",
    );
    secrets
        .create(&pp, &secret("managed", managed.clone()))
        .await
        .expect("a managed Secret");
    // A managed Secret of the type the token controller fills with a token of any
    // ServiceAccount named in its annotation: never.
    let mut token_secret = secret("token", managed.clone());
    token_secret.type_ = Some("kubernetes.io/service-account-token".into());
    token_secret
        .annotations_mut()
        .insert("kubernetes.io/service-account.name".into(), "opted".into());
    assert_refused_by(
        secrets.create(&pp, &token_secret).await,
        SECRET_POLICIES,
        "creating a managed service-account-token Secret",
    );
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&pp, &secret("users", BTreeMap::new()))
        .await
        .unwrap();
    assert_refused_by(
        secrets
            .patch(
                "users",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {MANAGED: "true"}}})),
            )
            .await,
        SECRET_POLICIES,
        "adopting a user's Secret by labelling it",
    );
    assert_refused_by(
        secrets
            .patch(
                "managed",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {MANAGED: null}}})),
            )
            .await,
        SECRET_POLICIES,
        "dropping the managed label",
    );
}
