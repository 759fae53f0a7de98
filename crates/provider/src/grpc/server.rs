//! Serves any [`Provider`] over upstream's `v1alpha1.CSIDriverProvider` API on a unix socket, so
//! the upstream Go driver can use it like any other provider.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrets_store_api::provider::v1alpha1 as wire;
use secrets_store_api::provider::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use super::{API_VERSION, DEFAULT_MAX_RESPONSE_BYTES};
use crate::{
    Attributes, DEFAULT_FILE_PERMISSION, FileMode, MountRequest, ObjectVersion, Provider,
    SecretBytes,
};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The provider socket could not be created.
    #[error("provider socket: {0}")]
    Socket(#[from] secrets_store_uds::BindError),
    /// The gRPC server failed.
    #[error("the provider gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `provider` on `socket` until `shutdown` completes, then removes the socket.
pub async fn serve(
    provider: Arc<dyn Provider>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind(socket)?;
    serve_on(provider, listener, socket, shutdown).await
}

/// Creates the provider socket (see [`secrets_store_uds::bind`]).
pub fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    Ok(secrets_store_uds::bind(socket)?)
}

/// Serves `provider` on an already bound `listener` until `shutdown` completes, then removes
/// `socket` (the listener's path).
pub async fn serve_on(
    provider: Arc<dyn Provider>,
    listener: UnixListener,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = CsiDriverProviderServer::new(Adapter { provider })
        // Upstream's driver accepts 4 MiB by default; larger answers fail there anyway.
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(DEFAULT_MAX_RESPONSE_BYTES);
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(secrets_store_uds::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(ServeError::from)
}

/// The tonic service: decodes upstream's JSON-in-protobuf request and calls the provider.
struct Adapter {
    provider: Arc<dyn Provider>,
}

#[tonic::async_trait]
impl CsiDriverProvider for Adapter {
    async fn version(
        &self,
        _request: Request<wire::VersionRequest>,
    ) -> Result<Response<wire::VersionResponse>, Status> {
        Ok(Response::new(wire::VersionResponse {
            version: API_VERSION.to_owned(),
            runtime_name: self.provider.name().to_owned(),
            runtime_version: self.provider.version().to_owned(),
        }))
    }

    /// Failures are returned as a gRPC status carrying the provider's (secret-free) message,
    /// as upstream providers such as the AWS one do, so the upstream driver's Events say why.
    async fn mount(
        &self,
        request: Request<wire::MountRequest>,
    ) -> Result<Response<wire::MountResponse>, Status> {
        let request = decode(request.into_inner())?;
        let target = request.target_path.clone();
        let response = self.provider.mount(request).await.map_err(|e| {
            tracing::warn!(provider = self.provider.name(), target = %target.display(), kind = e.kind.as_str(), error = %e, "mount failed");
            e.to_status()
        })?;
        Ok(Response::new(wire::MountResponse {
            object_version: response
                .object_versions
                .into_iter()
                .map(|v| wire::ObjectVersion {
                    id: v.id,
                    version: v.version,
                })
                .collect(),
            error: None,
            files: response
                .files
                .into_iter()
                .map(|f| wire::File {
                    path: f.path,
                    mode: i32::try_from(f.mode).unwrap_or(0o644),
                    contents: f.contents.expose().to_vec(),
                })
                .collect(),
        }))
    }
}

/// Decodes the JSON fields. Errors name the field and the position only: serde's messages can
/// quote the offending value, which may be a token.
fn decode(req: wire::MountRequest) -> Result<MountRequest, Status> {
    let bad = |field: &str, e: serde_json::Error| {
        Status::invalid_argument(format!(
            "{field} is not a JSON object of strings (line {}, column {})",
            e.line(),
            e.column()
        ))
    };
    // JSON `null` is what upstream's driver sends for a nil map: Go's json.Marshal of a pod
    // without nodePublishSecretRef gives "null", not "{}". An empty string is accepted too.
    let object = |field: &str, json: &str| -> Result<BTreeMap<String, String>, Status> {
        if json.is_empty() {
            return Ok(BTreeMap::new());
        }
        serde_json::from_str::<Option<BTreeMap<String, String>>>(json)
            .map(Option::unwrap_or_default)
            .map_err(|e| bad(field, e))
    };
    let attributes = object("attributes", &req.attributes)?;
    let secrets = object("secrets", &req.secrets)?;
    let permission: FileMode = if req.permission.is_empty() {
        DEFAULT_FILE_PERMISSION
    } else {
        serde_json::from_str(&req.permission)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "permission {:?} is not a decimal file mode",
                    req.permission
                ))
            })?
    };
    if req.target_path.is_empty() {
        return Err(Status::invalid_argument("target_path is empty"));
    }
    Ok(MountRequest {
        attributes: Attributes(attributes),
        secrets: secrets
            .into_iter()
            .map(|(k, v)| (k, SecretBytes::from(v)))
            .collect(),
        target_path: PathBuf::from(req.target_path),
        permission,
        current_object_versions: req
            .current_object_version
            .into_iter()
            .map(|v| ObjectVersion {
                id: v.id,
                version: v.version,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_upstream_encoding() {
        let req = decode(wire::MountRequest {
            attributes: r#"{"objects":"- objectName: db","csi.storage.k8s.io/pod.name":"p"}"#
                .into(),
            secrets: r#"{"password":"hunter2"}"#.into(),
            target_path: "/t".into(),
            permission: "420".into(),
            current_object_version: vec![wire::ObjectVersion {
                id: "db".into(),
                version: "1".into(),
            }],
        })
        .unwrap();
        assert_eq!(req.attributes.get("objects"), Some("- objectName: db"));
        assert_eq!(req.secrets["password"].expose(), b"hunter2");
        assert_eq!(req.permission, 0o644);
        assert_eq!(req.current_object_versions[0].id, "db");
    }

    #[test]
    fn null_secrets_from_a_go_nil_map_are_no_secrets() {
        // What the upstream driver v1.6.0 sends for a pod without nodePublishSecretRef.
        let req = decode(wire::MountRequest {
            attributes: r#"{"objects":"- objectName: db"}"#.into(),
            secrets: "null".into(),
            target_path: "/t".into(),
            permission: "420".into(),
            current_object_version: vec![],
        })
        .unwrap();
        assert!(req.secrets.is_empty());
        assert_eq!(req.attributes.get("objects"), Some("- objectName: db"));
    }

    #[test]
    fn bad_json_errors_do_not_quote_values() {
        let err = decode(wire::MountRequest {
            attributes: r#"{"csi.storage.k8s.io/serviceAccount.tokens": 12345678}"#.into(),
            target_path: "/t".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(!err.message().contains("12345678"), "{}", err.message());

        let err = decode(wire::MountRequest {
            attributes: "{}".into(),
            target_path: "/t".into(),
            permission: "rw-r--r--".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
