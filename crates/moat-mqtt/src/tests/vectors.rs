//! Hand-written byte vectors for every packet type in both versions, following the layouts
//! in the OASIS MQTT 3.1.1 and 5.0 specifications (section numbers per test).

use bytes::Bytes;
use moat_types::{QoS, TopicName};

use super::{decode_first, decode_one, encode_to_vec};
use crate::*;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decodes `bytes` for `version`, expects `packet`, and checks that encoding `packet`
/// gives `bytes` back in `encoded_len` bytes.
fn both_ways(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    assert_eq!(decode_one(bytes, version), Ok(Some(packet.clone())));
    assert_eq!(encode_to_vec(&packet, version), bytes);
    assert_eq!(encoded_len(&packet, version), bytes.len());
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap_or_else(|e| panic!("bad test topic {s:?}: {e}"))
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap_or(PacketId::MIN)
}

fn user(k: &str, v: &str) -> UserProperty {
    (k.to_owned(), v.to_owned())
}

#[test]
fn pingreq_pingresp() {
    // MQTT 3.1.1 §3.12, §3.13; MQTT 5.0 §3.12, §3.13.
    for version in [V311, V5] {
        both_ways(&[0xC0, 0x00], version, Packet::PingReq);
        both_ways(&[0xD0, 0x00], version, Packet::PingResp);
    }
}

#[test]
fn connect_v311_minimal() {
    // MQTT 3.1.1 §3.1.2.10 figure 3.8: "MQTT", level 4, Clean Session, keep alive 60.
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

#[test]
fn connect_v311_with_will_username_password() {
    // MQTT 3.1.1 §3.1.2.3: flags 0xEC = user name, password, will retain, will QoS 1,
    // will flag; Clean Session 0.
    let bytes = [
        0x10, 0x21, // fixed header, remaining length 33
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name and level
        0xEC, 0x00, 0x0A, // connect flags, keep alive 10
        0x00, 0x02, b'i', b'd', // client id
        0x00, 0x03, b'a', b'/', b'w', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will message
        0x00, 0x02, b'u', b'1', // user name
        0x00, 0x03, 0x01, 0x02, 0x03, // password
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: V311,
        clean_start: false,
        keep_alive: 10,
        properties: ConnectProperties::default(),
        client_id: "id".into(),
        will: Some(Will {
            topic: topic("a/w"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some("u1".into()),
        password: Some(Bytes::from_static(&[1, 2, 3])),
    }));
    assert_eq!(decode_first(&bytes), Ok(Some(packet.clone())));
    both_ways(&bytes, V311, packet);
}

#[test]
fn connect_v5_with_properties_and_will() {
    // MQTT 5.0 §3.1.2.11 (properties), §3.1.3.2 (will properties).
    let bytes = [
        0x10, 0x3B, // remaining length 59
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // protocol name and level 5
        0x56, 0x00, 0x1E, // flags: password, will QoS 2, will, clean start; keep alive 30
        0x14, // property length 20
        0x11, 0x00, 0x00, 0x00, 0x78, // session expiry interval 120
        0x21, 0x00, 0x14, // receive maximum 20
        0x27, 0x00, 0x00, 0x10, 0x00, // maximum packet size 4096
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
        0x00, 0x03, b'c', b'i', b'd', // client id
        0x07, // will property length 7
        0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval 5
        0x01, 0x01, // payload format indicator: UTF-8
        0x00, 0x05, b'w', b'/', b'o', b'u', b't', // will topic
        0x00, 0x02, b'o', b'k', // will payload
        0x00, 0x02, 0xAA, 0xBB, // password without user name: allowed in MQTT 5
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 30,
        properties: ConnectProperties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(20),
            maximum_packet_size: Some(4096),
            user_properties: vec![user("k", "v")],
            ..Default::default()
        },
        client_id: "cid".into(),
        will: Some(Will {
            topic: topic("w/out"),
            payload: Bytes::from_static(b"ok"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                ..Default::default()
            },
        }),
        username: None,
        password: Some(Bytes::from_static(&[0xAA, 0xBB])),
    }));
    assert_eq!(decode_first(&bytes), Ok(Some(packet.clone())));
    both_ways(&bytes, V5, packet);
}

#[test]
fn second_connect_decodes_for_the_session_to_reject() {
    // MQTT-3.1.0-2 is the session's rule; decode() hands the CONNECT over.
    let bytes = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    assert!(matches!(
        decode_one(&bytes, V5),
        Ok(Some(Packet::Connect(c))) if c.protocol == V311 && c.client_id.is_empty()
    ));
}

