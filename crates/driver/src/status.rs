//! Effects on the API server: `SecretProviderClassPodStatus` writes and Events on pods.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use secrets_store_api::crd::{
    SecretProviderClassObject, SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus,
};
use secrets_store_api::{labels, names};
use secrets_store_provider::ObjectVersion;

use crate::volume_context::VolumeContext;

/// Builds the `SecretProviderClassPodStatus` a publish records (pure; applied by [`PodEffects`]).
pub fn pod_status(
    ctx: &VolumeContext,
    node_name: &str,
    target_path: &str,
    versions: &[ObjectVersion],
) -> SecretProviderClassPodStatus {
    let mut objects: Vec<SecretProviderClassObject> = versions
        .iter()
        .map(|v| SecretProviderClassObject {
            id: v.id.clone(),
            version: v.version.clone(),
        })
        .collect();
    objects.sort();
    let mut obj = SecretProviderClassPodStatus::for_pod(
        &ctx.pod_namespace,
        SecretProviderClassPodStatusStatus {
            pod_name: ctx.pod_name.clone(),
            secret_provider_class_name: ctx.secret_provider_class.clone(),
            mounted: true,
            target_path: target_path.to_string(),
            objects,
        },
    );
    obj.metadata.labels = Some(
        [(labels::NODE_NAME.to_string(), node_name.to_string())]
            .into_iter()
            .collect(),
    );
    obj.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: ctx.pod_name.clone(),
        uid: ctx.pod_uid.clone(),
        ..Default::default()
    }]);
    obj
}

/// The reference Events about a pod point at.
pub fn pod_reference(ctx: &VolumeContext) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(ctx.pod_name.clone()),
        namespace: Some(ctx.pod_namespace.clone()),
        uid: Some(ctx.pod_uid.clone()),
        ..Default::default()
    }
}

/// Writes statuses and Events through a kube client.
#[derive(Clone)]
pub struct PodEffects {
    client: kube::Client,
    recorder: Recorder,
}

impl std::fmt::Debug for PodEffects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodEffects").finish_non_exhaustive()
    }
}

impl PodEffects {
    /// Effects reported as `secrets-store-rs` from `node_name`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        let recorder = Recorder::new(client.clone(), names::reporter(node_name));
        Self { client, recorder }
    }

    /// Creates or updates `status` with server-side apply and returns the stored object.
    pub async fn apply_status(
        &self,
        status: &SecretProviderClassPodStatus,
    ) -> Result<SecretProviderClassPodStatus, kube::Error> {
        let namespace = status.metadata.namespace.as_deref().unwrap_or_default();
        let name = status.metadata.name.as_deref().unwrap_or_default();
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), namespace);
        let mut body = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
        // Server-side apply needs apiVersion/kind in the body.
        body["apiVersion"] = "secrets-store.csi.x-k8s.io/v1".into();
        body["kind"] = "SecretProviderClassPodStatus".into();
        api.patch(
            name,
            &PatchParams::apply(names::STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
    }

    /// The object versions recorded by the last successful publish (empty when unknown; a
    /// failed read only costs the provider its "what changed" hint, so it is not an error).
    pub async fn current_versions(&self, namespace: &str, name: &str) -> Vec<ObjectVersion> {
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(st)) => st
                .status
                .map(|s| {
                    s.objects
                        .into_iter()
                        .map(|o| ObjectVersion {
                            id: o.id,
                            version: o.version,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::debug!(%namespace, %name, error = %e, "could not read current object versions");
                Vec::new()
            }
        }
    }

    /// Publishes an Event about the pod; failures are logged, never returned (an Event must not
    /// turn a result into a different one).
    pub async fn event(
        &self,
        pod: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let mut note = note.to_string();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, pod).await {
            tracing::warn!(
                pod = pod.name.as_deref().unwrap_or_default(),
                namespace = pod.namespace.as_deref().unwrap_or_default(),
                reason,
                error = %e,
                "failed to publish Event"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn status_is_named_labelled_owned_and_sorted() {
        let vc: HashMap<String, String> = [
            ("secretProviderClass", "spc"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
            ("csi.storage.k8s.io/pod.namespace", "team"),
            ("csi.storage.k8s.io/pod.uid", "u-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = VolumeContext::parse(&vc, &HashMap::new()).unwrap();
        let versions = [
            ObjectVersion {
                id: "b".into(),
                version: "2".into(),
            },
            ObjectVersion {
                id: "a".into(),
                version: "1".into(),
            },
        ];
        let s = pod_status(&ctx, "node-1", "/t", &versions);
        assert_eq!(s.metadata.name.as_deref(), Some("web-0-team-spc"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[labels::NODE_NAME],
            "node-1"
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "u-1"));
        let st = s.status.unwrap();
        assert!(st.mounted);
        assert_eq!(st.objects[0].id, "a");
        assert_eq!(st.objects[1].id, "b");
    }
}
