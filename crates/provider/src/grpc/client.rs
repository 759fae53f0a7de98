//! [`ExternalProvider`]: a [`Provider`] backed by an upstream-API provider process on a unix
//! socket, speaking exactly what the upstream Go driver sends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use secrets_store_api::provider::v1alpha1 as wire;
use secrets_store_api::provider::v1alpha1::csi_driver_provider_client::CsiDriverProviderClient;
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{API_VERSION, DEFAULT_MAX_RESPONSE_BYTES, code_to_kind, error_code_to_kind, scrub};
use crate::{
    Attributes, FileMode, MountRequest, MountResponse, ObjectVersion, Provider, ProviderError,
    ProviderErrorKind, ProviderFile, validate_path,
};

/// How the client talks to an external provider.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Largest `MountResponse` accepted, in bytes (upstream `--max-call-recv-msg-size`).
    pub max_response_bytes: usize,
    /// Tries per call when the provider is unavailable (upstream retries `UNAVAILABLE` 3 times).
    pub attempts: u32,
    /// Wait before the first retry; each later wait is 10% longer, as upstream's retry policy.
    pub retry_backoff: Duration,
    /// Deadline for one call; `None` leaves it to the caller (kubelet cancels its own calls).
    pub timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            attempts: 3,
            retry_backoff: Duration::from_secs(1),
            timeout: None,
        }
    }
}

/// What a provider reports about itself through `Version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderVersion {
    /// The provider's name (`runtime_name`).
    pub runtime_name: String,
    /// The provider's version (`runtime_version`).
    pub runtime_version: String,
}

/// A provider reached over `v1alpha1.CSIDriverProvider` on `<dir>/<name>.sock`.
///
/// The connection is made on first use and re-made transparently if the provider restarts.
#[derive(Debug)]
pub struct ExternalProvider {
    name: String,
    socket: PathBuf,
    config: ClientConfig,
    channel: OnceLock<Channel>,
    /// Filled by the first successful [`ExternalProvider::probe_version`].
    runtime_version: OnceLock<String>,
}

impl ExternalProvider {
    /// A client for provider `name` listening on `socket`, with default settings.
    pub fn new(name: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        Self::with_config(name, socket, ClientConfig::default())
    }

    /// A client for provider `name` listening on `socket`.
    pub fn with_config(
        name: impl Into<String>,
        socket: impl Into<PathBuf>,
        config: ClientConfig,
    ) -> Self {
        Self {
            name: name.into(),
            socket: socket.into(),
            config,
            channel: OnceLock::new(),
            runtime_version: OnceLock::new(),
        }
    }

    /// The socket this client dials.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls `Version` (upstream uses it as a health check).
    pub async fn probe_version(&self) -> Result<ProviderVersion, ProviderError> {
        let request = wire::VersionRequest {
            version: API_VERSION.to_owned(),
        };
        let resp = self
            .call(&[], |mut client| {
                let request = request.clone();
                async move { client.version(request).await }
            })
            .await?;
        let _ = self.runtime_version.set(scrub(&resp.runtime_version, &[]));
        Ok(ProviderVersion {
            runtime_name: scrub(&resp.runtime_name, &[]),
            runtime_version: scrub(&resp.runtime_version, &[]),
        })
    }

