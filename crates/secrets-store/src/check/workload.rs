//! The pod or workload that mounts the class: read from its manifest, then checked against the
//! class (namespace, the CSI volume, and the synced Secret keys its containers read).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::PodSpec;
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_api::labels::DRIVER_NAME;

use super::manifest::{kind_of, read_docs, str_at};
use super::{Outcome, UsageError};

/// The kinds whose manifests carry a pod spec.
const POD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// A pod, or the pod template of a workload.
pub(super) struct Workload {
    /// `Kind/name` for messages.
    pub(super) label: String,
    /// `metadata.namespace`, if the manifest sets one.
    pub(super) namespace: Option<String>,
    /// `metadata.name`.
    pub(super) name: String,
    /// The pod spec (of the template, for workloads).
    pub(super) spec: PodSpec,
}

/// The first pod or workload of the manifest at `path`; an invalid pod spec is reported to `out`
/// and checked as empty.
pub(super) fn read_workload(path: &Path, out: &mut Outcome) -> Result<Workload, UsageError> {
    let missing = || UsageError::Missing {
        path: path.to_path_buf(),
        what: format!("object of kind {}", POD_KINDS.join(", ")),
    };
    let docs = match read_docs(path)? {
        Ok(docs) => docs,
        Err(message) => {
            return Err(UsageError::Yaml {
                path: path.to_path_buf(),
                message,
            });
        }
    };
    let doc = docs
        .iter()
        .find(|d| kind_of(d).is_some_and(|k| POD_KINDS.contains(&k)))
        .ok_or_else(missing)?;
    let kind = kind_of(doc).unwrap_or_default();
    let spec_path: &[&str] = match kind {
        "Pod" => &["spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => &["spec", "template", "spec"],
    };
    let raw = spec_path
        .iter()
        .try_fold(doc, |v, k| v.get(*k))
        .cloned()
        .ok_or_else(missing)?;
    let name = str_at(doc, &["metadata", "name"])
        .unwrap_or("unnamed")
        .to_string();
    let spec = serde_json::from_value::<PodSpec>(raw).unwrap_or_else(|e| {
        out.problem(format!("{kind}/{name}: invalid pod spec: {e}"));
        PodSpec::default()
    });
    Ok(Workload {
        label: format!("{kind}/{name}"),
        namespace: str_at(doc, &["metadata", "namespace"]).map(str::to_string),
        name,
        spec,
    })
}

/// The workload `w` against class `class` (in `class_ns`): same namespace, a read-only volume
/// of ours naming the class, and only Secret keys the class creates.
pub(super) fn check_workload(
    spc: &SecretProviderClass,
    class: &str,
    class_ns: Option<&str>,
    w: &Workload,
    out: &mut Outcome,
) {
    if let (Some(pns), Some(cns)) = (w.namespace.as_deref(), class_ns)
        && pns != cns
    {
        out.problem(format!(
            "{} is in namespace {pns} but the class is in {cns}: a pod only uses classes of its own namespace",
            w.label
        ));
    }
    let volumes: Vec<_> = w
        .spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.csi.as_ref().map(|c| (v.name.as_str(), c)))
        .filter(|(_, c)| c.driver == DRIVER_NAME)
        .collect();
    let ours: Vec<_> = volumes
        .iter()
        .filter(|(_, c)| {
            c.volume_attributes
                .as_ref()
                .and_then(|a| a.get("secretProviderClass"))
                .is_some_and(|n| n == class)
        })
        .collect();
    if ours.is_empty() {
        out.problem(format!(
            "{} has no {DRIVER_NAME} volume with volumeAttributes.secretProviderClass: {class} ({} other {DRIVER_NAME} volume(s))",
            w.label,
            volumes.len()
        ));
    }
    for (vname, csi) in &ours {
        if csi.read_only != Some(true) {
            out.problem(format!(
                "{} volume {vname}: csi.readOnly must be true (the driver refuses writable mounts)",
                w.label
            ));
        } else {
            out.line(format!("{} mounts the class as volume {vname}", w.label));
        }
    }
    // Containers reading synced Secrets must ask for keys the class creates.
    let synced: BTreeMap<&str, Vec<&str>> = spc
        .spec
        .secret_objects
        .iter()
        .map(|so| {
            (
                so.secret_name.as_str(),
                so.data.iter().map(|d| d.key.as_str()).collect(),
            )
        })
        .collect();
    let containers = w
        .spec
        .containers
        .iter()
        .chain(w.spec.init_containers.iter().flatten());
    for c in containers {
        for env in c.env.iter().flatten() {
            let Some(r) = env
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            else {
                continue;
            };
            let Some(keys) = synced.get(r.name.as_str()) else {
                continue;
            };
            if keys.contains(&r.key.as_str()) {
                out.line(format!(
                    "container {} env {} <- Secret {}/{}",
                    c.name, env.name, r.name, r.key
                ));
            } else {
                out.problem(format!(
                    "container {} env {}: Secret {} gets keys [{}] from secretObjects, not {:?}",
                    c.name,
                    env.name,
                    r.name,
                    keys.join(", "),
                    r.key
                ));
            }
        }
    }
}
