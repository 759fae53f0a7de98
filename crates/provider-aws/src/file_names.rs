//! File names and permissions of mounted objects: ASCP's naming rule and permission syntax.
//! Which names are allowed is the provider path contract, [`secrets_store_provider::validate_path`].

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
