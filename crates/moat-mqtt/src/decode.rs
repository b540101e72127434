//! Decoding packets from a peer's byte stream.
//!
//! The order of work is chosen so that a hostile peer cannot make us buffer or allocate:
//! 1. the first byte (packet type and flags) is checked as soon as it arrives;
//! 2. the Remaining Length is parsed and the whole packet's size is checked against
//!    [`Limits::max_packet_size`] before any more bytes are awaited;
//! 3. only when the packet is complete is it split off the buffer (`split_to`, no copy) and
//!    parsed; topics, payloads and binary fields are slices of that one allocation.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use moat_types::{QoS, TopicError, TopicName};

use crate::properties::{self, Budget};
use crate::reader::{Reader, parse_varint};
use crate::{
    AckProperties, Auth, ConnAck, Connect, DecodeError, Disconnect, DisconnectProperties, Limits,
    Packet, PacketId, ProtocolVersion, PubResponse, Publish, PublishProperties, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
    WillProperties,
};

// Control packet types (MQTT 5.0 §2.1.2, table 2-1).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
pub(crate) const AUTH: u8 = 15;

// Reason codes each MQTT 5 packet may carry (MQTT 5.0 §2.4 and each packet's section).
pub(crate) const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
pub(crate) const PUBACK_PUBREC_CODES: &[u8] =
    &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub(crate) const PUBREL_PUBCOMP_CODES: &[u8] = &[0x00, 0x92];

/// What a PUBACK, PUBREC, PUBREL or PUBCOMP may carry, and how to word its errors.
struct AckRules {
    codes: &'static [u8],
    bad_reason: &'static str,
    bad_property: &'static str,
}

const PUBACK_RULES: AckRules = AckRules {
    codes: PUBACK_PUBREC_CODES,
    bad_reason: "reason code not allowed in PUBACK",
    bad_property: "property not allowed in PUBACK",
};
const PUBREC_RULES: AckRules = AckRules {
    codes: PUBACK_PUBREC_CODES,
    bad_reason: "reason code not allowed in PUBREC",
    bad_property: "property not allowed in PUBREC",
};
const PUBREL_RULES: AckRules = AckRules {
    codes: PUBREL_PUBCOMP_CODES,
    bad_reason: "reason code not allowed in PUBREL",
    bad_property: "property not allowed in PUBREL",
};
const PUBCOMP_RULES: AckRules = AckRules {
    codes: PUBREL_PUBCOMP_CODES,
    bad_reason: "reason code not allowed in PUBCOMP",
    bad_property: "property not allowed in PUBCOMP",
};
pub(crate) const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub(crate) const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub(crate) const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub(crate) const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

/// Decodes one packet from the front of `buf` for a connection speaking `version`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (and nothing is consumed);
/// otherwise consumes exactly one packet. Fails as soon as the fixed header announces a
/// packet larger than `limits.max_packet_size`, before the rest arrives.
///
/// Every packet type decodes, in both directions (the benchmark client reads server packets
/// with it), including CONNECT, which is parsed by its own protocol level: rejecting a
/// second CONNECT (MQTT-3.1.0-2) is the session's job. AUTH is a Protocol Error in 3.1.1.
///
/// After an error the buffer's contents are unspecified: the connection must be closed
/// (after sending [`DecodeError::reason_code`] where the protocol allows).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode_packet(buf, Some(version), limits)
}

