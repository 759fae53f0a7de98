//! The bounds on what one SecretProviderClass may make the provider parse, evaluate and write.
//!
//! Any tenant who may create a SecretProviderClass (or a pod with volume attributes) chooses
//! these inputs, and the provider runs inside the node agent, so one hostile class must not cost
//! the node more than a bounded, small amount of memory, stack and CPU. Each bound is checked
//! before the work it bounds (the size of `objects` before the YAML parser sees it, a jmesPath's
//! length and nesting before it is parsed), and a breach is an invalid-parameters error
//! ([`Exceeded`]) that names the parameter or object, the limit and the size seen.
//!
//! ASCP and the upstream driver set none of these; the only bound there is the API server's
//! (about 1.5 MiB per object in etcd, 3 MiB per request). The values leave room for the largest
//! classes seen in practice (tens of objects, a handful of jmesPath entries each, key paths of a
//! few dozen bytes).

use std::borrow::Cow;

/// Bytes of the `objects` parameter. A 1,000-object class of short names fits; the YAML parser
/// never sees more.
pub const MAX_OBJECTS_YAML_BYTES: usize = 64 * 1024;

/// Nesting depth of the `objects` YAML. An object list needs 4 levels (list, object, jmesPath
/// list, entry); the rest leaves room for unknown fields, which ASCP ignores.
pub const MAX_OBJECTS_YAML_DEPTH: usize = 32;

/// Objects per class: each may be up to 64 KiB, and they share one small tmpfs.
pub const MAX_OBJECTS: usize = 1000;

/// jmesPath entries per object (each one writes a file).
pub const MAX_JMES_ENTRIES: usize = 100;

/// Bytes of one jmesPath expression.
pub const MAX_JMES_PATH_BYTES: usize = 4096;

/// Nesting depth of one jmesPath expression: brackets `()[]{}` open at once plus the `!`
/// operators applied in a row. Key paths nest at most 1 deep; JMESPath parsers recurse once per
/// level, so 100,000 `!` overflowed the stack of the parser this provider used to run.
pub const MAX_JMES_NESTING: usize = 32;

/// Bytes of a jmesPath expression shown in an error message.
pub const SHOWN_PATH_BYTES: usize = 64;
/// Bytes of an object or file name shown in an error message.
pub const SHOWN_NAME_BYTES: usize = 256;

/// `text` for an error message: as written when at most `max` bytes, else its start and its
/// size, so that an error never echoes 100 KB of input into an Event or a log line.
pub fn shown(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max.saturating_sub(16);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..cut], text.len()))
}

/// One of the bounds above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`MAX_OBJECTS_YAML_BYTES`].
    ObjectsBytes,
    /// [`MAX_OBJECTS_YAML_DEPTH`].
    ObjectsDepth,
    /// [`MAX_OBJECTS`].
    Objects,
    /// [`MAX_JMES_ENTRIES`].
    JmesEntries,
    /// [`MAX_JMES_PATH_BYTES`].
    JmesPathBytes,
    /// [`MAX_JMES_NESTING`].
    JmesNesting,
}

impl Limit {
    /// The largest value allowed.
    pub const fn max(self) -> usize {
        match self {
            Self::ObjectsBytes => MAX_OBJECTS_YAML_BYTES,
            Self::ObjectsDepth => MAX_OBJECTS_YAML_DEPTH,
            Self::Objects => MAX_OBJECTS,
            Self::JmesEntries => MAX_JMES_ENTRIES,
            Self::JmesPathBytes => MAX_JMES_PATH_BYTES,
            Self::JmesNesting => MAX_JMES_NESTING,
        }
    }

    /// `Err(Exceeded)` when `seen` is over this limit.
    pub fn check(self, seen: usize) -> Result<(), Exceeded> {
        if seen > self.max() {
            Err(Exceeded { limit: self, seen })
        } else {
            Ok(())
        }
    }
}

/// A limit was broken: which one, and the size seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*.limit, *.seen))]
pub struct Exceeded {
    /// The limit.
    pub limit: Limit,
    /// The size, count or depth of the input.
    pub seen: usize,
}

fn describe(limit: Limit, seen: usize) -> String {
    let max = limit.max();
    match limit {
        Limit::ObjectsBytes => format!("is {seen} bytes; the limit is {max} bytes"),
        Limit::ObjectsDepth => format!("nests {seen} levels deep; the limit is {max}"),
        Limit::Objects => format!("lists {seen} objects; the limit is {max} per class"),
        Limit::JmesEntries => format!("lists {seen} entries; the limit is {max} per object"),
        Limit::JmesPathBytes => format!("path is {seen} bytes; the limit is {max} bytes"),
        Limit::JmesNesting => format!(
            "path nests {seen} levels deep (brackets open at once plus '!' in a row); the limit is {max}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_abbreviated_in_messages() {
        assert_eq!(shown("db.user", SHOWN_PATH_BYTES), "db.user");
        let long = format!("{}{}", "é".repeat(40), "!".repeat(5000));
        let s = shown(&long, SHOWN_PATH_BYTES);
        assert!(s.ends_with(&format!("… ({} bytes)", long.len())), "{s}");
        assert!(s.len() < 80, "{s}");
        assert_eq!(shown(&"n".repeat(256), SHOWN_NAME_BYTES).len(), 256);
    }

    #[test]
    fn each_limit_allows_its_maximum_and_names_the_size_above_it() {
        for limit in [
            Limit::ObjectsBytes,
            Limit::ObjectsDepth,
            Limit::Objects,
            Limit::JmesEntries,
            Limit::JmesPathBytes,
            Limit::JmesNesting,
        ] {
            assert_eq!(limit.check(limit.max()), Ok(()));
            let e = limit.check(limit.max() + 1).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&(limit.max() + 1).to_string()), "{msg}");
            assert!(
                msg.contains(&format!("the limit is {}", limit.max())),
                "{msg}"
            );
        }
    }
}
