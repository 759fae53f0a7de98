//! Validation of provider-supplied file paths (kubelet AtomicWriter rules).

/// Longest allowed path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest allowed path element, in bytes.
pub const MAX_ELEMENT_LEN: usize = 255;
/// Most directory levels a file path may have: each level is a tmpfs inode and a directory walk,
/// and no provider needs more than a few.
pub const MAX_PATH_DEPTH: usize = 16;

/// Why a file path from a provider was rejected. The message names the path (paths are not
/// secret) and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("file path is empty")]
    Empty,
    /// The path is absolute.
    #[error("file path {0:?} is absolute; it must be relative to the volume")]
    Absolute(String),
    /// The path contains a NUL byte.
    #[error("file path {0:?} contains a NUL byte")]
    Nul(String),
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("file path {0:?}... is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
    /// An element is longer than [`MAX_ELEMENT_LEN`].
    #[error("file path {0:?} has an element longer than {MAX_ELEMENT_LEN} bytes")]
    ElementTooLong(String),
    /// The path has more than [`MAX_PATH_DEPTH`] elements.
    #[error("file path {0:?}... has more than {MAX_PATH_DEPTH} elements")]
    TooDeep(String),
    /// The path has a `..` element.
    #[error("file path {0:?} contains a '..' element")]
    DotDot(String),
    /// The path starts with `..`, which is reserved for the writer's own entries.
    #[error("file path {0:?} starts with '..', which is reserved")]
    Reserved(String),
    /// The path is not clean (`.` elements, empty elements, trailing slash).
    #[error("file path {0:?} is not clean (no '.', '//' or trailing '/')")]
    NotClean(String),
    /// Two files of one payload share a path, or one is a directory of another.
    #[error("file path {0:?} conflicts with another file of the same volume")]
    Conflict(String),
}

/// Checks one path: relative, clean, no `..` element, no leading `..`, no NUL, ≤255 bytes per
/// element and ≤4096 in total.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        // Truncate what we echo so a hostile provider cannot blow up Events.
        let cut: String = path.chars().take(64).collect();
        return Err(PathError::TooLong(cut));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.replace('\0', "\\0")));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_string()));
    }
    if path.split('/').nth(MAX_PATH_DEPTH).is_some() {
        let cut: String = path.chars().take(64).collect();
        return Err(PathError::TooDeep(cut));
    }
    for element in path.split('/') {
        if element.len() > MAX_ELEMENT_LEN {
            return Err(PathError::ElementTooLong(path.to_string()));
        }
        if element == ".." {
            return Err(PathError::DotDot(path.to_string()));
        }
        if element.is_empty() || element == "." {
            return Err(PathError::NotClean(path.to_string()));
        }
    }
    if path.starts_with("..") {
        return Err(PathError::Reserved(path.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Check = Result<(), fn(&PathError) -> bool>;

    #[test]
    fn table() {
        let long_element = "a".repeat(256);
        let ok_element = "a".repeat(255);
        let long_path = ["a"; 2049].join("/");
        let deepest = ["d"; MAX_PATH_DEPTH].join("/");
        let too_deep = ["d"; MAX_PATH_DEPTH + 1].join("/");
        let cases: Vec<(&str, Check)> = vec![
            (&deepest, Ok(())),
            (&too_deep, Err(|e| matches!(e, PathError::TooDeep(_)))),
            ("a", Ok(())),
            ("a/b/c.txt", Ok(())),
            ("a..b", Ok(())),
            (".hidden", Ok(())),
            ("a/..b", Ok(())),
            (&ok_element, Ok(())),
            ("", Err(|e| matches!(e, PathError::Empty))),
            ("/etc/passwd", Err(|e| matches!(e, PathError::Absolute(_)))),
            ("../x", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("a/../../x", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("a/..", Err(|e| matches!(e, PathError::DotDot(_)))),
            ("..data", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("..2024_01_01", Err(|e| matches!(e, PathError::Reserved(_)))),
            ("./a", Err(|e| matches!(e, PathError::NotClean(_)))),
            ("a//b", Err(|e| matches!(e, PathError::NotClean(_)))),
            ("a/", Err(|e| matches!(e, PathError::NotClean(_)))),
            ("a/./b", Err(|e| matches!(e, PathError::NotClean(_)))),
            ("a\0b", Err(|e| matches!(e, PathError::Nul(_)))),
            (
                &long_element,
                Err(|e| matches!(e, PathError::ElementTooLong(_))),
            ),
            (&long_path, Err(|e| matches!(e, PathError::TooLong(_)))),
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
        let path = format!("{}/{}", "a".repeat(255), "b".repeat(4096 - 256));
        assert_eq!(path.len(), 4096);
        // The second element exceeds 255 bytes.
        assert!(validate_path(&path).is_err());
        // MAX_PATH_DEPTH elements of MAX_ELEMENT_LEN bytes: 4095 bytes, the longest valid path.
        let p = vec!["a".repeat(MAX_ELEMENT_LEN); MAX_PATH_DEPTH].join("/");
        assert_eq!(p.len(), 4095);
        assert_eq!(validate_path(&p), Ok(()));
    }
}
