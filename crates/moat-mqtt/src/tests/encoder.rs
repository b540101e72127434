//! The encoder trusts its input but never panics: each documented clamp, and a property
//! test over packets no peer could send.

use bytes::{Bytes, BytesMut};
use moat_types::{QoS, TopicName};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::strategies::{data, packet_id, qos, text, topic};
use super::{decode_one, encode_to_vec};
use crate::*;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn publish(qos: QoS, packet_id: Option<PacketId>) -> Publish {
    Publish {
        dup: true,
        qos,
        retain: false,
        topic: TopicName::parse("t").ok(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"p"),
    }
}

#[test]
fn qos_without_packet_identifier_is_sent_as_qos_0() {
    let bytes = encode_to_vec(&Packet::Publish(publish(QoS::ExactlyOnce, None)), V5);
    // DUP cleared too (MQTT-3.3.1-2).
    assert_eq!(bytes, [0x30, 0x05, 0x00, 0x01, b't', 0x00, b'p']);
    assert!(matches!(decode_one(&bytes, V5), Ok(Some(_))));
}

#[test]
fn packet_identifier_with_qos_0_is_not_sent() {
    let bytes = encode_to_vec(
        &Packet::Publish(publish(QoS::AtMostOnce, PacketId::new(5))),
        V311,
    );
    assert_eq!(bytes, [0x30, 0x04, 0x00, 0x01, b't', b'p']);
}

#[test]
fn values_the_peer_must_reject_are_skipped() {
    let mut p = publish(QoS::AtMostOnce, None);
    p.properties.topic_alias = Some(0);
    p.properties.subscription_identifiers = vec![0, 268_435_456, 4];
    p.properties.payload_format_indicator = Some(7);
    let bytes = encode_to_vec(&Packet::Publish(p), V5);
    let Ok(Some(Packet::Publish(decoded))) = decode_one(&bytes, V5) else {
        panic!("clamped PUBLISH did not decode");
    };
    assert_eq!(decoded.properties.topic_alias, None);
    assert_eq!(decoded.properties.subscription_identifiers, [4]);
    assert_eq!(decoded.properties.payload_format_indicator, None);

    let connack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::NotAuthorized,
        properties: ConnAckProperties {
            receive_maximum: Some(0),
            maximum_packet_size: Some(0),
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Default::default()
        },
    };
    let bytes = encode_to_vec(&Packet::ConnAck(connack), V5);
    // Session Present cleared on refusal (MQTT-3.2.2-6); nothing else survives.
    assert_eq!(bytes, [0x20, 0x03, 0x00, 0x87, 0x00]);
    let bytes = encode_to_vec(
        &Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::ServerBusy,
            properties: ConnAckProperties::default(),
        }),
        V311,
    );
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x03]); // MQTT-3.2.2-4
}

#[test]
fn v311_password_without_user_name_is_left_out() {
    let connect = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 0,
        properties: ConnectProperties {
            authentication_data: Some(Bytes::from_static(b"ignored")),
            ..Default::default()
        },
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
    };
    let bytes = encode_to_vec(&Packet::Connect(Box::new(connect.clone())), V311);
    let Ok(Some(Packet::Connect(decoded))) = decode_one(&bytes, V311) else {
        panic!("clamped CONNECT did not decode");
    };
    assert_eq!(decoded.password, None);
    // MQTT 5 keeps it, and drops Authentication Data without a method.
    let v5 = Connect {
        protocol: V5,
        ..connect
    };
    let bytes = encode_to_vec(&Packet::Connect(Box::new(v5)), V5);
    let Ok(Some(Packet::Connect(decoded))) = decode_one(&bytes, V5) else {
        panic!("clamped CONNECT did not decode");
    };
    assert_eq!(decoded.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(decoded.properties.authentication_data, None);
}

