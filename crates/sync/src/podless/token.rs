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

/// Tokens already minted, by (namespace, ServiceAccount), reused while more than half of their
/// life is left: classes sharing a ServiceAccount, and refreshes shorter than a token's life, cost
/// one TokenRequest per half-life instead of one per run. In memory only; an entry is used only
/// after the run has checked that the ServiceAccount still opts in.
#[derive(Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<std::collections::HashMap<(String, String), Cached>>,
}

struct Cached {
    tokens: ServiceAccountTokens,
    /// When the token expires, measured from before it was requested (so never late).
    expires: std::time::Instant,
    /// When it stops being handed out: half its life.
    reuse_until: std::time::Instant,
}

impl TokenCache {
    /// A token of `namespace/service_account` from the cache, or [`mint`]ed (then `minted` is
    /// called) and kept.
    pub async fn get_or_mint(
        &self,
        client: &Client,
        namespace: &str,
        service_account: &str,
        expiration_seconds: i64,
        minted: impl FnOnce(),
    ) -> Result<ServiceAccountTokens, PodlessError> {
        let key = (namespace.to_string(), service_account.to_string());
        let now = std::time::Instant::now();
        if let Some(hit) = self.lock().get(&key).filter(|c| c.reuse_until > now) {
            return Ok(hit.tokens.clone());
        }
        let life = std::time::Duration::from_secs(expiration_seconds.max(0).unsigned_abs());
        minted();
        let tokens = mint(client, namespace, service_account, expiration_seconds).await?;
        let mut cache = self.lock();
        // Expired entries leave on every mint, so the map holds only live tokens.
        cache.retain(|_, c| c.expires > now);
        cache.insert(
            key,
            Cached {
                tokens: tokens.clone(),
                expires: now + life,
                reuse_until: now + life / 2,
            },
        );
        Ok(tokens)
    }

    /// Forgets the token of `namespace/service_account` (it no longer opts in).
    pub fn forget(&self, namespace: &str, service_account: &str) {
        self.lock()
            .remove(&(namespace.to_string(), service_account.to_string()));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), Cached>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}
