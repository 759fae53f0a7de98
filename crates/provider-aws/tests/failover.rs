//! Failover: a regional outage of the primary (simulated by a loopback proxy in front of moto
//! that answers 503 to every request signed for us-east-1) is served from the failover region.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use secrets_store_provider::Provider;
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig, Metrics};
use secrets_store_testenv::Cluster;
use tokio::net::TcpListener;

/// Forwards to `upstream`, except Secrets Manager requests signed for `down_region` (503).
async fn outage_proxy(
    upstream: String,
    down_region: &'static str,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let scope = format!("/{down_region}/secretsmanager/");
                        let down = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.contains(&scope));
                        if down {
                            return Ok::<_, Infallible>(
                                Response::builder()
                                    .status(503)
                                    .header("content-type", "application/x-amz-json-1.1")
                                    .body(Full::new(Bytes::from_static(
                                        br#"{"__type":"ServiceUnavailable","message":"simulated regional outage"}"#,
                                    )))
                                    .unwrap(),
                            );
                        }
                        let (mut parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        parts.uri = format!("{upstream}{path}").parse().unwrap();
                        let resp = match client
                            .request(Request::from_parts(parts, Full::new(body)))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                return Ok(Response::builder()
                                    .status(502)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap());
                            }
                        };
                        let (parts, body) = resp.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok(Response::from_parts(parts, Full::new(body)))
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

#[tokio::test]
async fn primary_outage_is_served_by_the_failover_region() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-failover", &account, "app").await;
    sm_secret(cluster, &account, "regional", "from-primary").await;
    let west = aws_sdk_secretsmanager::Client::from_conf(
        cluster
            .moto()
            .sm_client(&account)
            .config()
            .to_builder()
            .region(aws_sdk_secretsmanager::config::Region::new("us-west-2"))
            .build(),
    );
    for name in ["regional", "regional-west"] {
        west.create_secret()
            .name(name)
            .secret_string(format!("{name}-from-failover"))
            .send()
            .await
            .unwrap();
    }
    let (addr, proxy) = outage_proxy(cluster.moto().endpoint(), REGION).await;
    let metrics = Metrics::default();
    let provider = AwsProvider::new(
        AwsProviderConfig {
            default_region: Some(REGION.into()),
            endpoint_url: Some(format!("http://{addr}")),
            cache_ttl: Duration::from_secs(5),
            mount_timeout: Duration::from_secs(20),
            ..AwsProviderConfig::default()
        },
        cluster.client(),
        metrics.clone(),
    )
    .await;
    let objects = "- objectName: regional\n  objectType: secretsmanager\n  objectAlias: same-name\n\
                   - objectName: regional\n  objectType: secretsmanager\n  objectAlias: other-name\n  objectVersionLabel: AWSCURRENT\n  failoverObject:\n    objectName: regional-west\n    objectVersionLabel: AWSCURRENT\n";
    let resp = provider
        .mount(request(
            &pod,
            &[("objects", objects), ("failoverRegion", "us-west-2")],
        ))
        .await
        .expect("mount served by the failover region");
    let f = files(&resp);
    assert_eq!(f["same-name"], "regional-from-failover");
    assert_eq!(f["other-name"], "regional-west-from-failover");

    // Without a failover region the outage is reported as such, naming the object and region.
    let err = provider
        .mount(request(
            &pod,
            &[(
                "objects",
                "- objectName: regional\n  objectType: secretsmanager\n",
            )],
        ))
        .await
        .unwrap_err();
    assert_error(
        &err,
        &[
            "object \"regional\"",
            "us-east-1",
            "unavailable",
            "simulated regional outage",
        ],
        "from-",
    );
    proxy.abort();
}
