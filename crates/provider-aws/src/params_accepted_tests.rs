//! Parameter parsing: accepted classes, defaults, path translation and file-name rules, and
//! random inputs that must never panic (the rejection tables are in `params_tests.rs`).

use super::tests::{ARN_SM, ARN_SSM, attrs, objects, ok};
use super::*;
use crate::limits::MAX_OBJECTS;

#[test]
fn path_traversal_with_translation_off() {
    for (name, want) in [
        ("../etc/passwd", Some("can not contain ..")),
        ("a/../../b", Some("can not contain ..")),
        ("a/..", Some("can not contain ..")),
        ("..", Some("can not contain ..")),
        ("a//b", Some("empty component")),
        ("/abs/path", None),
        ("dir/file", None),
    ] {
        let yaml = format!("- objectName: {name}\n  objectType: ssmparameter");
        let mut a = objects(&yaml);
        a.insert("pathTranslation".into(), "False".into());
        match (parse(&a, None), want) {
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (Ok(p), None) => assert_eq!(p.objects[0].file_name, name.trim_start_matches('/')),
            (r, w) => panic!("{name}: got {r:?}, want {w:?}"),
        }
    }
    // With the default translation, slashes become `_` so `..` cannot escape, but a name
    // starting with `..` is still refused: the driver's atomic writer owns such names (as
    // kubelet's does, so the upstream driver refuses them too).
    let e = parse(
        &objects("- objectName: ../etc/passwd\n  objectType: ssmparameter"),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("\".._etc_passwd\" can not start a component with .."),
        "{e}"
    );
    let p = ok(objects("- objectName: a/../b\n  objectType: ssmparameter"));
    assert_eq!(p.objects[0].file_name, "a_.._b");
    let e = parse(
        &objects("- objectName: '..'\n  objectType: ssmparameter"),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("can not contain .."), "{e}");
}

#[test]
fn full_valid_class() {
    let yaml = format!(
        r#"
- objectName: "MySecret"
  objectType: "secretsmanager"
  filePermission: "0600"
  jmesPath:
    - path: username
      objectAlias: dbuser
    - path: '"my-key"'
      objectAlias: hyphen
      filePermission: "0400"
- objectName: "{ARN_SM}"
  objectAlias: byarn
- objectName: "arn:aws:secretsmanager:us-east-1:123456789012:secret:partial"
  objectVersion: "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"
- objectName: /app/param
  objectType: ssmparameter
  objectVersionLabel: prod
- objectName: "{ARN_SSM}"
  objectVersion: "3"
- objectName: staged
  objectType: secretsmanager
  objectVersionLabel: AWSPREVIOUS
  objectAlias: staged-prev
  failoverObject:
    objectName: "arn:aws:secretsmanager:us-west-2:123456789012:secret:staged"
    objectVersionLabel: AWSPREVIOUS
  objectTemplate: ignored-like-ascp
"#
    );
    let p = parse(
        &attrs(&[
            ("objects", &yaml),
            ("failoverRegion", "us-west-2"),
            ("usePodIdentity", "True"),
            ("preferredAddressType", "IPv6"),
        ]),
        Some("us-east-1"),
    )
    .unwrap();
    assert_eq!(p.region, "us-east-1", "default region used");
    assert_eq!(p.failover_region.as_deref(), Some("us-west-2"));
    assert!(p.use_pod_identity);
    assert_eq!(p.address_type, AddressType::Ipv6);
    assert_eq!(
        p.pod,
        PodInfo {
            namespace: "ns".into(),
            name: "pod".into(),
            service_account: "sa".into()
        }
    );
    let names: Vec<_> = p.objects.iter().map(|o| o.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "MySecret",
            "byarn",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:partial",
            "_app_param",
            "arn:aws:ssm:us-east-1:123456789012:parameter_app_p",
            "staged-prev"
        ]
    );
    let o = &p.objects;
    assert_eq!(o[0].mode, Some(0o600));
    assert_eq!(o[0].jmes[1].path, "\"my-key\"");
    assert_eq!(o[0].jmes[1].mode, Some(0o400));
    assert_eq!(o[1].kind, ObjectKind::SecretsManager);
    assert!(o[1].selector.is_latest());
    assert_eq!(
        o[2].selector.version.as_deref(),
        Some("EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE")
    );
    assert_eq!(o[3].kind, ObjectKind::SsmParameter);
    assert_eq!(o[3].selector.label.as_deref(), Some("prod"));
    assert_eq!(o[4].kind, ObjectKind::SsmParameter);
    let f = o[5].failover.as_ref().expect("failover");
    assert_eq!(f.selector.label.as_deref(), Some("AWSPREVIOUS"));
}

