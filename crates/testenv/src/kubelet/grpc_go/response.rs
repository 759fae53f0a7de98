//! The receiving side of one unary call, without I/O: what grpc-go's `operateHeaders`,
//! `handleData`, `handleRSTStream` and unary `recvMsg` make of a stream's frames.

use std::io::Read;

use tokio::time::Instant;
use tonic::Code;

use super::MAX_RESPONSE;
use super::encoding::decode_grpc_message;
use super::status::{RpcError, h2_error_name, http_status_code, rst_code};

/// A decoded header list.
pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// One unary call's response stream.
#[derive(Debug)]
pub struct ResponseStream {
    headers_seen: bool,
    recv_compress: Option<String>,
    data: Vec<u8>,
    received: usize,
    deadline: Option<Instant>,
    outcome: Option<Result<Vec<u8>, RpcError>>,
}

/// What the response headers say, field by field as grpc-go's `operateHeaders` reads them.
struct Fields {
    content_type_err: Option<String>,
    is_grpc: bool,
    http_status: Option<u16>,
    http_status_err: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: String,
    recv_compress: Option<String>,
}

impl Fields {
    fn read(fields: &[(Vec<u8>, Vec<u8>)], initial: bool) -> Result<Self, RpcError> {
        let mut f = Fields {
            content_type_err: Some("malformed header: missing HTTP content-type".into()),
            is_grpc: !initial,
            http_status: None,
            http_status_err: initial.then(|| "malformed header: missing HTTP status".into()),
            grpc_status: None,
            grpc_message: String::new(),
            recv_compress: None,
        };
        for (name, value) in fields {
            let v = String::from_utf8_lossy(value);
            match &name[..] {
                b"content-type" => {
                    // grpcutil.ContentSubtype: application/grpc, optionally +subtype or ;params.
                    let grpc = value.strip_prefix(b"application/grpc");
                    if grpc.is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';'))) {
                        f.content_type_err = None;
                        f.is_grpc = true;
                    } else {
                        f.content_type_err =
                            Some(format!("transport: received unexpected content-type {v:?}"));
                    }
                }
                b"grpc-encoding" => f.recv_compress = Some(v.into_owned()),
                b"grpc-status" => {
                    let code = v.parse::<i32>().map_err(|e| {
                        RpcError::new(
                            Code::Internal,
                            format!("transport: malformed grpc-status: {e}"),
                        )
                    })?;
                    f.grpc_status = Some(code as u32);
                }
                b"grpc-message" => f.grpc_message = decode_grpc_message(value),
                b":status" => {
                    let s = v.parse::<u16>().map_err(|e| {
                        RpcError::new(
                            Code::Internal,
                            format!("transport: malformed http-status: {e}"),
                        )
                    })?;
                    f.http_status = Some(s);
                    f.http_status_err = (s != 200).then(|| {
                        let text = http::StatusCode::from_u16(s)
                            .ok()
                            .and_then(|c| c.canonical_reason())
                            .unwrap_or("");
                        format!("unexpected HTTP status code received from server: {s} ({text})")
                    });
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// grpc-go's verdict on a response that is not a gRPC 200.
    fn not_grpc(self) -> Option<RpcError> {
        if self.is_grpc && self.http_status_err.is_none() {
            return None;
        }
        let code = self.http_status.map_or(Code::Internal, http_status_code);
        let errs: Vec<String> = self
            .http_status_err
            .into_iter()
            .chain(self.content_type_err)
            .collect();
        Some(RpcError::new(code, errs.join("; ")))
    }
}

impl ResponseStream {
    /// A stream that has received nothing yet; `deadline` turns a CANCEL reset after it into
    /// `DeadlineExceeded`, as in grpc-go.
    pub fn new(deadline: Option<Instant>) -> Self {
        ResponseStream {
            headers_seen: false,
            recv_compress: None,
            data: Vec::new(),
            received: 0,
            deadline,
            outcome: None,
        }
    }

    /// Whether the stream ended.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The outcome once the stream ended: the serialized response message, or the error.
    pub fn take_outcome(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        self.outcome.take()
    }

    pub(super) fn finish(&mut self, r: Result<Vec<u8>, RpcError>) {
        if self.outcome.is_none() {
            self.outcome = Some(r);
        }
    }

    /// Counts `n` received bytes against [`MAX_RESPONSE`]; past it the call fails.
    pub fn count(&mut self, n: usize) -> Result<(), RpcError> {
        self.received += n;
        if self.received <= MAX_RESPONSE {
            return Ok(());
        }
        let e = RpcError::new(
            Code::ResourceExhausted,
            format!("kubelet simulator: response larger than {MAX_RESPONSE} bytes"),
        );
        self.finish(Err(e.clone()));
        Err(e)
    }

