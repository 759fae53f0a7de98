//! kubelet's plugin-registration gRPC client as it looks on the wire.
//!
//! kubelet (v1.35.4, `pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go`,
//! `dial()`) dials the registration socket with
//! `grpc.DialContext(ctx, socketPath, WithTransportCredentials(insecure), WithBlock(),
//! WithContextDialer(unix))`: a bare path as target and no `WithAuthority`. grpc-go (v1.72.2,
//! the version kubernetes v1.35.4's `go.mod` requires) then takes the `passthrough` resolver,
//! whose endpoint is the path itself, and `ClientConn.initAuthority` (clientconn.go) sets the
//! authority to `encodeAuthority(endpoint)`: the path percent-encoded. Rust's `http` crate
//! rejects such an authority, so an `h2`/tonic server resets the stream with
//! `RST_STREAM PROTOCOL_ERROR` (kubernetes/kubernetes#108254, hyperium/h2#487,
//! hyperium/tonic#243). tonic and hyper clients cannot send that authority, so this is a small
//! HTTP/2 gRPC unary client written against the frames, sending what grpc-go sends:
//!
//! - the client preface, then a SETTINGS frame with no settings (grpc-go's `newHTTP2Client`
//!   only adds `INITIAL_WINDOW_SIZE`/`MAX_HEADER_LIST_SIZE` when they differ from the defaults
//!   kubelet keeps) and no connection WINDOW_UPDATE; the dial completes once the server's
//!   SETTINGS arrived (`WithBlock`);
//! - per call one HEADERS frame (END_HEADERS) with the fields of grpc-go's
//!   `createHeaderFields` in its order ([`GrpcGoConn::request_headers`]), then one DATA frame
//!   with the 5-byte gRPC prefix and the message, END_STREAM;
//! - SETTINGS and PING acknowledged, WINDOW_UPDATE honoured, received DATA credited back once
//!   a quarter of a window is used (grpc-go's `inFlow`).
//!
//! Errors read like grpc-go's (`rpc error: code = Internal desc = stream terminated by
//! RST_STREAM with error code: PROTOCOL_ERROR`). HPACK is `loona-hpack`, whose encoder never
//! Huffman-codes and indexes only names it has not seen; grpc-go's (`golang.org/x/net`)
//! Huffman-codes strings when shorter and indexes every field. The decoded header list is the
//! same, the bytes are not.

mod conn;
mod encoding;
mod frame;
mod response;
mod status;

use std::path::Path;
use std::time::Duration;

use secrets_store_api::registration::v1::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};

pub use conn::GrpcGoConn;
pub use encoding::{authority_for_target, decode_grpc_message, encode_authority, encode_timeout};
pub use frame::{
    Frame, PREFACE, ReadFrameError, flag, frame_type, grpc_message, read_frame, settings_payload,
};
pub use response::ResponseStream;
pub use status::{RpcError, code_name, h2_error_name};

/// The grpc-go version kubelet v1.35.4 is built with: `google.golang.org/grpc v1.72.2` in
/// kubernetes v1.35.4's `go.mod`, and in the module `hack/tools.sh` builds kubelet from.
pub const GRPC_GO_VERSION: &str = "1.72.2";
/// grpc-go's default `user-agent` (`grpcUA = "grpc-go/" + Version`, rpc_util.go); kubelet sets
/// no `WithUserAgent`.
pub const USER_AGENT: &str = "grpc-go/1.72.2";
/// kubelet's `dialTimeoutDuration` (operation_generator.go).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// kubelet's deadline for `GetInfo`: `context.WithTimeout(ctx, time.Second)`.
pub const GET_INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// kubelet's `notifyTimeoutDuration`, the deadline for `NotifyRegistrationStatus`.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame payload accepted: HTTP/2's default `SETTINGS_MAX_FRAME_SIZE`, never raised.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// Largest response accepted per call (header blocks plus DATA payloads).
pub const MAX_RESPONSE: usize = 1 << 20;

/// Full name of `pluginregistration.Registration/GetInfo`.
pub const GET_INFO: &str = "/pluginregistration.Registration/GetInfo";
/// Full name of `pluginregistration.Registration/NotifyRegistrationStatus`.
pub const NOTIFY_REGISTRATION_STATUS: &str =
    "/pluginregistration.Registration/NotifyRegistrationStatus";

/// kubelet's `pluginregistration.Registration` client on one connection: [`GrpcGoConn::dial`],
/// then `GetInfo` with a 1 s deadline and `NotifyRegistrationStatus` with 5 s, as
/// operation_generator.go does.
#[derive(Debug)]
pub struct RegistrationClient {
    conn: GrpcGoConn,
}

impl RegistrationClient {
    /// Dials the registration socket (see [`GrpcGoConn::dial`]).
    pub async fn dial(socket: &Path) -> Result<Self, RpcError> {
        Ok(RegistrationClient {
            conn: GrpcGoConn::dial(socket).await?,
        })
    }

    /// The `:authority` sent.
    pub fn authority(&self) -> &str {
        self.conn.authority()
    }

    /// `GetInfo`, deadline [`GET_INFO_TIMEOUT`].
    pub async fn get_info(&mut self) -> Result<PluginInfo, RpcError> {
        self.conn
            .unary(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
            .await
    }

    /// `NotifyRegistrationStatus`, deadline [`NOTIFY_TIMEOUT`].
    pub async fn notify_registration_status(
        &mut self,
        status: RegistrationStatus,
    ) -> Result<RegistrationStatusResponse, RpcError> {
        self.conn
            .unary(NOTIFY_REGISTRATION_STATUS, &status, NOTIFY_TIMEOUT)
            .await
    }
}

#[cfg(test)]
mod tests;
