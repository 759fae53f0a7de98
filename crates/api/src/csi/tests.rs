//! Field numbers of our csi.v1 subset, checked against hand-encoded protobuf bytes.

use std::collections::HashMap;

use prost::Message;

use super::v1::*;

#[test]
fn publish_request_field_numbers_match_the_spec() {
    let req = NodePublishVolumeRequest {
        target_path: "/t".into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: HashMap::from([("a".into(), "b".into())]),
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    #[rustfmt::skip]
    let expected = [
        0x22, 0x02, b'/', b't',                   // 4: target_path
        0x2a, 0x06,                               // 5: volume_capability
            0x12, 0x00,                           //   2: mount {}
            0x1a, 0x02, 0x08, 0x02,               //   3: access_mode { 1: SINGLE_NODE_READER_ONLY }
        0x30, 0x01,                               // 6: readonly
        0x42, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', // 8: volume_context {"a": "b"}
    ];
    assert_eq!(bytes, expected);
    assert_eq!(NodePublishVolumeRequest::decode(&bytes[..]).unwrap(), req);
}

#[test]
fn probe_ready_is_a_bool_wrapper() {
    let resp = ProbeResponse { ready: Some(true) };
    let bytes = resp.encode_to_vec();
    assert_eq!(bytes, [0x0a, 0x02, 0x08, 0x01]);
    assert_eq!(ProbeResponse::decode(&bytes[..]).unwrap(), resp);
    // Unset (ready by spec) stays distinguishable from false.
    assert_eq!(ProbeResponse::decode(&[][..]).unwrap().ready, None);
}

#[test]
fn node_get_info_and_capabilities_round_trip() {
    let info = NodeGetInfoResponse {
        node_id: "n1".into(),
        ..Default::default()
    };
    assert_eq!(info.encode_to_vec(), [0x0a, 0x02, b'n', b'1']);
    let caps = NodeGetCapabilitiesResponse {
        capabilities: vec![NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc {
                    r#type: node_service_capability::rpc::Type::VolumeMountGroup as i32,
                },
            )),
        }],
    };
    let bytes = caps.encode_to_vec();
    assert_eq!(bytes, [0x0a, 0x04, 0x0a, 0x02, 0x08, 0x06]);
    assert_eq!(
        NodeGetCapabilitiesResponse::decode(&bytes[..]).unwrap(),
        caps
    );
}

#[test]
fn services_have_the_spec_names() {
    assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
    assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
}
