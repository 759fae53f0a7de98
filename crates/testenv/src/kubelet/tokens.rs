//! The ServiceAccount tokens kubelet requests for a pod's CSI volume (`CSIDriver.spec.tokenRequests`)
//! and the JSON it passes as `csi.storage.k8s.io/serviceAccount.tokens`. Shared by the simulator
//! and by tests that play kubelet themselves (they must send exactly what kubelet sends).

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};

/// Why the tokens could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The TokenRequest failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The apiserver answered without a token.
    #[error("TokenRequest returned no status")]
    NoStatus,
}

/// One entry of `tokenRequests`: an audience (empty: the apiserver's) and an optional lifetime.
#[derive(Debug, Clone, Copy)]
pub struct TokenAudience<'a> {
    /// The audience.
    pub audience: &'a str,
    /// `expirationSeconds`, or the apiserver's default.
    pub expiration_seconds: Option<i64>,
}

impl<'a> TokenAudience<'a> {
    /// An audience with the apiserver's default lifetime.
    pub fn new(audience: &'a str) -> Self {
        Self {
            audience,
            expiration_seconds: None,
        }
    }
}

/// Requests a token bound to `pod` for its ServiceAccount per audience, as kubelet's token
/// manager does, and returns the volume-context JSON `{"<audience>": {"token": …,
/// "expirationTimestamp": …}, …}`.
pub async fn pod_tokens(
    client: &Client,
    pod: &Pod,
    audiences: &[TokenAudience<'_>],
) -> Result<String, TokenError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let mut tokens = serde_json::Map::new();
    for a in audiences {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if a.audience.is_empty() {
                    vec![]
                } else {
                    vec![a.audience.to_string()]
                },
                expiration_seconds: a.expiration_seconds,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let issued = sas
            .create_token_request(service_account, &PostParams::default(), &request)
            .await?;
        let status = issued.status.ok_or(TokenError::NoStatus)?;
        let status = serde_json::to_value(status).expect("TokenRequestStatus serializes");
        tokens.insert(a.audience.to_string(), status);
    }
    Ok(serde_json::Value::Object(tokens).to_string())
}
