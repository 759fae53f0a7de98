//! Effects on the API server: `SecretProviderClassPodStatus` writes and Events on pods.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, OwnerReference,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
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

/// Whether the stored object `live` already records everything `desired` would write (status,
/// node label, owner): then a publish has nothing to write.
pub fn records_same(
    live: &SecretProviderClassPodStatus,
    desired: &SecretProviderClassPodStatus,
) -> bool {
    let node = |s: &SecretProviderClassPodStatus| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::NODE_NAME))
            .cloned()
    };
    live.status == desired.status
        && node(live) == node(desired)
        && live.metadata.owner_references == desired.metadata.owner_references
        && live.metadata.deletion_timestamp.is_none()
}

/// `fields` with `manager`'s `Update` entries re-recorded as its `Apply` entry, or `None` when
/// it has none. A create (or any plain update) records the writer's fields under an `Update`
/// operation, which its later server-side applies share but never release, so a field an apply
/// stops sending (the owner of a pod recreated under the same name, a dropped label or key)
/// would stay for good. The API server keeps managedFields that a client sets, so writing these
/// back makes the fields the applier's.
pub fn updates_as_applied(
    fields: &[ManagedFieldsEntry],
    manager: &str,
) -> Option<Vec<ManagedFieldsEntry>> {
    let ours = |e: &ManagedFieldsEntry, op: &str| {
        e.manager.as_deref() == Some(manager) && e.operation.as_deref() == Some(op)
    };
    if !fields.iter().any(|e| ours(e, "Update")) {
        return None;
    }
    let mut out: Vec<ManagedFieldsEntry> = Vec::with_capacity(fields.len());
    let mut applied: Option<usize> = None;
    // The one Apply entry of the manager gathers its Update entries' fields (a union of the
    // field sets is the deep merge of their JSON trees).
    for entry in fields {
        if !ours(entry, "Update") && !ours(entry, "Apply") {
            out.push(entry.clone());
            continue;
        }
        match applied {
            None => {
                let mut e = entry.clone();
                e.operation = Some("Apply".into());
                applied = Some(out.len());
                out.push(e);
            }
            Some(i) => {
                let target = out[i]
                    .fields_v1
                    .get_or_insert_with(|| FieldsV1(serde_json::json!({})));
                if let Some(FieldsV1(more)) = &entry.fields_v1 {
                    merge_field_sets(&mut target.0, more);
                }
            }
        }
    }
    Some(out)
}

/// Adds the field set `more` to `into` (both managedFields `FieldsV1` trees).
fn merge_field_sets(into: &mut serde_json::Value, more: &serde_json::Value) {
    match (into, more) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge_field_sets(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, more) if into.is_null() => *into = more.clone(),
        _ => {}
    }
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
    /// `known` is the stored object as last seen, if any: when the agent's fields in it are
    /// recorded under a plain create's `Update` entry, they are re-recorded as applied first
    /// (see [`updates_as_applied`]), so that this apply can drop what it no longer sends.
    pub async fn apply_status(
        &self,
        status: &SecretProviderClassPodStatus,
        known: Option<&SecretProviderClassPodStatus>,
    ) -> Result<SecretProviderClassPodStatus, kube::Error> {
        let namespace = status.metadata.namespace.as_deref().unwrap_or_default();
        let name = status.metadata.name.as_deref().unwrap_or_default();
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), namespace);
        if let Some(known) = known
            && let Some(fields) = known
                .metadata
                .managed_fields
                .as_deref()
                .and_then(|f| updates_as_applied(f, names::STATUS_FIELD_MANAGER))
        {
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": known.metadata.resource_version,
                "managedFields": fields,
            }});
            let params = PatchParams {
                field_manager: Some(names::STATUS_FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            if let Err(e) = api.patch(name, &params, &Patch::Merge(&patch)).await {
                // The apply below still writes the right content; only a field it stops
                // sending may stay (the garbage collector drops a stale owner).
                tracing::warn!(%namespace, %name, error = %e, "could not record the pod status's fields as applied");
            }
        }
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

    /// Creates `status` (a plain POST under [`FIELD_MANAGER`]) and returns the stored object,
    /// or `None` when it already exists. The API server creates in about half the time of a
    /// server-side apply, so a volume's first publish tries this first.
    pub async fn create_status(
        &self,
        status: &SecretProviderClassPodStatus,
    ) -> Result<Option<SecretProviderClassPodStatus>, kube::Error> {
        let namespace = status.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<SecretProviderClassPodStatus> =
            Api::namespaced(self.client.clone(), namespace);
        let params = PostParams {
            field_manager: Some(names::STATUS_FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&params, status).await {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the stored `SecretProviderClassPodStatus` `namespace/name`, if any.
    pub async fn get_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretProviderClassPodStatus>, kube::Error> {
        Api::<SecretProviderClassPodStatus>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
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
    use secrets_store_api::names::STATUS_FIELD_MANAGER as FIELD_MANAGER;
    use std::collections::HashMap;

    #[test]
    fn a_creates_update_entry_becomes_the_appliers() {
        let entry = |manager: &str, op: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            api_version: Some("secrets-store.csi.x-k8s.io/v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        let other = entry("kubectl", "Update", serde_json::json!({"f:metadata": {}}));
        let created = entry(
            FIELD_MANAGER,
            "Update",
            serde_json::json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:status": {".": {}}}),
        );
        let applied = entry(
            FIELD_MANAGER,
            "Apply",
            serde_json::json!({"f:metadata": {"f:labels": {"f:b": {}}}}),
        );
        // Nothing to do without an Update entry of ours.
        assert_eq!(
            updates_as_applied(&[other.clone(), applied.clone()], FIELD_MANAGER),
            None
        );
        // Only an Update entry: renamed, others untouched.
        let got = updates_as_applied(&[other.clone(), created.clone()], FIELD_MANAGER).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], other);
        assert_eq!(got[1].operation.as_deref(), Some("Apply"));
        assert_eq!(got[1].fields_v1, created.fields_v1);
        // Both: one Apply entry with the union of the fields.
        let got = updates_as_applied(&[applied, other, created], FIELD_MANAGER).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].operation.as_deref(), Some("Apply"));
        assert_eq!(
            got[0].fields_v1.as_ref().unwrap().0,
            serde_json::json!({
                "f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}},
                "f:status": {".": {}},
            })
        );
    }

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
