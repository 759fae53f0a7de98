//! HTTP/2 frames (RFC 9113 §4, §6) and the gRPC message prefix, as bytes.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 frame types (RFC 9113 §6).
pub mod frame_type {
    #![allow(missing_docs)]
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// HTTP/2 frame flags.
pub mod flag {
    #![allow(missing_docs)]
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers this client looks at (RFC 9113 §6.5.2).
pub(super) mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
}

/// One HTTP/2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type ([`frame_type`]).
    pub kind: u8,
    /// Flags ([`flag`]).
    pub flags: u8,
    /// Stream identifier (31 bits).
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame.
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            kind,
            flags,
            stream,
            payload: payload.into(),
        }
    }

    /// The frame on the wire: the 9-byte header, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.payload.len();
        assert!(len < 1 << 24, "HTTP/2 frame payload too large");
        let mut out = Vec::with_capacity(9 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The first 4 payload bytes as a big-endian number (RST_STREAM, WINDOW_UPDATE, GOAWAY).
    pub(super) fn u32_at_start(&self) -> Option<u32> {
        let b = self.payload.get(..4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The content of a HEADERS or DATA frame without padding (and HEADERS priority fields);
    /// `None` if the padding is longer than the frame.
    pub(super) fn content(&self) -> Option<&[u8]> {
        let mut p = &self.payload[..];
        let mut pad = 0usize;
        if self.has(flag::PADDED) {
            pad = usize::from(*p.first()?);
            p = &p[1..];
        }
        if self.kind == frame_type::HEADERS && self.has(flag::PRIORITY) {
            p = p.get(5..)?;
        }
        p.get(..p.len().checked_sub(pad)?)
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadFrameError {
    /// The connection failed or ended (`UnexpectedEof` at the end of the stream).
    Io(std::io::Error),
    /// A frame longer than the limit.
    TooLarge(usize),
}

impl fmt::Display for ReadFrameError {
    // Worded like the errors grpc-go's reader reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                f.write_str("EOF")
            }
            ReadFrameError::Io(e) => write!(f, "{e}"),
            ReadFrameError::TooLarge(_) => f.write_str("http2: frame too large"),
        }
    }
}

/// Reads one frame, refusing a payload longer than `max` before reading it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Frame, ReadFrameError> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await.map_err(ReadFrameError::Io)?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    if len > max {
        return Err(ReadFrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(ReadFrameError::Io)?;
    Ok(Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A SETTINGS payload from `(identifier, value)` pairs.
pub fn settings_payload(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(settings.len() * 6);
    for (id, v) in settings {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes.
pub fn grpc_message(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::grpc_go::MAX_FRAME_SIZE;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = [
            Frame::new(
                frame_type::SETTINGS,
                0,
                0,
                settings_payload(&[(4, 1 << 20), (5, 16_384)]),
            ),
            Frame::new(frame_type::PING, flag::ACK, 0, *b"12345678"),
            Frame::new(
                frame_type::DATA,
                flag::END_STREAM,
                0x7fff_ffff,
                grpc_message(b"hi"),
            ),
            Frame::new(
                frame_type::HEADERS,
                flag::END_HEADERS,
                3,
                vec![0x82; MAX_FRAME_SIZE],
            ),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode());
        }
        assert_eq!(&wire[..9], &[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r, MAX_FRAME_SIZE).await.unwrap(), f);
        }
        let end = read_frame(&mut r, MAX_FRAME_SIZE).await.unwrap_err();
        assert_eq!(end.to_string(), "EOF");
        // A frame over the limit is refused from its header.
        let big = Frame::new(frame_type::DATA, 0, 1, vec![0; MAX_FRAME_SIZE + 1]).encode();
        let err = read_frame(&mut &big[..], MAX_FRAME_SIZE).await.unwrap_err();
        assert_eq!(err.to_string(), "http2: frame too large");
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let mut payload = vec![3, 0, 0, 0, 1, 16];
        payload.extend_from_slice(b"xyz");
        payload.extend_from_slice(&[0, 0, 0]);
        let f = Frame::new(
            frame_type::HEADERS,
            flag::PADDED | flag::PRIORITY,
            1,
            payload,
        );
        assert_eq!(f.content(), Some(&b"xyz"[..]));
        let data = Frame::new(frame_type::DATA, flag::PADDED, 1, vec![1, 7, 0]);
        assert_eq!(data.content(), Some(&[7][..]));
        let bad = Frame::new(frame_type::DATA, flag::PADDED, 1, vec![9, 1, 2]);
        assert_eq!(bad.content(), None);
        assert_eq!(grpc_message(b"ab"), [0, 0, 0, 0, 2, b'a', b'b']);
    }
}
