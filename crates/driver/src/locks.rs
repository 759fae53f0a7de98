//! Per-volume serialisation: calls for one target path run one at a time, different target
//! paths run in parallel, and the map only holds entries for volumes with calls in flight.
//!
//! An unpublish must never wait behind a publish that cannot finish (a provider that accepts and
//! never answers): [`VolumeLocks::preempt`] tells the holder of a volume's lock to give up, and a
//! publish races its work against [`VolumeGuard::preempted`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};

/// One volume's lock and its preemption signal.
#[derive(Default)]
struct Entry {
    lock: Arc<AsyncMutex<()>>,
    /// Set by [`VolumeLocks::preempt`] until the preempting call holds the lock.
    preempted: AtomicBool,
    wake: Notify,
}

/// A map of per-target-path locks whose entries are dropped when idle.
#[derive(Clone, Default)]
pub struct VolumeLocks {
    inner: Arc<Mutex<HashMap<PathBuf, Arc<Entry>>>>,
}

/// Holds one volume's lock; dropping it releases the lock and forgets idle entries.
pub struct VolumeGuard {
    guard: Option<OwnedMutexGuard<()>>,
    entry: Arc<Entry>,
    key: PathBuf,
    locks: VolumeLocks,
}

impl VolumeLocks {
    /// Waits for and takes the lock of `target`.
    pub async fn lock(&self, target: &Path) -> VolumeGuard {
        let entry = self.entry(target);
        let guard = entry.lock.clone().lock_owned().await;
        VolumeGuard {
            guard: Some(guard),
            entry,
            key: target.to_path_buf(),
            locks: self.clone(),
        }
    }

    /// Asks whoever holds `target`'s lock to give up, then waits for and takes the lock. The
    /// signal is cleared once the lock is ours, so later calls run undisturbed.
    pub async fn preempt(&self, target: &Path) -> VolumeGuard {
        let entry = self.entry(target);
        entry.preempted.store(true, Ordering::SeqCst);
        entry.wake.notify_waiters();
        let guard = self.lock(target).await;
        entry.preempted.store(false, Ordering::SeqCst);
        guard
    }

    fn entry(&self, target: &Path) -> Arc<Entry> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(target.to_path_buf()).or_default().clone()
    }

    /// How many volumes currently have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no volume holds or awaits a lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl VolumeGuard {
    /// Resolves once another call asked for this volume with [`VolumeLocks::preempt`].
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

impl Drop for VolumeGuard {
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
}
