//! One mount: validate, resolve identity, fetch (primary, then failover where it can help),
//! render. Every failure becomes a `ProviderError` naming the object and the cause.

use secrets_store_provider::{
    MountRequest, MountResponse, ProviderError, ProviderErrorKind as Kind,
};
use tokio::time::Instant;

use crate::AwsProviderConfig;
use crate::errors::{Class, Classified};
use crate::fetch::{FetchResult, Fetcher, ObjectRequest};
use crate::identity::{IdentityError, IdentityKey, IdentityResolver};
use crate::metrics::Metrics;
use crate::params::{MountParameters, ObjectSpec};
use crate::render;

pub(crate) struct Mounter {
    pub(crate) config: AwsProviderConfig,
    pub(crate) resolver: IdentityResolver,
    pub(crate) fetcher: Fetcher,
    pub(crate) metrics: Metrics,
}

fn identity_error(e: IdentityError) -> ProviderError {
    ProviderError::new(e.kind(), e.to_string())
}

/// The message and kind for one object's failure.
pub(crate) fn object_error(
    spec: &ObjectSpec,
    region: &str,
    identity: &IdentityKey,
    e: &Classified,
) -> (Kind, String) {
    let (kind, what) = match e.kind {
        Class::AccessDenied => (
            Kind::PermissionDenied,
            format!("access denied for {identity}: {}", e.message),
        ),
        Class::BadCredentials => (
            Kind::Unauthenticated,
            format!("credentials of {identity} rejected: {}", e.message),
        ),
        Class::NotFound => (Kind::NotFound, format!("not found: {}", e.message)),
        Class::Throttled => (
            Kind::Throttled,
            format!("throttled beyond the retry budget: {}", e.message),
        ),
        Class::Unavailable => (Kind::Unavailable, format!("unavailable: {}", e.message)),
        Class::Other => (Kind::Internal, e.message.clone()),
    };
    (
        kind,
        format!("object {:?} ({}) in {region}: {what}", spec.name, spec.kind),
    )
}

