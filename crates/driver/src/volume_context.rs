//! The typed form of a `NodePublishVolume` request's `volume_context` (and `secrets`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use secrets_store_provider::Attributes;
use serde::Deserialize;

/// Volume context key naming the SecretProviderClass.
pub const SECRET_PROVIDER_CLASS_KEY: &str = "secretProviderClass";
/// Volume context key kubelet fills with the pod name.
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
/// Volume context key kubelet fills with the pod namespace.
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
/// Volume context key kubelet fills with the pod UID.
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// Volume context key kubelet fills with the pod's ServiceAccount name.
pub const SERVICE_ACCOUNT_NAME_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
/// Volume context key kubelet sets to `"true"` for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Key (volume context or secrets) carrying the requested ServiceAccount tokens as JSON.
pub const TOKENS_KEY: &str = Attributes::TOKENS_KEY;

/// ServiceAccount tokens kubelet requested for the pod (a JSON object keyed by audience).
///
/// Kept opaque: `Debug` never prints it, and nothing but the provider attributes reads it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ServiceAccountTokens(String);

impl ServiceAccountTokens {
    /// Wraps the raw JSON string.
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The raw JSON, for forwarding to the provider only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a volume context could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid volume context: {0}")]
pub struct VolumeContextError(String);

/// The typed `volume_context` of a publish request.
#[derive(Clone, Debug, Deserialize)]
pub struct VolumeContext {
    /// Name of the SecretProviderClass in the pod's namespace (from the pod's `volumeAttributes`).
    #[serde(rename = "secretProviderClass")]
    pub secret_provider_class: String,
    /// The pod's name (kubelet, `podInfoOnMount: true`).
    #[serde(rename = "csi.storage.k8s.io/pod.name")]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(rename = "csi.storage.k8s.io/pod.namespace")]
    pub pod_namespace: String,
    /// The pod's UID (owner of the SecretProviderClassPodStatus).
    #[serde(rename = "csi.storage.k8s.io/pod.uid")]
    pub pod_uid: String,
    /// The pod's ServiceAccount.
    #[serde(rename = "csi.storage.k8s.io/serviceAccount.name", default)]
    pub service_account_name: String,
    /// Whether this is an inline ephemeral volume (always true for this driver's pods).
    #[serde(
        rename = "csi.storage.k8s.io/ephemeral",
        default,
        deserialize_with = "bool_string"
    )]
    pub ephemeral: bool,
    /// Tokens kubelet requested (`CSIDriver.spec.tokenRequests`), from `secrets` or `volume_context`.
    #[serde(rename = "csi.storage.k8s.io/serviceAccount.tokens", default)]
    pub tokens: Option<ServiceAccountTokens>,
    /// Every key kubelet sent, verbatim except the tokens: they override class parameters.
    #[serde(skip)]
    pub raw: BTreeMap<String, String>,
}

fn bool_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" | "" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "{EPHEMERAL_KEY}: expected \"true\" or \"false\", got {other:?}"
        ))),
    }
}

impl VolumeContext {
    /// Parses kubelet's `volume_context`; the tokens key is taken from `secrets` first (Kubernetes
    /// ≥1.35 with `serviceAccountTokenInSecrets`), then from the volume context.
    pub fn parse(
        volume_context: &HashMap<String, String>,
        secrets: &HashMap<String, String>,
    ) -> Result<Self, VolumeContextError> {
        let map: serde_json::Map<String, serde_json::Value> = volume_context
            .iter()
            .filter(|(k, _)| k.as_str() != TOKENS_KEY)
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        // serde's error names the missing/invalid key but never echoes values of unknown fields.
        let mut ctx: VolumeContext = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| VolumeContextError(e.to_string()))?;
        for (key, what) in [
            (&ctx.secret_provider_class, SECRET_PROVIDER_CLASS_KEY),
            (&ctx.pod_name, POD_NAME_KEY),
            (&ctx.pod_namespace, POD_NAMESPACE_KEY),
            (&ctx.pod_uid, POD_UID_KEY),
        ] {
            if key.is_empty() {
                return Err(VolumeContextError(format!("`{what}` is empty")));
            }
        }
        ctx.tokens = secrets
            .get(TOKENS_KEY)
            .or_else(|| volume_context.get(TOKENS_KEY))
            .filter(|t| !t.is_empty())
            .map(|t| ServiceAccountTokens::new(t.clone()));
        ctx.raw = volume_context
            .iter()
            .filter(|(k, _)| k.as_str() != TOKENS_KEY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(ctx)
    }