#[test]
fn explicit_region_wins_and_defaults_apply() {
    let p = parse(
        &attrs(&[
            ("objects", "- objectName: a\n  objectType: secretsmanager"),
            ("region", "eu-central-1"),
        ]),
        Some("us-east-1"),
    )
    .unwrap();
    assert_eq!(p.region, "eu-central-1");
    assert!(!p.use_pod_identity);
    assert_eq!(p.address_type, AddressType::Auto);
    assert!(p.failover_region.is_none());
}

#[test]
fn path_translation_variants() {
    for (value, want) in [
        ("", "a_b_c"),
        ("-", "a-b-c"),
        ("false", "a/b/c"),
        ("FALSE", "a/b/c"),
    ] {
        let mut a =
            objects("- objectName: /a/b/c\n  objectType: ssmparameter\n  objectAlias: a/b/c");
        a.insert("pathTranslation".into(), value.into());
        assert_eq!(
            ok(a).objects[0].file_name,
            want,
            "pathTranslation {value:?}"
        );
    }
    assert_eq!(file_name("/x/y", PathTranslation::Replace('_')), "_x_y");
    assert_eq!(file_name("//x/y", PathTranslation::Off), "x/y");
}

#[test]
fn use_pod_identity_accepts_go_booleans() {
    for (s, want) in [
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("0", false),
        ("False", false),
    ] {
        let mut a = objects("- objectName: a\n  objectType: secretsmanager");
        a.insert("usePodIdentity".into(), s.into());
        assert_eq!(ok(a).use_pod_identity, want, "{s}");
    }
}

#[test]
fn same_name_told_apart_by_alias_or_label_is_fine() {
    let p = ok(objects(
        "- objectName: a\n  objectType: secretsmanager\n  objectAlias: cur\n- objectName: a\n  objectType: secretsmanager\n  objectAlias: prev\n  objectVersionLabel: AWSPREVIOUS",
    ));
    assert_eq!(p.objects.len(), 2);
}

#[test]
fn modes() {
    assert_eq!(parse_mode("0600"), Ok(0o600));
    assert_eq!(parse_mode("644"), Ok(0o644));
    assert_eq!(parse_mode("0o640"), Ok(0o640));
    assert!(parse_mode("").is_err());
    assert!(parse_mode("-1").is_err());
    assert!(parse_mode("00000").is_err());
}

/// Aliases go through the provider path contract ([`secrets_store_provider::validate_path`],
/// whose own table is in crates/provider): what it refuses, the class refuses, naming the field.
#[test]
fn aliases_follow_the_path_contract() {
    let with_alias = |alias: &str| {
        let mut a = objects(&format!(
            "- objectName: a\n  objectType: secretsmanager\n  objectAlias: {alias:?}"
        ));
        a.insert("pathTranslation".into(), "False".into());
        parse(&a, None)
    };
    for bad in [
        "..", "a/..", "../a", "a/./b", "a\0b", "..data", "x/..y", "a//b",
    ] {
        let e = with_alias(bad).unwrap_err().to_string();
        assert!(e.contains("objectAlias: path"), "{bad:?}: {e}");
    }
    for good in ["a", "a.b", "a..b", ".hidden", "dir/file", "x y"] {
        let p = with_alias(good).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
        assert_eq!(p.objects[0].file_name, good);
    }
    // As deep as the driver writes, and no deeper.
    let deepest = ["d"; secrets_store_provider::MAX_PATH_DEPTH].join("/");
    assert!(with_alias(&deepest).is_ok());
    let e = with_alias(&format!("{deepest}/e")).unwrap_err().to_string();
    assert!(e.contains("has more than 16 components"), "{e}");
}