impl Mounter {
    pub(crate) async fn mount(&self, req: MountRequest) -> Result<MountResponse, ProviderError> {
        let deadline = Instant::now() + self.config.mount_timeout;
        let params = crate::validate(&req.attributes.0, self.config.default_region.as_deref())?;

        let primary = self
            .resolver
            .identity(&params, &params.region)
            .await
            .map_err(identity_error)?;
        let creds = self
            .resolver
            .credentials(&primary, &params, &req.attributes)
            .await
            .map_err(identity_error)?;
        let requests: Vec<ObjectRequest> = params
            .objects
            .iter()
            .map(|o| ObjectRequest {
                kind: o.kind,
                name: o.name.clone(),
                selector: o.selector.clone(),
            })
            .collect();
        let mut results = self
            .fetcher
            .fetch(&primary, &creds, &requests, deadline)
            .await;
        let mut served_by: Vec<IdentityKey> = vec![primary.clone(); results.len()];

        if results
            .iter()
            .any(|r| matches!(r, Err(e) if e.kind == Class::BadCredentials))
        {
            self.resolver.invalidate(&primary);
        }
        if let Some(region) = &params.failover_region {
            self.failover(
                &params,
                &req,
                region,
                deadline,
                &mut results,
                &mut served_by,
            )
            .await;
        }

        let mut failures = Vec::new();
        let mut files = Vec::new();
        let mut versions = Vec::new();
        for ((spec, result), identity) in params.objects.iter().zip(results).zip(&served_by) {
            match result {
                Ok(value) => {
                    match render::render_object(spec, &value, req.permission) {
                        Ok((f, v)) => {
                            files.extend(f);
                            versions.extend(v);
                        }
                        Err(e) => failures.push((Kind::InvalidParameters, e.to_string())),
                    }
                    if value.region != params.region {
                        tracing::info!(object = %spec.name, region = %value.region, "served by the failover region");
                    }
                }
                Err(e) => failures.push(object_error(spec, &identity.region, identity, &e)),
            }
        }
        if let Some((kind, _)) = failures.first() {
            let kind = *kind;
            let message = failures
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProviderError::new(kind, message));
        }
        tracing::info!(
            namespace = %params.pod.namespace,
            pod = %params.pod.name,
            identity = %primary,
            files = files.len(),
            "mounted AWS objects"
        );
        Ok(MountResponse {
            files,
            object_versions: versions,
        })
    }

    /// Retries, in the failover region, the objects whose primary fetch failed with a
    /// retryable/regional error. Other errors (denied, not found) are the answer as they are.
    async fn failover(
        &self,
        params: &MountParameters,
        req: &MountRequest,
        region: &str,
        deadline: Instant,
        results: &mut [FetchResult],
        served_by: &mut [IdentityKey],
    ) {
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.retryable()))
            .map(|(i, _)| i)
            .collect();
        if failed.is_empty() {
            return;
        }
        let identity = match self.resolver.identity(params, region).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(region, error = %e, "failover identity unavailable");
                return;
            }
        };
        let creds = match self
            .resolver
            .credentials(&identity, params, &req.attributes)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(region, error = %e, "failover credentials unavailable");
                return;
            }
        };
        let requests: Vec<ObjectRequest> = failed
            .iter()
            .map(|&i| {
                let o = &params.objects[i];
                match &o.failover {
                    Some(f) => ObjectRequest {
                        kind: o.kind,
                        name: f.name.clone(),
                        selector: f.selector.clone(),
                    },
                    None => ObjectRequest {
                        kind: o.kind,
                        name: o.name.clone(),
                        selector: o.selector.clone(),
                    },
                }
            })
            .collect();
        let answers = self
            .fetcher
            .fetch(&identity, &creds, &requests, deadline)
            .await;
        for (&i, answer) in failed.iter().zip(answers) {
            if answer.is_ok() {
                self.metrics.failover();
            }
            results[i] = answer;
            served_by[i] = identity.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::ObjectKind;
    use crate::params::VersionSelector;

    #[test]
    fn every_failure_class_has_a_kind_and_a_message_naming_object_region_and_cause() {
        let spec = ObjectSpec {
            name: "arn:aws:secretsmanager:us-east-1:1:secret:db".into(),
            kind: ObjectKind::SecretsManager,
            selector: VersionSelector::default(),
            file_name: "db".into(),
            mode: None,
            jmes: vec![],
            failover: None,
        };
        let identity = IdentityKey {
            role: "arn:aws:iam::1:role/app".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            region: "us-east-1".into(),
        };
        let cases = [
            (
                Class::AccessDenied,
                Kind::PermissionDenied,
                "access denied for role arn:aws:iam::1:role/app (ServiceAccount ns/sa)",
            ),
            (
                Class::BadCredentials,
                Kind::Unauthenticated,
                "credentials of role arn:aws:iam::1:role/app",
            ),
            (Class::NotFound, Kind::NotFound, "not found: CAUSE"),
            (
                Class::Throttled,
                Kind::Throttled,
                "throttled beyond the retry budget",
            ),
            (Class::Unavailable, Kind::Unavailable, "unavailable: CAUSE"),
            (Class::Other, Kind::Internal, ": CAUSE"),
        ];
        for (class, want_kind, want) in cases {
            let (kind, message) = object_error(
                &spec,
                "us-east-1",
                &identity,
                &Classified {
                    kind: class,
                    message: "CAUSE".into(),
                },
            );
            assert_eq!(kind, want_kind, "{class:?}");
            assert!(
                message.starts_with(
                    "object \"arn:aws:secretsmanager:us-east-1:1:secret:db\" (secretsmanager) in us-east-1: "
                ),
                "{message}"
            );
            assert!(
                message.contains(want) && message.contains("CAUSE"),
                "{message}"
            );
        }
    }

    #[test]
    fn identity_failures_map_to_kinds() {
        let cases = [
            (
                IdentityError::MissingToken {
                    audience: "sts.amazonaws.com",
                },
                Kind::Unauthenticated,
            ),
            (
                IdentityError::AssumeRoleDenied {
                    identity: "role r".into(),
                    region: "us-east-1".into(),
                    message: "AccessDenied: not authorized".into(),
                },
                Kind::Unauthenticated,
            ),
            (
                IdentityError::Sts {
                    identity: "role r".into(),
                    region: "us-east-1".into(),
                    message: "connection refused".into(),
                    retryable: true,
                },
                Kind::Unavailable,
            ),
            (
                IdentityError::Kube {
                    namespace: "ns".into(),
                    name: "sa".into(),
                    message: "timeout".into(),
                },
                Kind::Unavailable,
            ),
        ];
        for (e, kind) in cases {
            let p = identity_error(e.clone());
            assert_eq!(p.kind, kind, "{e}");
            assert_eq!(p.message, e.to_string());
        }
        let denied = IdentityError::AssumeRoleDenied {
            identity: "role arn:aws:iam::1:role/x (ServiceAccount ns/sa)".into(),
            region: "eu-west-1".into(),
            message: "AccessDenied: nope".into(),
        };
        assert_eq!(
            denied.to_string(),
            "AssumeRoleWithWebIdentity for role arn:aws:iam::1:role/x (ServiceAccount ns/sa) in eu-west-1 denied: AccessDenied: nope"
        );
    }
}
