//! A small upstream-API (`v1alpha1.CSIDriverProvider`) provider for driver tests, served over a
//! real unix socket. Its behaviour is chosen per mount by the `mode` attribute (a class
//! parameter), so one process covers the success path and every error case.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use secrets_store_api::provider::v1alpha1 as pb;
use secrets_store_api::provider::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Shared state the test steers and inspects.
#[derive(Default)]
pub struct ProviderState {
    /// `mode=toggle` fails while this is set.
    pub fail: AtomicBool,
    /// Mount calls received.
    pub mounts: AtomicU64,
    /// The last request's `attributes` JSON, `secrets` JSON and `permission`.
    pub last: Mutex<Option<(String, String, String)>>,
    /// The last request's `current_object_version` as (id, version).
    pub last_current: Mutex<Vec<(String, String)>>,
    /// Mount calls in flight now, overall and per target path, and the most seen at once.
    pub in_flight: Mutex<(u64, std::collections::BTreeMap<String, u64>)>,
    /// Most mounts seen in flight at once (any targets).
    pub max_in_flight: AtomicU64,
    /// Most mounts seen in flight at once for one target path.
    pub max_in_flight_per_target: AtomicU64,
    /// Generation stamped into file contents (`mode=ok`/`toggle`).
    pub generation: AtomicU64,
}

struct Svc(Arc<ProviderState>);

fn file(path: &str, contents: Vec<u8>) -> pb::File {
    pb::File {
        path: path.to_string(),
        mode: 0o640,
        contents,
    }
}

fn version(id: &str, v: &str) -> pb::ObjectVersion {
    pb::ObjectVersion {
        id: id.to_string(),
        version: v.to_string(),
    }
}

#[tonic::async_trait]
impl CsiDriverProvider for Svc {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "testprov".into(),
            runtime_version: "0.0.1".into(),
        }))
    }

    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        let r = request.into_inner();
        self.0.mounts.fetch_add(1, Ordering::SeqCst);
        *self.0.last.lock().unwrap() = Some((
            r.attributes.clone(),
            r.secrets.clone(),
            r.permission.clone(),
        ));
        *self.0.last_current.lock().unwrap() = r
            .current_object_version
            .iter()
            .map(|v| (v.id.clone(), v.version.clone()))
            .collect();
        let attrs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&r.attributes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mode = attrs.get("mode").and_then(|v| v.as_str()).unwrap_or("ok");
        if mode == "slow" {
            // Hold the call open long enough for concurrent calls to overlap, and record how
            // many overlap (overall and per target).
            {
                let mut g = self.0.in_flight.lock().unwrap();
                g.0 += 1;
                let per = g.1.entry(r.target_path.clone()).or_default();
                *per += 1;
                let per = *per;
                self.0.max_in_flight.fetch_max(g.0, Ordering::SeqCst);
                self.0
                    .max_in_flight_per_target
                    .fetch_max(per, Ordering::SeqCst);
            }
            // Wait (bounded) for a second call to arrive, so overlap does not depend on timing;
            // a driver that serialised all calls would leave this call alone until the bound.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.0.max_in_flight.load(Ordering::SeqCst) < 2
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let mut g = self.0.in_flight.lock().unwrap();
            g.0 -= 1;
            *g.1.get_mut(&r.target_path).unwrap() -= 1;
        }
        let generation = self.0.generation.load(Ordering::SeqCst);
        let ok = || pb::MountResponse {
            // Unsorted on purpose: the driver sorts them in the pod status.
            object_version: vec![
                version("username", &format!("v{generation}")),
                version("password", &format!("v{generation}")),
            ],
            error: None,
            files: vec![
                file("username", format!("admin-{generation}").into_bytes()),
                file(
                    "nested/password",
                    format!("s3cret-{generation}").into_bytes(),
                ),
            ],
        };
        let resp = match mode {
            "ok" | "slow" => ok(),
            "toggle" if !self.0.fail.load(Ordering::SeqCst) => ok(),
            "toggle" => return Err(Status::unavailable("backend down")),
            "error-code" => pb::MountResponse {
                error: Some(pb::Error {
                    code: "AccessDenied".into(),
                }),
                ..Default::default()
            },
            "grpc-error" => return Err(Status::permission_denied("role may not read db-creds")),
            "zero-versions" => pb::MountResponse {
                files: vec![file("username", b"admin".to_vec())],
                ..Default::default()
            },
            "bad-path" => pb::MountResponse {
                object_version: vec![version("x", "1")],
                files: vec![file("../escape", b"pwned".to_vec())],
                ..Default::default()
            },
            "unclean-path" => pb::MountResponse {
                object_version: vec![version("x", "1")],
                files: vec![file("ok", b"fine".to_vec()), file("a//b", b"x".to_vec())],
                ..Default::default()
            },
            // One 384 KiB secret under 8 aliases: 3 MiB per volume, within one gRPC message.
            "aliases" => pb::MountResponse {
                object_version: vec![version("big", "1")],
                files: (0..8)
                    .map(|i| file(&format!("alias-{i}"), vec![b'x'; 384 * 1024]))
                    .collect(),
                ..Default::default()
            },
            "huge" => pb::MountResponse {
                object_version: vec![version("big", "1")],
                files: vec![file("big", vec![b'x'; 5 * 1024 * 1024])],
                ..Default::default()
            },
            other => return Err(Status::invalid_argument(format!("unknown mode {other}"))),
        };
        Ok(Response::new(resp))
    }
}

/// A running test provider; stops when dropped.
pub struct TestProvider {
    /// What the test steers/inspects.
    pub state: Arc<ProviderState>,
    /// The socket path.
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl TestProvider {
    /// Serves `<dir>/<name>.sock`.
    pub fn start(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("binding test provider socket");
        let state = Arc::new(ProviderState::default());
        let svc = CsiDriverProviderServer::new(Svc(state.clone()))
            .max_encoding_message_size(64 * 1024 * 1024);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Self {
            state,
            socket,
            task,
        }
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}