    fn client(&self) -> CsiDriverProviderClient<Channel> {
        let channel = self
            .channel
            .get_or_init(|| {
                let socket = Arc::new(self.socket.clone());
                // The URI is a placeholder: the connector below ignores it and dials the socket.
                let mut endpoint = Endpoint::from_static("http://localhost");
                if let Some(timeout) = self.config.timeout {
                    endpoint = endpoint.timeout(timeout);
                }
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
                    let socket = Arc::clone(&socket);
                    async move { UnixStream::connect(&*socket).await.map(TokioIo::new) }
                }))
            })
            .clone();
        CsiDriverProviderClient::new(channel)
            .max_decoding_message_size(self.config.max_response_bytes)
    }

    /// Runs one RPC with upstream's retry policy (retry `UNAVAILABLE` only) and maps failures.
    async fn call<T, F, Fut>(&self, sensitive: &[String], rpc: F) -> Result<T, ProviderError>
    where
        F: Fn(CsiDriverProviderClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 1;
        loop {
            match rpc(self.client()).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status)
                    if status.code() == Code::Unavailable && attempt < self.config.attempts =>
                {
                    tracing::debug!(provider = %self.name, attempt, "provider unavailable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.mul_f64(1.1);
                    attempt += 1;
                }
                Err(status) => return Err(self.status_error(&status, sensitive)),
            }
        }
    }

    fn status_error(&self, status: &tonic::Status, sensitive: &[String]) -> ProviderError {
        let name = &self.name;
        if status.code() == Code::OutOfRange && status.message().contains("too large") {
            return ProviderError::new(
                ProviderErrorKind::InvalidResponse,
                format!(
                    "the response of provider {name:?} exceeds the {} byte limit; raise the \
                     maximum provider response size if the mounted objects are really this large",
                    self.config.max_response_bytes
                ),
            );
        }
        let kind = code_to_kind(status.code());
        let detail = scrub(status.message(), sensitive);
        let message = if kind == ProviderErrorKind::Unavailable {
            format!(
                "provider {name:?} is unavailable on {}: {detail}",
                self.socket.display()
            )
        } else {
            format!(
                "provider {name:?} failed: {detail} (gRPC {:?})",
                status.code()
            )
        };
        ProviderError::new(kind, message)
    }

    fn invalid(&self, what: impl std::fmt::Display) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::InvalidResponse,
            format!(
                "provider {:?} returned an invalid response: {what}",
                self.name
            ),
        )
    }

    fn encode(&self, request: &MountRequest) -> Result<wire::MountRequest, ProviderError> {
        let invalid = |what: &str| {
            ProviderError::new(
                ProviderErrorKind::InvalidParameters,
                format!(
                    "cannot send the mount request to provider {:?}: {what}",
                    self.name
                ),
            )
        };
        let attributes =
            serde_json::to_string(&request.attributes.0).map_err(|_| invalid("attributes"))?;
        // Upstream sends Secret data as Go strings; JSON needs UTF-8, so invalid bytes become
        // U+FFFD exactly as Go's encoder does.
        let secrets: BTreeMap<&str, String> = request
            .secrets
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.expose()).into_owned()))
            .collect();
        let secrets = serde_json::to_string(&secrets).map_err(|_| invalid("secrets"))?;
        let target_path = request
            .target_path
            .to_str()
            .ok_or_else(|| invalid("the target path is not UTF-8"))?
            .to_owned();
        Ok(wire::MountRequest {
            attributes,
            secrets,
            target_path,
            permission: request.permission.to_string(),
            current_object_version: request
                .current_object_versions
                .iter()
                .map(|v| wire::ObjectVersion {
                    id: v.id.clone(),
                    version: v.version.clone(),
                })
                .collect(),
        })
    }

    fn decode(
        &self,
        resp: wire::MountResponse,
        sensitive: &[String],
    ) -> Result<MountResponse, ProviderError> {
        if let Some(error) = resp.error.as_ref().filter(|e| !e.code.is_empty()) {
            let code = scrub(&error.code, sensitive);
            return Err(ProviderError::new(
                error_code_to_kind(&code),
                format!(
                    "provider {:?} failed the mount with error code {code:?}",
                    self.name
                ),
            ));
        }
        if resp.object_version.is_empty() {
            return Err(
                self.invalid("no object versions (a successful mount reports one per object)")
            );
        }
        let object_versions = resp
            .object_version
            .into_iter()
            .map(|v| ObjectVersion {
                id: v.id,
                version: v.version,
            })
            .collect();
        let files = resp
            .files
            .into_iter()
            .map(|f| self.file(f))
            .collect::<Result<_, _>>()?;
        Ok(MountResponse {
            files,
            object_versions,
        })
    }

    /// Checks what can be checked without the target directory: the path contract, the mode.
    /// The driver validates paths again before writing.
    fn file(&self, file: wire::File) -> Result<ProviderFile, ProviderError> {
        if let Err(e) = validate_path(&file.path) {
            // The message echoes a bounded path; scrub also drops control characters.
            return Err(self.invalid(format_args!("unsafe file {}", scrub(&e.to_string(), &[]))));
        }
        let mode = FileMode::try_from(file.mode)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                self.invalid(format_args!(
                    "file {:?} has mode {} outside 0..=0777",
                    file.path, file.mode
                ))
            })?;
        Ok(ProviderFile {
            path: file.path,
            mode,
            contents: file.contents.into(),
        })
    }
}

/// Strings that must not appear in errors: secret values and service account tokens.
fn sensitive_strings(request: &MountRequest) -> Vec<String> {
    let mut out: Vec<String> = request
        .secrets
        .values()
        .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
        .collect();
    if let Some(tokens) = request.attributes.get(Attributes::TOKENS_KEY) {
        out.push(tokens.to_owned());
        // `{"<audience>": {"token": "...", "expirationTimestamp": "..."}}`
        if let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(tokens) {
            out.extend(
                map.values()
                    .filter_map(|v| v.get("token")?.as_str().map(str::to_owned)),
            );
        }
    }
    // Very short values would redact ordinary words; a secret that short cannot be protected
    // by text replacement anyway.
    out.retain(|s| s.len() >= 4);
    out
}

#[async_trait]
impl Provider for ExternalProvider {
    fn name(&self) -> &str {
        &self.name
    }

    /// The version reported by the last successful [`ExternalProvider::probe_version`], or
    /// `"unknown"` before one.
    fn version(&self) -> &str {
        self.runtime_version.get().map_or("unknown", String::as_str)
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let sensitive = sensitive_strings(&request);
        let wire_request = self.encode(&request)?;
        drop(request);
        let resp = self
            .call(&sensitive, |mut client| {
                let wire_request = wire_request.clone();
                async move { client.mount(wire_request).await }
            })
            .await?;
        self.decode(resp, &sensitive)
    }
}
