//! Which of this node's pod statuses produce which synced Secret: the drift reconciler's mapper
//! from a changed Secret to the statuses to reconcile. Fed by reconciles (they know each status's
//! class) and by status deletions; pure state, tested without an API server.

use std::collections::{BTreeSet, HashMap, HashSet};

use kube::runtime::reflector::ObjectRef;
use secrets_store_api::crd::SecretProviderClassPodStatus;

/// A status, by namespace and name.
pub(crate) type StatusRef = ObjectRef<SecretProviderClassPodStatus>;

/// Producers by Secret and Secrets by producer, kept consistent with each other.
#[derive(Debug, Default)]
pub(crate) struct ProducerIndex {
    /// (namespace, Secret name) → the statuses whose class syncs it.
    producers: HashMap<(String, String), HashSet<StatusRef>>,
    /// Status → the Secret names its class synced when it was last reconciled.
    produced: HashMap<StatusRef, BTreeSet<String>>,
}

impl ProducerIndex {
    /// Records that `status` produces exactly `secrets` (in its own namespace), replacing what it
    /// produced before.
    pub(crate) fn set(&mut self, status: &StatusRef, secrets: impl IntoIterator<Item = String>) {
        let secrets: BTreeSet<String> = secrets.into_iter().collect();
        self.remove(status);
        if secrets.is_empty() {
            return;
        }
        let namespace = status.namespace.clone().unwrap_or_default();
        for secret in &secrets {
            self.producers
                .entry((namespace.clone(), secret.clone()))
                .or_default()
                .insert(status.clone());
        }
        self.produced.insert(status.clone(), secrets);
    }

    /// Forgets `status` (deleted, or no longer producing anything).
    pub(crate) fn remove(&mut self, status: &StatusRef) {
        let Some(secrets) = self.produced.remove(status) else {
            return;
        };
        let namespace = status.namespace.clone().unwrap_or_default();
        for secret in secrets {
            let key = (namespace.clone(), secret);
            if let Some(statuses) = self.producers.get_mut(&key) {
                statuses.remove(status);
                if statuses.is_empty() {
                    self.producers.remove(&key);
                }
            }
        }
    }

    /// Keeps only the statuses `live` says still exist (after a re-list, which reports no
    /// deletions).
    pub(crate) fn retain(&mut self, live: impl Fn(&StatusRef) -> bool) {
        let gone: Vec<StatusRef> = self.produced.keys().filter(|s| !live(s)).cloned().collect();
        for status in &gone {
            self.remove(status);
        }
    }

    /// The statuses that produce Secret `name` in `namespace`.
    pub(crate) fn producers(&self, namespace: &str, name: &str) -> Vec<StatusRef> {
        self.producers
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many statuses are indexed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.produced.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(namespace: &str, name: &str) -> StatusRef {
        ObjectRef::new(name).within(namespace)
    }

    fn names(mut refs: Vec<StatusRef>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    /// Each row: the index's contents as a list of (status, secrets it produces) set in order,
    /// then a lookup and the statuses it must map to.
    #[test]
    fn a_secret_maps_to_the_statuses_of_its_namespace_that_produce_it() {
        type Row = (
            &'static str,
            Vec<(StatusRef, Vec<&'static str>)>,
            (&'static str, &'static str),
            Vec<&'static str>,
        );
        let rows: Vec<Row> = vec![
            ("empty index", vec![], ("ns", "s"), vec![]),
            (
                "one producer",
                vec![(status("ns", "p1"), vec!["s"])],
                ("ns", "s"),
                vec!["p1"],
            ),
            (
                "two producers of one Secret",
                vec![
                    (status("ns", "p1"), vec!["s", "t"]),
                    (status("ns", "p2"), vec!["s"]),
                ],
                ("ns", "s"),
                vec!["p1", "p2"],
            ),
            (
                "same Secret name in another namespace",
                vec![(status("other", "p1"), vec!["s"])],
                ("ns", "s"),
                vec![],
            ),
            (
                "a later set replaces what a status produced",
                vec![
                    (status("ns", "p1"), vec!["s"]),
                    (status("ns", "p1"), vec!["t"]),
                ],
                ("ns", "s"),
                vec![],
            ),
            (
                "a set to nothing forgets the status",
                vec![
                    (status("ns", "p1"), vec!["s"]),
                    (status("ns", "p1"), vec![]),
                ],
                ("ns", "s"),
                vec![],
            ),
            (
                "duplicate Secret names in one class count once",
                vec![(status("ns", "p1"), vec!["s", "s"])],
                ("ns", "s"),
                vec!["p1"],
            ),
        ];
        for (case, sets, (namespace, secret), want) in rows {
            let mut index = ProducerIndex::default();
            for (status, secrets) in sets {
                index.set(&status, secrets.into_iter().map(String::from));
            }
            assert_eq!(names(index.producers(namespace, secret)), want, "{case}");
        }
    }

    #[test]
    fn removal_and_retain_drop_every_trace_of_a_status() {
        let mut index = ProducerIndex::default();
        index.set(&status("ns", "p1"), ["s".to_string(), "t".to_string()]);
        index.set(&status("ns", "p2"), ["s".to_string()]);
        index.set(&status("ns", "p3"), ["u".to_string()]);

        index.remove(&status("ns", "p1"));
        assert_eq!(names(index.producers("ns", "s")), ["p2"]);
        assert!(index.producers("ns", "t").is_empty());
        assert!(!index.producers.contains_key(&("ns".into(), "t".into())));

        index.retain(|s| s.name == "p3");
        assert!(index.producers("ns", "s").is_empty());
        assert_eq!(names(index.producers("ns", "u")), ["p3"]);
        assert_eq!(index.len(), 1);
        assert_eq!(index.producers.len(), 1);

        // Removing what is not there is a no-op.
        index.remove(&status("ns", "missing"));
        assert_eq!(index.len(), 1);
    }
}
