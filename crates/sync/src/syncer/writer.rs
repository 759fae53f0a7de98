//! The one write path of synced Secrets, shared by the node agent (a mounted volume's files) and
//! the pod-less sync (a provider answer held in memory): the same names, types, labels, keys,
//! locks and precondition rules whichever caller computed the owners.

use std::collections::BTreeMap;
use std::future::Future;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};
use secrets_store_api::crd::{SecretObject, SecretProviderClass};
use secrets_store_driver::KeyedLocks;
use secrets_store_provider::SecretBytes;

use super::watches::managed_secret_events;
use super::write::{Replace, SecretVersions, SecretWrite, VerifiedVersions};
use super::{Outcome, SyncError, SyncReport};
use crate::desired::desired_secret;
use crate::files::VolumeFiles;

/// Writes the Secrets of a class's `secretObjects` with one field manager, from the watched
/// metadata of the managed Secrets.
#[derive(Clone)]
pub(crate) struct SecretWriter {
    client: Client,
    field_manager: String,
    /// Managed Secrets by identity and version only: their data is read only for the Secrets
    /// this process writes, and only when `verified` cannot vouch for them.
    secrets: SecretVersions,
    verified: VerifiedVersions,
    /// One lock per (namespace, Secret name) being written by this process.
    locks: KeyedLocks<(String, String)>,
}

impl SecretWriter {
    /// A writer applying as `field_manager`, and the future that drives its own watch of the
    /// managed Secrets' metadata (the one [`super::SyncWatches`] keeps for the node agent).
    pub(crate) fn new(client: Client, field_manager: String) -> (Self, BoxFuture<'static, ()>) {
        let (secrets, store) = reflector::store();
        let verified = VerifiedVersions::new();
        let drive = managed_secret_events(&client, store, secrets.clone(), verified.clone())
            .for_each(|_| async {})
            .boxed();
        let writer = Self::with_watch(client, field_manager, secrets, verified);
        (writer, drive)
    }

    /// A writer applying as `field_manager` over a watch of the managed Secrets' metadata that
    /// the caller drives (the node agent's, which also triggers its drift reconciler); `verified`
    /// is kept in step with that watch by the caller.
    pub(super) fn with_watch(
        client: Client,
        field_manager: String,
        secrets: SecretVersions,
        verified: VerifiedVersions,
    ) -> Self {
        Self {
            client,
            field_manager,
            secrets,
            verified,
            locks: KeyedLocks::default(),
        }
    }

    /// The resourceVersion of managed Secret `namespace/name` as the watch last saw it.
    pub(crate) fn watched_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.secrets
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .and_then(|s| s.metadata.resource_version.clone())
    }

    /// Waits until the watch of managed Secrets has listed once.
    pub(crate) async fn ready(&self) {
        let _ = self.secrets.wait_until_ready().await;
    }

    /// Creates or updates every Secret of `class.spec.secretObjects` in the class's namespace
    /// from `files`; `owners` gives the owner references of a Secret by name, computed under
    /// that Secret's lock; `replace` says whose data may be replaced. Every Secret is attempted;
    /// the report says what each write did and the first error, if any, comes back after the
    /// others were written.
    pub(crate) async fn write_class<F, Fut>(
        &self,
        class: &SecretProviderClass,
        files: VolumeFiles<'_>,
        owners: F,
        replace: Replace,
    ) -> (SyncReport, Option<SyncError>)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Vec<OwnerReference>>,
    {
        let mut report = SyncReport::default();
        let mut first_error = None;
        for (index, object) in class.spec.secret_objects.iter().enumerate() {
            match self
                .write_object(class, index, object, files, &owners, replace)
                .await
            {
                Ok(Outcome::Unchanged) => report.unchanged.push(object.secret_name.clone()),
                Ok(Outcome::LeftAlone) => report.left_alone.push(object.secret_name.clone()),
                Ok(Outcome::Applied { data_changed }) => {
                    report.applied.push(object.secret_name.clone());
                    if let Some(data) = data_changed {
                        report.data_changed.push((object.secret_name.clone(), data));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (report, first_error)
    }

    async fn write_object<F, Fut>(
        &self,
        class: &SecretProviderClass,
        index: usize,
        object: &SecretObject,
        files: VolumeFiles<'_>,
        owners: &F,
        replace: Replace,
    ) -> Result<Outcome, SyncError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Vec<OwnerReference>>,
    {
        let namespace = &class.namespace().unwrap_or_default();
        let key = (namespace.to_owned(), object.secret_name.trim().to_owned());
        let _guard = self.locks.lock(&key).await;
        // Read the objects under the lock: a concurrent publish that rotates them then applies
        // after us, so the newest content always lands last.
        let files: std::borrow::Cow<'_, BTreeMap<String, SecretBytes>> = files
            .for_secret(object)
            .await
            .map_err(|source| SyncError::ReadFiles {
                namespace: namespace.to_string(),
                name: object.secret_name.clone(),
                source,
            })?;
        let desired = desired_secret(index, object, &files).map_err(|source| {
            SyncError::InvalidSecretObject {
                namespace: namespace.to_string(),
                class: class.name_any(),
                source: Box::new(source),
            }
        })?;
        let owners = owners(desired.name.clone()).await;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        SecretWrite {
            api: &api,
            namespace,
            desired: &desired,
            owners: &owners,
            field_manager: &self.field_manager,
            replace,
        }
        .run(&self.secrets, &self.verified)
        .await
    }
}
