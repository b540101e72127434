//! proptest strategies for valid packets of each version: only fields meaningful for the
//! version are set, and only values a conforming peer may send.

use std::num::NonZeroU16;

use bytes::Bytes;
use moat_types::{QoS, TopicName};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::decode::{
    AUTH_CODES, CONNACK_CODES, DISCONNECT_CODES, PUBACK_PUBREC_CODES, PUBREL_PUBCOMP_CODES,
    SUBACK_CODES, UNSUBACK_CODES,
};
use crate::reader::VARINT_MAX;
use crate::*;

/// Any char but U+0000, biased towards ASCII and topic separators.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => Just('/'),
        1 => any::<char>().prop_filter("no U+0000", |c| *c != '\0'),
    ]
}

pub(crate) fn text() -> impl Strategy<Value = String> {
    vec(text_char(), 0..12).prop_map(String::from_iter)
}

pub(crate) fn topic() -> impl Strategy<Value = TopicName> {
    vec(text_char(), 1..16).prop_filter_map("topic name", |chars| {
        TopicName::parse(&String::from_iter(chars)).ok()
    })
}

pub(crate) fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..3)
}

pub(crate) fn packet_id() -> impl Strategy<Value = PacketId> {
    any::<u16>().prop_filter_map("non-zero", NonZeroU16::new)
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_filter_map("known code", ReasonCode::from_u8)
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 1..=VARINT_MAX]
}

fn ack_properties(v5: bool) -> BoxedStrategy<AckProperties> {
    if !v5 {
        return Just(AckProperties::default()).boxed();
    }
    (option::of(text()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        })
        .boxed()
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(1..=u32::MAX),
            option::of(any::<u16>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        user_properties(),
        option::of((text(), option::of(data()))),
    )
        .prop_map(|(numbers, user_properties, auth)| {
            let (session, receive, packet_size, alias, response, problem) = numbers;
            let (authentication_method, authentication_data) = match auth {
                Some((method, data)) => (Some(method), data),
                None => (None, None),
            };
            ConnectProperties {
                session_expiry_interval: session,
                receive_maximum: receive,
                maximum_packet_size: packet_size,
                topic_alias_maximum: alias,
                request_response_information: response,
                request_problem_information: problem,
                user_properties,
                authentication_method,
                authentication_data,
            }
        })
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic()),
        option::of(data()),
        user_properties(),
    )
        .prop_map(
            |(delay, format, expiry, content_type, response_topic, correlation, user)| {
                WillProperties {
                    will_delay_interval: delay,
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    content_type,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: user,
                }
            },
        )
}

fn will(v5: bool) -> impl Strategy<Value = Will> {
    let properties = if v5 {
        will_properties().boxed()
    } else {
        Just(WillProperties::default()).boxed()
    };
    (topic(), data(), qos(), any::<bool>(), properties).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    )
}

pub(crate) fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let properties = if v5 {
        connect_properties().boxed()
    } else {
        Just(ConnectProperties::default()).boxed()
    };
    (
        any::<bool>(),
        any::<u16>(),
        properties,
        text(),
        option::of(will(v5)),
        option::of(text()),
        option::of(data()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // MQTT-3.1.2-22: 3.1.1 needs a user name for a password.
                let password = password.filter(|_| v5 || username.is_some());
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
        ),
        (
            user_properties(),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(data()),
        ),
    )
        .prop_map(|(a, b)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2,
            retain_available: a.3,
            maximum_packet_size: a.4,
            assigned_client_identifier: a.5,
            topic_alias_maximum: a.6,
            reason_string: a.7,
            user_properties: b.0,
            wildcard_subscription_available: b.1,
            subscription_identifiers_available: b.2,
            shared_subscription_available: b.3,
            server_keep_alive: b.4,
            response_information: b.5,
            server_reference: b.6,
            authentication_method: b.7,
            authentication_data: b.8,
        })
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let build = |(session_present, reason_code, properties): (bool, ReasonCode, _)| {
        Packet::ConnAck(ConnAck {
            // MQTT-3.2.2-6: no session on failure.
            session_present: session_present && !reason_code.is_error(),
            reason_code,
            properties,
        })
    };
    match version {
        ProtocolVersion::V5 => (any::<bool>(), reason(CONNACK_CODES), connack_properties())
            .prop_map(build)
            .boxed(),
        ProtocolVersion::V311 => (
            any::<bool>(),
            (0..=5u8).prop_filter_map("3.1.1 code", ReasonCode::from_v311_connack),
            Just(ConnAckProperties::default()),
        )
            .prop_map(build)
            .boxed(),
    }
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic()),
        option::of(data()),
        user_properties(),
        vec(subscription_identifier(), 0..3),
        option::of(text()),
    )
        .prop_map(
            |(format, expiry, alias, response, correlation, user, ids, content)| {
                PublishProperties {
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    topic_alias: alias,
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: ids,
                    content_type: content,
                }
            },
        )
}

