//! The CSI node service of `secrets-store.csi.k8s.io`.
//!
//! A publish parses the typed [`VolumeContext`], reads the SecretProviderClass from a node-scoped
//! cache, mounts a tmpfs ([`Mounter`]), calls the provider ([`ProviderRegistry`]), writes files
//! atomically ([`AtomicWriter`]) and records a `SecretProviderClassPodStatus`. Every failure is a
//! typed error ([`PublishError`], [`UnpublishError`]) mapped in one place to a gRPC code, an
//! Event reason and a metric label.

pub mod error;
pub mod locks;
pub mod metrics;
pub mod mounter;
pub mod volume_context;
pub mod writer;

pub use error::{PublishError, UnpublishError};
pub use locks::{KeyedGuard, KeyedLocks, VolumeLocks};
pub use metrics::Metrics;
pub use mounter::Mounter;
pub use volume_context::VolumeContext;
pub use writer::AtomicWriter;

pub mod budget;
pub mod classes;
pub mod controller;
pub mod csi;
pub mod hooks;
pub mod node;
pub mod providers;
pub mod refresh;
pub mod registration;
pub mod rotation;
pub mod server;
pub mod status;

pub use hooks::{AfterMount, AfterMountError, MountedVolume};
pub use node::{NodeConfig, NodeService};
pub use providers::{DEFAULT_PROVIDER_VOLUME, ExternalConnector, ProviderRegistry};
