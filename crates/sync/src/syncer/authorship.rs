//! Who last set a synced Secret's data, read from its `metadata.managedFields`: the drift
//! reconciler restores data someone else changed, and leaves alone data that secrets-store itself
//! wrote from a fetch (another volume's or another node's, possibly newer than the volume being
//! reconciled). Pure: tested on constructed Secrets.
//!
//! The API server records, per field manager, the fields it set and when its entry last changed.
//! An update that changes a data key moves that key to its manager (`kubectl edit` is
//! `kubectl-edit`), and our force-applies take it back, so a data key owned by none of ours was
//! set by someone else. A server-side apply of `stringData` (`kubectl apply --server-side`)
//! changes the data but is recorded as owning `f:stringData`, which outlives the change (the
//! field is never stored): it counts as someone else's change only while its entry is at least
//! as recent as ours. A key nobody owns (managedFields stripped) or a key set other than the
//! class's (a key removed or added) counts as someone else's change too.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use serde_json::Value;

/// The start of every field manager secrets-store writes synced Secrets with: the node agents'
/// `secrets-store-rs/<node>` and the pod-less sync's `secrets-store-rs/controller`.
pub const FIELD_MANAGER_PREFIX: &str = secrets_store_api::names::SECRET_FIELD_MANAGER_PREFIX;

/// Whether `manager` is one of secrets-store's Secret writers.
fn is_ours(manager: &str) -> bool {
    manager.starts_with(FIELD_MANAGER_PREFIX)
}

/// Whether someone other than secrets-store changed `live`'s data since secrets-store last wrote
/// it (see the module docs); `desired_keys` are the data keys the class asks for.
pub(crate) fn data_changed_by_others<'a>(
    live: &Secret,
    desired_keys: impl IntoIterator<Item = &'a String>,
) -> bool {
    let live_keys: BTreeSet<&str> = live
        .data
        .iter()
        .flat_map(|d| d.keys())
        .map(String::as_str)
        .collect();
    let desired_keys: BTreeSet<&str> = desired_keys.into_iter().map(String::as_str).collect();
    if live_keys != desired_keys {
        return true;
    }
    let entries = live.metadata.managed_fields.as_deref().unwrap_or_default();
    let mut ours_own: BTreeSet<&str> = BTreeSet::new();
    let mut ours_latest: Option<&Time> = None;
    for entry in entries
        .iter()
        .filter(|e| e.manager.as_deref().is_some_and(is_ours))
    {
        let owned = owned_keys(entry, "f:data");
        if owned.iter().any(|k| live_keys.contains(k)) {
            ours_latest = ours_latest.max(entry.time.as_ref());
        }
        ours_own.extend(owned);
    }
    if !live_keys.iter().all(|k| ours_own.contains(k)) {
        return true;
    }
    // Someone else's entry that sets the data, as recent as ours or more (the API server keeps
    // seconds: a tie counts as theirs, which at worst restores once more).
    entries
        .iter()
        .filter(|e| !e.manager.as_deref().is_some_and(is_ours))
        .filter(|e| {
            ["f:data", "f:stringData"]
                .iter()
                .any(|field| owned_keys(e, field).iter().any(|k| live_keys.contains(k)))
        })
        .any(|e| e.time.as_ref().is_none_or(|t| Some(t) >= ours_latest))
}

