//! Encoding packets for a peer.
//!
//! The encoder trusts its input (the server builds it) but never panics. Where a value
//! cannot be represented or would make a conforming peer close the connection, it is
//! clamped or skipped rather than sent, and each case is documented where it happens:
//! - strings longer than 65,535 bytes are truncated on a char boundary, binary data to
//!   65,535 bytes;
//! - zero Receive Maximum, Maximum Packet Size or Topic Alias, Maximum QoS 2, Subscription
//!   Identifiers outside 1..=268,435,455, a Payload Format Indicator above 1 and
//!   Authentication Data without a method in CONNECT are left out;
//! - a PUBLISH with QoS > 0 but no packet identifier is sent as QoS 0, and DUP is only sent
//!   with QoS > 0 (MQTT-3.3.1-2);
//! - Session Present is cleared in a CONNACK that refuses the connection (3.1.1:
//!   MQTT-3.2.2-4; 5.0: MQTT-3.2.2-6);
//! - in 3.1.1, a password without a user name is left out (MQTT-3.1.2-22), AUTH is not
//!   encoded at all, and MQTT 5-only fields are ignored;
//! - a packet whose Remaining Length would exceed 268,435,455 bytes cannot be framed:
//!   [`encode`] writes nothing and [`encoded_len`] reports its (over-limit) size, so a
//!   Maximum Packet Size check made first always refuses it.

use bytes::BytesMut;
use moat_types::QoS;

use crate::decode::{
    AUTH, CONNACK, CONNECT, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
};
use crate::properties::{PropertyBlock, SubscribeProperties, UserProperties};
use crate::reader::{VARINT_MAX, varint_len};
use crate::writer::{Sink, count};
use crate::{
    ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, PubResponse, Publish,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// Appends `packet`, encoded for `version`, to `buf`.
///
/// CONNECT is encoded for its own [`Connect::protocol`], since it is what establishes the
/// version. See the module documentation for how nonsensical input is clamped; this never
/// panics.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    if let Packet::Publish(publish) = packet {
        return encode_publish(publish, publish.packet_id, version, buf);
    }
    if !is_encodable(packet, version) {
        return;
    }
    let body_len = count(|c| emit_body(packet, version, c));
    if body_len > VARINT_MAX as usize {
        return;
    }
    buf.reserve(1 + varint_len(body_len) + body_len);
    buf.u8(first_byte(packet));
    buf.varint(body_len);
    emit_body(packet, version, buf);
}

/// The size `packet` would take on the wire for `version`, fixed header included: exactly
/// the number of bytes [`encode`] appends, computed without encoding.
///
/// Two exceptions, both refused by any Maximum Packet Size check: AUTH for 3.1.1 is 0 (it
/// is not encoded), and a packet too large to frame reports a size above
/// [`crate::Limits::PROTOCOL_MAX_PACKET_SIZE`] although [`encode`] writes nothing.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    if let Packet::Publish(publish) = packet {
        return encoded_publish_len(publish, publish.packet_id, version);
    }
    if !is_encodable(packet, version) {
        return 0;
    }
    frame_len(count(|c| emit_body(packet, version, c)))
}

/// Appends a PUBLISH with `packet_id` in place of `publish.packet_id`: the broker's fan-out
/// path, which sends one stored message to many subscribers, each with its own packet
/// identifier, without cloning it. QoS > 0 without a packet identifier is sent as QoS 0.
pub fn encode_publish(
    publish: &Publish,
    packet_id: Option<PacketId>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) {
    let body_len = count(|c| emit_publish(publish, packet_id, version, c));
    if body_len > VARINT_MAX as usize {
        return;
    }
    buf.reserve(1 + varint_len(body_len) + body_len);
    buf.u8(publish_first_byte(publish, packet_id));
    buf.varint(body_len);
    emit_publish(publish, packet_id, version, buf);
}

/// The size [`encode_publish`] appends for the same arguments.
pub fn encoded_publish_len(
    publish: &Publish,
    packet_id: Option<PacketId>,
    version: ProtocolVersion,
) -> usize {
    frame_len(count(|c| emit_publish(publish, packet_id, version, c)))
}

fn frame_len(body_len: usize) -> usize {
    body_len
        .saturating_add(1)
        .saturating_add(varint_len(body_len))
}

