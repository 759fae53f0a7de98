//! Fetching a class's objects with the caller's own (ambient) AWS credentials, for
//! `secrets-store check --dry-run`: the same validation, batching and rendering as a mount, but no
//! pod identity and nothing written. The caller gets the rendered files to inspect and drop.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_sts::config::Region;
use secrets_store_provider::{DEFAULT_FILE_PERMISSION, ProviderFile};
use tokio::time::Instant;

use crate::arn::ObjectKind;
use crate::fetch::{FetchConfig, Fetcher, ObjectRequest};
use crate::identity::IdentityKey;
use crate::metrics::Metrics;
use crate::mount::object_error;
use crate::params::MountParameters;
use crate::render;

/// Why a dry run could not start. Never contains credentials.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The default credential chain found nothing usable.
    #[error("no AWS credentials in the environment (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...): {0}")]
    Credentials(String),
}

/// The outcome of fetching one object of the class.
#[derive(Debug)]
pub struct ObjectAccess {
    /// `objectName` as written in the class.
    pub object: String,
    /// Secrets Manager or SSM.
    pub kind: ObjectKind,
    /// The rendered files (the object's own file and its jmesPath files), or why it failed.
    pub result: Result<Vec<ProviderFile>, String>,
}

/// Fetches every object of `params` (primary region only) with the ambient credentials.
///
/// Endpoints follow the standard `AWS_ENDPOINT_URL*` variables. `timeout` bounds the whole run.
pub async fn dry_run(
    params: &MountParameters,
    timeout: Duration,
) -> Result<Vec<ObjectAccess>, DryRunError> {
    let deadline = Instant::now() + timeout;
    let base = aws_config::defaults(BehaviorVersion::v2026_01_12())
        .region(Region::new(params.region.clone()))
        .load()
        .await;
    let provider = base
        .credentials_provider()
        .ok_or_else(|| DryRunError::Credentials("no credential provider configured".into()))?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| DryRunError::Credentials(e.to_string()))?;
    // A short-lived fetcher of its own: no cache shared with anything, two attempts per call.
    let fetcher = Fetcher::new(
        base,
        FetchConfig {
            cache_ttl: Duration::ZERO,
            max_attempts: 2,
            ..FetchConfig::default()
        },
        crate::CallLimit::default(),
        Metrics::default(),
    );
    let identity = IdentityKey {
        role: "ambient credentials".into(),
        namespace: params.pod.namespace.clone(),
        service_account: params.pod.service_account.clone(),
        region: params.region.clone(),
    };
    let requests: Vec<ObjectRequest> = params
        .objects
        .iter()
        .map(|o| ObjectRequest {
            kind: o.kind,
            name: o.name.clone(),
            selector: o.selector.clone(),
        })
        .collect();
    let results = fetcher.fetch(&identity, &creds, &requests, deadline).await;
    Ok(params
        .objects
        .iter()
        .zip(results)
        .map(|(spec, result)| ObjectAccess {
            object: spec.name.clone(),
            kind: spec.kind,
            result: match result {
                Ok(value) => render::render_object(spec, &value, DEFAULT_FILE_PERMISSION)
                    .map(|(files, _)| files)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(object_error(spec, &params.region, &identity, &e).1),
            },
        })
        .collect())
}
