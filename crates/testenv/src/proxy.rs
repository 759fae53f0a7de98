//! A counting reverse proxy in front of moto. moto keeps no per-action log, so tests that assert
//! "one BatchGetSecretValue per mount" point the code under test at this proxy instead.
//!
//! A request is counted under its `X-Amz-Target` header (JSON protocols, e.g.
//! `secretsmanager.GetSecretValue`, `AmazonSSM.GetParameters`), else its `Action` parameter from
//! the query string or form body (query protocols, e.g. `AssumeRoleWithWebIdentity`), else
//! `"<METHOD> <path>"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Per-action request counts shared between the proxy task and the tests.
pub type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Starts the proxy on a free loopback port, forwarding to `upstream` (`http://127.0.0.1:PORT`).
/// Runs on the caller's runtime until that runtime shuts down.
pub async fn start(upstream: SocketAddr, counts: Counts) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = client.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |req| forward(req, upstream, client.clone(), counts.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    counts: Counts,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let key = action_key(&parts, &body);
    *counts.lock().expect("counts lock").entry(key).or_default() += 1;

    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = format!("http://{upstream}{path}");
    let mut out = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        out = out.header(name, value);
    }
    let out = match out.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(StatusCode::BAD_REQUEST, e.to_string())),
    };
    match client.request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Response::from_parts(parts, Full::new(body)))
        }
        Err(e) => Ok(error_response(
            StatusCode::BAD_GATEWAY,
            format!("moto unreachable: {e}"),
        )),
    }
}

fn error_response(status: StatusCode, msg: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(msg)));
    *resp.status_mut() = status;
    resp
}

/// The counting key of a request (see the module docs).
fn action_key(parts: &http::request::Parts, body: &[u8]) -> String {
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        return target.to_string();
    }
    let from_query = parts.uri.query().and_then(form_action);
    let from_body = std::str::from_utf8(body).ok().and_then(form_action);
    from_query
        .or(from_body)
        .unwrap_or_else(|| format!("{} {}", parts.method, parts.uri.path()))
}

fn form_action(form: &str) -> Option<String> {
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "Action")
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn keys_by_target_then_action_then_path() {
        let json = parts(
            Request::post("/")
                .header("X-Amz-Target", "secretsmanager.GetSecretValue")
                .body(())
                .unwrap(),
        );
        assert_eq!(action_key(&json, b"{}"), "secretsmanager.GetSecretValue");

        let form = parts(Request::post("/").body(()).unwrap());
        assert_eq!(
            action_key(
                &form,
                b"Version=2011-06-15&Action=AssumeRoleWithWebIdentity&RoleArn=x"
            ),
            "AssumeRoleWithWebIdentity"
        );

        let query = parts(
            Request::get("/?Action=ListRoles&Version=1")
                .body(())
                .unwrap(),
        );
        assert_eq!(action_key(&query, b""), "ListRoles");

        let other = parts(Request::get("/moto-api/").body(()).unwrap());
        assert_eq!(action_key(&other, b""), "GET /moto-api/");
    }
}
