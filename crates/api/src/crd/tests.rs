use super::*;
use kube::Resource;

/// The SecretProviderClass from the seed walk-through, as shipped in `examples/seed/`.
const SEED_SPC: &str = include_str!("../../../../examples/seed/secretproviderclass.yaml");

#[test]
fn seed_secret_provider_class_deserializes() {
    let spc: SecretProviderClass = serde_yaml::from_str(SEED_SPC).unwrap();
    assert_eq!(
        spc.metadata.name.as_deref(),
        Some("nginx-deployment-aws-secrets")
    );
    assert_eq!(spc.spec.provider, "aws");
    assert_eq!(
        spc.spec.parameters["objects"],
        "- objectName: \"CSI-driver-test-secret\"\n  objectType: \"secretsmanager\"\n"
    );
    let synced = spc.secret_object("foosecret").expect("secret object");
    assert_eq!(synced.type_, "Opaque");
    assert_eq!(
        synced.data,
        vec![SecretObjectData {
            object_name: "CSI-driver-test-secret".into(),
            key: "SECRET_API_KEY".into(),
        }]
    );
    assert!(spc.status.is_none());
}

#[test]
fn class_without_spec_still_decodes() {
    for obj in [
        serde_json::json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass", "metadata": {"name": "a"}}),
        serde_json::json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass", "metadata": {"name": "b"}, "spec": null}),
    ] {
        let spc: SecretProviderClass = serde_json::from_value(obj).unwrap();
        assert_eq!(spc.spec, SecretProviderClassSpec::default());
    }
    let wrong = serde_json::json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass", "metadata": {"name": "c"}, "spec": {"provider": 5}});
    assert!(
        serde_json::from_value::<SecretProviderClass>(wrong).is_err(),
        "a wrongly typed field is still an error"
    );
}

#[test]
fn empty_fields_are_omitted_like_upstream() {
    let spc = SecretProviderClass::new(
        "c",
        SecretProviderClassSpec {
            provider: "aws".into(),
            ..Default::default()
        },
    );
    let json = serde_json::to_value(&spc).unwrap();
    assert_eq!(json["spec"], serde_json::json!({"provider": "aws"}));
    assert_eq!(json["apiVersion"], "secrets-store.csi.x-k8s.io/v1");
}

#[test]
fn pod_status_has_status_and_no_spec() {
    let status = SecretProviderClassPodStatusStatus {
        pod_name: "web-0".into(),
        secret_provider_class_name: "aws-secrets".into(),
        mounted: true,
        target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
        objects: vec![SecretProviderClassObject {
            id: "db".into(),
            version: "v1".into(),
        }],
    };
    let obj = SecretProviderClassPodStatus::for_pod("team-a", status.clone());
    assert_eq!(obj.meta().name.as_deref(), Some("web-0-team-a-aws-secrets"));
    assert_eq!(obj.meta().namespace.as_deref(), Some("team-a"));
    let json = serde_json::to_value(&obj).unwrap();
    assert!(json.get("spec").is_none(), "{json}");
    assert_eq!(json["kind"], "SecretProviderClassPodStatus");
    assert_eq!(json["status"]["secretProviderClassName"], "aws-secrets");
    assert_eq!(json["status"]["objects"][0]["version"], "v1");

    // And an upstream-written object (no spec, mounted omitted when false) reads back.
    let upstream = serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "p-ns-c", "namespace": "ns"},
        "status": {"podName": "p", "secretProviderClassName": "c", "targetPath": "/t"}
    });
    let read: SecretProviderClassPodStatus = serde_json::from_value(upstream).unwrap();
    let st = read.status.unwrap();
    assert!(!st.mounted);
    assert!(st.objects.is_empty());
}

#[test]
fn object_name_matches_upstream_format() {
    assert_eq!(
        SecretProviderClassPodStatus::object_name("pod", "ns", "class"),
        "pod-ns-class"
    );
}

#[test]
fn crds_match_upstream_shape() {
    let mut crds = crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "secretproviderclasses.secrets-store.csi.x-k8s.io",
            "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
            "secretproviderclasssyncs.secrets-store-rs.io",
        ]
    );
    // Our own CRD is not upstream's: its own group, one version, a status subresource.
    let ours = crds.pop().unwrap();
    assert_eq!(ours.spec.group, crate::crd::SYNC_API_GROUP);
    assert_eq!(ours.spec.versions.len(), 1);
    assert!(
        ours.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
    let schema = serde_json::to_string(&ours.spec.versions[0].schema).unwrap();
    assert!(!schema.contains("nullable"), "{schema}");
    for crd in &crds {
        assert_eq!(crd.spec.scope, "Namespaced");
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage, v.deprecated))
            .collect();
        assert_eq!(
            versions,
            [
                ("v1", true, true, None),
                ("v1alpha1", true, false, Some(true))
            ]
        );
        for v in &crd.spec.versions {
            assert!(
                v.subresources.is_none(),
                "upstream has no status subresource"
            );
            let schema = serde_json::to_string(&v.schema).unwrap();
            assert!(!schema.contains("nullable"), "{schema}");
            assert!(!schema.contains("\"default\""), "{schema}");
        }
    }
    let spc_v1 = serde_json::to_value(&crds[0].spec.versions[0].schema).unwrap();
    let spec = &spc_v1["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["parameters"]["additionalProperties"]["type"], "string");
    let data = &spec["secretObjects"]["items"]["properties"]["data"]["items"]["properties"];
    assert_eq!(data["objectName"]["type"], "string");
    assert_eq!(data["key"]["type"], "string");
    let spc_v1alpha1 = serde_json::to_value(&crds[0].spec.versions[1].schema).unwrap();
    let by_pod = &spc_v1alpha1["openAPIV3Schema"]["properties"]["status"]["properties"]["byPod"];
    assert_eq!(by_pod["items"]["properties"]["namespace"]["type"], "string");
    let pod_status = serde_json::to_value(&crds[1].spec.versions[0].schema).unwrap();
    let root = &pod_status["openAPIV3Schema"]["properties"];
    assert!(root.get("spec").is_none(), "{root}");
    assert_eq!(root["status"]["properties"]["mounted"]["type"], "boolean");
}

/// The committed `deploy/crds/*.yaml` must be what the code generates (CI drift check).
#[test]
fn committed_crd_yaml_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for (file, generated) in crd_files() {
        let path = dir.join(&file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is missing or stale; run `cargo run -p secrets-store-api --example gen-crds` \
             to regenerate it and commit the result",
            path.display()
        );
    }
}
