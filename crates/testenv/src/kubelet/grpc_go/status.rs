//! Errors as grpc-go reports them, and grpc-go's tables from HTTP/2 to gRPC codes.

use std::borrow::Cow;
use std::fmt;

use tonic::Code;

/// A gRPC error as grpc-go reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// A status error; displays like grpc-go's `status.Error`:
    /// `rpc error: code = <Code> desc = <message>`.
    Status {
        /// The gRPC code (0–16; others display as `Code(N)` like grpc-go).
        code: u32,
        /// The description.
        message: String,
    },
    /// A unary call ended with status OK but no response message: grpc-go v1.72.2's `invoke`
    /// returns a bare `io.EOF` then, which prints as `EOF`.
    Eof,
}

impl RpcError {
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError::Status {
            code: code as u32,
            message: message.into(),
        }
    }

    /// The gRPC code (`Unknown` for [`RpcError::Eof`], as grpc-go's `status.Code(io.EOF)`).
    pub fn code(&self) -> Code {
        match self {
            RpcError::Status { code, .. } => Code::from_i32(*code as i32),
            RpcError::Eof => Code::Unknown,
        }
    }

    /// The description (`EOF` for [`RpcError::Eof`]).
    pub fn message(&self) -> &str {
        match self {
            RpcError::Status { message, .. } => message,
            RpcError::Eof => "EOF",
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Status { code, message } => {
                write!(f, "rpc error: code = {} desc = {message}", code_name(*code))
            }
            RpcError::Eof => f.write_str("EOF"),
        }
    }
}

impl std::error::Error for RpcError {}

/// A failure of the whole connection: grpc-go closes the transport and fails pending RPCs
/// with `Unavailable` and the reader's error.
pub(super) fn connection_error(what: impl fmt::Display) -> RpcError {
    RpcError::new(
        Code::Unavailable,
        format!("error reading from server: {what}"),
    )
}

/// grpc-go's `codes.Code.String()`.
pub fn code_name(code: u32) -> Cow<'static, str> {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    match NAMES.get(code as usize) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("Code({code})")),
    }
}

/// `golang.org/x/net/http2`'s `ErrCode.String()`.
pub fn h2_error_name(code: u32) -> Cow<'static, str> {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    match NAMES.get(code as usize) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("unknown error code 0x{code:x}")),
    }
}

/// grpc-go's `http2ErrConvTab`: the gRPC code for an RST_STREAM error code.
pub(super) fn rst_code(code: u32) -> Code {
    match code {
        0..=2 | 4..=6 | 9 | 10 | 13 => Code::Internal,
        3 | 11 => Code::ResourceExhausted,
        7 => Code::Unavailable,
        8 => Code::Cancelled,
        12 => Code::PermissionDenied,
        _ => Code::Unknown,
    }
}

/// grpc-go's `HTTPStatusConvTab`; any other status maps to `Unknown`.
pub(super) fn http_status_code(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_like_grpc_go() {
        let e = RpcError::new(Code::Internal, "boom");
        assert_eq!(e.to_string(), "rpc error: code = Internal desc = boom");
        assert_eq!(e.code(), Code::Internal);
        let canceled = RpcError::Status {
            code: 1,
            message: "x".into(),
        };
        assert_eq!(canceled.to_string(), "rpc error: code = Canceled desc = x");
        let odd = RpcError::Status {
            code: 42,
            message: "x".into(),
        };
        assert_eq!(odd.to_string(), "rpc error: code = Code(42) desc = x");
        assert_eq!(RpcError::Eof.to_string(), "EOF");
        assert_eq!(RpcError::Eof.code(), Code::Unknown);
        assert_eq!(h2_error_name(1), "PROTOCOL_ERROR");
        assert_eq!(h2_error_name(0x1f), "unknown error code 0x1f");
    }

    #[test]
    fn code_tables_are_grpc_gos() {
        assert_eq!(rst_code(1), Code::Internal);
        assert_eq!(rst_code(7), Code::Unavailable);
        assert_eq!(rst_code(8), Code::Cancelled);
        assert_eq!(rst_code(11), Code::ResourceExhausted);
        assert_eq!(rst_code(0x99), Code::Unknown);
        assert_eq!(http_status_code(404), Code::Unimplemented);
        assert_eq!(http_status_code(503), Code::Unavailable);
        assert_eq!(http_status_code(200), Code::Unknown);
    }
}
