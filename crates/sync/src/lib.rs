//! The Kubernetes side of a mount: Secrets synced from `secretObjects`, how long they live,
//! rotation and the rollout of workloads when a synced Secret changes.

pub mod lifetime;
pub mod tls;
