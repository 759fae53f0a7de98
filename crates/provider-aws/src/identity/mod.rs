//! Per-pod AWS credentials: IRSA (AssumeRoleWithWebIdentity with the pod's token) or EKS Pod
//! Identity (the agent exchanges the pod's token). Never the node's credentials.
//!
//! Credentials are cached per [`IdentityKey`] until shortly before they expire, and fetched
//! single-flight, so one STS call serves every pod of a ServiceAccount.

pub mod pod_identity;
mod service_accounts;

pub use pod_identity::{PodIdentityAgent, PodIdentityAgentConfig};
pub use service_accounts::ServiceAccountCache;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_sts::config::Region;
use secrets_store_provider::{Attributes, ProviderErrorKind};
use serde::Deserialize;

use crate::call_limit::CallLimit;
use crate::coalesce::Coalescer;
use crate::params::MountParameters;

/// The ServiceAccount annotation naming the IRSA role.
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// Token audience for IRSA.
pub const IRSA_AUDIENCE: &str = "sts.amazonaws.com";
/// Token audience for EKS Pod Identity.
pub const POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";
/// The role label used in keys and messages for Pod Identity (the agent picks the role).
pub const POD_IDENTITY_ROLE: &str = "eks-pod-identity";

/// Who a pod is, for AWS. Every cache of secret material is keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// IAM role ARN (IRSA) or [`POD_IDENTITY_ROLE`].
    pub role: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod ServiceAccount.
    pub service_account: String,
    /// Region the credentials were obtained in.
    pub region: String,
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role {} (ServiceAccount {}/{})",
            self.role, self.namespace, self.service_account
        )
    }
}

/// Why a pod's identity could not be established. Never contains a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The pod's identity attributes are missing from the volume context.
    #[error("volume context lacks {0}; is this a mount request from kubelet?")]
    MissingPodInfo(&'static str),
    /// kubelet did not pass a token for the audience.
    #[error(
        "no ServiceAccount token for audience {audience} in the volume context; the CSIDriver object must request it in spec.tokenRequests"
    )]
    MissingToken {
        /// The audience needed.
        audience: &'static str,
    },
    /// The tokens attribute is not the JSON kubelet sends.
    #[error("the csi.storage.k8s.io/serviceAccount.tokens attribute is not valid JSON")]
    BadTokens,
    /// The ServiceAccount does not exist.
    #[error("ServiceAccount {namespace}/{name} not found")]
    ServiceAccountNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The ServiceAccount has no IRSA role annotation.
    #[error(
        "ServiceAccount {namespace}/{name} has no {ROLE_ANNOTATION} annotation (set it, or usePodIdentity: \"true\")"
    )]
    MissingRoleAnnotation {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Reading the ServiceAccount failed.
    #[error("reading ServiceAccount {namespace}/{name}: {message}")]
    Kube {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        message: String,
    },
    /// STS refused the role.
    #[error("AssumeRoleWithWebIdentity for {identity} in {region} denied: {message}")]
    AssumeRoleDenied {
        /// Whose.
        identity: String,
        /// Where.
        region: String,
        /// AWS's message.
        message: String,
    },
    /// STS failed otherwise.
    #[error("AssumeRoleWithWebIdentity for {identity} in {region} failed: {message}")]
    Sts {
        /// Whose.
        identity: String,
        /// Where.
        region: String,
        /// Cause.
        message: String,
        /// Whether trying again (or another region) may help.
        retryable: bool,
    },
    /// The Pod Identity Agent failed.
    #[error("EKS Pod Identity Agent: {0}")]
    PodIdentity(String),
    /// The token kubelet passed is not a current token of the pod's ServiceAccount.
    #[error(
        "the ServiceAccount token in the volume context {problem} ServiceAccount {namespace}/{name}"
    )]
    TokenMismatch {
        /// The pod's namespace.
        namespace: String,
        /// The pod's ServiceAccount.
        name: String,
        /// What is wrong, phrased to precede "ServiceAccount ns/name".
        problem: &'static str,
    },
}

