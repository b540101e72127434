//! Hand-written byte vectors from the OASIS MQTT 3.1.1 and 5.0 specifications.

use super::{decode_first, decode_one, encode_to_vec};
use crate::*;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decodes `bytes` for `version`, expects `packet`, and checks that encoding `packet`
/// gives `bytes` back.
fn both_ways(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    assert_eq!(decode_one(bytes, version), Ok(Some(packet.clone())));
    assert_eq!(encode_to_vec(&packet, version), bytes);
    assert_eq!(encoded_len(&packet, version), bytes.len());
}

#[test]
fn pingreq_pingresp() {
    for version in [V311, V5] {
        both_ways(&[0xC0, 0x00], version, Packet::PingReq);
        both_ways(&[0xD0, 0x00], version, Packet::PingResp);
    }
}

#[test]
fn minimal_connect_v311() {
    let bytes = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 60,
        properties: ConnectProperties::default(),
        client_id: "a".into(),
        will: None,
        username: None,
        password: None,
    }));
    assert_eq!(decode_first(&bytes), Ok(Some(packet.clone())));
    both_ways(&bytes, V311, packet);
}
