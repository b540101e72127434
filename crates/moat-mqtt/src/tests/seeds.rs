//! Seed corpora for the fuzz targets: real packets of every type in both versions, one per
//! file, plus whole client sessions (CONNECT first) as streams.
//!
//! Regenerate with
//! `cargo test -p moat-mqtt write_fuzz_seeds -- --ignored`; files go to `fuzz/seeds/<target>/`.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use moat_types::{QoS, TopicName};

use crate::*;

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap_or_else(|e| panic!("bad seed topic {s:?}: {e}"))
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap_or(PacketId::MIN)
}

fn user(k: &str, v: &str) -> UserProperty {
    (k.to_owned(), v.to_owned())
}

fn connect(version: ProtocolVersion) -> Packet {
    let v5 = version == ProtocolVersion::V5;
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 30,
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(16),
                maximum_packet_size: Some(65_536),
                topic_alias_maximum: Some(8),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![user("fw", "1.2.3")],
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"n,,n=dev,r=abc")),
            }
        } else {
            ConnectProperties::default()
        },
        client_id: "sensor-0042".into(),
        will: Some(Will {
            topic: topic("devices/sensor-0042/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(10),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some(topic("devices/sensor-0042/reply")),
                    correlation_data: Some(Bytes::from_static(&[1, 2, 3, 4])),
                    user_properties: vec![user("reason", "lost")],
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("sensor-0042".into()),
        password: Some(Bytes::from_static(b"hunter2")),
    }))
}

fn publish(version: ProtocolVersion, qos: QoS, id: u16) -> Packet {
    let v5 = version == ProtocolVersion::V5;
    Packet::Publish(Publish {
        dup: qos == QoS::ExactlyOnce,
        qos,
        retain: qos == QoS::AtMostOnce,
        topic: Some(topic("devices/sensor-0042/temp")),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: if v5 {
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(1),
                response_topic: Some(topic("replies/1")),
                correlation_data: Some(Bytes::from_static(b"req-7")),
                user_properties: vec![user("unit", "C")],
                subscription_identifiers: vec![3, 200],
                content_type: Some("application/json".into()),
            }
        } else {
            PublishProperties::default()
        },
        payload: Bytes::from_static(br#"{"t":21.5}"#),
    })
}

fn ack_properties(version: ProtocolVersion) -> AckProperties {
    if version == ProtocolVersion::V5 {
        AckProperties {
            reason_string: Some("ok".into()),
            user_properties: vec![user("k", "v")],
        }
    } else {
        AckProperties::default()
    }
}

fn response(version: ProtocolVersion, reason_code: ReasonCode) -> PubResponse {
    let v5 = version == ProtocolVersion::V5;
    PubResponse {
        packet_id: pid(7),
        reason_code: if v5 { reason_code } else { ReasonCode::Success },
        properties: ack_properties(version),
    }
}

/// Named client-to-server packets of a session, CONNECT first.
fn client_session(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version == ProtocolVersion::V5;
    let mut packets = vec![
        ("connect", connect(version)),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                subscription_identifier: v5.then_some(3),
                user_properties: if v5 { vec![user("k", "v")] } else { vec![] },
                filters: vec![
                    (
                        "devices/+/cmd".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 {
                                RetainHandling::DoNotSend
                            } else {
                                RetainHandling::SendAtSubscribe
                            },
                        },
                    ),
                    (
                        "$share/g/fleet/#".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..Default::default()
                        },
                    ),
                ],
            }),
        ),
        ("publish-qos0", publish(version, QoS::AtMostOnce, 0)),
        ("publish-qos1", publish(version, QoS::AtLeastOnce, 7)),
        ("publish-qos2", publish(version, QoS::ExactlyOnce, 8)),
        (
            "puback",
            Packet::PubAck(response(version, ReasonCode::NoMatchingSubscribers)),
        ),
        (
            "pubrec",
            Packet::PubRec(response(version, ReasonCode::Success)),
        ),
        (
            "pubrel",
            Packet::PubRel(response(version, ReasonCode::PacketIdentifierNotFound)),
        ),
        ("pubcomp", Packet::PubComp(PubResponse::success(pid(8)))),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(2),
                user_properties: if v5 { vec![user("k", "v")] } else { vec![] },
                filters: vec!["devices/+/cmd".into()],
            }),
        ),
        ("pingreq", Packet::PingReq),
    ];
    if v5 {
        packets.push((
            "publish-alias",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: None,
                packet_id: None,
                properties: PublishProperties {
                    topic_alias: Some(1),
                    ..Default::default()
                },
                payload: Bytes::from_static(b"22.0"),
            }),
        ));
        packets.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"c=biws,r=abc")),
                reason_string: None,
                user_properties: vec![],
            }),
        ));
    }
    packets.push((
        "disconnect",
        Packet::Disconnect(Disconnect {
            reason_code: if v5 {
                ReasonCode::DisconnectWithWill
            } else {
                ReasonCode::Success
            },
            properties: DisconnectProperties {
                session_expiry_interval: v5.then_some(0),
                reason_string: v5.then(|| "bye".into()),
                ..Default::default()
            },
        }),
    ));
    packets
}

