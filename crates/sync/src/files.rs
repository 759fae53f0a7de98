//! Where the contents of a volume's objects come from when computing its Secrets.

use std::borrow::Cow;
use std::collections::BTreeMap;

use secrets_store_api::crd::SecretObject;
use secrets_store_provider::{SecretBytes, validate_path};

use crate::target::VerifiedTarget;

/// The files of a mounted volume, by path relative to the volume root.
#[derive(Clone, Copy, Debug)]
pub enum VolumeFiles<'a> {
    /// The provider's response, just written (the publish path).
    InMemory(&'a BTreeMap<String, SecretBytes>),
    /// Read back from the mounted volume (reconciling, or a provider that wrote files itself):
    /// only from a directory [`crate::target::NodeVolumes::verify`] accepted.
    OnDisk(&'a VerifiedTarget),
}

impl VolumeFiles<'_> {
    /// The files `object` needs. Names that are not valid relative paths or do not exist are
    /// left out, so that [`crate::desired::desired_secret`] reports them as missing objects.
    pub async fn for_secret(
        &self,
        object: &SecretObject,
    ) -> std::io::Result<Cow<'_, BTreeMap<String, SecretBytes>>> {
        let target = match self {
            Self::InMemory(files) => return Ok(Cow::Borrowed(*files)),
            Self::OnDisk(target) => target.path(),
        };
        let mut files = BTreeMap::new();
        for name in object.data.iter().map(|d| &d.object_name) {
            if files.contains_key(name) || validate_path(name).is_err() {
                continue;
            }
            match tokio::fs::read(target.join(name)).await {
                Ok(bytes) => {
                    files.insert(name.clone(), SecretBytes::new(bytes));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("object {name:?}: {e}"),
                    ));
                }
            }
        }
        Ok(Cow::Owned(files))
    }
}
