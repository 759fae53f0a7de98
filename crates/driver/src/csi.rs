//! CSI Identity and Node gRPC handlers over [`NodeService`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use secrets_store_api::csi::v1 as csi;
use secrets_store_api::csi::v1::identity_server::Identity;
use secrets_store_api::csi::v1::node_server::Node;
use secrets_store_api::labels::DRIVER_NAME;
use tonic::{Request, Response, Status};

use crate::node::{NodeService, PublishRequest};

/// The version reported by `GetPluginInfo`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Readiness shared by `Probe`, `/healthz` and shutdown.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready (true) or draining (false).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the service can serve. The API server's reachability deliberately does not count:
    /// a liveness check must not restart the agent (and kill its mounts' owner) over it.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The CSI Identity service.
#[derive(Clone, Debug)]
pub struct IdentityService {
    readiness: Readiness,
}

impl IdentityService {
    /// An identity service reporting `readiness`.
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: VERSION.to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // Node-only plugin: no controller service, no topology constraints.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        if self.readiness.is_ready() {
            Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
        } else {
            Err(Status::unavailable("node service is not serving"))
        }
    }
}

/// The CSI Node service.
#[derive(Clone, Debug)]
pub struct NodeGrpc {
    service: NodeService,
}

impl NodeGrpc {
    /// Handlers over `service`.
    pub fn new(service: NodeService) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl Node for NodeGrpc {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeStageVolume is not supported"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeUnstageVolume is not supported"))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        let block = matches!(
            r.volume_capability
                .as_ref()
                .and_then(|c| c.access_type.as_ref()),
            Some(csi::volume_capability::AccessType::Block(_))
        );
        let req = PublishRequest {
            volume_id: r.volume_id,
            target_path: r.target_path,
            has_capability: r.volume_capability.is_some(),
            block,
            readonly: r.readonly,
            volume_context: r.volume_context,
            secrets: r.secrets,
        };
        // Run to completion even if kubelet gives up on the call (its deadline is 2 minutes):
        // a publish dropped half-way would skip the cleanup of a failed first mount.
        let service = self.service.clone();
        tokio::spawn(async move { service.publish(req).await })
            .await
            .map_err(|e| Status::internal(format!("publish task failed: {e}")))?
            .map(|()| Response::new(csi::NodePublishVolumeResponse {}))
            .map_err(|e| e.to_status())
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        let service = self.service.clone();
        tokio::spawn(async move { service.unpublish(&r.volume_id, &r.target_path).await })
            .await
            .map_err(|e| Status::internal(format!("unpublish task failed: {e}")))?
            .map(|()| Response::new(csi::NodeUnpublishVolumeResponse {}))
            .map_err(|e| e.to_status())
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("NodeGetVolumeStats is not supported"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume is not supported"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.service.config().node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
