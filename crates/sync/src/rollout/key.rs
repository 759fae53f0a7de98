//! The per-cluster key of the rollout digest: a Secret in the release namespace, created by
//! whichever of the node agents or the controller needs it first, and never overwritten.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use secrets_store_provider::SecretBytes;
use tokio::sync::OnceCell;

/// Name of the Secret (in the agent's namespace) that holds the per-cluster digest key.
pub const DIGEST_KEY_SECRET: &str = "secrets-store-rs-rollout-key";

/// The data key of [`DIGEST_KEY_SECRET`] that holds the digest key.
pub const DIGEST_KEY_FIELD: &str = "key";

/// The shortest digest key accepted: below this, the digests of short values could be guessed.
pub const MIN_KEY_BYTES: usize = 16;

/// Why the per-cluster digest key could not be loaded. Names the Secret, never its bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key Secret could not be read or created.
    #[error(
        "reading or creating the rollout digest key Secret {namespace}/{DIGEST_KEY_SECRET}: {source}"
    )]
    Api {
        /// The agent's namespace.
        namespace: String,
        /// The client error.
        source: kube::Error,
    },
    /// The key Secret exists but holds no usable key. The agent does not overwrite it (every node
    /// must use the same key, and whoever wrote it may have meant it); rollout stays off until it
    /// is fixed or deleted (a deleted one is created anew on the next change).
    #[error(
        "the rollout digest key Secret {namespace}/{DIGEST_KEY_SECRET} is malformed ({problem}); rollout on Secret change is off until it is deleted (the agent then creates a new one) or holds at least {MIN_KEY_BYTES} random bytes under data key {DIGEST_KEY_FIELD:?}"
    )]
    Malformed {
        /// The agent's namespace.
        namespace: String,
        /// What is wrong with it.
        problem: KeyProblem,
    },
}

/// What is wrong with a stored digest key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// No data key [`DIGEST_KEY_FIELD`].
    #[error("no data key {DIGEST_KEY_FIELD:?}; data keys present: [{}]", .0.join(", "))]
    Missing(Vec<String>),
    /// The value is shorter than [`MIN_KEY_BYTES`] (empty included).
    #[error("data key {DIGEST_KEY_FIELD:?} holds {0} bytes, fewer than {MIN_KEY_BYTES}")]
    TooShort(usize),
}

/// The digest key, read (or created, on first use in the cluster) when first needed: an API server
/// that is down at start, or a malformed key Secret someone fixes later, does not disable rollout
/// for the process's lifetime.
#[derive(Clone)]
pub struct DigestKey {
    client: Client,
    namespace: String,
    /// Loaded on first use and kept; a failed load is tried again on the next call.
    key: Arc<OnceCell<SecretBytes>>,
}

impl DigestKey {
    /// The key stored in Secret [`DIGEST_KEY_SECRET`] of `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            key: Arc::default(),
        }
    }

    /// The key, loading it if needed.
    pub async fn get(&self) -> Result<&SecretBytes, KeyError> {
        self.key.get_or_try_init(|| self.read_or_create()).await
    }

    async fn read_or_create(&self) -> Result<SecretBytes, KeyError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let api_error = |source| KeyError::Api {
            namespace: self.namespace.clone(),
            source,
        };
        let malformed = |problem| KeyError::Malformed {
            namespace: self.namespace.clone(),
            problem,
        };
        if let Some(secret) = api.get_opt(DIGEST_KEY_SECRET).await.map_err(api_error)? {
            return stored_key(&secret).map_err(malformed);
        }
        let mut fresh = vec![0u8; 32];
        rand::fill(&mut fresh[..]);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(DIGEST_KEY_SECRET.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                DIGEST_KEY_FIELD.to_string(),
                ByteString(fresh),
            )])),
            ..Default::default()
        };
        // Another process may win the race; whoever loses reads the winner's key.
        let stored = match api.create(&PostParams::default(), &secret).await {
            Ok(created) => created,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.get(DIGEST_KEY_SECRET).await.map_err(api_error)?
            }
            Err(e) => return Err(api_error(e)),
        };
        stored_key(&stored).map_err(malformed)
    }
}

/// The digest key a key Secret holds, or what is wrong with it.
fn stored_key(secret: &Secret) -> Result<SecretBytes, KeyProblem> {
    let data = secret.data.as_ref();
    let Some(key) = data.and_then(|d| d.get(DIGEST_KEY_FIELD)) else {
        let present = data.into_iter().flat_map(|d| d.keys().cloned()).collect();
        return Err(KeyProblem::Missing(present));
    };
    if key.0.len() < MIN_KEY_BYTES {
        return Err(KeyProblem::TooShort(key.0.len()));
    }
    Ok(SecretBytes::new(key.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_secret(data: Option<&[(&str, &[u8])]>) -> Secret {
        Secret {
            data: data.map(|d| {
                d.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect()
            }),
            ..Secret::default()
        }
    }

    #[test]
    fn a_malformed_key_secret_is_a_clear_error_never_a_panic() {
        let good = [7u8; 32];
        assert_eq!(
            stored_key(&key_secret(Some(&[("key", &good)])))
                .unwrap()
                .expose(),
            &good
        );
        assert_eq!(
            stored_key(&key_secret(None)).unwrap_err(),
            KeyProblem::Missing(vec![])
        );
        assert_eq!(
            stored_key(&key_secret(Some(&[("hmac", &good), ("other", b"x")]))).unwrap_err(),
            KeyProblem::Missing(vec!["hmac".into(), "other".into()])
        );
        assert_eq!(
            stored_key(&key_secret(Some(&[("key", b"")]))).unwrap_err(),
            KeyProblem::TooShort(0)
        );
        assert_eq!(
            stored_key(&key_secret(Some(&[("key", b"short")]))).unwrap_err(),
            KeyProblem::TooShort(5)
        );
        let error = KeyError::Malformed {
            namespace: "kube-system".into(),
            problem: KeyProblem::TooShort(5),
        }
        .to_string();
        assert!(
            error.contains("kube-system/secrets-store-rs-rollout-key")
                && error.contains("5 bytes")
                && error.contains("deleted"),
            "{error}"
        );
    }
}