/// Decodes the first packet of a connection, which must be CONNECT (MQTT-3.1.0-1).
///
/// Any other packet type is a [`DecodeError::Protocol`] error as soon as its first byte
/// arrives. A protocol name other than "MQTT" or a level other than 4 or 5 (including
/// MQTT 3.1's "MQIsdp", level 3) is [`DecodeError::UnsupportedProtocolVersion`]. Otherwise
/// as [`decode`].
pub fn decode_connect(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Packet>, DecodeError> {
    decode_packet(buf, None, limits)
}

/// `version` is `None` before CONNECT.
fn decode_packet(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((remaining, length_bytes)) = parse_varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header_len = 1 + length_bytes;
    let size = header_len as u64 + u64::from(remaining);
    // MQTT-3.2.2.3.6 / Limits::max_packet_size: refuse before buffering the rest.
    let too_large = DecodeError::PacketTooLarge {
        size,
        max: limits.max_packet_size,
    };
    if size > u64::from(limits.max_packet_size) {
        return Err(too_large);
    }
    let size = usize::try_from(size).map_err(|_| too_large)?;
    if buf.len() < size {
        return Ok(None);
    }
    let mut packet = buf.split_to(size).freeze();
    let body = packet.split_off(header_len);
    decode_body(first, body, version, limits).map(Some)
}

/// Checks the packet type and the fixed header flags (MQTT 5.0 §2.1.3, table 2-2).
fn check_first_byte(first: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    match (version, kind) {
        (None, CONNECT) => {}
        // MQTT-3.1.0-1: the first packet from the client must be CONNECT.
        (None, _) => return Err(DecodeError::Protocol("first packet is not CONNECT")),
        (_, 0) => return Err(DecodeError::Protocol("reserved packet type 0")),
        (Some(ProtocolVersion::V311), AUTH) => {
            return Err(DecodeError::Protocol("AUTH packet in MQTT 3.1.1"));
        }
        _ => {}
    }
    let expected = match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                // MQTT-3.3.1-4
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                // MQTT-3.3.1-2
                return Err(DecodeError::Malformed("PUBLISH with DUP set and QoS 0"));
            }
            return Ok(());
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected {
        // MQTT-2.1.3-1
        return Err(DecodeError::Malformed("reserved fixed header flags"));
    }
    Ok(())
}

fn decode_body(
    first: u8,
    body: Bytes,
    version: Option<ProtocolVersion>,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let mut budget = Budget::new(limits);
    let kind = first >> 4;
    if kind == CONNECT {
        return connect(&mut r, &mut budget).map(|c| Packet::Connect(Box::new(c)));
    }
    // check_first_byte only lets CONNECT through before the version is known.
    let version = version.ok_or(DecodeError::Protocol("first packet is not CONNECT"))?;
    let v5 = version == ProtocolVersion::V5;
    let b = &mut budget;
    let r = &mut r;
    Ok(match kind {
        CONNACK => Packet::ConnAck(connack(r, v5, b)?),
        PUBLISH => Packet::Publish(publish(first, r, v5, b)?),
        PUBACK => Packet::PubAck(pub_response(r, v5, b, &PUBACK_RULES)?),
        PUBREC => Packet::PubRec(pub_response(r, v5, b, &PUBREC_RULES)?),
        PUBREL => Packet::PubRel(pub_response(r, v5, b, &PUBREL_RULES)?),
        PUBCOMP => Packet::PubComp(pub_response(r, v5, b, &PUBCOMP_RULES)?),
        SUBSCRIBE => Packet::Subscribe(subscribe(r, v5, b)?),
        SUBACK => Packet::SubAck(suback(r, v5, b)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(r, v5, b)?),
        UNSUBACK => Packet::UnsubAck(unsuback(r, v5, b)?),
        PINGREQ => {
            r.finish("PINGREQ with a body")?;
            Packet::PingReq
        }
        PINGRESP => {
            r.finish("PINGRESP with a body")?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(disconnect(r, v5, b)?),
        AUTH => Packet::Auth(auth(r, b)?),
        _ => return Err(DecodeError::Protocol("reserved packet type 0")),
    })
}

/// MQTT-2.2.1-3: packet identifiers are non-zero.
fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    NonZeroU16::new(r.u16()?).ok_or(DecodeError::Protocol("packet identifier 0"))
}

/// A reason code byte: unknown values are Malformed, known ones this packet may not carry
/// are a Protocol Error.
fn reason(byte: u8, allowed: &[u8], not_allowed: &'static str) -> Result<ReasonCode, DecodeError> {
    let code = ReasonCode::from_u8(byte).ok_or(DecodeError::Malformed("unknown reason code"))?;
    if allowed.contains(&byte) {
        Ok(code)
    } else {
        Err(DecodeError::Protocol(not_allowed))
    }
}

/// Validates a topic name from the wire. Bad UTF-8 or U+0000 is Malformed (MQTT-1.5.4-1,
/// -2); an empty name or one with wildcards is Topic Name invalid (MQTT-3.3.2-2,
/// MQTT-4.7.3-1).
fn topic_name(bytes: Bytes) -> Result<TopicName, DecodeError> {
    TopicName::from_bytes(bytes).map_err(|e| match e {
        TopicError::NotUtf8 => DecodeError::Malformed("topic is not valid UTF-8"),
        TopicError::Nul => DecodeError::Malformed("topic contains U+0000"),
        _ => DecodeError::TopicNameInvalid,
    })
}

