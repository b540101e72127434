//! One test per decoding rule: the exact error variant and the reason code sent for it.

use bytes::BytesMut;

use super::{decode_first, decode_one};
use crate::*;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// The expected error, by blame.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Malformed,
    Protocol,
    Limit,
    Unsupported,
    TopicName,
}

#[track_caller]
fn expect(result: Result<Option<Packet>, DecodeError>, kind: Kind) {
    let error = match result {
        Err(e) => e,
        Ok(p) => panic!("expected {kind:?}, decoded {p:?}"),
    };
    let (matched, code) = match kind {
        Kind::Malformed => (
            matches!(error, DecodeError::Malformed(_)),
            ReasonCode::MalformedPacket,
        ),
        Kind::Protocol => (
            matches!(error, DecodeError::Protocol(_)),
            ReasonCode::ProtocolError,
        ),
        Kind::Limit => (
            matches!(error, DecodeError::LimitExceeded(_)),
            ReasonCode::ImplementationSpecificError,
        ),
        Kind::Unsupported => (
            matches!(error, DecodeError::UnsupportedProtocolVersion),
            ReasonCode::UnsupportedProtocolVersion,
        ),
        Kind::TopicName => (
            matches!(error, DecodeError::TopicNameInvalid),
            ReasonCode::TopicNameInvalid,
        ),
    };
    assert!(matched, "expected {kind:?}, got {error:?}");
    assert_eq!(error.reason_code(), code, "{error:?}");
}

/// A Variable Byte Integer.
fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        out.push(if value > 0 { byte | 0x80 } else { byte });
        if value == 0 {
            return out;
        }
    }
}

/// A packet: first byte, Remaining Length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    [vec![first], varint(body.len()), body.to_vec()].concat()
}

/// A length-prefixed string or binary field.
fn s(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

/// A property block: Property Length and the properties.
fn props(properties: &[u8]) -> Vec<u8> {
    [varint(properties.len()), properties.to_vec()].concat()
}

/// A CONNECT body up to and including the keep alive.
fn connect_header(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
    [s(name), vec![level, flags, 0x00, 0x3C]].concat()
}

/// A v5 CONNECT with the given properties and client id "c".
fn connect_v5(properties: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &[connect_header(b"MQTT", 5, 0x02), props(properties), s(b"c")].concat(),
    )
}

/// A v5 QoS 0 PUBLISH to "t" with the given properties and no payload.
fn publish_v5(properties: &[u8]) -> Vec<u8> {
    frame(0x30, &[s(b"t"), props(properties)].concat())
}

fn user_property() -> Vec<u8> {
    [vec![0x26], s(b"k"), s(b"v")].concat()
}

// ---- Fixed header --------------------------------------------------------------------

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    // MQTT 5.0 §1.5.5: at most four bytes.
    expect(
        decode_one(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5),
        Kind::Malformed,
    );
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    // MQTT-1.5.5-1
    expect(decode_one(&[0xC0, 0x80, 0x00], V311), Kind::Malformed);
}

