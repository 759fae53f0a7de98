//! Malformed SecretProviderClass `spec.parameters`, through `secrets_store_provider_aws::validate`
//! (what `secrets-store check` and every mount run before any network call).

use std::collections::BTreeMap;

use secrets_store_provider::ProviderErrorKind;

use super::{Tally, expect_names};

pub const REGION: &str = "us-east-1";

/// A YAML double-quoted scalar (JSON strings are valid YAML flow scalars, escapes included).
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

pub fn attrs(extra: &[(&str, &str)], objects: &str) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert("objects".into(), objects.into());
    m
}

/// Runs one parameter case: it must be rejected as invalid parameters, naming `needles`.
pub fn reject(
    t: &mut Tally,
    label: impl Into<String>,
    attrs: BTreeMap<String, String>,
    default_region: Option<&'static str>,
    needles: &[&str],
) {
    let input = format!("{default_region:?} {attrs:?}");
    let needles: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
    t.case(
        label,
        input,
        move || match secrets_store_provider_aws::validate(&attrs, default_region) {
            Ok(p) => Err(format!("accepted, {} objects", p.objects.len())),
            Err(e) if e.kind != ProviderErrorKind::InvalidParameters => {
                Err(format!("wrong kind {:?}: {e}", e.kind))
            }
            Err(e) => {
                let n: Vec<&str> = needles.iter().map(String::as_str).collect();
                expect_names(&e.message, &n)
            }
        },
    );
}

pub fn obj(name: &str, extra: &str) -> String {
    format!(
        "- objectName: {}\n  objectType: secretsmanager\n{extra}",
        q(name)
    )
}

/// File names that must never be accepted, whatever `/` translation applies.
fn hostile_single_component() -> Vec<(&'static str, String)> {
    vec![
        ("dotdot", "..".into()),
        ("dot", ".".into()),
        ("reserved-data", "..data".into()),
        ("reserved-data-tmp", "..data_tmp".into()),
        (
            "reserved-timestamp",
            "..2026_01_01_00_00_00.000000000".into(),
        ),
        ("triple-dot", "...".into()),
        ("dotdot-prefix", "..x".into()),
        ("nul-middle", "a\0b".into()),
        ("nul-only", "\0".into()),
        ("nul-trailing", "secret\0".into()),
        ("element-256", "x".repeat(256)),
        ("element-4097", "y".repeat(4097)),
        ("unicode-element-long", "é".repeat(130)),
    ]
}

/// Names that escape or are unclean only when `/` is kept (`pathTranslation: "False"`).
fn hostile_with_slashes() -> Vec<(&'static str, String)> {
    vec![
        ("parent", "../x".into()),
        ("parent-deep", "../../../../etc/shadow".into()),
        ("inner-parent", "a/../../b".into()),
        ("trailing-parent", "a/..".into()),
        ("leading-slash-parent", "/../x".into()),
        ("many-slashes-parent", "////../x".into()),
        ("current-dir", "./a".into()),
        ("inner-current-dir", "a/./b".into()),
        ("double-slash", "a//b".into()),
        ("trailing-slash", "a/".into()),
        ("reserved-under-dir", "x/..data".into()),
        ("dotdot-component", "x/..y/z".into()),
        ("long-element-in-path", format!("a/{}", "b".repeat(256))),
        ("path-over-4096", "a/".repeat(2049)),
        ("nul-in-dir", "a\0/b".into()),
    ]
}

