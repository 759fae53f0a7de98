//! What one publish reports once it is over, success or failure: its metrics, its log line and,
//! on failure, a Warning Event on the pod (when the pod is known by then).

use std::time::Instant;

use kube::runtime::events::EventType;

use super::NodeService;
use crate::error::PublishError;
use crate::rotation::ROTATION_FAILED_REASON;
use crate::status::pod_reference;
use crate::volume_context::VolumeContext;

/// Filled in by the publish steps as they learn about the volume; [`PublishReport::finish`]
/// records the outcome.
pub(super) struct PublishReport {
    started: Instant,
    target_path: String,
    /// The pod, once the volume context parsed.
    pub(super) pod: Option<VolumeContext>,
    /// The provider's name, once it resolved to a provider that exists (empty before: a
    /// made-up name never becomes a metric label).
    pub(super) provider: String,
    /// Whether the volume was already mounted (a rotation, not a first mount).
    pub(super) republish: bool,
}

impl PublishReport {
    pub(super) fn new(target_path: &str) -> Self {
        Self {
            started: Instant::now(),
            target_path: target_path.to_string(),
            pod: None,
            provider: String::new(),
            republish: false,
        }
    }

    /// Counts the publish and logs it; a failure is also counted as a failed rotation when the
    /// volume was mounted, and reported on the pod (a failed republish keeps the last good
    /// content, so its Event says it was the rotation that failed).
    pub(super) async fn finish(self, node: &NodeService, result: &Result<(), PublishError>) {
        let seconds = self.started.elapsed().as_secs_f64();
        let (metrics, provider, target_path) =
            (&node.inner.metrics, &self.provider, &self.target_path);
        let e = match result {
            Ok(()) => {
                metrics.publish_ok(provider, seconds);
                tracing::info!(%target_path, %provider, seconds, "volume published");
                return;
            }
            Err(e) => e,
        };
        metrics.publish_failed(provider, e.metric_label(), seconds);
        tracing::warn!(%target_path, %provider, reason = e.reason(), error = %e, "publish failed");
        if self.republish {
            metrics
                .rotation()
                .failed(provider, e.metric_label(), seconds);
        }
        let Some(ctx) = &self.pod else {
            return;
        };
        let reason = if self.republish {
            ROTATION_FAILED_REASON
        } else {
            e.reason()
        };
        node.inner
            .effects
            .event(
                &pod_reference(ctx),
                EventType::Warning,
                reason,
                "MountSecrets",
                &e.to_string(),
            )
            .await;
    }
}
