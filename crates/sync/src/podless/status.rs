//! What the pod-less sync reports: the `SecretProviderClassSync` object of each opted-in class
//! (conditions Ready and Stale, last sync time, object versions) and Events on the class.
//! Computing the next status is pure; writing it is at the edge.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use secrets_store_api::crd::{
    SecretProviderClass, SecretProviderClassSync, SecretProviderClassSyncSpec,
    SecretProviderClassSyncStatus, SyncedObjectVersion,
};
use secrets_store_provider::ObjectVersion;

use super::{PodlessContext, PodlessError};

/// Condition type: whether the latest attempt synced every Secret.
pub const READY: &str = "Ready";
/// Condition type: whether the Secrets keep the values of an earlier sync because the latest
/// attempt failed.
pub const STALE: &str = "Stale";

/// What one sync attempt achieved, as far as the status is concerned.
pub enum Attempt<'a> {
    /// Every Secret holds what the provider returned.
    Synced {
        /// The provider's object versions.
        versions: &'a [ObjectVersion],
        /// The Secrets written or confirmed.
        secrets: &'a [String],
    },
    /// The attempt failed; the Secrets were left as they were.
    Failed(&'a PodlessError),
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The status after `attempt`, from the `previous` one; `next` is when the next refresh is due.
pub fn next_status(
    previous: Option<&SecretProviderClassSyncStatus>,
    attempt: &Attempt<'_>,
    generation: Option<i64>,
    now: Timestamp,
    next: Timestamp,
) -> SecretProviderClassSyncStatus {
    let now = Time(now);
    let empty = SecretProviderClassSyncStatus::default();
    let previous = previous.unwrap_or(&empty);
    let before = &previous.conditions;
    match attempt {
        Attempt::Synced { versions, secrets } => {
            let message = format!("synced Secrets {} from the provider", secrets.join(", "));
            SecretProviderClassSyncStatus {
                conditions: vec![
                    condition(READY, true, "Synced", message, generation, before, &now),
                    condition(
                        STALE,
                        false,
                        "Synced",
                        "the Secrets hold the provider's current versions".into(),
                        generation,
                        before,
                        &now,
                    ),
                ],
                last_sync_time: Some(now),
                next_refresh_time: Some(Time(next)),
                objects: versions
                    .iter()
                    .map(|v| SyncedObjectVersion {
                        id: v.id.clone(),
                        version: v.version.clone(),
                    })
                    .collect(),
                secrets: secrets.to_vec(),
            }
        }
        Attempt::Failed(error) => {
            let reason = error.reason();
            let stale = match &previous.last_sync_time {
                Some(at) => condition(
                    STALE,
                    true,
                    reason,
                    format!("the Secrets keep the values synced at {}: {error}", at.0),
                    generation,
                    before,
                    &now,
                ),
                None => condition(
                    STALE,
                    false,
                    "NeverSynced",
                    "no Secret was synced yet".into(),
                    generation,
                    before,
                    &now,
                ),
            };
            SecretProviderClassSyncStatus {
                conditions: vec![
                    condition(
                        READY,
                        false,
                        reason,
                        error.to_string(),
                        generation,
                        before,
                        &now,
                    ),
                    stale,
                ],
                next_refresh_time: Some(Time(next)),
                ..previous.clone()
            }
        }
    }
}

/// An owner reference making the class own what the sync writes for it.
pub fn class_owner(class: &SecretProviderClass, controller: bool) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: SecretProviderClass::api_version(&()).into_owned(),
        kind: SecretProviderClass::kind(&()).into_owned(),
        name: class.metadata.name.clone()?,
        uid: class.metadata.uid.clone()?,
        controller: controller.then_some(true),
        block_owner_deletion: None,
    })
}

