//! A ServiceAccount token for the pod-less sync: TokenRequest with the IRSA audience only and a
//! short life, in the shape kubelet passes tokens to a CSI driver, so the provider reads it
//! exactly as it reads a pod's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use secrets_store_driver::ServiceAccountTokens;
use secrets_store_provider_aws::IRSA_AUDIENCE;

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
/// one TokenRequest per half-life instead of one per run. Single-flight per ServiceAccount (runs
/// of its classes started together wait for one request). In memory only; an entry is used only
/// after the run has checked that the ServiceAccount still opts in.
#[derive(Default)]
pub struct TokenCache {
    slots: std::sync::Mutex<Slots>,
}

/// One slot per (namespace, ServiceAccount): the token, behind the lock its minting holds.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;
type Slots = HashMap<(String, String), Slot>;

struct Cached {
    tokens: ServiceAccountTokens,
    /// When the token expires, measured from before it was requested (so never late).
    expires: Instant,
    /// When it stops being handed out: half its life.
    reuse_until: Instant,
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
        let slot = {
            let mut slots = self.lock();
            // Slots of expired tokens nobody is minting leave, so the map holds live tokens.
            let now = Instant::now();
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map_or(true, |c| c.as_ref().is_some_and(|c| c.expires > now))
            });
            slots
                .entry((namespace.to_string(), service_account.to_string()))
                .or_default()
                .clone()
        };
        let mut cached = slot.lock().await;
        let now = Instant::now();
        if let Some(hit) = cached.as_ref().filter(|c| c.reuse_until > now) {
            return Ok(hit.tokens.clone());
        }
        let life = Duration::from_secs(expiration_seconds.max(0).unsigned_abs());
        minted();
        let tokens = mint(client, namespace, service_account, expiration_seconds).await?;
        *cached = Some(Cached {
            tokens: tokens.clone(),
            expires: now + life,
            reuse_until: now + life / 2,
        });
        Ok(tokens)
    }

    /// Forgets the token of `namespace/service_account` (it no longer opts in).
    pub fn forget(&self, namespace: &str, service_account: &str) {
        self.lock()
            .remove(&(namespace.to_string(), service_account.to_string()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}
