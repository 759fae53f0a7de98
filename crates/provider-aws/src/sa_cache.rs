//! ServiceAccount role annotations through a watch-backed cache.
//!
//! One metadata-only reflector per namespace that has mounted something, started on first use:
//! memory follows this node's pods, not the cluster. A miss (a ServiceAccount created a moment
//! ago, before the watch delivered it) falls back to one GET, so only errors cost a request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::identity::{IdentityError, ROLE_ANNOTATION};

type SaMeta = PartialObjectMeta<ServiceAccount>;

struct NamespaceWatch {
    store: Store<SaMeta>,
    task: tokio::task::JoinHandle<()>,
    started: tokio::time::Instant,
}

/// Reads `eks.amazonaws.com/role-arn` of ServiceAccounts.
pub struct ServiceAccountCache {
    client: kube::Client,
    watches: Mutex<HashMap<String, NamespaceWatch>>,
    ready_timeout: Duration,
}

impl ServiceAccountCache {
    /// A cache using `client`; watches start lazily per namespace.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            watches: Mutex::new(HashMap::new()),
            ready_timeout: Duration::from_secs(5),
        }
    }

    /// The namespace's store, and how long to wait for its first sync (what remains of the
    /// timeout since the watch started: a watch that cannot sync stops delaying mounts).
    fn store(&self, namespace: &str) -> (Store<SaMeta>, Duration) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watches.get(namespace)
            && !w.task.is_finished()
        {
            let waited = w.started.elapsed();
            return (w.store.clone(), self.ready_timeout.saturating_sub(waited));
        }
        // An `Api` of `PartialObjectMeta` makes metadata-only list/watch requests.
        let api: Api<SaMeta> = Api::namespaced(self.client.clone(), namespace);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .applied_objects();
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    tracing::debug!(namespace = %ns, error = %e, "ServiceAccount watch error");
                }
            }
        });
        watches.insert(
            namespace.to_string(),
            NamespaceWatch {
                store: store.clone(),
                task,
                started: tokio::time::Instant::now(),
            },
        );
        (store, self.ready_timeout)
    }

    /// The IRSA role of `namespace/name`.
    pub async fn role_arn(&self, namespace: &str, name: &str) -> Result<String, IdentityError> {
        let (store, wait) = self.store(namespace);
        let ready = tokio::time::timeout(wait, store.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok());
        if ready
            && let Some(sa) = store.get(&ObjectRef::new(name).within(namespace))
            && let Some(role) = role_of(&sa)
        {
            return Ok(role);
        }
        // Not (yet) in the cache, or no annotation there: confirm with the apiserver, so a
        // just-created or just-annotated ServiceAccount works and errors are authoritative.
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let meta = api
            .get_metadata_opt(name)
            .await
            .map_err(|e| IdentityError::Kube {
                namespace: namespace.into(),
                name: name.into(),
                message: e.to_string(),
            })?
            .ok_or_else(|| IdentityError::ServiceAccountNotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        role_of(&meta).ok_or_else(|| IdentityError::MissingRoleAnnotation {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

fn role_of(sa: &SaMeta) -> Option<String> {
    sa.metadata
        .annotations
        .as_ref()?
        .get(ROLE_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Drop for ServiceAccountCache {
    fn drop(&mut self) {
        let watches = self.watches.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in watches.values() {
            w.task.abort();
        }
    }
}
