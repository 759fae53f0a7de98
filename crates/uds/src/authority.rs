//! The `:authority` fix-up: a sans-I/O filter over the bytes an HTTP/2 client sends.
//!
//! grpc-go clients that dial a bare socket path with no `WithAuthority` (kubelet's plugin
//! registration client among them, kubernetes/kubernetes#108254) send the %-encoded path as
//! `:authority`. RFC 9113 §8.3.1 says `:authority` holds a URI authority, so `h2` refuses the
//! request with `RST_STREAM PROTOCOL_ERROR` (hyperium/h2#487, hyperium/tonic#243) and kubelet
//! retries registration forever. Over a unix socket the authority carries no meaning, so before
//! `h2` sees a header block this filter replaces an authority that is not a valid URI authority
//! with `localhost`, the value kubelet's own CSI client uses.
//!
//! Every other byte passes through unchanged, except that header blocks are decoded and
//! re-encoded: once one block is rewritten, the client's HPACK dynamic table and the one `h2`
//! decodes with differ, so every block on the connection is re-encoded with our own encoder.
//! Padding is dropped on the way (it is optional and carries nothing).

use std::borrow::Cow;

use loona_hpack::{Decoder, Encoder};

/// What an authority that is not a URI authority becomes.
pub const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// The largest header block buffered, whole (grpc-go's requests are a few hundred bytes).
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The frames we emit stay within the protocol's default `SETTINGS_MAX_FRAME_SIZE`, which every
/// HTTP/2 server accepts.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The HPACK dynamic table size a server allows until it says otherwise (RFC 7541 §4.2); `h2` as
/// tonic configures it never says otherwise.
const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;

/// Why a connection had to be closed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FixupError {
    /// A header block larger than [`MAX_HEADER_BLOCK`].
    #[error("HTTP/2 header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// A frame arrived in the middle of a header block (RFC 9113 §6.10).
    #[error("HTTP/2 frame of type {0:#x} inside a header block")]
    InterleavedFrame(u8),
    /// Padding or priority fields longer than the frame.
    #[error("malformed HTTP/2 HEADERS frame")]
    MalformedHeaders,
    /// The client's HPACK could not be decoded.
    #[error("HPACK decoding failed: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// A header block being collected from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the connection preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Copying the payload of a frame we do not look into.
    Payload { remaining: usize },
    /// Not HTTP/2 prior knowledge: bytes pass through and the server answers as it will.
    Opaque,
}

/// The filter for one connection's client-to-server bytes.
pub struct AuthorityFixup {
    state: State,
    /// Bytes received but not yet emitted (a partial preface, frame header or header frame).
    pending: Vec<u8>,
    block: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    rewritten: u64,
}

impl std::fmt::Debug for AuthorityFixup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFixup")
            .field("state", &self.state)
            .field("pending", &self.pending.len())
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for AuthorityFixup {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
        Self {
            state: State::Preface,
            pending: Vec::new(),
            block: None,
            decoder,
            encoder: Encoder::new(),
            rewritten: 0,
        }
    }
}

