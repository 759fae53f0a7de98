//! Writing one synced Secret: decide from what this node last verified whether anything is to do,
//! and write only under a precondition, so a Secret someone else creates or replaces meanwhile is
//! never adopted.
//!
//! The agent watches the managed Secrets' metadata, never their data (any tenant can label any
//! number of Secrets). What it knows about the data of the Secrets it writes itself is a keyed
//! fingerprint per Secret and resourceVersion: while the watched resourceVersion is the one this
//! node last wrote or read, and the class still wants the same content, the Secret is right with no
//! API call. Anything else reads that one Secret from the API server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use secrets_store_driver::updates_as_applied;
use sha2::Sha256;

use super::authorship::data_changed_by_others;
use super::{Outcome, SyncError};
use crate::desired::{DesiredSecret, is_managed};

/// How many times a write starts over when the Secret changed between reading and writing it.
const ATTEMPTS: usize = 3;

/// The managed Secrets as watched: identity and resourceVersion only.
pub(super) type SecretVersions = Store<PartialObjectMeta<Secret>>;

/// Drops everything but what identifies a watched Secret's version: labels and annotations can be
/// as large as the tenant who wrote them likes.
pub(crate) fn keep_version_only(secret: &mut PartialObjectMeta<Secret>) {
    let meta = std::mem::take(&mut secret.metadata);
    secret.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        ..ObjectMeta::default()
    };
}

/// A Secret version this node read or wrote and found to hold a given content.
struct Verified {
    resource_version: String,
    fingerprint: [u8; 32],
}

/// What this node knows about the Secrets it writes, by (namespace, name). Holds fingerprints
/// under a key that never leaves the process, never data.
#[derive(Clone)]
pub(super) struct VerifiedVersions {
    key: Arc<[u8; 32]>,
    known: Arc<StdMutex<HashMap<(String, String), Verified>>>,
}

impl VerifiedVersions {
    pub(super) fn new() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key[..]);
        Self {
            key: Arc::new(key),
            known: Arc::default(),
        }
    }

    /// A keyed digest of everything [`DesiredSecret::is_satisfied_by`] compares.
    fn fingerprint(&self, desired: &DesiredSecret, owners: &[OwnerReference]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key[..]).expect("any key length");
        // Length-prefix every field so that different splits of the same bytes never collide.
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(desired.type_.as_bytes());
        for map in [&desired.labels, &desired.annotations] {
            field(&(map.len() as u64).to_be_bytes());
            for (k, v) in map {
                field(k.as_bytes());
                field(v.as_bytes());
            }
        }
        field(&(desired.data.len() as u64).to_be_bytes());
        for (k, v) in &desired.data {
            field(k.as_bytes());
            field(v.expose());
        }
        let mut uids: Vec<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
        uids.sort_unstable();
        for uid in uids {
            field(uid.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Verified>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the watched version of `namespace/name` is one this node found to hold
    /// `fingerprint`.
    fn still_current(
        &self,
        watched: &SecretVersions,
        namespace: &str,
        name: &str,
        fingerprint: &[u8; 32],
    ) -> bool {
        let Some(meta) = watched.get(&ObjectRef::new(name).within(namespace)) else {
            return false;
        };
        let Some(version) = meta.metadata.resource_version.as_deref() else {
            return false;
        };
        self.lock()
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|v| v.resource_version == version && v.fingerprint == *fingerprint)
    }

    fn remember(&self, namespace: &str, name: &str, resource_version: String, fp: [u8; 32]) {
        self.lock().insert(
            (namespace.to_string(), name.to_string()),
            Verified {
                resource_version,
                fingerprint: fp,
            },
        );
    }

    /// Forgets Secret `namespace/name` (deleted, or no longer labelled).
    pub(super) fn forget(&self, namespace: &str, name: &str) {
        self.lock()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Forgets Secrets the watch no longer has (deleted, or no longer labelled).
    pub(super) fn retain_watched(&self, watched: &SecretVersions) {
        self.lock()
            .retain(|(ns, name), _| watched.get(&ObjectRef::new(name).within(ns)).is_some());
    }
}

/// Whether the API server refused a write because the object's uid is not the one it carried.
fn refuses_uid(e: &kube::core::Status) -> bool {
    e.code == 422
        && e.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid"))
}

/// Whose data a write may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Any: the content was just fetched (a publish or refresh of a volume, the pod-less sync),
    /// so it is the newest there is.
    Any,
    /// Only data someone other than secrets-store changed (or a missing Secret): the content was
    /// read back from one volume by the drift reconciler, and another volume or node may have
    /// written newer content from a later fetch that this volume has not made yet.
    OthersChanges,
}

/// How one read-then-write went.
enum Attempt {
    Done {
        outcome: Outcome,
        resource_version: String,
    },
    /// The Secret's data differs, but secrets-store wrote it and [`Replace::OthersChanges`] keeps
    /// it: nothing written, and nothing remembered (the version does not hold the content).
    LeftAlone,
    /// Someone created, deleted or replaced the Secret between our read and our write: the write
    /// was refused by its precondition.
    Raced,
}

/// One Secret to write: where, what, owned by whom.
pub(super) struct SecretWrite<'a> {
    pub(super) api: &'a Api<Secret>,
    pub(super) namespace: &'a str,
    pub(super) desired: &'a DesiredSecret,
    pub(super) owners: &'a [OwnerReference],
    pub(super) field_manager: &'a str,
    pub(super) replace: Replace,
}

