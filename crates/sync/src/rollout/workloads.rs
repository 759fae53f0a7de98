//! Patching the opted-in workloads of a Secret to a digest, with a `SecretChangedRollout` Event
//! on each: the one effect both rollout callers (node agent, controller) share.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use secrets_store_provider::SecretBytes;

use super::key::{DigestKey, KeyError};
use super::{data_digest, digest_annotation, needs_patch};

/// Patches opted-in workloads when a synced Secret's data changes.
#[derive(Clone)]
pub struct Rollout {
    client: Client,
    key: DigestKey,
    recorder: Recorder,
}

/// Why a rollout could not be triggered. Never contains the key or Secret data.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The per-cluster digest key is not available: nothing was rolled.
    #[error("rolling out consumers of Secret {namespace}/{secret}: {source}")]
    Key {
        /// Namespace of the changed Secret.
        namespace: String,
        /// Name of the changed Secret.
        secret: String,
        /// Why there is no key.
        source: KeyError,
    },
    /// Listing or patching the workloads failed.
    #[error("rolling out consumers of Secret {namespace}/{secret}: {source}")]
    Workloads {
        /// Namespace of the changed Secret.
        namespace: String,
        /// Name of the changed Secret.
        secret: String,
        /// The client error.
        source: kube::Error,
    },
}

impl Rollout {
    /// Rolls workloads using the per-cluster digest key in `key_namespace` (see [`DigestKey`]).
    pub fn new(client: Client, key_namespace: &str, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            key: DigestKey::new(client.clone(), key_namespace),
            client,
        }
    }

    /// The digest key this rolls with.
    pub fn key(&self) -> &DigestKey {
        &self.key
    }

    /// Loads the digest key now (at start, so that a malformed one is reported early).
    pub async fn load_key(&self) -> Result<(), KeyError> {
        self.key.get().await.map(|_| ())
    }

    /// Rolls every opted-in Deployment, StatefulSet and DaemonSet in `namespace` that consumes
    /// `secret`, unless its template already carries the digest of `data` (the node agent's
    /// path). Returns what it patched as `Kind/name`.
    pub async fn secret_changed(
        &self,
        namespace: &str,
        secret: &str,
        data: &BTreeMap<String, SecretBytes>,
    ) -> Result<Vec<String>, RolloutError> {
        let key = self.key.get().await.map_err(|source| RolloutError::Key {
            namespace: namespace.into(),
            secret: secret.into(),
            source,
        })?;
        let digest = data_digest(key.expose(), secret, data);
        self.roll_to(namespace, secret, &digest, &|| true)
            .await
            .map_err(|source| RolloutError::Workloads {
                namespace: namespace.into(),
                secret: secret.into(),
                source,
            })
    }

    /// Patches every opted-in workload in `namespace` that consumes `secret` and whose template
    /// does not carry `digest` yet (the workloads are listed fresh: a decision on a stale cache
    /// could miss one). `may_write` is asked before each patch (the controller's leadership);
    /// once it says no, nothing more is patched. Returns what it patched as `Kind/name`.
    pub async fn roll_to(
        &self,
        namespace: &str,
        secret: &str,
        digest: &str,
        may_write: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<String>, kube::Error> {
        let mut patched = Vec::new();
        patched.extend(
            self.roll::<Deployment>(namespace, secret, digest, may_write, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await?,
        );
        patched.extend(
            self.roll::<StatefulSet>(namespace, secret, digest, may_write, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await?,
        );
        patched.extend(
            self.roll::<DaemonSet>(namespace, secret, digest, may_write, |d| {
                d.spec.as_ref().map(|s| &s.template)
            })
            .await?,
        );
        Ok(patched)
    }

    async fn roll<K>(
        &self,
        namespace: &str,
        secret: &str,
        digest: &str,
        may_write: &(dyn Fn() -> bool + Send + Sync),
        template: impl Fn(&K) -> Option<&PodTemplateSpec>,
    ) -> Result<Vec<String>, kube::Error>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let annotation = digest_annotation(secret);
        let mut patched = Vec::new();
        for workload in api.list(&ListParams::default()).await? {
            if !needs_patch(
                workload.meta().annotations.as_ref(),
                template(&workload),
                secret,
                digest,
            ) {
                continue;
            }
            if !may_write() {
                break;
            }
            let name = workload.meta().name.clone().unwrap_or_default();
            // A merge patch of the one annotation: the same value from anyone is no change at
            // all, so the workload controller rolls once however many callers see the change.
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {&annotation: digest}}}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let note = format!(
                "synced Secret {secret} changed; rolling the pods so their environment picks up the new value"
            );
            let event = Event {
                type_: EventType::Normal,
                reason: "SecretChangedRollout".into(),
                note: Some(note),
                action: "Rollout".into(),
                secondary: None,
            };
            if let Err(e) = self
                .recorder
                .publish(&event, &workload.object_ref(&()))
                .await
            {
                tracing::warn!(error = %e, workload = %name, "could not record rollout event");
            }
            patched.push(format!("{}/{name}", K::kind(&())));
        }
        Ok(patched)
    }
}
