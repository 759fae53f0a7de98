//! Per-volume serialisation: calls for one target path run one at a time, different target
//! paths run in parallel, and the map only holds entries for volumes with calls in flight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A map of per-target-path locks whose entries are dropped when idle.
#[derive(Clone, Default)]
pub struct VolumeLocks {
    inner: Arc<Mutex<HashMap<PathBuf, Arc<AsyncMutex<()>>>>>,
}

/// Holds one volume's lock; dropping it releases the lock and forgets idle entries.
pub struct VolumeGuard {
    guard: Option<OwnedMutexGuard<()>>,
    key: PathBuf,
    locks: VolumeLocks,
}

impl VolumeLocks {
    /// Waits for and takes the lock of `target`.
    pub async fn lock(&self, target: &Path) -> VolumeGuard {
        let entry = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(target.to_path_buf()).or_default().clone()
        };
        let guard = entry.lock_owned().await;
        VolumeGuard {
            guard: Some(guard),
            key: target.to_path_buf(),
            locks: self.clone(),
        }
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

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds the Arc when nobody else waits or holds it: then it is idle.
        if let Some(entry) = map.get(&self.key)
            && Arc::strong_count(entry) == 1
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
