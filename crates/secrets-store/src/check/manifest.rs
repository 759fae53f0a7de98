//! Reading manifests: the YAML documents of a file (or stdin), parsed with a budget.

use std::path::Path;

use serde_json::Value;

use super::UsageError;

/// The text of `path`, or of stdin for `-`.
fn read_text(path: &Path) -> Result<String, UsageError> {
    let read = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| UsageError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The YAML documents of `path`; the inner error is a syntax error (an invalid file, exit 1).
///
/// The parser is budgeted: anchors and aliases are allowed (kubectl accepts them), but replaying
/// them may produce at most [`MAX_ALIAS_REPLAY`] events in all, so an alias bomb is an error
/// rather than gigabytes (the `objects` parameter inside is stricter still: see the AWS
/// provider's `limits`).
pub(super) fn read_docs(path: &Path) -> Result<Result<Vec<Value>, String>, UsageError> {
    let text = read_text(path)?;
    let options = serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY,
        },
        with_snippet: false,
    };
    match serde_saphyr::from_multiple_with_options::<Value>(&text, options) {
        Ok(docs) => Ok(Ok(docs.into_iter().filter(|d| !d.is_null()).collect())),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Events that alias replay may add to a manifest: far more than any manifest needs.
const MAX_ALIAS_REPLAY: usize = 100_000;

/// The `kind` of a manifest document.
pub(super) fn kind_of(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

/// The string at `path` (keys from the root) of a manifest document.
pub(super) fn str_at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(doc, |v, k| v.get(*k))
        .and_then(Value::as_str)
}
