//! The Kubernetes side of a mount: Secrets synced from `secretObjects`, how long they live,
//! rotation and the rollout of workloads when a synced Secret changes; and the same Secrets kept
//! without any pod ([`podless`]).

pub mod consumers;
pub mod desired;
mod files;
mod hook;
pub mod leader;
pub mod lifetime;
pub mod metrics;
pub mod podless;
pub mod reconciler;
pub mod rollout;
mod syncer;
mod target;
pub mod tls;

pub use files::VolumeFiles;
pub use hook::SecretSyncHook;
pub use metrics::SyncMetrics;
pub use syncer::{
    ClassLookup, FIELD_MANAGER_PREFIX, SecretSync, SyncError, SyncReport, SyncRequest, SyncWatches,
};
pub use target::{NodeVolumes, UntrustedTarget, VerifiedTarget};
