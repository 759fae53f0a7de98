//! The path contract for [`crate::ProviderFile`]: which relative paths a provider may name.
//!
//! One set of rules for everyone who produces or consumes provider paths: the AWS provider
//! checks the names it derives from a class, the gRPC client checks what an external provider
//! returns, the driver's atomic writer checks again before writing, and sync checks the names a
//! SecretProviderClass maps into Secrets. They follow kubelet's AtomicWriter rules, made stricter
//! in one place: no element (not only the first) may start with `..`, so no name ever looks like
//! one of the writer's own entries (`..data`, `..<timestamp>`) at any level.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Longest allowed path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest allowed path element, in bytes.
pub const MAX_ELEMENT_LEN: usize = 255;
/// Most elements a file path may have: each level is a tmpfs inode and a directory walk, and no
/// provider needs more than a few.
pub const MAX_PATH_DEPTH: usize = 16;
/// Bytes of a path echoed in an error message; longer paths are shown by their start and size.
const SHOWN_PATH_BYTES: usize = 256;

/// Why a file path was rejected. The message names the path (paths are not secret, but are
/// shown bounded) and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path is absolute.
    #[error("path {0:?} is absolute; it must be relative to the volume")]
    Absolute(String),
    /// The path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path {0:?} is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
    /// An element is longer than [`MAX_ELEMENT_LEN`].
    #[error("path {0:?} has a component longer than {MAX_ELEMENT_LEN} bytes")]
    ElementTooLong(String),
    /// The path has more than [`MAX_PATH_DEPTH`] elements.
    #[error("path {0:?} has more than {MAX_PATH_DEPTH} components")]
    TooDeep(String),
    /// The path has a `..` element.
    #[error("path {0:?} can not contain ..")]
    DotDot(String),
    /// An element starts with `..`, which the atomic writer reserves for its own entries.
    #[error("path {0:?} can not start a component with .. (reserved for the volume's own entries)")]
    Reserved(String),
    /// The path has a `.` element.
    #[error("path {0:?} can not contain a . component")]
    CurrentDir(String),
    /// The path has an empty element (`a//b`, a trailing `/`).
    #[error("path {0:?} has an empty component")]
    EmptyElement(String),
    /// Two files of one volume share a path, or one is a directory of another.
    #[error("path {0:?} conflicts with another file of the same volume")]
    Conflict(String),
}

/// `path` for an error message: as given when at most [`SHOWN_PATH_BYTES`] bytes, else its start
/// and its size, so a hostile provider cannot blow up Events. (Messages print it with `{:?}`,
/// which escapes NUL and control characters.)
fn shown(path: &str) -> String {
    if path.len() <= SHOWN_PATH_BYTES {
        return path.to_owned();
    }
    let mut cut = SHOWN_PATH_BYTES - 16;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &path[..cut], path.len())
}

/// Checks one path: not empty, relative, at most [`MAX_PATH_LEN`] bytes and [`MAX_PATH_DEPTH`]
/// elements, no NUL, and every element non-empty, not `.`, not `..`, not starting with `..`,
/// at most [`MAX_ELEMENT_LEN`] bytes. What passes is safe to join under a volume root.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(shown(path)));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(shown(path)));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(shown(path)));
    }
    if path.split('/').nth(MAX_PATH_DEPTH).is_some() {
        return Err(PathError::TooDeep(shown(path)));
    }
    for element in path.split('/') {
        let broken: fn(String) -> PathError = match element {
            "" => PathError::EmptyElement,
            "." => PathError::CurrentDir,
            ".." => PathError::DotDot,
            _ if element.len() > MAX_ELEMENT_LEN => PathError::ElementTooLong,
            _ if element.starts_with("..") => PathError::Reserved,
            _ => continue,
        };
        return Err(broken(shown(path)));
    }
    Ok(())
}

