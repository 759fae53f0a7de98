//! One reconcile of one SecretProviderClass: opted in? → ServiceAccount opted in? → token →
//! the in-process AWS provider → the node path's Secret writer, owned by the class → status and
//! Events → requeue jittered around the class's interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_provider::{ObjectVersion, SecretBytes};
use secrets_store_provider_aws::PROVIDER_NAME;
use secrets_store_provider_aws::uses_pod_identity;

use super::config::{OptIn, jittered, opt_in, service_account_opted_in};
use super::request::mount_request;
use super::status::{self, Attempt, class_owner};
use super::{PodlessContext, PodlessError};
use crate::files::VolumeFiles;
use crate::lifetime::SecretLifetime;
use crate::syncer::Replace;

/// What a successful sync did.
struct Synced {
    versions: Vec<ObjectVersion>,
    secrets: Vec<String>,
    applied: Vec<String>,
}

/// Reconciles one class: syncs its Secrets if it opted in, records the outcome on its
/// `SecretProviderClassSync` and as an Event, and asks to run again around its interval. A
/// failure is returned after it was recorded; [`error_policy`] decides when to retry.
pub async fn reconcile(
    class: Arc<SecretProviderClass>,
    ctx: Arc<PodlessContext>,
) -> Result<Action, PodlessError> {
    if class.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = class.namespace().unwrap_or_default();
    let name = class.name_any();
    let annotations = class.metadata.annotations.as_ref();
    let opted = match opt_in(annotations, &ctx.config.bounds) {
        Ok(None) => return Ok(Action::await_change()),
        Ok(Some(opted)) => Ok(opted),
        Err(invalid) => Err(invalid),
    };
    let started = Instant::now();
    let result = match &opted {
        Ok(opted) => sync(&class, opted, &ctx).await,
        Err(source) => Err(PodlessError::InvalidOptIn {
            namespace: namespace.clone(),
            class: name.clone(),
            source: source.clone(),
        }),
    };
    let interval = opted
        .as_ref()
        .map(|o| o.interval)
        .unwrap_or(ctx.config.bounds.default);
    let delay = match &result {
        Ok(_) => jittered(interval, rand::random::<f64>()),
        Err(e) => retry_after(e, interval),
    };
    let service_account = match &opted {
        Ok(o) => o.service_account.clone(),
        Err(_) => String::new(),
    };
    let attempt = match &result {
        Ok(done) => Attempt::Synced {
            versions: &done.versions,
            secrets: &done.secrets,
        },
        Err(e) => Attempt::Failed(e),
    };
    let applied = result
        .as_ref()
        .map(|d| d.applied.clone())
        .unwrap_or_default();
    record(&ctx, &class, &service_account, &attempt, &applied, delay).await;
    ctx.metrics.reconciled(
        result.as_ref().map_or_else(|e| e.metric_label(), |_| "ok"),
        started.elapsed(),
    );
    match result {
        Ok(done) => {
            tracing::debug!(%namespace, class = %name, secrets = ?done.secrets, next = ?delay, "pod-less sync done");
            Ok(Action::requeue(delay))
        }
        Err(e) => Err(e),
    }
}

/// When to try again after `error`: soon (jittered, at most the interval) when retrying can help,
/// else at the interval (an edit of the class or the ServiceAccount triggers a run before that).
pub fn retry_after(error: &PodlessError, interval: Duration) -> Duration {
    let base = if error.retryable() {
        interval.min(RETRY)
    } else {
        interval
    };
    jittered(base, rand::random::<f64>())
}

/// The longest wait before retrying a failure that may pass by itself.
const RETRY: Duration = Duration::from_secs(30);

/// The controller's error policy: the failure was recorded by [`reconcile`]; retry per
/// [`retry_after`].
pub fn error_policy(
    class: Arc<SecretProviderClass>,
    error: &PodlessError,
    ctx: Arc<PodlessContext>,
) -> Action {
    let interval = opt_in(class.metadata.annotations.as_ref(), &ctx.config.bounds)
        .ok()
        .flatten()
        .map_or(ctx.config.bounds.default, |o| o.interval);
    tracing::warn!(
        namespace = %class.namespace().unwrap_or_default(),
        class = %class.name_any(),
        error = %error,
        "pod-less sync failed"
    );
    Action::requeue(retry_after(error, interval))
}

