//! Field numbers of kubelet's pluginregistration v1, checked against hand-encoded bytes.

use prost::Message;

use super::v1::*;

#[test]
fn plugin_info_field_numbers_match_kubelet() {
    let info = PluginInfo {
        r#type: "CSIPlugin".into(),
        name: "d".into(),
        endpoint: "/e".into(),
        supported_versions: vec!["1.0.0".into()],
    };
    let bytes = info.encode_to_vec();
    let mut expected = vec![0x0a, 0x09];
    expected.extend_from_slice(b"CSIPlugin");
    expected.extend_from_slice(&[0x12, 0x01, b'd', 0x1a, 0x02, b'/', b'e', 0x22, 0x05]);
    expected.extend_from_slice(b"1.0.0");
    assert_eq!(bytes, expected);
    assert_eq!(PluginInfo::decode(&bytes[..]).unwrap(), info);
}

#[test]
fn registration_status_field_numbers_match_kubelet() {
    let status = RegistrationStatus {
        plugin_registered: true,
        error: "e".into(),
    };
    let bytes = status.encode_to_vec();
    assert_eq!(bytes, [0x08, 0x01, 0x12, 0x01, b'e']);
    assert_eq!(RegistrationStatus::decode(&bytes[..]).unwrap(), status);
}

#[test]
fn service_has_the_kubelet_name() {
    assert_eq!(
        registration_server::SERVICE_NAME,
        "pluginregistration.Registration"
    );
}
