//! Fetched values → files and object versions. Pure.

use secrets_store_provider::{FileMode, ObjectVersion, ProviderFile, SecretBytes};

use crate::limits::{SHOWN_PATH_BYTES, shown};
use crate::params::ObjectSpec;

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

/// Evaluates every jmesPath entry of `spec` against the value. The paths were parsed and
/// bounded when the parameters were validated; each evaluation is one step per key.
fn extract(spec: &ObjectSpec, value: &FetchedValue) -> Result<Vec<SecretBytes>, RenderError> {
    let json: serde_json::Value =
        serde_json::from_slice(value.value.expose()).map_err(|e| RenderError::NotJson {
            object: spec.name.clone(),
            line: e.line(),
            column: e.column(),
        })?;
    let mut out = Vec::with_capacity(spec.jmes.len());
    for entry in &spec.jmes {
        let bad = |reason| RenderError::BadResult {
            object: spec.name.clone(),
            path: shown(&entry.path, SHOWN_PATH_BYTES).into_owned(),
            alias: entry.file_name.clone(),
            reason,
        };
        let bytes = match entry.key_path.select(&json) {
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            // Numbers and booleans are written as their JSON text (ASCP refuses them).
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                serde_json::to_vec(v).map_err(|_| bad("could not be serialised"))?
            }
            None | Some(serde_json::Value::Null) => {
                return Err(bad("does not point to a valid object"));
            }
            Some(_) => {
                return Err(bad(
                    "selects an object or array; only strings, numbers and booleans can be written",
                ));
            }
        };
        out.push(SecretBytes::new(bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::ObjectKind;
    use crate::jmes_path::KeyPath;
    use crate::params::{JmesSpec, VersionSelector};

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
                    key_path: KeyPath::parse(p).unwrap(),
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
                "a.b",
                r#"{"a":"s3cr3t"}"#,
                "does not point to a valid object",
            ),
            (
                "n",
                r#"{"n":null,"a":"s3cr3t"}"#,
                "does not point to a valid object",
            ),
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
    fn key_paths_pick_nested_keys_and_array_elements() {
        let s = spec(&[
            ("a.b[1]", "second"),
            ("a.b[-1].c", "last"),
            ("\"x-y\"", "q"),
        ]);
        let v = value(r#"{"a":{"b":["one","two",{"c":7}]},"x-y":"hy"}"#);
        let (files, _) = render_object(&s, &v, 0o644).unwrap();
        let got: Vec<String> = contents(&files).into_iter().map(|(_, c, _)| c).collect();
        assert_eq!(got[1..], ["two", "7", "hy"]);
    }
}
