//! Proves the harness runs a real control plane: TokenRequest/TokenReview, garbage collection,
//! and moto's account isolation and request counting.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use secrets_store_testenv::Cluster;
use serde_json::json;

#[tokio::test]
async fn token_request_is_accepted_by_token_review_for_its_audience() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("token").await;
    let client = cluster.client();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["sts.amazonaws.com".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some("p".into()),
                uid: Some(uid.clone()),
            }),
        },
        ..Default::default()
    };
    let issued = sas
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .unwrap();
    let status = issued.status.expect("token request status");
    assert!(!status.token.is_empty());

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |aud: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(status.token.clone()),
            audiences: Some(vec![aud.to_string()]),
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review("sts.amazonaws.com"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true), "{:?}", ok.error);
    assert_eq!(ok.audiences, Some(vec!["sts.amazonaws.com".to_string()]));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:default").as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-uid"),
        Some(&vec![uid])
    );

    let wrong = reviews
        .create(&PostParams::default(), &review("some-other-audience"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(wrong.authenticated, Some(true));
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);

    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.metadata.uid.clone().unwrap(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();

    for _ in 0..600 {
        if cms.get_opt("dependent").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("garbage collector did not delete the dependent ConfigMap within 60s");
}

#[tokio::test]
async fn moto_answers_get_secret_value_per_account_and_counts_calls() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let moto = cluster.moto();
    let account = moto.new_account();
    let other = moto.new_account();
    assert_ne!(account, other);
    assert_eq!(account.as_str().len(), 12);

    let sm = moto.sm_client(&account);
    sm.create_secret()
        .name("testenv/db")
        .secret_string("s3cr3t-value")
        .send()
        .await
        .unwrap();

    let counted = moto.sm_client_at(&moto.counting_endpoint(), &account);
    let before = moto
        .calls()
        .get("secretsmanager.GetSecretValue")
        .copied()
        .unwrap_or(0);
    let got = counted
        .get_secret_value()
        .secret_id("testenv/db")
        .send()
        .await
        .unwrap();
    assert_eq!(got.secret_string(), Some("s3cr3t-value"));
    assert!(got.arn().unwrap().starts_with(&format!(
        "arn:aws:secretsmanager:us-east-1:{account}:secret:testenv/db-"
    )));
    let after = moto.calls()["secretsmanager.GetSecretValue"];
    assert!(after > before, "counting proxy saw no GetSecretValue");

    // SSM through the same account header.
    let ssm = moto.ssm_client(&account);
    ssm.put_parameter()
        .name("/testenv/param")
        .value("p-value")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let params = ssm
        .get_parameters()
        .names("/testenv/param")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters()[0].value(), Some("p-value"));
    let elsewhere = moto
        .ssm_client(&other)
        .get_parameters()
        .names("/testenv/param")
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.invalid_parameters(),
        ["/testenv/param".to_string()]
    );

    // Another account does not see the secret: per-test isolation holds.
    let err = moto
        .sm_client(&other)
        .get_secret_value()
        .secret_id("testenv/db")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{err:?}"
    );
}
