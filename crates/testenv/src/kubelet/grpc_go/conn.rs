//! The HTTP/2 connection: what grpc-go's `http2Client` does for kubelet's registration calls.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::Code;

use super::encoding::{authority_for_target, encode_timeout};
use super::frame::{Frame, PREFACE, flag, frame_type as ft, grpc_message, read_frame, setting};
use super::response::{HeaderList, ResponseStream};
use super::status::{RpcError, connection_error};
use super::{DIAL_TIMEOUT, MAX_FRAME_SIZE, USER_AGENT};

/// HTTP/2's initial flow-control window (RFC 9113 §6.9.2); grpc-go keeps it.
const DEFAULT_WINDOW: i64 = 65_535;
/// HPACK's initial dynamic table size (RFC 7541 §4.2).
const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// Largest decoded header list accepted: HPACK can expand a small block a lot.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// grpc-go's `inFlow` returns received bytes to the sender once a quarter of a window is used.
const WINDOW_UPDATE_THRESHOLD: u32 = (DEFAULT_WINDOW / 4) as u32;

/// A connection as kubelet's grpc-go `ClientConn` holds it to a registration socket: unary
/// calls one after another, each on the next client stream (1, 3, 5, …).
pub struct GrpcGoConn<S = UnixStream> {
    io: S,
    authority: String,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    next_stream: u32,
    send_window: i64,
    recv_pending: u32,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// A lower HPACK table size the server asked for, to announce in the next header block.
    table_size_update: Option<usize>,
    draining: bool,
    /// Set after a connection-level failure or an abandoned call: every later call fails.
    broken: Option<RpcError>,
}

/// The call in progress on a connection.
struct Call {
    stream: u32,
    rs: ResponseStream,
    send_window: i64,
    recv_pending: u32,
}

