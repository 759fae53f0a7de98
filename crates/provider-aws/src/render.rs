//! Fetched values → files and object versions. Pure.

use secrets_store_provider::{FileMode, ObjectVersion, ProviderFile, SecretBytes};

use crate::params::{JmesSpec, ObjectSpec};

/// One fetched object value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedValue {
    /// The bytes: `SecretString` / parameter value as UTF-8, or `SecretBinary` raw.
    pub value: SecretBytes,
    /// Secrets Manager VersionId or SSM parameter version.
    pub version: String,
    /// The region that served it (reported in logs; failover is visible here).
    pub region: String,
}

/// Why an object could not be turned into files.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The value is not JSON, so jmesPath cannot apply. Never includes the value.
    #[error(
        "object {object:?}: jmesPath needs a JSON value, but the value is not valid JSON (line {line}, column {column})"
    )]
    NotJson {
        /// objectName.
        object: String,
        /// Where parsing failed.
        line: usize,
        /// Where parsing failed.
        column: usize,
    },
    /// A jmesPath expression does not compile.
    #[error("object {object:?}: invalid jmesPath {path:?}: {reason}{hint}")]
    BadExpression {
        /// objectName.
        object: String,
        /// The expression.
        path: String,
        /// The compiler's message.
        reason: String,
        /// How to fix the common mistake, if it applies.
        hint: &'static str,
    },
    /// The expression selects nothing, or something that is not a scalar.
    #[error("object {object:?}: jmesPath {path:?} for objectAlias {alias:?} {reason}")]
    BadResult {
        /// objectName.
        object: String,
        /// The expression.
        path: String,
        /// The target file.
        alias: String,
        /// What was wrong with the result.
        reason: &'static str,
    },
}

const HYPHEN_HINT: &str = "; keys containing '-' or other special characters must be quoted, \
     e.g. path: '\"my-key\"' or path: \"\\\"my-key\\\"\"";

/// Renders one object: its own file plus one file per jmesPath entry, each with a version.
pub fn render_object(
    spec: &ObjectSpec,
    value: &FetchedValue,
    default_mode: FileMode,
) -> Result<(Vec<ProviderFile>, Vec<ObjectVersion>), RenderError> {
    let mut files = Vec::with_capacity(1 + spec.jmes.len());
    let mut versions = Vec::with_capacity(1 + spec.jmes.len());
    let mut push = |path: &str, mode: Option<FileMode>, contents: SecretBytes| {
        files.push(ProviderFile {
            path: path.to_string(),
            mode: mode.unwrap_or(default_mode),
            contents,
        });
        versions.push(ObjectVersion {
            id: path.to_string(),
            version: value.version.clone(),
        });
    };
    push(&spec.file_name, spec.mode, value.value.clone());
    if !spec.jmes.is_empty() {
        for (entry, contents) in spec.jmes.iter().zip(extract(spec, value)?) {
            push(&entry.file_name, entry.mode, contents);
        }
    }
    Ok((files, versions))
}

/// Evaluates every jmesPath entry of `spec` against the value.
fn extract(spec: &ObjectSpec, value: &FetchedValue) -> Result<Vec<SecretBytes>, RenderError> {
    // Compile first so a typo is reported even when the value is also bad.
    let compiled = spec
        .jmes
        .iter()
        .map(|j| compile(&spec.name, j))
        .collect::<Result<Vec<_>, _>>()?;
    let json: serde_json::Value =
        serde_json::from_slice(value.value.expose()).map_err(|e| RenderError::NotJson {
            object: spec.name.clone(),
            line: e.line(),
            column: e.column(),
        })?;
    let mut out = Vec::with_capacity(compiled.len());
    for (entry, expr) in spec.jmes.iter().zip(&compiled) {
        let bad = |reason| RenderError::BadResult {
            object: spec.name.clone(),
            path: entry.path.clone(),
            alias: entry.file_name.clone(),
            reason,
        };
        let result = expr
            .search(&json)
            .map_err(|_| bad("failed to evaluate against the value"))?;
        let bytes = match &*result {
            jmespath::Variable::String(s) => s.clone().into_bytes(),
            // Numbers and booleans are written as their JSON text (ASCP refuses them).
            v @ (jmespath::Variable::Number(_) | jmespath::Variable::Bool(_)) => {
                serde_json::to_vec(v).map_err(|_| bad("could not be serialised"))?
            }
            jmespath::Variable::Null => return Err(bad("does not point to a valid object")),
            _ => {
                return Err(bad(
                    "selects an object or array; only strings, numbers and booleans can be written",
                ));
            }
        };
        out.push(SecretBytes::new(bytes));
    }
    Ok(out)
}

