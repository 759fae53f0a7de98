//! EKS Pod Identity end to end: a small agent stand-in on loopback validates the pod's
//! `pods.eks.amazonaws.com` token with the real apiserver's TokenReview and answers with
//! credentials from moto's STS for the role associated with the ServiceAccount.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use secrets_store_provider::{Provider, ProviderErrorKind};
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig, Metrics, PodIdentityAgentConfig};
use secrets_store_testenv::{AccountId, Cluster};
use tokio::net::TcpListener;

/// ServiceAccount (`ns/name`) → role: the Pod Identity associations of the stand-in.
type Associations = Arc<BTreeMap<String, String>>;

async fn agent(
    bind: &str,
    cluster: &'static Cluster,
    account: AccountId,
    associations: Associations,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(bind).await.expect("bind agent");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (account, associations) = (account.clone(), associations.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (account, associations) = (account.clone(), associations.clone());
                    async move {
                        Ok::<_, Infallible>(answer(req, cluster, &account, &associations).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn answer(
    req: Request<Incoming>,
    cluster: &Cluster,
    account: &AccountId,
    associations: &Associations,
) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if req.uri().path() != "/v1/credentials" {
        return reply(404, "{\"message\":\"not found\"}".into());
    }
    let Some(token) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return reply(400, "{\"message\":\"missing Authorization\"}".into());
    };
    let reviews: Api<TokenReview> = Api::all(cluster.client());
    let review = reviews
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec!["pods.eks.amazonaws.com".into()]),
                },
                ..Default::default()
            },
        )
        .await;
    let status = match review {
        Ok(r) => r.status.unwrap_or_default(),
        Err(e) => return reply(500, format!("{{\"message\":\"TokenReview: {e}\"}}")),
    };
    if status.authenticated != Some(true) {
        return reply(
            401,
            "{\"message\":\"token rejected by TokenReview\"}".into(),
        );
    }
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    let Some(sa) = user.strip_prefix("system:serviceaccount:") else {
        return reply(403, "{\"message\":\"not a ServiceAccount\"}".into());
    };
    let Some(role) = associations.get(&sa.replace(':', "/")) else {
        return reply(403, format!("{{\"message\":\"no association for {sa}\"}}"));
    };
    let out = cluster
        .moto()
        .sts_client(account)
        .assume_role()
        .role_arn(role)
        .role_session_name("pod-identity")
        .send()
        .await;
    match out {
        Ok(o) => {
            let c = o.credentials().unwrap();
            reply(
                200,
                serde_json::json!({
                    "AccessKeyId": c.access_key_id(),
                    "SecretAccessKey": c.secret_access_key(),
                    "Token": c.session_token(),
                    "AccountId": account.as_str(),
                    "Expiration": c.expiration().to_string(),
                })
                .to_string(),
            )
        }
        Err(e) => reply(500, format!("{{\"message\":\"AssumeRole: {e}\"}}")),
    }
}

#[tokio::test]
async fn pod_identity_through_an_agent_that_checks_tokens_with_token_review() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let ns = cluster.new_namespace("aws-pod-identity").await;
    service_account(cluster, &ns, "app", None).await;
    service_account(cluster, &ns, "unassociated", None).await;
    sm_secret(cluster, &account, "pi-secret", "pod-identity-value").await;
    let associations: Associations = Arc::new(BTreeMap::from([(
        format!("{ns}/app"),
        account.role_arn("pi"),
    )]));

    // The agent listens on IPv6 loopback only; the IPv4 address is dead, so `auto` must fall
    // back and `ipv4` must fail.
    let (addr, task) = agent("[::1]:0", cluster, account.clone(), associations).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let provider = AwsProvider::new(
        AwsProviderConfig {
            default_region: Some(REGION.into()),
            endpoint_url: Some(cluster.moto().endpoint()),
            pod_identity: PodIdentityAgentConfig {
                ipv4_url: format!("http://127.0.0.1:{dead_port}/v1/credentials"),
                ipv6_url: format!("http://[::1]:{}/v1/credentials", addr.port()),
                timeout: Duration::from_secs(3),
            },
            ..AwsProviderConfig::default()
        },
        cluster.client(),
        Metrics::default(),
    )
    .await;
    let pod = Pod {
        namespace: ns.clone(),
        service_account: "app".into(),
        name: "pod-0".into(),
        tokens: tokens(cluster, &ns, "app", &["pods.eks.amazonaws.com"]).await,
    };
    let objects = "- objectName: pi-secret\n  objectType: secretsmanager\n";
    let params = |addr_type: &'static str| {
        vec![
            ("objects", objects),
            ("usePodIdentity", "true"),
            ("preferredAddressType", addr_type),
        ]
    };

    let resp = provider
        .mount(request(&pod, &params("auto")))
        .await
        .expect("mount with Pod Identity");
    assert_eq!(files(&resp)["pi-secret"], "pod-identity-value");

    // A ServiceAccount without an association: the agent refuses, and the error says so.
    let other = Pod {
        namespace: ns.clone(),
        service_account: "unassociated".into(),
        name: "pod-1".into(),
        tokens: tokens(cluster, &ns, "unassociated", &["pods.eks.amazonaws.com"]).await,
    };
    let err = provider
        .mount(request(&other, &params("auto")))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unauthenticated, "{err}");
    assert_error(
        &err,
        &["Pod Identity Agent", "403", "no association"],
        "pod-identity-value",
    );

    // ipv4 only: the agent is unreachable, and the message names the address tried.
    let err = provider
        .mount(request(&other, &params("ipv4")))
        .await
        .unwrap_err();
    assert_error(
        &err,
        &["agent unreachable", &format!("127.0.0.1:{dead_port}")],
        "pod-identity-value",
    );

    // A token for the wrong audience is rejected by TokenReview through the agent.
    let wrong = Pod {
        tokens: tokens(cluster, &ns, "unassociated", &["sts.amazonaws.com"])
            .await
            .replace("sts.amazonaws.com", "pods.eks.amazonaws.com"),
        ..other
    };
    let err = provider
        .mount(request(&wrong, &params("ipv6")))
        .await
        .unwrap_err();
    assert_error(
        &err,
        &["401", "token rejected by TokenReview"],
        "pod-identity-value",
    );
    task.abort();
}
