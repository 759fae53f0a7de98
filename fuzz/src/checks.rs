//! The invariants the fuzz targets assert, shared with the stable regression test
//! (`crates/secrets-store/tests/fuzz_corpus.rs` includes this file with `#[path]`), so the
//! corpus replay and the fuzzer check exactly the same things.
//!
//! Each `check_*` function takes raw fuzzer bytes, decodes them with a small text format (so
//! corpus files stay readable and easy to write by hand), calls the product code, and panics
//! when an invariant breaks. Rejecting the input is fine; panicking inside product code, or
//! accepting something unsafe, is the bug.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path};

use secrets_store_driver::AtomicWriter;
use secrets_store_driver::VolumeContext;
use secrets_store_driver::{
    POD_NAME_KEY, POD_NAMESPACE_KEY, POD_UID_KEY, SECRET_PROVIDER_CLASS_KEY, TOKENS_KEY,
};
use secrets_store_provider::{
    MAX_ELEMENT_LEN, MAX_PATH_LEN, ProviderFile, SecretBytes, validate_path,
};
use secrets_store_provider_aws::fuzzing::{
    Arn, FetchedValue, KeyPath, KeyPathError, Limit, MAX_JMES_PATH_BYTES, Step, VersionSelector,
    parse_parameters, render_object,
};
use secrets_store_provider_aws::{IRSA_AUDIENCE, MountParameters, token_for};

/// Region used when an `objects` input sets none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Separates `key=value` parameter lines from the `objects` YAML in an `objects` input.
pub const PARAMS_SEPARATOR: &str = "%%";

/// Asserts that a path accepted by a validator is safe to join under a volume root: relative,
/// clean, no `..` anywhere, no NUL, within the length limits, not a writer-reserved name.
pub fn assert_safe_relative_path(path: &str, who: &str) {
    assert!(!path.is_empty(), "{who} accepted an empty path");
    assert!(
        path.len() <= MAX_PATH_LEN,
        "{who} accepted {} bytes",
        path.len()
    );
    assert!(!path.contains('\0'), "{who} accepted a NUL byte: {path:?}");
    assert!(!path.starts_with('/'), "{who} accepted absolute {path:?}");
    assert!(!path.starts_with(".."), "{who} accepted reserved {path:?}");
    for element in path.split('/') {
        assert!(
            !element.is_empty() && element != "." && element != "..",
            "{who} accepted unclean {path:?}"
        );
        assert!(
            !element.starts_with(".."),
            "{who} accepted a reserved element in {path:?}"
        );
        assert!(
            element.len() <= MAX_ELEMENT_LEN,
            "{who} accepted a long element"
        );
    }
    // What the OS would make of it: only normal components, so joining stays under the root.
    assert!(
        Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{who} accepted {path:?}, which has non-normal components"
    );
}

/// Splits an `objects` input into class parameters and the `objects` YAML.
///
/// Format: optional `key=value` lines, a line `%%`, then the YAML; without `%%` the whole input
/// is the YAML and the region is [`DEFAULT_REGION`].
pub fn decode_objects_input(data: &[u8]) -> Option<BTreeMap<String, String>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut attrs = BTreeMap::new();
    let yaml = match text.split_once(&format!("\n{PARAMS_SEPARATOR}\n")) {
        Some((head, yaml)) => {
            for line in head.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    attrs.insert(k.to_string(), v.to_string());
                }
            }
            yaml
        }
        None => text,
    };
    attrs.insert("objects".to_string(), yaml.to_string());
    Some(attrs)
}

/// Fuzz target `objects`: SecretProviderClass parameters → validated objects.
pub fn check_objects(data: &[u8]) {
    let Some(attrs) = decode_objects_input(data) else {
        return;
    };
    let _ = check_parameters(&attrs);
}

