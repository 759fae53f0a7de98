//! Who last set a synced Secret's data, read from its `metadata.managedFields`: the drift
//! reconciler restores data someone else changed, and leaves alone data that secrets-store itself
//! wrote from a fetch (another volume's or another node's, possibly newer than the volume being
//! reconciled). Pure: tested on constructed Secrets.
//!
//! The API server records, per field manager, the fields it last set: an apply or update that
//! changes a data key moves that key to its manager (`kubectl edit` is `kubectl-edit`, `kubectl
//! apply` is `kubectl-client-side-apply` or `kubectl`), so a key still owned by one of ours holds
//! the value we wrote. A key nobody owns (managedFields stripped) or a key set that differs from
//! what the class asks for (a key removed or added) counts as someone else's change.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// The start of every field manager secrets-store writes synced Secrets with: the node agents'
/// `secrets-store-rs/<node>` and the pod-less sync's `secrets-store-rs/controller`.
pub const FIELD_MANAGER_PREFIX: &str = "secrets-store-rs/";

/// Whether `manager` is one of secrets-store's Secret writers.
pub(crate) fn is_ours(manager: &str) -> bool {
    manager.starts_with(FIELD_MANAGER_PREFIX)
}

/// Whether someone other than secrets-store changed `live`'s data since secrets-store last wrote
/// it: a data key not owned by any of our field managers, or a key set other than `desired_keys`.
pub(crate) fn data_changed_by_others<'a>(
    live: &Secret,
    desired_keys: impl IntoIterator<Item = &'a String>,
) -> bool {
    let live_keys: BTreeSet<&String> = live.data.iter().flat_map(|d| d.keys()).collect();
    let desired_keys: BTreeSet<&String> = desired_keys.into_iter().collect();
    if live_keys != desired_keys {
        return true;
    }
    let owners = data_key_owners(live);
    live_keys.iter().any(|key| {
        !owners
            .get(key.as_str())
            .is_some_and(|managers| managers.iter().any(|m| is_ours(m)))
    })
}

/// The field managers owning each data key (`f:data` → `f:<key>` in a `FieldsV1` set).
fn data_key_owners(live: &Secret) -> BTreeMap<&str, Vec<&str>> {
    let mut owners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for entry in live.metadata.managed_fields.iter().flatten() {
        let (Some(manager), Some(fields)) = (entry.manager.as_deref(), entry.fields_v1.as_ref())
        else {
            continue;
        };
        let Some(Value::Object(data)) = fields.0.get("f:data") else {
            continue;
        };
        for key in data.keys().filter_map(|k| k.strip_prefix("f:")) {
            owners.entry(key).or_default().push(manager);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;

    /// A Secret with data `keys` whose managedFields give each (manager, owned data keys).
    fn secret(keys: &[&str], managers: &[(&str, &[&str])]) -> Secret {
        let mut secret = Secret::default();
        secret.data = Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(b"v".to_vec())))
                .collect(),
        );
        secret.metadata.managed_fields = Some(
            managers
                .iter()
                .map(|(manager, owned)| {
                    let mut data = serde_json::Map::new();
                    data.insert(".".into(), serde_json::json!({}));
                    for key in *owned {
                        data.insert(format!("f:{key}"), serde_json::json!({}));
                    }
                    ManagedFieldsEntry {
                        manager: Some(manager.to_string()),
                        operation: Some("Apply".into()),
                        fields_type: Some("FieldsV1".into()),
                        fields_v1: Some(FieldsV1(serde_json::json!({
                            "f:data": data,
                            "f:metadata": {"f:labels": {"f:secrets-store.csi.k8s.io/managed": {}}},
                        }))),
                        ..ManagedFieldsEntry::default()
                    }
                })
                .collect(),
        );
        secret
    }

    #[test]
    fn only_data_every_key_of_which_we_own_is_ours() {
        /// (case, live data keys, (manager, data keys it owns), keys the class wants, changed by
        /// others).
        type Row = (
            &'static str,
            &'static [&'static str],
            Vec<(&'static str, &'static [&'static str])>,
            &'static [&'static str],
            bool,
        );
        let node_a = "secrets-store-rs/node-a";
        let rows: Vec<Row> = vec![
            (
                "written by a node agent",
                &["a", "b"],
                vec![(node_a, &["a", "b"])],
                &["a", "b"],
                false,
            ),
            (
                "written by the pod-less sync",
                &["a"],
                vec![("secrets-store-rs/controller", &["a"])],
                &["a"],
                false,
            ),
            (
                "two agents applied the same value",
                &["a"],
                vec![(node_a, &["a"]), ("secrets-store-rs/node-b", &["a"])],
                &["a"],
                false,
            ),
            (
                "the rollout controller's annotation is no data change",
                &["a"],
                vec![(node_a, &["a"]), ("secrets-store-rs-controller", &[])],
                &["a"],
                false,
            ),
            (
                "one key edited by kubectl",
                &["a", "b"],
                vec![(node_a, &["a"]), ("kubectl-edit", &["b"])],
                &["a", "b"],
                true,
            ),
            (
                "a look-alike manager without the slash",
                &["a"],
                vec![("secrets-store-rs", &["a"])],
                &["a"],
                true,
            ),
            ("managedFields stripped", &["a"], vec![], &["a"], true),
            (
                "a key removed by someone",
                &["a"],
                vec![(node_a, &["a"])],
                &["a", "b"],
                true,
            ),
            (
                "a key added by someone",
                &["a", "extra"],
                vec![(node_a, &["a"]), ("kubectl-edit", &["extra"])],
                &["a"],
                true,
            ),
        ];
        for (case, keys, managers, desired, want) in rows {
            let live = secret(keys, &managers);
            let desired: Vec<String> = desired.iter().map(|k| k.to_string()).collect();
            assert_eq!(data_changed_by_others(&live, &desired), want, "{case}");
        }
    }

    #[test]
    fn no_data_at_all_is_someone_elses_change() {
        let mut live = secret(&[], &[("secrets-store-rs/n", &[])]);
        live.data = None;
        let desired = ["a".to_string()];
        assert!(data_changed_by_others(&live, &desired));
    }
}
