//! Malformed kubelet volume contexts: `VolumeContext::parse`, then the pod's token as the AWS
//! provider reads it from the merged attributes (`identity::token_for`).

use std::collections::{BTreeMap, HashMap};

use secrets_store_driver::VolumeContext;
use secrets_store_driver::{
    EPHEMERAL_KEY, POD_NAME_KEY, POD_NAMESPACE_KEY, POD_UID_KEY, SECRET_PROVIDER_CLASS_KEY,
    SERVICE_ACCOUNT_NAME_KEY, TOKENS_KEY,
};
use secrets_store_provider_aws::{IRSA_AUDIENCE, POD_IDENTITY_AUDIENCE, token_for};

use super::{Tally, expect_names};

/// A distinctive token text, so any echo of it in a message or Debug output is detectable.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.TOKEN-MUST-NOT-LEAK.c2lnbmF0dXJl";

fn base() -> HashMap<String, String> {
    [
        (SECRET_PROVIDER_CLASS_KEY, "spc"),
        (POD_NAME_KEY, "web-0"),
        (POD_NAMESPACE_KEY, "team-a"),
        (POD_UID_KEY, "0b7e2b1e-1111-2222-3333-444455556666"),
        (SERVICE_ACCOUNT_NAME_KEY, "web"),
        (EPHEMERAL_KEY, "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn sorted(m: &HashMap<String, String>) -> BTreeMap<&String, &String> {
    m.iter().collect()
}

/// The volume context itself must be rejected, naming `needle`.
fn reject_context(
    t: &mut Tally,
    label: impl Into<String>,
    vc: HashMap<String, String>,
    needle: &str,
) {
    let needle = needle.to_string();
    t.case(
        label,
        format!("ctx {:?}", sorted(&vc)),
        move || match VolumeContext::parse(&vc, &HashMap::new()) {
            Ok(_) => Err("accepted".into()),
            Err(e) => {
                let msg = e.to_string();
                expect_names(&msg, &["invalid volume context", &needle])
            }
        },
    );
}

/// The context parses, but the token the provider needs cannot be had; the error names the
/// attribute or the audience and never echoes the token text.
fn reject_token(
    t: &mut Tally,
    label: impl Into<String>,
    tokens: &str,
    in_secrets: bool,
    audience: &'static str,
    needle: &str,
) {
    let mut vc = base();
    let mut secrets = HashMap::new();
    if in_secrets {
        secrets.insert(TOKENS_KEY.to_string(), tokens.to_string());
    } else {
        vc.insert(TOKENS_KEY.to_string(), tokens.to_string());
    }
    let needle = needle.to_string();
    t.case(
        label,
        format!("token {in_secrets} {audience} {tokens:?}"),
        move || {
            let ctx = VolumeContext::parse(&vc, &secrets).map_err(|e| format!("context: {e}"))?;
            if format!("{ctx:?}").contains("TOKEN-MUST-NOT-LEAK") {
                return Err("token in Debug output".into());
            }
            let attrs = ctx.attributes(&BTreeMap::new());
            match token_for(&attrs, audience) {
                Ok(_) => Err("a token was accepted".into()),
                Err(e) => {
                    let msg = e.to_string();
                    if msg.contains("TOKEN-MUST-NOT-LEAK") {
                        return Err("token echoed in the error".into());
                    }
                    expect_names(&msg, &[&needle])
                }
            }
        },
    );
}

pub fn run() -> usize {
    let mut t = Tally::default();
    let required = [
        (SECRET_PROVIDER_CLASS_KEY, "secretProviderClass"),
        (POD_NAME_KEY, "pod.name"),
        (POD_NAMESPACE_KEY, "pod.namespace"),
        (POD_UID_KEY, "pod.uid"),
    ];
    for (key, needle) in required {
        let mut vc = base();
        vc.remove(key);
        reject_context(&mut t, format!("missing/{key}"), vc, needle);
        let mut vc = base();
        vc.insert(key.into(), String::new());
        reject_context(&mut t, format!("empty/{key}"), vc, needle);
    }
    let mut vc = HashMap::new();
    vc.insert(TOKENS_KEY.to_string(), TOKEN.to_string());
    reject_context(
        &mut t,
        "missing/everything-but-tokens",
        vc,
        "secretProviderClass",
    );
    reject_context(
        &mut t,
        "missing/everything",
        HashMap::new(),
        "secretProviderClass",
    );
    // Keys that differ only in case or spacing are not the keys kubelet sends.
    for (what, from, to) in [
        (
            "class-case",
            SECRET_PROVIDER_CLASS_KEY,
            "SecretProviderClass",
        ),
        (
            "class-space",
            SECRET_PROVIDER_CLASS_KEY,
            "secretProviderClass ",
        ),
        ("uid-prefix", POD_UID_KEY, "csi.storage.k8s.io/pod.UID"),
        (
            "namespace-typo",
            POD_NAMESPACE_KEY,
            "csi.storage.k8s.io/pod.namspace",
        ),
    ] {
        let mut vc = base();
        let v = vc.remove(from).unwrap();
        vc.insert(to.into(), v);
        let needle = from.rsplit('/').next().unwrap();
        reject_context(&mut t, format!("renamed/{what}"), vc, needle);
    }
    for (what, v) in [
        ("yes", "yes"),
        ("one", "1"),
        ("padded", " true"),
        ("mixed-case", "tRUE"),
        ("nul", "true\0"),
        ("word", "always"),
    ] {
        let mut vc = base();
        vc.insert(EPHEMERAL_KEY.into(), v.into());
        reject_context(&mut t, format!("ephemeral/{what}"), vc, "ephemeral");
    }

    // Tokens: kubelet sends `{"<audience>": {"token": "...", "expirationTimestamp": "..."}}`.
    let bad_json = [
        ("not-json", TOKEN.to_string()),
        (
            "truncated",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"{TOKEN}\""),
        ),
        ("array", format!("[\"{TOKEN}\"]")),
        ("string", format!("\"{TOKEN}\"")),
        ("number", "42".to_string()),
        ("null", "null".to_string()),
        (
            "entry-string",
            format!("{{\"{IRSA_AUDIENCE}\":\"{TOKEN}\"}}"),
        ),
        ("entry-number", format!("{{\"{IRSA_AUDIENCE}\":7}}")),
        (
            "token-number",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":7}}}}"),
        ),
        (
            "token-missing",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"tok\":\"{TOKEN}\"}}}}"),
        ),
        (
            "trailing-garbage",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"{TOKEN}\"}}}}x"),
        ),
        (
            "single-quotes",
            format!("{{'{IRSA_AUDIENCE}':{{'token':'{TOKEN}'}}}}"),
        ),
        (
            "yaml-not-json",
            format!("{IRSA_AUDIENCE}:\n  token: {TOKEN}\n"),
        ),
        (
            "bad-escape",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"{TOKEN}\\q\"}}}}"),
        ),
        ("bool", "true".to_string()),
        (
            "deep-nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "lone-surrogate",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"\\ud800{TOKEN}\"}}}}"),
        ),
    ];
    for (what, tokens) in &bad_json {
        reject_token(
            &mut t,
            format!("tokens/{what}"),
            tokens,
            false,
            IRSA_AUDIENCE,
            TOKENS_KEY,
        );
        reject_token(
            &mut t,
            format!("tokens-in-secrets/{what}"),
            tokens,
            true,
            IRSA_AUDIENCE,
            TOKENS_KEY,
        );
    }
    let wrong_audience = [
        ("vault", format!("{{\"vault\":{{\"token\":\"{TOKEN}\"}}}}")),
        (
            "pod-identity-only",
            format!("{{\"{POD_IDENTITY_AUDIENCE}\":{{\"token\":\"{TOKEN}\"}}}}"),
        ),
        (
            "audience-case",
            format!("{{\"STS.amazonaws.com\":{{\"token\":\"{TOKEN}\"}}}}"),
        ),
        (
            "audience-space",
            format!("{{\"sts.amazonaws.com \":{{\"token\":\"{TOKEN}\"}}}}"),
        ),
        ("empty-object", "{}".to_string()),
        (
            "empty-token",
            format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"\"}}}}"),
        ),
    ];
    for (what, tokens) in &wrong_audience {
        reject_token(
            &mut t,
            format!("audience/{what}"),
            tokens,
            false,
            IRSA_AUDIENCE,
            IRSA_AUDIENCE,
        );
    }
    reject_token(
        &mut t,
        "audience/irsa-only-for-pod-identity",
        &format!("{{\"{IRSA_AUDIENCE}\":{{\"token\":\"{TOKEN}\"}}}}"),
        false,
        POD_IDENTITY_AUDIENCE,
        POD_IDENTITY_AUDIENCE,
    );
    // No tokens at all (CSIDriver without tokenRequests), or an empty attribute.
    reject_token(
        &mut t,
        "tokens/empty-attribute",
        "",
        false,
        IRSA_AUDIENCE,
        IRSA_AUDIENCE,
    );
    reject_token(
        &mut t,
        "tokens/empty-in-secrets",
        "",
        true,
        IRSA_AUDIENCE,
        IRSA_AUDIENCE,
    );

    t.finish(60)
}
