//! The built-in AWS provider: AWS Secrets Manager and SSM Parameter Store objects mounted with the
//! pod's own identity (IRSA or EKS Pod Identity), batched and coalesced across pods of a node.
//!
//! Layout: `params` (pure parsing/validation, bounded by `limits`) → `identity` (per-pod
//! credentials) → `fetch` (batched API calls behind `coalesce`, node-level single-flight) →
//! `render` (values → files). [`AwsProvider`] wires them behind the `Provider` trait.
//!
//! The modules are private; the re-exports below are the crate's map of what others use: the
//! binary builds an [`AwsProvider`], `secrets-store check` runs [`validate`] and [`dry_run`],
//! tests read the token audiences. What the fuzz targets reach inside is in [`fuzzing`], behind
//! the `fuzzing` feature.

mod arn;
mod call_limit;
mod calls;
mod coalesce;
mod dry_run;
mod errors;
mod fetch;
mod file_names;
mod identity;
mod jmes_path;
mod limits;
mod metrics;
mod mount;
mod objects_yaml;
mod params;
mod region;
mod render;

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::config::Region;
use secrets_store_provider::{MountRequest, MountResponse, Provider, ProviderError};

pub use call_limit::{CallLimit, DEFAULT_MAX_CONCURRENT_AWS_CALLS};
pub use dry_run::{DryRunError, ObjectAccess, dry_run};
pub use fetch::FetchConfig;
pub use identity::pod_identity::{
    DEFAULT_IPV4_URL as POD_IDENTITY_AGENT_IPV4_URL,
    DEFAULT_IPV6_URL as POD_IDENTITY_AGENT_IPV6_URL,
};
pub use identity::{IRSA_AUDIENCE, POD_IDENTITY_AUDIENCE, PodIdentityAgentConfig, token_for};
pub use metrics::Metrics;
pub use params::{MountParameters, uses_pod_identity};

/// What the fuzz targets (`fuzz/`, replayed by `crates/secrets-store/tests/fuzz_corpus.rs`) call
/// inside the provider: parsers and renderers with no I/O.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::arn::Arn;
    pub use crate::jmes_path::{KeyPath, KeyPathError, Step};
    pub use crate::limits::{Limit, MAX_JMES_PATH_BYTES};
    pub use crate::params::{VersionSelector, parse as parse_parameters};
    pub use crate::render::{FetchedValue, render_object};
}

/// The provider name in `SecretProviderClass.spec.provider`.
pub const PROVIDER_NAME: &str = "aws";

/// How the provider is set up. Endpoints come from the standard `AWS_ENDPOINT_URL*` variables
/// (read by `aws-config`) unless [`AwsProviderConfig::endpoint_url`] overrides them.
#[derive(Clone, Debug)]
pub struct AwsProviderConfig {
    /// Region used when a class sets none (`AWS_REGION`, else the node's region label).
    pub default_region: Option<String>,
    /// One endpoint for every AWS service (else the `AWS_ENDPOINT_URL*` variables apply).
    pub endpoint_url: Option<String>,
    /// How long fetched values serve other mounts of the same identity.
    pub cache_ttl: Duration,
    /// Credentials are refreshed this long before they expire.
    pub credential_refresh_margin: Duration,
    /// Deadline for one mount (fetches, retries and failover included).
    pub mount_timeout: Duration,
    /// EKS Pod Identity Agent addresses.
    pub pod_identity: PodIdentityAgentConfig,
    /// AWS calls (Secrets Manager, SSM, STS) in flight at once, node-wide.
    pub max_concurrent_aws_calls: usize,
}

impl Default for AwsProviderConfig {
    fn default() -> Self {
        Self {
            default_region: None,
            endpoint_url: None,
            cache_ttl: Duration::from_secs(5),
            credential_refresh_margin: Duration::from_secs(5 * 60),
            mount_timeout: Duration::from_secs(25),
            pod_identity: PodIdentityAgentConfig::default(),
            max_concurrent_aws_calls: DEFAULT_MAX_CONCURRENT_AWS_CALLS,
        }
    }
}

