//! Per-key serialisation: calls for one key run one at a time, different keys run in parallel,
//! and the map only holds entries for keys with calls in flight. The node service locks each
//! volume (by target path, [`VolumeLocks`]); sync locks each Secret it writes.
//!
//! An unpublish must never wait behind a publish that cannot finish (a provider that accepts and
//! never answers): [`KeyedLocks::preempt`] tells the holder of a key's lock to give up, and a
//! publish races its work against [`KeyedGuard::preempted`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};

/// One key's lock and its preemption signal.
#[derive(Default)]
struct Entry {
    lock: Arc<AsyncMutex<()>>,
    /// Set by [`KeyedLocks::preempt`] until the preempting call holds the lock.
    preempted: AtomicBool,
    wake: Notify,
}

/// A map of per-key locks whose entries are dropped when idle.
pub struct KeyedLocks<K> {
    inner: Arc<Mutex<HashMap<K, Arc<Entry>>>>,
}

/// The node service's locks: one per volume, keyed by target path.
pub type VolumeLocks = KeyedLocks<PathBuf>;

/// Holds one key's lock; dropping it releases the lock and forgets idle entries.
pub struct KeyedGuard<K: Hash + Eq> {
    guard: Option<OwnedMutexGuard<()>>,
    entry: Arc<Entry>,
    key: K,
    locks: KeyedLocks<K>,
}

// Not derived: a derive would require `K: Clone`/`K: Default` for an `Arc` of a map.
impl<K> Clone for KeyedLocks<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
        }
    }
}

impl<K: Hash + Eq> KeyedLocks<K> {
    /// Waits for and takes the lock of `key`.
    pub async fn lock<Q>(&self, key: &Q) -> KeyedGuard<K>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let entry = self.entry(key);
        let guard = entry.lock.clone().lock_owned().await;
        KeyedGuard {
            guard: Some(guard),
            entry,
            key: key.to_owned(),
            locks: self.clone(),
        }
    }

    /// Asks whoever holds `key`'s lock to give up, then waits for and takes the lock. The
    /// signal is cleared once the lock is ours, so later calls run undisturbed.
    pub async fn preempt<Q>(&self, key: &Q) -> KeyedGuard<K>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let entry = self.entry(key);
        entry.preempted.store(true, Ordering::SeqCst);
        entry.wake.notify_waiters();
        let guard = self.lock(key).await;
        entry.preempted.store(false, Ordering::SeqCst);
        guard
    }

    fn entry<Q>(&self, key: &Q) -> Arc<Entry>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(key) {
            return Arc::clone(entry);
        }
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    /// How many keys currently have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is held or awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq> KeyedGuard<K> {
    /// Resolves once another call asked for this key with [`KeyedLocks::preempt`].
    pub async fn preempted(&self) {
        loop {
            let woken = self.entry.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.entry.preempted.load(Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

impl<K: Hash + Eq> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map and this guard hold the entry when nobody else waits: then it is idle.
        if let Some(entry) = map.get(&self.key)
            && Arc::strong_count(entry) == 2
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_path_is_serialised_and_entries_are_dropped() {
        let locks = VolumeLocks::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, in_flight, max_seen) = (locks.clone(), in_flight.clone(), max_seen.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock(Path::new("/t/a")).await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
        assert!(locks.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preempt_wakes_the_holder_and_then_clears() {
        let locks = VolumeLocks::default();
        let holder = locks.lock(Path::new("/t/a")).await;
        let preempting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let guard = locks.preempt(Path::new("/t/a")).await;
                // The signal is spent: the next holder is not told to give up.
                let woken = tokio::time::timeout(Duration::from_millis(50), guard.preempted());
                assert!(woken.await.is_err());
            })
        };
        tokio::time::timeout(Duration::from_secs(5), holder.preempted())
            .await
            .expect("the holder is told to give up");
        drop(holder);
        preempting.await.unwrap();
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn different_paths_do_not_block_each_other() {
        let locks = VolumeLocks::default();
        let _a = locks.lock(Path::new("/t/a")).await;
        // Would deadlock under a global lock.
        let _b = locks.lock(Path::new("/t/b")).await;
        assert_eq!(locks.len(), 2);
        drop(_a);
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn keys_that_borrow_as_tuples_of_strings_work_the_same() {
        let locks: KeyedLocks<(String, String)> = KeyedLocks::default();
        let key = ("ns".to_owned(), "secret".to_owned());
        let held = locks.lock(&key).await;
        let other = locks.lock(&("ns".to_owned(), "other".to_owned())).await;
        assert_eq!(locks.len(), 2);
        // The same key waits until the holder lets go.
        assert!(locks.lock(&key).now_or_never().is_none());
        drop(held);
        drop(other);
        drop(locks.lock(&key).await);
        assert!(locks.is_empty());
    }
}