impl IdentityError {
    /// The provider error class.
    pub fn kind(&self) -> ProviderErrorKind {
        match self {
            Self::Kube { .. } => ProviderErrorKind::Unavailable,
            Self::Sts {
                retryable: true, ..
            } => ProviderErrorKind::Unavailable,
            _ => ProviderErrorKind::Unauthenticated,
        }
    }

    /// Whether another region might succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Sts {
                retryable: true,
                ..
            }
        )
    }
}

/// One audience's token, as kubelet passes it.
#[derive(Deserialize)]
struct TokenEntry {
    token: String,
}

/// Extracts the token for `audience` from the volume context.
pub fn token_for(attrs: &Attributes, audience: &'static str) -> Result<String, IdentityError> {
    let raw = attrs
        .get(Attributes::TOKENS_KEY)
        .filter(|s| !s.is_empty())
        .ok_or(IdentityError::MissingToken { audience })?;
    let map: BTreeMap<String, TokenEntry> =
        serde_json::from_str(raw).map_err(|_| IdentityError::BadTokens)?;
    map.get(audience)
        .map(|t| t.token.clone())
        .filter(|t| !t.is_empty())
        .ok_or(IdentityError::MissingToken { audience })
}

/// Checks a kubelet-issued ServiceAccount token's claims: its subject is
/// `system:serviceaccount:<namespace>:<name>` and it has not expired at `now`. The signature is
/// not checked here (STS or the Pod Identity Agent verify it whenever credentials are fetched),
/// but on a credential cache hit nothing else looks at the token: without this, a request naming
/// one ServiceAccount with another's token, or with an expired one, would be served.
pub fn check_token_claims(
    token: &str,
    namespace: &str,
    name: &str,
    now: SystemTime,
) -> Result<(), IdentityError> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Claims {
        sub: Option<String>,
        exp: Option<u64>,
    }
    let fail = |problem| IdentityError::TokenMismatch {
        namespace: namespace.to_string(),
        name: name.to_string(),
        problem,
    };
    let claims: Claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| fail("is not a JWT issued for"))?;
    if claims.sub.as_deref() != Some(format!("system:serviceaccount:{namespace}:{name}").as_str()) {
        return Err(fail("was issued for another subject than"));
    }
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match claims.exp {
        Some(exp) if exp > now => Ok(()),
        _ => Err(fail(
            "has expired (or has no expiry); kubelet refreshes the tokens of",
        )),
    }
}

/// The result type cached per identity.
type CachedCreds = Result<Credentials, IdentityError>;

/// Resolves and caches per-pod credentials.
pub struct IdentityResolver {
    base: aws_config::SdkConfig,
    service_accounts: ServiceAccountCache,
    pod_identity: PodIdentityAgent,
    cache: Arc<Coalescer<IdentityKey, CachedCreds>>,
    refresh_margin: Duration,
    limit: CallLimit,
    metrics: crate::metrics::Metrics,
}