#[test]
fn oversized_packet_is_refused_from_the_header_alone() {
    // Limits::max_packet_size, checked before the body arrives.
    let limits = Limits {
        max_packet_size: 100,
        ..Limits::default()
    };
    // Remaining Length 200: two bytes of it are enough to refuse.
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    let error = decode(&mut buf, V5, &limits);
    assert_eq!(
        error,
        Err(DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        })
    );
    assert_eq!(
        error.err().map(|e| e.reason_code()),
        Some(ReasonCode::PacketTooLarge)
    );
    assert_eq!(buf.len(), 3, "nothing consumed");
    // Exactly at the limit is fine.
    let mut buf = BytesMut::from(&frame(0x30, &[s(b"t"), vec![0; 95]].concat())[..]);
    assert_eq!(buf.len(), 100);
    assert!(matches!(decode(&mut buf, V311, &limits), Ok(Some(_))));
    // And decode_connect applies the same limit.
    let mut buf = BytesMut::from(&[0x10, 0xC8, 0x01][..]);
    assert!(matches!(
        decode_connect(&mut buf, &limits),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    // MQTT-2.1.3-1: SUBSCRIBE, UNSUBSCRIBE and PUBREL need 0b0010, the rest 0.
    for first in [
        0x80, 0x83, 0xA0, 0xA6, 0x60, 0x68, 0x41, 0x52, 0x71, 0x91, 0xB2,
    ] {
        expect(decode_one(&[first, 0x02, 0x00, 0x01], V5), Kind::Malformed);
    }
    for first in [0xC1, 0xD8, 0xE2, 0x21] {
        expect(decode_one(&[first, 0x00], V311), Kind::Malformed);
    }
    expect(decode_first(&[0x11, 0x00]), Kind::Malformed);
    expect(decode_one(&[0xF4, 0x00], V5), Kind::Malformed);
}

#[test]
fn bad_first_byte_is_refused_before_the_rest_arrives() {
    let mut buf = BytesMut::from(&[0x83][..]);
    expect(decode(&mut buf, V5, &Limits::default()), Kind::Malformed);
}

#[test]
fn publish_qos_3_is_malformed() {
    // MQTT-3.3.1-4
    expect(
        decode_one(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V5),
        Kind::Malformed,
    );
}

#[test]
fn publish_dup_with_qos_0_is_malformed() {
    // MQTT-3.3.1-2
    expect(
        decode_one(&[0x38, 0x03, 0x00, 0x01, b't'], V311),
        Kind::Malformed,
    );
}

#[test]
fn reserved_packet_type_0_is_a_protocol_error() {
    expect(decode_one(&[0x00, 0x00], V5), Kind::Protocol);
}

#[test]
fn auth_in_v311_is_a_protocol_error() {
    expect(decode_one(&[0xF0, 0x00], V311), Kind::Protocol);
}

// ---- Packet identifiers -------------------------------------------------------------

#[test]
fn packet_identifier_zero_is_a_protocol_error() {
    // MQTT-2.2.1-3
    expect(decode_one(&[0x40, 0x02, 0x00, 0x00], V311), Kind::Protocol);
    expect(
        decode_one(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], V311),
        Kind::Protocol,
    );
    expect(
        decode_one(&frame(0x82, &[vec![0, 0], s(b"a"), vec![0]].concat()), V311),
        Kind::Protocol,
    );
    expect(
        decode_one(&frame(0xA2, &[vec![0, 0], s(b"a")].concat()), V311),
        Kind::Protocol,
    );
}

// ---- CONNECT ------------------------------------------------------------------------

#[test]
fn first_packet_must_be_connect() {
    // MQTT-3.1.0-1, reported from the first byte.
    expect(decode_first(&[0x30]), Kind::Protocol);
    expect(decode_first(&[0xC0, 0x00]), Kind::Protocol);
    expect(decode_first(&[0x20, 0x02, 0x00, 0x00]), Kind::Protocol);
}

#[test]
fn unsupported_protocol_names_and_levels() {
    // MQTT-3.1.2-1, MQTT-3.1.2-2 (3.1.1 numbering): MQTT 3.1's "MQIsdp" level 3 included.
    for (name, level) in [
        (&b"MQIsdp"[..], 3),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQTX", 4),
        (b"mqtt", 5),
    ] {
        let packet = frame(0x10, &[connect_header(name, level, 0x02), s(b"c")].concat());
        expect(decode_first(&packet), Kind::Unsupported);
    }
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // MQTT-3.1.2-3
    for level in [4, 5] {
        let mut body = connect_header(b"MQTT", level, 0x03);
        if level == 5 {
            body.push(0);
        }
        body.extend(s(b"c"));
        expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
    }
}

#[test]
fn will_qos_and_retain_need_the_will_flag() {
    // 3.1.1: MQTT-3.1.2-13, MQTT-3.1.2-15; 5.0: MQTT-3.1.2-11, MQTT-3.1.2-13.
    for flags in [0x08, 0x10, 0x20] {
        let packet = frame(0x10, &[connect_header(b"MQTT", 4, flags), s(b"c")].concat());
        expect(decode_first(&packet), Kind::Malformed);
    }
}

