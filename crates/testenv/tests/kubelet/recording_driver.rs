//! The trivial CSI driver the kubelet simulator is tested against: Identity + Node +
//! Registration on a unix socket, recording every request it gets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secrets_store_api::csi::v1::identity_server::{Identity, IdentityServer};
use secrets_store_api::csi::v1::node_server::{Node, NodeServer};
use secrets_store_api::csi::v1::*;
use secrets_store_api::registration::v1::registration_server::{Registration, RegistrationServer};
use secrets_store_api::registration::v1::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tonic::{Request, Response, Status};

/// What the test driver saw at each publish.
#[derive(Debug, Clone)]
pub struct SeenPublish {
    pub request: NodePublishVolumeRequest,
    pub target_existed: bool,
    pub parent_existed: bool,
}

#[derive(Debug, Default)]
pub struct Recorded {
    pub publishes: Vec<SeenPublish>,
    pub unpublishes: Vec<NodeUnpublishVolumeRequest>,
    pub registrations: Vec<RegistrationStatus>,
    /// Publishes still to fail with PermissionDenied.
    pub fail_next: u32,
}

#[derive(Debug, Clone)]
pub struct TestDriver {
    pub name: String,
    pub csi_socket: PathBuf,
    pub rec: Arc<Mutex<Recorded>>,
}

#[tonic::async_trait]
impl Identity for TestDriver {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: "0.0.0".into(),
            manifest: Default::default(),
        }))
    }
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse::default()))
    }
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for TestDriver {
    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("no staging"))
    }
    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("no staging"))
    }
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let target = PathBuf::from(&req.target_path);
        let seen = SeenPublish {
            target_existed: target.exists(),
            parent_existed: target.parent().is_some_and(Path::exists),
            request: req,
        };
        let mut rec = self.rec.lock().unwrap();
        rec.publishes.push(seen);
        if rec.fail_next > 0 {
            rec.fail_next -= 1;
            return Err(Status::permission_denied("denied by test driver"));
        }
        std::fs::create_dir_all(&target).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }
    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let _ = std::fs::remove_dir_all(&req.target_path);
        self.rec.lock().unwrap().unpublishes.push(req);
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }
    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("no stats"))
    }
    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("no expansion"))
    }
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse::default()))
    }
    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: "testenv-node".into(),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Registration for TestDriver {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.name.clone(),
            endpoint: self.csi_socket.display().to_string(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }
    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        self.rec
            .lock()
            .unwrap()
            .registrations
            .push(req.into_inner());
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves the CSI socket under `<tmp>/csi.sock` and the registration socket under
/// `<root>/plugins_registry/<name>-reg.sock`, like a node plugin with its registrar.
pub fn serve_driver(name: &str, root: &Path, tmp: &Path) -> TestDriver {
    let csi_socket = tmp.join("csi.sock");
    let reg_dir = root.join("plugins_registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let driver = TestDriver {
        name: name.to_string(),
        csi_socket: csi_socket.clone(),
        rec: Arc::default(),
    };
    let csi = secrets_store_uds::bind(&csi_socket).unwrap();
    let d = driver.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(d.clone()))
            .add_service(NodeServer::new(d))
            .serve_with_incoming(secrets_store_uds::incoming(csi)),
    );
    let reg = secrets_store_uds::bind(&reg_dir.join(format!("{name}-reg.sock"))).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(driver.clone()))
            .serve_with_incoming(secrets_store_uds::incoming(reg)),
    );
    driver
}
