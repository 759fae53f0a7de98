//! Label and annotation keys, shared so that writers and watchers agree byte for byte.
//!
//! Values match upstream secrets-store-csi-driver v1.6, so objects written by either driver are
//! recognised by the other.

/// On a `SecretProviderClassPodStatus`: the node whose driver owns it. Watches filter on it so a
/// node agent only sees its own statuses.
pub const NODE_NAME: &str = "internal.secrets-store.csi.k8s.io/node-name";

/// On a Kubernetes Secret created by secret sync: marks it as ours (value `"true"`). Watches filter
/// on it so the agent never lists the cluster's other Secrets.
pub const MANAGED: &str = "secrets-store.csi.k8s.io/managed";

/// The value of [`MANAGED`] on Secrets we manage.
pub const MANAGED_VALUE: &str = "true";

/// On a Secret (set by users): the Secret holds credentials for a `nodePublishSecretRef` and may be
/// watched for rotation (value `"true"`).
pub const USED: &str = "secrets-store.csi.k8s.io/used";

/// On a SecretProviderClass: the ServiceAccount (same namespace) whose identity the pod-less sync
/// uses to fetch the class's objects and keep its `secretObjects` Secrets without any pod.
pub const PODLESS_SERVICE_ACCOUNT: &str = "secrets-store.csi.x-k8s.io/podless-sync-service-account";

/// On a SecretProviderClass with [`PODLESS_SERVICE_ACCOUNT`]: how often the pod-less sync
/// refreshes (`30s`, `5m`, `1h`; jittered, bounded by the controller).
pub const PODLESS_REFRESH_INTERVAL: &str = "secrets-store.csi.x-k8s.io/podless-sync-interval";

/// On a ServiceAccount (a label, value [`PODLESS_OPT_IN_VALUE`]): its owner lets the pod-less sync
/// mint tokens for it. A label, not an annotation: the admission policy that confines token
/// minting selects ServiceAccounts by label, and selectors read labels only.
pub const PODLESS_OPT_IN: &str = "secrets-store.csi.x-k8s.io/podless-sync";

/// The value of [`PODLESS_OPT_IN`] that opts a ServiceAccount in.
pub const PODLESS_OPT_IN_VALUE: &str = "true";

/// The CSI driver name that kubelet, `CSIDriver` objects and pod volumes use.
pub const DRIVER_NAME: &str = "secrets-store.csi.k8s.io";

/// The API group of our custom resources.
pub const API_GROUP: &str = "secrets-store.csi.x-k8s.io";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_qualified_label_names() {
        for key in [
            NODE_NAME,
            MANAGED,
            USED,
            PODLESS_SERVICE_ACCOUNT,
            PODLESS_REFRESH_INTERVAL,
            PODLESS_OPT_IN,
        ] {
            let (prefix, name) = key.split_once('/').expect("prefixed key");
            assert!(prefix.len() <= 253 && !prefix.is_empty(), "{key}");
            assert!(name.len() <= 63 && !name.is_empty(), "{key}");
        }
    }
}