#[test]
fn will_qos_3_is_malformed() {
    // 3.1.1: MQTT-3.1.2-14; 5.0: MQTT-3.1.2-12.
    let body = [connect_header(b"MQTT", 4, 0x1C), s(b"c"), s(b"w"), s(b"m")].concat();
    expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
}

#[test]
fn password_without_user_name() {
    // MQTT-3.1.2-22: malformed in 3.1.1 ...
    let v311 = [connect_header(b"MQTT", 4, 0x40), s(b"c"), s(b"pw")].concat();
    expect(decode_first(&frame(0x10, &v311)), Kind::Malformed);
    // ... allowed in MQTT 5 (§3.1.2.9).
    let v5 = [connect_header(b"MQTT", 5, 0x40), vec![0], s(b"c"), s(b"pw")].concat();
    assert!(matches!(
        decode_first(&frame(0x10, &v5)),
        Ok(Some(Packet::Connect(c))) if c.password.as_deref() == Some(b"pw") && c.username.is_none()
    ));
}

#[test]
fn will_topic_must_be_a_topic_name() {
    for bad in [&b"a/+"[..], b"#", b""] {
        let body = [connect_header(b"MQTT", 4, 0x04), s(b"c"), s(bad), s(b"m")].concat();
        expect(decode_first(&frame(0x10, &body)), Kind::TopicName);
    }
    // Not UTF-8 is a malformed string before it is a bad topic (MQTT-1.5.4-1).
    let body = [
        connect_header(b"MQTT", 4, 0x04),
        s(b"c"),
        s(&[0xFF]),
        s(b"m"),
    ]
    .concat();
    expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
}

#[test]
fn client_id_must_be_utf8_without_nul() {
    // MQTT-1.5.4-1, MQTT-1.5.4-2
    for bad in [&b"\xC3\x28"[..], b"a\0b", b"\xED\xA0\x80"] {
        let body = [connect_header(b"MQTT", 4, 0x02), s(bad)].concat();
        expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
    }
}

#[test]
fn trailing_bytes_after_connect_are_malformed() {
    let body = [connect_header(b"MQTT", 4, 0x02), s(b"c"), vec![0]].concat();
    expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
}

#[test]
fn truncated_connect_is_malformed() {
    // Remaining Length says the packet is complete, but the client id runs past it.
    let body = [connect_header(b"MQTT", 4, 0x02), vec![0x00, 0x05, b'a']].concat();
    expect(decode_first(&frame(0x10, &body)), Kind::Malformed);
}

// ---- MQTT 5 properties --------------------------------------------------------------

#[test]
fn unknown_property_identifier_is_malformed() {
    expect(decode_first(&connect_v5(&[0x04, 0x00])), Kind::Malformed);
    expect(decode_one(&publish_v5(&[0x7F, 0x00]), V5), Kind::Malformed);
}

#[test]
fn property_in_the_wrong_packet_is_a_protocol_error() {
    // Topic Alias in CONNECT; Session Expiry Interval in PUBLISH; Maximum QoS in DISCONNECT.
    expect(
        decode_first(&connect_v5(&[0x23, 0x00, 0x01])),
        Kind::Protocol,
    );
    expect(
        decode_one(&publish_v5(&[0x11, 0, 0, 0, 1]), V5),
        Kind::Protocol,
    );
    expect(
        decode_one(&frame(0xE0, &[0x00, 0x02, 0x24, 0x01]), V5),
        Kind::Protocol,
    );
    // Will Delay Interval belongs to the will, not CONNECT.
    expect(
        decode_first(&connect_v5(&[0x18, 0, 0, 0, 1])),
        Kind::Protocol,
    );
}

#[test]
fn duplicate_single_valued_property_is_a_protocol_error() {
    // MQTT 5.0 §2.2.2.2.
    expect(
        decode_first(&connect_v5(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2])),
        Kind::Protocol,
    );
    expect(
        decode_one(&publish_v5(&[0x23, 0, 1, 0x23, 0, 2]), V5),
        Kind::Protocol,
    );
}

