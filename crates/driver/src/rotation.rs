//! Rotation: kubelet calls `NodePublishVolume` again every sync period for drivers with
//! `requiresRepublish`; each call re-fetches a volume's objects at most once per poll interval,
//! measured from that volume's last fetch attempt (not from a directory's mtime, which an
//! unchanged write does not touch). Failed attempts count too: during a provider outage each
//! volume is retried once per poll interval, as often as it is fetched when healthy, so an
//! outage adds no traffic however short kubelet's republish period is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Event reason of a rotation that changed a volume's content (upstream's name).
pub const ROTATION_COMPLETE_REASON: &str = "SecretRotationComplete";
/// Event reason of a failed rotation (upstream's name).
pub const ROTATION_FAILED_REASON: &str = "SecretRotationFailed";

/// When each mounted volume was last fetched (or a fetch was tried).
#[derive(Debug)]
pub struct RotationSchedule {
    interval: Option<Duration>,
    last_fetch: Mutex<HashMap<PathBuf, Instant>>,
}

impl RotationSchedule {
    /// Re-fetch at most every `interval`; `None` re-fetches on every republish (kubelet only
    /// republishes when the CSIDriver has `requiresRepublish`, i.e. rotation is enabled).
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            interval,
            last_fetch: Mutex::default(),
        }
    }

    /// The poll interval; `None` when rotation is off.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Whether a republish of the mounted volume at `target` should fetch again now. A volume
    /// this process never fetched (after a restart) is due, so rotation resumes at once.
    pub fn due(&self, target: &Path, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        match self.lock().get(target) {
            Some(last) => now.duration_since(*last) >= interval,
            None => true,
        }
    }

    /// Records a fetch of `target` started `at`, whether it succeeded or not.
    pub fn attempted(&self, target: &Path, at: Instant) {
        self.lock().insert(target.to_path_buf(), at);
    }

    /// Forgets `target` (unpublished).
    pub fn forget(&self, target: &Path) {
        self.lock().remove(target);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Instant>> {
        self.last_fetch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Labels of the rotation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    /// Provider name.
    pub provider: String,
    /// `true` when the content changed (for successes), or the error type (for failures).
    pub outcome: String,
}

/// Upstream's rotation metrics: `rotation_reconcile_total`, `rotation_reconcile_error_total`
/// and `rotation_reconcile_duration_sec`.
#[derive(Clone, Debug)]
pub struct RotationMetrics {
    reconcile: Family<RotationLabels, Counter>,
    errors: Family<RotationLabels, Counter>,
    duration: Family<RotationLabels, Histogram, fn() -> Histogram>,
}

impl RotationMetrics {
    /// Registers the rotation metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconcile: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(rotation_histogram),
        };
        registry.register(
            "rotation_reconcile",
            "Rotation re-fetches of mounted volumes",
            metrics.reconcile.clone(),
        );
        registry.register(
            "rotation_reconcile_error",
            "Failed rotation re-fetches, by error type",
            metrics.errors.clone(),
        );
        registry.register(
            "rotation_reconcile_duration_sec",
            "Duration of rotation re-fetches",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Counts a successful re-fetch.
    pub fn succeeded(&self, provider: &str, changed: bool, seconds: f64) {
        let labels = RotationLabels {
            provider: provider.into(),
            outcome: changed.to_string(),
        };
        self.reconcile.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// Counts a failed re-fetch.
    pub fn failed(&self, provider: &str, error_type: &str, seconds: f64) {
        let labels = RotationLabels {
            provider: provider.into(),
            outcome: error_type.into(),
        };
        self.reconcile.get_or_create(&labels).inc();
        self.errors.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }
}

fn rotation_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_at_most_once_per_interval_from_the_last_attempt() {
        let schedule = RotationSchedule::new(Some(Duration::from_secs(120)));
        let target = Path::new("/pods/a/volumes/kubernetes.io~csi/v/mount");
        let t0 = Instant::now();
        assert!(
            schedule.due(target, t0),
            "a volume never fetched by this process is due"
        );
        schedule.attempted(target, t0);
        assert!(!schedule.due(target, t0 + Duration::from_secs(60)));
        assert!(schedule.due(target, t0 + Duration::from_secs(120)));
        schedule.attempted(target, t0 + Duration::from_secs(130));
        assert!(!schedule.due(target, t0 + Duration::from_secs(200)));
        schedule.forget(target);
        assert!(schedule.due(target, t0 + Duration::from_secs(200)));
    }

    #[test]
    fn without_an_interval_every_republish_fetches() {
        let schedule = RotationSchedule::new(None);
        let now = Instant::now();
        schedule.attempted(Path::new("/t"), now);
        assert!(schedule.due(Path::new("/t"), now));
    }

    #[test]
    fn metrics_use_upstream_names() {
        let mut registry = Registry::default();
        let m = RotationMetrics::register(&mut registry);
        m.succeeded("aws", true, 0.1);
        m.failed("aws", "NotFound", 0.2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("rotation_reconcile_total{provider=\"aws\",outcome=\"true\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "rotation_reconcile_error_total{provider=\"aws\",outcome=\"NotFound\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("rotation_reconcile_duration_sec_bucket"),
            "{text}"
        );
    }
}
