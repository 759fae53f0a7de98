//! File names and permissions of mounted objects: ASCP's naming rule, and the checks that keep
//! every name inside the volume and every object's file apart from the others'.

use std::collections::BTreeMap;

use secrets_store_provider::FileMode;

use crate::params::PathTranslation;

/// Parses a `"0600"`-style octal permission.
pub fn parse_mode(s: &str) -> Result<FileMode, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{s:?} is not an octal permission like \"0600\""));
    }
    let mode = FileMode::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if mode > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    Ok(mode)
}

/// ASCP's file name rule: alias else name, `/` translated (or leading `/` stripped).
pub fn file_name(name_or_alias: &str, translation: PathTranslation) -> String {
    match translation {
        PathTranslation::Replace(c) => name_or_alias.replace('/', &c.to_string()),
        PathTranslation::Off => name_or_alias.trim_start_matches('/').to_string(),
    }
}

/// Most components a file name may have: the driver refuses deeper paths (its
/// `writer::MAX_PATH_DEPTH`), so the provider refuses them while validating, naming the object.
pub const MAX_FILE_DEPTH: usize = 16;

/// Rejects file names that could escape the volume or are not a file name at all.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("file name is empty".into());
    }
    if name.contains('\0') {
        return Err("file name contains a NUL byte".into());
    }
    if name.len() > 4096 {
        return Err("file name is longer than 4096 bytes".into());
    }
    if name.split('/').nth(MAX_FILE_DEPTH).is_some() {
        return Err(format!(
            "path {:?} has more than {MAX_FILE_DEPTH} components",
            crate::limits::shown(name, crate::limits::SHOWN_NAME_BYTES)
        ));
    }
    for component in name.split('/') {
        match component {
            ".." => return Err(format!("path {name:?} can not contain ..")),
            "." => return Err(format!("path {name:?} can not contain a . component")),
            "" => return Err(format!("path {name:?} has an empty component")),
            _ if component.len() > 255 => {
                return Err(format!(
                    "path {name:?} has a component longer than 255 bytes"
                ));
            }
            // The driver's atomic writer owns names starting with `..` (the `..data` link).
            c if c.starts_with("..") => {
                return Err(format!("path {name:?} can not start a component with .."));
            }
            _ => {}
        }
    }
    Ok(())
}

/// At most this many objects per class: each may be up to 64 KiB, and they share one small tmpfs.
pub const MAX_OBJECTS: usize = 1000;

/// A file already in `files` that `name` collides with: the same path, a file where `name` needs
/// a directory (`a` vs `a/b`), or a directory where `name` is a file (`a/b` vs `a`).
pub(crate) fn file_conflict<'a>(
    files: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(&'a String, &'a String)> {
    if let Some(hit) = files.get_key_value(name) {
        return Some(hit);
    }
    let ancestors = name.match_indices('/').map(|(i, _)| &name[..i]);
    if let Some(hit) = ancestors
        .into_iter()
        .find_map(|dir| files.get_key_value(dir))
    {
        return Some(hit);
    }
    // Everything under `name/` sorts between `name/` and `name0` ('0' follows '/').
    files.range(format!("{name}/")..format!("{name}0")).next()
}
