//! The `objects` parameter: YAML text → the raw object list, with the parser's work bounded.
//!
//! The YAML comes from whoever may create a SecretProviderClass or a pod's volume attributes.
//! YAML anchors and aliases let ~1 MB of text stand for gigabytes (each alias replays its
//! anchor), and a parser that expands them does so before anything here could look at the
//! result. So the text is capped first ([`crate::limits::MAX_OBJECTS_YAML_BYTES`]), and then
//! parsed by `serde-saphyr` with a budget that refuses every anchor and alias (no class needs
//! them: ASCP's examples write each object out), more than one document, and nesting deeper
//! than [`crate::limits::MAX_OBJECTS_YAML_DEPTH`] (checked as the parser's events stream in,
//! before deserialization recurses into a level; the parser itself does not recurse).
//! Quoted text is never mistaken for an anchor: `'&x'` and `"a*b"` are plain strings.

use serde::Deserialize;
use serde_saphyr::MergeKeyPolicy;
use serde_saphyr::budget::BudgetBreach;

use crate::limits::{Exceeded, Limit, MAX_OBJECTS_YAML_DEPTH};
use crate::params::ParamError;

/// The `objects` YAML as ASCP accepts it. Unknown fields are ignored, as ASCP does.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawObject {
    pub(crate) object_name: String,
    pub(crate) object_alias: String,
    pub(crate) object_version: String,
    pub(crate) object_version_label: String,
    pub(crate) object_type: String,
    pub(crate) file_permission: String,
    pub(crate) jmes_path: Vec<RawJmes>,
    pub(crate) failover_object: RawFailover,
}

/// One `jmesPath` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawJmes {
    pub(crate) path: String,
    pub(crate) object_alias: String,
    pub(crate) file_permission: String,
}

/// `failoverObject` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawFailover {
    pub(crate) object_name: String,
    pub(crate) object_version: String,
    pub(crate) object_version_label: String,
}

/// Parses the `objects` text (already known to be non-empty) into at most
/// [`crate::limits::MAX_OBJECTS`] raw objects.
pub(crate) fn parse_objects(yaml: &str) -> Result<Vec<RawObject>, ParamError> {
    let limit = |e| ParamError::Limit {
        scope: "parameter objects".into(),
        exceeded: e,
    };
    Limit::ObjectsBytes.check(yaml.len()).map_err(limit)?;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_anchors: 0,
            max_aliases: 0,
            max_documents: 1,
            max_depth: MAX_OBJECTS_YAML_DEPTH,
        },
        // What serde_yaml, the parser before this one, did: `<<` is an ordinary (ignored) key,
        // `!!binary` text stays text, `~`/`null` in a string field stay as written.
        merge_keys: MergeKeyPolicy::AsOrdinary,
        ignore_binary_tag_for_string: true,
        null_as_string: true,
        // Messages go to Events and logs: one line, no source snippet.
        with_snippet: false,
    };
    let raw = serde_saphyr::from_str_with_options::<Option<Vec<RawObject>>>(yaml, options)
        .map_err(|e| match e.without_snippet() {
            serde_saphyr::Error::Budget {
                breach: BudgetBreach::Depth { depth },
                ..
            } => limit(Exceeded {
                limit: Limit::ObjectsDepth,
                seen: *depth,
            }),
            _ => ParamError::ObjectsYaml(yaml_message(&e)),
        })?
        .unwrap_or_default();
    Limit::Objects.check(raw.len()).map_err(limit)?;
    Ok(raw)
}