impl<S> fmt::Debug for GrpcGoConn<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcGoConn")
            .field("authority", &self.authority)
            .field("next_stream", &self.next_stream)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl GrpcGoConn<UnixStream> {
    /// Dials `socket` like kubelet's `dial()`: `:authority` from the path
    /// ([`authority_for_target`]), ready once the server's SETTINGS arrived, within
    /// [`DIAL_TIMEOUT`]. grpc-go with `WithBlock` would retry a refused connect until the
    /// deadline; this fails at once (the simulator's plugin watcher retries).
    pub async fn dial(socket: &Path) -> Result<Self, RpcError> {
        let authority = authority_for_target(socket);
        let dial = async {
            let io = UnixStream::connect(socket).await.map_err(|e| {
                RpcError::new(
                    Code::Unavailable,
                    format!(
                        "connection error: desc = \"transport: Error while dialing: dial unix {}: connect: {e}\"",
                        socket.display()
                    ),
                )
            })?;
            GrpcGoConn::handshake(io, authority).await
        };
        tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::new(
                    Code::DeadlineExceeded,
                    "context deadline exceeded",
                ))
            })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GrpcGoConn<S> {
    /// Starts HTTP/2 on `io` as grpc-go does (preface, empty SETTINGS), then waits for the
    /// server's SETTINGS and acknowledges them. `authority` goes into every request.
    pub async fn handshake(io: S, authority: String) -> Result<Self, RpcError> {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
        let mut conn = GrpcGoConn {
            io,
            authority,
            encoder: Encoder::new(),
            decoder,
            next_stream: 1,
            send_window: DEFAULT_WINDOW,
            recv_pending: 0,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME_SIZE,
            table_size_update: None,
            draining: false,
            broken: None,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(Frame::new(ft::SETTINGS, 0, 0, Vec::new()).encode());
        conn.write(&hello).await?;
        // The server preface is a SETTINGS frame; grpc-go fails the dial on anything else.
        let first = conn.read().await?;
        if first.kind != ft::SETTINGS || first.has(flag::ACK) {
            return Err(connection_error(format!(
                "transport: first frame received is type {:#x}, not SETTINGS",
                first.kind
            )));
        }
        conn.on_connection_frame(first, None).await?;
        Ok(conn)
    }

    /// The `:authority` this connection sends.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// grpc-go's request header fields for `method`, in `createHeaderFields` order, with
    /// `grpc-timeout` for `left` until the deadline (grpc-go computes it as it builds them).
    pub fn request_headers(&self, method: &str, left: Duration) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", method.into()),
            (":authority", self.authority.clone()),
            ("content-type", "application/grpc".into()),
            ("user-agent", USER_AGENT.into()),
            ("te", "trailers".into()),
            // `registeredCompressors`: kubelet links otlptracegrpc, whose config package
            // imports google.golang.org/grpc/encoding/gzip, so gzip is registered in kubelet.
            ("grpc-accept-encoding", "gzip".into()),
            ("grpc-timeout", encode_timeout(left)),
        ]
    }

    /// One unary call of `method` (a full name like [`super::GET_INFO`]) with kubelet's
    /// deadline `timeout`. On a timeout grpc-go resets the stream with CANCEL and keeps the
    /// connection; this abandons the connection (kubelet closes it after registering anyway).
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let deadline = Instant::now() + timeout;
        let body = grpc_message(&req.encode_to_vec());
        let call = tokio::time::timeout_at(deadline, self.call(method, &body, deadline));
        let Ok(bytes) = call.await else {
            self.broken = Some(RpcError::new(
                Code::Unavailable,
                "kubelet simulator: connection abandoned after a deadline",
            ));
            return Err(RpcError::new(
                Code::DeadlineExceeded,
                "context deadline exceeded",
            ));
        };
        Resp::decode(&bytes?[..]).map_err(|e| {
            RpcError::new(
                Code::Internal,
                format!("grpc: failed to unmarshal the received message: {e}"),
            )
        })
    }

    async fn call(
        &mut self,
        method: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, RpcError> {
        if self.draining {
            return Err(RpcError::new(
                Code::Unavailable,
                "the connection is draining",
            ));
        }
        let mut call = Call {
            stream: self.next_stream,
            rs: ResponseStream::new(Some(deadline)),
            send_window: self.peer_initial_window,
            recv_pending: 0,
        };
        self.next_stream += 2;
        let left = deadline.saturating_duration_since(Instant::now());
        self.send_headers(call.stream, &self.request_headers(method, left))
            .await?;
        let mut sent = 0;
        loop {
            sent += self.send_data(&mut call, &body[sent..]).await?;
            if let Some(r) = call.rs.take_outcome() {
                return r;
            }
            let f = self.read().await?;
            if f.stream == call.stream {
                self.on_stream_frame(f, &mut call).await?;
            } else {
                self.on_connection_frame(f, Some(&mut call)).await?;
            }
        }
    }

    /// One header block: HEADERS with END_HEADERS (CONTINUATION only past the frame size).
    async fn send_headers(
        &mut self,
        stream: u32,
        headers: &[(&'static str, String)],
    ) -> Result<(), RpcError> {
        let mut block = Vec::new();
        if let Some(size) = self.table_size_update.take() {
            // Dynamic table size update (RFC 7541 §6.3).
            loona_hpack::encoder::encode_integer_into(size, 5, 0x20, &mut block)
                .expect("writing to a Vec");
            self.encoder.set_max_table_size(size);
        }
        let fields = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        self.encoder
            .encode_into(fields, &mut block)
            .expect("writing to a Vec");
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = block.chunks(self.peer_max_frame).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 {
                ft::HEADERS
            } else {
                ft::CONTINUATION
            };
            let last = i + 1 == chunks.len();
            let flags = if last { flag::END_HEADERS } else { 0 };
            out.extend(Frame::new(kind, flags, stream, *chunk).encode());
        }
        self.write(&out).await
    }

    /// Sends as much of `rest` as the flow-control windows allow, END_STREAM with the last
    /// byte; returns how much was sent.
    async fn send_data(&mut self, call: &mut Call, rest: &[u8]) -> Result<usize, RpcError> {
        let mut sent = 0;
        while sent < rest.len() && !call.rs.is_done() {
            let window = self.send_window.min(call.send_window).max(0) as usize;
            let n = (rest.len() - sent).min(self.peer_max_frame).min(window);
            if n == 0 {
                break;
            }
            let last = sent + n == rest.len();
            let flags = if last { flag::END_STREAM } else { 0 };
            let f = Frame::new(ft::DATA, flags, call.stream, &rest[sent..sent + n]);
            self.write(&f.encode()).await?;
            sent += n;
            self.send_window -= n as i64;
            call.send_window -= n as i64;
        }
        Ok(sent)
    }

    /// A frame on the call's stream.
    async fn on_stream_frame(&mut self, f: Frame, call: &mut Call) -> Result<(), RpcError> {
        match f.kind {
            ft::WINDOW_UPDATE => call.send_window += i64::from(window_increment(&f)?),
            ft::DATA => {
                call.rs.count(f.payload.len())?;
                let Some(data) = f.content() else {
                    return Err(self.fail(connection_error("http2: invalid DATA padding")));
                };
                call.rs.on_data(data, f.has(flag::END_STREAM));
                self.credit(call, f.payload.len() as u32, f.has(flag::END_STREAM))
                    .await?;
            }
            ft::HEADERS => {
                let end_stream = f.has(flag::END_STREAM);
                let fields = self.header_block(f, &mut call.rs).await?;
                call.rs.on_headers(&fields, end_stream);
            }
            ft::RST_STREAM => call.rs.on_rst(f.u32_at_start().unwrap_or(1)),
            _ => self.on_connection_frame(f, Some(call)).await?,
        }
        Ok(())
    }

    /// Gives received DATA back to the server's windows, a quarter window at a time.
    async fn credit(&mut self, call: &mut Call, n: u32, end_stream: bool) -> Result<(), RpcError> {
        self.recv_pending += n;
        call.recv_pending += n;
        let mut out = Vec::new();
        if self.recv_pending > WINDOW_UPDATE_THRESHOLD {
            out.extend(window_update(0, self.recv_pending));
            self.recv_pending = 0;
        }
        if call.recv_pending > WINDOW_UPDATE_THRESHOLD && !end_stream {
            out.extend(window_update(call.stream, call.recv_pending));
            call.recv_pending = 0;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.write(&out).await
    }

    /// Collects a header block (HEADERS, then CONTINUATION frames) and decodes it, bounded.
    async fn header_block(
        &mut self,
        first: Frame,
        rs: &mut ResponseStream,
    ) -> Result<HeaderList, RpcError> {
        rs.count(first.payload.len())?;
        let Some(fragment) = first.content() else {
            return Err(self.fail(connection_error("http2: invalid HEADERS padding")));
        };
        let mut block = fragment.to_vec();
        let mut end = first.has(flag::END_HEADERS);
        while !end {
            let f = self.read().await?;
            if f.kind != ft::CONTINUATION || f.stream != first.stream {
                return Err(self.fail(connection_error(
                    "connection error: PROTOCOL_ERROR (frame inside a header block)",
                )));
            }
            rs.count(f.payload.len())?;
            block.extend_from_slice(&f.payload);
            end = f.has(flag::END_HEADERS);
        }
        self.decode_block(&block)
    }

    fn decode_block(&mut self, block: &[u8]) -> Result<HeaderList, RpcError> {
        let mut fields = Vec::new();
        let mut size = 0usize;
        let decoded = self.decoder.decode_with_cb(block, |n, v| {
            // Counted like HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE; past the limit, dropped.
            size += n.len() + v.len() + 32;
            if size <= MAX_HEADER_LIST {
                fields.push((n.into_owned(), v.into_owned()));
            }
        });
        if let Err(e) = decoded {
            return Err(self.fail(connection_error(format!(
                "connection error: COMPRESSION_ERROR ({e})"
            ))));
        }
        if size > MAX_HEADER_LIST {
            return Err(RpcError::new(
                Code::Internal,
                "peer header list size exceeded limit",
            ));
        }
        Ok(fields)
    }

    /// Connection-level frames, and frames of streams other than the call's.
    async fn on_connection_frame(
        &mut self,
        f: Frame,
        call: Option<&mut Call>,
    ) -> Result<(), RpcError> {
        match f.kind {
            ft::SETTINGS if !f.has(flag::ACK) => self.on_settings(&f, call).await?,
            ft::PING if !f.has(flag::ACK) => {
                let ack = Frame::new(ft::PING, flag::ACK, 0, f.payload);
                self.write(&ack.encode()).await?;
            }
            ft::WINDOW_UPDATE if f.stream == 0 => {
                self.send_window += i64::from(window_increment(&f)?);
            }
            ft::GOAWAY => {
                let last = f.u32_at_start().unwrap_or(0) & 0x7fff_ffff;
                self.draining = true;
                if let Some(call) = call
                    && call.stream > last
                {
                    call.rs.finish(Err(RpcError::new(
                        Code::Unavailable,
                        "the connection is draining",
                    )));
                }
            }
            ft::HEADERS => {
                // Another stream's header block: decoded all the same, for the HPACK table.
                self.header_block(f, &mut ResponseStream::new(None)).await?;
            }
            ft::PUSH_PROMISE | ft::CONTINUATION => {
                return Err(self.fail(connection_error(format!(
                    "connection error: PROTOCOL_ERROR (unexpected frame type {:#x})",
                    f.kind
                ))));
            }
            // Acks, DATA or RST_STREAM of finished streams, PRIORITY, unknown types.
            _ => {}
        }
        Ok(())
    }

    /// The server's SETTINGS: applied, then acknowledged.
    async fn on_settings(&mut self, f: &Frame, call: Option<&mut Call>) -> Result<(), RpcError> {
        if f.stream != 0 || !f.payload.len().is_multiple_of(6) {
            return Err(self.fail(connection_error(
                "connection error: FRAME_SIZE_ERROR (malformed SETTINGS)",
            )));
        }
        let mut window_delta = 0;
        for s in f.payload.chunks(6) {
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match u16::from_be_bytes([s[0], s[1]]) {
                setting::INITIAL_WINDOW_SIZE => {
                    window_delta += i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                }
                setting::MAX_FRAME_SIZE => {
                    self.peer_max_frame = (value as usize).clamp(MAX_FRAME_SIZE, (1 << 24) - 1);
                }
                // golang.org/x/net's SetMaxDynamicTableSizeLimit: only a lower limit changes
                // the encoder, announced at the start of the next header block.
                setting::HEADER_TABLE_SIZE if (value as usize) < DEFAULT_HEADER_TABLE_SIZE => {
                    self.table_size_update = Some(value as usize);
                }
                _ => {}
            }
        }
        if let Some(call) = call {
            call.send_window += window_delta;
        }
        let ack = Frame::new(ft::SETTINGS, flag::ACK, 0, Vec::new());
        self.write(&ack.encode()).await
    }

    async fn read(&mut self) -> Result<Frame, RpcError> {
        match read_frame(&mut self.io, MAX_FRAME_SIZE).await {
            Ok(f) => Ok(f),
            Err(e) => Err(self.fail(connection_error(e))),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        let written = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        written.await.map_err(|e| {
            self.fail(RpcError::new(
                Code::Unavailable,
                format!("connection error: desc = \"transport: failed to write: {e}\""),
            ))
        })
    }

    fn fail(&mut self, e: RpcError) -> RpcError {
        self.broken = Some(e.clone());
        e
    }
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    Frame::new(ft::WINDOW_UPDATE, 0, stream, increment.to_be_bytes()).encode()
}

fn window_increment(f: &Frame) -> Result<u32, RpcError> {
    match f.u32_at_start() {
        Some(v) if f.payload.len() == 4 => Ok(v & 0x7fff_ffff),
        _ => Err(connection_error(
            "connection error: FRAME_SIZE_ERROR (malformed WINDOW_UPDATE)",
        )),
    }
}
