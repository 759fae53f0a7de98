//! The real `secrets-store node` binary against a real API server, driven by the kubelet
//! simulator (which finds the driver through our own plugin registration socket), with a test
//! provider speaking upstream's v1alpha1 API over a real unix socket, and real tmpfs mounts.
//!
//! The scenarios live in `node_publish/`: the world they share (`world`), the happy paths
//! (`publish`), bad input (`bad_inputs`), target paths (`targets`), one volume over its life (`lifecycle`)
//! and the pod-status writes (`status_writes`).

mod common;

#[path = "node_publish/bad_inputs.rs"]
mod bad_inputs;
#[path = "node_publish/hung_provider.rs"]
mod hung_provider;
#[path = "node_publish/lifecycle.rs"]
mod lifecycle;
#[path = "node_publish/publish.rs"]
mod publish;
#[path = "node_publish/status_writes.rs"]
mod status_writes;
#[path = "node_publish/targets.rs"]
mod targets;
#[path = "node_publish/tenant_limits.rs"]
mod tenant_limits;
#[path = "node_publish/world.rs"]
mod world;
