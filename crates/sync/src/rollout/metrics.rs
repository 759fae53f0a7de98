//! Metrics of the rollout controller: one count per reconcile by result, its duration, and the
//! workloads patched.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `rollout_reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `recorded`, `up_to_date`, `rolled`, `gone`, or the error's metric label.
    pub result: String,
}

/// Labels of `rollout_workloads_patched_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
}

/// Reconcile duration buckets, seconds: a no-op GET up to a namespace with many workloads.
const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The rollout controller's metrics.
#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    duration: Histogram,
    patched: Family<KindLabels, Counter>,
}

impl RolloutMetrics {
    /// Registers the metrics in `registry` (the caller prefixes it, e.g. `rollout_`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            patched: Family::default(),
        };
        registry.register(
            "reconcile",
            "Reconciles of managed Secrets, by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile of a managed Secret",
            metrics.duration.clone(),
        );
        registry.register(
            "workloads_patched",
            "Workloads whose pod template got a new secret digest, by kind",
            metrics.patched.clone(),
        );
        metrics
    }

    /// Counts one reconcile with `result` that took `seconds`.
    pub fn reconciled(&self, result: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                result: result.to_string(),
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// Counts the patched workloads, given as `Kind/name`.
    pub fn patched(&self, workloads: &[String]) {
        for workload in workloads {
            let kind = workload.split('/').next().unwrap_or_default().to_string();
            self.patched.get_or_create(&KindLabels { kind }).inc();
        }
    }
}