/// The entry of `files` that `path` collides with: the same path, a file where `path` needs a
/// directory (`a` for `a/b`), or a file below `path` where `path` would be a file (`a/b` for
/// `a`). Two files of one volume must not collide.
pub fn conflicting_path<'a, K, V>(files: &'a BTreeMap<K, V>, path: &str) -> Option<(&'a K, &'a V)>
where
    K: Borrow<str> + Ord,
{
    if let Some(hit) = files.get_key_value(path) {
        return Some(hit);
    }
    let parents = path.match_indices('/').map(|(i, _)| &path[..i]);
    if let Some(hit) = parents.into_iter().find_map(|dir| files.get_key_value(dir)) {
        return Some(hit);
    }
    // Everything under `path/` sorts between `path/` and `path0` ('0' follows '/').
    let (below, after) = (format!("{path}/"), format!("{path}0"));
    files
        .range::<str, _>((
            Bound::Included(below.as_str()),
            Bound::Excluded(after.as_str()),
        ))
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Check = Result<(), fn(&PathError) -> bool>;

    #[test]
    fn table() {
        let long_element = "a".repeat(MAX_ELEMENT_LEN + 1);
        let ok_element = "a".repeat(MAX_ELEMENT_LEN);
        let long_path = ["a"; 2049].join("/");
        let deepest = ["d"; MAX_PATH_DEPTH].join("/");
        let too_deep = ["d"; MAX_PATH_DEPTH + 1].join("/");
        let cases: Vec<(&str, Check)> = vec![
            ("a", Ok(())),
            ("a/b/c.txt", Ok(())),
            ("a..b", Ok(())),
            ("a.", Ok(())),
            (".hidden", Ok(())),
            ("dir/.hidden", Ok(())),
            ("x y", Ok(())),
            ("ключ/値", Ok(())),
            (&deepest, Ok(())),
            (&ok_element, Ok(())),
            ("", Err(|e| matches!(e, PathError::Empty))),
            ("/etc/passwd", Err(|e| matches!(e, PathError::Absolute(_)))),
            ("/", Err(|e| matches!(e, PathError::Absolute(_)))),
            ("a\0b", Err(|e| matches!(e, PathError::Nul(_)))),
            ("\0", Err(|e| matches!(e, PathError::Nul(_)))),
            (&too_deep, Err(|e| matches!(e, PathError::TooDeep(_)))),
            (&long_path, Err(|e| matches!(e, PathError::TooLong(_)))),
            (
                &long_element,
                Err(|e| matches!(e, PathError::ElementTooLong(_))),
            ),
            ("..", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("../x", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("a/../../x", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("a/..", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("..data", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("..data/x", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("..2024_01_01", Err(|e| matches!(e, PathError::Reserved(_)))),
            // The stricter of the two rules this contract replaced: the driver let `a/..b`
            // through, the AWS provider did not.
            ("a/..b", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("a/..data", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("./a", Err(|e| matches!(e, PathError::CurrentDir(_)))),
            ("a/./b", Err(|e| matches!(e, PathError::CurrentDir(_)))),
            (".", Err(|e| matches!(e, PathError::CurrentDir(_)))),
            ("a//b", Err(|e| matches!(e, PathError::EmptyElement(_)))),
            ("a/", Err(|e| matches!(e, PathError::EmptyElement(_)))),
        ];
        for (path, want) in cases {
            let got = validate_path(path);
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(check), Err(e)) => assert!(check(&e), "{path:?}: unexpected {e:?}"),
                (want, got) => panic!("{path:?}: want ok={}, got {got:?}", want.is_ok()),
            }
        }
    }

    #[test]
    fn the_longest_path_within_every_limit_is_allowed() {
        // MAX_PATH_DEPTH elements of MAX_ELEMENT_LEN bytes: 4095 bytes, the longest valid path.
        let longest = vec!["a".repeat(MAX_ELEMENT_LEN); MAX_PATH_DEPTH].join("/");
        assert_eq!(longest.len(), MAX_PATH_LEN - 1);
        assert_eq!(validate_path(&longest), Ok(()));
        // 4096 bytes in two elements: within the total, but the second element is too long.
        let two = format!("{}/{}", "a".repeat(255), "b".repeat(MAX_PATH_LEN - 256));
        assert_eq!(two.len(), MAX_PATH_LEN);
        assert!(matches!(
            validate_path(&two),
            Err(PathError::ElementTooLong(_))
        ));
    }

    #[test]
    fn messages_name_the_rule_and_echo_a_bounded_path() {
        let e = validate_path("a/..b").unwrap_err().to_string();
        assert_eq!(
            e,
            "path \"a/..b\" can not start a component with .. (reserved for the volume's own entries)"
        );
        let e = validate_path(&too_deep_and_long()).unwrap_err().to_string();
        assert!(e.contains("has more than 16 components"), "{e}");
        assert!(e.len() < SHOWN_PATH_BYTES + 100, "{} bytes: {e}", e.len());
        assert!(e.contains("(4095 bytes)"), "{e}");
        let e = validate_path(&"x".repeat(100_000)).unwrap_err().to_string();
        assert!(e.contains("is longer than 4096 bytes"), "{e}");
        assert!(e.len() < SHOWN_PATH_BYTES + 100, "{} bytes", e.len());
        let e = validate_path("a\0b").unwrap_err().to_string();
        assert_eq!(e, r#"path "a\0b" contains a NUL byte"#);
    }

    fn too_deep_and_long() -> String {
        ["abc"; 1024].join("/")
    }

    #[test]
    fn conflicts() {
        let files: BTreeMap<String, &str> = [("a/b", "x"), ("c", "y"), ("d/e/f", "z")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let cases = [
            ("a/b", Some("a/b")),
            ("a", Some("a/b")),
            ("c", Some("c")),
            ("c/d", Some("c")),
            ("d/e", Some("d/e/f")),
            ("d", Some("d/e/f")),
            ("a/c", None),
            ("a.b", None),
            ("a0", None),
            ("cc", None),
            ("d/e/g", None),
        ];
        for (path, want) in cases {
            let got = conflicting_path(&files, path).map(|(k, _)| k.as_str());
            assert_eq!(got, want, "{path:?}");
        }
        // Borrowed keys work the same.
        let borrowed: BTreeMap<&str, ()> = [("a/b", ())].into_iter().collect();
        assert_eq!(
            conflicting_path(&borrowed, "a").map(|(k, _)| *k),
            Some("a/b")
        );
    }
}
