//! Counters of secret sync: what each synced Secret write did, what each drift reconcile did, and
//! what each rollout after a Secret change did.
//!
//! Registered in the sub-registry the binary hands over (it owns the registry and the prefix);
//! every label value is a fixed word or an error's [`crate::SyncError::reason`], never a name a
//! tenant chose, so a tenant cannot mint series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The label of every sync counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// A fixed word (`applied`, `unchanged`, …) or an error's reason.
    pub outcome: &'static str,
}

/// Outcome of a Secret write that created or changed it.
pub const APPLIED: &str = "applied";
/// Outcome of a Secret write that found it right already.
pub const UNCHANGED: &str = "unchanged";
/// Outcome of a drift reconcile's Secret write that kept data secrets-store wrote from another
/// volume's or node's fetch (the reconciled volume holds other, possibly older, data).
pub const LEFT_ALONE: &str = "left_alone";
/// Outcome of a reconcile that synced the status's Secrets.
pub const SYNCED: &str = "synced";
/// Outcome of a reconcile with nothing to do (not mounted, no class, no pod, nothing synced).
pub const SKIPPED: &str = "skipped";
/// Outcome of a rollout that patched a workload.
pub const ROLLED: &str = "rolled";
/// Outcome of a rollout that failed (the Secrets themselves are right).
pub const ROLLOUT_FAILED: &str = "failed";

/// The sync counters (cheap to clone; clones count into the same series).
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    secrets: Family<OutcomeLabels, Counter>,
    reconciles: Family<OutcomeLabels, Counter>,
    rollouts: Family<OutcomeLabels, Counter>,
}

impl SyncMetrics {
    /// Registers the counters in `registry` (the binary's `secret_sync` sub-registry):
    /// `secrets_total`, `reconciles_total` and `rollouts_total`, each by `outcome`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "secrets",
            "Synced Secret writes by outcome: applied, unchanged, left_alone, or the error's reason",
            metrics.secrets.clone(),
        );
        registry.register(
            "reconciles",
            "Drift reconciles of this node's pod statuses by outcome: synced, skipped, \
             UntrustedPodStatus, or the sync error's reason",
            metrics.reconciles.clone(),
        );
        registry.register(
            "rollouts",
            "Workload rollouts after a synced Secret's data changed, by outcome: rolled, failed",
            metrics.rollouts.clone(),
        );
        metrics
    }

    /// Counts one Secret write.
    pub fn secret(&self, outcome: &'static str) {
        self.secrets.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts what one class's write did: each Secret applied, unchanged or left alone, and the first error
    /// (the others of that pass are in its log lines, not counted twice).
    pub(crate) fn secrets(&self, report: &crate::SyncReport, error: Option<&crate::SyncError>) {
        for _ in &report.applied {
            self.secret(APPLIED);
        }
        for _ in &report.unchanged {
            self.secret(UNCHANGED);
        }
        for _ in &report.left_alone {
            self.secret(LEFT_ALONE);
        }
        if let Some(e) = error {
            self.secret(e.reason());
        }
    }

    /// Counts one drift reconcile.
    pub fn reconciled(&self, outcome: &'static str) {
        self.reconciles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one rollout (a workload patched, [`ROLLED`], or a failed attempt,
    /// [`ROLLOUT_FAILED`]); the hook for whatever rolls workloads after a Secret change.
    pub fn rollout(&self, outcome: &'static str) {
        self.rollouts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn counters_are_exported_under_the_given_prefix() {
        let mut registry = Registry::default();
        let metrics = SyncMetrics::register(registry.sub_registry_with_prefix("secret_sync"));
        metrics.secret(APPLIED);
        metrics.secret("SecretNotManaged");
        metrics.reconciled(SYNCED);
        metrics.rollout(ROLLED);
        metrics.clone().rollout(ROLLED);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            r#"secret_sync_secrets_total{outcome="applied"} 1"#,
            r#"secret_sync_secrets_total{outcome="SecretNotManaged"} 1"#,
            r#"secret_sync_reconciles_total{outcome="synced"} 1"#,
            r#"secret_sync_rollouts_total{outcome="rolled"} 2"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