/// The invariants of parameter validation, for one parameter map. Returns the validated
/// parameters, or the error message.
pub fn check_parameters(attrs: &BTreeMap<String, String>) -> Result<MountParameters, String> {
    let parsed = parse_parameters(attrs, Some(DEFAULT_REGION));
    let offline = secrets_store_provider_aws::validate(attrs, Some(DEFAULT_REGION));
    match (&parsed, &offline) {
        (Err(e), Err(o)) => {
            // The offline check (`secrets-store check`) reports the same failure as a mount.
            assert_eq!(o.message, e.to_string());
            assert_error_names_something(&e.to_string());
            Err(e.to_string())
        }
        (Err(e), Ok(_)) => panic!("validate() accepted what parse() rejected: {e}"),
        (Ok(_), Err(o)) => panic!("validate() rejected what parse() accepted: {}", o.message),
        (Ok(p), Ok(v)) => {
            assert_eq!(p, v);
            assert_valid_parameters(p);
            Ok(p.clone())
        }
    }
}

/// A rejection must say which parameter or object is wrong.
fn assert_error_names_something(message: &str) {
    assert!(
        message.starts_with("parameter ") || message.starts_with("object "),
        "error does not name a parameter or an object: {message}"
    );
}

fn assert_valid_parameters(p: &MountParameters) {
    assert!(!p.objects.is_empty(), "accepted a class with no objects");
    assert!(!p.region.is_empty());
    assert_ne!(p.failover_region.as_deref(), Some(p.region.as_str()));
    let mut names = BTreeSet::new();
    for o in &p.objects {
        assert!(!o.name.is_empty(), "accepted an object without a name");
        if let Some(arn) = Arn::parse(&o.name) {
            assert_eq!(arn.region, p.region, "accepted an ARN of another region");
        }
        if let Some(mode) = o.mode {
            assert!(mode <= 0o777, "accepted mode {mode:o}");
        }
        for file in std::iter::once(&o.file_name).chain(o.jmes.iter().map(|j| &j.file_name)) {
            assert_safe_relative_path(file, "params::parse");
            validate_path(file).unwrap_or_else(|e| {
                panic!("the provider accepted a file name the path contract rejects: {e}")
            });
            assert!(names.insert(file.clone()), "two objects write {file:?}");
        }
        for j in &o.jmes {
            if let Some(mode) = j.mode {
                assert!(mode <= 0o777, "accepted mode {mode:o}");
            }
        }
    }
    // What a mount of these objects would hand the writer must be writable as one payload.
    let mut files = Vec::new();
    for o in &p.objects {
        let value = FetchedValue {
            value: SecretBytes::new(b"{\"a\":\"b\",\"n\":1}".to_vec()),
            version: "v1".into(),
            region: p.region.clone(),
        };
        match render_object(o, &value, 0o644) {
            Ok((f, versions)) => {
                assert_eq!(f.len(), versions.len(), "one version per file");
                assert!(versions.iter().all(|v| !v.version.is_empty()));
                files.extend(f);
            }
            // An expression that selects nothing in our sample value is a value problem, not a
            // path one: write the object's own file alone.
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("object "), "{msg}");
                files.push(ProviderFile {
                    path: o.file_name.clone(),
                    mode: 0o644,
                    contents: value.value.clone(),
                });
            }
        }
    }
    if let Err(e) = AtomicWriter::validate(&files) {
        // Accepted parameters can still collide as file vs directory ("a" and "a/b" with
        // pathTranslation off); the writer must catch that as a conflict, nothing else.
        let msg = e.to_string();
        assert!(
            msg.contains("conflicts"),
            "writer rejected accepted names: {msg}"
        );
    }
}

/// Fuzz target `objects_yaml`: the whole input is the `objects` YAML (region `us-east-1`).
/// Besides the `objects` invariants: nothing is expanded. Without anchors and aliases (which are
/// refused) YAML can only shrink text (escapes, folding, indentation), so the strings of an
/// accepted list add up to no more than the input; an alias bomb that got through would not.
pub fn check_objects_yaml(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let attrs = BTreeMap::from([("objects".to_string(), yaml.to_string())]);
    let Ok(p) = check_parameters(&attrs) else {
        return;
    };
    let text: usize = p
        .objects
        .iter()
        .map(|o| {
            let version = |s: &VersionSelector| {
                s.version.as_ref().map_or(0, String::len) + s.label.as_ref().map_or(0, String::len)
            };
            o.name.len()
                + version(&o.selector)
                + o.jmes.iter().map(|j| j.path.len()).sum::<usize>()
                + o.failover
                    .as_ref()
                    .map_or(0, |f| f.name.len() + version(&f.selector))
        })
        .sum();
    assert!(
        text <= yaml.len(),
        "{} bytes of YAML gave {text} bytes of strings",
        yaml.len()
    );
}

