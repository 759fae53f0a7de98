//! Rolling restart of workloads when a synced Secret they consume changes.
//!
//! Env vars never change in a running container, so a workload that opts in with
//! [`ROLLOUT_ANNOTATION`] gets its pod template annotated with a keyed digest of the Secret's
//! data whenever that data changes; the workload controller then rolls the pods. The digest is an
//! HMAC under a per-cluster key ([`key`]), never a plain hash of the values (which would let anyone
//! who can read the workload brute-force short secrets), and it is idempotent: whoever observes
//! the same change writes the same value, so a change rolls each workload once.
//!
//! Two callers roll: the node agent right after it writes a Secret (`secrets-store node
//! --rollout=node`, [`Rollout::secret_changed`]), or the cluster controller ([`controller`],
//! `secrets-store controller`), which watches managed Secrets and keeps the digest it last rolled
//! to on the Secret itself ([`ROLLED_OUT_ANNOTATION`]) so that a new leader resumes from it.

pub mod controller;
mod decide;
mod key;
mod metrics;
mod workloads;

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::PodSpec;
use secrets_store_provider::SecretBytes;
use sha2::Sha256;

pub use decide::{Step, needs_patch, step};
pub use key::{
    DIGEST_KEY_FIELD, DIGEST_KEY_SECRET, DigestKey, KeyError, KeyProblem, MIN_KEY_BYTES,
};
pub use metrics::RolloutMetrics;
pub use workloads::{Rollout, RolloutError};

/// Managed Secret annotation written by the rollout controller: the digest its consumers were last
/// rolled to (or, on first sight, the digest the Secret had then, so creation rolls nothing).
pub const ROLLED_OUT_ANNOTATION: &str = "secrets-store.csi.x-k8s.io/rolled-out-digest";

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