fn compile(object: &str, entry: &JmesSpec) -> Result<jmespath::Expression<'static>, RenderError> {
    let bad = |reason: String| RenderError::BadExpression {
        object: object.to_string(),
        path: entry.path.clone(),
        reason,
        hint: if entry.path.contains('-') && !entry.path.contains('"') {
            HYPHEN_HINT
        } else {
            ""
        },
    };
    let expr = jmespath::compile(&entry.path).map_err(|e| bad(e.reason.to_string()))?;
    // The interpreter looks functions up only when it reaches them, which a missing key may
    // never do: check every call now so a typo fails validation, not some later mount.
    if let Some(name) = unknown_function(expr.as_ast()) {
        return Err(bad(format!("unknown function {name}()")));
    }
    Ok(expr)
}

/// The first function call in `ast` that the jmesPath runtime does not define.
fn unknown_function(ast: &jmespath::ast::Ast) -> Option<String> {
    use jmespath::ast::Ast;
    let children: Vec<&Ast> = match ast {
        Ast::Function { name, args, .. } => {
            if jmespath::DEFAULT_RUNTIME.get_function(name).is_none() {
                return Some(name.clone());
            }
            args.iter().collect()
        }
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![lhs, rhs],
        Ast::Condition {
            predicate, then, ..
        } => vec![predicate, then],
        Ast::Expref { ast, .. } => vec![ast],
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            vec![node]
        }
        Ast::MultiList { elements, .. } => elements.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| &kv.value).collect(),
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Literal { .. }
        | Ast::Slice { .. } => Vec::new(),
    };
    children.into_iter().find_map(unknown_function)
}