/// Fuzz target `jmes_path`: one jmesPath expression. Invariants: no panic; the length and
/// nesting limits are reported with the size seen; any other refusal says what is supported
/// and stays short; an accepted path is within the limits, has at least one step, reads back
/// the same from its canonical spelling, and evaluates without panicking.
pub fn check_jmes_path(data: &[u8]) {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    let _ = check_jmes_path_text(expr);
}

/// The invariants of [`check_jmes_path`] for one expression; returns the parse result.
pub fn check_jmes_path_text(expr: &str) -> Result<KeyPath, KeyPathError> {
    let parsed = KeyPath::parse(expr);
    match &parsed {
        Ok(path) => {
            assert!(expr.len() <= MAX_JMES_PATH_BYTES);
            assert!(!path.steps().is_empty(), "{expr:?} parsed to no steps");
            let canonical = canonical(path.steps());
            if canonical.len() <= MAX_JMES_PATH_BYTES {
                let again = KeyPath::parse(&canonical)
                    .unwrap_or_else(|e| panic!("{canonical:?} (from {expr:?}): {e}"));
                assert_eq!(again.steps(), path.steps(), "{expr:?} vs {canonical:?}");
            }
            let sample = serde_json::json!({"a": {"b": [1, "x", {"c": true}]}, "my-key": "v"});
            let _ = path.select(&sample);
        }
        Err(KeyPathError::Limit(e)) => {
            assert!(e.seen > e.limit.max(), "{e}");
            if e.limit == Limit::JmesPathBytes {
                assert_eq!(e.seen, expr.len());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("jmesPath supports key paths"), "{msg}");
            assert!(msg.len() < 1024, "the error echoes too much: {msg}");
        }
    }
    parsed
}

/// A key path written back as JMESPath: every key quoted, indexes in brackets.
fn canonical(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&serde_json::to_string(k).expect("a string serialises"));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A decoded volume-context input.
#[derive(Debug, Default)]
pub struct VolumeContextInput {
    /// `volume_context` as kubelet sends it.
    pub volume_context: HashMap<String, String>,
    /// `secrets` of the publish request.
    pub secrets: HashMap<String, String>,
    /// SecretProviderClass `spec.parameters`.
    pub parameters: BTreeMap<String, String>,
}

/// Decodes `key=value` lines; `secret.KEY=v` goes to `secrets`, `param.KEY=v` to the class
/// parameters, anything else to the volume context. Invalid UTF-8 is replaced, not skipped,
/// since kubelet's maps are Go strings and may carry anything.
pub fn decode_volume_context_input(data: &[u8]) -> VolumeContextInput {
    let text = String::from_utf8_lossy(data);
    let mut input = VolumeContextInput::default();
    for line in text.split('\n') {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        if let Some(k) = k.strip_prefix("secret.") {
            input.secrets.insert(k.into(), v.into());
        } else if let Some(k) = k.strip_prefix("param.") {
            input.parameters.insert(k.into(), v.into());
        } else {
            input.volume_context.insert(k.into(), v.into());
        }
    }
    input
}

/// Fuzz target `volume_context`: kubelet's volume context → typed context → provider attributes
/// → the pod's token.
pub fn check_volume_context(data: &[u8]) {
    let _ = check_volume_context_input(&decode_volume_context_input(data));
}