impl AwsProviderConfig {
    /// Defaults, with the region from `AWS_REGION` (or `AWS_DEFAULT_REGION`).
    pub fn from_env() -> Self {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        Self {
            default_region: region,
            ..Self::default()
        }
    }
}

/// The `topology.kubernetes.io/region` label of `node`, the last fallback for the region.
pub async fn node_region(client: &kube::Client, node: &str) -> Result<Option<String>, kube::Error> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let meta = nodes.get_metadata_opt(node).await?;
    Ok(meta.and_then(|m| {
        m.metadata
            .labels?
            .get("topology.kubernetes.io/region")
            .cloned()
    }))
}

/// Validates SecretProviderClass parameters, jmesPath expressions and [`limits`] included, as
/// every mount does before any network call, and as `secrets-store check` does offline.
/// `default_region` stands in for `AWS_REGION`. Every failure is `InvalidParameters`
/// (gRPC `InvalidArgument`).
pub fn validate(
    parameters: &std::collections::BTreeMap<String, String>,
    default_region: Option<&str>,
) -> Result<params::MountParameters, ProviderError> {
    use secrets_store_provider::ProviderErrorKind;
    params::parse(parameters, default_region)
        .map_err(|e| ProviderError::new(ProviderErrorKind::InvalidParameters, e.to_string()))
}

/// The AWS provider.
pub struct AwsProvider {
    inner: mount::Mounter,
}

impl AwsProvider {
    /// Builds the provider. `client` reads ServiceAccounts (for IRSA role annotations).
    pub async fn new(config: AwsProviderConfig, client: kube::Client, metrics: Metrics) -> Self {
        // Pods never use the node's credentials: no credentials provider at all (so no IMDS or
        // environment credentials), an explicit region (so no IMDS region lookup), and our own
        // retry loop instead of the SDK's so backoff is bounded by the mount deadline.
        let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12())
            .no_credentials()
            .region(Region::new(
                config
                    .default_region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".into()),
            ))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let base = loader.load().await;
        let limit = CallLimit::new(config.max_concurrent_aws_calls);
        let resolver = identity::IdentityResolver::new(
            base.clone(),
            identity::ServiceAccountCache::new(client),
            identity::PodIdentityAgent::new(config.pod_identity.clone()),
            config.credential_refresh_margin,
            limit.clone(),
            metrics.clone(),
        );
        let fetcher = fetch::Fetcher::new(
            base,
            FetchConfig {
                cache_ttl: config.cache_ttl,
                ..FetchConfig::default()
            },
            limit,
            metrics.clone(),
        );
        // Expired values and credentials leave memory even on a node where no mount follows;
        // each sweeper ends when its cache is dropped with the provider.
        resolver.spawn_sweeper(coalesce::SWEEP_PERIOD);
        fetcher.spawn_sweeper(coalesce::SWEEP_PERIOD);
        Self {
            inner: mount::Mounter {
                config,
                resolver,
                fetcher,
                metrics,
            },
        }
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        self.inner.mount(request).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[test]
    fn offline_validation_covers_parameters_and_jmes_expressions() {
        let mut p = BTreeMap::from([(
            "objects".to_string(),
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n    - path: my-key\n      objectAlias: k\n"
                .to_string(),
        )]);
        let err = super::validate(&p, Some("us-east-1")).unwrap_err();
        assert!(err.message.contains("must be quoted"), "{err}");
        p.insert(
            "objects".into(),
            "- objectName: a\n  objectType: secretsmanager\n".into(),
        );
        let ok = super::validate(&p, Some("us-east-1")).unwrap();
        assert_eq!(ok.objects[0].file_name, "a");
        let err = super::validate(&p, None).unwrap_err();
        assert!(err.message.contains("parameter region"), "{err}");
    }
}
