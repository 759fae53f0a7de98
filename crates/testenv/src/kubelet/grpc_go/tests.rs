//! The client as a whole against a scripted HTTP/2 server over an in-memory pipe: the frames
//! and header list it sends, and what it makes of the answers.

use std::io::Write;

use loona_hpack::{Decoder, Encoder};
use prost::Message;
use secrets_store_api::registration::v1::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::setting;
use super::frame_type as ft;
use super::*;

const KUBELET_AUTHORITY: &str =
    "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fsecrets-store.csi.k8s.io-reg.sock";

/// The server end of an in-memory HTTP/2 connection, scripted by a test.
struct FakeServer {
    io: DuplexStream,
    enc: Encoder<'static>,
    dec: Decoder<'static>,
}

impl FakeServer {
    /// Reads the client's preface and SETTINGS (which must be empty) and sends its own.
    async fn accept(mut io: DuplexStream, settings: &[(u16, u32)]) -> Self {
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface[..], PREFACE);
        let s = read_frame(&mut io, MAX_FRAME_SIZE).await.unwrap();
        assert_eq!(
            s,
            Frame::new(ft::SETTINGS, 0, 0, Vec::new()),
            "grpc-go's first SETTINGS"
        );
        let mut srv = FakeServer {
            io,
            enc: Encoder::new(),
            dec: Decoder::new(),
        };
        srv.send(Frame::new(ft::SETTINGS, 0, 0, settings_payload(settings)))
            .await;
        srv
    }

    async fn frame(&mut self) -> Frame {
        read_frame(&mut self.io, MAX_FRAME_SIZE).await.unwrap()
    }

    async fn send(&mut self, f: Frame) {
        self.io.write_all(&f.encode()).await.unwrap();
    }

    /// The next request: stream id, decoded header list, DATA (END_STREAM). Skips SETTINGS
    /// acks and window updates.
    async fn request(&mut self) -> (u32, Vec<(String, String)>, Vec<u8>) {
        let (stream, headers) = loop {
            let f = self.frame().await;
            match f.kind {
                ft::SETTINGS => assert!(f.has(flag::ACK)),
                ft::WINDOW_UPDATE => {}
                ft::HEADERS => {
                    assert_eq!(f.flags, flag::END_HEADERS, "one HEADERS frame, END_HEADERS");
                    let h = self.dec.decode(&f.payload).unwrap();
                    let h = h
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect();
                    break (f.stream, h);
                }
                k => panic!("unexpected frame type {k}"),
            }
        };
        let data = self.frame().await;
        assert_eq!(data.kind, ft::DATA);
        assert_eq!(data.stream, stream);
        assert_eq!(data.flags, flag::END_STREAM);
        (stream, headers, data.payload)
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Frame {
        let block = self
            .enc
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        Frame::new(ft::HEADERS, flags, stream, block)
    }

    async fn respond(&mut self, stream: u32, msg: &[u8]) {
        let h = self.headers(
            stream,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        self.send(h).await;
        self.send(Frame::new(ft::DATA, 0, stream, grpc_message(msg)))
            .await;
        let t = self.headers(stream, &[("grpc-status", "0"), ("grpc-message", "")], true);
        self.send(t).await;
    }
}

async fn pair(settings: &[(u16, u32)]) -> (GrpcGoConn<DuplexStream>, FakeServer) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let settings = settings.to_vec();
    let srv = tokio::spawn(async move { FakeServer::accept(server, &settings).await });
    let conn = GrpcGoConn::handshake(client, KUBELET_AUTHORITY.to_string())
        .await
        .unwrap();
    (conn, srv.await.unwrap())
}

