//! The secret sync's rules for `secretObjects`, over the files the provider will write.

use std::collections::BTreeMap;

use secrets_store_api::crd::SecretProviderClass;
use secrets_store_provider::SecretBytes;
use secrets_store_sync::desired::{DesiredSecretError, desired_secret};

use super::Outcome;

/// The sync's own rules over the files the provider will write. Offline (`contents` None) the
/// files are empty stand-ins, so splitting a `kubernetes.io/tls` bundle is left to `--dry-run`.
pub(super) fn check_secret_objects(
    spc: &SecretProviderClass,
    file_names: &[String],
    contents: Option<&BTreeMap<String, SecretBytes>>,
    out: &mut Outcome,
) {
    let stand_ins: BTreeMap<String, SecretBytes>;
    let files = match contents {
        Some(c) => c,
        None => {
            stand_ins = file_names
                .iter()
                .map(|f| (f.clone(), SecretBytes::new(Vec::new())))
                .collect();
            &stand_ins
        }
    };
    for (index, so) in spc.spec.secret_objects.iter().enumerate() {
        match desired_secret(index, so, files) {
            Ok(_) => {}
            Err(DesiredSecretError::Tls { .. }) if contents.is_none() => {}
            Err(e) => out.problem(e.to_string()),
        }
        for d in &so.data {
            if !d.key.is_empty() && !is_secret_key(&d.key) {
                out.problem(format!(
                    "secret {:?}: key {:?} is not a valid Secret data key (letters, digits, '-', '_', '.')",
                    so.secret_name, d.key
                ));
            }
        }
    }
}

/// Kubernetes' rule for Secret data keys (`IsConfigMapKey`).
fn is_secret_key(key: &str) -> bool {
    key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