/// The keys `entry` owns under `field` (`f:data` or `f:stringData`) of a `FieldsV1` set.
fn owned_keys<'e>(entry: &'e ManagedFieldsEntry, field: &str) -> Vec<&'e str> {
    match entry.fields_v1.as_ref().and_then(|f| f.0.get(field)) {
        Some(Value::Object(keys)) => keys.keys().filter_map(|k| k.strip_prefix("f:")).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    use super::*;

    /// One managedFields entry: manager, the field its keys are under, the keys, its time in
    /// seconds.
    type Entry = (&'static str, &'static str, &'static [&'static str], i64);

    /// A Secret with data `keys` and the managedFields `entries`.
    fn secret(keys: &[&str], entries: &[Entry]) -> Secret {
        let mut secret = Secret {
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"v".to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let entry = |(manager, field, owned, seconds): &Entry| {
            let mut keys = serde_json::Map::new();
            keys.insert(".".into(), serde_json::json!({}));
            for key in *owned {
                keys.insert(format!("f:{key}"), serde_json::json!({}));
            }
            let mut fields = serde_json::Map::new();
            fields.insert(field.to_string(), Value::Object(keys));
            fields.insert(
                "f:metadata".into(),
                serde_json::json!({"f:labels": {"f:secrets-store.csi.k8s.io/managed": {}}}),
            );
            ManagedFieldsEntry {
                manager: Some(manager.to_string()),
                operation: Some("Apply".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(FieldsV1(Value::Object(fields))),
                time: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(*seconds).unwrap(),
                )),
                ..ManagedFieldsEntry::default()
            }
        };
        secret.metadata.managed_fields = Some(entries.iter().map(entry).collect());
        secret
    }

    #[test]
    fn only_data_that_one_of_ours_set_last_is_ours() {
        /// (case, live data keys, managedFields, keys the class wants, changed by others).
        type Row = (
            &'static str,
            &'static [&'static str],
            Vec<Entry>,
            &'static [&'static str],
            bool,
        );
        let node_a = "secrets-store-rs/node-a";
        let rows: Vec<Row> = vec![
            (
                "written by a node agent",
                &["a", "b"],
                vec![(node_a, "f:data", &["a", "b"], 10)],
                &["a", "b"],
                false,
            ),
            (
                "written by the pod-less sync",
                &["a"],
                vec![("secrets-store-rs/controller", "f:data", &["a"], 10)],
                &["a"],
                false,
            ),
            (
                "another node's agent wrote after this one",
                &["a"],
                vec![
                    ("secrets-store-rs/node-b", "f:data", &["a"], 20),
                    (node_a, "f:data", &[], 10),
                ],
                &["a"],
                false,
            ),
            (
                "the rollout controller's annotation is no data change",
                &["a"],
                vec![
                    (node_a, "f:data", &["a"], 10),
                    ("secrets-store-rs-controller", "f:metadata", &[], 20),
                ],
                &["a"],
                false,
            ),
            (
                "one key edited by kubectl",
                &["a", "b"],
                vec![
                    (node_a, "f:data", &["a"], 10),
                    ("kubectl-edit", "f:data", &["b"], 20),
                ],
                &["a", "b"],
                true,
            ),
            (
                "a look-alike manager without the slash",
                &["a"],
                vec![("secrets-store-rs", "f:data", &["a"], 10)],
                &["a"],
                true,
            ),
            ("managedFields stripped", &["a"], vec![], &["a"], true),
            (
                "stringData applied after our write",
                &["a"],
                vec![
                    (node_a, "f:data", &["a"], 10),
                    ("kubectl", "f:stringData", &["a"], 20),
                ],
                &["a"],
                true,
            ),
            (
                "stringData applied in the second of our write",
                &["a"],
                vec![
                    (node_a, "f:data", &["a"], 10),
                    ("kubectl", "f:stringData", &["a"], 10),
                ],
                &["a"],
                true,
            ),
            (
                "stringData applied before our last write",
                &["a"],
                vec![
                    (node_a, "f:data", &["a"], 30),
                    ("kubectl", "f:stringData", &["a"], 20),
                ],
                &["a"],
                false,
            ),
            (
                "a key removed by someone",
                &["a"],
                vec![(node_a, "f:data", &["a"], 10)],
                &["a", "b"],
                true,
            ),
            (
                "a key added by someone",
                &["a", "extra"],
                vec![
                    (node_a, "f:data", &["a"], 10),
                    ("kubectl-edit", "f:data", &["extra"], 20),
                ],
                &["a"],
                true,
            ),
        ];
        for (case, keys, entries, desired, want) in rows {
            let live = secret(keys, &entries);
            let desired: Vec<String> = desired.iter().map(|k| k.to_string()).collect();
            assert_eq!(data_changed_by_others(&live, &desired), want, "{case}");
        }
    }

    #[test]
    fn no_data_at_all_is_someone_elses_change() {
        let mut live = secret(&[], &[("secrets-store-rs/n", "f:data", &[], 10)]);
        live.data = None;
        let desired = ["a".to_string()];
        assert!(data_changed_by_others(&live, &desired));
    }
}
