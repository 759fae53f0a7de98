//! The drift reconciler: a kube-runtime `Controller` over this node's
//! SecretProviderClassPodStatuses. It restores synced Secrets that someone else edited or deleted
//! and creates ones a failed publish left missing, reading each volume back from disk, but only
//! from a target path [`crate::NodeVolumes::verify`] accepts; it never calls a provider.
//!
//! It never replaces data that secrets-store itself wrote ([`crate::SecretSync::restore_volume`]):
//! a volume read back may be behind one that refreshed first, here or on another node, and
//! writing its older value would undo a rotation and roll workloads twice more. Such a volume
//! catches up through its own refresh, which writes through the publish path.
//!
//! A status is reconciled when it changes, when a managed Secret its class syncs changes (the
//! mapper reads the producer index, `index.rs`), after a failure with a per-object backoff, and every
//! `period` (classes and pods are not watched by the controller). [`reconcile`] is a plain
//! function of the status and the [`Context`], so tests call it on constructed objects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_driver::MountTable;

use crate::files::VolumeFiles;
use crate::metrics::{SKIPPED, SYNCED};
use crate::syncer::{SecretSync, SyncError, SyncRequest};
use crate::target::UntrustedTarget;
use index::{ProducerIndex, StatusRef};

mod index;

/// How long the controller gathers triggers of one status before reconciling it: a rotation
/// writes a Secret once per consuming pod within moments, and one reconcile covers them all.
pub const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(500);

/// How many statuses are reconciled at once (each reads files and may write Secrets).
pub const RECONCILE_CONCURRENCY: u16 = 4;

/// The first retry delay after a failed reconcile; doubled per further failure up to the period.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What [`reconcile`] and [`error_policy`] need: the syncer, an Event recorder and what the
/// reconciler remembers between reconciles.
pub struct Context {
    sync: SecretSync,
    recorder: Recorder,
    period: Duration,
    state: Mutex<State>,
}

/// What the reconciler remembers about statuses, dropped when a status is deleted.
#[derive(Default)]
struct State {
    /// Which statuses produce which Secret (the mapper's input).
    producers: ProducerIndex,
    /// Statuses refused, with the resourceVersion warned about: one Event per version, not one
    /// per reconcile.
    refused: HashMap<StatusRef, String>,
    /// Consecutive failed reconciles per status (the backoff's exponent).
    failures: HashMap<StatusRef, u32>,
}

impl Context {
    /// A context reconciling through `sync`, recording Events as `reporter`, and looking at
    /// every status at least every `period`.
    pub fn new(sync: SecretSync, reporter: Reporter, period: Duration) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(sync.client(), reporter),
            sync,
            period,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statuses to reconcile when the managed Secret `namespace/name` changed.
    pub(crate) fn producers_of(&self, namespace: &str, name: &str) -> Vec<StatusRef> {
        self.state().producers.producers(namespace, name)
    }

    /// Forgets a deleted status.
    pub(crate) fn forget(&self, status: &SecretProviderClassPodStatus) {
        let key = ObjectRef::from_obj(status);
        let mut state = self.state();
        state.producers.remove(&key);
        state.refused.remove(&key);
        state.failures.remove(&key);
    }

    /// Forgets every status `live` says is gone (after a re-list, which reports no deletions).
    pub(crate) fn retain(&self, live: impl Fn(&StatusRef) -> bool) {
        let mut state = self.state();
        state.producers.retain(&live);
        state.refused.retain(|s, _| live(s));
        state.failures.retain(|s, _| live(s));
    }
}

/// Reconciles one status: syncs its class's Secrets from its verified volume, or says why not.
///
/// A refused target path is no error (retrying cannot fix it): it gets a Warning Event on the
/// status, once per version of it. A failed sync gets a Warning Event on the pod and is returned,
/// so [`error_policy`] retries it with backoff.
pub async fn reconcile(
    status: Arc<SecretProviderClassPodStatus>,
    ctx: Arc<Context>,
) -> Result<Action, SyncError> {
    let key = ObjectRef::from_obj(&*status);
    let result = reconcile_status(&status, &key, &ctx).await;
    let metrics = ctx.sync.metrics();
    match &result {
        Ok((_, outcome)) => {
            ctx.state().failures.remove(&key);
            metrics.reconciled(outcome);
        }
        Err(e) => metrics.reconciled(e.reason()),
    }
    result.map(|(action, _)| action)
}

