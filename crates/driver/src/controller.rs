//! The one Controller RPC a node-only plugin answers: `ControllerGetCapabilities`, with a single
//! `UNKNOWN` capability (what upstream's driver answers).
//!
//! kubelet never calls the Controller service, but CSI tooling (csi-sanity) asks every plugin
//! for its controller capabilities on the same socket, and treats an empty list as an error (Go
//! decodes it as nil). The api crate's protos carry Identity and Node only, so the three small
//! messages are declared here with the CSI spec's field numbers.

use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, Service, StdError, http};

/// `csi.v1.ControllerGetCapabilitiesRequest` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ControllerGetCapabilitiesRequest {}

/// `csi.v1.ControllerGetCapabilitiesResponse`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ControllerGetCapabilitiesResponse {
    /// Field 1, `repeated ControllerServiceCapability capabilities`.
    #[prost(message, repeated, tag = "1")]
    pub capabilities: Vec<ControllerServiceCapability>,
}

/// `csi.v1.ControllerServiceCapability`; its `oneof type` has the single member `rpc` (field 1),
/// which on the wire is the same as an optional message field.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ControllerServiceCapability {
    /// Field 1, `RPC rpc`.
    #[prost(message, optional, tag = "1")]
    pub rpc: Option<ControllerRpc>,
}

/// `csi.v1.ControllerServiceCapability.RPC`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ControllerRpc {
    /// Field 1, the RPC type enum; 0 is `UNKNOWN`.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
}

/// Serves `csi.v1.Controller`: capabilities (none); everything else `Unimplemented`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ControllerServer;

impl tonic::server::NamedService for ControllerServer {
    const NAME: &'static str = "csi.v1.Controller";
}

struct GetCapabilities;

impl tonic::server::UnaryService<ControllerGetCapabilitiesRequest> for GetCapabilities {
    type Response = ControllerGetCapabilitiesResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, _: tonic::Request<ControllerGetCapabilitiesRequest>) -> Self::Future {
        Box::pin(async {
            Ok(tonic::Response::new(ControllerGetCapabilitiesResponse {
                capabilities: vec![ControllerServiceCapability {
                    rpc: Some(ControllerRpc { r#type: 0 }),
                }],
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for ControllerServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/csi.v1.Controller/ControllerGetCapabilities" {
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(GetCapabilities, req).await)
            });
        }
        Box::pin(async move {
            Ok(tonic::Status::unimplemented("the Controller service is not provided").into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn capabilities_encode_like_upstream() {
        let resp = ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                rpc: Some(ControllerRpc { r#type: 0 }),
            }],
        };
        // capabilities[0] { rpc {} }: a non-empty list, so Go clients see a non-nil slice.
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 0x02, 0x0a, 0x00]);
    }
}
