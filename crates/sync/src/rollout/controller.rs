//! The rollout controller (`secrets-store controller`): a kube-runtime `Controller` over the
//! metadata of managed Secrets that rolls the opted-in workloads consuming each one once per data
//! change.
//!
//! The state that makes "once" hold across restarts and leader changes lives in the API server:
//! the digest the consumers were last rolled to is an annotation on the Secret
//! ([`ROLLED_OUT_ANNOTATION`]). On first sight the controller records the current digest and rolls
//! nothing (so a Secret's creation restarts nothing); later, a different digest means "patch the
//! consumers to it, then record it". A leader that dies between the two leaves the record behind,
//! and its successor patches again: the patch carries the same value, so no workload changes twice.
//!
//! Workloads are listed fresh in the Secret's namespace when its data changed (rare) instead of
//! cached: the decision must not miss a workload a stale cache lacks, and the controller's memory
//! stays the identity and version of managed Secrets. A Secret's data is read only in its
//! reconcile, to digest.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use secrets_store_api::labels;
use secrets_store_provider::SecretBytes;

use super::key::KeyError;
use super::metrics::RolloutMetrics;
use super::{ROLLED_OUT_ANNOTATION, Rollout, Step, data_digest, step};
use crate::leader::Leadership;
use crate::syncer::keep_version_only;

/// The field manager of the controller's writes (the Secret's annotation, the workloads' patches).
pub const FIELD_MANAGER: &str = secrets_store_api::names::CONTROLLER;

/// Shortest and longest wait before retrying a Secret whose reconcile failed.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a reconcile needs: the client, the patcher (digest key, Event recorder) and metrics.
pub struct Context {
    client: Client,
    rollout: Rollout,
    metrics: RolloutMetrics,
    /// Checked before every write: a replica past its renew deadline writes nothing.
    leadership: Leadership,
    /// Consecutive failures per Secret, for the exponential backoff of [`error_policy`].
    failures: Mutex<HashMap<ObjectRef<PartialObjectMeta<Secret>>, u32>>,
}

impl Context {
    /// A context whose digest key lives in `key_namespace` (the release namespace), whose
    /// Events name `reporter`, and which writes only while `leadership` is valid.
    pub fn new(
        client: Client,
        key_namespace: &str,
        reporter: Reporter,
        metrics: RolloutMetrics,
        leadership: Leadership,
    ) -> Self {
        Self {
            rollout: Rollout::new(client.clone(), key_namespace, reporter),
            client,
            metrics,
            leadership,
            failures: Mutex::default(),
        }
    }
}

/// Why a reconcile failed. Names objects, never data or digests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The digest key is not available.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The Secret could not be read.
    #[error("reading Secret {namespace}/{name}: {source}")]
    ReadSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The client error.
        source: kube::Error,
    },
    /// Listing or patching the consuming workloads failed (the record was not advanced, so the
    /// retry rolls what is left).
    #[error("rolling out consumers of Secret {namespace}/{name}: {source}")]
    Workloads {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The client error.
        source: kube::Error,
    },
    /// This replica's leadership lapsed during the reconcile: it stopped writing (the next
    /// leader redoes the reconcile from the state in the API server).
    #[error("stopped reconciling Secret {namespace}/{name}: no longer the leader")]
    NotLeading {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// The rolled-out digest could not be recorded on the Secret.
    #[error("recording the rolled-out digest on Secret {namespace}/{name}: {source}")]
    Record {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The client error.
        source: kube::Error,
    },
}

impl Error {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Key(_) => "digest_key",
            Self::ReadSecret { .. } => "read_secret",
            Self::Workloads { .. } => "workloads",
            Self::NotLeading { .. } => "not_leading",
            Self::Record { .. } => "record",
        }
    }
}

/// Brings the consumers of one managed Secret to its current data (see the module doc).
pub async fn reconcile(
    meta: Arc<PartialObjectMeta<Secret>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&meta, &ctx).await;
    let label = match &result {
        Ok(outcome) => *outcome,
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .reconciled(label, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failure map poisoned")
            .remove(&ObjectRef::from_obj(&meta));
    }
    // Nothing changes by itself: the next change of the Secret triggers the next reconcile.
    result.map(|_| Action::await_change())
}