#[test]
fn zero_values_that_the_spec_forbids() {
    // Receive Maximum 0, Maximum Packet Size 0 (MQTT 5.0 §3.1.2.11.3, §3.1.2.11.4).
    expect(decode_first(&connect_v5(&[0x21, 0, 0])), Kind::Protocol);
    expect(
        decode_first(&connect_v5(&[0x27, 0, 0, 0, 0])),
        Kind::Protocol,
    );
    // Topic Alias 0 (MQTT-3.3.2-8).
    expect(decode_one(&publish_v5(&[0x23, 0, 0]), V5), Kind::Protocol);
    // Subscription Identifier 0 (MQTT 5.0 §3.8.2.1.2).
    let subscribe = frame(
        0x82,
        &[vec![0, 1], props(&[0x0B, 0x00]), s(b"a"), vec![0]].concat(),
    );
    expect(decode_one(&subscribe, V5), Kind::Protocol);
}

#[test]
fn byte_flags_other_than_0_or_1_are_protocol_errors() {
    // Request Problem Information, Request Response Information (MQTT 5.0 §3.1.2.11.6-7),
    // Payload Format Indicator.
    expect(decode_first(&connect_v5(&[0x17, 2])), Kind::Protocol);
    expect(decode_first(&connect_v5(&[0x19, 2])), Kind::Protocol);
    expect(decode_one(&publish_v5(&[0x01, 2]), V5), Kind::Protocol);
    // Maximum QoS 2 in CONNACK (MQTT 5.0 §3.2.2.3.4).
    expect(
        decode_one(&frame(0x20, &[0, 0, 2, 0x24, 2]), V5),
        Kind::Protocol,
    );
}

#[test]
fn authentication_data_needs_a_method() {
    // MQTT 5.0 §3.1.2.11.10
    expect(decode_first(&connect_v5(&[0x16, 0, 1, 7])), Kind::Protocol);
}

#[test]
fn property_length_must_fit_the_packet() {
    // Property Length 10 with only 2 bytes left.
    let packet = frame(0x30, &[s(b"t"), vec![10, 0x23, 0x00]].concat());
    expect(decode_one(&packet, V5), Kind::Malformed);
    // A property value that runs past its block is malformed too.
    expect(decode_one(&publish_v5(&[0x23, 0x00]), V5), Kind::Malformed);
}

#[test]
fn property_strings_must_be_utf8_without_nul() {
    let mut content_type = vec![0x03];
    content_type.extend(s(b"a\0"));
    expect(decode_one(&publish_v5(&content_type), V5), Kind::Malformed);
}

#[test]
fn response_topic_must_be_a_topic_name() {
    // MQTT-3.3.2-14
    let mut response_topic = vec![0x08];
    response_topic.extend(s(b"r/#"));
    expect(
        decode_one(&publish_v5(&response_topic), V5),
        Kind::TopicName,
    );
}

#[test]
fn user_properties_are_limited_per_packet() {
    let limits = Limits::default();
    let many = user_property().repeat(limits.max_user_properties);
    assert!(matches!(decode_one(&publish_v5(&many), V5), Ok(Some(_))));
    let too_many = user_property().repeat(limits.max_user_properties + 1);
    let packet = publish_v5(&too_many);
    expect(decode_one(&packet, V5), Kind::Limit);
}

#[test]
fn user_property_limit_spans_connect_and_will() {
    let limits = Limits {
        max_user_properties: 1,
        ..Limits::default()
    };
    let body = [
        connect_header(b"MQTT", 5, 0x06),
        props(&user_property()),
        s(b"c"),
        props(&user_property()),
        s(b"w"),
        s(b"m"),
    ]
    .concat();
    let mut buf = BytesMut::from(&frame(0x10, &body)[..]);
    expect(decode_connect(&mut buf, &limits), Kind::Limit);
}

