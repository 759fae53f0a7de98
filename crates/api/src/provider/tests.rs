//! Field numbers of v1alpha1, checked against hand-encoded protobuf bytes.

use prost::Message;

use super::v1alpha1::*;

#[test]
fn mount_response_field_numbers_match_upstream() {
    let resp = MountResponse {
        object_version: vec![ObjectVersion {
            id: "i".into(),
            version: "v".into(),
        }],
        error: Some(Error { code: "x".into() }),
        files: vec![File {
            path: "a".into(),
            mode: 420,
            contents: vec![0xff],
        }],
    };
    let bytes = resp.encode_to_vec();
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x06, 0x0a, 0x01, b'i', 0x12, 0x01, b'v', // 1: object_version {1: id, 2: version}
        0x12, 0x03, 0x0a, 0x01, b'x',                   // 2: error {1: code}
        0x1a, 0x09,                                     // 3: files
            0x0a, 0x01, b'a',                           //   1: path
            0x10, 0xa4, 0x03,                           //   2: mode 420 (varint)
            0x1a, 0x01, 0xff,                           //   3: contents (bytes, not UTF-8)
    ];
    assert_eq!(bytes, expected);
    assert_eq!(MountResponse::decode(&bytes[..]).unwrap(), resp);
}

#[test]
fn mount_request_field_numbers_match_upstream() {
    let req = MountRequest {
        attributes: "{}".into(),
        secrets: "{}".into(),
        target_path: "/t".into(),
        permission: "420".into(),
        current_object_version: vec![ObjectVersion {
            id: "i".into(),
            version: "1".into(),
        }],
    };
    let bytes = req.encode_to_vec();
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x02, b'{', b'}',
        0x12, 0x02, b'{', b'}',
        0x1a, 0x02, b'/', b't',
        0x22, 0x03, b'4', b'2', b'0',
        0x2a, 0x06, 0x0a, 0x01, b'i', 0x12, 0x01, b'1',
    ];
    assert_eq!(bytes, expected);
    assert_eq!(MountRequest::decode(&bytes[..]).unwrap(), req);
}

#[test]
fn version_response_field_numbers_match_upstream() {
    let resp = VersionResponse {
        version: "v1alpha1".into(),
        runtime_name: "aws".into(),
        runtime_version: "1".into(),
    };
    let bytes = resp.encode_to_vec();
    let mut expected = vec![0x0a, 0x08];
    expected.extend_from_slice(b"v1alpha1");
    expected.extend_from_slice(&[0x12, 0x03, b'a', b'w', b's', 0x1a, 0x01, b'1']);
    assert_eq!(bytes, expected);
    assert_eq!(VersionResponse::decode(&bytes[..]).unwrap(), resp);
}

#[test]
fn service_has_the_upstream_name() {
    assert_eq!(
        csi_driver_provider_server::SERVICE_NAME,
        "v1alpha1.CSIDriverProvider"
    );
}
