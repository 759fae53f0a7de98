//! The gRPC adapters end to end: our client ↔ our server (and a raw upstream-API server for
//! responses our server never sends) over real unix sockets in a temp dir.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrets_store_api::provider::v1alpha1 as wire;
use secrets_store_api::provider::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use secrets_store_provider::grpc::client::{ClientConfig, ExternalProvider, ProviderVersion};
use secrets_store_provider::grpc::server;
use secrets_store_provider::{
    Attributes, MountRequest, MountResponse, ObjectVersion, Provider, ProviderError,
    ProviderErrorKind, ProviderFile, SecretBytes,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.test-token-value";

type Handler = dyn Fn(&MountRequest) -> Result<MountResponse, ProviderError> + Send + Sync;

/// An in-memory provider that records requests and answers with `handler`.
struct TestProvider {
    handler: Box<Handler>,
    seen: Mutex<Vec<MountRequest>>,
}

impl TestProvider {
    fn new(
        handler: impl Fn(&MountRequest) -> Result<MountResponse, ProviderError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            handler: Box::new(handler),
            seen: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl Provider for TestProvider {
    fn name(&self) -> &str {
        "test"
    }
    fn version(&self) -> &str {
        "9.9.9"
    }
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let result = (self.handler)(&request);
        self.seen.lock().unwrap().push(request);
        result
    }
}

/// A running server and the temp dir holding its socket.
struct Running {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn client(&self, config: ClientConfig) -> ExternalProvider {
        ExternalProvider::with_config("test", &self.socket, config)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
        assert!(!self.socket.exists(), "the socket is removed on shutdown");
    }
}

/// Serves `provider` with our server.
fn serve_ours(provider: Arc<dyn Provider>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("test.sock");
    let listener = server::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let task = tokio::spawn(async move {
        server::serve_on(provider, listener, &path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        _dir: dir,
        socket,
        stop,
        task,
    }
}

/// A provider that answers every mount with a fixed wire response, for shapes our own server
/// never produces (error codes, unsafe paths).
struct Raw(wire::MountResponse);

#[tonic::async_trait]
impl CsiDriverProvider for Raw {
    async fn version(
        &self,
        _: tonic::Request<wire::VersionRequest>,
    ) -> Result<tonic::Response<wire::VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(wire::VersionResponse::default()))
    }
    async fn mount(
        &self,
        _: tonic::Request<wire::MountRequest>,
    ) -> Result<tonic::Response<wire::MountResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.clone()))
    }
}

fn serve_raw(response: wire::MountResponse) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("test.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CsiDriverProviderServer::new(Raw(response)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
    });
    Running {
        _dir: dir,
        socket,
        stop,
        task,
    }
}

fn request() -> MountRequest {
    let tokens = format!(
        r#"{{"sts.amazonaws.com":{{"token":"{TOKEN}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
    );
    MountRequest {
        attributes: Attributes(BTreeMap::from([
            ("objects".into(), "- objectName: db".into()),
            ("csi.storage.k8s.io/pod.name".into(), "web-0".into()),
            (Attributes::TOKENS_KEY.into(), tokens),
        ])),
        secrets: BTreeMap::from([(
            "password".into(),
            SecretBytes::from("hunter2-secret".to_string()),
        )]),
        target_path: PathBuf::from("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount"),
        permission: 0o640,
        current_object_versions: vec![ObjectVersion {
            id: "db".into(),
            version: "1".into(),
        }],
    }
}

fn one_version() -> Vec<ObjectVersion> {
    vec![ObjectVersion {
        id: "db".into(),
        version: "2".into(),
    }]
}