impl SecretWrite<'_> {
    /// Makes the Secret hold the desired content unless the watched version is one this node
    /// already found holding it. Creates only with `POST` (a Secret that appeared since the read
    /// makes it fail) and updates only the object that was read and found managed (by its uid: a
    /// Secret deleted or replaced since makes it fail); either failure reads again.
    pub(super) async fn run(
        &self,
        watched: &SecretVersions,
        verified: &VerifiedVersions,
    ) -> Result<Outcome, SyncError> {
        let name = &self.desired.name;
        let fingerprint = verified.fingerprint(self.desired, self.owners);
        if verified.still_current(watched, self.namespace, name, &fingerprint) {
            return Ok(Outcome::Unchanged);
        }
        for _ in 0..ATTEMPTS {
            match self.attempt().await? {
                Attempt::Done {
                    outcome,
                    resource_version,
                } => {
                    verified.remember(self.namespace, name, resource_version, fingerprint);
                    return Ok(outcome);
                }
                Attempt::LeftAlone => return Ok(Outcome::LeftAlone),
                Attempt::Raced => {}
            }
        }
        Err(SyncError::Contended {
            namespace: self.namespace.to_string(),
            name: name.clone(),
            attempts: ATTEMPTS,
        })
    }

    fn api_error(&self, source: kube::Error) -> SyncError {
        SyncError::Api {
            namespace: self.namespace.to_string(),
            name: self.desired.name.clone(),
            source,
        }
    }

    async fn attempt(&self) -> Result<Attempt, SyncError> {
        let name = &self.desired.name;
        let Some(live) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return self.create().await;
        };
        if !is_managed(&live) {
            return Err(SyncError::NotManaged {
                namespace: self.namespace.to_string(),
                name: name.clone(),
            });
        }
        if self.desired.is_satisfied_by(&live, self.owners) {
            return Ok(Attempt::Done {
                outcome: Outcome::Unchanged,
                resource_version: live.metadata.resource_version.unwrap_or_default(),
            });
        }
        let data_changed = live.data.as_ref().is_none_or(|live_data| {
            live_data.len() != self.desired.data.len()
                || self
                    .desired
                    .data
                    .iter()
                    .any(|(k, v)| live_data.get(k).is_none_or(|b| b.0 != v.expose()))
        });
        // The drift reconciler must not undo a rotation: when volumes refresh one after another
        // (on this node or others), the first writes the new value and the others still hold the
        // old one for a while. Restoring from one of those would write the old value back and
        // roll workloads twice more. So data that one of our writers set stays; the volume's own
        // refresh brings it forward and writes through the publish path (Replace::Any).
        if data_changed
            && self.replace == Replace::OthersChanges
            && !data_changed_by_others(&live, self.desired.data.keys())
        {
            return Ok(Attempt::LeftAlone);
        }
        let mut secret = self.desired.to_secret(self.namespace, self.owners.to_vec());
        // The object read and found managed, not merely one of that name: an apply carrying its
        // uid is refused if it was deleted since (409) or replaced by another object (422 on
        // `metadata.uid`). Not its resourceVersion: other nodes' agents write the same Secret
        // (each its own pods as owners) and must not keep refusing each other.
        secret.metadata.uid = live.metadata.uid;
        let params = PatchParams::apply(self.field_manager).force();
        match self.api.patch(name, &params, &Patch::Apply(&secret)).await {
            Ok(applied) => Ok(Attempt::Done {
                outcome: Outcome::Applied {
                    data_changed: data_changed.then(|| self.desired.data.clone()),
                },
                resource_version: applied.metadata.resource_version.unwrap_or_default(),
            }),
            Err(kube::Error::Api(e)) if e.code == 409 || refuses_uid(&e) => Ok(Attempt::Raced),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Creates the Secret; `Raced` if one of that name appeared since the read (server-side apply
    /// would have taken it over).
    async fn create(&self) -> Result<Attempt, SyncError> {
        let params = PostParams {
            field_manager: Some(self.field_manager.to_string()),
            ..PostParams::default()
        };
        let secret = self.desired.to_secret(self.namespace, self.owners.to_vec());
        let created = match self.api.create(&params, &secret).await {
            Ok(created) => created,
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Attempt::Raced),
            Err(e) => return Err(self.api_error(e)),
        };
        Ok(Attempt::Done {
            outcome: Outcome::Applied { data_changed: None },
            resource_version: self.own_as_applied(created).await,
        })
    }

    /// A create records our fields under an `Update` operation, which later applies do not
    /// release: a label or data key the class drops would stay forever. Re-record them as ours
    /// by apply (the apiserver keeps managedFields a client sets), under the created version.
    /// Returns the Secret's resourceVersion afterwards.
    async fn own_as_applied(&self, created: Secret) -> String {
        let created_version = created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let Some(fields) = created
            .metadata
            .managed_fields
            .as_deref()
            .and_then(|f| updates_as_applied(f, self.field_manager))
        else {
            return created_version;
        };
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": created_version,
            "managedFields": fields,
        }});
        let params = PatchParams {
            field_manager: Some(self.field_manager.to_string()),
            ..PatchParams::default()
        };
        match self
            .api
            .patch(&self.desired.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(owned) => owned.metadata.resource_version.unwrap_or_default(),
            Err(e) => {
                // The content is right; only a later removal of a key or label may not apply.
                tracing::warn!(
                    namespace = %self.namespace,
                    secret = %self.desired.name,
                    error = %e,
                    "could not record the created Secret's fields as applied"
                );
                created_version
            }
        }
    }
}