pub(crate) fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    let v5 = version == ProtocolVersion::V5;
    let topic = if v5 {
        option::of(topic()).boxed()
    } else {
        topic().prop_map(Some).boxed()
    };
    let properties = if v5 {
        publish_properties().boxed()
    } else {
        Just(PublishProperties::default()).boxed()
    };
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic,
        packet_id(),
        properties,
        data(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: (!at_most_once).then_some(id),
                properties,
                payload,
            }
        })
}

fn pub_response(version: ProtocolVersion, codes: &'static [u8]) -> BoxedStrategy<PubResponse> {
    match version {
        ProtocolVersion::V311 => packet_id().prop_map(PubResponse::success).boxed(),
        ProtocolVersion::V5 => (packet_id(), reason(codes), ack_properties(true))
            .prop_map(|(packet_id, reason_code, properties)| PubResponse {
                packet_id,
                reason_code,
                properties,
            })
            .boxed(),
    }
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    match version {
        ProtocolVersion::V311 => qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed(),
        ProtocolVersion::V5 => (
            qos(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(RetainHandling::SendAtSubscribe),
                Just(RetainHandling::SendAtSubscribeIfNew),
                Just(RetainHandling::DoNotSend)
            ],
        )
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed(),
    }
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let properties = if v5 {
        (option::of(subscription_identifier()), user_properties()).boxed()
    } else {
        Just((None, Vec::new())).boxed()
    };
    (
        packet_id(),
        properties,
        vec((text(), subscription_options(version)), 1..5),
    )
        .prop_map(
            |(packet_id, (subscription_identifier, user_properties), filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    subscription_identifier,
                    user_properties,
                    filters,
                })
            },
        )
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let codes: &'static [u8] = if v5 {
        SUBACK_CODES
    } else {
        &[0x00, 0x01, 0x02, 0x80]
    };
    (packet_id(), ack_properties(v5), vec(reason(codes), 0..5)).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        },
    )
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let user = if v5 {
        user_properties().boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), user, vec(text(), 1..5)).prop_map(|(packet_id, user_properties, filters)| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            user_properties,
            filters,
        })
    })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let codes = if v5 {
        vec(reason(UNSUBACK_CODES), 0..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), ack_properties(v5), codes).prop_map(|(packet_id, properties, reason_codes)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    })
}

fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    match version {
        ProtocolVersion::V311 => Just(Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::Success,
        )))
        .boxed(),
        ProtocolVersion::V5 => (
            reason(DISCONNECT_CODES),
            option::of(any::<u32>()),
            option::of(text()),
            user_properties(),
            option::of(text()),
        )
            .prop_map(|(reason_code, session, reason_string, user, server)| {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties: DisconnectProperties {
                        session_expiry_interval: session,
                        reason_string,
                        user_properties: user,
                        server_reference: server,
                    },
                })
            })
            .boxed(),
    }
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(AUTH_CODES),
        option::of(text()),
        option::of(data()),
        option::of(text()),
        user_properties(),
    )
        .prop_map(|(reason_code, method, data, reason_string, user)| {
            Packet::Auth(Auth {
                reason_code,
                authentication_method: method,
                authentication_data: data,
                reason_string,
                user_properties: user,
            })
        })
}

/// Any valid packet a peer speaking `version` may send or receive.
pub(crate) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version).prop_map(Packet::Publish),
        pub_response(version, PUBACK_PUBREC_CODES).prop_map(Packet::PubAck),
        pub_response(version, PUBACK_PUBREC_CODES).prop_map(Packet::PubRec),
        pub_response(version, PUBREL_PUBCOMP_CODES).prop_map(Packet::PubRel),
        pub_response(version, PUBREL_PUBCOMP_CODES).prop_map(Packet::PubComp),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    match version {
        ProtocolVersion::V311 => common.boxed(),
        ProtocolVersion::V5 => prop_oneof![14 => common, 1 => auth()].boxed(),
    }
}

/// Either version and a packet valid for it.
pub(crate) fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![
        packet(ProtocolVersion::V311).prop_map(|p| (ProtocolVersion::V311, p)),
        packet(ProtocolVersion::V5).prop_map(|p| (ProtocolVersion::V5, p)),
    ]
}