fn connect(r: &mut Reader, budget: &mut Budget<'_>) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // MQTT-3.1.2-1, MQTT-3.1.2-2 (3.1.1 numbering): only "MQTT" at level 4 or 5.
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocolVersion),
    };
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        // MQTT-3.1.2-3
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        // 3.1.1: MQTT-3.1.2-13, MQTT-3.1.2-15; 5.0: MQTT-3.1.2-11, MQTT-3.1.2-13.
        return Err(DecodeError::Malformed(
            "will QoS or will retain set without the will flag",
        ));
    }
    // 3.1.1: MQTT-3.1.2-14; 5.0: MQTT-3.1.2-12.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        // MQTT-3.1.2-22 (3.1.1 only; MQTT 5 allows a password without a user name).
        return Err(DecodeError::Malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        properties::read_connect(r, budget)?
    } else {
        Default::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            properties::read_will(r, budget)?
        } else {
            WillProperties::default()
        };
        let topic = topic_name(r.binary()?)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("bytes after the CONNECT payload")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn connack(r: &mut Reader, v5: bool, budget: &mut Budget<'_>) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        // MQTT-3.2.2-1 (5.0): bits 7-1 are reserved.
        return Err(DecodeError::Malformed("reserved CONNACK flags set"));
    }
    let session_present = flags & 0x01 != 0;
    let code = r.u8()?;
    let (reason_code, properties) = if v5 {
        let reason_code = reason(code, CONNACK_CODES, "reason code not allowed in CONNACK")?;
        (reason_code, properties::read_connack(r, budget)?)
    } else {
        let reason_code = ReasonCode::from_v311_connack(code)
            .ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
        (reason_code, Default::default())
    };
    if session_present && reason_code.is_error() {
        // 3.1.1: MQTT-3.2.2-4; 5.0: MQTT-3.2.2-6.
        return Err(DecodeError::Protocol(
            "session present with a failed connection",
        ));
    }
    r.finish("bytes after the CONNACK properties")?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn publish(
    first: u8,
    r: &mut Reader,
    v5: bool,
    budget: &mut Budget<'_>,
) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    // check_first_byte has rejected QoS 3 already (MQTT-3.3.1-4).
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("QoS 3"))?;
    let retain = first & 0x01 != 0;
    let topic = r.binary()?;
    let topic = if topic.is_empty() {
        if v5 {
            // MQTT 5.0 §3.3.2.1: a zero-length topic relies on a Topic Alias, which the
            // session resolves.
            None
        } else {
            // MQTT-4.7.3-1
            return Err(DecodeError::TopicNameInvalid);
        }
    } else {
        Some(topic_name(topic)?)
    };
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = if v5 {
        properties::read_publish(r, budget)?
    } else {
        PublishProperties::default()
    };
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In MQTT 5 the reason code and the properties may each
/// be omitted from the end (MQTT 5.0 §3.4.2.1: "If the Remaining Length is less than 4
/// there is no Property Length").
fn pub_response(
    r: &mut Reader,
    v5: bool,
    budget: &mut Budget<'_>,
    rules: &AckRules,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut response = PubResponse::success(packet_id);
    if v5 {
        if !r.is_empty() {
            response.reason_code = reason(r.u8()?, rules.codes, rules.bad_reason)?;
        }
        if !r.is_empty() {
            response.properties = properties::read_ack(r, budget, rules.bad_property)?;
        }
    }
    r.finish("bytes after the acknowledgement")?;
    Ok(response)
}

