//! grpc-go's string encodings: the `:authority` of a passthrough target, `grpc-timeout`, and
//! `grpc-message`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// grpc-go's `encodeAuthority` (clientconn.go, v1.72.2): every byte is `%XX`-escaped
/// (upper-case hex) except ALPHA / DIGIT, the unreserved `-._~`, the sub-delims `!$&'()*+,;=`
/// and the authority delimiters `:[]@`. So `/` becomes `%2F`.
pub fn encode_authority(authority: &[u8]) -> String {
    const KEEP: &[u8] = b"-_.~!$&'()*+,;=:[]@";
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(authority.len() * 3);
    for &c in authority {
        if c.is_ascii_alphanumeric() || KEEP.contains(&c) {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        }
    }
    out
}

/// The `:authority` grpc-go sends for a `passthrough` target (`initAuthority`): `localhost`
/// before an endpoint that starts with `:`, else [`encode_authority`] of it. grpc-go first runs
/// the target through `url.Parse`, which cuts `?`/`#` parts and decodes `%XX`; socket paths
/// with those characters are not modelled.
pub fn authority_for_target(target: &Path) -> String {
    let bytes = target.as_os_str().as_bytes();
    if bytes.starts_with(b":") {
        format!("localhost{}", String::from_utf8_lossy(bytes))
    } else {
        encode_authority(bytes)
    }
}

/// grpc-go's `grpcutil.EncodeDuration` for `grpc-timeout`: the time left, rounded up, in the
/// finest unit (`n`, `u`, `m`, `S`, `M`, `H`) whose value fits in 8 digits.
pub fn encode_timeout(left: Duration) -> String {
    const MAX: u128 = 100_000_000 - 1;
    const UNITS: [(u128, &str); 5] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
    ];
    let ns = left.as_nanos();
    if ns == 0 {
        return "0n".to_string();
    }
    for (per, unit) in UNITS {
        let v = ns.div_ceil(per);
        if v <= MAX {
            return format!("{v}{unit}");
        }
    }
    format!("{}H", ns.div_ceil(3_600_000_000_000))
}

/// grpc-go's `decodeGrpcMessage`: `%XX` sequences in `grpc-message` decoded, the rest kept.
pub fn decode_grpc_message(msg: &[u8]) -> String {
    let mut out = Vec::with_capacity(msg.len());
    let mut i = 0;
    while i < msg.len() {
        let hex = msg
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(b) if msg[i] == b'%' => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(msg[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_grpc_go_percent_encoding_of_the_socket_path() {
        // The registration socket of the Secrets Store driver on a real node.
        assert_eq!(
            authority_for_target(Path::new(
                "/var/lib/kubelet/plugins_registry/secrets-store.csi.k8s.io-reg.sock"
            )),
            "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fsecrets-store.csi.k8s.io-reg.sock"
        );
        // Everything grpc-go keeps stays as it is.
        let kept = "AZaz09-._~!$&'()*+,;=:[]@";
        assert_eq!(encode_authority(kept.as_bytes()), kept);
        // Everything else is %XX with upper-case hex, byte by byte.
        assert_eq!(encode_authority(b"a b%c/d?e#f"), "a%20b%25c%2Fd%3Fe%23f");
        assert_eq!(
            encode_authority("é\"<>\\^`{|}".as_bytes()),
            "%C3%A9%22%3C%3E%5C%5E%60%7B%7C%7D"
        );
        assert_eq!(encode_authority(b"\x00\x7f\xff"), "%00%7F%FF");
        // An endpoint starting with ':' gets `localhost` in front instead.
        assert_eq!(authority_for_target(Path::new(":50051")), "localhost:50051");
    }

    #[test]
    fn timeout_is_encoded_like_grpc_go() {
        assert_eq!(encode_timeout(Duration::ZERO), "0n");
        assert_eq!(encode_timeout(Duration::from_millis(50)), "50000000n");
        assert_eq!(encode_timeout(Duration::from_secs(1)), "1000000u");
        // Rounded up, in the finest unit that fits 8 digits.
        assert_eq!(encode_timeout(Duration::from_nanos(999_937_123)), "999938u");
        assert_eq!(encode_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            encode_timeout(Duration::from_secs(60 * 100_000_000)),
            "1666667H"
        );
    }

    #[test]
    fn grpc_message_is_percent_decoded_like_grpc_go() {
        assert_eq!(decode_grpc_message(b"plain"), "plain");
        assert_eq!(decode_grpc_message(b"a%20b"), "a b");
        assert_eq!(decode_grpc_message(b"%E2%82%AC 5"), "€ 5");
        assert_eq!(decode_grpc_message(b"100%"), "100%");
        assert_eq!(decode_grpc_message(b"%zz%+f%4"), "%zz%+f%4");
    }
}
