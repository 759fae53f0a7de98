//! kubelet plugin registration (`pluginregistration.Registration`), served by the agent itself so
//! that no `node-driver-registrar` sidecar is needed.

use std::path::{Path, PathBuf};

use secrets_store_api::labels::DRIVER_NAME;
use secrets_store_api::registration::v1 as reg;
use secrets_store_api::registration::v1::registration_server::Registration;
use tonic::{Request, Response, Status};

/// The plugin type kubelet expects from CSI drivers.
pub const PLUGIN_TYPE: &str = "CSIPlugin";

/// The CSI versions we speak.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// Where kubelet looks for our registration socket.
pub fn registration_socket(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir
        .join("plugins_registry")
        .join(format!("{DRIVER_NAME}-reg.sock"))
}

/// The registration service: tells kubelet our name and CSI endpoint.
#[derive(Clone, Debug)]
pub struct RegistrationService {
    endpoint: String,
}

impl RegistrationService {
    /// Registers the CSI socket at `csi_socket` (a filesystem path, as kubelet dials it).
    pub fn new(csi_socket: &Path) -> Self {
        Self {
            endpoint: csi_socket.to_string_lossy().into_owned(),
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: PLUGIN_TYPE.to_string(),
            name: DRIVER_NAME.to_string(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("kubelet registered the plugin");
        } else {
            // Like node-driver-registrar, we keep running: kubelet retries registration.
            tracing::error!(error = %status.error, "kubelet failed to register the plugin");
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}