fn fast() -> ClientConfig {
    ClientConfig {
        attempts: 1,
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn round_trip_preserves_request_and_binary_files() {
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
    let contents = binary.clone();
    let provider = TestProvider::new(move |_| {
        Ok(MountResponse {
            files: vec![
                ProviderFile {
                    path: "db".into(),
                    mode: 0o600,
                    contents: SecretBytes::new(contents.clone()),
                },
                ProviderFile {
                    path: "nested/cert.pem".into(),
                    mode: 0o644,
                    contents: SecretBytes::from("PEM".to_string()),
                },
            ],
            object_versions: one_version(),
        })
    });
    let running = serve_ours(provider.clone());
    let client = running.client(fast());

    let resp = client.mount(request()).await.unwrap();
    assert_eq!(resp.object_versions, one_version());
    assert_eq!(resp.files.len(), 2);
    assert_eq!(resp.files[0].path, "db");
    assert_eq!(resp.files[0].mode, 0o600);
    assert_eq!(resp.files[0].contents.expose(), &binary[..]);
    assert_eq!(resp.files[1].path, "nested/cert.pem");

    // What the provider saw is what we sent, after the JSON round trip.
    let seen = provider.seen.lock().unwrap().pop().unwrap();
    let sent = request();
    assert_eq!(seen.attributes, sent.attributes);
    assert_eq!(seen.secrets, sent.secrets);
    assert_eq!(seen.target_path, sent.target_path);
    assert_eq!(seen.permission, 0o640);
    assert_eq!(seen.current_object_versions, sent.current_object_versions);

    assert_eq!(client.version(), "unknown");
    let version = client.probe_version().await.unwrap();
    assert_eq!(
        version,
        ProviderVersion {
            runtime_name: "test".into(),
            runtime_version: "9.9.9".into()
        }
    );
    assert_eq!(client.version(), "9.9.9");
    running.stop().await;
}

#[tokio::test]
async fn provider_errors_keep_their_kind_and_message() {
    let provider = TestProvider::new(|_| {
        Err(ProviderError::new(
            ProviderErrorKind::NotFound,
            "secret \"db\" not found in us-east-1",
        ))
    });
    let running = serve_ours(provider);
    let err = running.client(fast()).mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::NotFound);
    assert!(
        err.message.contains("secret \"db\" not found in us-east-1"),
        "{err}"
    );
    assert!(
        err.message.contains("\"test\""),
        "names the provider: {err}"
    );
    running.stop().await;
}

#[tokio::test]
async fn error_code_in_the_response_is_a_failure() {
    let running = serve_raw(wire::MountResponse {
        object_version: vec![wire::ObjectVersion {
            id: "db".into(),
            version: "1".into(),
        }],
        error: Some(wire::Error {
            code: "SecretNotFound".into(),
        }),
        files: vec![],
    });
    let err = running.client(fast()).mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Internal);
    assert!(err.message.contains("SecretNotFound"), "{err}");
    assert!(err.message.contains("\"test\""), "{err}");
    running.stop().await;
}

#[tokio::test]
async fn zero_object_versions_is_a_failure() {
    let provider = TestProvider::new(|_| {
        Ok(MountResponse {
            files: vec![ProviderFile {
                path: "db".into(),
                mode: 0o644,
                contents: SecretBytes::from("x".to_string()),
            }],
            object_versions: vec![],
        })
    });
    let running = serve_ours(provider);
    let err = running.client(fast()).mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidResponse);
    assert!(err.message.contains("no object versions"), "{err}");
    running.stop().await;
}

#[tokio::test]
async fn zero_files_means_the_provider_wrote_them() {
    let provider = TestProvider::new(|_| {
        Ok(MountResponse {
            files: vec![],
            object_versions: one_version(),
        })
    });
    let running = serve_ours(provider);
    let resp = running.client(fast()).mount(request()).await.unwrap();
    assert!(resp.files.is_empty());
    assert_eq!(resp.object_versions, one_version());
    running.stop().await;
}

#[tokio::test]
async fn oversize_response_is_a_clear_error() {
    let provider = TestProvider::new(|_| {
        Ok(MountResponse {
            files: vec![ProviderFile {
                path: "big".into(),
                mode: 0o644,
                contents: SecretBytes::new(vec![7u8; 2 * 1024 * 1024]),
            }],
            object_versions: one_version(),
        })
    });
    let running = serve_ours(provider);
    let small = ClientConfig {
        max_response_bytes: 1024 * 1024,
        ..fast()
    };
    let err = running.client(small).mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidResponse);
    assert!(err.message.contains("1048576 byte limit"), "{err}");

    // The default 4 MiB limit lets the same response through.
    let resp = running.client(fast()).mount(request()).await.unwrap();
    assert_eq!(resp.files[0].contents.len(), 2 * 1024 * 1024);
    running.stop().await;
}