#[test]
fn subscription_identifiers() {
    // Several in PUBLISH (server to client) are fine, up to the limit.
    assert!(matches!(
        decode_one(&publish_v5(&[0x0B, 1, 0x0B, 2]), V5),
        Ok(Some(Packet::Publish(p))) if p.properties.subscription_identifiers == [1, 2]
    ));
    let limits = Limits {
        max_subscription_identifiers: 1,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(&publish_v5(&[0x0B, 1, 0x0B, 2])[..]);
    expect(decode(&mut buf, V5, &limits), Kind::Limit);
    // SUBSCRIBE carries at most one.
    let subscribe = frame(
        0x82,
        &[vec![0, 1], props(&[0x0B, 1, 0x0B, 2]), s(b"a"), vec![0]].concat(),
    );
    expect(decode_one(&subscribe, V5), Kind::Protocol);
}

// ---- PUBLISH ------------------------------------------------------------------------

#[test]
fn publish_topic_with_wildcards_is_invalid() {
    // MQTT-3.3.2-2
    for version in [V311, V5] {
        for topic in [&b"a/+"[..], b"#", b"a/#/b"] {
            let mut body = s(topic);
            if version == V5 {
                body.push(0);
            }
            expect(decode_one(&frame(0x30, &body), version), Kind::TopicName);
        }
    }
}

#[test]
fn publish_topic_must_be_utf8_without_nul() {
    expect(decode_one(&frame(0x30, &s(b"a\0")), V311), Kind::Malformed);
    expect(decode_one(&frame(0x30, &s(b"\xFF")), V311), Kind::Malformed);
}

#[test]
fn empty_publish_topic() {
    // 3.1.1: invalid (MQTT-4.7.3-1). 5.0: stands for a Topic Alias, resolved by the session.
    expect(decode_one(&[0x30, 0x02, 0x00, 0x00], V311), Kind::TopicName);
    assert!(matches!(
        decode_one(&[0x30, 0x03, 0x00, 0x00, 0x00], V5),
        Ok(Some(Packet::Publish(p))) if p.topic.is_none()
    ));
}

// ---- Acknowledgements ---------------------------------------------------------------

#[test]
fn unknown_reason_code_is_malformed() {
    expect(
        decode_one(&[0x40, 0x03, 0x00, 0x01, 0x05], V5),
        Kind::Malformed,
    );
    expect(decode_one(&[0xE0, 0x01, 0x03], V5), Kind::Malformed);
    expect(
        decode_one(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x03], V5),
        Kind::Malformed,
    );
}

#[test]
fn reason_code_not_valid_for_the_packet_is_a_protocol_error() {
    // PUBREL may only carry 0x00 or 0x92 (MQTT 5.0 §3.6.2.1).
    expect(
        decode_one(&[0x62, 0x03, 0x00, 0x01, 0x10], V5),
        Kind::Protocol,
    );
    // AUTH only 0x00, 0x18, 0x19 (MQTT 5.0 §3.15.2.1).
    expect(decode_one(&[0xF0, 0x01, 0x87], V5), Kind::Protocol);
}

#[test]
fn v311_acks_have_exactly_a_packet_identifier() {
    expect(
        decode_one(&[0x40, 0x03, 0x00, 0x01, 0x00], V311),
        Kind::Malformed,
    );
    expect(
        decode_one(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311),
        Kind::Malformed,
    );
    expect(decode_one(&[0x40, 0x01, 0x00], V311), Kind::Malformed);
}

#[test]
fn v311_suback_return_codes() {
    // MQTT 3.1.1 §3.9.3: only 0x00, 0x01, 0x02 and 0x80.
    expect(
        decode_one(&[0x90, 0x03, 0x00, 0x01, 0x87], V311),
        Kind::Malformed,
    );
}

#[test]
fn connack_rules() {
    // Reserved acknowledge flags (MQTT-3.2.2-1 in 5.0).
    expect(decode_one(&[0x20, 0x02, 0x02, 0x00], V311), Kind::Malformed);
    // Unknown 3.1.1 return code.
    expect(decode_one(&[0x20, 0x02, 0x00, 0x06], V311), Kind::Malformed);
    // Session present with a refusal (3.1.1: MQTT-3.2.2-4; 5.0: MQTT-3.2.2-6).
    expect(decode_one(&[0x20, 0x02, 0x01, 0x05], V311), Kind::Protocol);
    expect(
        decode_one(&[0x20, 0x03, 0x01, 0x87, 0x00], V5),
        Kind::Protocol,
    );
    // A PUBACK-only reason code in CONNACK.
    expect(
        decode_one(&[0x20, 0x03, 0x00, 0x10, 0x00], V5),
        Kind::Protocol,
    );
}

