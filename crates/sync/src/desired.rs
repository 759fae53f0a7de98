//! What a synced Secret should contain, computed from a `secretObjects[]` entry and the files of a
//! mounted volume. Pure: no I/O, so every rule is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use secrets_store_api::crd::SecretObject;
use secrets_store_provider::SecretBytes;

use crate::tls;

use secrets_store_api::labels::{MANAGED as MANAGED_LABEL, MANAGED_VALUE};

const TLS_TYPE: &str = "kubernetes.io/tls";

/// The Secret types a `secretObjects[]` entry may ask for: the ones whose data is exactly what the
/// class puts in. Upstream also syncs `kubernetes.io/service-account-token` (the API server's
/// token controller then mints a token of the ServiceAccount the class's annotations name into
/// it, for anyone who may read the Secret), `bootstrap.kubernetes.io/token` (a credential that
/// joins nodes to the cluster) and any custom type; those are refused here.
pub const SYNCABLE_TYPES: &[&str] = &[
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/ssh-auth",
    TLS_TYPE,
];

/// A Secret as `secretObjects[]` describes it, with its data resolved from the mounted files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredSecret {
    /// The Secret's name (in the pod's namespace).
    pub name: String,
    /// The Secret's type (trimmed), one of [`SYNCABLE_TYPES`].
    pub type_: String,
    /// Labels from the class plus [`MANAGED_LABEL`].
    pub labels: BTreeMap<String, String>,
    /// Annotations from the class.
    pub annotations: BTreeMap<String, String>,
    /// Data keys and their values.
    pub data: BTreeMap<String, SecretBytes>,
}

/// Why a `secretObjects[]` entry cannot be turned into a Secret. Never contains secret bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DesiredSecretError {
    /// `secretName` is empty.
    #[error("secretObjects[{index}].secretName is empty")]
    NoName {
        /// Position in `secretObjects`.
        index: usize,
    },
    /// `type` is empty.
    #[error("secretObjects[{index}] (secret {secret:?}): type is empty")]
    NoType {
        /// Position in `secretObjects`.
        index: usize,
        /// The Secret's name.
        secret: String,
    },
    /// `type` is not one of [`SYNCABLE_TYPES`].
    #[error(
        "secretObjects[{index}] (secret {secret:?}): type {type_:?} is not synced; allowed types: {}",
        SYNCABLE_TYPES.join(", ")
    )]
    UnsupportedType {
        /// Position in `secretObjects`.
        index: usize,
        /// The Secret's name.
        secret: String,
        /// The type asked for.
        type_: String,
    },
    /// `data` is empty.
    #[error("secretObjects[{index}] (secret {secret:?}): data is empty")]
    NoData {
        /// Position in `secretObjects`.
        index: usize,
        /// The Secret's name.
        secret: String,
    },
    /// A `data[]` entry lacks its object name or key.
    #[error("secret {secret:?}: data[{entry}] needs both objectName and key")]
    IncompleteData {
        /// The Secret's name.
        secret: String,
        /// Position in `data`.
        entry: usize,
    },
    /// No mounted file matches `objectName`.
    #[error(
        "secret {secret:?}: key {key:?} refers to objectName {object:?}, but the volume has no such file (mounted: {mounted})"
    )]
    MissingObject {
        /// The Secret's name.
        secret: String,
        /// The data key.
        key: String,
        /// The object name that matched nothing.
        object: String,
        /// The file names that do exist, comma-separated.
        mounted: String,
    },
    /// A `kubernetes.io/tls` entry could not be split.
    #[error("secret {secret:?}: key {key:?} from objectName {object:?}: {source}")]
    Tls {
        /// The Secret's name.
        secret: String,
        /// The data key.
        key: String,
        /// The object name.
        object: String,
        /// What was wrong with the PEM.
        source: tls::TlsError,
    },
}

