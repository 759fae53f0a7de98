//! Table tests for every parameter rule and its message (the accepted forms and robustness
//! checks are in `params_accepted_tests.rs`).

use std::collections::BTreeMap;

use super::*;

pub(super) const ARN_SM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";
pub(super) const ARN_SSM: &str = "arn:aws:ssm:us-east-1:123456789012:parameter/app/p";

pub(super) fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("csi.storage.k8s.io/pod.namespace".into())
        .or_insert_with(|| "ns".into());
    m.entry("csi.storage.k8s.io/pod.name".into())
        .or_insert_with(|| "pod".into());
    m.entry("csi.storage.k8s.io/serviceAccount.name".into())
        .or_insert_with(|| "sa".into());
    m
}

pub(super) fn objects(yaml: &str) -> BTreeMap<String, String> {
    attrs(&[("objects", yaml), ("region", "us-east-1")])
}

pub(super) fn ok(a: BTreeMap<String, String>) -> MountParameters {
    parse(&a, None).unwrap_or_else(|e| panic!("expected valid: {e}"))
}

#[test]
fn regions_that_are_not_aws_region_names_are_refused_before_they_become_hosts() {
    let one = "- objectName: a\n  objectType: secretsmanager\n";
    for bad in [
        "evil.example/x",
        "a.b",
        "us-east-1.evil.com",
        "US-EAST-1",
        "us--east-1",
    ] {
        let e = parse(&attrs(&[("objects", one), ("region", bad)]), None).unwrap_err();
        assert!(
            matches!(e, ParamError::Parameter { key: "region", .. }),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("is not an AWS region name"), "{e}");
        let e = parse(
            &attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("failoverRegion", bad),
            ]),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ParamError::Parameter {
                    key: "failoverRegion",
                    ..
                }
            ),
            "{bad}: {e}"
        );
        // AWS_REGION or the node label stand in for the class's region: checked the same way.
        let e = parse(&attrs(&[("objects", one)]), Some(bad)).unwrap_err();
        assert!(
            matches!(e, ParamError::Parameter { key: "region", .. }),
            "{bad}: {e}"
        );
    }
    // Offline validation and mounts report it as invalid parameters (gRPC InvalidArgument).
    let e = crate::validate(
        &attrs(&[("objects", one), ("region", "evil.example/x")]),
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        secrets_store_provider::ProviderErrorKind::InvalidParameters
    );
    // A long value is not echoed whole.
    let long = format!("us-east-1.{}", "x".repeat(10_000));
    let e = parse(&attrs(&[("objects", one), ("region", &long)]), None).unwrap_err();
    assert!(e.to_string().len() < 400, "{e}");
    let p = ok(attrs(&[
        ("objects", one),
        ("region", "us-gov-west-1"),
        ("failoverRegion", "us-gov-east-1"),
    ]));
    assert_eq!(p.failover_region.as_deref(), Some("us-gov-east-1"));
}

#[test]
fn invalid_parameters_table() {
    let one = "- objectName: a\n  objectType: secretsmanager\n";
    let cases: Vec<(BTreeMap<String, String>, Option<&str>, &str)> = vec![
        (
            attrs(&[("objects", one)]),
            None,
            "parameter region: not set",
        ),
        (
            attrs(&[("objects", one), ("region", "")]),
            Some(""),
            "parameter region: not set",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("failoverRegion", "us-east-1"),
            ]),
            None,
            "failover region cannot be the same as the primary region",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("pathTranslation", "ab"),
            ]),
            None,
            "parameter pathTranslation: must be either 'False' or a single character",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("pathTranslation", "é"),
            ]),
            None,
            "parameter pathTranslation",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("pathTranslation", "/"),
            ]),
            None,
            "parameter pathTranslation",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("usePodIdentity", "yes"),
            ]),
            None,
            "parameter usePodIdentity: \"yes\" is not a boolean",
        ),
        (
            attrs(&[
                ("objects", one),
                ("region", "us-east-1"),
                ("preferredAddressType", "ipv5"),
            ]),
            None,
            "parameter preferredAddressType: \"ipv5\" is not one of ipv4, ipv6, auto",
        ),
        (
            attrs(&[("region", "us-east-1")]),
            None,
            "parameter objects: missing or empty",
        ),
        (objects("   "), None, "parameter objects: missing or empty"),
        (objects("[]"), None, "parameter objects: lists no objects"),
        (objects("~"), None, "parameter objects: lists no objects"),
        (
            objects("- objectName: [a"),
            None,
            "parameter objects: invalid YAML",
        ),
        (
            objects("objectName: a"),
            None,
            "parameter objects: invalid YAML",
        ),
    ];
    for (a, default_region, want) in cases {
        let err = parse(&a, default_region).expect_err(want).to_string();
        assert!(err.contains(want), "want {want:?}, got {err:?}");
    }
}