impl IdentityResolver {
    /// Builds a resolver. `base` carries endpoints and the HTTP client, never credentials.
    pub fn new(
        base: aws_config::SdkConfig,
        service_accounts: ServiceAccountCache,
        pod_identity: PodIdentityAgent,
        refresh_margin: Duration,
        limit: CallLimit,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            base,
            service_accounts,
            pod_identity,
            cache: Arc::default(),
            refresh_margin,
            limit,
            metrics,
        }
    }

    /// Drops expired credentials every `period` until the resolver is dropped.
    pub fn spawn_sweeper(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        self.cache.spawn_sweeper(period)
    }

    /// The identity of the pod behind `params`, without credentials (cheap; no AWS call).
    pub async fn identity(
        &self,
        params: &MountParameters,
        region: &str,
    ) -> Result<IdentityKey, IdentityError> {
        let pod = &params.pod;
        if pod.namespace.is_empty() {
            return Err(IdentityError::MissingPodInfo(
                "csi.storage.k8s.io/pod.namespace",
            ));
        }
        if pod.service_account.is_empty() {
            return Err(IdentityError::MissingPodInfo(
                "csi.storage.k8s.io/serviceAccount.name",
            ));
        }
        let role = if params.use_pod_identity {
            POD_IDENTITY_ROLE.to_string()
        } else {
            self.service_accounts
                .role_arn(&pod.namespace, &pod.service_account)
                .await?
        };
        Ok(IdentityKey {
            role,
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            region: region.to_string(),
        })
    }

    /// Credentials for `key`, from cache or from STS / the Pod Identity Agent.
    pub async fn credentials(
        &self,
        key: &IdentityKey,
        params: &MountParameters,
        attrs: &Attributes,
    ) -> Result<Credentials, IdentityError> {
        // The token is checked on every mount, cached credentials or not: a request without
        // the pod's token must not be served.
        let audience = if params.use_pod_identity {
            POD_IDENTITY_AUDIENCE
        } else {
            IRSA_AUDIENCE
        };
        let token = token_for(attrs, audience)?;
        check_token_claims(
            &token,
            &key.namespace,
            &key.service_account,
            SystemTime::now(),
        )?;
        let margin = self.refresh_margin;
        let ttl = move |r: &CachedCreds| match r {
            Ok(c) => c
                .expiry()
                .and_then(|e| e.duration_since(SystemTime::now()).ok())
                .map(|left| left.saturating_sub(margin))
                .unwrap_or(Duration::ZERO),
            Err(_) => Duration::ZERO,
        };
        self.cache
            .get_or_fetch(key, ttl, || async {
                let r = if params.use_pod_identity {
                    self.metrics.credential_fetch("pod-identity");
                    self.pod_identity
                        .credentials(&token, params.address_type)
                        .await
                } else {
                    self.metrics.credential_fetch("sts");
                    self.assume_role(key, &token).await
                };
                if let Err(e) = &r {
                    tracing::warn!(identity = %key, error = %e, "could not obtain credentials");
                }
                r
            })
            .await
    }

    /// Forgets cached credentials for `key` (after AWS rejected them as expired or invalid).
    pub fn invalidate(&self, key: &IdentityKey) {
        self.cache.invalidate(key);
    }

    async fn assume_role(&self, key: &IdentityKey, token: &str) -> CachedCreds {
        let conf = aws_sdk_sts::config::Builder::from(&self.base)
            .region(Region::new(key.region.clone()))
            .build();
        let client = aws_sdk_sts::Client::from_conf(conf);
        let call = client
            .assume_role_with_web_identity()
            .role_arn(&key.role)
            .role_session_name(session_name(key))
            .web_identity_token(token)
            .send();
        let out = self.limit.run(call).await;
        let outcome = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .api_call("sts", "AssumeRoleWithWebIdentity", outcome);
        let identity = key.to_string();
        let region = key.region.clone();
        match out {
            Ok(out) => {
                let c = out.credentials().ok_or_else(|| IdentityError::Sts {
                    identity: identity.clone(),
                    region: region.clone(),
                    message: "response carries no credentials".into(),
                    retryable: false,
                })?;
                let expiry = SystemTime::try_from(*c.expiration()).ok();
                Ok(Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_string()),
                    expiry,
                    "irsa",
                ))
            }
            Err(err) => {
                let class = crate::errors::classify(&err);
                let message = class.message.clone();
                if class.kind == crate::errors::Class::AccessDenied {
                    Err(IdentityError::AssumeRoleDenied {
                        identity,
                        region,
                        message,
                    })
                } else {
                    Err(IdentityError::Sts {
                        identity,
                        region,
                        message,
                        retryable: class.retryable(),
                    })
                }
            }
        }
    }
}

