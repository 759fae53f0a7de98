//! A ServiceAccount token for the pod-less sync: TokenRequest with the IRSA audience only and a
//! short life, in the shape kubelet passes tokens to a CSI driver, so the provider reads it
//! exactly as it reads a pod's.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use secrets_store_driver::volume_context::ServiceAccountTokens;
use secrets_store_provider_aws::identity::IRSA_AUDIENCE;

use super::PodlessError;

/// The only audience the controller asks for (and the admission policy lets it ask for).
pub const AUDIENCE: &str = IRSA_AUDIENCE;

/// Mints a token of `namespace/service_account` for [`AUDIENCE`], valid `expiration_seconds`
/// (the API server's minimum is 600), as the JSON of kubelet's
/// `csi.storage.k8s.io/serviceAccount.tokens` attribute. The token is never logged: the type
/// redacts it.
pub async fn mint(
    client: &Client,
    namespace: &str,
    service_account: &str,
    expiration_seconds: i64,
) -> Result<ServiceAccountTokens, PodlessError> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.to_string()],
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let minted = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .map_err(|source| PodlessError::Token {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            source,
        })?;
    let Some(status) = minted.status.filter(|s| !s.token.is_empty()) else {
        return Err(PodlessError::Token {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            source: kube::Error::Service("TokenRequest answered without a token".into()),
        });
    };
    let attribute = serde_json::json!({
        AUDIENCE: {
            "token": status.token,
            "expirationTimestamp": status.expiration_timestamp,
        }
    });
    Ok(ServiceAccountTokens::new(attribute.to_string()))
}