#[test]
fn long_strings_are_truncated_on_a_char_boundary() {
    let reason = "é".repeat(40_000); // 80,000 bytes
    let packet = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::UnspecifiedError,
        properties: DisconnectProperties {
            reason_string: Some(reason),
            ..Default::default()
        },
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes.len(), encoded_len(&packet, V5));
    let Ok(Some(Packet::Disconnect(decoded))) = decode_one(&bytes, V5) else {
        panic!("truncated DISCONNECT did not decode");
    };
    assert_eq!(
        decoded.properties.reason_string.map(|s| s.len()),
        Some(65_534)
    );
}

#[test]
fn packet_too_large_to_frame_is_not_written() {
    // 256 MiB of zeroes: calloc'd lazily, and neither counting nor the refusal touches it.
    let mut p = publish(QoS::AtMostOnce, None);
    p.payload = Bytes::from(vec![0u8; 268_435_456]);
    let packet = Packet::Publish(p);
    assert!(encoded_len(&packet, V311) > Limits::PROTOCOL_MAX_PACKET_SIZE as usize);
    let mut buf = BytesMut::new();
    encode(&packet, V311, &mut buf);
    assert!(buf.is_empty());
}

fn any_reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_filter_map("known code", ReasonCode::from_u8)
}

fn any_user() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..3)
}

/// Packets with field combinations a conforming peer could not send.
fn nonsense() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (
            qos(),
            any::<bool>(),
            option::of(topic()),
            option::of(packet_id()),
            (
                option::of(any::<u8>()),
                option::of(any::<u16>()),
                vec(any::<u32>(), 0..3)
            ),
            data(),
        )
            .prop_map(
                |(qos, dup, topic, packet_id, (format, alias, ids), payload)| {
                    Packet::Publish(Publish {
                        dup,
                        qos,
                        retain: false,
                        topic,
                        packet_id,
                        properties: PublishProperties {
                            payload_format_indicator: format,
                            topic_alias: alias,
                            subscription_identifiers: ids,
                            ..Default::default()
                        },
                        payload,
                    })
                }
            ),
        (
            any::<bool>(),
            any_reason(),
            option::of(any::<u16>()),
            option::of(any::<u32>()),
            option::of(qos()),
        )
            .prop_map(|(session_present, reason_code, receive, size, max_qos)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    reason_code,
                    properties: ConnAckProperties {
                        receive_maximum: receive,
                        maximum_packet_size: size,
                        maximum_qos: max_qos,
                        ..Default::default()
                    },
                })
            }),
        (packet_id(), any_reason(), option::of(text()), any_user()).prop_map(
            |(packet_id, reason_code, reason_string, user_properties)| {
                Packet::PubRel(PubResponse {
                    packet_id,
                    reason_code,
                    properties: AckProperties {
                        reason_string,
                        user_properties,
                    },
                })
            }
        ),
        (packet_id(), vec(any_reason(), 0..4)).prop_map(|(packet_id, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties: AckProperties::default(),
                reason_codes,
            })
        }),
        (packet_id(), option::of(any::<u32>()), vec(text(), 0..3)).prop_map(
            |(packet_id, id, filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    subscription_identifier: id,
                    user_properties: Vec::new(),
                    filters: filters
                        .into_iter()
                        .map(|f| (f, SubscriptionOptions::default()))
                        .collect(),
                })
            }
        ),
        (any_reason(), option::of(text()), option::of(data())).prop_map(
            |(reason_code, method, data)| {
                Packet::Auth(Auth {
                    reason_code,
                    authentication_method: method,
                    authentication_data: data,
                    reason_string: None,
                    user_properties: Vec::new(),
                })
            }
        ),
        any_reason().prop_map(|r| Packet::Disconnect(Disconnect::with_reason(r))),
    ]
}

proptest! {
    /// Whatever the input, encoding never panics and writes exactly `encoded_len` bytes;
    /// decoding the result never panics either.
    #[test]
    fn encoder_never_panics(packet in nonsense(), v5 in any::<bool>()) {
        let version = if v5 { V5 } else { V311 };
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf);
        prop_assert_eq!(buf.len(), encoded_len(&packet, version));
        let _ = decode(&mut buf, version, &Limits::default());
    }
}
