//! Node-level single-flight with a short TTL, in memory only.
//!
//! Concurrent and recent requests for the same key share one fetch. The caller chooses the key;
//! every key that guards secret material includes the identity, so an entry can never be served to
//! a pod of another identity. Claims are explicit (rather than a closure per key) so that one
//! batched API call can fulfil many keys at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

type Slot<V> = Option<(V, Instant)>;

/// How often [`Coalescer::spawn_sweeper`] drops expired entries: a cached value leaves memory
/// (zeroized, for `SecretBytes` and `Credentials`) at most this long after its TTL, even on a
/// node where no further mount happens.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);

struct Entry<V> {
    tx: watch::Sender<Slot<V>>,
}

/// A map of in-flight and recently finished fetches.
pub struct Coalescer<K, V> {
    entries: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// The answer of [`Coalescer::lookup`].
pub enum Lookup<K: Eq + Hash + Clone, V: Clone> {
    /// A fresh value is cached.
    Hit(V),
    /// Another task is fetching; await [`Waiter::wait`].
    Wait(Waiter<V>),
    /// The caller must fetch and [`Claim::complete`] the claim.
    Claimed(Claim<K, V>),
}

/// A handle on another task's fetch.
pub struct Waiter<V> {
    rx: watch::Receiver<Slot<V>>,
}

impl<V: Clone> Waiter<V> {
    /// The fetched value, or `None` if the fetching task gave up (the caller should look up again).
    pub async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(slot) => slot.as_ref().map(|(v, _)| v.clone()),
            Err(_) => None,
        }
    }
}

/// The right and duty to fetch one key. Dropping it without completing releases the key.
pub struct Claim<K: Eq + Hash + Clone, V: Clone> {
    key: K,
    entry: Arc<Entry<V>>,
    owner: Arc<Coalescer<K, V>>,
    done: bool,
}

impl<K: Eq + Hash + Clone, V: Clone> Claim<K, V> {
    /// Publishes the value to waiters and caches it for `ttl` (zero: waiters only).
    pub fn complete(mut self, value: V, ttl: Duration) {
        self.done = true;
        let expires = Instant::now() + ttl;
        self.entry.tx.send_replace(Some((value, expires)));
        if ttl.is_zero() {
            self.owner.remove_if_same(&self.key, &self.entry);
        }
    }

    /// The claimed key.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Claim<K, V> {
    fn drop(&mut self) {
        if !self.done {
            // Waiters see the sender closed (once we drop the entry) and retry their lookup.
            self.owner.remove_if_same(&self.key, &self.entry);
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Coalescer<K, V> {
    /// Finds a fresh value, an in-flight fetch, or claims the key.
    pub fn lookup(self: &Arc<Self>, key: &K) -> Lookup<K, V> {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(key) {
            let state = entry.tx.borrow();
            match &*state {
                Some((v, expires)) if *expires > now => return Lookup::Hit(v.clone()),
                Some(_) => {}
                None => {
                    // Only a live claim keeps an in-flight entry; if its sender has no
                    // claim any more the entry was removed, so this one is genuine.
                    return Lookup::Wait(Waiter {
                        rx: entry.tx.subscribe(),
                    });
                }
            }
        }
        // Sweep here too when busy, so memory follows the working set between sweeper ticks.
        if map.len() > 64 {
            retain_fresh(&mut map, now);
        }
        let (tx, _) = watch::channel(None);
        let entry = Arc::new(Entry { tx });
        map.insert(key.clone(), entry.clone());
        Lookup::Claimed(Claim {
            key: key.clone(),
            entry,
            owner: self.clone(),
            done: false,
        })
    }

    /// Resolves `key` with `fetch`, sharing the result with concurrent and recent callers.
    pub async fn get_or_fetch<F, Fut>(
        self: &Arc<Self>,
        key: &K,
        ttl: impl Fn(&V) -> Duration,
        fetch: F,
    ) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let mut fetch = Some(fetch);
        loop {
            match self.lookup(key) {
                Lookup::Hit(v) => return v,
                Lookup::Wait(w) => {
                    if let Some(v) = w.wait().await {
                        return v;
                    }
                }
                Lookup::Claimed(claim) => {
                    let f = fetch
                        .take()
                        .expect("a claim is taken at most once per call");
                    let v = f().await;
                    claim.complete(v.clone(), ttl(&v));
                    return v;
                }
            }
        }
    }

    /// Drops every expired entry (in-flight fetches stay).
    pub fn sweep(&self) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        retain_fresh(&mut map, Instant::now());
    }

    /// Sweeps every `period` until the coalescer is dropped. Needs a tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()>
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(c) => c.sweep(),
                    None => return,
                }
            }
        })
    }

    /// Forgets `key` (for example after credentials were rejected).
    pub fn invalidate(&self, key: &K) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    /// Number of entries (cached or in flight), for tests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is cached or in flight.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove_if_same(&self, key: &K, entry: &Arc<Entry<V>>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(key);
        }
    }
}