/// Writes the status and the Event; failures to do so are logged (the next run writes again).
async fn record(
    ctx: &PodlessContext,
    class: &SecretProviderClass,
    service_account: &str,
    attempt: &Attempt<'_>,
    applied: &[String],
    delay: Duration,
) {
    let now = Timestamp::now();
    let next = now
        .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(now);
    let previous = match status::read(ctx, class).await {
        Ok(previous) => previous,
        Err(e) => {
            tracing::warn!(class = %class.name_any(), error = %e, "reading the pod-less sync status");
            None
        }
    };
    let next_status = status::next_status(
        previous.as_ref().and_then(|p| p.status.as_ref()),
        attempt,
        class.metadata.generation,
        now,
        next,
    );
    if let Err(e) = status::write(ctx, class, previous.as_ref(), service_account, next_status).await
    {
        tracing::warn!(class = %class.name_any(), error = %e, "writing the pod-less sync status");
    }
    if let Some(event) = status::event(attempt, applied)
        && let Err(e) = ctx.recorder.publish(&event, &class.object_ref(&())).await
    {
        tracing::debug!(error = %e, "could not record the pod-less sync Event");
    }
}

/// The sync itself: every check before the token, the token, the fetch, the writes.
async fn sync(
    class: &SecretProviderClass,
    opted: &OptIn,
    ctx: &PodlessContext,
) -> Result<Synced, PodlessError> {
    let namespace = class.namespace().unwrap_or_default();
    let name = class.name_any();
    if class.spec.provider != PROVIDER_NAME {
        return Err(PodlessError::UnsupportedProvider {
            namespace,
            class: name,
            provider: class.spec.provider.clone(),
        });
    }
    if class.spec.secret_objects.is_empty() {
        return Err(PodlessError::NothingToSync {
            namespace,
            class: name,
        });
    }
    if uses_pod_identity(&class.spec.parameters) {
        return Err(PodlessError::PodIdentityUnsupported {
            namespace,
            class: name,
        });
    }
    let lifetime = SecretLifetime::from_annotations(class.metadata.annotations.as_ref()).map_err(
        |source| PodlessError::InvalidLifetime {
            namespace: namespace.clone(),
            class: name.clone(),
            source,
        },
    )?;
    // Read at every run, not from a cache: a ServiceAccount that opts out stops the next run.
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    let account = accounts
        .get_metadata_opt(&opted.service_account)
        .await
        .map_err(|source| PodlessError::Token {
            namespace: namespace.clone(),
            service_account: opted.service_account.clone(),
            source,
        })?;
    if !account.is_some_and(|a| service_account_opted_in(a.metadata.labels.as_ref())) {
        ctx.tokens.forget(&namespace, &opted.service_account);
        return Err(PodlessError::ServiceAccountNotOptedIn {
            namespace,
            service_account: opted.service_account.clone(),
        });
    }
    let tokens = ctx
        .tokens
        .get_or_mint(
            &ctx.client,
            &namespace,
            &opted.service_account,
            ctx.config.token_expiration_seconds,
            || ctx.metrics.token_requested(),
        )
        .await?;
    let request = mount_request(class, &namespace, &opted.service_account, &tokens);
    let response = ctx
        .provider
        .mount(request)
        .await
        .map_err(|source| PodlessError::Provider {
            namespace: namespace.clone(),
            class: name.clone(),
            source,
        })?;
    let files: BTreeMap<String, SecretBytes> = response
        .files
        .into_iter()
        .map(|f| (f.path, f.contents))
        .collect();
    let owners: Vec<_> = match lifetime {
        SecretLifetime::Retain => Vec::new(),
        SecretLifetime::Workload | SecretLifetime::Pods => {
            class_owner(class, false).into_iter().collect()
        }
    };
    let (report, error) = ctx
        .writer
        .write_class(
            class,
            VolumeFiles::InMemory(&files),
            |_| {
                let owners = owners.clone();
                async move { owners }
            },
            Replace::Any,
        )
        .await;
    if let Some(e) = error {
        return Err(e.into());
    }
    let mut secrets: Vec<String> = report.applied.clone();
    secrets.extend(report.unchanged.iter().cloned());
    secrets.sort();
    let mut versions = response.object_versions;
    versions.sort();
    Ok(Synced {
        versions,
        secrets,
        applied: report.applied,
    })
}
