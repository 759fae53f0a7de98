//! Builds the CRDs from the Rust types and renders them as YAML.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

use super::{pod_status, spc, sync_status, v1alpha1};

/// The storage version of both CRDs.
const STORAGE_VERSION: &str = "v1";

/// Upstream's two CRDs (`secretproviderclasses` then `secretproviderclasspodstatuses`), each
/// serving v1 (storage) and the deprecated v1alpha1, then our own `secretproviderclasssyncs`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        merged(vec![
            spc::SecretProviderClass::crd(),
            v1alpha1::SecretProviderClass::crd(),
        ]),
        merged(vec![
            pod_status::SecretProviderClassPodStatus::crd(),
            v1alpha1::SecretProviderClassPodStatus::crd(),
        ]),
        ours(sync_status::SecretProviderClassSync::crd()),
    ]
}

/// Our own CRD as kube derives it (status subresource kept: only the controller writes status),
/// without the `title`/`nullable`/`default` schemars adds.
fn ours(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            match_upstream(schema);
        }
    }
    crd
}

/// All CRDs as one multi-document YAML stream (what `secrets-store crds` prints).
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| yaml).collect()
}

/// Each CRD with upstream's file name (`<group>_<plural>.yaml`) and its YAML, as committed
/// under `deploy/crds/`.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .into_iter()
        .map(|crd| {
            let file = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            let body = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
            (file, format!("---\n{body}"))
        })
        .collect()
}

fn merged(versions: Vec<CustomResourceDefinition>) -> CustomResourceDefinition {
    let mut crd = merge_crds(versions, STORAGE_VERSION)
        .expect("our CRD versions share group, names and scope");
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        // Upstream has no status subresource: status is written with the object itself, and
        // clients of either driver rely on that.
        version.subresources = None;
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            match_upstream(schema);
            add_type_meta(schema);
            // kube-derive requires `spec`; upstream accepts objects without one.
            schema.required = None;
        }
    }
    crd
}

/// Declares the fields every object has, as controller-gen does, so the schema lists them.
fn add_type_meta(root: &mut JSONSchemaProps) {
    let props = root.properties.get_or_insert_with(Default::default);
    let typed = |ty: &str, description: &str| JSONSchemaProps {
        type_: Some(ty.to_owned()),
        description: (!description.is_empty()).then(|| description.to_owned()),
        ..Default::default()
    };
    props.insert(
        "apiVersion".into(),
        typed(
            "string",
            "The versioned schema of this representation of an object",
        ),
    );
    props.insert(
        "kind".into(),
        typed("string", "The REST resource this object represents"),
    );
    props.insert("metadata".into(), typed("object", ""));
}

/// Removes what schemars adds but upstream's schema lacks: `nullable` (we never send null, and
/// upstream rejects it) and `default` (defaulting would add empty fields to stored objects that
/// upstream leaves absent), and `title`.
fn match_upstream(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    schema.default = None;
    schema.title = None;
    if let Some(props) = schema.properties.as_mut() {
        props.values_mut().for_each(match_upstream);
    }
    if let Some(items) = schema.items.as_mut() {
        match items {
            JSONSchemaPropsOrArray::Schema(s) => match_upstream(s),
            JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().for_each(match_upstream),
        }
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        match_upstream(s);
    }
}