/// The action and the outcome label of a reconcile that did not fail.
type Reconciled = (Action, &'static str);

async fn reconcile_status(
    status: &SecretProviderClassPodStatus,
    key: &StatusRef,
    ctx: &Context,
) -> Result<Reconciled, SyncError> {
    let later = Action::requeue(ctx.period);
    let Some(fields) = status.status.as_ref().filter(|f| f.mounted) else {
        // The driver writes the status once the volume is mounted: that change triggers again.
        ctx.state().producers.remove(key);
        return Ok((Action::await_change(), SKIPPED));
    };
    let namespace = status.namespace().unwrap_or_default();
    let Some(class) = ctx
        .sync
        .classes
        .class(&namespace, &fields.secret_provider_class_name)
        .await
    else {
        ctx.state().producers.remove(key);
        return Ok((later, SKIPPED));
    };
    if class.spec.secret_objects.is_empty() {
        ctx.state().producers.remove(key);
        return Ok((later, SKIPPED));
    }
    // A status outlives its pod until it is garbage collected: nothing to do.
    let Some(pod) = ctx
        .sync
        .pods
        .get(&ObjectRef::new(&fields.pod_name).within(&namespace))
    else {
        return Ok((later, SKIPPED));
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok((later, SKIPPED));
    }
    let mounts = MountTable::read().map_err(SyncError::MountTable)?;
    let target = match ctx.sync.node.verify(status, &pod, &mounts) {
        Ok(target) => target,
        Err(refused) => {
            ctx.state().producers.remove(key);
            let outcome = refuse(ctx, status, key, refused).await;
            return Ok((later, outcome));
        }
    };
    ctx.state().producers.set(
        key,
        class
            .spec
            .secret_objects
            .iter()
            .map(|o| o.secret_name.trim().to_string()),
    );
    let request = SyncRequest {
        pod: &pod,
        class: &class,
        pod_status: status,
        files: VolumeFiles::OnDisk(&target),
    };
    match ctx.sync.restore_volume(&request).await {
        Ok(report) => {
            if !report.applied.is_empty() {
                tracing::info!(%namespace, secrets = ?report.applied, "restored synced Secrets");
            }
            if !report.left_alone.is_empty() {
                tracing::debug!(%namespace, pod = %fields.pod_name, secrets = ?report.left_alone,
                    "Secret data written by secrets-store from another fetch kept; this volume catches up on its next refresh");
            }
            Ok((later, SYNCED))
        }
        Err(e) => {
            tracing::warn!(%namespace, pod = %fields.pod_name, error = %e, "secret sync failed");
            if let Err(e) = ctx
                .recorder
                .publish(&warning(&e), &pod.object_ref(&()))
                .await
            {
                tracing::debug!(error = %e, "could not record secret sync event");
            }
            Err(e)
        }
    }
}

/// Reports a refused status: a Warning Event on the status object itself, once per version of
/// it. The status, not the pod: it is what makes the false claim, it exists when the pod it
/// names does not, and a forger cannot fill a victim pod's Events this way. Returns the outcome
/// label.
async fn refuse(
    ctx: &Context,
    status: &SecretProviderClassPodStatus,
    key: &StatusRef,
    refused: UntrustedTarget,
) -> &'static str {
    let suspicious = refused.is_suspicious();
    let error = SyncError::UntrustedTarget {
        namespace: status.namespace().unwrap_or_default(),
        status: status.name_any(),
        source: Box::new(refused),
    };
    if !suspicious {
        tracing::debug!(error = %error, "stale pod status skipped");
        return SKIPPED;
    }
    let version = status.resource_version().unwrap_or_default();
    let first = ctx.state().refused.insert(key.clone(), version.clone()) != Some(version);
    if first {
        tracing::warn!(error = %error, "pod status refused");
        if let Err(e) = ctx
            .recorder
            .publish(&warning(&error), &status.object_ref(&()))
            .await
        {
            tracing::debug!(error = %e, "could not record pod status event");
        }
    }
    error.reason()
}

/// The Warning Event the drift reconciler records for `error`.
fn warning(error: &SyncError) -> Event {
    Event {
        type_: EventType::Warning,
        reason: error.reason().into(),
        note: Some(error.to_string()),
        action: "SyncSecret".into(),
        secondary: None,
    }
}

/// Requeues a failed status with a backoff of its own: doubling from [`FIRST_RETRY`] per
/// consecutive failure up to the period for errors a retry may fix, the period for errors only a
/// change of configuration fixes (a change of the status or its Secrets triggers sooner).
pub fn error_policy(
    status: Arc<SecretProviderClassPodStatus>,
    error: &SyncError,
    ctx: Arc<Context>,
) -> Action {
    let failures = {
        let mut state = ctx.state();
        let count = state
            .failures
            .entry(ObjectRef::from_obj(&*status))
            .or_default();
        *count = count.saturating_add(1);
        *count
    };
    Action::requeue(retry_delay(failures, error.retryable(), ctx.period))
}

/// How long to wait after the `failures`th consecutive failure.
fn retry_delay(failures: u32, retryable: bool, period: Duration) -> Duration {
    if !retryable {
        return period;
    }
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_per_failure_up_to_the_period() {
        let period = Duration::from_secs(300);
        let rows = [
            (1, true, 1),
            (2, true, 2),
            (3, true, 4),
            (9, true, 256),
            (10, true, 300),
            (u32::MAX, true, 300),
            (1, false, 300),
            (5, false, 300),
        ];
        for (failures, retryable, want) in rows {
            assert_eq!(
                retry_delay(failures, retryable, period),
                Duration::from_secs(want),
                "failure {failures}, retryable {retryable}"
            );
        }
        assert_eq!(
            retry_delay(4, true, Duration::from_secs(5)),
            Duration::from_secs(5),
            "never later than the period"
        );
    }
}
