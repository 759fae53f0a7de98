//! The provider request of a pod-less sync: what kubelet would send for a pod of the opted-in
//! ServiceAccount in the class's namespace, merged over the class's parameters as the node path
//! merges them. Pure, so the rule that a class cannot name another identity is table-tested.

use std::collections::BTreeMap;

use secrets_store_api::crd::SecretProviderClass;
use secrets_store_driver::{
    POD_NAME_KEY, POD_NAMESPACE_KEY, SECRET_PROVIDER_CLASS_KEY, SERVICE_ACCOUNT_NAME_KEY,
    ServiceAccountTokens, TOKENS_KEY,
};
use secrets_store_provider::{Attributes, DEFAULT_FILE_PERMISSION, MountRequest};

/// The prefix of the attributes kubelet sets on a mount: never taken from a class's parameters.
const KUBELET_KEYS: &str = "csi.storage.k8s.io/";

/// The request for `class` (in `namespace`) with the identity of `service_account` and its
/// `tokens`. Class parameters under `csi.storage.k8s.io/` are dropped: on a node kubelet's values
/// replace them, here there is no kubelet, and a class must not choose whose identity it gets.
/// No pod: the pod name is empty, and nothing is written to a target path.
pub fn mount_request(
    class: &SecretProviderClass,
    namespace: &str,
    service_account: &str,
    tokens: &ServiceAccountTokens,
) -> MountRequest {
    let mut attributes: BTreeMap<String, String> = class
        .spec
        .parameters
        .iter()
        .filter(|(k, _)| !k.starts_with(KUBELET_KEYS))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attributes.insert(
        SECRET_PROVIDER_CLASS_KEY.into(),
        class.metadata.name.clone().unwrap_or_default(),
    );
    attributes.insert(POD_NAMESPACE_KEY.into(), namespace.into());
    attributes.insert(SERVICE_ACCOUNT_NAME_KEY.into(), service_account.into());
    attributes.insert(POD_NAME_KEY.into(), String::new());
    attributes.insert(TOKENS_KEY.into(), tokens.expose().to_string());
    MountRequest {
        attributes: Attributes(attributes),
        secrets: BTreeMap::new(),
        target_path: Default::default(),
        permission: DEFAULT_FILE_PERMISSION,
        current_object_versions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrets_store_api::crd::SecretProviderClassSpec;

    #[test]
    fn a_class_cannot_choose_the_identity_or_the_tokens() {
        let hostile = [
            (POD_NAMESPACE_KEY, "kube-system"),
            (SERVICE_ACCOUNT_NAME_KEY, "admin"),
            (TOKENS_KEY, r#"{"sts.amazonaws.com":{"token":"forged"}}"#),
            (POD_NAME_KEY, "victim"),
            ("csi.storage.k8s.io/pod.uid", "1234"),
            ("csi.storage.k8s.io/ephemeral", "true"),
            (
                "objects",
                "- objectName: db\n  objectType: secretsmanager\n",
            ),
            ("region", "eu-west-1"),
        ];
        let class = SecretProviderClass::new(
            "c",
            SecretProviderClassSpec {
                provider: "aws".into(),
                parameters: hostile
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        );
        let tokens = ServiceAccountTokens::new(r#"{"sts.amazonaws.com":{"token":"minted"}}"#);
        let request = mount_request(&class, "team-a", "app", &tokens);
        let got = |k: &str| request.attributes.get(k);
        let cases = [
            (POD_NAMESPACE_KEY, Some("team-a")),
            (SERVICE_ACCOUNT_NAME_KEY, Some("app")),
            (TOKENS_KEY, Some(tokens.expose())),
            (POD_NAME_KEY, Some("")),
            (SECRET_PROVIDER_CLASS_KEY, Some("c")),
            ("csi.storage.k8s.io/pod.uid", None),
            ("csi.storage.k8s.io/ephemeral", None),
            ("region", Some("eu-west-1")),
            (
                "objects",
                Some("- objectName: db\n  objectType: secretsmanager\n"),
            ),
        ];
        for (key, want) in cases {
            assert_eq!(got(key), want, "{key}");
        }
        assert_eq!(request.attributes.0.len(), 7);
        assert!(request.secrets.is_empty());
        assert!(request.target_path.as_os_str().is_empty());
        assert!(!format!("{request:?}").contains("minted"));
    }
}
