//! Issue 13, items 4(b) and 7 (the secret sync's part), played against a real apiserver and the
//! real agent: a tenant who may label Secrets, write classes and race the agent's writes cannot
//! exhaust its memory, make it write a Secret the API server fills with a token, or have it adopt
//! a Secret of theirs; a forged pod status read by the drift reconciler copies nothing; a malformed
//! rollout key cannot crash it; and a restarted agent does not serve publishes from empty caches.
//! The drift reconciler undoes others' edits but never a rotation another volume wrote first.

mod common;
mod e2e;

#[path = "adversarial_sync/drift.rs"]
mod drift;
#[path = "adversarial_sync/memory.rs"]
mod memory;
#[path = "adversarial_sync/race.rs"]
mod race;
#[path = "adversarial_sync/reconcile.rs"]
mod reconcile;
#[path = "adversarial_sync/restart.rs"]
mod restart;
#[path = "adversarial_sync/rollout_key.rs"]
mod rollout_key;
#[path = "adversarial_sync/types.rs"]
mod types;

/// How long a test waits for the cluster or the agent to converge.
const WAIT: std::time::Duration = std::time::Duration::from_secs(90);
