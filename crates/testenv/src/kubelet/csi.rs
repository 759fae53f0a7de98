//! gRPC plumbing of the simulator: CSI channels over unix sockets and kubelet plugin
//! registration through `<root>/plugins_registry/*.sock`.
//!
//! As in kubelet, the two use different clients: the CSI client sends `:authority` `localhost`
//! (kubelet's `csi_client.go` dials with `WithAuthority("localhost")`), the registration client
//! is grpc-go dialing the bare socket path, which sends the path %-encoded
//! ([`super::grpc_go`]).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use secrets_store_api::csi::v1::node_client::NodeClient;
use secrets_store_api::csi::v1::{NodeGetCapabilitiesRequest, NodeGetInfoRequest};
use secrets_store_api::registration::v1::RegistrationStatus;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::grpc_go;

/// A lazily connected channel to a unix socket (the driver may start after the simulator).
/// Requests carry `:authority` `localhost`, as kubelet's CSI client sends.
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // The URI gives the authority; the connector always dials `path`.
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
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
/// The registration calls go through [`grpc_go::RegistrationClient`], which sends what
/// kubelet's grpc-go client sends (the %-encoded socket path as `:authority`, kubelet's
/// deadlines); `NodeGetInfo` goes through the CSI channel with `localhost`.
pub async fn register(socket: &Path) -> Result<RegisteredDriver, String> {
    let mut reg = grpc_go::RegistrationClient::dial(socket)
        .await
        .map_err(|e| format!("dial failed at socket {}, err: {e}", socket.display()))?;
    let info = reg
        .get_info()
        .await
        .map_err(|e| format!("GetInfo on {}: {e}", socket.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::grpc_go::{Frame, MAX_FRAME_SIZE, PREFACE, frame_type, read_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// kubelet's CSI client sends `:authority` `localhost`; so does the simulator's channel.
    #[tokio::test]
    async fn csi_channel_sends_localhost_authority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            io.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface[..], PREFACE);
            io.write_all(&Frame::new(frame_type::SETTINGS, 0, 0, Vec::new()).encode())
                .await
                .unwrap();
            let mut dec = loona_hpack::Decoder::new();
            loop {
                let f = read_frame(&mut io, MAX_FRAME_SIZE).await.unwrap();
                if f.kind == frame_type::HEADERS {
                    let fields = dec.decode(&f.payload).unwrap();
                    let rst = Frame::new(frame_type::RST_STREAM, 0, f.stream, 7u32.to_be_bytes());
                    io.write_all(&rst.encode()).await.unwrap();
                    return fields;
                }
            }
        });
        let mut node = NodeClient::new(unix_channel(&path));
        let _ = node.node_get_info(NodeGetInfoRequest {}).await;
        let fields = server.await.unwrap();
        let authority = fields
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(authority.as_deref(), Some("localhost"));
    }
}