fn retain_fresh<K, V>(map: &mut HashMap<K, Arc<Entry<V>>>, now: Instant) {
    map.retain(|_, e| match &*e.tx.borrow() {
        Some((_, expires)) => *expires > now,
        None => true,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_and_ttl_expires() {
        let c: Arc<Coalescer<&str, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_fetch(
                    &"k",
                    |_| Duration::from_secs(5),
                    || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        7
                    },
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Within the TTL: cached.
        let v = c
            .get_or_fetch(&"k", |_| Duration::from_secs(5), || async { 8 })
            .await;
        assert_eq!(v, 7);
        // After it: fetched again.
        tokio::time::advance(Duration::from_secs(6)).await;
        let v = c
            .get_or_fetch(&"k", |_| Duration::from_secs(5), || async { 9 })
            .await;
        assert_eq!(v, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_separate_and_errors_are_not_cached() {
        type Shared = Coalescer<(&'static str, &'static str), Result<u32, String>>;
        let c: Arc<Shared> = Arc::default();
        let ttl = |v: &Result<u32, String>| {
            if v.is_ok() {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            }
        };
        let a = c
            .get_or_fetch(&("role-a", "s"), ttl, || async { Ok(1) })
            .await;
        let b = c
            .get_or_fetch(&("role-b", "s"), ttl, || async {
                Err("denied".to_string())
            })
            .await;
        assert_eq!(a, Ok(1));
        assert_eq!(b, Err("denied".into()), "role B never sees role A's value");
        let b2 = c
            .get_or_fetch(&("role-b", "s"), ttl, || async { Ok(2) })
            .await;
        assert_eq!(b2, Ok(2), "errors are not cached");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_values_leave_memory_without_another_lookup() {
        let c: Arc<Coalescer<&str, Arc<u32>>> = Arc::default();
        let sweeper = c.spawn_sweeper(SWEEP_PERIOD);
        let value = Arc::new(7);
        let held = Arc::downgrade(&value);
        c.get_or_fetch(&"k", |_| Duration::from_secs(5), || async { value })
            .await;
        let in_flight = match c.lookup(&"other") {
            Lookup::Claimed(claim) => claim,
            _ => panic!("claims"),
        };
        // Still within the TTL: kept.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(held.upgrade().is_some());
        // TTL plus one sweep period later, with no lookup in between: gone.
        tokio::time::sleep(Duration::from_secs(1) + SWEEP_PERIOD).await;
        assert!(
            held.upgrade().is_none(),
            "the expired value is still in memory"
        );
        assert_eq!(c.len(), 1, "an in-flight fetch is not swept");
        drop(in_flight);
        // The sweeper ends with its coalescer.
        drop(c);
        tokio::time::sleep(SWEEP_PERIOD * 2).await;
        assert!(sweeper.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_claim_lets_a_waiter_take_over() {
        let c: Arc<Coalescer<&str, u32>> = Arc::default();
        let Lookup::Claimed(claim) = c.lookup(&"k") else {
            panic!("first lookup claims")
        };
        assert_eq!(*claim.key(), "k");
        let Lookup::Wait(w) = c.lookup(&"k") else {
            panic!("second lookup waits")
        };
        drop(claim);
        assert_eq!(w.wait().await, None);
        assert!(matches!(c.lookup(&"k"), Lookup::Claimed(_)));
        c.invalidate(&"k");
        assert!(c.is_empty());
    }
}
