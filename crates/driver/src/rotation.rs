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

/// Who asked for a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// kubelet, through `NodePublishVolume`.
    Kubelet,
    /// The agent's own rotation schedule (`NodeService::refresh_mounted`): only ever refreshes
    /// a volume that is still mounted and still remembered.
    Refresh,
}

/// What a publish request does to its target, decided before anything is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishPlan {
    /// Mount the volume and fill it (nothing is mounted at the target).
    FirstMount,
    /// Fetch the mounted volume's objects again: a rotation.
    Refetch,
    /// Nothing: the mounted volume was fetched less than a poll interval ago.
    NotDue,
    /// Nothing: the refresh loop picked a volume that was unpublished since (never mount it back).
    Unpublished,
}

impl PublishPlan {
    /// The plan for a request from `trigger` for a target that is `mounted` or not, whose last
    /// kubelet request is `remembered` or not, and which the [`RotationSchedule`] says is `due`
    /// or not.
    pub(crate) fn decide(trigger: Trigger, mounted: bool, remembered: bool, due: bool) -> Self {
        match (trigger, mounted) {
            (Trigger::Refresh, false) => Self::Unpublished,
            (Trigger::Refresh, true) if !remembered => Self::Unpublished,
            (Trigger::Kubelet, false) => Self::FirstMount,
            (_, true) if !due => Self::NotDue,
            (_, true) => Self::Refetch,
        }
    }

    /// Whether the attempt starts the volume's next poll interval: every re-fetch does, failed
    /// or not (an outage adds no traffic), a first mount only once it succeeded (kubelet retries
    /// a failed one from scratch).
    pub(crate) fn starts_interval(self, succeeded: bool) -> bool {
        match self {
            Self::Refetch => true,
            Self::FirstMount => succeeded,
            Self::NotDue | Self::Unpublished => false,
        }
    }
}

/// Whether a successful publish's request is kept for the agent's own refreshes: only kubelet's
/// (they carry the freshest tokens), and only with rotation on.
pub(crate) fn keeps_request(trigger: Trigger, rotation: bool) -> bool {
    trigger == Trigger::Kubelet && rotation
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

    /// Each row: trigger, mounted, remembered, due → the plan.
    #[test]
    fn republish_decisions() {
        use PublishPlan::{FirstMount, NotDue, Refetch, Unpublished};
        use Trigger::{Kubelet, Refresh};
        let rows = [
            (Kubelet, false, false, false, FirstMount),
            (Kubelet, false, true, true, FirstMount),
            (Kubelet, true, false, true, Refetch),
            (Kubelet, true, true, true, Refetch),
            (Kubelet, true, true, false, NotDue),
            (Kubelet, true, false, false, NotDue),
            (Refresh, true, true, true, Refetch),
            (Refresh, true, true, false, NotDue),
            (Refresh, true, false, true, Unpublished),
            (Refresh, false, true, true, Unpublished),
            (Refresh, false, false, false, Unpublished),
        ];
        for (trigger, mounted, remembered, due, want) in rows {
            assert_eq!(
                PublishPlan::decide(trigger, mounted, remembered, due),
                want,
                "{trigger:?} mounted={mounted} remembered={remembered} due={due}"
            );
        }
    }

    /// Each row: plan, whether its attempt succeeded → whether it starts the next interval.
    #[test]
    fn which_attempts_start_the_next_poll_interval() {
        use PublishPlan::{FirstMount, NotDue, Refetch, Unpublished};
        let rows = [
            (Refetch, true, true),
            (Refetch, false, true),
            (FirstMount, true, true),
            (FirstMount, false, false),
            (NotDue, true, false),
            (Unpublished, true, false),
        ];
        for (plan, succeeded, want) in rows {
            assert_eq!(
                plan.starts_interval(succeeded),
                want,
                "{plan:?} succeeded={succeeded}"
            );
        }
        assert!(keeps_request(Trigger::Kubelet, true));
        assert!(!keeps_request(Trigger::Kubelet, false));
        assert!(!keeps_request(Trigger::Refresh, true));
    }

    /// Each row: the poll interval, then (seconds since t0, event) in order, where the event is
    /// a check of `due` with its expected answer, an attempt, or an unpublish.
    #[test]
    fn rotation_schedule_table() {
        enum Step {
            Due(bool),
            Attempt,
            Forget,
        }
        use Step::{Attempt, Due, Forget};
        type Row = (&'static str, Option<u64>, Vec<(u64, Step)>);
        let rows: Vec<Row> = vec![
            (
                "never fetched by this process: due at once",
                Some(120),
                vec![(0, Due(true))],
            ),
            (
                "not due before the interval, due at it",
                Some(120),
                vec![
                    (0, Attempt),
                    (1, Due(false)),
                    (119, Due(false)),
                    (120, Due(true)),
                ],
            ),
            (
                "measured from the last attempt, not the first",
                Some(120),
                vec![
                    (0, Attempt),
                    (130, Attempt),
                    (200, Due(false)),
                    (250, Due(true)),
                ],
            ),
            (
                "an unpublished volume is due again at once",
                Some(120),
                vec![(0, Attempt), (10, Forget), (10, Due(true))],
            ),
            (
                "without an interval every republish fetches",
                None,
                vec![(0, Attempt), (0, Due(true)), (1, Due(true))],
            ),
        ];
        let target = Path::new("/pods/a/volumes/kubernetes.io~csi/v/mount");
        for (case, interval, steps) in rows {
            let schedule = RotationSchedule::new(interval.map(Duration::from_secs));
            let t0 = Instant::now();
            for (at, step) in steps {
                let now = t0 + Duration::from_secs(at);
                match step {
                    Due(want) => assert_eq!(schedule.due(target, now), want, "{case}: at {at}s"),
                    Attempt => schedule.attempted(target, now),
                    Forget => schedule.forget(target),
                }
            }
            assert_eq!(
                schedule.interval(),
                interval.map(Duration::from_secs),
                "{case}"
            );
        }
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