#[test]
fn connack_v311() {
    // MQTT 3.1.1 §3.2: session present; return code 5 (not authorized).
    let ok = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    both_ways(&[0x20, 0x02, 0x01, 0x00], V311, Packet::ConnAck(ok));
    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    };
    both_ways(&[0x20, 0x02, 0x00, 0x05], V311, Packet::ConnAck(refused));
    // MQTT 5 reasons map onto the six 3.1.1 codes when encoding.
    let busy = ConnAck {
        session_present: false,
        reason_code: ReasonCode::ServerBusy,
        properties: ConnAckProperties::default(),
    };
    assert_eq!(
        encode_to_vec(&Packet::ConnAck(busy), V311),
        [0x20, 0x02, 0x00, 0x03]
    );
}

#[test]
fn connack_v5() {
    // MQTT 5.0 §3.2: flags, reason code, properties.
    let bytes = [
        0x20, 0x0D, 0x00, 0x00, // session present 0, Success
        0x0A, // property length 10
        0x21, 0x00, 0x0A, // receive maximum 10
        0x24, 0x01, // maximum QoS 1
        0x12, 0x00, 0x02, b'x', b'y', // assigned client identifier
    ];
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            receive_maximum: Some(10),
            maximum_qos: Some(QoS::AtLeastOnce),
            assigned_client_identifier: Some("xy".into()),
            ..Default::default()
        },
    });
    both_ways(&bytes, V5, packet);
    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode::BadUserNameOrPassword,
        properties: ConnAckProperties::default(),
    };
    both_ways(
        &[0x20, 0x03, 0x00, 0x86, 0x00],
        V5,
        Packet::ConnAck(refused),
    );
}

#[test]
fn publish_v311_each_qos() {
    // MQTT 3.1.1 §3.3, figure 3.11: topic "a/b", packet identifier 10.
    let qos0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Some(topic("a/b")),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hi"),
    };
    both_ways(
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
        V311,
        Packet::Publish(qos0.clone()),
    );
    let qos1 = Publish {
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: Some(pid(10)),
        ..qos0.clone()
    };
    both_ways(
        &[
            0x33, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ],
        V311,
        Packet::Publish(qos1),
    );
    let qos2_dup = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(0x1234)),
        payload: Bytes::new(),
        ..qos0
    };
    both_ways(
        &[0x3C, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34],
        V311,
        Packet::Publish(qos2_dup),
    );
}

#[test]
fn publish_v5_with_properties() {
    // MQTT 5.0 §3.3.2.3.
    let bytes = [
        0x32, 0x1B, // QoS 1, remaining length 27
        0x00, 0x01, b't', // topic
        0x00, 0x07, // packet identifier
        0x13, // property length 19
        0x01, 0x00, // payload format indicator: bytes
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval 60
        0x23, 0x00, 0x03, // topic alias 3
        0x0B, 0x05, // subscription identifier 5
        0x0B, 0x80, 0x01, // subscription identifier 128
        0x09, 0x00, 0x01, 0x2A, // correlation data
        0x01, 0x02, // payload
    ];
    let packet = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Some(topic("t")),
        packet_id: Some(pid(7)),
        properties: PublishProperties {
            payload_format_indicator: Some(0),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            subscription_identifiers: vec![5, 128],
            correlation_data: Some(Bytes::from_static(&[0x2A])),
            ..Default::default()
        },
        payload: Bytes::from_static(&[1, 2]),
    };
    // The encoder writes properties in its own order; check the decode here and the
    // encoding through a second decode.
    assert_eq!(
        decode_one(&bytes, V5),
        Ok(Some(Packet::Publish(packet.clone())))
    );
    let again = encode_to_vec(&Packet::Publish(packet.clone()), V5);
    assert_eq!(again.len(), bytes.len());
    assert_eq!(decode_one(&again, V5), Ok(Some(Packet::Publish(packet))));
}

#[test]
fn publish_v5_empty_topic_uses_alias() {
    // MQTT 5.0 §3.3.2.1: zero-length topic with a Topic Alias.
    let bytes = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'x'];
    let packet = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: None,
        packet_id: None,
        properties: PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        },
        payload: Bytes::from_static(b"x"),
    };
    both_ways(&bytes, V5, Packet::Publish(packet));
}

