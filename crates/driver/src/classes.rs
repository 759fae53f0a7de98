//! SecretProviderClass lookups for publishes: a [`NamespacedCache`] (a reflector per namespace
//! with pods on this node, evicted when idle; a miss, or a namespace whose watch has not listed
//! yet, is answered by one direct read, so a publish never waits for a list).

use secrets_store_api::crd::SecretProviderClass;
use secrets_store_kube_cache::NamespacedCache;

/// Reads SecretProviderClasses for publishes (`ClassCache::new(client)`, then `get(ns, name)`).
pub type ClassCache = NamespacedCache<SecretProviderClass>;
