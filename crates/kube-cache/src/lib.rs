//! Per-namespace watch caches: the one mechanism behind the node agent's SecretProviderClass
//! and ServiceAccount lookups.
//!
//! - **Lazy.** A namespace gets a reflector on its first lookup, so memory follows this node's
//!   pods, never the cluster's size.
//! - **Evicted when idle.** A namespace without a lookup for the idle period loses its reflector.
//! - **Never waits for a first list.** Until a namespace's watch has listed once, and whenever the
//!   object is not (yet) in the cache, a lookup is answered by one direct read and the watch
//!   catches up in the background. A burst of first mounts in a fresh namespace therefore costs one
//!   read each, not a wait of seconds for a list of the whole namespace.
//! - **Metadata only where that is all we need**: `NamespacedCache<PartialObjectMeta<B>>`.
//! - **Errors are the API server's.** A read that fails says why (unreachable, forbidden), where
//!   an empty cache would only say "not found".

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// How long an unused namespace keeps its reflector by default.
pub const DEFAULT_IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);

struct Watched<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq,
{
    store: Store<K>,
    task: tokio::task::JoinHandle<()>,
    last_used: Instant,
}

impl<K: Resource + 'static> Drop for Watched<K>
where
    K::DynamicType: Hash + Eq,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lookup cache of one namespaced kind.
pub struct NamespacedCache<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq,
{
    client: Client,
    namespaces: Arc<Mutex<HashMap<String, Watched<K>>>>,
    idle_eviction: Duration,
}

impl<K: Resource + 'static> Clone for NamespacedCache<K>
where
    K::DynamicType: Hash + Eq,
{
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            namespaces: self.namespaces.clone(),
            idle_eviction: self.idle_eviction,
        }
    }
}

impl<K: Resource + 'static> Debug for NamespacedCache<K>
where
    K::DynamicType: Hash + Eq,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespacedCache")
            .field("kind", &std::any::type_name::<K>())
            .field(
                "namespaces",
                &self.namespaces.lock().map(|m| m.len()).unwrap_or_default(),
            )
            .finish()
    }
}

impl<K> NamespacedCache<K>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    /// Caches objects of `K`; for `K = PartialObjectMeta<B>` every list, watch and read is
    /// metadata-only (kube's `Api<PartialObjectMeta<_>>` asks for that).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            namespaces: Arc::default(),
            idle_eviction: DEFAULT_IDLE_EVICTION,
        }
    }

    /// Drops a namespace's reflector after `idle` without a lookup.
    pub fn with_idle_eviction(mut self, idle: Duration) -> Self {
        self.idle_eviction = idle;
        self
    }

    /// Namespaces that currently have a reflector, sorted.
    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// `namespace/name`; `Ok(None)` when it does not exist. Answered from the namespace's cache
    /// once its watch has listed; otherwise, or on a miss, by one direct read.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>, kube::Error> {
        let store = self.store_for(namespace);
        let synced = matches!(store.wait_until_ready().now_or_never(), Some(Ok(())));
        if synced && let Some(found) = store.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Some(found));
        }
        self.read(namespace, name).await
    }

    /// `namespace/name` read from the API server, bypassing the cache (to confirm a cached answer
    /// that may be a moment old).
    pub async fn read(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>, kube::Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    fn store_for(&self, namespace: &str) -> Store<K> {
        let mut map = self.lock();
        let now = Instant::now();
        let idle = self.idle_eviction;
        map.retain(|ns, w| ns == namespace || now.duration_since(w.last_used) < idle);
        if let Some(w) = map.get_mut(namespace)
            && !w.task.is_finished()
        {
            w.last_used = now;
            return w.store.clone();
        }
        let (store, writer) = reflector::store();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let ns = namespace.to_string();
        let kind = std::any::type_name::<K>();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::debug!(namespace = %ns, kind, error = %e, "watch error; retrying");
                }
            }
        });
        map.insert(
            namespace.to_string(),
            Watched {
                store: store.clone(),
                task,
                last_used: now,
            },
        );
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched<K>>> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }
}
