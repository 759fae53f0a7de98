//! One SecretProviderClass: its shape, the AWS provider's own validation (the same `validate` a
//! mount runs), and the `objectName → file → Secret/key` mapping it produces.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use secrets_store_api::crd::SecretProviderClass;
use secrets_store_provider_aws::MountParameters;
use serde_json::Value;

use super::dry_run::dry_run;
use super::manifest::str_at;
use super::secret_objects::check_secret_objects;
use super::workload::{Workload, check_workload};
use super::{CheckArgs, EXIT_OK, Outcome};

/// Region assumed when neither the class, `--region` nor `AWS_REGION` names one (in a cluster the
/// node's `topology.kubernetes.io/region` label would).
const STAND_IN_REGION: &str = "us-east-1";

/// Checks the class document `doc` (and `workload`, if given, against it), reporting to `out`.
pub(super) async fn check_class(
    args: &CheckArgs,
    doc: &Value,
    workload: Option<&Workload>,
    out: &mut Outcome,
) {
    let api_version = str_at(doc, &["apiVersion"]).unwrap_or_default();
    let spc: SecretProviderClass = match serde_json::from_value(doc.clone()) {
        Ok(spc) => spc,
        Err(e) => {
            out.problem(format!(
                "SecretProviderClass: does not match the schema: {e}"
            ));
            return;
        }
    };
    let name = spc.metadata.name.clone().unwrap_or_default();
    let class_ns = spc.metadata.namespace.clone();
    out.line(format!(
        "SecretProviderClass {}{name} (provider {:?})",
        class_ns
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        spc.spec.provider
    ));
    if !matches!(
        api_version,
        "secrets-store.csi.x-k8s.io/v1" | "secrets-store.csi.x-k8s.io/v1alpha1"
    ) {
        out.problem(format!(
            "apiVersion {api_version:?}: expected secrets-store.csi.x-k8s.io/v1"
        ));
    }
    if name.is_empty() {
        out.problem("metadata.name is empty");
    }
    if spc.spec.provider != secrets_store_provider_aws::PROVIDER_NAME {
        out.problem(format!(
            "spec.provider {:?}: only the built-in \"aws\" provider can be checked",
            spc.spec.provider
        ));
        return;
    }

    // The attributes a mount would pass: the parameters plus what kubelet adds about the pod.
    let namespace = workload
        .and_then(|w| w.namespace.clone())
        .or(class_ns.clone())
        .unwrap_or_else(|| "default".into());
    let mut attrs = spc.spec.parameters.clone();
    attrs.insert("csi.storage.k8s.io/pod.namespace".into(), namespace.clone());
    attrs.insert(
        "csi.storage.k8s.io/pod.name".into(),
        workload.map_or_else(|| "check".into(), |w| w.name.clone()),
    );
    attrs.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        workload
            .and_then(|w| w.spec.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
    );
    let class_region = attrs.get("region").is_some_and(|r| !r.is_empty());
    let default_region = match (&args.region, class_region) {
        (Some(r), _) if !r.is_empty() => Some(r.clone()),
        (_, true) => None,
        _ => {
            out.line(format!(
                "note: no region in the class, --region or AWS_REGION; checking as if it were \
                 {STAND_IN_REGION} (in a cluster the node's topology.kubernetes.io/region label decides)"
            ));
            Some(STAND_IN_REGION.to_string())
        }
    };
    let params = match secrets_store_provider_aws::validate(&attrs, default_region.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            out.problem(e.message);
            return;
        }
    };
    print_mapping(&spc, &params, out);
    let file_names: Vec<String> = params
        .objects
        .iter()
        .flat_map(|o| {
            std::iter::once(o.file_name.clone()).chain(o.jmes.iter().map(|j| j.file_name.clone()))
        })
        .collect();
    check_secret_objects(&spc, &file_names, None, out);
    if let Some(w) = workload {
        check_workload(&spc, &name, class_ns.as_deref(), w, out);
    }
    if args.dry_run && out.code == EXIT_OK {
        dry_run(&spc, &params, out).await;
    }
}

/// `objectName → file → Secret/key` lines, the mapping users most often get wrong.
fn print_mapping(spc: &SecretProviderClass, params: &MountParameters, out: &mut Outcome) {
    // file name → the Secret keys filled from it.
    let mut targets: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for so in &spc.spec.secret_objects {
        for d in &so.data {
            targets
                .entry(d.object_name.as_str())
                .or_default()
                .push(format!("Secret {}/{}", so.secret_name, d.key));
        }
    }
    let arrow = |file: &str| match targets.get(file) {
        Some(t) => format!(" -> {}", t.join(", ")),
        None => String::new(),
    };
    out.line(format!("region {}", params.region));
    if let Some(f) = &params.failover_region {
        out.line(format!("failover region {f}"));
    }
    for o in &params.objects {
        let mut version = String::new();
        if let Some(v) = &o.selector.version {
            let _ = write!(version, " version {v}");
        }
        if let Some(l) = &o.selector.label {
            let _ = write!(version, " label {l}");
        }
        out.line(format!(
            "  {} ({}{version}) -> file {}{}",
            o.name,
            o.kind,
            o.file_name,
            arrow(&o.file_name)
        ));
        for j in &o.jmes {
            out.line(format!(
                "    jmesPath {} -> file {}{}",
                j.path,
                j.file_name,
                arrow(&j.file_name)
            ));
        }
        if let Some(f) = &o.failover {
            out.line(format!("    failover object {}", f.name));
        }
    }
    if !spc.spec.secret_objects.is_empty() {
        out.line(
            "note: secretObjects are synced only with the chart value syncSecret.enabled=true",
        );
    }
}