/// Fuzz-style robustness: random combinations of fields and hostile values never panic, and
/// whatever is accepted yields safe, distinct file names.
#[test]
fn random_classes_never_panic_and_accepted_names_are_safe() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let names = [
        "a",
        "/a/b",
        "..",
        "../x",
        "a/../b",
        ".",
        "",
        "x\u{0}y",
        "arn:aws:secretsmanager:us-east-1:1:secret:s",
        "arn:aws:ssm:us-east-1:1:parameter/p",
        "arn:aws:ssm:us-west-2:1:parameter/p",
        "arn:",
        "ü/ñ",
        "a//b",
        "..data",
        "'quoted'",
    ];
    let fields = [
        "objectAlias",
        "objectVersion",
        "objectVersionLabel",
        "filePermission",
        "objectType",
    ];
    let values = [
        "x",
        "..",
        "0600",
        "9",
        "ssmparameter",
        "secretsmanager",
        "a/b",
        "",
        "/",
        "L",
    ];
    let mut rng = StdRng::seed_from_u64(0x5ec2e7);
    for _ in 0..3000 {
        let mut yaml = String::new();
        for _ in 0..rng.random_range(1..5) {
            let name = names[rng.random_range(0..names.len())];
            yaml.push_str(&format!("- objectName: {name:?}\n"));
            for _ in 0..rng.random_range(0..4) {
                let f = fields[rng.random_range(0..fields.len())];
                let v = values[rng.random_range(0..values.len())];
                yaml.push_str(&format!("  {f}: {v:?}\n"));
            }
            if rng.random_bool(0.3) {
                let v = values[rng.random_range(0..values.len())];
                yaml.push_str(&format!(
                    "  jmesPath:\n    - path: k\n      objectAlias: {v:?}\n"
                ));
            }
        }
        let mut a = objects(&yaml);
        if rng.random_bool(0.3) {
            a.insert("pathTranslation".into(), "False".into());
        }
        if let Ok(p) = parse(&a, None) {
            let mut seen = std::collections::HashSet::new();
            for o in &p.objects {
                for f in std::iter::once(&o.file_name).chain(o.jmes.iter().map(|j| &j.file_name)) {
                    assert!(
                        secrets_store_provider::validate_path(f).is_ok(),
                        "unsafe {f:?} from\n{yaml}"
                    );
                    assert!(seen.insert(f.clone()), "duplicate {f:?} from\n{yaml}");
                }
            }
        }
    }
}

#[test]
fn a_file_and_a_directory_of_the_same_name_conflict() {
    let cases = [
        // Translation off keeps `/`, so `a` and `a/b` would need `a` to be both a file and a dir.
        "- {objectName: a, objectType: secretsmanager}\n- {objectName: a/b, objectType: secretsmanager}\n",
        "- {objectName: a/b, objectType: secretsmanager}\n- {objectName: a, objectType: secretsmanager}\n",
        "- objectName: a/b/c\n  objectType: secretsmanager\n- objectName: x\n  objectType: secretsmanager\n  jmesPath: [{path: k, objectAlias: a/b}]\n",
    ];
    for yaml in cases {
        let mut a = objects(yaml);
        a.insert("pathTranslation".into(), "False".into());
        let err = parse(&a, None).unwrap_err().to_string();
        assert!(err.contains("conflicts with"), "{yaml}: {err}");
    }
    // Siblings that merely share a prefix are fine.
    let mut a = objects(
        "- {objectName: a/b, objectType: secretsmanager}\n- {objectName: a/bc, objectType: secretsmanager}\n- {objectName: ab, objectType: secretsmanager}\n",
    );
    a.insert("pathTranslation".into(), "False".into());
    assert_eq!(ok(a).objects.len(), 3);
}

#[test]
fn huge_object_lists_are_refused() {
    let yaml: String = (0..=MAX_OBJECTS)
        .map(|i| format!("- {{objectName: s{i}, objectType: secretsmanager}}\n"))
        .collect();
    let err = parse(&objects(&yaml), None).unwrap_err().to_string();
    assert!(
        err.contains(&format!("lists {} objects", MAX_OBJECTS + 1)),
        "{err}"
    );
    let fits: String = (0..MAX_OBJECTS)
        .map(|i| format!("- {{objectName: s{i}, objectType: secretsmanager}}\n"))
        .collect();
    assert_eq!(ok(objects(&fits)).objects.len(), MAX_OBJECTS);
}