/// AUTH does not exist in 3.1.1.
fn is_encodable(packet: &Packet, version: ProtocolVersion) -> bool {
    !matches!((packet, version), (Packet::Auth(_), ProtocolVersion::V311))
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => CONNECT << 4,
        Packet::ConnAck(_) => CONNACK << 4,
        Packet::Publish(p) => publish_first_byte(p, p.packet_id),
        Packet::PubAck(_) => PUBACK << 4,
        Packet::PubRec(_) => PUBREC << 4,
        // MQTT-2.1.3-1: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry flags 0b0010.
        Packet::PubRel(_) => (PUBREL << 4) | 0b0010,
        Packet::PubComp(_) => PUBCOMP << 4,
        Packet::Subscribe(_) => (SUBSCRIBE << 4) | 0b0010,
        Packet::SubAck(_) => SUBACK << 4,
        Packet::Unsubscribe(_) => (UNSUBSCRIBE << 4) | 0b0010,
        Packet::UnsubAck(_) => UNSUBACK << 4,
        Packet::PingReq => PINGREQ << 4,
        Packet::PingResp => PINGRESP << 4,
        Packet::Disconnect(_) => DISCONNECT << 4,
        Packet::Auth(_) => AUTH << 4,
    }
}

/// The QoS actually sent: a packet identifier is required for QoS > 0 (MQTT-2.2.1-2).
fn effective_qos(qos: QoS, packet_id: Option<PacketId>) -> (QoS, Option<PacketId>) {
    match packet_id {
        Some(id) if qos != QoS::AtMostOnce => (qos, Some(id)),
        _ => (QoS::AtMostOnce, None),
    }
}

fn publish_first_byte(publish: &Publish, packet_id: Option<PacketId>) -> u8 {
    let (qos, _) = effective_qos(publish.qos, packet_id);
    // MQTT-3.3.1-2: DUP must be 0 for QoS 0.
    let dup = publish.dup && qos != QoS::AtMostOnce;
    (PUBLISH << 4) | (u8::from(dup) << 3) | (qos.as_u8() << 1) | u8::from(publish.retain)
}

fn emit_publish<S: Sink>(
    publish: &Publish,
    packet_id: Option<PacketId>,
    version: ProtocolVersion,
    s: &mut S,
) {
    match &publish.topic {
        // A TopicName is at most 65,535 bytes by construction.
        Some(topic) => s.binary(topic.as_bytes()),
        // MQTT 5: the Topic Alias stands in. For 3.1.1 the session must resolve the alias
        // first; an empty topic is the only thing there is to send.
        None => s.u16(0),
    }
    if let (_, Some(id)) = effective_qos(publish.qos, packet_id) {
        s.u16(id.get());
    }
    if version == ProtocolVersion::V5 {
        publish.properties.write(s);
    }
    s.raw(&publish.payload);
}

fn emit_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(connect) => emit_connect(connect, s),
        Packet::ConnAck(connack) => emit_connack(connack, v5, s),
        Packet::Publish(publish) => emit_publish(publish, publish.packet_id, version, s),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            emit_pub_response(r, v5, s)
        }
        Packet::Subscribe(subscribe) => emit_subscribe(subscribe, v5, s),
        Packet::SubAck(suback) => emit_suback(suback, v5, s),
        Packet::Unsubscribe(unsubscribe) => emit_unsubscribe(unsubscribe, v5, s),
        Packet::UnsubAck(unsuback) => emit_unsuback(unsuback, v5, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(disconnect) => emit_disconnect(disconnect, v5, s),
        Packet::Auth(auth) => {
            // MQTT 5.0 §3.15.2.1: Success without properties may omit everything.
            if auth.reason_code != ReasonCode::Success || !auth.is_empty() {
                s.u8(auth.reason_code.as_u8());
                auth.write(s);
            }
        }
    }
}