/// Named server-to-client packets.
fn server_packets(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version == ProtocolVersion::V5;
    vec![
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: if v5 {
                    ConnAckProperties {
                        receive_maximum: Some(100),
                        maximum_qos: Some(QoS::AtLeastOnce),
                        retain_available: Some(true),
                        maximum_packet_size: Some(1 << 20),
                        assigned_client_identifier: Some("auto-1".into()),
                        topic_alias_maximum: Some(10),
                        wildcard_subscription_available: Some(true),
                        subscription_identifiers_available: Some(true),
                        shared_subscription_available: Some(false),
                        server_keep_alive: Some(60),
                        ..Default::default()
                    }
                } else {
                    ConnAckProperties::default()
                },
            }),
        ),
        (
            "connack-refused",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NotAuthorized,
                properties: ConnAckProperties::default(),
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: pid(1),
                properties: ack_properties(version),
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(2),
                properties: ack_properties(version),
                reason_codes: if v5 {
                    vec![ReasonCode::NoSubscriptionExisted]
                } else {
                    vec![]
                },
            }),
        ),
        ("pingresp", Packet::PingResp),
    ]
}

#[test]
#[ignore = "writes fuzz/seeds; run with --ignored to regenerate"]
fn write_fuzz_seeds() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    for target in ["decode", "roundtrip"] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (version, tag) in [(ProtocolVersion::V311, "v311"), (ProtocolVersion::V5, "v5")] {
            let mut session = BytesMut::new();
            for (name, packet) in client_session(version) {
                let mut one = BytesMut::new();
                encode(&packet, version, &mut one);
                session.extend_from_slice(&one);
                std::fs::write(dir.join(format!("{tag}-{name}.bin")), &one)?;
            }
            std::fs::write(dir.join(format!("{tag}-session.bin")), &session)?;
            for (name, packet) in server_packets(version) {
                let mut one = BytesMut::new();
                encode(&packet, version, &mut one);
                std::fs::write(dir.join(format!("{tag}-server-{name}.bin")), &one)?;
            }
        }
    }
    Ok(())
}

/// The seed packets are valid: each round-trips, and each session decodes in full.
#[test]
fn seed_packets_round_trip() {
    let limits = Limits::default();
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut session = BytesMut::new();
        for (_, packet) in client_session(version) {
            crate::fuzz::assert_roundtrip(&packet, version, &limits);
            encode(&packet, version, &mut session);
        }
        for (_, packet) in server_packets(version) {
            crate::fuzz::assert_roundtrip(&packet, version, &limits);
        }
        let first = decode_connect(&mut session, &limits);
        assert!(matches!(first, Ok(Some(Packet::Connect(_)))), "{first:?}");
        let mut count = 1;
        while let Some(packet) = decode(&mut session, version, &limits).transpose() {
            assert!(packet.is_ok(), "{packet:?}");
            count += 1;
        }
        assert_eq!(count, client_session(version).len());
        assert!(session.is_empty());
    }
}