#[tokio::test]
async fn unsafe_paths_and_modes_are_rejected() {
    for (path, mode) in [
        ("../escape", 0o644),
        ("/etc/passwd", 0o644),
        ("", 0o644),
        // The path contract (secrets_store_provider::validate_path), not only what escapes.
        ("..data", 0o644),
        ("a/..b", 0o644),
        ("a/./b", 0o644),
        ("a\0b", 0o644),
        ("ok", -1),
        ("ok", 0o4755),
    ] {
        let running = serve_raw(wire::MountResponse {
            object_version: vec![wire::ObjectVersion {
                id: "db".into(),
                version: "1".into(),
            }],
            error: None,
            files: vec![wire::File {
                path: path.into(),
                mode,
                contents: b"x".to_vec(),
            }],
        });
        let err = running.client(fast()).mount(request()).await.unwrap_err();
        assert_eq!(
            err.kind,
            ProviderErrorKind::InvalidResponse,
            "{path:?} {mode}: {err}"
        );
        running.stop().await;
    }
}

#[tokio::test]
async fn missing_socket_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let client = ExternalProvider::with_config(
        "vault",
        dir.path().join("vault.sock"),
        ClientConfig {
            attempts: 2,
            retry_backoff: Duration::from_millis(10),
            ..ClientConfig::default()
        },
    );
    let err = client.mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
    assert!(err.message.contains("vault.sock"), "{err}");
    let err = client.probe_version().await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
}

#[tokio::test]
async fn client_reconnects_after_the_provider_restarts() {
    let ok = |_: &MountRequest| {
        Ok(MountResponse {
            files: vec![],
            object_versions: one_version(),
        })
    };
    let running = serve_ours(TestProvider::new(ok));
    let client = running.client(fast());
    client.mount(request()).await.unwrap();
    let socket = running.socket.clone();
    let dir = running._dir;
    let _ = running.stop.send(());
    running.task.await.unwrap();
    assert!(client.mount(request()).await.is_err(), "provider is down");

    let listener = server::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let task = tokio::spawn(async move {
        server::serve_on(TestProvider::new(ok), listener, &path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    client.mount(request()).await.unwrap();
    Running {
        _dir: dir,
        socket,
        stop,
        task,
    }
    .stop()
    .await;
}

#[tokio::test]
async fn tokens_and_secrets_never_reach_debug_or_errors() {
    // A careless provider echoes its input into the error message.
    let provider = TestProvider::new(|req| {
        Err(ProviderError::new(
            ProviderErrorKind::Unauthenticated,
            format!(
                "rejected token {} with password {}",
                req.attributes.get(Attributes::TOKENS_KEY).unwrap(),
                String::from_utf8_lossy(req.secrets["password"].expose())
            ),
        ))
    });
    let running = serve_ours(provider);
    let client = running.client(fast());
    let err = client.mount(request()).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unauthenticated);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{client:?}"),
        format!("{:?}", request()),
    ] {
        assert!(!text.contains(TOKEN), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");
    }
    running.stop().await;
}

#[tokio::test]
async fn socket_is_private_replaces_a_stale_one_and_refuses_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aws.sock");
    // A stale socket from a previous run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());

    let listener = server::bind(&socket).unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(listener);

    let file = dir.path().join("file.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let err = server::bind(&file).unwrap_err();
    assert!(
        matches!(
            err,
            server::ServeError::Socket(secrets_store_uds::BindError::NotASocket(_))
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
    assert_only(dir.path(), &["aws.sock", "file.sock"]);
}

/// No temporary files are left next to the socket.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    assert_eq!(found, names);
}
