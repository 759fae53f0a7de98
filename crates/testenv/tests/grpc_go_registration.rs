//! The simulator's plugin-registration client against a plain tonic `Registration` server:
//! like kubelet's grpc-go client it sends the %-encoded socket path as `:authority`, and an
//! unmodified tonic (h2) server resets the stream with PROTOCOL_ERROR — the failure a real
//! kubelet hits against a Rust plugin that does not normalise the authority. The same server
//! answers a tonic client sending `localhost`, so the authority is the only difference.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::rt::TokioIo;
use secrets_store_api::registration::v1::registration_client::RegistrationClient as TonicClient;
use secrets_store_api::registration::v1::registration_server::{Registration, RegistrationServer};
use secrets_store_api::registration::v1::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use secrets_store_testenv::kubelet::grpc_go::{RegistrationClient, encode_authority};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Uri};
use tonic::{Request, Response, Status};

const RESET: &str = "rpc error: code = Internal desc = stream terminated by RST_STREAM with error code: PROTOCOL_ERROR";

#[derive(Clone, Default)]
struct Plugin {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Registration for Plugin {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: "secrets-store.csi.k8s.io".into(),
            endpoint: "/csi/csi.sock".into(),
            supported_versions: vec!["v1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        _: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// A tonic Registration server, unmodified, on `<dir>/plugins_registry/<name>-reg.sock`.
fn serve(dir: &Path) -> (PathBuf, Plugin) {
    let reg_dir = dir.join("plugins_registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let socket = reg_dir.join("secrets-store.csi.k8s.io-reg.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let plugin = Plugin::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(plugin.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    (socket, plugin)
}

#[tokio::test]
async fn unmodified_tonic_server_resets_kubelets_registration_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, plugin) = serve(dir.path());

    let mut client = RegistrationClient::dial(&socket).await.unwrap();
    // What grpc-go puts in :authority for this target.
    let authority = encode_authority(socket.to_str().unwrap().as_bytes());
    assert_eq!(client.authority(), authority);
    assert!(authority.starts_with("%2F"), "{authority}");
    assert!(authority.ends_with("%2Fplugins_registry%2Fsecrets-store.csi.k8s.io-reg.sock"));

    let err = client.get_info().await.unwrap_err();
    assert_eq!(err.to_string(), RESET);
    assert_eq!(err.code(), tonic::Code::Internal);
    // The stream is reset, the connection is not: the next call fails the same way.
    let err = client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "RegisterPlugin error -- failed to get plugin info".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), RESET);
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 0, "no handler ran");
}

#[tokio::test]
async fn same_server_answers_a_client_with_a_valid_authority() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, plugin) = serve(dir.path());
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap();
    let info = TonicClient::new(channel)
        .get_info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 1);
}