#[test]
fn invalid_objects_table() {
    // (objects yaml, failover region, expected message fragment)
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "- objectType: secretsmanager",
            None,
            "object \"#0\": objectName: must be specified",
        ),
        (
            "- objectName: a",
            None,
            "object \"a\": objectType: must use objectType when a full ARN is not specified",
        ),
        (
            "- objectName: a\n  objectType: ssm",
            None,
            "object \"a\": objectType: invalid objectType: ssm",
        ),
        (
            "- objectName: a\n  objectType: s3",
            None,
            "objectType: invalid objectType: s3",
        ),
        (
            "- objectName: arn:aws:secretsmanager",
            None,
            "objectName: invalid ARN format",
        ),
        (
            "- objectName: arn:aws:secretsmanager:us-west-2:1:secret:a",
            None,
            "objectName: ARN region must match region us-east-1",
        ),
        (
            "- objectName: arn:aws:s3:us-east-1:1:bucket",
            None,
            "objectName: invalid service in ARN: s3",
        ),
        (
            &const_format(ARN_SM, "ssmparameter"),
            None,
            "objectType: objectType does not match ARN",
        ),
        (
            "- objectName: p\n  objectType: ssmparameter\n  objectVersion: '1'\n  objectVersionLabel: l",
            None,
            "object \"p\": objectVersion: ssm parameters can not specify both objectVersion and objectVersionLabel",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: ..",
            None,
            "object \"a\": objectAlias: path \"..\" can not contain ..",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: ..data",
            None,
            "can not start a component with ..",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: .",
            None,
            "can not contain a . component",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  filePermission: '0999'",
            None,
            "object \"a\": filePermission: \"0999\" is not an octal permission",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  filePermission: '7777'",
            None,
            "filePermission: \"7777\": only permission bits",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  filePermission: rw",
            None,
            "filePermission: \"rw\" is not an octal permission",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n  - objectAlias: x",
            None,
            "object \"a\": jmesPath: entry 0: path must be specified",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n  - path: x",
            None,
            "object \"a\": jmesPath: entry 0 (x): objectAlias must be specified",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n  - path: x\n    objectAlias: '..'",
            None,
            "jmesPath: entry 0 (x): path \"..\" can not contain ..",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n  - path: x\n    objectAlias: y\n    filePermission: '08'",
            None,
            "jmesPath: entry 0 (x): filePermission",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  failoverObject:\n    objectName: b",
            Some("us-west-2"),
            "object \"a\": failoverObject: objectAlias must be specified for objects with failover entries",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  failoverObject:\n    objectName: b",
            None,
            "failoverObject: allowed only when the failoverRegion parameter is set",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  failoverObject:\n    objectName: arn:aws:secretsmanager:us-east-1:1:secret:b",
            Some("us-west-2"),
            "failoverObject.objectName: ARN region must match region us-west-2",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  failoverObject:\n    objectName: arn:aws:ssm:us-west-2:1:parameter/b",
            Some("us-west-2"),
            "failoverObject.objectName: objectType does not match ARN",
        ),
        (
            "- objectName: a\n  objectType: ssmparameter\n  objectAlias: x\n  failoverObject:\n    objectName: b\n    objectVersion: '1'\n    objectVersionLabel: l",
            Some("us-west-2"),
            "failoverObject: ssm parameters can not specify both",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  objectVersion: v1\n  failoverObject:\n    objectName: b\n    objectVersion: v2",
            Some("us-west-2"),
            "failoverObject.objectVersion: object versions must match between primary and failover regions",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n- objectName: a\n  objectType: secretsmanager",
            None,
            "duplicate object name: no object alias, and no version label",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n- objectName: a\n  objectType: secretsmanager\n  objectAlias: x",
            None,
            "duplicate object name: duplicate object alias x, and no version label",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectVersionLabel: L\n- objectName: a\n  objectType: secretsmanager\n  objectVersionLabel: L",
            None,
            "duplicate object name: no object alias, and duplicate version label L",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  objectVersionLabel: L\n- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  objectVersionLabel: L",
            None,
            "duplicate object alias x, and duplicate version label L",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n- objectName: b\n  objectType: secretsmanager\n  objectAlias: x",
            None,
            "object \"b\": objectAlias: duplicate object alias x",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: x\n  jmesPath:\n  - path: p\n    objectAlias: x",
            None,
            "jmesPath: duplicate object alias x in entry p",
        ),
        // Our gaps: same file from different objects.
        (
            "- objectName: a\n  objectType: secretsmanager\n  objectVersionLabel: L1\n- objectName: a\n  objectType: secretsmanager\n  objectVersionLabel: L2",
            None,
            "writes file \"a\", which object \"a\" also writes",
        ),
        (
            "- objectName: a/b\n  objectType: secretsmanager\n- objectName: a_b\n  objectType: ssmparameter",
            None,
            "object \"a_b\": objectAlias: writes file \"a_b\", which object \"a/b\" also writes",
        ),
        (
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath:\n  - path: p\n    objectAlias: b\n- objectName: b\n  objectType: secretsmanager",
            None,
            "writes file \"b\", which object \"a\" also writes",
        ),
    ];
    for (yaml, failover, want) in cases {
        let mut a = objects(yaml);
        if let Some(f) = failover {
            a.insert("failoverRegion".into(), f.to_string());
        }
        let err = parse(&a, None).expect_err(want).to_string();
        assert!(
            err.contains(want),
            "yaml:\n{yaml}\nwant {want:?}\ngot  {err:?}"
        );
    }
}

