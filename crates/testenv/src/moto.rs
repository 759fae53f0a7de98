//! moto (the AWS emulator) on loopback, with per-test account isolation and SDK clients for test
//! setup.
//!
//! moto scopes all data per account id. For a request it picks the account from (in order) the
//! `MOTO_ACCOUNT_ID` env var of the server, the `x-moto-account-id` request header, the account
//! that owns the request's access key (e.g. credentials from `AssumeRole*` into
//! `arn:aws:iam::ACCOUNT:role/x`), else the default `123456789012`. Setup clients here send the
//! header; code under test reaches an account through assumed-role credentials, like on AWS.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

use crate::process::{Proc, free_port};
use crate::{Error, proxy, tools};

/// The launcher that lets unsigned `AssumeRoleWithWebIdentity` through IAM enforcement.
const LAUNCHER: &str = include_str!("../moto_launcher.py");

/// The region every helper client uses.
pub const REGION: &str = "us-east-1";

/// A 12-digit AWS account id; each test takes a fresh one for isolation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct AccountId(String);

impl AccountId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `arn:aws:iam::<account>:role/<name>`.
    pub fn role_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:role/{name}", self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A private counting proxy in front of moto (see [`Moto::new_call_counter`]).
#[derive(Debug, Clone)]
pub struct CallCounter {
    endpoint: String,
    counts: proxy::Counts,
}

impl CallCounter {
    /// The endpoint to give the client whose calls are counted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Requests seen so far, per action.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counts lock").clone()
    }
}

/// A running moto server plus the counting proxy in front of it.
#[derive(Debug)]
pub struct Moto {
    proc: Proc,
    addr: SocketAddr,
    proxy_addr: SocketAddr,
    counts: proxy::Counts,
    accounts: Mutex<BTreeSet<String>>,
}

