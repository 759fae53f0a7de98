use super::*;

/// What kubelet's registration client sends for `GetInfo` (grpc-go, no `WithAuthority`).
const KUBELET_AUTHORITY: &[u8] =
    b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fsecrets-store.csi.k8s.io-reg.sock";

type Fields = Vec<(&'static [u8], Vec<u8>)>;

fn request_headers(authority: &[u8]) -> Fields {
    vec![
        (b":method", b"POST".to_vec()),
        (b":scheme", b"http".to_vec()),
        (
            b":path",
            b"/pluginregistration.Registration/GetInfo".to_vec(),
        ),
        (b":authority", authority.to_vec()),
        (b"content-type", b"application/grpc".to_vec()),
        (b"user-agent", b"grpc-go/1.72.2".to_vec()),
        (b"te", b"trailers".to_vec()),
    ]
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(kind, flags, stream_id, payload, &mut out);
    out
}

/// A client's bytes: preface, SETTINGS, one request per header list (HEADERS + DATA).
fn client_bytes(encoder: &mut Encoder<'static>, requests: &[Fields]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for (i, headers) in requests.iter().enumerate() {
        let stream_id = 1 + 2 * u32::try_from(i).unwrap();
        let block = encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())));
        out.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, &block));
        out.extend(frame(
            0x0,
            FLAG_END_STREAM,
            stream_id,
            &[0, 0, 0, 0, 2, 0xaa, 0xbb],
        ));
    }
    out
}

#[derive(Debug, PartialEq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

/// Splits what the server would read into frames, after checking the preface.
fn server_frames(bytes: &[u8]) -> Vec<Frame> {
    assert!(
        bytes.starts_with(PREFACE),
        "the preface passes through first"
    );
    let mut rest = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        frames.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// Decodes every header block the server would see, in order, with one decoder (as `h2` does).
fn server_header_lists(frames: &[Frame]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut decoder = Decoder::new();
    let mut lists = Vec::new();
    let mut block = Vec::new();
    for f in frames {
        match f.kind {
            TYPE_HEADERS => {
                assert_eq!(f.flags & FLAG_PADDED, 0, "padding is dropped");
                let skip = if f.flags & FLAG_PRIORITY != 0 {
                    PRIORITY_LEN
                } else {
                    0
                };
                block = f.payload[skip..].to_vec();
            }
            TYPE_CONTINUATION => block.extend_from_slice(&f.payload),
            _ => continue,
        }
        if f.flags & FLAG_END_HEADERS != 0 {
            let mut list = Vec::new();
            decoder
                .decode_with_cb(&block, |n, v| list.push((n.into_owned(), v.into_owned())))
                .expect("the server decodes what the fix-up encoded");
            lists.push(list);
        }
    }
    lists
}

fn field<'a>(list: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> &'a [u8] {
    &list
        .iter()
        .find(|(n, _)| n == name)
        .expect("field present")
        .1
}

fn run(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    AuthorityFixup::default()
        .feed(input, &mut out)
        .expect("well-formed input");
    out
}

#[test]
fn kubelets_percent_encoded_socket_path_becomes_localhost() {
    assert!(!is_uri_authority(KUBELET_AUTHORITY), "h2 refuses it as is");
    let input = client_bytes(&mut Encoder::new(), &[request_headers(KUBELET_AUTHORITY)]);

    let frames = server_frames(&run(&input));
    let lists = server_header_lists(&frames);
    assert_eq!(lists.len(), 1);
    let expected: Vec<(Vec<u8>, Vec<u8>)> = request_headers(LOCAL_AUTHORITY)
        .into_iter()
        .map(|(n, v)| (n.to_vec(), v))
        .collect();
    assert_eq!(lists[0], expected, "only the authority changed; order kept");
    let headers = frames.iter().find(|f| f.kind == TYPE_HEADERS).unwrap();
    assert_eq!((headers.stream_id, headers.flags), (1, FLAG_END_HEADERS));
    let data = frames.iter().find(|f| f.kind == 0x0).unwrap();
    assert_eq!(
        data.payload,
        [0, 0, 0, 0, 2, 0xaa, 0xbb],
        "DATA is untouched"
    );
}

#[test]
fn a_valid_authority_is_kept() {
    for authority in [&b"localhost"[..], b"127.0.0.1:8080", b"csi.sock", b"x"] {
        let input = client_bytes(&mut Encoder::new(), &[request_headers(authority)]);
        let lists = server_header_lists(&server_frames(&run(&input)));
        assert_eq!(field(&lists[0], b":authority"), authority);
    }
}

#[test]
fn byte_by_byte_input_gives_the_same_output() {
    let input = client_bytes(
        &mut Encoder::new(),
        &[
            request_headers(KUBELET_AUTHORITY),
            request_headers(KUBELET_AUTHORITY),
        ],
    );
    let mut fixup = AuthorityFixup::default();
    let mut out = Vec::new();
    for b in &input {
        fixup.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!(out, run(&input));
    assert_eq!(fixup.rewritten(), 2);
}

#[test]
fn later_requests_that_index_the_first_authority_see_localhost_too() {
    // The client's encoder puts the path into its dynamic table with the first request and sends
    // only an index with the second; what the server decodes must stay consistent.
    let first = request_headers(KUBELET_AUTHORITY);
    let mut second = request_headers(KUBELET_AUTHORITY);
    second[2].1 = b"/pluginregistration.Registration/NotifyRegistrationStatus".to_vec();
    let input = client_bytes(&mut Encoder::new(), &[first, second]);
    let lists = server_header_lists(&server_frames(&run(&input)));
    assert_eq!(lists.len(), 2);
    for list in &lists {
        assert_eq!(field(list, b":authority"), LOCAL_AUTHORITY);
    }
    assert_eq!(
        field(&lists[1], b":path"),
        b"/pluginregistration.Registration/NotifyRegistrationStatus"
    );
}

#[test]
fn padding_priority_and_continuation_are_understood() {
    let block = Encoder::new().encode(
        request_headers(KUBELET_AUTHORITY)
            .iter()
            .map(|(n, v)| (*n, v.as_slice())),
    );
    let (a, b) = block.split_at(block.len() / 2);
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 16
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM;
    input.extend(frame(TYPE_HEADERS, flags, 3, &payload));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));

    let frames = server_frames(&run(&input));
    assert_eq!(
        frames.len(),
        1,
        "one HEADERS frame carries the re-encoded block"
    );
    let f = &frames[0];
    assert_eq!(f.stream_id, 3);
    assert_eq!(f.flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
    assert_eq!(&f.payload[..PRIORITY_LEN], &[0x80, 0, 0, 0, 15]);
    let lists = server_header_lists(&frames);
    assert_eq!(field(&lists[0], b":authority"), LOCAL_AUTHORITY);
}

#[test]
fn a_block_larger_than_a_frame_is_split_into_continuations() {
    let big = vec![b'v'; 40_000];
    let mut headers = request_headers(KUBELET_AUTHORITY);
    headers.push((b"x-big", big.clone()));
    let input = client_bytes(&mut Encoder::new(), &[headers]);
    let frames = server_frames(&run(&input));
    let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.flags)).collect();
    assert_eq!(
        kinds[1..],
        [
            (TYPE_HEADERS, 0),
            (TYPE_CONTINUATION, 0),
            (TYPE_CONTINUATION, FLAG_END_HEADERS),
            (0x0, FLAG_END_STREAM)
        ]
    );
    assert!(frames.iter().all(|f| f.payload.len() <= MAX_FRAME_PAYLOAD));
    assert_eq!(field(&server_header_lists(&frames)[0], b"x-big"), big);
}