#[test]
fn publish_payload_is_a_slice_of_the_read_buffer() {
    let mut buf = bytes::BytesMut::from(&[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'][..]);
    let base = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V311, &Limits::default()) else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(p.payload.as_ptr() as usize, base + 5);
    assert_eq!(p.topic.map(|t| t.bytes().as_ptr() as usize), Some(base + 4));
}

#[test]
fn pub_responses_v311() {
    // MQTT 3.1.1 §3.4 to §3.7: fixed header and packet identifier only.
    for (first, make) in [
        (0x40, Packet::PubAck as fn(PubResponse) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        both_ways(
            &[first, 0x02, 0x00, 0x01],
            V311,
            make(PubResponse::success(pid(1))),
        );
    }
}

#[test]
fn pub_responses_v5_short_forms() {
    // MQTT 5.0 §3.4.2.1: Remaining Length 2 means Success without properties.
    both_ways(
        &[0x40, 0x02, 0x00, 0x01],
        V5,
        Packet::PubAck(PubResponse::success(pid(1))),
    );
    // A reason code without properties (Remaining Length 3).
    let no_subscribers = PubResponse {
        reason_code: ReasonCode::NoMatchingSubscribers,
        ..PubResponse::success(pid(1))
    };
    both_ways(
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        V5,
        Packet::PubAck(no_subscribers),
    );
    // Success with an empty property block decodes the same; it re-encodes short.
    assert_eq!(
        decode_one(&[0x50, 0x04, 0x00, 0x01, 0x00, 0x00], V5),
        Ok(Some(Packet::PubRec(PubResponse::success(pid(1)))))
    );
    // PUBREL Packet Identifier not found, with a reason string.
    let not_found = PubResponse {
        packet_id: pid(2),
        reason_code: ReasonCode::PacketIdentifierNotFound,
        properties: AckProperties {
            reason_string: Some("gone".into()),
            user_properties: Vec::new(),
        },
    };
    both_ways(
        &[
            0x62, 0x0B, 0x00, 0x02, 0x92, 0x07, 0x1F, 0x00, 0x04, b'g', b'o', b'n', b'e',
        ],
        V5,
        Packet::PubRel(not_found),
    );
}

#[test]
fn subscribe_v311() {
    // MQTT 3.1.1 §3.8.3, figure 3.23: "a/b" QoS 1, "c/d" QoS 2.
    let bytes = [
        0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let options = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    let packet = Subscribe {
        packet_id: pid(10),
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![
            ("a/b".into(), options(QoS::AtLeastOnce)),
            ("c/d".into(), options(QoS::ExactlyOnce)),
        ],
    };
    both_ways(&bytes, V311, Packet::Subscribe(packet));
}

#[test]
fn subscribe_v5_with_options() {
    // MQTT 5.0 §3.8.3.1: options 0x2E = retain handling 2, retain as published, no local,
    // QoS 2; subscription identifier 300.
    let bytes = [
        0x82, 0x0C, 0x00, 0x05, 0x03, 0x0B, 0xAC, 0x02, 0x00, 0x03, b's', b'/', b'#', 0x2E,
    ];
    let packet = Subscribe {
        packet_id: pid(5),
        subscription_identifier: Some(300),
        user_properties: Vec::new(),
        filters: vec![(
            "s/#".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    };
    both_ways(&bytes, V5, Packet::Subscribe(packet));
}

#[test]
fn suback_both_versions() {
    // MQTT 3.1.1 §3.9.3 figure 3.26: granted QoS 0, failure 0x80, granted QoS 2.
    let v311 = SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::UnspecifiedError,
            ReasonCode::GrantedQoS2,
        ],
    };
    both_ways(
        &[0x90, 0x05, 0x00, 0x0A, 0x00, 0x80, 0x02],
        V311,
        Packet::SubAck(v311),
    );
    // Any MQTT 5 failure becomes 0x80 for 3.1.1.
    let denied = SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQoS1],
    };
    assert_eq!(
        encode_to_vec(&Packet::SubAck(denied.clone()), V311),
        [0x90, 0x04, 0x00, 0x0A, 0x80, 0x01]
    );
    both_ways(
        &[0x90, 0x05, 0x00, 0x0A, 0x00, 0x87, 0x01],
        V5,
        Packet::SubAck(denied),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    // MQTT 3.1.1 §3.10, §3.11.
    let unsubscribe = Unsubscribe {
        packet_id: pid(3),
        user_properties: Vec::new(),
        filters: vec!["a/+".into(), "b".into()],
    };
    both_ways(
        &[
            0xA2, 0x0A, 0x00, 0x03, 0x00, 0x03, b'a', b'/', b'+', 0x00, 0x01, b'b',
        ],
        V311,
        Packet::Unsubscribe(unsubscribe.clone()),
    );
    // MQTT 5 adds a property length.
    both_ways(
        &[
            0xA2, 0x0B, 0x00, 0x03, 0x00, 0x00, 0x03, b'a', b'/', b'+', 0x00, 0x01, b'b',
        ],
        V5,
        Packet::Unsubscribe(unsubscribe),
    );
    let unsuback = UnsubAck {
        packet_id: pid(3),
        properties: AckProperties::default(),
        reason_codes: Vec::new(),
    };
    both_ways(
        &[0xB0, 0x02, 0x00, 0x03],
        V311,
        Packet::UnsubAck(unsuback.clone()),
    );
    // MQTT 5.0 §3.11.3: one reason code per filter.
    let v5 = UnsubAck {
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        ..unsuback.clone()
    };
    both_ways(
        &[0xB0, 0x05, 0x00, 0x03, 0x00, 0x00, 0x11],
        V5,
        Packet::UnsubAck(v5.clone()),
    );
    // 3.1.1 has no reason codes: they are not encoded.
    assert_eq!(
        encode_to_vec(&Packet::UnsubAck(v5), V311),
        [0xB0, 0x02, 0x00, 0x03]
    );
}

#[test]
fn disconnect_both_versions() {
    let normal = Packet::Disconnect(Disconnect::with_reason(ReasonCode::Success));
    // MQTT 3.1.1 §3.14 and MQTT 5.0 §3.14.2.1: Remaining Length 0 is a normal disconnect.
    both_ways(&[0xE0, 0x00], V311, normal.clone());
    both_ways(&[0xE0, 0x00], V5, normal);
    let with_will = Packet::Disconnect(Disconnect::with_reason(ReasonCode::DisconnectWithWill));
    both_ways(&[0xE0, 0x01, 0x04], V5, with_will.clone());
    // 3.1.1 DISCONNECT has no body whatever the reason.
    assert_eq!(encode_to_vec(&with_will, V311), [0xE0, 0x00]);
    let moved = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::ServerMoved,
        properties: DisconnectProperties {
            server_reference: Some("b".into()),
            ..Default::default()
        },
    });
    both_ways(&[0xE0, 0x06, 0x9D, 0x04, 0x1C, 0x00, 0x01, b'b'], V5, moved);
}

