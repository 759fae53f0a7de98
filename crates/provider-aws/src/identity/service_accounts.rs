//! ServiceAccount role annotations through a metadata-only [`NamespacedCache`]: a reflector per
//! namespace that has mounted something on this node (evicted when idle), and one direct read on
//! a miss or before the namespace's first list, so a mount never waits for a watch.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PartialObjectMeta;
use secrets_store_kube_cache::NamespacedCache;

use super::{IdentityError, ROLE_ANNOTATION};

type SaMeta = PartialObjectMeta<ServiceAccount>;

/// Reads `eks.amazonaws.com/role-arn` of ServiceAccounts.
#[derive(Clone, Debug)]
pub struct ServiceAccountCache {
    cache: NamespacedCache<SaMeta>,
}

impl ServiceAccountCache {
    /// A cache using `client`; watches start lazily per namespace.
    pub fn new(client: kube::Client) -> Self {
        Self {
            cache: NamespacedCache::new(client),
        }
    }

    /// The IRSA role of `namespace/name`.
    pub async fn role_arn(&self, namespace: &str, name: &str) -> Result<String, IdentityError> {
        let kube_err = |e: kube::Error| IdentityError::Kube {
            namespace: namespace.into(),
            name: name.into(),
            message: e.to_string(),
        };
        let not_found = || IdentityError::ServiceAccountNotFound {
            namespace: namespace.into(),
            name: name.into(),
        };
        // A miss was already answered by the API server.
        let sa = self
            .cache
            .get(namespace, name)
            .await
            .map_err(kube_err)?
            .ok_or_else(not_found)?;
        if let Some(role) = role_of(&sa) {
            return Ok(role);
        }
        // Cached without the annotation: confirm with the API server, so a ServiceAccount
        // annotated a moment ago works and the error is authoritative.
        let sa = self
            .cache
            .read(namespace, name)
            .await
            .map_err(kube_err)?
            .ok_or_else(not_found)?;
        role_of(&sa).ok_or_else(|| IdentityError::MissingRoleAnnotation {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

fn role_of(sa: &SaMeta) -> Option<String> {
    sa.metadata
        .annotations
        .as_ref()?
        .get(ROLE_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