/// Writes the class's `SecretProviderClassSync` with `status`; the object itself (spec, owned by
/// the class) only when `current` is not already it, so a refresh costs one status write.
pub async fn write(
    ctx: &PodlessContext,
    class: &SecretProviderClass,
    current: Option<&SecretProviderClassSync>,
    service_account: &str,
    status: SecretProviderClassSyncStatus,
) -> Result<(), kube::Error> {
    let namespace = class.namespace().unwrap_or_default();
    let name = class.name_any();
    let api: Api<SecretProviderClassSync> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(&ctx.config.field_manager).force();
    let mut object = SecretProviderClassSync::new(
        &name,
        SecretProviderClassSyncSpec {
            secret_provider_class: name.clone(),
            service_account: service_account.to_string(),
        },
    );
    object.metadata.owner_references = class_owner(class, true).map(|o| vec![o]);
    let up_to_date = current.is_some_and(|c| {
        c.spec == object.spec && c.metadata.owner_references == object.metadata.owner_references
    });
    if !up_to_date {
        api.patch(&name, &params, &Patch::Apply(&object)).await?;
    }
    let status = serde_json::json!({
        "apiVersion": SecretProviderClassSync::api_version(&()),
        "kind": SecretProviderClassSync::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &params, &Patch::Apply(&status))
        .await?;
    Ok(())
}

/// The class's current `SecretProviderClassSync`, if any.
pub async fn read(
    ctx: &PodlessContext,
    class: &SecretProviderClass,
) -> Result<Option<SecretProviderClassSync>, kube::Error> {
    let api: Api<SecretProviderClassSync> =
        Api::namespaced(ctx.client.clone(), &class.namespace().unwrap_or_default());
    api.get_opt(&class.name_any()).await
}

/// The Event for an attempt: Normal when Secrets changed, Warning on a failure, none for a
/// refresh that found everything current.
pub fn event(attempt: &Attempt<'_>, applied: &[String]) -> Option<Event> {
    match attempt {
        Attempt::Synced { .. } if applied.is_empty() => None,
        Attempt::Synced { .. } => Some(Event {
            type_: EventType::Normal,
            reason: "SecretSynced".into(),
            note: Some(format!(
                "pod-less sync wrote Secrets {}",
                applied.join(", ")
            )),
            action: "SyncSecret".into(),
            secondary: None,
        }),
        Attempt::Failed(error) => Some(Event {
            type_: EventType::Warning,
            reason: error.reason().into(),
            note: Some(error.to_string()),
            action: "SyncSecret".into(),
            secondary: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podless::config::InvalidOptIn;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn find<'a>(s: &'a SecretProviderClassSyncStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn conditions_follow_attempts_and_keep_transition_times() {
        let versions = [ObjectVersion {
            id: "db".into(),
            version: "v1".into(),
        }];
        let secrets = ["foosecret".to_string()];
        let error = PodlessError::InvalidOptIn {
            namespace: "ns".into(),
            class: "c".into(),
            source: InvalidOptIn::Interval {
                reason: "bad".into(),
            },
        };

        // A failure before any success: not ready, not stale (nothing to be stale).
        let first = next_status(None, &Attempt::Failed(&error), Some(1), at(10), at(20));
        assert_eq!(find(&first, READY).status, "False");
        assert_eq!(find(&first, READY).reason, "InvalidOptIn");
        assert_eq!(find(&first, STALE).reason, "NeverSynced");
        assert!(first.last_sync_time.is_none());

        let synced = Attempt::Synced {
            versions: &versions,
            secrets: &secrets,
        };
        let ok = next_status(Some(&first), &synced, Some(2), at(30), at(90));
        assert_eq!(find(&ok, READY).status, "True");
        assert_eq!(find(&ok, READY).last_transition_time, Time(at(30)));
        // Stale stayed False: its transition time is the first one.
        assert_eq!(find(&ok, STALE).last_transition_time, Time(at(10)));
        assert_eq!(ok.last_sync_time, Some(Time(at(30))));
        assert_eq!(ok.objects[0].version, "v1");

        // A refresh that succeeds again moves nothing but the sync time.
        let again = next_status(Some(&ok), &synced, Some(2), at(90), at(150));
        assert_eq!(find(&again, READY).last_transition_time, Time(at(30)));
        assert_eq!(again.last_sync_time, Some(Time(at(90))));

        // A failure after a success: stale, keeping the last sync's time and versions.
        let failed = next_status(
            Some(&again),
            &Attempt::Failed(&error),
            Some(3),
            at(100),
            at(130),
        );
        assert_eq!(find(&failed, READY).status, "False");
        assert_eq!(find(&failed, STALE).status, "True");
        assert_eq!(find(&failed, STALE).last_transition_time, Time(at(100)));
        assert!(
            find(&failed, STALE)
                .message
                .contains("keep the values synced at")
        );
        assert_eq!(failed.last_sync_time, Some(Time(at(90))));
        assert_eq!(failed.objects, again.objects);
        assert_eq!(find(&failed, READY).observed_generation, Some(3));
    }

    #[test]
    fn events_only_for_changes_and_failures() {
        let error = PodlessError::NothingToSync {
            namespace: "ns".into(),
            class: "c".into(),
        };
        let synced = Attempt::Synced {
            versions: &[],
            secrets: &[],
        };
        assert!(event(&synced, &[]).is_none());
        let written = event(&synced, &["a".into()]).unwrap();
        assert_eq!(written.type_, EventType::Normal);
        let failed = event(&Attempt::Failed(&error), &[]).unwrap();
        assert_eq!(failed.type_, EventType::Warning);
        assert_eq!(failed.reason, "NoSecretObjects");
    }
}
