//! Provider dispatch: built-in providers in process, any other name over the upstream
//! `v1alpha1.CSIDriverProvider` socket API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;
use secrets_store_provider::Provider;

use crate::error::PublishError;

/// Where upstream providers put their sockets by default.
pub const DEFAULT_PROVIDER_VOLUME: &str = "/var/run/secrets-store-csi-providers";

static PROVIDER_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-zA-Z0-9_-]{0,30}$").expect("static regex"));

/// Builds a [`Provider`] that talks to an external provider's unix socket.
///
/// The binary plugs in the gRPC client adapter; tests can plug in anything.
pub trait ExternalConnector: Send + Sync + 'static {
    /// A provider named `name` reached through `socket` (connection may be lazy).
    fn connect(&self, name: &str, socket: &Path) -> Arc<dyn Provider>;
}

impl<F> ExternalConnector for F
where
    F: Fn(&str, &Path) -> Arc<dyn Provider> + Send + Sync + 'static,
{
    fn connect(&self, name: &str, socket: &Path) -> Arc<dyn Provider> {
        self(name, socket)
    }
}

/// Resolves `SecretProviderClass.spec.provider` to a [`Provider`].
pub struct ProviderRegistry {
    builtin: HashMap<String, Arc<dyn Provider>>,
    dirs: Vec<PathBuf>,
    connector: Option<Arc<dyn ExternalConnector>>,
    /// External providers by socket path, so connections are reused across mounts.
    external: Mutex<HashMap<PathBuf, Arc<dyn Provider>>>,
}

impl std::fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRegistry")
            .field("builtin", &self.builtin.keys().collect::<Vec<_>>())
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl ProviderRegistry {
    /// A registry searching `additional_dirs` then `provider_volume` for `<name>.sock`, like
    /// upstream's `--additional-provider-volume-paths` and `--provider-volume`.
    pub fn new(provider_volume: PathBuf, additional_dirs: Vec<PathBuf>) -> Self {
        let mut dirs = additional_dirs;
        dirs.push(provider_volume);
        Self {
            builtin: HashMap::new(),
            dirs,
            connector: None,
            external: Mutex::new(HashMap::new()),
        }
    }

    /// Adds an in-process provider under its [`Provider::name`].
    pub fn with_builtin(mut self, provider: Arc<dyn Provider>) -> Self {
        self.builtin.insert(provider.name().to_string(), provider);
        self
    }

    /// Sets how external providers are reached (without one, only built-ins resolve).
    pub fn with_connector(mut self, connector: Arc<dyn ExternalConnector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// The socket paths searched for `name`, in order.
    pub fn socket_candidates(&self, name: &str) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(format!("{name}.sock")))
            .collect()
    }

    /// Finds the provider for `name`.
    ///
    /// A socket on disk wins over a built-in of the same name, so a cluster that still runs an
    /// upstream provider DaemonSet keeps using it after switching drivers.
    pub fn resolve(&self, name: &str) -> Result<Arc<dyn Provider>, PublishError> {
        if name.is_empty() || !PROVIDER_NAME.is_match(name) {
            return Err(PublishError::InvalidProviderName(name.to_string()));
        }
        let candidates = self.socket_candidates(name);
        if let Some(connector) = &self.connector
            && let Some(socket) = candidates.iter().find(|p| is_socket(p))
        {
            let mut cache = self.external.lock().unwrap_or_else(|e| e.into_inner());
            let provider = cache
                .entry(socket.clone())
                .or_insert_with(|| connector.connect(name, socket))
                .clone();
            return Ok(provider);
        }
        if let Some(p) = self.builtin.get(name) {
            return Ok(p.clone());
        }
        Err(PublishError::ProviderNotFound {
            name: name.to_string(),
            searched: candidates,
        })
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use secrets_store_provider::{MountRequest, MountResponse, ProviderError};

    struct Named(String);

    #[async_trait]
    impl Provider for Named {
        fn name(&self) -> &str {
            &self.0
        }
        fn version(&self) -> &str {
            "test"
        }
        async fn mount(&self, _: MountRequest) -> Result<MountResponse, ProviderError> {
            Ok(MountResponse::default())
        }
    }

    #[test]
    fn names_are_validated() {
        let reg = ProviderRegistry::new("/nonexistent".into(), vec![]);
        for bad in ["", "../etc", "a/b", "a.b", &"x".repeat(31)] {
            assert!(
                matches!(reg.resolve(bad), Err(PublishError::InvalidProviderName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            reg.resolve("vault"),
            Err(PublishError::ProviderNotFound { .. })
        ));
    }

    #[test]
    fn sockets_are_searched_additional_first_and_win_over_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("extra");
        let main = dir.path().join("main");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::create_dir_all(&main).unwrap();
        let _l1 = std::os::unix::net::UnixListener::bind(main.join("aws.sock")).unwrap();
        let reg = ProviderRegistry::new(main.clone(), vec![extra.clone()])
            .with_builtin(Arc::new(Named("aws".into())))
            .with_connector(Arc::new(|name: &str, socket: &Path| {
                Arc::new(Named(format!("{name}@{}", socket.display()))) as Arc<dyn Provider>
            }));
        let p = reg.resolve("aws").unwrap();
        assert_eq!(p.name(), format!("aws@{}", main.join("aws.sock").display()));
        let _l2 = std::os::unix::net::UnixListener::bind(extra.join("gcp.sock")).unwrap();
        let _l3 = std::os::unix::net::UnixListener::bind(main.join("gcp.sock")).unwrap();
        let p = reg.resolve("gcp").unwrap();
        assert_eq!(
            p.name(),
            format!("gcp@{}", extra.join("gcp.sock").display())
        );
        // Without a socket, the built-in answers.
        let reg = ProviderRegistry::new(dir.path().join("none"), vec![])
            .with_builtin(Arc::new(Named("aws".into())));
        assert_eq!(reg.resolve("aws").unwrap().name(), "aws");
    }
}
