//! The node-wide budget for mounted secret bytes.
//!
//! tmpfs pages are charged to the memory cgroup of the process that writes them — the agent's,
//! not the pod's. Without a bound, a few volumes listing one large secret under many aliases
//! would push the agent past its memory limit and get it OOM-killed, taking every volume on the
//! node down with it. So before a volume's files are written the agent reserves their size here,
//! and refuses the write (naming the volume) when the node's total would exceed the budget.
//!
//! A rewrite holds the old files until the `..data` swap, so a volume's old and new content are
//! both counted until the write is committed: the budget bounds the peak, not just the steady
//! state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default budget: what the chart's memory limit leaves after the agent's own working set.
pub const DEFAULT_NODE_BYTES: u64 = 32 * 1024 * 1024;

/// Why a volume's files do not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "writing {needed} bytes of secrets would exceed this node's budget of {limit} bytes ({in_use} in use by mounted volumes); the agent refuses rather than risk its memory limit"
)]
pub struct BudgetExceeded {
    /// Bytes this write needs.
    pub needed: u64,
    /// The node's budget.
    pub limit: u64,
    /// Bytes held by mounted volumes and writes in flight.
    pub in_use: u64,
}

#[derive(Debug, Default)]
struct Usage {
    /// Committed bytes per volume target.
    committed: HashMap<PathBuf, u64>,
    /// Bytes reserved by writes in flight.
    pending: u64,
}

impl Usage {
    fn total(&self) -> u64 {
        self.committed.values().sum::<u64>() + self.pending
    }
}

/// The budget shared by every publish on the node.
#[derive(Clone, Debug)]
pub struct NodeBudget {
    limit: u64,
    usage: Arc<Mutex<Usage>>,
}

/// Bytes reserved for one write; [`Reservation::commit`] makes them the volume's, dropping it
/// gives them back.
#[derive(Debug)]
pub struct Reservation {
    budget: NodeBudget,
    target: PathBuf,
    bytes: u64,
    committed: bool,
}

impl NodeBudget {
    /// A budget of `limit` bytes for the whole node.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            usage: Arc::default(),
        }
    }

    /// Reserves `bytes` for a write into `target`, on top of what `target` holds now.
    pub fn reserve(&self, target: &Path, bytes: u64) -> Result<Reservation, BudgetExceeded> {
        let mut usage = self.lock();
        let in_use = usage.total();
        if in_use.saturating_add(bytes) > self.limit {
            return Err(BudgetExceeded {
                needed: bytes,
                limit: self.limit,
                in_use,
            });
        }
        usage.pending += bytes;
        Ok(Reservation {
            budget: self.clone(),
            target: target.to_path_buf(),
            bytes,
            committed: false,
        })
    }

    /// Forgets `target`'s bytes (unmounted).
    pub fn release(&self, target: &Path) {
        self.lock().committed.remove(target);
    }

    /// Bytes in use on the node (what the tests check; the node service only reserves).
    #[cfg(test)]
    pub fn in_use(&self) -> u64 {
        self.lock().total()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// The write succeeded: the volume now holds exactly the reserved bytes (its old content is
    /// gone with the swap).
    pub fn commit(mut self) {
        let mut usage = self.budget.lock();
        usage.pending -= self.bytes;
        usage.committed.insert(self.target.clone(), self.bytes);
        self.committed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.budget.lock().pending -= self.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_share_one_budget_and_release_on_unmount() {
        let budget = NodeBudget::new(100);
        budget.reserve(Path::new("/a"), 60).unwrap().commit();
        let err = budget.reserve(Path::new("/b"), 50).unwrap_err();
        assert_eq!(
            err,
            BudgetExceeded {
                needed: 50,
                limit: 100,
                in_use: 60
            }
        );
        assert!(err.to_string().contains("50 bytes"));
        budget.reserve(Path::new("/b"), 40).unwrap().commit();
        assert_eq!(budget.in_use(), 100);
        budget.release(Path::new("/a"));
        assert_eq!(budget.in_use(), 40);
    }

    #[test]
    fn a_rewrite_counts_old_and_new_until_committed() {
        let budget = NodeBudget::new(100);
        budget.reserve(Path::new("/a"), 60).unwrap().commit();
        // Old 60 + new 50 would be on the tmpfs at once during the swap.
        assert!(budget.reserve(Path::new("/a"), 50).is_err());
        let smaller = budget.reserve(Path::new("/a"), 30).unwrap();
        assert_eq!(budget.in_use(), 90);
        smaller.commit();
        assert_eq!(
            budget.in_use(),
            30,
            "the old content is gone after the swap"
        );
    }

    #[test]
    fn an_abandoned_write_gives_its_bytes_back() {
        let budget = NodeBudget::new(100);
        let r = budget.reserve(Path::new("/a"), 80).unwrap();
        assert!(
            budget.reserve(Path::new("/b"), 30).is_err(),
            "in-flight bytes count"
        );
        drop(r);
        assert_eq!(budget.in_use(), 0);
        budget.reserve(Path::new("/b"), 30).unwrap();
    }
}