#[tokio::test]
async fn registration_calls_send_grpc_go_headers_and_read_the_response() {
    let (mut conn, mut srv) = pair(&[(setting::MAX_FRAME_SIZE, 1 << 20)]).await;
    let info = PluginInfo {
        r#type: "CSIPlugin".into(),
        name: "secrets-store.csi.k8s.io".into(),
        endpoint: "/csi/csi.sock".into(),
        supported_versions: vec!["v1.0.0".into()],
    };
    let reply = info.clone();
    let server = tokio::spawn(async move {
        let (stream, headers, body) = srv.request().await;
        assert_eq!(stream, 1);
        // A PING in the middle must be acknowledged before the answer comes.
        srv.send(Frame::new(ft::PING, 0, 0, *b"pingpong")).await;
        let ack = loop {
            let f = srv.frame().await;
            if f.kind != ft::SETTINGS {
                break f;
            }
        };
        assert_eq!(ack, Frame::new(ft::PING, flag::ACK, 0, *b"pingpong"));
        srv.respond(stream, &reply.encode_to_vec()).await;

        let (stream2, headers2, body2) = srv.request().await;
        assert_eq!(stream2, 3);
        srv.respond(stream2, &RegistrationStatusResponse {}.encode_to_vec())
            .await;
        (headers, body, headers2, body2)
    });

    let got: PluginInfo = conn
        .unary(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, info);
    let status = RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    };
    let _: RegistrationStatusResponse = conn
        .unary(NOTIFY_REGISTRATION_STATUS, &status, NOTIFY_TIMEOUT)
        .await
        .unwrap();
    let (headers, body, headers2, body2) = server.await.unwrap();

    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            ":method",
            ":scheme",
            ":path",
            ":authority",
            "content-type",
            "user-agent",
            "te",
            "grpc-accept-encoding",
            "grpc-timeout"
        ]
    );
    let value = |h: &[(String, String)], n: &str| h.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(value(&headers, ":method"), "POST");
    assert_eq!(value(&headers, ":scheme"), "http");
    assert_eq!(value(&headers, ":path"), GET_INFO);
    assert_eq!(value(&headers, ":authority"), KUBELET_AUTHORITY);
    assert_eq!(value(&headers, "content-type"), "application/grpc");
    assert_eq!(value(&headers, "user-agent"), "grpc-go/1.72.2");
    assert_eq!(value(&headers, "te"), "trailers");
    assert_eq!(value(&headers, "grpc-accept-encoding"), "gzip");
    // 1 s deadline, set just before the call: a little under 1000000u.
    let t = value(&headers, "grpc-timeout");
    let micros: u64 = t.strip_suffix('u').unwrap().parse().unwrap();
    assert!((900_000..=1_000_000).contains(&micros), "{t}");
    assert_eq!(body, grpc_message(&[]));

    // Second call on the same connection (HPACK state carried over).
    assert_eq!(value(&headers2, ":path"), NOTIFY_REGISTRATION_STATUS);
    assert_eq!(value(&headers2, ":authority"), KUBELET_AUTHORITY);
    let t = value(&headers2, "grpc-timeout");
    let micros: u64 = t.strip_suffix('u').unwrap().parse().unwrap();
    assert!((4_900_000..=5_000_000).contains(&micros), "{t}");
    assert_eq!(body2, grpc_message(&status.encode_to_vec()));
    assert_eq!(USER_AGENT, format!("grpc-go/{GRPC_GO_VERSION}"));
}

#[tokio::test]
async fn rst_stream_fails_the_call_like_grpc_go_and_the_connection_stays_usable() {
    let (mut conn, mut srv) = pair(&[]).await;
    let server = tokio::spawn(async move {
        let (stream, _, _) = srv.request().await;
        // What an h2 server does with a %-encoded :authority.
        srv.send(Frame::new(ft::RST_STREAM, 0, stream, 1u32.to_be_bytes()))
            .await;
        let (stream, _, _) = srv.request().await;
        let t = srv.headers(
            stream,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "no%20such%20plugin"),
            ],
            true,
        );
        srv.send(t).await;
    });
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = Internal desc = stream terminated by RST_STREAM with error code: PROTOCOL_ERROR"
    );
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = NotFound desc = no such plugin"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn gzip_response_is_decompressed() {
    let (mut conn, mut srv) = pair(&[]).await;
    let info = PluginInfo {
        name: "gz".into(),
        ..Default::default()
    };
    let raw = info.encode_to_vec();
    tokio::spawn(async move {
        let (stream, _, _) = srv.request().await;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let mut msg = vec![1];
        msg.extend_from_slice(&(gz.len() as u32).to_be_bytes());
        msg.extend_from_slice(&gz);
        let h = srv.headers(
            stream,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-encoding", "gzip"),
            ],
            false,
        );
        srv.send(h).await;
        srv.send(Frame::new(ft::DATA, 0, stream, msg)).await;
        let t = srv.headers(stream, &[("grpc-status", "0")], true);
        srv.send(t).await;
    });
    let got: PluginInfo = conn
        .unary(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, info);
}