/// A role session name that says whose session it is (CloudTrail shows it).
fn session_name(key: &IdentityKey) -> String {
    let raw = format!("secrets-store-{}-{}", key.namespace, key.service_account);
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(tokens: Option<&str>) -> Attributes {
        let mut m = BTreeMap::new();
        if let Some(t) = tokens {
            m.insert(Attributes::TOKENS_KEY.to_string(), t.to_string());
        }
        Attributes(m)
    }

    #[test]
    fn tokens_are_found_by_audience() {
        let a = attrs(Some(
            r#"{"sts.amazonaws.com":{"token":"tok-1","expirationTimestamp":"2030-01-01T00:00:00Z"},"pods.eks.amazonaws.com":{"token":"tok-2"}}"#,
        ));
        assert_eq!(token_for(&a, IRSA_AUDIENCE).unwrap(), "tok-1");
        assert_eq!(token_for(&a, POD_IDENTITY_AUDIENCE).unwrap(), "tok-2");
    }

    #[test]
    fn token_errors_are_clear_and_never_echo_the_attribute() {
        let cases = [
            (
                attrs(None),
                "no ServiceAccount token for audience sts.amazonaws.com",
            ),
            (
                attrs(Some("")),
                "no ServiceAccount token for audience sts.amazonaws.com",
            ),
            (
                attrs(Some("{}")),
                "no ServiceAccount token for audience sts.amazonaws.com",
            ),
            (
                attrs(Some(r#"{"other":{"token":"sekret-tok"}}"#)),
                "spec.tokenRequests",
            ),
            (attrs(Some("not json sekret-tok")), "is not valid JSON"),
        ];
        for (a, want) in cases {
            let e = token_for(&a, IRSA_AUDIENCE).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("sekret-tok"), "{e}");
        }
    }

    /// An unsigned JWT with these claims (the check reads claims only).
    fn jwt(claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn token_claims_must_name_the_pods_service_account_and_be_current() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let sub = "system:serviceaccount:ns:app";
        let ok = jwt(serde_json::json!({"sub": sub, "exp": 2_000}));
        assert_eq!(check_token_claims(&ok, "ns", "app", now), Ok(()));
        let cases = [
            (
                jwt(serde_json::json!({"sub": "system:serviceaccount:ns:other", "exp": 2_000})),
                "another subject",
            ),
            (
                jwt(serde_json::json!({"sub": "system:serviceaccount:other:app", "exp": 2_000})),
                "another subject",
            ),
            (jwt(serde_json::json!({"sub": sub, "exp": 999})), "expired"),
            (jwt(serde_json::json!({"sub": sub})), "expired"),
            ("not-a-jwt".to_string(), "not a JWT"),
            ("a.!!!.c".to_string(), "not a JWT"),
        ];
        for (token, problem) in cases {
            let e = check_token_claims(&token, "ns", "app", now).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(problem), "{text}");
            assert!(text.contains("ServiceAccount ns/app"), "{text}");
            assert!(!text.contains(&token), "{text}");
            assert_eq!(e.kind(), ProviderErrorKind::Unauthenticated);
        }
    }

    #[test]
    fn session_names_are_valid() {
        let key = IdentityKey {
            role: "r".into(),
            namespace: "ns".into(),
            service_account: "sa:weird/name".into(),
            region: "us-east-1".into(),
        };
        assert_eq!(session_name(&key), "secrets-store-ns-sa-weird-name");
        let long = IdentityKey {
            namespace: "n".repeat(100),
            ..key
        };
        assert_eq!(session_name(&long).len(), 64);
    }

    #[test]
    fn identity_display_names_role_and_service_account() {
        let key = IdentityKey {
            role: "arn:aws:iam::1:role/a".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            region: "us-east-1".into(),
        };
        assert_eq!(
            key.to_string(),
            "role arn:aws:iam::1:role/a (ServiceAccount ns/sa)"
        );
    }
}