#[test]
fn auth_v5() {
    // MQTT 5.0 §3.15.2.1: Remaining Length 0 is Success without properties.
    let success = Auth {
        reason_code: ReasonCode::Success,
        authentication_method: None,
        authentication_data: None,
        reason_string: None,
        user_properties: Vec::new(),
    };
    both_ways(&[0xF0, 0x00], V5, Packet::Auth(success.clone()));
    let challenge = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        authentication_method: Some("SCRAM".into()),
        authentication_data: Some(Bytes::from_static(&[9])),
        ..success.clone()
    };
    both_ways(
        &[
            0xF0, 0x0E, 0x18, 0x0C, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', 0x16, 0x00,
            0x01, 0x09,
        ],
        V5,
        Packet::Auth(challenge),
    );
    // AUTH does not exist in 3.1.1: nothing is written.
    assert_eq!(encode_to_vec(&Packet::Auth(success.clone()), V311), []);
    assert_eq!(encoded_len(&Packet::Auth(success), V311), 0);
}

#[test]
fn remaining_length_spans_several_bytes() {
    // MQTT 5.0 §1.5.5: 200 bytes of payload need a two-byte Remaining Length.
    let payload = vec![0x55; 200];
    let mut bytes = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
    bytes.extend_from_slice(&payload);
    let packet = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Some(topic("t")),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from(payload),
    };
    both_ways(&bytes, V311, Packet::Publish(packet));
}

#[test]
fn encode_publish_overrides_the_packet_identifier() {
    let stored = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Some(topic("t")),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"p"),
    };
    let mut buf = bytes::BytesMut::new();
    encode_publish(&stored, Some(pid(9)), V311, &mut buf);
    assert_eq!(&buf[..], [0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x09, b'p']);
    assert_eq!(encoded_publish_len(&stored, Some(pid(9)), V311), buf.len());
    // Without an identifier QoS 1 cannot be sent; it goes out as QoS 0.
    buf.clear();
    encode_publish(&stored, None, V311, &mut buf);
    assert_eq!(&buf[..], [0x30, 0x04, 0x00, 0x01, b't', b'p']);
}
