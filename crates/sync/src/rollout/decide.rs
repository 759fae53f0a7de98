//! The rollout decisions as pure functions of watched state: what to do with a managed Secret,
//! and which workloads to patch. Effects (patches, Events) are applied by the callers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::{consumes_secret, digest_annotation, wants_rollout};

/// What the rollout controller does with a managed Secret, from the digest its consumers were
/// last rolled to (stored on the Secret) and the digest of its data now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// First sight (nothing stored): remember the current digest and roll nothing, so a Secret's
    /// creation never restarts anything.
    Record,
    /// The consumers were rolled to this data already (or never needed to be).
    UpToDate,
    /// The data changed since the last rollout: patch the consumers, then remember the digest.
    Roll,
}

/// The step for a Secret whose stored digest is `recorded` and whose data digests to `current`.
pub fn step(recorded: Option<&str>, current: &str) -> Step {
    match recorded.map(str::trim) {
        None | Some("") => Step::Record,
        Some(recorded) if recorded == current => Step::UpToDate,
        Some(_) => Step::Roll,
    }
}

/// Whether a workload (its own annotations and its pod template) must be patched so that its
/// template carries `digest` for Secret `secret`: it opted in, its pods read the Secret, and the
/// template does not carry that digest already. The last rule makes every patch idempotent: a
/// second leader, a retry, or a node agent that saw the same change patches nothing.
pub fn needs_patch(
    workload_annotations: Option<&BTreeMap<String, String>>,
    template: Option<&PodTemplateSpec>,
    secret: &str,
    digest: &str,
) -> bool {
    let Some(template) = template else {
        return false;
    };
    let consumes = template
        .spec
        .as_ref()
        .is_some_and(|s| consumes_secret(s, secret));
    let current = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(&digest_annotation(secret)));
    wants_rollout(workload_annotations) && consumes && current.map(String::as_str) != Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::ROLLOUT_ANNOTATION;
    use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, PodSpec, SecretKeySelector};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn steps_from_stored_and_current_digest() {
        for (recorded, current, want) in [
            (None, "d1", Step::Record),
            (Some(""), "d1", Step::Record),
            (Some("  "), "d1", Step::Record),
            (Some("d1"), "d1", Step::UpToDate),
            (Some(" d1 "), "d1", Step::UpToDate),
            (Some("d1"), "d2", Step::Roll),
            // Anything else stored (edited by hand, truncated) counts as a change: one rollout.
            (Some("garbage"), "d2", Step::Roll),
        ] {
            assert_eq!(step(recorded, current), want, "{recorded:?} -> {current}");
        }
    }

    /// A workload fixture: opted in or not, reading `reads` by secretKeyRef, with an optional
    /// digest annotation for `foosecret` on its template.
    struct Workload {
        annotations: Option<BTreeMap<String, String>>,
        template: Option<PodTemplateSpec>,
    }

    fn workload(opted_in: Option<&str>, reads: &str, digest: Option<&str>) -> Workload {
        let env = EnvVar {
            name: "SECRET_API_KEY".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: reads.into(),
                    key: "SECRET_API_KEY".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            value: None,
        };
        Workload {
            annotations: opted_in
                .map(|v| BTreeMap::from([(ROLLOUT_ANNOTATION.to_string(), v.to_string())])),
            template: Some(PodTemplateSpec {
                metadata: digest.map(|d| ObjectMeta {
                    annotations: Some(BTreeMap::from([(
                        digest_annotation("foosecret"),
                        d.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        env: Some(vec![env]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
        }
    }

    #[test]
    fn patches_only_opted_in_consumers_not_at_the_digest_yet() {
        for (what, w, want) in [
            (
                "opted in, reads it, never rolled",
                workload(Some("true"), "foosecret", None),
                true,
            ),
            (
                "opted in, reads it, older digest",
                workload(Some("true"), "foosecret", Some("d1")),
                true,
            ),
            (
                "opted in, reads it, at the digest",
                workload(Some("true"), "foosecret", Some("d2")),
                false,
            ),
            (
                "not opted in",
                workload(None, "foosecret", Some("d1")),
                false,
            ),
            (
                "opted out",
                workload(Some("false"), "foosecret", Some("d1")),
                false,
            ),
            (
                "opted in, reads another Secret",
                workload(Some("true"), "other", None),
                false,
            ),
            (
                "no pod template",
                Workload {
                    annotations: workload(Some("true"), "foosecret", None).annotations,
                    template: None,
                },
                false,
            ),
        ] {
            assert_eq!(
                needs_patch(
                    w.annotations.as_ref(),
                    w.template.as_ref(),
                    "foosecret",
                    "d2"
                ),
                want,
                "{what}"
            );
        }
    }
}
