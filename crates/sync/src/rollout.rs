//! Rolling restart of workloads when a synced Secret they consume changes.
//!
//! Env vars never change in a running container, so a workload that opts in with
//! [`ROLLOUT_ANNOTATION`] gets its pod template annotated with a keyed digest of the Secret's
//! data whenever that data changes; the workload controller then rolls the pods. The digest is an
//! HMAC under a per-cluster key, never a plain hash of the values (which would let anyone who can
//! read the workload brute-force short secrets), and it is idempotent: every node that observes
//! the same change writes the same value, so N pods rotating one Secret cause one rollout.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use secrets_store_provider::SecretBytes;
use sha2::Sha256;
use tokio::sync::OnceCell;

/// Workload annotation that opts in to rollouts: `"true"` restarts the workload when any synced
/// Secret it consumes changes.
pub const ROLLOUT_ANNOTATION: &str = "secrets-store.csi.x-k8s.io/rollout-on-secret-change";

/// Pod template annotation prefix; the full key is this plus the Secret's name, so that several
/// consumed Secrets do not overwrite each other's digest.
pub const DIGEST_ANNOTATION_PREFIX: &str = "secrets-store.csi.x-k8s.io/secret-digest-";

/// Whether a workload's annotations opt in to rollouts.
pub fn wants_rollout(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(ROLLOUT_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The pod template annotation key holding `secret`'s digest. Annotation name parts are limited
/// to 63 characters, so long Secret names are shortened with a hash suffix.
pub fn digest_annotation(secret: &str) -> String {
    const NAME_LIMIT: usize = 63 - "secret-digest-".len();
    if secret.len() <= NAME_LIMIT {
        return format!("{DIGEST_ANNOTATION_PREFIX}{secret}");
    }
    use sha2::Digest;
    let short = &hex::encode(Sha256::digest(secret.as_bytes()))[..8];
    format!(
        "{DIGEST_ANNOTATION_PREFIX}{}-{short}",
        &secret[..NAME_LIMIT - 9]
    )
}

/// Whether a pod spec reads Secret `secret` through env, envFrom or a secret volume.
pub fn consumes_secret(spec: &PodSpec, secret: &str) -> bool {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let from_env = containers.clone().any(|c| {
        c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == secret)
        }) || c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret))
    });
    let from_volume = spec.volumes.iter().flatten().any(|v| {
        v.secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some(secret))
            || v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
            })
    });
    from_env || from_volume
}