/// The parser's message, reworded where the breach is one of our rules rather than a typo.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let at = e
        .location()
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    match e.without_snippet() {
        serde_saphyr::Error::Budget { breach, .. } => match breach {
            BudgetBreach::Anchors { .. } | BudgetBreach::Aliases { .. } => format!(
                "YAML anchors and aliases (&name, *name) are not supported; write each object out in full{at}"
            ),
            BudgetBreach::Documents { .. } => {
                format!("holds more than one YAML document (---){at}")
            }
            other => format!("over the YAML parser's budget: {other:?}{at}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Exceeded, MAX_OBJECTS, MAX_OBJECTS_YAML_BYTES};

    fn err(yaml: &str) -> String {
        match parse_objects(yaml) {
            Ok(raw) => panic!("accepted {} objects from {yaml:?}", raw.len()),
            Err(e) => e.to_string(),
        }
    }

    /// The classic alias bomb: 9 levels of 10 aliases each stand for 10^9 scalars in a few
    /// hundred bytes. It is a *list* of objects, so only the alias rule can refuse it (a
    /// mapping at the top would already be refused for its shape).
    fn billion_laughs() -> String {
        let mut y = String::from(
            "- objectName: &a lol\n  objectType: secretsmanager\n  x0: &x0 [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n",
        );
        for i in 1..9 {
            let p = i - 1;
            y.push_str(&format!(
                "  x{i}: &x{i} [*x{p},*x{p},*x{p},*x{p},*x{p},*x{p},*x{p},*x{p},*x{p},*x{p}]\n"
            ));
        }
        y
    }

    #[test]
    fn anchors_and_aliases_are_refused_before_any_expansion() {
        let bomb = billion_laughs();
        let started = std::time::Instant::now();
        let e = err(&bomb);
        assert!(
            e.starts_with("parameter objects: invalid YAML: YAML anchors and aliases"),
            "{e}"
        );
        assert!(e.contains("line 1"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Also one harmless-looking alias, and an anchor nobody refers to.
        for yaml in [
            "- &o {objectName: a, objectType: secretsmanager}\n- *o\n",
            "- objectName: &n a\n  objectType: secretsmanager\n",
            "- objectName: a\n  objectType: secretsmanager\n  jmesPath: &j [{path: k, objectAlias: k}]\n",
        ] {
            let e = err(yaml);
            assert!(
                e.contains("anchors and aliases (&name, *name) are not supported"),
                "{e}"
            );
        }
        let e = err("- objectName: a\n  objectType: secretsmanager\n  <<: *m\n");
        assert!(e.contains("alias references unknown anchor"), "{e}");
    }

    #[test]
    fn anchor_and_alias_characters_in_quoted_and_plain_text_are_text() {
        let raw = parse_objects(
            "- objectName: 'a*b'\n  objectAlias: \"&x\"\n  objectType: secretsmanager\n\
             - objectName: x&y*z\n  objectAlias: '*'\n  objectType: '&'\n  \
             jmesPath: [{path: '\"*k\"', objectAlias: \"&k\"}]\n",
        )
        .unwrap();
        assert_eq!(
            (raw[0].object_name.as_str(), raw[0].object_alias.as_str()),
            ("a*b", "&x")
        );
        assert_eq!(raw[1].object_name, "x&y*z");
        assert_eq!(raw[1].object_alias, "*");
        assert_eq!(raw[1].object_type, "&");
        assert_eq!(raw[1].jmes_path[0].path, "\"*k\"");
        assert_eq!(raw[1].jmes_path[0].object_alias, "&k");
    }

    #[test]
    fn size_is_capped_before_parsing() {
        let big = format!("- objectName: {}\n", "x".repeat(MAX_OBJECTS_YAML_BYTES));
        match parse_objects(&big) {
            Err(ParamError::Limit { scope, exceeded }) => {
                assert_eq!(scope, "parameter objects");
                assert_eq!(
                    exceeded,
                    Exceeded {
                        limit: Limit::ObjectsBytes,
                        seen: big.len()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(&big),
            format!(
                "parameter objects: is {} bytes; the limit is 65536 bytes",
                big.len()
            )
        );
        let fits = format!(
            "- objectName: {}\n",
            "x".repeat(MAX_OBJECTS_YAML_BYTES - 15)
        );
        assert_eq!(fits.len(), MAX_OBJECTS_YAML_BYTES);
        assert_eq!(parse_objects(&fits).unwrap().len(), 1);
    }

    #[test]
    fn object_count_is_capped() {
        let yaml = "- {objectName: a}\n".repeat(MAX_OBJECTS + 1);
        assert_eq!(
            err(&yaml),
            "parameter objects: lists 1001 objects; the limit is 1000 per class"
        );
    }

    #[test]
    fn documents_depth_and_typos_give_plain_one_line_messages() {
        let e = err("- objectName: a\n---\n- objectName: b\n");
        assert!(e.contains("more than one YAML document"), "{e}");
        let deep = format!(
            "- objectName: a\n  x: {}{}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(
            err(&deep),
            "parameter objects: nests 33 levels deep; the limit is 32"
        );
        // Past 255 open flow collections the parser's own scanner limit answers first.
        let deep = format!(
            "- objectName: a\n  x: {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(
            err(&deep),
            "parameter objects: invalid YAML: recursion limit exceeded at line 2, column 261"
        );
        for yaml in [
            "- objectName: \"db\n",
            "- objectName: db\n\tobjectType: x\n",
            "- objectName: a\n  objectName: b\n",
            "objectName: db\n",
        ] {
            let e = err(yaml);
            assert!(e.starts_with("parameter objects: invalid YAML: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn scalars_read_as_before() {
        let raw = parse_objects(
            "- objectName: yes\n  objectVersion: 3\n  filePermission: 0600\n  objectAlias:\n  \
             objectType: !!binary aGVsbG8=\n  objectVersionLabel: ~\n  <<: {objectName: b}\n",
        )
        .unwrap();
        let o = &raw[0];
        assert_eq!(o.object_name, "yes");
        assert_eq!(o.object_version, "3");
        assert_eq!(o.file_permission, "0600");
        assert_eq!(o.object_alias, "");
        assert_eq!(o.object_type, "aGVsbG8=");
        assert_eq!(o.object_version_label, "~");
    }
}
