//! SecretProviderClass lookups through per-namespace watch caches.
//!
//! Only namespaces that have had a publish on this node get a reflector, and a namespace's
//! reflector stops after it has been idle for [`IDLE_EVICTION`], so memory follows this node's
//! pods, never the cluster's size. A miss in a cache falls back to a direct GET, so a class created
//! a moment before its pod is still found.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use secrets_store_api::crd::SecretProviderClass;
use tokio::task::JoinHandle;

/// A namespace's reflector stops after this long without a lookup.
pub const IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);

/// How long a lookup waits for a new namespace's first list before falling back to a GET.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

struct NamespaceCache {
    store: Store<SecretProviderClass>,
    task: JoinHandle<()>,
    last_used: Instant,
}

impl Drop for NamespaceCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads SecretProviderClasses for publishes.
#[derive(Clone)]
pub struct ClassCache {
    client: kube::Client,
    namespaces: Arc<Mutex<HashMap<String, NamespaceCache>>>,
}

impl std::fmt::Debug for ClassCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassCache")
            .field("namespaces", &self.watched_namespaces())
            .finish()
    }
}

impl ClassCache {
    /// A cache reading through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            namespaces: Arc::default(),
        }
    }

    /// Namespaces that currently have a reflector (for tests and debugging).
    pub fn watched_namespaces(&self) -> Vec<String> {
        let map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.keys().cloned().collect();
        v.sort();
        v
    }

    /// The class `name` in `namespace`; `Ok(None)` when it does not exist.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<SecretProviderClass>>, kube::Error> {
        let store = self.store_for(namespace);
        let key = ObjectRef::new(name).within(namespace);
        let ready = tokio::time::timeout(FIRST_SYNC_WAIT, store.wait_until_ready()).await;
        if matches!(ready, Ok(Ok(())))
            && let Some(found) = store.get(&key)
        {
            return Ok(Some(found));
        }
        // Not in the cache (yet): ask the API server, which also yields a real error when it is
        // unreachable instead of an empty cache's silent miss.
        let api: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    fn store_for(&self, namespace: &str) -> Store<SecretProviderClass> {
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|ns, c| ns == namespace || now.duration_since(c.last_used) < IDLE_EVICTION);
        if let Some(c) = map.get_mut(namespace) {
            c.last_used = now;
            return c.store.clone();
        }
        let (store, writer) = reflector::store();
        let api: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), namespace);
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::debug!(namespace = %ns, error = %e, "SecretProviderClass watch error; retrying");
                }
            }
        });
        map.insert(
            namespace.to_string(),
            NamespaceCache {
                store: store.clone(),
                task,
                last_used: now,
            },
        );
        store
    }
}
