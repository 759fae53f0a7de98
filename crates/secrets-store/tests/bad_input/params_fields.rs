//! Malformed SecretProviderClass parameters, continued: duplicates, permissions, jmesPath
//! entries, top-level parameters, failover objects and huge object lists.

use super::Tally;
use super::params::{REGION, attrs, obj, q, reject};

pub fn run(t: &mut Tally) {
    // Duplicates.
    let dups = [
        (
            "same-name",
            format!("{}{}", obj("db", ""), obj("db", "")),
            "duplicate object name",
        ),
        (
            "same-name-same-alias",
            format!(
                "{}{}",
                obj("db", "  objectAlias: a\n"),
                obj("db", "  objectAlias: a\n")
            ),
            "duplicate object alias",
        ),
        (
            "same-name-same-label",
            format!(
                "{}{}",
                obj("db", "  objectVersionLabel: L\n"),
                obj("db", "  objectVersionLabel: L\n")
            ),
            "duplicate version label",
        ),
        (
            "same-alias",
            format!(
                "{}{}",
                obj("a", "  objectAlias: x\n"),
                obj("b", "  objectAlias: x\n")
            ),
            "duplicate object alias x",
        ),
        (
            "jmes-alias-equals-alias",
            format!(
                "{}{}",
                obj("a", "  objectAlias: x\n"),
                obj("b", "  jmesPath:\n    - path: p\n      objectAlias: x\n")
            ),
            "duplicate object alias x",
        ),
        (
            "jmes-aliases",
            obj(
                "a",
                "  jmesPath:\n    - path: p\n      objectAlias: k\n    - path: q\n      objectAlias: k\n",
            ),
            "duplicate object alias k",
        ),
        (
            "translated-collision",
            format!("{}{}", obj("a/b", ""), obj("a_b", "")),
            "writes file \"a_b\"",
        ),
        (
            "alias-equals-name",
            format!("{}{}", obj("x", ""), obj("y", "  objectAlias: x\n")),
            "writes file",
        ),
        (
            "jmes-equals-name",
            format!(
                "{}{}",
                obj("k", ""),
                obj("j", "  jmesPath:\n    - path: p\n      objectAlias: k\n")
            ),
            "writes file",
        ),
    ];
    for (what, yaml, needle) in dups {
        reject(
            t,
            format!("duplicate/{what}"),
            attrs(&[], &yaml),
            Some(REGION),
            &["object \"", needle],
        );
    }
    let tr = [("pathTranslation", "-")];
    reject(
        t,
        "duplicate/custom-translation",
        attrs(&tr, &format!("{}{}", obj("a/b", ""), obj("a-b", ""))),
        Some(REGION),
        &["writes file \"a-b\""],
    );

    // Permissions.
    for (what, perm) in [
        ("decimal-nine", "999"),
        ("eight", "0800"),
        ("letters", "abc"),
        ("negative", "-1"),
        ("setuid", "4755"),
        ("sticky", "01777"),
        ("five-digits", "12345"),
        ("hex", "0x1ff"),
        ("leading-space", " 0600"),
        ("inner-space", "06 00"),
        ("empty-prefix", "0o"),
        ("symbolic", "rw-r--r--"),
        ("unicode-digit", "０６００"),
        ("too-big-octal", "0o1000"),
    ] {
        reject(
            t,
            format!("permission/{what}"),
            attrs(&[], &obj("db", &format!("  filePermission: {}\n", q(perm)))),
            Some(REGION),
            &["object \"db\"", "filePermission"],
        );
    }
    for (what, perm) in [
        ("jmes-nine", "0900"),
        ("jmes-word", "readonly"),
        ("jmes-setgid", "2700"),
    ] {
        let extra = format!(
            "  jmesPath:\n    - path: p\n      objectAlias: k\n      filePermission: {}\n",
            q(perm)
        );
        reject(
            t,
            format!("permission/{what}"),
            attrs(&[], &obj("db", &extra)),
            Some(REGION),
            &["object \"db\"", "jmesPath", "filePermission"],
        );
    }

    // jmesPath entries.
    for (what, extra, needle) in [
        (
            "missing-path",
            "  jmesPath:\n    - objectAlias: k\n",
            "path must be specified",
        ),
        (
            "missing-alias",
            "  jmesPath:\n    - path: p\n",
            "objectAlias must be specified",
        ),
        (
            "unquoted-hyphen",
            "  jmesPath:\n    - path: my-key\n      objectAlias: k\n",
            "must be quoted",
        ),
        (
            "unclosed-bracket",
            "  jmesPath:\n    - path: \"a[\"\n      objectAlias: k\n",
            "invalid jmesPath",
        ),
        (
            "trailing-dot",
            "  jmesPath:\n    - path: \"a.\"\n      objectAlias: k\n",
            "invalid jmesPath",
        ),
        (
            "unclosed-quote",
            "  jmesPath:\n    - path: '\"abc'\n      objectAlias: k\n",
            "invalid jmesPath",
        ),
        (
            "pipe-only",
            "  jmesPath:\n    - path: \"|\"\n      objectAlias: k\n",
            "invalid jmesPath",
        ),
    ] {
        reject(
            t,
            format!("jmes/{what}"),
            attrs(&[], &obj("db", extra)),
            Some(REGION),
            &["object \"db\"", needle],
        );
    }

    // Top-level parameters.
    let one = obj("db", "");
    reject(
        t,
        "param/no-region",
        attrs(&[], &one),
        None,
        &["parameter region"],
    );
    reject(
        t,
        "param/empty-region-no-default",
        attrs(&[("region", "")], &one),
        None,
        &["parameter region"],
    );
    reject(
        t,
        "param/failover-same",
        attrs(
            &[("region", "eu-west-1"), ("failoverRegion", "eu-west-1")],
            &one,
        ),
        Some(REGION),
        &["parameter failoverRegion"],
    );
    reject(
        t,
        "param/failover-same-as-default",
        attrs(&[("failoverRegion", REGION)], &one),
        Some(REGION),
        &["parameter failoverRegion"],
    );
    for (what, v) in [
        ("two-chars", "ab"),
        ("slash", "/"),
        ("multibyte", "é"),
        ("true-word", "true"),
        ("emoji", "🔑"),
    ] {
        reject(
            t,
            format!("param/translation-{what}"),
            attrs(&[("pathTranslation", v)], &one),
            Some(REGION),
            &["parameter pathTranslation"],
        );
    }
    for (what, v) in [
        ("yes", "yes"),
        ("two", "2"),
        ("on", "on"),
        ("padded", " true"),
    ] {
        reject(
            t,
            format!("param/pod-identity-{what}"),
            attrs(&[("usePodIdentity", v)], &one),
            Some(REGION),
            &["parameter usePodIdentity"],
        );
    }
    for (what, v) in [("ipv5", "ipv5"), ("dual", "dualstack"), ("v4", "v4")] {
        reject(
            t,
            format!("param/address-{what}"),
            attrs(&[("preferredAddressType", v)], &one),
            Some(REGION),
            &["parameter preferredAddressType"],
        );
    }

    // Failover objects.
    let fo = "  objectAlias: db\n  failoverObject:\n    objectName: \"arn:aws:secretsmanager:us-west-2:123456789012:secret:db\"\n";
    let fr = [("failoverRegion", "us-west-2")];
    reject(
        t,
        "failover/no-failover-region",
        attrs(&[], &obj("db", fo)),
        Some(REGION),
        &["object \"db\"", "failoverObject", "failoverRegion"],
    );
    reject(
        t,
        "failover/no-alias",
        attrs(
            &fr,
            &obj("db", "  failoverObject:\n    objectName: other\n"),
        ),
        Some(REGION),
        &["object \"db\"", "failoverObject", "objectAlias"],
    );
    reject(
        t,
        "failover/wrong-region",
        attrs(&[("failoverRegion", "ap-south-1")], &obj("db", fo)),
        Some(REGION),
        &["failoverObject.objectName", "ARN region"],
    );
    reject(
        t,
        "failover/version-mismatch",
        attrs(&fr, &obj("db", &format!("{fo}    objectVersion: v2\n"))),
        Some(REGION),
        &["failoverObject.objectVersion"],
    );
    reject(
        t,
        "failover/kind-mismatch",
        attrs(
            &fr,
            &obj(
                "db",
                "  objectAlias: db\n  failoverObject:\n    objectName: \"arn:aws:ssm:us-west-2:123456789012:parameter/db\"\n",
            ),
        ),
        Some(REGION),
        &["failoverObject.objectName"],
    );
    let ssm_both = "- objectName: p\n  objectType: ssmparameter\n  objectVersion: \"3\"\n  objectVersionLabel: L\n";
    reject(
        t,
        "ssm/version-and-label",
        attrs(&[], ssm_both),
        Some(REGION),
        &["object \"p\"", "objectVersion"],
    );

    // A list at the limit with one bad entry far down: the error names that entry.
    let mut yaml = String::new();
    for i in 0..1_000 {
        let kind = if i == 999 { "nope" } else { "ssmparameter" };
        yaml.push_str(&format!("- objectName: obj-{i}\n  objectType: {kind}\n"));
    }
    reject(
        t,
        "huge/1000-bad-at-999",
        attrs(&[], &yaml),
        Some(REGION),
        &["object \"obj-999\"", "objectType"],
    );
    let mut yaml = String::new();
    for i in 0..1_000 {
        yaml.push_str(&obj(&format!("o{}", i % 999), ""));
    }
    reject(
        t,
        "huge/duplicate-at-end",
        attrs(&[], &yaml),
        Some(REGION),
        &["object \"o0\"", "duplicate object name"],
    );
    // Longer lists are refused before any object is looked at: they cannot fit one volume.
    // Past 64 KiB of text the YAML is not even parsed.
    for (n, needle) in [
        (
            1_001usize,
            "lists 1001 objects; the limit is 1000 per class",
        ),
        (5_000, "bytes; the limit is 65536 bytes"),
        (20_000, "bytes; the limit is 65536 bytes"),
    ] {
        let yaml: String = (0..n).map(|i| obj(&format!("o{i}"), "")).collect();
        reject(
            t,
            format!("huge/{n}-objects"),
            attrs(&[], &yaml),
            Some(REGION),
            &["parameter objects", needle],
        );
    }
}