    /// An RST_STREAM with HTTP/2 error `code`.
    pub fn on_rst(&mut self, code: u32) {
        let mut c = rst_code(code);
        if c == Code::Cancelled && self.deadline.is_some_and(|d| d <= Instant::now()) {
            c = Code::DeadlineExceeded;
        }
        let msg = format!(
            "stream terminated by RST_STREAM with error code: {}",
            h2_error_name(code)
        );
        self.finish(Err(RpcError::new(c, msg)));
    }

    /// A DATA payload (padding removed).
    pub fn on_data(&mut self, data: &[u8], end_stream: bool) {
        if self.is_done() {
            return;
        }
        self.data.extend_from_slice(data);
        if end_stream {
            self.finish(Err(RpcError::new(
                Code::Internal,
                "server closed the stream without sending trailers",
            )));
        }
    }

    /// A decoded header block: response headers, trailers, or a trailers-only response.
    pub fn on_headers(&mut self, fields: &[(Vec<u8>, Vec<u8>)], end_stream: bool) {
        if self.is_done() {
            return;
        }
        let initial = !self.headers_seen;
        if !initial && !end_stream {
            self.finish(Err(RpcError::new(
                Code::Internal,
                "a HEADERS frame cannot appear in the middle of a stream",
            )));
            return;
        }
        let mut f = match Fields::read(fields, initial) {
            Ok(f) => f,
            Err(e) => return self.finish(Err(e)),
        };
        let grpc_status = f.grpc_status;
        let grpc_message = std::mem::take(&mut f.grpc_message);
        if initial {
            self.headers_seen = true;
            self.recv_compress = f.recv_compress.take();
        }
        if let Some(e) = f.not_grpc() {
            return self.finish(Err(e));
        }
        if !end_stream {
            return;
        }
        // Trailers: the status decides; a missing one is Unknown.
        match grpc_status.unwrap_or(Code::Unknown as u32) {
            0 => {
                let r = self.unary_message();
                self.finish(r);
            }
            code => self.finish(Err(RpcError::Status {
                code,
                message: grpc_message,
            })),
        }
    }