pub fn run() -> usize {
    let mut t = Tally::default();
    let off = [("pathTranslation", "False")];

    // Traversal and junk through every field that becomes a file name.
    for (what, name) in hostile_single_component() {
        reject(
            &mut t,
            format!("alias/{what}"),
            attrs(&[], &obj("db", &format!("  objectAlias: {}\n", q(&name)))),
            Some(REGION),
            &["object \"db\"", "objectAlias"],
        );
        reject(
            &mut t,
            format!("jmes-alias/{what}"),
            attrs(
                &[],
                &obj(
                    "db",
                    &format!(
                        "  jmesPath:\n    - path: user\n      objectAlias: {}\n",
                        q(&name)
                    ),
                ),
            ),
            Some(REGION),
            &["object \"db\"", "jmesPath", "entry 0 (user)"],
        );
        reject(
            &mut t,
            format!("name/{what}"),
            attrs(&[], &obj(&name, "")),
            Some(REGION),
            &["objectName"],
        );
    }
    for (what, name) in hostile_with_slashes() {
        reject(
            &mut t,
            format!("alias-untranslated/{what}"),
            attrs(&off, &obj("db", &format!("  objectAlias: {}\n", q(&name)))),
            Some(REGION),
            &["object \"db\"", "objectAlias"],
        );
        reject(
            &mut t,
            format!("jmes-alias-untranslated/{what}"),
            attrs(
                &off,
                &obj(
                    "db",
                    &format!(
                        "  jmesPath:\n    - path: user\n      objectAlias: {}\n",
                        q(&name)
                    ),
                ),
            ),
            Some(REGION),
            &["object \"db\"", "jmesPath"],
        );
        reject(
            &mut t,
            format!("name-untranslated/{what}"),
            attrs(&off, &obj(&name, "")),
            Some(REGION),
            &["objectName"],
        );
    }

    // YAML that does not parse, or does not have the shape of an object list.
    let bad_yaml = [
        (
            "unclosed-quote",
            "- objectName: \"db\n  objectType: secretsmanager\n",
        ),
        ("unclosed-flow", "- objectName: [db\n"),
        (
            "tab-indent",
            "- objectName: db\n\tobjectType: secretsmanager\n",
        ),
        (
            "bad-indent",
            "- objectName: db\n objectType: secretsmanager\n",
        ),
        (
            "mapping-not-list",
            "objectName: db\nobjectType: secretsmanager\n",
        ),
        ("scalar-not-list", "db\n"),
        ("list-of-scalars", "- db\n- other\n"),
        ("list-of-lists", "- [objectName, db]\n"),
        (
            "duplicate-key",
            "- objectName: a\n  objectName: b\n  objectType: secretsmanager\n",
        ),
        ("undefined-alias", "- objectName: *nothing\n"),
        (
            "unclosed-mapping",
            "- {objectName: db, objectType: secretsmanager\n",
        ),
        ("stray-colon", "- objectName: db: x\n"),
        ("json-broken", "[{\"objectName\": \"db\",]"),
        ("directive-only", "%YAML 1.2\n"),
        (
            "two-documents",
            "- objectName: a\n  objectType: secretsmanager\n---\n- objectName: b\n",
        ),
        (
            "name-list",
            "- objectName: [a, b]\n  objectType: secretsmanager\n",
        ),
        (
            "name-mapping",
            "- objectName: {a: b}\n  objectType: secretsmanager\n",
        ),
        (
            "type-list",
            "- objectName: db\n  objectType: [secretsmanager]\n",
        ),
        (
            "alias-mapping",
            "- objectName: db\n  objectType: secretsmanager\n  objectAlias: {x: 1}\n",
        ),
        (
            "jmes-string",
            "- objectName: db\n  objectType: secretsmanager\n  jmesPath: user\n",
        ),
        (
            "jmes-mapping",
            "- objectName: db\n  objectType: secretsmanager\n  jmesPath: {path: a, objectAlias: b}\n",
        ),
        (
            "jmes-entry-scalar",
            "- objectName: db\n  objectType: secretsmanager\n  jmesPath: [user]\n",
        ),
        (
            "jmes-path-list",
            "- objectName: db\n  objectType: secretsmanager\n  jmesPath:\n    - path: [a]\n      objectAlias: b\n",
        ),
        (
            "failover-string",
            "- objectName: db\n  objectType: secretsmanager\n  failoverObject: other\n",
        ),
        (
            "permission-list",
            "- objectName: db\n  objectType: secretsmanager\n  filePermission: [\"0600\"]\n",
        ),
        (
            "version-mapping",
            "- objectName: db\n  objectType: secretsmanager\n  objectVersion: {id: 1}\n",
        ),
    ];
    for (what, yaml) in bad_yaml {
        reject(
            &mut t,
            format!("yaml/{what}"),
            attrs(&[], yaml),
            Some(REGION),
            &["objects"],
        );
    }
    // Alias bombs, shaped as an object list so that only the alias rule can refuse them (a
    // mapping at the top would be refused for its shape and prove nothing): 7 levels of 10
    // aliases stand for 10^7 scalars; and one plain alias, which is refused all the same.
    let mut bomb = String::from("- objectName: &a lol\n  objectType: secretsmanager\n");
    let levels = ["a", "b", "c", "d", "e", "f", "g"];
    for w in levels.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        bomb.push_str(&format!("  {name}: &{name} [{refs}]\n", name = w[1]));
    }
    let one_alias = "- objectName: a\n  objectType: secretsmanager\n  jmesPath: &j\n    - {path: k, objectAlias: k}\n- objectName: b\n  objectType: secretsmanager\n  jmesPath: *j\n";
    for (what, yaml) in [("billion-laughs", bomb.as_str()), ("one-alias", one_alias)] {
        reject(
            &mut t,
            format!("yaml/{what}"),
            attrs(&[], yaml),
            Some(REGION),
            &[
                "parameter objects",
                "YAML anchors and aliases (&name, *name) are not supported",
            ],
        );
    }
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    reject(
        &mut t,
        "yaml/deep-nesting",
        attrs(&[], &deep),
        Some(REGION),
        &["objects"],
    );

    // Empty or missing object lists.
    for (what, yaml) in [
        ("empty", ""),
        ("blank", "  \n\t\n"),
        ("empty-list", "[]"),
        ("null", "~"),
        ("null-word", "null"),
    ] {
        reject(
            &mut t,
            format!("objects/{what}"),
            attrs(&[], yaml),
            Some(REGION),
            &["parameter objects"],
        );
    }
    reject(
        &mut t,
        "objects/missing",
        BTreeMap::new(),
        Some(REGION),
        &["parameter objects"],
    );

    // Object names and types.
    for (what, ty) in [
        ("vault", "vault"),
        ("capitalised", "SecretsManager"),
        ("ssm-short", "ssm"),
        ("trailing-space", "secretsmanager "),
        ("upper-ssm", "SSMPARAMETER"),
        ("nul", "secrets\0manager"),
    ] {
        let yaml = format!("- objectName: db\n  objectType: {}\n", q(ty));
        reject(
            &mut t,
            format!("type/{what}"),
            attrs(&[], &yaml),
            Some(REGION),
            &["object \"db\"", "objectType"],
        );
    }
    reject(
        &mut t,
        "type/missing",
        attrs(&[], "- objectName: db\n"),
        Some(REGION),
        &["object \"db\"", "objectType"],
    );
    reject(
        &mut t,
        "name/missing",
        attrs(&[], "- objectType: secretsmanager\n"),
        Some(REGION),
        &["#0", "objectName"],
    );
    reject(
        &mut t,
        "name/empty",
        attrs(&[], "- objectName: \"\"\n  objectType: secretsmanager\n"),
        Some(REGION),
        &["#0", "objectName"],
    );
    reject(
        &mut t,
        "name/missing-second",
        attrs(
            &[],
            &format!(
                "{}- objectAlias: x\n  objectType: secretsmanager\n",
                obj("ok", "")
            ),
        ),
        Some(REGION),
        &["#1", "objectName"],
    );
    let arns = [
        (
            "region-mismatch-sm",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
            "ARN region",
        ),
        (
            "region-mismatch-ssm",
            "arn:aws:ssm:us-west-2:123456789012:parameter/db",
            "ARN region",
        ),
        (
            "region-empty",
            "arn:aws:secretsmanager::123456789012:secret:db-AbCdEf",
            "ARN region",
        ),
        (
            "too-few-sections",
            "arn:aws:secretsmanager:us-east-1",
            "invalid ARN",
        ),
        ("only-prefix", "arn:", "invalid ARN"),
        (
            "bad-service",
            "arn:aws:s3:us-east-1:123456789012:bucket",
            "invalid service",
        ),
        (
            "iam-service",
            "arn:aws:iam::123456789012:role/x",
            "ARN region",
        ),
    ];
    for (what, arn, needle) in arns {
        let yaml = format!("- objectName: {}\n", q(arn));
        reject(
            &mut t,
            format!("arn/{what}"),
            attrs(&[], &yaml),
            Some(REGION),
            &[needle, "objectName"],
        );
    }
    let yaml = "- objectName: \"arn:aws:ssm:us-east-1:123456789012:parameter/db\"\n  objectType: secretsmanager\n";
    reject(
        &mut t,
        "arn/type-mismatch",
        attrs(&[], yaml),
        Some(REGION),
        &["objectType does not match ARN"],
    );
    let yaml = "- objectName: \"arn:aws:secretsmanager:eu-west-1:123456789012:secret:db\"\n";
    reject(
        &mut t,
        "arn/region-from-parameter",
        attrs(&[("region", "eu-central-1")], yaml),
        Some(REGION),
        &["eu-central-1", "objectName"],
    );

    super::params_fields::run(&mut t);

    t.finish(150)
}
