//! `secrets-store controller` against a real apiserver and kube-controller-manager (issue 16):
//! the rollout controller rolls an opted-in Deployment once per change of the managed Secret it
//! reads, never at the Secret's creation, never a Deployment that did not opt in; and when the
//! leader is killed, the standby takes over and no change is rolled twice.
//!
//! No kubelet is needed: kube-controller-manager creates one ReplicaSet per distinct pod template,
//! so the ReplicaSets of a Deployment count its rollouts exactly.

mod common;
mod e2e;

#[path = "controller/failover.rs"]
mod failover;
#[path = "controller/rollout.rs"]
mod rollout;
#[path = "controller/support.rs"]
mod support;