async fn reconcile_inner(
    meta: &PartialObjectMeta<Secret>,
    ctx: &Context,
) -> Result<&'static str, Error> {
    let namespace = meta.namespace().unwrap_or_default();
    let name = meta.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadSecret {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    let Some(mut secret) = secret else {
        return Ok("gone");
    };
    if secret.labels().get(labels::MANAGED).map(String::as_str) != Some(labels::MANAGED_VALUE) {
        return Ok("gone");
    }
    // The values move into redacting, zeroizing bytes and are gone once digested.
    let data: BTreeMap<String, SecretBytes> = secret
        .data
        .take()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, SecretBytes::new(v.0)))
        .collect();
    let key = ctx.rollout.key().get().await?;
    let digest = data_digest(key.expose(), &name, &data);
    drop(data);
    let recorded = secret.annotations().get(ROLLED_OUT_ANNOTATION);
    let outcome = match step(recorded.map(String::as_str), &digest) {
        Step::UpToDate => return Ok("up_to_date"),
        Step::Record => "recorded",
        Step::Roll => {
            let leadership = ctx.leadership.clone();
            let patched = ctx
                .rollout
                .roll_to(&namespace, &name, &digest, &move || leadership.is_valid())
                .await
                .map_err(|source| Error::Workloads {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            if !patched.is_empty() {
                tracing::info!(%namespace, secret = %name, workloads = ?patched, "rolling workloads after Secret change");
            }
            ctx.metrics.patched(&patched);
            "rolled"
        }
    };
    // Only after every consumer carries the digest (and only while still leading): a crash before
    // this line means the next leader rolls again, to the same value, which changes nothing that
    // was already patched.
    if !ctx.leadership.is_valid() {
        return Err(Error::NotLeading { namespace, name });
    }
    let record = serde_json::json!({"metadata": {"annotations": {ROLLED_OUT_ANNOTATION: digest}}});
    api.patch(
        &name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&record),
    )
    .await
    .map_err(|source| Error::Record {
        namespace,
        name,
        source,
    })?;
    Ok(outcome)
}

/// Retries a failed Secret with exponential backoff per Secret (1 s doubling up to 5 min).
pub fn error_policy(
    meta: Arc<PartialObjectMeta<Secret>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let mut failures = ctx.failures.lock().expect("failure map poisoned");
    let count = failures.entry(ObjectRef::from_obj(&meta)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    tracing::warn!(error = %error, retry_in = ?delay, "rollout reconcile failed");
    Action::requeue(delay)
}

/// The wait before retry number `failures` (1-based).
fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Runs the rollout controller until the future is dropped (the leader elector drops it when the
/// lease is lost).
pub async fn run(ctx: Arc<Context>) {
    if let Err(e) = ctx.rollout.load_key().await {
        tracing::warn!(error = %e, "rollout digest key unavailable for now; retried per Secret");
    }
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED,
        labels::MANAGED_VALUE
    ));
    // Metadata only, cut to identity and version on arrival: anyone may put the label on any
    // number of Secrets with annotations as large as they like, and the reconcile reads what it
    // needs itself. (`Controller::for_stream` is what allows the cut: kube's
    // `unstable-runtime` feature.)
    let (reader, writer) = reflector::store();
    let api: Api<PartialObjectMeta<Secret>> = Api::all(ctx.client.clone());
    let secrets = watcher(api, managed)
        .modify(keep_version_only)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(secrets, reader)
        .with_config(
            Config::default()
                .concurrency(4)
                .debounce(Duration::from_millis(500)),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "rollout controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn error_labels_are_fixed() {
        let e = Error::Key(KeyError::Malformed {
            namespace: "ns".into(),
            problem: super::super::KeyProblem::TooShort(3),
        });
        assert_eq!(e.metric_label(), "digest_key");
    }
}