impl AuthorityFixup {
    /// How many `:authority` values this connection had replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes the next bytes from the client and appends what the server should see to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FixupError> {
        loop {
            match self.state {
                State::Opaque => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Payload { remaining } => {
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == remaining {
                        State::FrameHeader
                    } else {
                        State::Payload {
                            remaining: remaining - n,
                        }
                    };
                    if input.is_empty() {
                        return Ok(());
                    }
                }
                State::Preface => {
                    let want = PREFACE.len() - self.pending.len();
                    let n = want.min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if !PREFACE.starts_with(&self.pending) {
                        self.state = State::Opaque;
                        out.append(&mut self.pending);
                        continue;
                    }
                    if self.pending.len() < PREFACE.len() {
                        return Ok(());
                    }
                    out.append(&mut self.pending);
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if !self.next_frame(&mut input, out)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles the frame at the front of `pending` + `input`; `false` when more bytes are needed.
    fn next_frame(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Result<bool, FixupError> {
        if self.pending.len() < FRAME_HEADER_LEN {
            let n = (FRAME_HEADER_LEN - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..n]);
            *input = &input[n..];
            if self.pending.len() < FRAME_HEADER_LEN {
                return Ok(false);
            }
        }
        let header: [u8; FRAME_HEADER_LEN] = self.pending[..FRAME_HEADER_LEN]
            .try_into()
            .expect("nine bytes");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let kind = header[3];
        let flags = header[4];
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);

        let in_block = self.block.is_some();
        let is_header_frame = kind == TYPE_HEADERS || (kind == TYPE_CONTINUATION && in_block);
        if in_block && kind != TYPE_CONTINUATION {
            return Err(FixupError::InterleavedFrame(kind));
        }
        if !is_header_frame {
            out.append(&mut self.pending);
            self.state = State::Payload { remaining: len };
            return Ok(true);
        }
        let buffered = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if len > MAX_HEADER_BLOCK || buffered + len > MAX_HEADER_BLOCK {
            return Err(FixupError::HeaderBlockTooLarge);
        }
        let have = self.pending.len() - FRAME_HEADER_LEN;
        let n = (len - have).min(input.len());
        self.pending.extend_from_slice(&input[..n]);
        *input = &input[n..];
        if self.pending.len() < FRAME_HEADER_LEN + len {
            return Ok(false);
        }
        let payload = std::mem::take(&mut self.pending).split_off(FRAME_HEADER_LEN);
        if kind == TYPE_HEADERS {
            let (priority, fragment) = headers_fragment(flags, &payload)?;
            self.block = Some(PendingBlock {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else if let Some(block) = &mut self.block {
            block.fragment.extend_from_slice(&payload);
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.block.take().expect("a header block is pending");
            self.emit_block(block, out)?;
        }
        self.state = State::FrameHeader;
        Ok(true)
    }

    /// Decodes a complete header block, fixes its authority and writes it out re-encoded.
    fn emit_block(&mut self, block: PendingBlock, out: &mut Vec<u8>) -> Result<(), FixupError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                fields.push((name.into_owned(), value.into_owned()))
            })
            .map_err(FixupError::Hpack)?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && !is_uri_authority(value) {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "unix-socket client sent a :authority that is not a URI authority; serving it as localhost"
                );
                *value = LOCAL_AUTHORITY.to_vec();
                self.rewritten += 1;
            }
        }
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_header_frames(&block, &encoded, out);
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn headers_fragment(
    flags: u8,
    payload: &[u8],
) -> Result<(Option<[u8; PRIORITY_LEN]>, &[u8]), FixupError> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&len, tail) = rest.split_first().ok_or(FixupError::MalformedHeaders)?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if rest.len() < PRIORITY_LEN {
            return Err(FixupError::MalformedHeaders);
        }
        let (fields, tail) = rest.split_at(PRIORITY_LEN);
        priority = Some(fields.try_into().expect("five bytes"));
        rest = tail;
    }
    if pad > rest.len() {
        return Err(FixupError::MalformedHeaders);
    }
    Ok((priority, &rest[..rest.len() - pad]))
}

/// Writes `encoded` as one HEADERS frame and as many CONTINUATION frames as it needs.
fn write_header_frames(block: &PendingBlock, encoded: &[u8], out: &mut Vec<u8>) {
    let first_room = MAX_FRAME_PAYLOAD - block.priority.map_or(0, |_| PRIORITY_LEN);
    let (first, mut rest) = encoded.split_at(first_room.min(encoded.len()));
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut payload = Vec::with_capacity(first.len() + PRIORITY_LEN);
    if let Some(priority) = block.priority {
        flags |= FLAG_PRIORITY;
        payload.extend_from_slice(&priority);
    }
    payload.extend_from_slice(first);
    write_frame(TYPE_HEADERS, flags, block.stream_id, &payload, out);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(MAX_FRAME_PAYLOAD.min(rest.len()));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(TYPE_CONTINUATION, flags, block.stream_id, chunk, out);
    }
}

fn write_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len())
        .expect("payload within a frame")
        .to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Whether `h2` accepts `value` as `:authority` (it parses it with the same `http` type).
fn is_uri_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

#[cfg(test)]
mod tests;
