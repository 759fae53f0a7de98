//! Prometheus metrics of the pod-less sync: one count and one duration per reconcile.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `podless_sync_reconciles_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok`, or the error's [`super::PodlessError::metric_label`].
    pub result: String,
}

/// Reconcile durations in seconds: an unchanged refresh (milliseconds) to a slow AWS with retries.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The pod-less sync's counters (cheap to clone).
#[derive(Clone, Debug)]
pub struct PodlessMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    duration: Histogram,
    tokens: Counter,
}

impl Default for PodlessMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            tokens: Counter::default(),
        }
    }
}

impl PodlessMetrics {
    /// Registers the metrics under `registry` with the prefix `podless_sync`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("podless_sync");
        r.register(
            "reconciles",
            "Reconciles of opted-in SecretProviderClasses by result (ok or the error label)",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles of opted-in SecretProviderClasses",
            self.duration.clone(),
        );
        r.register(
            "tokens_requested",
            "ServiceAccount tokens requested (TokenRequest, audience sts.amazonaws.com)",
            self.tokens.clone(),
        );
    }

    /// Counts one reconcile of an opted-in class.
    pub(crate) fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                result: result.to_string(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts one TokenRequest.
    pub(crate) fn token_requested(&self) {
        self.tokens.inc();
    }

    /// Reconciles so far with `result` (for tests).
    pub fn reconciles_with(&self, result: &str) -> u64 {
        self.reconciles
            .get(&ReconcileLabels {
                result: result.to_string(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// TokenRequests so far (for tests).
    pub fn tokens_requested(&self) -> u64 {
        self.tokens.get()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn reconciles_are_exported_by_result() {
        let m = PodlessMetrics::default();
        m.reconciled("ok", Duration::from_millis(20));
        m.reconciled("service_account_not_opted_in", Duration::from_millis(1));
        m.token_requested();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"podless_sync_reconciles_total{result="ok"} 1"#),
            "{out}"
        );
        assert!(
            out.contains("podless_sync_tokens_requested_total 1"),
            "{out}"
        );
        assert!(
            out.contains("podless_sync_reconcile_duration_seconds_count 2"),
            "{out}"
        );
        assert_eq!(m.reconciles_with("service_account_not_opted_in"), 1);
    }
}
