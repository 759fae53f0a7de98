//! Prometheus metrics with upstream's names.
//!
//! The binary owns the registry and serves it; the node service registers its metrics in it with
//! [`Metrics::register`]. They keep upstream's unprefixed names (`node_publish_total`,
//! `rotation_reconcile_total`, …) so upstream's dashboards and alerts work unchanged: the binary
//! hands the driver its root registry, and other parts prefixed sub-registries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::rotation::RotationMetrics;

/// Labels of `node_publish_total` and the duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name (empty when the request failed before the class was read).
    pub provider: String,
}

/// Labels of `node_publish_error_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishErrorLabels {
    /// Provider name (empty when unknown).
    pub provider: String,
    /// The error's metric label ([`crate::PublishError::metric_label`]).
    pub error_type: String,
}

/// Labels of `node_unpublish_error_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnpublishErrorLabels {
    /// The error's metric label.
    pub error_type: String,
}

/// Publish duration buckets in seconds: milliseconds (cache hits) up to ten minutes (slow
/// backends with retries).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

/// The node service's metrics (cheap to clone; clones count into the same series).
#[derive(Clone)]
pub struct Metrics {
    publish: Family<ProviderLabels, Counter>,
    publish_error: Family<PublishErrorLabels, Counter>,
    unpublish: Counter,
    unpublish_error: Family<UnpublishErrorLabels, Counter>,
    publish_duration: Family<ProviderLabels, Histogram>,
    rotation: RotationMetrics,
}

impl Default for Metrics {
    /// Metrics registered nowhere (counted, never exported).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the node metrics in `registry` under upstream's names.
    pub fn register(registry: &mut Registry) -> Self {
        let publish = Family::<ProviderLabels, Counter>::default();
        let publish_error = Family::<PublishErrorLabels, Counter>::default();
        let unpublish = Counter::default();
        let unpublish_error = Family::<UnpublishErrorLabels, Counter>::default();
        let publish_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "node_publish",
            "Successful NodePublishVolume calls",
            publish.clone(),
        );
        registry.register(
            "node_publish_error",
            "Failed NodePublishVolume calls, by error type",
            publish_error.clone(),
        );
        registry.register(
            "node_unpublish",
            "Successful NodeUnpublishVolume calls",
            unpublish.clone(),
        );
        registry.register(
            "node_unpublish_error",
            "Failed NodeUnpublishVolume calls",
            unpublish_error.clone(),
        );
        registry.register(
            "node_publish_duration_seconds",
            "NodePublishVolume duration, successful or not",
            publish_duration.clone(),
        );
        let rotation = RotationMetrics::register(registry);
        Self {
            rotation,
            publish,
            publish_error,
            unpublish,
            unpublish_error,
            publish_duration,
        }
    }

    /// The rotation metrics (upstream's `rotation_reconcile_*`).
    pub fn rotation(&self) -> &RotationMetrics {
        &self.rotation
    }

    /// Counts a successful publish and its duration.
    pub fn publish_ok(&self, provider: &str, seconds: f64) {
        let labels = ProviderLabels {
            provider: provider.to_string(),
        };
        self.publish.get_or_create(&labels).inc();
        self.publish_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Counts a failed publish and its duration.
    pub fn publish_failed(&self, provider: &str, error_type: &str, seconds: f64) {
        self.publish_error
            .get_or_create(&PublishErrorLabels {
                provider: provider.to_string(),
                error_type: error_type.to_string(),
            })
            .inc();
        self.publish_duration
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a successful unpublish.
    pub fn unpublish_ok(&self) {
        self.unpublish.inc();
    }

    /// Counts a failed unpublish.
    pub fn unpublish_failed(&self, error_type: &str) {
        self.unpublish_error
            .get_or_create(&UnpublishErrorLabels {
                error_type: error_type.to_string(),
            })
            .inc();
    }
}

/// `registry` in the OpenMetrics text format, as served on `/metrics`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_are_exported() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.publish_ok("aws", 0.2);
        m.publish_failed("aws", "ProviderError", 1.0);
        m.unpublish_ok();
        m.unpublish_failed("FailedToUnmount");
        let text = encode(&registry);
        for needle in [
            "node_publish_total{provider=\"aws\"} 1",
            "node_publish_error_total{provider=\"aws\",error_type=\"ProviderError\"} 1",
            "node_unpublish_total 1",
            "node_unpublish_error_total{error_type=\"FailedToUnmount\"} 1",
            "node_publish_duration_seconds_bucket{le=\"600.0\",provider=\"aws\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
