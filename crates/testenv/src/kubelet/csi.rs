//! gRPC plumbing of the simulator: CSI channels over unix sockets and kubelet plugin
//! registration through `<root>/plugins_registry/*.sock`.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use secrets_store_api::csi::v1::node_client::NodeClient;
use secrets_store_api::csi::v1::{NodeGetCapabilitiesRequest, NodeGetInfoRequest};
use secrets_store_api::registration::v1::registration_client::RegistrationClient;
use secrets_store_api::registration::v1::{InfoRequest, RegistrationStatus};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A lazily connected channel to a unix socket (the driver may start after the simulator).
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials `path`.
    Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        },
    ))
}

/// A CSI driver that completed plugin registration.
#[derive(Debug, Clone)]
pub struct RegisteredDriver {
    /// Driver name from `PluginInfo.name`.
    pub name: String,
    /// CSI endpoint socket from `PluginInfo.endpoint`.
    pub endpoint: PathBuf,
    /// `PluginInfo.supported_versions`.
    pub versions: Vec<String>,
    /// `NodeGetInfo.node_id`, which kubelet would write into the CSINode object.
    pub node_id: String,
}

/// Registers the plugin behind one registration socket, like kubelet's plugin watcher:
/// `GetInfo`, validation, `NodeGetInfo` on the CSI endpoint, then `NotifyRegistrationStatus`.
pub async fn register(socket: &Path) -> Result<RegisteredDriver, String> {
    let mut reg = RegistrationClient::new(unix_channel(socket));
    let info = reg
        .get_info(InfoRequest {})
        .await
        .map_err(|e| format!("GetInfo on {}: {e}", socket.display()))?
        .into_inner();
    let result = validate(&info.r#type, &info.supported_versions);
    let node_id = match &result {
        Ok(()) => {
            let mut node = NodeClient::new(unix_channel(Path::new(&info.endpoint)));
            match node.node_get_info(NodeGetInfoRequest {}).await {
                Ok(r) => Ok(r.into_inner().node_id),
                Err(e) => Err(format!("NodeGetInfo on {}: {e}", info.endpoint)),
            }
        }
        Err(e) => Err(e.clone()),
    };
    let status = RegistrationStatus {
        plugin_registered: node_id.is_ok(),
        error: node_id.as_ref().err().cloned().unwrap_or_default(),
    };
    reg.notify_registration_status(status)
        .await
        .map_err(|e| format!("NotifyRegistrationStatus on {}: {e}", socket.display()))?;
    Ok(RegisteredDriver {
        name: info.name,
        endpoint: PathBuf::from(info.endpoint),
        versions: info.supported_versions,
        node_id: node_id?,
    })
}

fn validate(kind: &str, versions: &[String]) -> Result<(), String> {
    if kind != "CSIPlugin" {
        return Err(format!("plugin type {kind:?} is not CSIPlugin"));
    }
    // kubelet accepts any 1.x CSI version.
    if !versions
        .iter()
        .any(|v| v.trim_start_matches('v').starts_with("1."))
    {
        return Err(format!(
            "none of the versions {versions:?} is supported (need 1.x)"
        ));
    }
    Ok(())
}

/// Whether the node service advertises `SINGLE_NODE_MULTI_WRITER` (kubelet then maps
/// ReadWriteOnce to it instead of `SINGLE_NODE_WRITER`).
pub async fn supports_single_node_multi_writer(channel: Channel) -> Result<bool, tonic::Status> {
    use secrets_store_api::csi::v1::node_service_capability::{Type, rpc};
    let caps = NodeClient::new(channel)
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await?
        .into_inner();
    Ok(caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == rpc::Type::SingleNodeMultiWriter as i32)
    }))
}