/// Resolves `secretObjects[index]` against the mounted `files` (keyed by path relative to the
/// volume root, which is what `objectName` names: an object name, alias or jmesPath alias).
pub fn desired_secret(
    index: usize,
    object: &SecretObject,
    files: &BTreeMap<String, SecretBytes>,
) -> Result<DesiredSecret, DesiredSecretError> {
    let name = object.secret_name.trim().to_string();
    if name.is_empty() {
        return Err(DesiredSecretError::NoName { index });
    }
    let type_ = object.type_.trim().to_string();
    if type_.is_empty() {
        return Err(DesiredSecretError::NoType {
            index,
            secret: name,
        });
    }
    if !SYNCABLE_TYPES.contains(&type_.as_str()) {
        return Err(DesiredSecretError::UnsupportedType {
            index,
            secret: name,
            type_,
        });
    }
    if object.data.is_empty() {
        return Err(DesiredSecretError::NoData {
            index,
            secret: name,
        });
    }
    let mut data = BTreeMap::new();
    for (entry, item) in object.data.iter().enumerate() {
        if item.object_name.is_empty() || item.key.is_empty() {
            return Err(DesiredSecretError::IncompleteData {
                secret: name,
                entry,
            });
        }
        let Some(content) = files.get(&item.object_name) else {
            return Err(DesiredSecretError::MissingObject {
                secret: name,
                key: item.key.clone(),
                object: item.object_name.clone(),
                mounted: files.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let value = if type_ == TLS_TYPE {
            tls::tls_part(content.expose(), &item.key).map_err(|source| {
                DesiredSecretError::Tls {
                    secret: name.clone(),
                    key: item.key.clone(),
                    object: item.object_name.clone(),
                    source,
                }
            })?
        } else {
            content.clone()
        };
        data.insert(item.key.clone(), value);
    }
    let mut labels = object.labels.clone();
    labels.insert(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string());
    Ok(DesiredSecret {
        name,
        type_,
        labels,
        annotations: object.annotations.clone(),
        data,
    })
}

impl DesiredSecret {
    /// The Secret object to server-side apply in `namespace`, owned by `owners`.
    pub fn to_secret(&self, namespace: &str, owners: Vec<OwnerReference>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(self.labels.clone()),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            type_: Some(self.type_.clone()),
            data: Some(
                self.data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    /// Whether `live` already holds exactly this content, labels, annotations and owners, so that
    /// applying again would change nothing (we never rewrite a Secret unconditionally).
    pub fn is_satisfied_by(&self, live: &Secret, owners: &[OwnerReference]) -> bool {
        let meta = &live.metadata;
        let live_labels = meta.labels.clone().unwrap_or_default();
        let live_annotations = meta.annotations.clone().unwrap_or_default();
        let live_owner_uids: Vec<&str> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| r.uid.as_str())
            .collect();
        let data_matches = live.data.as_ref().is_some_and(|d| {
            d.len() == self.data.len()
                && self
                    .data
                    .iter()
                    .all(|(k, v)| d.get(k).is_some_and(|b| b.0 == v.expose()))
        });
        live.type_.as_deref() == Some(self.type_.as_str())
            && data_matches
            && self
                .labels
                .iter()
                .all(|(k, v)| live_labels.get(k) == Some(v))
            && self
                .annotations
                .iter()
                .all(|(k, v)| live_annotations.get(k) == Some(v))
            && owners
                .iter()
                .all(|o| live_owner_uids.contains(&o.uid.as_str()))
    }
}

/// Whether a live Secret is ours to manage.
pub fn is_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_LABEL))
        .is_some_and(|v| v == MANAGED_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrets_store_api::crd::SecretObjectData;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, SecretBytes> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::from(v.to_string())))
            .collect()
    }

    fn object(name: &str, type_: &str, data: &[(&str, &str)]) -> SecretObject {
        SecretObject {
            secret_name: name.into(),
            type_: type_.into(),
            data: data
                .iter()
                .map(|(object, key)| SecretObjectData {
                    object_name: object.to_string(),
                    key: key.to_string(),
                })
                .collect(),
            ..SecretObject::default()
        }
    }

    #[test]
    fn seed_secret_object_maps_file_to_key() {
        let obj = object(
            "foosecret",
            "Opaque",
            &[("CSI-driver-test-secret", "SECRET_API_KEY")],
        );
        let files = files(&[("CSI-driver-test-secret", "secretkey")]);
        let desired = desired_secret(0, &obj, &files).unwrap();
        assert_eq!(desired.name, "foosecret");
        assert_eq!(desired.type_, "Opaque");
        assert_eq!(desired.data["SECRET_API_KEY"].expose(), b"secretkey");
        assert_eq!(desired.labels[MANAGED_LABEL], "true");

        let secret = desired.to_secret("default", vec![]);
        assert_eq!(secret.metadata.namespace.as_deref(), Some("default"));
        assert!(is_managed(&secret));
        assert!(desired.is_satisfied_by(&secret, &[]));
    }

    #[test]
    fn labels_annotations_and_other_types_pass_through() {
        let mut obj = object(
            "s",
            " kubernetes.io/basic-auth ",
            &[("u", "username"), ("p", "password")],
        );
        obj.labels.insert("team".into(), "a".into());
        obj.annotations.insert("note".into(), "x".into());
        let desired = desired_secret(3, &obj, &files(&[("u", "me"), ("p", "pw")])).unwrap();
        assert_eq!(desired.type_, "kubernetes.io/basic-auth");
        assert_eq!(desired.labels["team"], "a");
        assert_eq!(desired.annotations["note"], "x");
        assert_eq!(desired.data.len(), 2);
    }

    #[test]
    fn validation_errors_name_the_entry() {
        let f = files(&[("a", "1")]);
        assert_eq!(
            desired_secret(2, &object("", "Opaque", &[("a", "k")]), &f),
            Err(DesiredSecretError::NoName { index: 2 })
        );
        assert!(matches!(
            desired_secret(0, &object("s", "", &[("a", "k")]), &f),
            Err(DesiredSecretError::NoType { .. })
        ));
        assert!(matches!(
            desired_secret(0, &object("s", "Opaque", &[]), &f),
            Err(DesiredSecretError::NoData { .. })
        ));
        assert!(matches!(
            desired_secret(0, &object("s", "Opaque", &[("", "k")]), &f),
            Err(DesiredSecretError::IncompleteData { entry: 0, .. })
        ));
        let err = desired_secret(0, &object("s", "Opaque", &[("b", "k")]), &f).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret \"s\": key \"k\" refers to objectName \"b\", but the volume has no such file (mounted: a)"
        );
    }

    #[test]
    fn only_types_whose_data_the_class_controls_are_synced() {
        let f = files(&[("a", "1")]);
        for allowed in SYNCABLE_TYPES {
            let result = desired_secret(0, &object("s", allowed, &[("a", "k")]), &f);
            // A TLS entry gets further and fails on the content, not on the type.
            assert!(
                !matches!(result, Err(DesiredSecretError::UnsupportedType { .. })),
                "{allowed}: {result:?}"
            );
        }
        for refused in [
            "kubernetes.io/service-account-token",
            "bootstrap.kubernetes.io/token",
            "opaque",
            "example.com/custom",
            "kubernetes.io/Opaque",
        ] {
            let err = desired_secret(4, &object("s", refused, &[("a", "k")]), &f).unwrap_err();
            assert_eq!(
                err,
                DesiredSecretError::UnsupportedType {
                    index: 4,
                    secret: "s".into(),
                    type_: refused.trim().into(),
                },
                "{refused}"
            );
            let message = err.to_string();
            assert!(message.contains(refused.trim()), "{message}");
            assert!(message.contains("kubernetes.io/tls"), "{message}");
        }
    }

    #[test]
    fn tls_errors_never_contain_content() {
        let f = files(&[("cert", "not pem at all: hunter2")]);
        let err = desired_secret(
            0,
            &object("t", "kubernetes.io/tls", &[("cert", "tls.crt")]),
            &f,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(err, DesiredSecretError::Tls { .. }));
    }

    #[test]
    fn satisfaction_detects_changed_data_and_missing_owner() {
        let obj = object("s", "Opaque", &[("a", "k")]);
        let desired = desired_secret(0, &obj, &files(&[("a", "1")])).unwrap();
        let owner = OwnerReference {
            uid: "u1".into(),
            ..OwnerReference::default()
        };
        let live = desired.to_secret("ns", vec![owner.clone()]);
        assert!(desired.is_satisfied_by(&live, std::slice::from_ref(&owner)));

        let changed = desired_secret(0, &obj, &files(&[("a", "2")])).unwrap();
        assert!(!changed.is_satisfied_by(&live, &[]));
        let other_owner = OwnerReference {
            uid: "u2".into(),
            ..OwnerReference::default()
        };
        assert!(!desired.is_satisfied_by(&live, &[other_owner]));
    }
}