fn emit_connect<S: Sink>(connect: &Connect, s: &mut S) {
    let v5 = connect.protocol == ProtocolVersion::V5;
    // MQTT-3.1.2-22: 3.1.1 forbids a password without a user name.
    let password = connect
        .password
        .as_ref()
        .filter(|_| v5 || connect.username.is_some());
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | (will.qos.as_u8() << 3) | (u8::from(will.retain) << 5);
    }
    if password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    s.string("MQTT");
    s.u8(connect.protocol.level());
    s.u8(flags);
    s.u16(connect.keep_alive);
    if v5 {
        connect.properties.write(s);
    }
    s.string(&connect.client_id);
    if let Some(will) = &connect.will {
        if v5 {
            will.properties.write(s);
        }
        s.binary(will.topic.as_bytes());
        s.binary(&will.payload);
    }
    if let Some(username) = &connect.username {
        s.string(username);
    }
    if let Some(password) = password {
        s.binary(password);
    }
}

fn emit_connack<S: Sink>(connack: &ConnAck, v5: bool, s: &mut S) {
    let code = if v5 {
        connack.reason_code.as_u8()
    } else {
        connack.reason_code.to_v311_connack()
    };
    let accepted = if v5 {
        !connack.reason_code.is_error()
    } else {
        code == 0
    };
    // 3.1.1: MQTT-3.2.2-4; 5.0: MQTT-3.2.2-6.
    s.u8(u8::from(connack.session_present && accepted));
    s.u8(code);
    if v5 {
        connack.properties.write(s);
    }
}

/// MQTT 5.0 §3.4.2.1: the reason code may be omitted for Success without properties, and
/// the properties whenever there are none.
fn emit_pub_response<S: Sink>(response: &PubResponse, v5: bool, s: &mut S) {
    s.u16(response.packet_id.get());
    if v5 {
        emit_reason_and_properties(response.reason_code, &response.properties, s);
    }
}

fn emit_reason_and_properties<S: Sink, P: PropertyBlock>(
    reason_code: ReasonCode,
    properties: &P,
    s: &mut S,
) {
    let empty = properties.is_empty();
    if reason_code != ReasonCode::Success || !empty {
        s.u8(reason_code.as_u8());
    }
    if !empty {
        properties.write(s);
    }
}

fn emit_subscribe<S: Sink>(subscribe: &Subscribe, v5: bool, s: &mut S) {
    s.u16(subscribe.packet_id.get());
    if v5 {
        SubscribeProperties {
            subscription_identifier: subscribe.subscription_identifier,
            user_properties: &subscribe.user_properties,
        }
        .write(s);
    }
    for (filter, options) in &subscribe.filters {
        s.string(filter);
        let mut byte = options.qos.as_u8();
        if v5 {
            byte |= (u8::from(options.no_local) << 2)
                | (u8::from(options.retain_as_published) << 3)
                | (options.retain_handling.as_u8() << 4);
        }
        s.u8(byte);
    }
}

fn emit_suback<S: Sink>(suback: &SubAck, v5: bool, s: &mut S) {
    s.u16(suback.packet_id.get());
    if v5 {
        suback.properties.write(s);
    }
    for code in &suback.reason_codes {
        let byte = if v5 {
            code.as_u8()
        } else {
            // MQTT 3.1.1 §3.9.3: the granted QoS, or 0x80 for any failure.
            match code {
                ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => {
                    code.as_u8()
                }
                _ => 0x80,
            }
        };
        s.u8(byte);
    }
}

fn emit_unsubscribe<S: Sink>(unsubscribe: &Unsubscribe, v5: bool, s: &mut S) {
    s.u16(unsubscribe.packet_id.get());
    if v5 {
        UserProperties(&unsubscribe.user_properties).write(s);
    }
    for filter in &unsubscribe.filters {
        s.string(filter);
    }
}

fn emit_unsuback<S: Sink>(unsuback: &UnsubAck, v5: bool, s: &mut S) {
    s.u16(unsuback.packet_id.get());
    // 3.1.1's UNSUBACK is only the packet identifier.
    if v5 {
        unsuback.properties.write(s);
        for code in &unsuback.reason_codes {
            s.u8(code.as_u8());
        }
    }
}

/// 3.1.1's DISCONNECT has no body; MQTT 5 omits a Normal disconnection without properties
/// (MQTT 5.0 §3.14.2.1).
fn emit_disconnect<S: Sink>(disconnect: &Disconnect, v5: bool, s: &mut S) {
    if v5 {
        emit_reason_and_properties(disconnect.reason_code, &disconnect.properties, s);
    }
}