/// The invariants of volume-context parsing for one decoded input; returns the error message
/// of the first stage that rejected it.
pub fn check_volume_context_input(input: &VolumeContextInput) -> Result<(), String> {
    let vc = &input.volume_context;
    let ctx = match VolumeContext::parse(vc, &input.secrets) {
        Ok(ctx) => ctx,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("invalid volume context"), "{msg}");
            return Err(msg);
        }
    };
    for (field, key) in [
        (&ctx.secret_provider_class, SECRET_PROVIDER_CLASS_KEY),
        (&ctx.pod_name, POD_NAME_KEY),
        (&ctx.pod_namespace, POD_NAMESPACE_KEY),
        (&ctx.pod_uid, POD_UID_KEY),
    ] {
        assert!(!field.is_empty(), "accepted an empty {key}");
        assert_eq!(Some(field), vc.get(key), "{key} is not what kubelet sent");
    }
    assert!(!ctx.raw.contains_key(TOKENS_KEY), "tokens kept in raw");
    let want_tokens = input
        .secrets
        .get(TOKENS_KEY)
        .or_else(|| vc.get(TOKENS_KEY))
        .filter(|t| !t.is_empty());
    assert_eq!(
        ctx.tokens.as_ref().map(|t| t.expose()),
        want_tokens.map(String::as_str)
    );

    // Tokens never show in Debug output. Only checkable when the token text is not also some
    // other key or value that Debug legitimately prints.
    if let Some(tokens) = want_tokens.filter(|t| t.len() >= 8) {
        let elsewhere = vc
            .iter()
            .filter(|(k, _)| k.as_str() != TOKENS_KEY)
            .any(|(k, v)| k.contains(tokens.as_str()) || v.contains(tokens.as_str()));
        if !elsewhere {
            let debug = format!("{ctx:?}");
            assert!(!debug.contains(tokens.as_str()), "token in Debug output");
        }
    }

    // Volume context wins over class parameters; the tokens key comes from the request only.
    let attrs = ctx.attributes(&input.parameters);
    for (k, v) in &ctx.raw {
        assert_eq!(
            attrs.get(k),
            Some(v.as_str()),
            "{k} not taken from the volume context"
        );
    }
    assert_eq!(attrs.get(TOKENS_KEY), want_tokens.map(String::as_str));

    match token_for(&attrs, IRSA_AUDIENCE) {
        Ok(token) => assert!(!token.is_empty(), "an empty token was accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(TOKENS_KEY) || msg.contains(IRSA_AUDIENCE),
                "token error names neither the attribute nor the audience: {msg}"
            );
            // The error never echoes the tokens attribute.
            if let Some(t) = want_tokens.filter(|t| t.len() >= 8) {
                assert!(!msg.contains(t.as_str()), "token echoed in an error");
            }
            return Err(msg);
        }
    }
    Ok(())
}

/// Decodes a provider response: one file per line, optionally prefixed `@<octal mode> `.
pub fn decode_files_input(data: &[u8]) -> Vec<ProviderFile> {
    let text = String::from_utf8_lossy(data);
    // A final newline ends the last line; it does not add an empty path.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .enumerate()
        .map(|(i, line)| {
            let (mode, path) = line
                .strip_prefix('@')
                .and_then(|rest| rest.split_once(' '))
                .and_then(|(m, p)| Some((u32::from_str_radix(m, 8).ok()?, p)))
                .unwrap_or((0o644, line));
            ProviderFile {
                path: path.to_string(),
                mode,
                contents: SecretBytes::new(format!("file {i}").into_bytes()),
            }
        })
        .collect()
}

/// Fuzz target `paths`: the file list of a provider response, checked by the driver before any
/// write.
pub fn check_paths(data: &[u8]) {
    let _ = check_files(&decode_files_input(data));
}

/// The invariants of response validation for one file list. Returns the writer's verdict.
pub fn check_files(files: &[ProviderFile]) -> Result<(), String> {
    for f in files {
        match validate_path(&f.path) {
            Ok(()) => assert_safe_relative_path(&f.path, "validate_path"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("path "), "{msg}");
                assert!(msg.len() <= 2 * MAX_PATH_LEN + 200, "error echoes too much");
            }
        }
    }

    // An independent model of the whole-payload rules, compared with the writer's verdict.
    let mut seen = BTreeSet::new();
    let mut model_ok = files.iter().all(|f| {
        validate_path(&f.path).is_ok() && f.mode <= 0o7777 && seen.insert(f.path.as_str())
    });
    if model_ok {
        for f in files {
            let mut prefix = f.path.as_str();
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                model_ok &= !seen.contains(parent);
                prefix = parent;
            }
        }
    }
    let verdict = AtomicWriter::validate(files).map_err(|e| e.to_string());
    assert_eq!(
        verdict.is_ok(),
        model_ok,
        "writer and model disagree: {verdict:?}"
    );
    verdict
}