/// Compiles every jmesPath expression of the objects, so mistakes surface before any fetch.
pub fn check_expressions(objects: &[ObjectSpec]) -> Result<(), RenderError> {
    for o in objects {
        for j in &o.jmes {
            compile(&o.name, j)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::ObjectKind;
    use crate::params::VersionSelector;

    fn spec(jmes: &[(&str, &str)]) -> ObjectSpec {
        ObjectSpec {
            name: "db".into(),
            kind: ObjectKind::SecretsManager,
            selector: VersionSelector::default(),
            file_name: "db".into(),
            mode: None,
            jmes: jmes
                .iter()
                .map(|(p, a)| JmesSpec {
                    path: p.to_string(),
                    file_name: a.to_string(),
                    mode: Some(0o600),
                })
                .collect(),
            failover: None,
        }
    }

    fn value(s: &str) -> FetchedValue {
        FetchedValue {
            value: SecretBytes::new(s.as_bytes().to_vec()),
            version: "v1".into(),
            region: "us-east-1".into(),
        }
    }

    fn contents(files: &[ProviderFile]) -> Vec<(String, String, FileMode)> {
        files
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    String::from_utf8(f.contents.expose().to_vec()).unwrap(),
                    f.mode,
                )
            })
            .collect()
    }

    #[test]
    fn plain_value_is_written_as_is_with_a_version() {
        let (files, versions) = render_object(&spec(&[]), &value("s3cr3t\n"), 0o644).unwrap();
        assert_eq!(
            contents(&files),
            vec![("db".into(), "s3cr3t\n".into(), 0o644)]
        );
        assert_eq!(
            versions,
            vec![ObjectVersion {
                id: "db".into(),
                version: "v1".into()
            }]
        );
    }

    #[test]
    fn binary_value_is_written_raw() {
        let v = FetchedValue {
            value: SecretBytes::new(vec![0u8, 159, 146, 150, 255]),
            version: "v".into(),
            region: "r".into(),
        };
        let (files, _) = render_object(&spec(&[]), &v, 0o400).unwrap();
        assert_eq!(files[0].contents.expose(), &[0u8, 159, 146, 150, 255]);
        assert_eq!(files[0].mode, 0o400);
    }

    #[test]
    fn jmes_strings_numbers_bools_and_hyphenated_keys() {
        let s = spec(&[
            ("username", "user"),
            ("port", "port"),
            ("tls", "tls"),
            ("ratio", "ratio"),
            ("\"my-key\"", "hyphen"),
            ("nested.inner", "inner"),
        ]);
        let v = value(
            r#"{"username":"admin","port":5432,"tls":true,"ratio":0.5,"my-key":"h","nested":{"inner":"i"}}"#,
        );
        let (files, versions) = render_object(&s, &v, 0o644).unwrap();
        let got = contents(&files);
        assert_eq!(got[1], ("user".into(), "admin".into(), 0o600));
        assert_eq!(got[2].1, "5432");
        assert_eq!(got[3].1, "true");
        assert_eq!(got[4].1, "0.5");
        assert_eq!(got[5].1, "h");
        assert_eq!(got[6].1, "i");
        assert_eq!(versions.len(), 7, "one version per file");
        assert!(versions.iter().all(|v| v.version == "v1"));
    }

    #[test]
    fn jmes_errors_name_the_object_and_never_the_value() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "username",
                "not json at all s3cr3t",
                "not valid JSON (line 1",
            ),
            (
                "missing",
                r#"{"a":"s3cr3t"}"#,
                "does not point to a valid object",
            ),
            ("a", r#"{"a":{"b":"s3cr3t"}}"#, "selects an object or array"),
            ("a", r#"{"a":["s3cr3t"]}"#, "selects an object or array"),
            (
                "my-key",
                r#"{"my-key":"s3cr3t"}"#,
                "must be quoted, e.g. path: '\"my-key\"'",
            ),
            ("a[", r#"{"a":"s3cr3t"}"#, "invalid jmesPath \"a[\""),
        ];
        for (path, json, want) in cases {
            let err = render_object(&spec(&[(path, "out")]), &value(json), 0o644)
                .expect_err(path)
                .to_string();
            assert!(err.contains(want), "{path}: {err}");
            assert!(err.contains("object \"db\""), "{path}: {err}");
            assert!(!err.contains("s3cr3t"), "{path}: value leaked: {err}");
        }
    }

    #[test]
    fn expressions_are_checked_up_front() {
        assert!(check_expressions(&[spec(&[("a.b", "x")])]).is_ok());
        let err = check_expressions(&[spec(&[("a-b", "x")])]).unwrap_err();
        assert!(err.to_string().contains("must be quoted"), "{err}");
    }

    #[test]
    fn unknown_functions_fail_validation_wherever_they_are() {
        for path in [
            "nope(@)",
            "a.nope(@)",
            "a[?nope(b)].c",
            "{x: nope(a)}",
            "length(nope(a))",
        ] {
            let err = check_expressions(&[spec(&[(path, "x")])])
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown function nope()"), "{path}: {err}");
        }
        for path in [
            "length(a)",
            "a[?contains(b, 'x')].c",
            "to_string(port)",
            "\"password-value\"",
        ] {
            assert!(check_expressions(&[spec(&[(path, "x")])]).is_ok(), "{path}");
        }
    }
}