#[tokio::test]
async fn oversized_frame_and_silence_fail_the_call() {
    let (mut conn, mut srv) = pair(&[]).await;
    tokio::spawn(async move {
        let (stream, _, _) = srv.request().await;
        let h = srv.headers(
            stream,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        srv.send(h).await;
        // A DATA frame over the 16 KiB default the client never raised.
        srv.send(Frame::new(ft::DATA, 0, stream, vec![0; MAX_FRAME_SIZE + 1]))
            .await;
        std::future::pending::<()>().await;
    });
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = Unavailable desc = error reading from server: http2: frame too large"
    );
    // The connection is done for.
    let again = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(again, err);

    // A server that never answers: the deadline.
    let (mut conn, mut srv) = pair(&[]).await;
    tokio::spawn(async move {
        let _ = srv.request().await;
        std::future::pending::<()>().await;
    });
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    );
}

#[tokio::test]
async fn large_request_waits_for_window_updates() {
    // A server with a 10-byte initial stream window: the client sends in steps.
    let (mut conn, mut srv) = pair(&[(setting::INITIAL_WINDOW_SIZE, 10)]).await;
    let status = RegistrationStatus {
        plugin_registered: false,
        error: "x".repeat(40),
    };
    let expect = grpc_message(&status.encode_to_vec());
    let server = tokio::spawn(async move {
        let mut stream = 0;
        let mut body = Vec::new();
        loop {
            let f = srv.frame().await;
            match f.kind {
                ft::HEADERS => stream = f.stream,
                ft::DATA => {
                    assert!(f.payload.len() <= 10);
                    body.extend_from_slice(&f.payload);
                    if f.has(flag::END_STREAM) {
                        break;
                    }
                    srv.send(window_update_frame(stream, f.payload.len() as u32))
                        .await;
                }
                _ => {}
            }
        }
        srv.respond(stream, &[]).await;
        body
    });
    let _: RegistrationStatusResponse = conn
        .unary(NOTIFY_REGISTRATION_STATUS, &status, NOTIFY_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(server.await.unwrap(), expect);
}

fn window_update_frame(stream: u32, inc: u32) -> Frame {
    Frame::new(ft::WINDOW_UPDATE, 0, stream, inc.to_be_bytes())
}

#[tokio::test]
async fn smaller_hpack_table_is_announced_and_goaway_drains() {
    // The server allows no dynamic table: the next header block starts with a size update, and
    // the server's decoder (which knows nothing else) still reads both requests.
    let (mut conn, mut srv) = pair(&[(setting::HEADER_TABLE_SIZE, 0)]).await;
    let server = tokio::spawn(async move {
        let (stream, headers, _) = srv.request().await;
        srv.respond(stream, &[]).await;
        let (stream2, headers2, _) = srv.request().await;
        // Refuse it: the stream is past the last one the server will process.
        srv.send(Frame::new(ft::GOAWAY, 0, 0, [0, 0, 0, 1, 0, 0, 0, 0]))
            .await;
        (stream, headers, stream2, headers2)
    });
    let _: RegistrationStatusResponse = conn
        .unary(
            NOTIFY_REGISTRATION_STATUS,
            &RegistrationStatus::default(),
            NOTIFY_TIMEOUT,
        )
        .await
        .unwrap();
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = Unavailable desc = the connection is draining"
    );
    let (stream, headers, stream2, headers2) = server.await.unwrap();
    assert_eq!((stream, stream2), (1, 3));
    assert_eq!(headers.len(), 9);
    assert_eq!(headers2[2], (":path".to_string(), GET_INFO.to_string()));
    assert_eq!(headers2[3].1, KUBELET_AUTHORITY);
    // No new streams after GOAWAY.
    let err = conn
        .unary::<_, PluginInfo>(GET_INFO, &InfoRequest {}, GET_INFO_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
