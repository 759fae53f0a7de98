//! `--dry-run`: fetch every object with the ambient AWS credentials, writing nothing, then check
//! the `secretObjects` against the real contents.

use std::collections::BTreeMap;
use std::time::Duration;

use secrets_store_api::crd::SecretProviderClass;
use secrets_store_provider::SecretBytes;
use secrets_store_provider_aws::MountParameters;

use super::secret_objects::check_secret_objects;
use super::{EXIT_ACCESS, Outcome};

/// How long the fetch of all objects may take.
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches the objects of `params`, reporting each, and checks `spc`'s `secretObjects` against them.
pub(super) async fn dry_run(
    spc: &SecretProviderClass,
    params: &MountParameters,
    out: &mut Outcome,
) {
    out.line(format!(
        "dry run: fetching {} object(s) in {} with the ambient AWS credentials (nothing is written)",
        params.objects.len(),
        params.region
    ));
    let results = match secrets_store_provider_aws::dry_run(params, DRY_RUN_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            out.line(format!("error: {e}"));
            out.code = out.code.max(EXIT_ACCESS);
            return;
        }
    };
    // Values stay in memory only long enough to check the secretObjects against them.
    let mut contents: BTreeMap<String, SecretBytes> = BTreeMap::new();
    let mut all_fetched = true;
    for access in results {
        match access.result {
            Ok(files) => {
                let sizes: Vec<String> = files
                    .iter()
                    .map(|f| format!("{} ({} bytes)", f.path, f.contents.len()))
                    .collect();
                out.line(format!(
                    "  ok      {} ({}): {}",
                    access.object,
                    access.kind,
                    sizes.join(", ")
                ));
                contents.extend(files.into_iter().map(|f| (f.path, f.contents)));
            }
            Err(message) => {
                all_fetched = false;
                out.line(format!(
                    "  FAILED  {} ({}): {message}",
                    access.object, access.kind
                ));
                out.code = out.code.max(EXIT_ACCESS);
            }
        }
    }
    if all_fetched {
        let names: Vec<String> = contents.keys().cloned().collect();
        check_secret_objects(spc, &names, Some(&contents), out);
    }
}