#[test]
fn disconnect_rules() {
    // 3.1.1 DISCONNECT has no body.
    expect(decode_one(&[0xE0, 0x01, 0x00], V311), Kind::Malformed);
    // MQTT 5: Remaining Length 0 is a normal disconnection (§3.14.2.1).
    assert_eq!(
        decode_one(&[0xE0, 0x00], V5),
        Ok(Some(Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::Success
        ))))
    );
}

#[test]
fn ping_with_a_body_is_malformed() {
    expect(decode_one(&[0xC0, 0x01, 0x00], V5), Kind::Malformed);
    expect(decode_one(&[0xD0, 0x01, 0x00], V311), Kind::Malformed);
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------

#[test]
fn subscribe_needs_a_filter() {
    // 3.1.1: MQTT-3.8.3-3; 5.0: MQTT-3.8.3-2.
    expect(decode_one(&[0x82, 0x02, 0x00, 0x01], V311), Kind::Protocol);
    expect(
        decode_one(&[0x82, 0x03, 0x00, 0x01, 0x00], V5),
        Kind::Protocol,
    );
}

#[test]
fn unsubscribe_needs_a_filter() {
    // MQTT-3.10.3-2
    expect(decode_one(&[0xA2, 0x02, 0x00, 0x01], V311), Kind::Protocol);
    expect(
        decode_one(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5),
        Kind::Protocol,
    );
}

#[test]
fn filters_per_packet_are_limited() {
    let max = Limits::default().max_filters_per_packet;
    let entry = [s(b"a"), vec![0]].concat();
    let ok = frame(0x82, &[vec![0, 1], entry.repeat(max)].concat());
    assert!(matches!(decode_one(&ok, V311), Ok(Some(_))));
    let over = frame(0x82, &[vec![0, 1], entry.repeat(max + 1)].concat());
    expect(decode_one(&over, V311), Kind::Limit);
    let over = frame(0xA2, &[vec![0, 1, 0], s(b"a").repeat(max + 1)].concat());
    expect(decode_one(&over, V5), Kind::Limit);
}

#[test]
fn subscription_options_v5() {
    let subscribe = |options: u8| frame(0x82, &[vec![0, 1, 0], s(b"a"), vec![options]].concat());
    // Reserved bits 6-7 (MQTT-3.8.3-5).
    expect(decode_one(&subscribe(0x40), V5), Kind::Malformed);
    expect(decode_one(&subscribe(0x80), V5), Kind::Malformed);
    // Retain Handling 3, Maximum QoS 3 (MQTT 5.0 §3.8.3.1).
    expect(decode_one(&subscribe(0x30), V5), Kind::Protocol);
    expect(decode_one(&subscribe(0x03), V5), Kind::Protocol);
}

#[test]
fn subscription_options_v311() {
    let subscribe = |options: u8| frame(0x82, &[vec![0, 1], s(b"a"), vec![options]].concat());
    // MQTT-3-8.3-4: only the QoS bits, and not QoS 3.
    for options in [0x04, 0x08, 0x10, 0x80, 0x03] {
        expect(decode_one(&subscribe(options), V311), Kind::Malformed);
    }
}

#[test]
fn subscribe_filter_must_be_utf8() {
    let packet = frame(0x82, &[vec![0, 1], s(b"a\0"), vec![0]].concat());
    expect(decode_one(&packet, V311), Kind::Malformed);
    // Wildcard placement is the broker's to judge: "a/#/b" decodes.
    let packet = frame(0x82, &[vec![0, 1], s(b"a/#/b"), vec![0]].concat());
    assert!(matches!(decode_one(&packet, V311), Ok(Some(_))));
}