/// HMAC-SHA256 over the Secret's name and data, hex-encoded, under the per-cluster `key`.
pub fn data_digest(key: &[u8], secret: &str, data: &BTreeMap<String, SecretBytes>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    // Length-prefix every field so different splits of the same bytes never collide.
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(secret.as_bytes());
    for (k, v) in data {
        field(k.as_bytes());
        field(v.expose());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Name of the Secret (in the agent's namespace) that holds the per-cluster digest key.
pub const DIGEST_KEY_SECRET: &str = "secrets-store-rs-rollout-key";

/// The data key of [`DIGEST_KEY_SECRET`] that holds the digest key.
pub const DIGEST_KEY_FIELD: &str = "key";

/// The shortest digest key accepted: below this, the digests of short values could be guessed.
pub const MIN_KEY_BYTES: usize = 16;

/// Patches opted-in workloads when a synced Secret's data changes.
#[derive(Clone)]
pub struct Rollout {
    client: Client,
    key_namespace: String,
    /// Loaded on first use and kept; a failed load is tried again on the next change.
    key: Arc<OnceCell<SecretBytes>>,
    recorder: Recorder,
}

/// Why a rollout could not be triggered. Never contains the key or Secret data.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The per-cluster digest key is not available: nothing was rolled.
    #[error("rolling out consumers of Secret {namespace}/{secret}: {source}")]
    Key {
        /// Namespace of the changed Secret.
        namespace: String,
        /// Name of the changed Secret.
        secret: String,
        /// Why there is no key.
        source: KeyError,
    },
    /// Listing or patching the workloads failed.
    #[error("rolling out consumers of Secret {namespace}/{secret}: {source}")]
    Workloads {
        /// Namespace of the changed Secret.
        namespace: String,
        /// Name of the changed Secret.
        secret: String,
        /// The client error.
        source: kube::Error,
    },
}

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

impl Rollout {
    /// Rolls workloads using the per-cluster digest key in `key_namespace`, which is read (or
    /// created, on first use in the cluster) when first needed: an API server that is down when
    /// the agent starts, or a malformed key Secret someone fixes later, does not disable rollout
    /// for the agent's lifetime.
    pub fn new(client: Client, key_namespace: &str, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            key_namespace: key_namespace.to_string(),
            key: Arc::default(),
        }
    }

    /// Loads the digest key now (at start, so that a malformed one is reported early).
    pub async fn load_key(&self) -> Result<(), KeyError> {
        self.key().await.map(|_| ())
    }

    async fn key(&self) -> Result<&SecretBytes, KeyError> {
        self.key.get_or_try_init(|| self.read_or_create_key()).await
    }

    async fn read_or_create_key(&self) -> Result<SecretBytes, KeyError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.key_namespace);
        let api_error = |source| KeyError::Api {
            namespace: self.key_namespace.clone(),
            source,
        };
        let malformed = |problem| KeyError::Malformed {
            namespace: self.key_namespace.clone(),
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
        // Another node may win the race; whoever loses reads the winner's key.
        let stored = match api.create(&PostParams::default(), &secret).await {
            Ok(created) => created,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.get(DIGEST_KEY_SECRET).await.map_err(api_error)?
            }
            Err(e) => return Err(api_error(e)),
        };
        stored_key(&stored).map_err(malformed)
    }

    /// Rolls every opted-in Deployment, StatefulSet and DaemonSet in `namespace` that consumes
    /// `secret`, unless its template already carries the digest of `data`. Returns what it patched
    /// as `Kind/name`.
    pub async fn secret_changed(
        &self,
        namespace: &str,
        secret: &str,
        data: &BTreeMap<String, SecretBytes>,
    ) -> Result<Vec<String>, RolloutError> {
        let key = self.key().await.map_err(|source| RolloutError::Key {
            namespace: namespace.into(),
            secret: secret.into(),
            source,
        })?;
        let digest = data_digest(key.expose(), secret, data);
        let annotation = digest_annotation(secret);
        let wrap = |source| RolloutError::Workloads {
            namespace: namespace.into(),
            secret: secret.into(),
            source,
        };
        let mut patched = Vec::new();
        patched.extend(
            self.roll::<Deployment>(namespace, secret, &annotation, &digest, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await
            .map_err(wrap)?,
        );
        patched.extend(
            self.roll::<StatefulSet>(namespace, secret, &annotation, &digest, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await
            .map_err(wrap)?,
        );
        patched.extend(
            self.roll::<DaemonSet>(namespace, secret, &annotation, &digest, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await
            .map_err(wrap)?,
        );
        Ok(patched)
    }

    async fn roll<K>(
        &self,
        namespace: &str,
        secret: &str,
        annotation: &str,
        digest: &str,
        template: impl Fn(&K) -> Option<&PodTemplateSpec>,
    ) -> Result<Vec<String>, kube::Error>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let mut patched = Vec::new();
        for workload in api.list(&ListParams::default()).await? {
            let Some(template) = template(&workload) else {
                continue;
            };
            let consumes = template
                .spec
                .as_ref()
                .is_some_and(|s| consumes_secret(s, secret));
            let current = template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(annotation));
            if !wants_rollout(workload.meta().annotations.as_ref())
                || !consumes
                || current.map(String::as_str) == Some(digest)
            {
                continue;
            }
            let name = workload.meta().name.clone().unwrap_or_default();
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {annotation: digest}}}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let note = format!(
                "synced Secret {secret} changed; rolling the pods so their environment picks up the new value"
            );
            let event = Event {
                type_: EventType::Normal,
                reason: "SecretChangedRollout".into(),
                note: Some(note),
                action: "Rollout".into(),
                secondary: None,
            };
            if let Err(e) = self
                .recorder
                .publish(&event, &workload.object_ref(&()))
                .await
            {
                tracing::warn!(error = %e, workload = %name, "could not record rollout event");
            }
            patched.push(format!("{}/{name}", K::kind(&())));
        }
        Ok(patched)
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
    use k8s_openapi::api::core::v1::{
        Container, EnvFromSource, EnvVar, EnvVarSource, SecretEnvSource, SecretKeySelector,
        SecretVolumeSource, Volume,
    };

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretBytes> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::from(v.to_string())))
            .collect()
    }

    #[test]
    fn digest_is_keyed_stable_and_sensitive() {
        let d = data(&[("SECRET_API_KEY", "secretkey")]);
        let a = data_digest(b"key-1", "foosecret", &d);
        assert_eq!(a, data_digest(b"key-1", "foosecret", &d));
        assert_ne!(
            a,
            data_digest(b"key-2", "foosecret", &d),
            "digest must depend on the key"
        );
        assert_ne!(
            a,
            data_digest(
                b"key-1",
                "foosecret",
                &data(&[("SECRET_API_KEY", "rotated")])
            )
        );
        assert_ne!(
            data_digest(b"k", "s", &data(&[("ab", "c")])),
            data_digest(b"k", "s", &data(&[("a", "bc")]))
        );
        assert!(!a.contains("secretkey"));
        assert_eq!(a.len(), 64);
    }

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

    #[test]
    fn opt_in_annotation() {
        let ann = |v: &str| BTreeMap::from([(ROLLOUT_ANNOTATION.to_string(), v.to_string())]);
        assert!(wants_rollout(Some(&ann("true"))));
        assert!(wants_rollout(Some(&ann(" True "))));
        assert!(!wants_rollout(Some(&ann("false"))));
        assert!(!wants_rollout(None));
    }

    #[test]
    fn annotation_keys_stay_valid() {
        assert_eq!(
            digest_annotation("foosecret"),
            "secrets-store.csi.x-k8s.io/secret-digest-foosecret"
        );
        let long = "a".repeat(253);
        let key = digest_annotation(&long);
        let name = key.split('/').nth(1).unwrap();
        assert!(name.len() <= 63, "{name}");
        assert_ne!(
            digest_annotation(&"a".repeat(100)),
            digest_annotation(&"a".repeat(101))
        );
    }

    #[test]
    fn finds_every_way_a_pod_reads_a_secret() {
        let env = Container {
            env: Some(vec![EnvVar {
                name: "SECRET_API_KEY".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "foosecret".into(),
                        key: "SECRET_API_KEY".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                value: None,
            }]),
            ..Default::default()
        };
        let env_from = Container {
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "bulk".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![env, env_from],
            volumes: Some(vec![Volume {
                name: "v".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("files".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(consumes_secret(&spec, "foosecret"));
        assert!(consumes_secret(&spec, "bulk"));
        assert!(consumes_secret(&spec, "files"));
        assert!(!consumes_secret(&spec, "other"));
    }
}