impl Moto {
    /// Spawns moto (from the calling thread, which must outlive it) without waiting for it.
    pub(crate) fn spawn(run_dir: &Path, log_dir: &Path) -> Result<(Proc, SocketAddr), Error> {
        let launcher = run_dir.join("moto_launcher.py");
        std::fs::write(&launcher, LAUNCHER).map_err(|e| Error::io(&launcher, e))?;
        let port = free_port()?;
        let mut cmd = Command::new(tools::require("moto-python")?);
        cmd.arg(&launcher)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("MOTO_ACCOUNT_ID");
        let proc = Proc::spawn("moto", cmd, log_dir)?;
        Ok((proc, SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// Waits for moto to answer and starts the counting proxy on the current runtime.
    pub(crate) async fn ready(proc: Proc, addr: SocketAddr) -> Result<Self, Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{addr}/moto-api/");
        loop {
            proc.check_running()?;
            match http_call("GET", &url, Bytes::new()).await {
                Ok((200, _)) => break,
                Ok((status, _)) if Instant::now() > deadline => {
                    return Err(Error::Timeout {
                        what: "moto".into(),
                        detail: format!("GET /moto-api/ answered {status}"),
                    });
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Timeout {
                        what: "moto".into(),
                        detail: e.to_string(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let counts = proxy::Counts::default();
        let proxy_addr = proxy::start(addr, counts.clone())
            .await
            .map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?;
        Ok(Self {
            proc,
            addr,
            proxy_addr,
            counts,
            accounts: Mutex::new(BTreeSet::new()),
        })
    }

    /// moto's own endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counting proxy's endpoint; requests through it show up in [`Moto::calls`].
    pub fn counting_endpoint(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// Requests seen by the counting proxy, per action (see [`Moto::counting_endpoint`]).
    ///
    /// Counts are global to the test binary: assert on differences or on actions only your
    /// test performs, or call [`Moto::reset_calls`] in a test that runs alone.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counts lock").clone()
    }

    /// Clears the proxy's counters.
    pub fn reset_calls(&self) {
        self.counts.lock().expect("counts lock").clear();
    }

    /// A counting proxy of its own in front of moto (on the caller's runtime), so one client's
    /// calls can be told apart from everything else that goes through the shared one.
    pub async fn new_call_counter(&self) -> Result<CallCounter, Error> {
        let counts = proxy::Counts::default();
        let addr = proxy::start(self.addr, counts.clone())
            .await
            .map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?;
        Ok(CallCounter {
            endpoint: format!("http://{addr}"),
            counts,
        })
    }

    /// The moto process (pid, log path).
    pub fn process(&self) -> &Proc {
        &self.proc
    }

    /// A fresh random 12-digit account id, never handed out before in this test binary and never
    /// moto's default account.
    pub fn new_account(&self) -> AccountId {
        let mut taken = self.accounts.lock().expect("accounts lock");
        loop {
            let id = rand::rng().random_range(100_000_000_000u64..1_000_000_000_000);
            let id = id.to_string();
            if id != "123456789012" && taken.insert(id.clone()) {
                return AccountId(id);
            }
        }
    }

    /// Turns moto's IAM enforcement on (every signed request is checked against IAM policies of
    /// its access key) or off (everything allowed, the default). Global to the moto server, so
    /// a test that enforces IAM belongs in its own test binary (its own cluster and moto).
    pub async fn set_iam_enforcement(&self, enforce: bool) -> Result<(), Error> {
        let body = if enforce { "0" } else { "inf" };
        let url = format!("{}/moto-api/reset-auth", self.endpoint());
        match http_call("POST", &url, Bytes::from_static(body.as_bytes())).await? {
            (200, _) => Ok(()),
            (status, text) => Err(Error::Http(format!("reset-auth answered {status}: {text}"))),
        }
    }

    /// SDK config for test setup: `endpoint`, region us-east-1, dummy static credentials, a
    /// pinned behavior version. No credential chain runs, so nothing probes instance metadata.
    pub fn sdk_config(&self, endpoint: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::v2026_01_12())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                    "AKIATESTENVSETUP0000",
                    "testenv-dummy-secret",
                    None,
                    None,
                    "testenv",
                )),
            )
            .build()
    }

    /// A Secrets Manager client acting in `account` (for test setup).
    pub fn sm_client(&self, account: &AccountId) -> aws_sdk_secretsmanager::Client {
        self.sm_client_at(&self.endpoint(), account)
    }

    /// A Secrets Manager client acting in `account` against `endpoint` (e.g. the counting one).
    pub fn sm_client_at(
        &self,
        endpoint: &str,
        account: &AccountId,
    ) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::config::Builder::from(&self.sdk_config(endpoint))
            .interceptor(MotoAccountHeader(account.clone()))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// A Secrets Manager client using `credentials` as they are (no account header): moto picks
    /// the account that owns the access key, as AWS would.
    pub fn sm_client_with(
        &self,
        endpoint: &str,
        credentials: Credentials,
    ) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::config::Builder::from(&self.sdk_config(endpoint))
            .credentials_provider(credentials)
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// An SSM client acting in `account` (for test setup).
    pub fn ssm_client(&self, account: &AccountId) -> aws_sdk_ssm::Client {
        let conf = aws_sdk_ssm::config::Builder::from(&self.sdk_config(&self.endpoint()))
            .interceptor(MotoAccountHeader(account.clone()))
            .build();
        aws_sdk_ssm::Client::from_conf(conf)
    }

    /// An IAM client acting in `account` (for test setup: roles, policies, users, access keys).
    pub fn iam_client(&self, account: &AccountId) -> aws_sdk_iam::Client {
        let conf = aws_sdk_iam::config::Builder::from(&self.sdk_config(&self.endpoint()))
            .interceptor(MotoAccountHeader(account.clone()))
            .build();
        aws_sdk_iam::Client::from_conf(conf)
    }

    /// An STS client acting in `account`.
    pub fn sts_client(&self, account: &AccountId) -> aws_sdk_sts::Client {
        let conf = aws_sdk_sts::config::Builder::from(&self.sdk_config(&self.endpoint()))
            .interceptor(MotoAccountHeader(account.clone()))
            .build();
        aws_sdk_sts::Client::from_conf(conf)
    }
}

/// Adds `x-moto-account-id`, moto's documented way to choose the account of a request.
#[derive(Debug)]
struct MotoAccountHeader(AccountId);

impl Intercept for MotoAccountHeader {
    fn name(&self) -> &'static str {
        "MotoAccountHeader"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-moto-account-id", self.0.as_str().to_string());
        Ok(())
    }
}

/// A one-shot plain HTTP call to a loopback component: (status, body text).
pub(crate) async fn http_call(
    method: &str,
    url: &str,
    body: Bytes,
) -> Result<(u16, String), Error> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .map_err(|e| Error::Http(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| Error::Http(format!("{method} {url}: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Http(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
