//! The CSI node service of `secrets-store.csi.k8s.io`.
//!
//! A publish parses the typed [`VolumeContext`], reads the SecretProviderClass from a node-scoped
//! cache ([`ClassCache`]), mounts a tmpfs ([`Mounter`]), calls the provider
//! ([`ProviderRegistry`]), writes files atomically ([`AtomicWriter`]) and records a
//! `SecretProviderClassPodStatus`. Every failure is a typed error ([`PublishError`],
//! [`UnpublishError`]) mapped in one place to a gRPC code, an Event reason and a metric label.
//!
//! The modules are private; the re-exports below are the crate's map of what others use: the
//! binary wires [`NodeService`] and [`serve`]s it, sync hooks in through [`AfterMount`] and reads
//! volumes back through [`MountTable`] and [`KubeletTarget`], tests and fuzz targets parse
//! [`VolumeContext`]s and validate payloads with [`AtomicWriter`]. (`mounter` and
//! `volume_context` are still public, hidden, for code elsewhere that imports them by path.)

mod budget;
mod classes;
mod controller;
mod csi;
mod error;
mod hooks;
mod locks;
mod metrics;
mod mounter;
mod node;
mod providers;
mod refresh;
mod registration;
mod rotation;
mod server;
mod status;
mod volume_context;
mod writer;

pub use classes::ClassCache;
pub use error::{PublishError, UnpublishError};
pub use hooks::{AfterMount, AfterMountError, MountedVolume};
pub use locks::{KeyedGuard, KeyedLocks, VolumeLocks};
pub use metrics::Metrics;
pub use mounter::{DEFAULT_TMPFS_SIZE, KubeletTarget, MOUNT_SOURCE, MountTable, Mounter};
pub use node::{NodeConfig, NodeService};
pub use providers::{DEFAULT_PROVIDER_VOLUME, ExternalConnector, ProviderRegistry};
pub use server::{ServeConfig, ServeError, parse_endpoint, serve};
pub use status::{PodEffects, records_same, updates_as_applied};
pub use volume_context::{
    EPHEMERAL_KEY, POD_NAME_KEY, POD_NAMESPACE_KEY, POD_UID_KEY, SECRET_PROVIDER_CLASS_KEY,
    SERVICE_ACCOUNT_NAME_KEY, ServiceAccountTokens, TOKENS_KEY, VolumeContext,
};
pub use writer::{AtomicWriter, WriteError, WriteOutcome};
