//! Shared helpers for the integration tests: a provider pointed at testenv's moto, pods with
//! ServiceAccounts and real TokenRequest tokens from the test apiserver.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};
use secrets_store_provider::{Attributes, MountRequest, MountResponse, ProviderError};
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig, Metrics};
use secrets_store_testenv::{AccountId, Cluster};

/// The region of every test.
pub const REGION: &str = "us-east-1";

/// A provider against moto's own endpoint (or the counting proxy).
pub async fn provider(
    cluster: &Cluster,
    counting: bool,
    cache_ttl: Duration,
) -> (AwsProvider, Metrics) {
    let endpoint = if counting {
        cluster.moto().counting_endpoint()
    } else {
        cluster.moto().endpoint()
    };
    let config = AwsProviderConfig {
        default_region: Some(REGION.into()),
        endpoint_url: Some(endpoint),
        cache_ttl,
        ..AwsProviderConfig::default()
    };
    let metrics = Metrics::default();
    let p = AwsProvider::new(config, cluster.client(), metrics.clone()).await;
    (p, metrics)
}

/// A pod identity: namespace, ServiceAccount (annotated with `role`), and a token.
pub struct Pod {
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    pub tokens: String,
}

/// Creates ServiceAccount `sa` in `ns` with the IRSA annotation (if any).
pub async fn service_account(cluster: &Cluster, ns: &str, sa: &str, role: Option<&str>) {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), ns);
    let annotations =
        role.map(|r| BTreeMap::from([("eks.amazonaws.com/role-arn".to_string(), r.to_string())]));
    api.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa.into()),
                annotations,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("creating ServiceAccount");
}

/// A real token for `audiences` from the apiserver's TokenRequest API, in kubelet's
/// `csi.storage.k8s.io/serviceAccount.tokens` format.
pub async fn tokens(cluster: &Cluster, ns: &str, sa: &str, audiences: &[&str]) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), ns);
    let mut out = serde_json::Map::new();
    for aud in audiences {
        let tr = api
            .create_token_request(
                sa,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![aud.to_string()],
                        expiration_seconds: Some(600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("TokenRequest");
        let status = tr.status.expect("token status");
        out.insert(
            aud.to_string(),
            serde_json::json!({
                "token": status.token,
                "expirationTimestamp": status.expiration_timestamp.0.to_string(),
            }),
        );
    }
    serde_json::Value::Object(out).to_string()
}

/// A namespace with one ServiceAccount annotated with `account`'s role `role_name`.
pub async fn irsa_pod(
    cluster: &Cluster,
    prefix: &str,
    account: &AccountId,
    role_name: &str,
) -> Pod {
    let ns = cluster.new_namespace(prefix).await;
    let role = account.role_arn(role_name);
    service_account(cluster, &ns, "app", Some(&role)).await;
    let tokens = tokens(cluster, &ns, "app", &["sts.amazonaws.com"]).await;
    Pod {
        namespace: ns,
        service_account: "app".into(),
        name: "pod-0".into(),
        tokens,
    }
}

/// A mount request for `pod` with SecretProviderClass parameters `params`.
pub fn request(pod: &Pod, params: &[(&str, &str)]) -> MountRequest {
    let mut attrs: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    attrs.insert(
        "csi.storage.k8s.io/pod.namespace".into(),
        pod.namespace.clone(),
    );
    attrs.insert("csi.storage.k8s.io/pod.name".into(), pod.name.clone());
    attrs.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        pod.service_account.clone(),
    );
    attrs.insert(Attributes::TOKENS_KEY.into(), pod.tokens.clone());
    MountRequest {
        attributes: Attributes(attrs),
        target_path: PathBuf::from("/unused-by-the-aws-provider"),
        permission: 0o644,
        ..Default::default()
    }
}

/// File path → contents (as text) of a response.
pub fn files(resp: &MountResponse) -> BTreeMap<String, String> {
    resp.files
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                String::from_utf8_lossy(f.contents.expose()).into_owned(),
            )
        })
        .collect()
}

/// File path → version of a response.
pub fn versions(resp: &MountResponse) -> BTreeMap<String, String> {
    resp.object_versions
        .iter()
        .map(|v| (v.id.clone(), v.version.clone()))
        .collect()
}

/// Asserts an error's message contains every fragment and never the given secret.
pub fn assert_error(err: &ProviderError, fragments: &[&str], never: &str) {
    for f in fragments {
        assert!(err.message.contains(f), "missing {f:?} in: {}", err.message);
    }
    assert!(
        !err.message.contains(never),
        "secret leaked: {}",
        err.message
    );
}

/// Creates a Secrets Manager string secret; returns its ARN.
pub async fn sm_secret(cluster: &Cluster, account: &AccountId, name: &str, value: &str) -> String {
    let out = cluster
        .moto()
        .sm_client(account)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create_secret");
    out.arn().expect("arn").to_string()
}

/// Creates an SSM parameter.
pub async fn ssm_param(
    cluster: &Cluster,
    account: &AccountId,
    name: &str,
    value: &str,
    kind: aws_sdk_ssm::types::ParameterType,
) {
    cluster
        .moto()
        .ssm_client(account)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(kind)
        .overwrite(true)
        .send()
        .await
        .expect("put_parameter");
}