pub(super) fn const_format(arn: &str, object_type: &str) -> String {
    format!("- objectName: {arn}\n  objectType: {object_type}")
}

/// Every limit of `crate::limits`, through the parameters: a typed error naming the object (or
/// parameter), the limit and the size seen, before any parsing the limit bounds.
#[test]
fn limits_name_the_object_the_limit_and_the_size() {
    use crate::limits::{
        Exceeded, Limit, MAX_JMES_ENTRIES, MAX_JMES_NESTING, MAX_JMES_PATH_BYTES,
        MAX_OBJECTS_YAML_BYTES,
    };
    let jmes = |paths: &[String]| {
        let entries: String = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "    - path: {}\n      objectAlias: f{i}\n",
                    serde_json::json!(p)
                )
            })
            .collect();
        format!("- objectName: db\n  objectType: secretsmanager\n  jmesPath:\n{entries}")
    };
    let limit = |a: BTreeMap<String, String>| match parse(&a, None) {
        Err(ParamError::Limit { scope, exceeded }) => (scope, exceeded),
        other => panic!("{other:?}"),
    };

    let bangs = "!".repeat(MAX_JMES_PATH_BYTES + 1);
    let (scope, exceeded) = limit(objects(&jmes(&["user".into(), bangs.clone()])));
    assert_eq!(scope, "object \"db\": jmesPath entry 1");
    assert_eq!(
        exceeded,
        Exceeded {
            limit: Limit::JmesPathBytes,
            seen: 4097
        }
    );
    let msg = parse(&objects(&jmes(&[bangs])), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "object \"db\": jmesPath entry 0: path is 4097 bytes; the limit is 4096 bytes"
    );

    let parens = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
    let (scope, exceeded) = limit(objects(&jmes(&[parens])));
    assert_eq!(scope, "object \"db\": jmesPath entry 0");
    assert_eq!(
        exceeded,
        Exceeded {
            limit: Limit::JmesNesting,
            seen: 2000
        }
    );
    let bangs = format!("{}a", "!".repeat(MAX_JMES_NESTING + 1));
    assert_eq!(limit(objects(&jmes(&[bangs]))).1.limit, Limit::JmesNesting);

    let many: Vec<String> = (0..=MAX_JMES_ENTRIES).map(|i| format!("k{i}")).collect();
    let (scope, exceeded) = limit(objects(&jmes(&many)));
    assert_eq!(scope, "object \"db\": jmesPath");
    assert_eq!(
        exceeded,
        Exceeded {
            limit: Limit::JmesEntries,
            seen: 101
        }
    );
    assert_eq!(
        ok(objects(&jmes(&many[1..]))).objects[0].jmes.len(),
        MAX_JMES_ENTRIES
    );

    let big = format!(
        "{}{}",
        jmes(&["user".into()]),
        "#".repeat(MAX_OBJECTS_YAML_BYTES)
    );
    let (scope, exceeded) = limit(objects(&big));
    assert_eq!(scope, "parameter objects");
    assert_eq!(
        exceeded,
        Exceeded {
            limit: Limit::ObjectsBytes,
            seen: big.len()
        }
    );

    // Not a limit but the allow-list: the array-doubling expression never reaches evaluation.
    let doubling = format!("@{}", "|[@,@][]".repeat(21));
    let msg = parse(&objects(&jmes(&[doubling])), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("object \"db\": jmesPath: entry 0: invalid jmesPath \"@|[@,@][]"),
        "{msg}"
    );
    assert!(msg.contains("(169 bytes)"), "abbreviated: {msg}");
    assert!(msg.contains("'@' (current node) is not supported"), "{msg}");
}

#[test]
fn uses_pod_identity_reads_the_parameter_as_the_mount_does() {
    for (value, want) in [
        (Some("true"), true),
        (Some("True"), true),
        (Some("1"), true),
        (Some("t"), true),
        (Some("false"), false),
        (Some("0"), false),
        (Some(""), false),
        // Not a boolean: not Pod Identity here; the mount refuses the value itself.
        (Some("yes"), false),
        (None, false),
    ] {
        let params = match value {
            Some(v) => attrs(&[("usePodIdentity", v)]),
            None => attrs(&[]),
        };
        assert_eq!(uses_pod_identity(&params), want, "{value:?}");
    }
}