#[test]
fn header_blocks_are_bounded() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, 0, 1, &[0; 16_000]));
    for _ in 0..4 {
        input.extend(frame(TYPE_CONTINUATION, 0, 1, &[0; 16_000]));
    }
    let err = AuthorityFixup::default()
        .feed(&input, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err, FixupError::HeaderBlockTooLarge);

    let mut huge = PREFACE.to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, TYPE_HEADERS, 0, 0, 0, 0, 1]);
    let err = AuthorityFixup::default()
        .feed(&huge, &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        FixupError::HeaderBlockTooLarge,
        "refused from the frame header alone"
    );
}

#[test]
fn malformed_frames_close_the_connection() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_END_HEADERS,
        1,
        &[200, 1, 2],
    ));
    let err = AuthorityFixup::default()
        .feed(&input, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err, FixupError::MalformedHeaders);

    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
    input.extend(frame(0x0, 0, 1, &[]));
    let err = AuthorityFixup::default()
        .feed(&input, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err, FixupError::InterleavedFrame(0x0));

    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &[0xff, 0xff, 0xff, 0xff],
    ));
    let err = AuthorityFixup::default()
        .feed(&input, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, FixupError::Hpack(_)), "{err:?}");
}

#[test]
fn other_frames_and_non_http2_bytes_pass_through_unchanged() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])); // SETTINGS
    input.extend(frame(0x6, 0, 0, &[1; 8])); // PING
    input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, &[1, 2])); // stray: h2's to refuse
    assert_eq!(run(&input), input);

    let http1 = b"GET / HTTP/1.1\r\nHost: /bad\r\n\r\n";
    assert_eq!(run(http1), http1);
}