/// Subscription options (MQTT 5.0 §3.8.3.1; MQTT 3.1.1 §3.8.3: the Requested QoS byte).
fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let qos = QoS::from_u8(byte & 0x03);
    if !v5 {
        // MQTT-3-8.3-4 (3.1.1): reserved bits set or QoS 3 is malformed.
        return match qos {
            Some(qos) if byte & 0xFC == 0 => Ok(SubscriptionOptions {
                qos,
                ..Default::default()
            }),
            _ => Err(DecodeError::Malformed(
                "subscription QoS 3 or reserved bits set",
            )),
        };
    }
    if byte & 0xC0 != 0 {
        // MQTT-3.8.3-5
        return Err(DecodeError::Malformed(
            "reserved subscription option bits set",
        ));
    }
    // MQTT 5.0 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
    let qos = qos.ok_or(DecodeError::Protocol("subscription maximum QoS 3"))?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        // MQTT 5.0 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
        _ => return Err(DecodeError::Protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn subscribe(r: &mut Reader, v5: bool, budget: &mut Budget<'_>) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let (subscription_identifier, user_properties) = if v5 {
        properties::read_subscribe(r, budget)?
    } else {
        (None, Vec::new())
    };
    let max = budget.limits().max_filters_per_packet;
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() >= max {
            return Err(DecodeError::LimitExceeded("too many topic filters"));
        }
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        // 3.1.1: MQTT-3.8.3-3; 5.0: MQTT-3.8.3-2.
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        subscription_identifier,
        user_properties,
        filters,
    })
}

fn suback(r: &mut Reader, v5: bool, budget: &mut Budget<'_>) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        properties::read_ack(r, budget, "property not allowed in SUBACK")?
    } else {
        AckProperties::default()
    };
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        let byte = r.u8()?;
        let code = if v5 {
            reason(byte, SUBACK_CODES, "reason code not allowed in SUBACK")?
        } else {
            // MQTT 3.1.1 §3.9.3: 0x00, 0x01, 0x02 and 0x80 only.
            match byte {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => return Err(DecodeError::Malformed("reserved SUBACK return code")),
            }
        };
        reason_codes.push(code);
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn unsubscribe(
    r: &mut Reader,
    v5: bool,
    budget: &mut Budget<'_>,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let user_properties = if v5 {
        properties::read_unsubscribe(r, budget)?
    } else {
        Vec::new()
    };
    let max = budget.limits().max_filters_per_packet;
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() >= max {
            return Err(DecodeError::LimitExceeded("too many topic filters"));
        }
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        // 3.1.1: MQTT-3.10.3-2; 5.0: MQTT-3.10.3-2.
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        user_properties,
        filters,
    })
}

fn unsuback(r: &mut Reader, v5: bool, budget: &mut Budget<'_>) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut unsuback = UnsubAck {
        packet_id,
        properties: AckProperties::default(),
        reason_codes: Vec::new(),
    };
    if v5 {
        unsuback.properties = properties::read_ack(r, budget, "property not allowed in UNSUBACK")?;
        while !r.is_empty() {
            let code = reason(
                r.u8()?,
                UNSUBACK_CODES,
                "reason code not allowed in UNSUBACK",
            )?;
            unsuback.reason_codes.push(code);
        }
    }
    r.finish("UNSUBACK longer than 2 bytes in MQTT 3.1.1")?;
    Ok(unsuback)
}

/// DISCONNECT. In 3.1.1 it has no body; in MQTT 5 the reason code and properties may be
/// omitted from the end (MQTT 5.0 §3.14.2.1).
fn disconnect(
    r: &mut Reader,
    v5: bool,
    budget: &mut Budget<'_>,
) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::with_reason(ReasonCode::Success);
    if v5 {
        if !r.is_empty() {
            disconnect.reason_code = reason(
                r.u8()?,
                DISCONNECT_CODES,
                "reason code not allowed in DISCONNECT",
            )?;
        }
        if !r.is_empty() {
            disconnect.properties = properties::read_disconnect(r, budget)?;
        }
    } else {
        disconnect.properties = DisconnectProperties::default();
    }
    r.finish("bytes after the DISCONNECT")?;
    Ok(disconnect)
}

/// AUTH (MQTT 5 only). A Remaining Length of 0 means Success without properties
/// (MQTT 5.0 §3.15.2.1); like DISCONNECT, a lone reason code is accepted too.
fn auth(r: &mut Reader, budget: &mut Budget<'_>) -> Result<Auth, DecodeError> {
    let mut reason_code = ReasonCode::Success;
    if !r.is_empty() {
        reason_code = reason(r.u8()?, AUTH_CODES, "reason code not allowed in AUTH")?;
    }
    let fields = if r.is_empty() {
        properties::AuthFields::default()
    } else {
        properties::read_auth(r, budget)?
    };
    r.finish("bytes after the AUTH properties")?;
    Ok(Auth {
        reason_code,
        authentication_method: fields.authentication_method,
        authentication_data: fields.authentication_data,
        reason_string: fields.reason_string,
        user_properties: fields.user_properties,
    })
}