    /// The one message of a unary response, from the DATA received.
    fn unary_message(&mut self) -> Result<Vec<u8>, RpcError> {
        let data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return Err(RpcError::Eof);
        }
        let unexpected_eof = || RpcError::new(Code::Internal, "unexpected EOF");
        let Some(prefix) = data.get(..5) else {
            return Err(unexpected_eof());
        };
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let Some(body) = data.get(5..5 + len) else {
            return Err(unexpected_eof());
        };
        if data.len() > 5 + len {
            return Err(RpcError::new(
                Code::Internal,
                "grpc: client streaming protocol violation: get <nil>, want <EOF>",
            ));
        }
        match (prefix[0], self.recv_compress.as_deref()) {
            (0, _) => Ok(body.to_vec()),
            (1, None | Some("identity")) => Err(RpcError::new(
                Code::Internal,
                "grpc: compressed flag set with identity or empty encoding",
            )),
            // kubelet links otlptracegrpc, which registers grpc-go's gzip compressor.
            (1, Some("gzip")) => gunzip(body),
            (1, Some(other)) => Err(RpcError::new(
                Code::Internal,
                format!("grpc: Decompressor is not installed for grpc-encoding {other:?}"),
            )),
            (pf, _) => Err(RpcError::new(
                Code::Internal,
                format!("grpc: received unexpected payload format {pf}"),
            )),
        }
    }
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            RpcError::new(
                Code::Internal,
                format!("grpc: failed to decompress the received message: {e}"),
            )
        })?;
    if out.len() > MAX_RESPONSE {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("grpc: received message after decompression larger than max ({MAX_RESPONSE})"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use loona_hpack::{Decoder, Encoder};
    use prost::Message;
    use secrets_store_api::registration::v1::PluginInfo;

    use super::*;
    use crate::kubelet::grpc_go::frame::{Frame, flag, frame_type, grpc_message};

    fn fields(f: &[(&str, &str)]) -> HeaderList {
        f.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn error(rs: &mut ResponseStream) -> String {
        rs.take_outcome().unwrap().unwrap_err().to_string()
    }

    const OK_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];

    #[test]
    fn response_built_with_loona_hpack_parses() {
        let info = PluginInfo {
            r#type: "CSIPlugin".into(),
            name: "secrets-store.csi.k8s.io".into(),
            endpoint: "/csi/csi.sock".into(),
            supported_versions: vec!["1.0.0".into()],
        };
        let mut enc = Encoder::new();
        let headers = enc.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
        ]);
        let trailers = enc.encode([(&b"grpc-status"[..], &b"0"[..]), (b"grpc-message", b"")]);
        let wire = [
            Frame::new(frame_type::HEADERS, flag::END_HEADERS, 1, headers),
            Frame::new(frame_type::DATA, 0, 1, grpc_message(&info.encode_to_vec())),
            Frame::new(
                frame_type::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                trailers,
            ),
        ]
        .iter()
        .flat_map(Frame::encode)
        .collect::<Vec<u8>>();

        // Parse the bytes back: frame headers by hand, header blocks with loona's decoder.
        let mut dec = Decoder::new();
        let mut rs = ResponseStream::new(None);
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = usize::from(rest[2]) | usize::from(rest[1]) << 8;
            let f = Frame::new(rest[3], rest[4], 1, &rest[9..9 + len]);
            rest = &rest[9 + len..];
            rs.count(9 + len).unwrap();
            if f.kind == frame_type::HEADERS {
                let list = dec.decode(f.content().unwrap()).unwrap();
                rs.on_headers(&list, f.has(flag::END_STREAM));
            } else {
                rs.on_data(f.content().unwrap(), f.has(flag::END_STREAM));
            }
        }
        let bytes = rs.take_outcome().unwrap().unwrap();
        assert_eq!(PluginInfo::decode(&bytes[..]).unwrap(), info);
    }

    #[test]
    fn resets_and_statuses_read_like_grpc_go() {
        let mut rs = ResponseStream::new(None);
        rs.on_rst(1);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Internal desc = stream terminated by RST_STREAM with error code: PROTOCOL_ERROR"
        );
        let mut rs = ResponseStream::new(None);
        rs.on_rst(7);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Unavailable desc = stream terminated by RST_STREAM with error code: REFUSED_STREAM"
        );
        // CANCEL after the deadline reads as the deadline.
        let mut rs = ResponseStream::new(Some(Instant::now()));
        rs.on_rst(8);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = DeadlineExceeded desc = stream terminated by RST_STREAM with error code: CANCEL"
        );

        // Trailers-only with a status; grpc-message is %-decoded.
        let mut rs = ResponseStream::new(None);
        let mut h = OK_HEADERS.to_vec();
        h.push(("grpc-status", "12"));
        h.push((
            "grpc-message",
            "unknown%20service%20pluginregistration.Registration",
        ));
        rs.on_headers(&fields(&h), true);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Unimplemented desc = unknown service pluginregistration.Registration"
        );

        // Trailers without grpc-status: Unknown.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(OK_HEADERS), false);
        rs.on_headers(&fields(&[("x", "y")]), true);
        assert_eq!(error(&mut rs), "rpc error: code = Unknown desc = ");
    }

    #[test]
    fn non_grpc_and_malformed_responses_read_like_grpc_go() {
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(&[(":status", "404")]), true);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Unimplemented desc = unexpected HTTP status code received from server: 404 (Not Found); malformed header: missing HTTP content-type"
        );
        // A 200 that is not gRPC: 200 is not in HTTPStatusConvTab, so Unknown.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(
            &fields(&[(":status", "200"), ("content-type", "text/html")]),
            false,
        );
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Unknown desc = transport: received unexpected content-type \"text/html\""
        );
        // No :status at all: Internal.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(&[("content-type", "application/grpc")]), false);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Internal desc = malformed header: missing HTTP status"
        );

        // Status OK without a message: grpc-go's invoke returns io.EOF.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(OK_HEADERS), false);
        rs.on_headers(&fields(&[("grpc-status", "0")]), true);
        assert_eq!(rs.take_outcome().unwrap().unwrap_err(), RpcError::Eof);

        // A truncated message.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(OK_HEADERS), false);
        rs.on_data(&[0, 0, 0, 0, 9, 1], false);
        rs.on_headers(&fields(&[("grpc-status", "0")]), true);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Internal desc = unexpected EOF"
        );

        // Two messages on a unary call.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(OK_HEADERS), false);
        rs.on_data(&[grpc_message(b"a"), grpc_message(b"b")].concat(), false);
        rs.on_headers(&fields(&[("grpc-status", "0")]), true);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Internal desc = grpc: client streaming protocol violation: get <nil>, want <EOF>"
        );

        // DATA ending the stream: no trailers.
        let mut rs = ResponseStream::new(None);
        rs.on_headers(&fields(OK_HEADERS), false);
        rs.on_data(&grpc_message(b"a"), true);
        assert_eq!(
            error(&mut rs),
            "rpc error: code = Internal desc = server closed the stream without sending trailers"
        );

        // The response bound.
        let mut rs = ResponseStream::new(None);
        assert!(rs.count(MAX_RESPONSE).is_ok());
        assert_eq!(rs.count(1).unwrap_err().code(), Code::ResourceExhausted);
        assert!(rs.is_done());
    }
}