    /// The provider attributes: class `parameters`, overridden by every volume context key, plus
    /// the tokens key when kubelet sent tokens (upstream's merge order).
    pub fn attributes(&self, parameters: &BTreeMap<String, String>) -> Attributes {
        let mut attrs = parameters.clone();
        attrs.extend(self.raw.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(tokens) = &self.tokens {
            attrs.insert(TOKENS_KEY.to_string(), tokens.expose().to_string());
        }
        Attributes(attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        [
            (SECRET_PROVIDER_CLASS_KEY, "spc"),
            (POD_NAME_KEY, "p"),
            (POD_NAMESPACE_KEY, "ns"),
            (POD_UID_KEY, "uid-1"),
            (SERVICE_ACCOUNT_NAME_KEY, "sa"),
            (EPHEMERAL_KEY, "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn parses_kubelet_keys() {
        let ctx = VolumeContext::parse(&base(), &HashMap::new()).unwrap();
        assert_eq!(ctx.secret_provider_class, "spc");
        assert_eq!(ctx.pod_name, "p");
        assert_eq!(ctx.pod_namespace, "ns");
        assert_eq!(ctx.pod_uid, "uid-1");
        assert_eq!(ctx.service_account_name, "sa");
        assert!(ctx.ephemeral);
        assert!(ctx.tokens.is_none());
    }

    #[test]
    fn missing_class_is_an_error_naming_the_key() {
        let mut vc = base();
        vc.remove(SECRET_PROVIDER_CLASS_KEY);
        let err = VolumeContext::parse(&vc, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("secretProviderClass"), "{err}");
        let mut vc = base();
        vc.insert(POD_UID_KEY.into(), String::new());
        let err = VolumeContext::parse(&vc, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("pod.uid"), "{err}");
    }

    #[test]
    fn bad_ephemeral_is_rejected() {
        let mut vc = base();
        vc.insert(EPHEMERAL_KEY.into(), "maybe".into());
        assert!(VolumeContext::parse(&vc, &HashMap::new()).is_err());
    }

    #[test]
    fn tokens_prefer_secrets_and_are_redacted() {
        let mut vc = base();
        vc.insert(TOKENS_KEY.into(), "from-context-TOKEN".into());
        let secrets: HashMap<_, _> = [(TOKENS_KEY.to_string(), "from-secrets-TOKEN".to_string())]
            .into_iter()
            .collect();
        let ctx = VolumeContext::parse(&vc, &secrets).unwrap();
        assert_eq!(ctx.tokens.as_ref().unwrap().expose(), "from-secrets-TOKEN");
        let dbg = format!("{ctx:?}");
        assert!(!dbg.contains("TOKEN"), "{dbg}");
        let ctx = VolumeContext::parse(&vc, &HashMap::new()).unwrap();
        assert_eq!(ctx.tokens.as_ref().unwrap().expose(), "from-context-TOKEN");
    }

    #[test]
    fn attributes_merge_volume_context_over_parameters() {
        let mut vc = base();
        vc.insert("region".into(), "eu-west-1".into());
        vc.insert(TOKENS_KEY.into(), "TOKEN".into());
        let ctx = VolumeContext::parse(&vc, &HashMap::new()).unwrap();
        let params: BTreeMap<_, _> = [
            ("region".to_string(), "us-east-1".to_string()),
            ("objects".to_string(), "- objectName: a".to_string()),
        ]
        .into_iter()
        .collect();
        let attrs = ctx.attributes(&params);
        assert_eq!(attrs.get("region"), Some("eu-west-1"));
        assert_eq!(attrs.get("objects"), Some("- objectName: a"));
        assert_eq!(attrs.get(POD_UID_KEY), Some("uid-1"));
        assert_eq!(attrs.get(TOKENS_KEY), Some("TOKEN"));
        assert!(!format!("{attrs:?}").contains("TOKEN\""));
    }
}
