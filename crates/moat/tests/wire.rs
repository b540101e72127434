//! Raw-wire protocol edge cases (issue 2, points 3 and 6): malformed and hostile input must end
//! in the right reason code and a closed connection, never a panic or an unbounded buffer.
//! Bytes are written as hex with the spec section they exercise; the anonymous plaintext
//! listener is used so that no TLS sits between the test and the decoder. After each scenario
//! the hub must still accept a fresh connection.
//!
//! Reason codes: MQTT 5.0 2.4 and 4.13 (a server that detects a Malformed Packet or Protocol
//! Error sends DISCONNECT with the reason code, if CONNACK was sent, then closes). MQTT 3.1.1
//! has no server DISCONNECT: the connection is just closed.

mod support;

use std::time::Duration;
use support::*;

fn hub() -> Hub {
    Hub::start(HubOptions::new().plaintext_anonymous())
}

fn hub_with(config: &str) -> Hub {
    Hub::start(HubOptions::new().plaintext_anonymous().config(config))
}

/// A complete packet from hex; its one-byte remaining length must match its body (guards the
/// hand-written vectors in this file against counting mistakes).
fn pkt(text: &str) -> Vec<u8> {
    let bytes = hex(text);
    assert!(
        bytes.len() >= 2 && bytes[1] < 0x80,
        "pkt() is for one-byte remaining lengths"
    );
    assert_eq!(
        usize::from(bytes[1]),
        bytes.len() - 2,
        "remaining length {} but {} bytes follow in {text:?}",
        bytes[1],
        bytes.len() - 2
    );
    bytes
}

/// CONNECT v5 (3.1) and a successful CONNACK; returns the wire and the CONNACK properties.
fn connected_v5(hub: &Hub, keepalive: u16) -> (Wire, Props) {
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5(&unique("w"), keepalive, &[]));
    let (_, props) = w.expect_connack_v5(0x00);
    (w, props)
}

fn connected_v311(hub: &Hub, keepalive: u16) -> Wire {
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v311(&unique("w"), keepalive));
    w.expect(&hex("20 02 00 00")); // CONNACK, session present 0, return code 0 (3.1.1 3.2)
    w
}

/// The hub survived: a new client still connects and gets a PINGRESP.
fn assert_alive(hub: &Hub) {
    let (mut w, _) = connected_v5(hub, 60);
    w.send(&hex("c0 00")); // PINGREQ
    w.expect(&hex("d0 00")); // PINGRESP
}

/// Before CONNACK a server may answer a bad CONNECT with a CONNACK carrying one of
/// `reasons`, or just close (MQTT 5.0 3.1.4, 4.13: no DISCONNECT before CONNACK).
fn expect_refused_connect(w: &mut Wire, reasons: &[u8]) {
    match w.read_packet() {
        None => {}
        Some(p) => {
            assert_eq!(
                p.kind(),
                2,
                "expected CONNACK or close, got {:02x} {}",
                p.first,
                to_hex(&p.body)
            );
            assert!(
                p.body.len() >= 2 && reasons.contains(&p.body[1]),
                "CONNACK {} for a bad CONNECT, expected one of {reasons:02x?}",
                to_hex(&p.body)
            );
            w.expect_closed();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection establishment

#[test]
fn first_packet_not_connect_is_closed() {
    let hub = hub();
    // MQTT-3.1.0-1: the first packet must be CONNECT; the server closes, sending nothing
    // (MQTT-3.14.0-1: no DISCONNECT before a CONNACK).
    for first in [
        hex("c0 00"),                                  // PINGREQ
        pkt("82 09 00 01 00 00 03 61 2f 62 01"),       // SUBSCRIBE v5 "a/b"
        pkt("30 05 00 01 61 00 78"),                   // PUBLISH
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // not MQTT at all
    ] {
        let mut w = Wire::connect(hub.plain_addr());
        w.send(&first);
        w.expect_closed();
    }
    assert_alive(&hub);
}

#[test]
fn connect_byte_by_byte_is_accepted() {
    let hub = hub();
    let mut w = Wire::connect(hub.plain_addr());
    for b in connect_v5("slow-but-fine", 60, &[]) {
        w.send(&[b]);
    }
    w.expect_connack_v5(0x00);
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00"));
}

#[test]
fn connect_with_reserved_flag_is_refused() {
    let hub = hub();
    // MQTT-3.1.2-3: the reserved bit of the Connect Flags must be 0, else Malformed Packet.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt(
        "10 0f 00 04 4d 51 54 54 # CONNECT, \"MQTT\"
         05 03 00 3c 00          # level 5, flags Clean Start | reserved, keep alive 60, no properties
         00 02 77 31             # client id \"w1\"",
    ));
    expect_refused_connect(&mut w, &[0x81]);
    // 3.1.1 3.1.2.3: same rule, connection closed.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt("10 0e 00 04 4d 51 54 54 04 03 00 3c 00 02 77 31"));
    expect_refused_connect(&mut w, &[0x81, 0x01, 0x02]);
    assert_alive(&hub);
}

#[test]
fn unknown_protocol_level_or_name_is_refused() {
    let hub = hub();
    // MQTT-3.1.2-2: unsupported level -> CONNACK 0x84 (v5) / 0x01 (3.1.1) then close, or close.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt("10 0f 00 04 4d 51 54 54 06 02 00 3c 00 00 02 77 31"));
    expect_refused_connect(&mut w, &[0x84, 0x01]);
    // MQTT-3.1.2-1: protocol name other than "MQTT" -> close (CONNACK 0x84 allowed).
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt("10 0f 00 04 4d 51 54 58 05 02 00 3c 00 00 02 77 31"));
    expect_refused_connect(&mut w, &[0x84, 0x81, 0x01]);
    assert_alive(&hub);
}

#[test]
fn second_connect_is_a_protocol_error() {
    let hub = hub();
    // MQTT-3.1.0-2: a second CONNECT is a Protocol Error -> DISCONNECT 0x82.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&connect_v5("again", 60, &[]));
    w.expect_disconnect(0x82);
    // 3.1.1 3.1.0: the server closes the connection.
    let mut w = connected_v311(&hub, 60);
    w.send(&connect_v311("again", 60));
    w.expect_closed();
    assert_alive(&hub);
}

#[test]
fn connect_deadline_closes_silent_and_partial_connections() {
    // Issue 2 point 6: CONNECT deadline (a named limit, here set to 1 s).
    let hub = hub_with("[limits]\nconnect-timeout-secs = 1\n");
    let mut silent = Wire::connect(hub.plain_addr());
    let mut partial = Wire::connect(hub.plain_addr());
    partial.send(&hex("10 0f 00 04 4d 51")); // CONNECT header and half of "MQTT", then nothing
    assert_eq!(
        silent.expect_closed_within(Duration::from_secs(6)),
        Ending::Closed
    );
    assert_eq!(
        partial.expect_closed_within(Duration::from_secs(6)),
        Ending::Closed
    );
    assert_alive(&hub);
}

#[test]
fn tls_handshake_deadline_closes_silent_connections() {
    // Issue 2 point 6: TLS handshake deadline (1 s here); the TLS port gets no ClientHello.
    let hub = hub_with("[limits]\ntls-handshake-timeout-secs = 1\n");
    let mut silent = Wire::connect(hub.tls_addr());
    let ending = silent.expect_closed_within(Duration::from_secs(6));
    assert_eq!(ending, Ending::Closed);
}

// ---------------------------------------------------------------------------------------------
// Malformed packets

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    let hub = hub();
    // MQTT 5.0 2.1.3 / MQTT-3.8.1-1: SUBSCRIBE flags must be 0010; 0000 is a Malformed Packet.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("80 09 00 01 00 00 03 61 2f 62 01"));
    w.expect_disconnect(0x81);
    // 2.1.3: PINGREQ flags must be 0000.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&hex("c1 00"));
    w.expect_disconnect(0x81);
    // MQTT-3.6.1-1: PUBREL flags must be 0010.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("60 02 00 01"));
    w.expect_disconnect(0x81);
    // 3.1.1 MQTT-3.8.1-1: the server closes the connection.
    let mut w = connected_v311(&hub, 60);
    w.send(&pkt("80 08 00 01 00 03 61 2f 62 01"));
    w.expect_closed();
    assert_alive(&hub);
}

#[test]
fn reserved_packet_type_is_malformed() {
    let hub = hub();
    // 2.1.2: packet type 0 is reserved ("Forbidden"). The standard does not say whether that
    // is a Malformed Packet (0x81, "does not conform") or a Protocol Error (0x82, "unexpected
    // packet"); both are accepted.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&hex("00 00"));
    match w.expect_closed_within(EVENT_DEADLINE) {
        Ending::Disconnect(r) => assert!(
            [0x81, 0x82].contains(&r),
            "DISCONNECT {r:#04x} for packet type 0"
        ),
        Ending::Closed => panic!("closed without DISCONNECT after CONNACK (MQTT 5.0 4.13)"),
    }
    assert_alive(&hub);
}

#[test]
fn qos_3_is_malformed() {
    let hub = hub();
    // MQTT-3.3.1-4: a PUBLISH must not have both QoS bits set.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "36 07 00 01 61 00 01 00 78 # PUBLISH QoS 3, topic \"a\", id 1, no props, \"x\"",
    ));
    w.expect_disconnect(0x81);
    let mut w = connected_v311(&hub, 60);
    w.send(&pkt("36 06 00 01 61 00 01 78"));
    w.expect_closed();
    assert_alive(&hub);
}

#[test]
fn malformed_remaining_length_is_malformed() {
    let hub = hub();
    // 1.5.5: a Variable Byte Integer has at most four bytes.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&hex("30 ff ff ff ff 01"));
    w.expect_disconnect(0x81);
    assert_alive(&hub);
}

#[test]
fn ill_formed_utf8_topic_is_malformed() {
    let hub = hub();
    // MQTT-1.5.4-1: ill-formed UTF-8 is a Malformed Packet; MQTT-1.5.4-2: so is U+0000.
    for topic in ["00 02 c3 28", "00 03 61 00 62"] {
        let (mut w, _) = connected_v5(&hub, 60);
        let t = hex(topic);
        let mut body = t.clone();
        body.extend(hex("00 78")); // no properties, payload "x"
        w.send(&packet(0x30, &body));
        w.expect_disconnect(0x81);
    }
    assert_alive(&hub);
}

#[test]
fn wildcards_in_a_topic_name_are_refused() {
    let hub = hub();
    // MQTT-3.3.2-2: a Topic Name must not contain wildcards. The standard does not say whether
    // that is malformed (0x81), a protocol error (0x82) or Topic Name invalid (0x90).
    for topic in ["a/#", "a/+/b"] {
        let (mut w, _) = connected_v5(&hub, 60);
        let mut body = mstr(topic.as_bytes());
        body.extend(hex("00 78"));
        w.send(&packet(0x30, &body));
        match w.expect_closed_within(EVENT_DEADLINE) {
            Ending::Disconnect(r) => assert!(
                [0x81, 0x82, 0x90].contains(&r),
                "topic {topic:?}: DISCONNECT {r:#04x}, expected 0x81, 0x82 or 0x90"
            ),
            Ending::Closed => panic!("topic {topic:?}: closed without DISCONNECT"),
        }
    }
    assert_alive(&hub);
}

#[test]
fn duplicate_property_is_a_protocol_error() {
    let hub = hub();
    // 2.2.2.2: including a property more than once (other than User Property / Subscription
    // Identifier) is a Protocol Error.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "30 0f 00 01 61                  # PUBLISH QoS 0, topic \"a\"
         0a 02 00 00 00 05 02 00 00 00 06 # properties: Message Expiry 5, Message Expiry 6
         78                              # payload \"x\"",
    ));
    w.expect_disconnect(0x82);
    assert_alive(&hub);
}

#[test]
fn subscription_identifier_from_a_client_publish_is_a_protocol_error() {
    let hub = hub();
    // MQTT-3.3.4-6: a PUBLISH from a client must not contain a Subscription Identifier.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "30 07 00 01 61 02 0b 01 78 # PUBLISH \"a\", Subscription Identifier 1, \"x\"",
    ));
    w.expect_disconnect(0x82);
    assert_alive(&hub);
}

#[test]
fn session_expiry_on_disconnect_after_zero_is_a_protocol_error() {
    let hub = hub();
    // MQTT-3.14.2-2: CONNECT had Session Expiry 0 (absent), DISCONNECT sets 60 -> 0x82.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "e0 07 00 05 11 00 00 00 3c # DISCONNECT 0x00, Session Expiry Interval 60",
    ));
    w.expect_disconnect(0x82);
    assert_alive(&hub);
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn oversize_packet_refused_from_its_header() {
    // Issue 2 point 6: packet size checked before buffering. The header announces more than the
    // limit and no payload follows: the server must decide from the header alone.
    let small = hub_with("[limits]\nmax-packet-size = 1024\n");
    let (mut w, props) = connected_v5(&small, 60);
    // 3.2.2.3.6: the server's Maximum Packet Size in CONNACK.
    let announced = props.int(0x27);
    assert!(
        announced.is_some_and(|m| m <= 1024),
        "CONNACK Maximum Packet Size {announced:?}, configured 1024"
    );
    w.send(&hex(
        "30 ff ff 7f # PUBLISH announcing 2,097,151 bytes, none sent",
    ));
    w.expect_disconnect(0x95); // MQTT-3.2.2-... 4.13: 0x95 Packet too large
    // Just above the limit, announced by a SUBSCRIBE.
    let (mut w, _) = connected_v5(&small, 60);
    w.send(&[0x82, 0x81, 0x08]); // SUBSCRIBE, remaining length 1025
    w.expect_disconnect(0x95);
    // The largest remaining length the protocol can express, with default limits too.
    let default = hub();
    let (mut w, _) = connected_v5(&default, 60);
    w.send(&hex("30 ff ff ff 7f"));
    w.expect_disconnect(0x95);
    // A CONNECT announcing 268 MB: CONNACK 0x95 or close.
    let mut w = Wire::connect(default.plain_addr());
    w.send(&hex("10 ff ff ff 7f"));
    expect_refused_connect(&mut w, &[0x95]);
    assert_alive(&small);
    assert_alive(&default);
}

#[test]
fn packet_at_the_limit_is_accepted() {
    let hub = hub_with("[limits]\nmax-packet-size = 1024\n");
    let (mut w, _) = connected_v5(&hub, 60);
    // SUBSCRIBE to "big/#" first so the message comes back; its own size is small.
    w.send(&pkt("82 0b 00 01 00 00 05 62 69 67 2f 23 00"));
    let suback = w.expect_packet(9);
    assert_eq!(
        suback.body.last(),
        Some(&0x00),
        "SUBACK {}",
        to_hex(&suback.body)
    );
    // PUBLISH QoS 0 of exactly 1024 bytes in total: 1 + 2 (remaining length 1021) + 1021.
    let topic = b"big/x";
    let mut body = mstr(topic);
    body.push(0); // no properties
    body.resize(1021, b'p');
    let p = packet(0x30, &body);
    assert_eq!(p.len(), 1024);
    w.send(&p);
    let back = w.expect_packet(3);
    assert_eq!(
        back.body.len(),
        1021,
        "message at the size limit not delivered intact"
    );
}

#[test]
fn receive_maximum_exceeded_is_disconnected() {
    // MQTT-3.3.4-8 / 3.2.2.3.3: more unacknowledged QoS 2 PUBLISHes than the server's Receive
    // Maximum -> DISCONNECT 0x93.
    let hub = hub_with("[limits]\nreceive-maximum = 2\n");
    let (mut w, props) = connected_v5(&hub, 60);
    assert_eq!(
        props.int(0x21),
        Some(2),
        "CONNACK Receive Maximum (configured 2)"
    );
    for id in 1u8..=2 {
        // PUBLISH QoS 2, topic "a", packet id, no properties, payload "x"; no PUBREL follows.
        w.send(&[0x34, 0x07, 0x00, 0x01, b'a', 0x00, id, 0x00, b'x']);
        let rec = w.expect_packet(5);
        assert_eq!(&rec.body[..2], &[0, id], "PUBREC for packet id {id}");
    }
    w.send(&pkt("34 07 00 01 61 00 03 00 78"));
    w.expect_disconnect(0x93);
    assert_alive(&hub);
}

#[test]
fn invalid_topic_alias_is_disconnected() {
    let hub = hub();
    // MQTT-3.3.2-8: a sender must not use Topic Alias 0. The reason code table defines 0x94
    // Topic Alias invalid only for an alias above the maximum, so for 0 both 0x94 and 0x82
    // Protocol Error are accepted.
    let (mut w, props) = connected_v5(&hub, 60);
    w.send(&pkt(
        "30 08 00 01 61 03 23 00 00 78 # PUBLISH \"a\", Topic Alias 0, \"x\"",
    ));
    match w.expect_closed_within(EVENT_DEADLINE) {
        Ending::Disconnect(r) => assert!(
            [0x94, 0x82].contains(&r),
            "DISCONNECT {r:#04x} for Topic Alias 0"
        ),
        Ending::Closed => panic!("closed without DISCONNECT for Topic Alias 0"),
    }
    // MQTT-3.3.2-9: an alias above the server's Topic Alias Maximum -> 0x94.
    let max = props.int(0x22).unwrap_or(0);
    let (mut w, _) = connected_v5(&hub, 60);
    let alias = u16::try_from(max + 1).expect("alias fits");
    let mut body = mstr(b"a");
    body.extend([3, 0x23]);
    body.extend(alias.to_be_bytes());
    body.push(b'x');
    w.send(&packet(0x30, &body));
    w.expect_disconnect(0x94);
    // 3.3.2.3.4: an empty topic with an alias that has no mapping is a Protocol Error.
    if max >= 1 {
        let (mut w, _) = connected_v5(&hub, 60);
        w.send(&pkt(
            "30 07 00 00 03 23 00 01 78 # PUBLISH \"\", Topic Alias 1 (unmapped)",
        ));
        w.expect_disconnect(0x82);
    }
    assert_alive(&hub);
}

#[test]
fn invalid_subscription_filters_get_0x8f() {
    let hub = hub();
    // 4.7.1: '#' must be last and alone in its level, '+' alone in its level. Invalid filters
    // get SUBACK 0x8F Topic Filter invalid (3.9.3), the connection stays usable.
    let (mut w, _) = connected_v5(&hub, 60);
    let filters: [&[u8]; 4] = [b"a/#/b", b"a+", b"#/", b"a/b#"];
    let mut body = hex("00 07 00"); // packet id 7, no properties
    for f in filters {
        body.extend(mstr(f));
        body.push(0x01);
    }
    body.extend(mstr(b"ok/+"));
    body.push(0x01);
    w.send(&packet(0x82, &body));
    let suback = w.expect_packet(9);
    assert_eq!(&suback.body[..2], &[0, 7], "SUBACK packet id");
    let (_, used) = Props::parse(&suback.body[2..]);
    let codes = &suback.body[2 + used..];
    assert_eq!(
        codes,
        &[0x8f, 0x8f, 0x8f, 0x8f, 0x01],
        "SUBACK codes {}",
        to_hex(codes)
    );
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00"));
}

#[test]
fn topic_and_subscription_limits_are_enforced() {
    // Issue 2 point 6: topic length and levels, subscriptions per client. The standard leaves
    // the reason code to the server; any failure code (>= 0x80) is accepted.
    let hub =
        hub_with("[limits]\nmax-topic-levels = 4\nmax-topic-length = 64\nmax-subscriptions = 2\n");
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "82 1e 00 01 00 00 09 61 2f 62 2f 63 2f 64 2f 65 01 # SUBSCRIBE a/b/c/d/e (5 levels)
                 00 0c 6f 6b 2f 31 2f 32 2f 33 2f 34 2f 35 01             # and ok/1/2/3/4/5 (6)",
    ));
    let suback = w.expect_packet(9);
    let (_, used) = Props::parse(&suback.body[2..]);
    let codes = suback.body[2 + used..].to_vec();
    assert_eq!(codes.len(), 2);
    assert!(
        codes.iter().all(|c| *c >= 0x80),
        "filters with 5 and 6 levels (limit 4) granted: {codes:02x?}"
    );

    // Subscriptions per client: two allowed, the third refused.
    let mut body = hex("00 02 00");
    for f in [b"s/1".as_slice(), b"s/2", b"s/3"] {
        body.extend(mstr(f));
        body.push(0x01);
    }
    w.send(&packet(0x82, &body));
    let suback = w.expect_packet(9);
    let (_, used) = Props::parse(&suback.body[2..]);
    let codes = suback.body[2 + used..].to_vec();
    assert_eq!(&codes[..2], &[1, 1], "first two subscriptions");
    assert!(
        codes[2] >= 0x80,
        "third subscription (limit 2) granted: {codes:02x?}"
    );

    // A QoS 1 publish to a topic over the length limit: PUBACK >= 0x80 or DISCONNECT >= 0x80.
    let long = "t/".repeat(20) + "x".repeat(40).as_str();
    let mut body = mstr(long.as_bytes());
    body.extend(hex("00 09 00 78")); // packet id 9, no properties, "x"
    w.send(&packet(0x32, &body));
    match w.read_packet() {
        Some(p) if p.kind() == 4 => assert!(
            p.body.len() >= 3 && p.body[2] >= 0x80,
            "PUBACK {} for a topic over the limit",
            to_hex(&p.body)
        ),
        Some(p) if p.kind() == 14 => assert!(
            p.body.first().is_some_and(|r| *r >= 0x80),
            "DISCONNECT {}",
            to_hex(&p.body)
        ),
        other => panic!("topic over the length limit: got {other:?}"),
    }
    assert_alive(&hub);
}

// ---------------------------------------------------------------------------------------------
// Keep alive

#[test]
fn keep_alive_one_and_a_half_rule_v5() {
    let hub = hub();
    // MQTT-3.1.2-22: no packet within 1.5 x keep alive -> the server closes (v5: it may send
    // DISCONNECT 0x8D Keep Alive timeout first).
    let (mut w, props) = connected_v5(&hub, 1);
    let keepalive = props.int(0x13).unwrap_or(1);
    assert!(
        keepalive >= 1,
        "Server Keep Alive 0 for a client keep alive of 1"
    );
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00"));
    let limit = Duration::from_millis(u64::from(keepalive) * 1500) + Duration::from_secs(4);
    match w.expect_closed_within(limit) {
        Ending::Closed => {}
        Ending::Disconnect(r) => assert_eq!(r, 0x8d, "DISCONNECT reason on keep alive timeout"),
    }
    assert_alive(&hub);
}

#[test]
fn keep_alive_one_and_a_half_rule_v311() {
    let hub = hub();
    // MQTT 3.1.1 MQTT-3.1.2-24.
    let mut w = connected_v311(&hub, 1);
    assert_eq!(
        w.expect_closed_within(Duration::from_secs(6)),
        Ending::Closed
    );
}

#[test]
fn keep_alive_holds_against_a_client_that_only_receives() {
    // A client that never sends must be closed at 1.5 x its keep alive even while a flood of
    // deliveries keeps waking its connection: receiving is not hearing from it
    // (MQTT-3.1.2-22). It also reads slowly, so the hub's writes to it wait and its queue
    // stays full: neither the wake-ups nor the waiting writes may hold the keep alive off.
    //
    // When the hub closed is read from its keep alive counter: the client only sees the
    // close after reading what the kernel buffered before it, and loopback buffers may hold
    // tens of megabytes (tcp_rmem allows 32 MiB on some machines), seconds of slow reading.
    let hub = hub();
    let timeouts = || {
        hub.metric("moat_keep_alive_timeouts_total")
            .expect("the keep alive timeout counter")
    };
    let timeouts_before = timeouts();
    let (mut silent, props) = connected_v5(&hub, 1);
    let keepalive = props.int(0x13).unwrap_or(1);
    silent.send(&pkt("82 0b 00 01 00 00 05 6b 61 2f 66 6c 00")); // SUBSCRIBE v5 "ka/fl", QoS 0
    assert_eq!(silent.expect_packet(9).body, hex("00 01 00 00"), "SUBACK");
    // The hub last heard from the client now.
    let started = std::time::Instant::now();

    let (mut publisher, _) = connected_v5(&hub, 60);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // 64 PUBLISH packets per write, QoS 0 on "ka/fl", until told to stop.
            let burst = pkt("30 0a 00 05 6b 61 2f 66 6c 00 78 78").repeat(64);
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publisher.send(&burst);
                writes += 1;
            }
            writes
        })
    };
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiving = std::thread::spawn({
        let draining = draining.clone();
        move || {
            let mut deliveries = 0u64;
            let ending = loop {
                match silent.read_packet() {
                    Some(p) if p.kind() == 3 => {
                        deliveries += 1;
                        if deliveries.is_multiple_of(64)
                            && !draining.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            // A slow reader: the hub's writes to it wait, and its queue stays full.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Some(p) if p.kind() == 14 => {
                        break Ending::Disconnect(p.body.first().copied().unwrap_or(0));
                    }
                    Some(p) => panic!("unexpected packet type {} while flooded", p.kind()),
                    None => break Ending::Closed,
                }
            };
            (ending, deliveries)
        }
    });

    let limit = Duration::from_millis(u64::from(keepalive) * 1500) + Duration::from_secs(4);
    loop {
        // Read before the counter: the hub counts the timeout before it closes, so a
        // connection found ended here and still uncounted ended some other way.
        let ended = receiving.is_finished();
        if timeouts() > timeouts_before {
            break;
        }
        assert!(!ended, "the connection ended without a keep alive timeout");
        assert!(
            started.elapsed() < limit,
            "a client that sent nothing for {:?} is still connected",
            started.elapsed()
        );
        // Polling interval: each reading of the counter is an HTTPS request.
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client reads on to the close, at full speed: what was buffered before it, then
    // the end.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ending, deliveries) = receiving.join().expect("the silent client read");
    let writes = flooding.join().expect("the flooding publisher ran");
    match ending {
        Ending::Closed => {}
        Ending::Disconnect(r) => assert_eq!(r, 0x8d, "DISCONNECT reason on keep alive timeout"),
    }
    assert!(
        deliveries >= 1000,
        "the flood reached the client only {deliveries} times ({writes} bursts written)"
    );
    assert_alive(&hub);
}

#[test]
fn server_keep_alive_caps_the_client() {
    // --max-keepalive 5: a client asking for 600 (or 0, "no keep alive") is told 5 in the
    // CONNACK's Server Keep Alive (3.2.2.3.14).
    let hub = Hub::start(HubOptions::new().plaintext_anonymous().max_keepalive(5));
    for asked in [600u16, 0] {
        let mut w = Wire::connect(hub.plain_addr());
        w.send(&connect_v5(&unique("ka"), asked, &[]));
        let (_, props) = w.expect_connack_v5(0);
        assert_eq!(
            props.int(0x13),
            Some(5),
            "Server Keep Alive for a client asking {asked}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// More CONNECT, SUBSCRIBE and flow rules

/// After CONNACK, the next thing must be DISCONNECT with one of `reasons`, then close.
fn expect_disconnect_one_of(w: &mut Wire, reasons: &[u8], what: &str) {
    match w.expect_closed_within(EVENT_DEADLINE) {
        Ending::Disconnect(r) => assert!(
            reasons.contains(&r),
            "{what}: DISCONNECT {r:#04x}, expected one of {reasons:02x?}"
        ),
        Ending::Closed => panic!("{what}: closed without DISCONNECT (MQTT 5.0 4.13)"),
    }
}

#[test]
fn bad_will_flags_in_connect_are_malformed() {
    let hub = hub();
    // MQTT-3.1.2-14: Will QoS 3 is malformed.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt(
        "10 16 00 04 4d 51 54 54 05  # CONNECT v5
         1e 00 3c 00                 # flags: Will Flag, Will QoS 3, Clean Start; keep alive 60
         00 02 77 31                 # client id \"w1\"
         00 00 01 74 00 01 78        # will properties (none), will topic \"t\", will payload \"x\"",
    ));
    expect_refused_connect(&mut w, &[0x81]);
    // MQTT-3.1.2-13: Will Flag 0 with Will QoS 1 is malformed.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&pkt("10 0f 00 04 4d 51 54 54 05 0a 00 3c 00 00 02 77 31"));
    expect_refused_connect(&mut w, &[0x81]);
    assert_alive(&hub);
}

#[test]
fn overlong_client_identifier_is_refused() {
    let hub = hub();
    // 3.1.3.1: the server may refuse a client id it does not accept: CONNACK 0x85 Client
    // Identifier not valid. Moat's limit is 256 bytes.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5(&"c".repeat(300), 60, &[]));
    expect_refused_connect(&mut w, &[0x85]);
    assert_alive(&hub);
}

#[test]
fn unsupported_authentication_method_is_refused() {
    let hub = hub();
    // MQTT-4.12.0-1: an Authentication Method the server does not support -> CONNACK 0x8C
    // (or 0x87), and the server MUST close the connection.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5(
        "auth",
        60,
        &hex("15 00 05 53 43 52 41 4d # Authentication Method \"SCRAM\""),
    ));
    match w.read_packet() {
        None => {}
        Some(p) => {
            assert_eq!(p.kind(), 2, "expected CONNACK, got {:02x}", p.first);
            assert!(
                [0x8c, 0x87].contains(&p.body[1]),
                "CONNACK {} for an unsupported Authentication Method",
                to_hex(&p.body)
            );
            w.expect_closed();
        }
    }
    assert_alive(&hub);
}

#[test]
fn auth_packet_without_authentication_method_is_a_protocol_error() {
    let hub = hub();
    // 4.12 / 3.15: AUTH without an Authentication Method in CONNECT is a Protocol Error.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&hex("f0 00"));
    expect_disconnect_one_of(&mut w, &[0x82], "AUTH without authentication");
    assert_alive(&hub);
}

#[test]
fn subscribe_and_unsubscribe_without_filters_are_protocol_errors() {
    let hub = hub();
    // MQTT-3.8.3-2: a SUBSCRIBE must contain at least one filter.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("82 03 00 01 00"));
    expect_disconnect_one_of(&mut w, &[0x82, 0x81], "SUBSCRIBE without filters");
    // MQTT-3.10.3-2: so must an UNSUBSCRIBE.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("a2 03 00 01 00"));
    expect_disconnect_one_of(&mut w, &[0x82, 0x81], "UNSUBSCRIBE without filters");
    assert_alive(&hub);
}

#[test]
fn bad_subscription_options_are_refused() {
    let hub = hub();
    // MQTT-3.8.3-5: reserved bits 6-7 of the Subscription Options must be 0 (Malformed Packet).
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("82 09 00 01 00 00 03 61 2f 62 c1"));
    expect_disconnect_one_of(&mut w, &[0x81], "reserved subscription option bits");
    // 3.8.3.1: Retain Handling 3 is a Protocol Error.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("82 09 00 01 00 00 03 61 2f 62 31"));
    expect_disconnect_one_of(&mut w, &[0x82, 0x81], "Retain Handling 3");
    // 3.8.2.1.2: Subscription Identifier 0 is a Protocol Error.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("82 0b 00 01 02 0b 00 00 03 61 2f 62 01"));
    expect_disconnect_one_of(&mut w, &[0x82, 0x81], "Subscription Identifier 0");
    assert_alive(&hub);
}

#[test]
fn request_problem_information_zero_suppresses_reason_strings() {
    let hub = hub();
    // MQTT-3.1.2-29: with Request Problem Information 0 the server must not send a Reason
    // String or User Properties on anything but PUBLISH, CONNACK and DISCONNECT.
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5("rpi", 60, &hex("17 00")));
    w.expect_connack_v5(0);
    w.send(&pkt(
        "82 0b 00 05 00 00 05 61 2f 23 2f 62 01 # SUBSCRIBE \"a/#/b\" (invalid)",
    ));
    let suback = w.expect_packet(9);
    let (props, used) = Props::parse(&suback.body[2..]);
    assert_eq!(suback.body[2 + used..], [0x8f], "SUBACK code");
    assert!(
        props.get(0x1f).is_none() && props.get(0x26).is_none(),
        "SUBACK carries a Reason String or User Property although the client asked for none: {props:?}"
    );
}

#[test]
fn pubrel_for_an_unknown_packet_id_gets_pubcomp() {
    let hub = hub();
    // 4.3.3 / 3.7.2.1: PUBREL for a packet id the server does not know -> PUBCOMP with 0x92
    // Packet Identifier not found (0x00 tolerated); the connection stays up.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt("62 02 00 63"));
    let comp = w.expect_packet(7);
    assert_eq!(&comp.body[..2], &[0x00, 0x63], "PUBCOMP packet id");
    let reason = comp.body.get(2).copied().unwrap_or(0);
    assert!(
        [0x00, 0x92].contains(&reason),
        "PUBCOMP reason {reason:#04x}"
    );
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00"));
}

#[test]
fn qos2_packet_id_is_reusable_after_the_flow_completes() {
    let hub = hub();
    // 4.3.3: once PUBCOMP is sent the packet id is free; the same id then carries a new message
    // that must be delivered again.
    let (mut sub, _) = connected_v5(&hub, 60);
    sub.send(&pkt(
        "82 0a 00 01 00 00 04 71 32 2f 23 02 # SUBSCRIBE \"q2/#\" QoS 2",
    ));
    sub.expect_packet(9);
    let (mut w, _) = connected_v5(&hub, 60);
    for round in [b'1', b'2'] {
        w.send(&[0x34, 0x08, 0x00, 0x02, b'q', b'2', 0x00, 0x07, 0x00, round]);
        let rec = w.expect_packet(5);
        assert_eq!(&rec.body[..2], &[0, 7]);
        w.send(&pkt("62 02 00 07"));
        let comp = w.expect_packet(7);
        assert_eq!(&comp.body[..2], &[0, 7]);
        let p = sub.expect_packet(3);
        assert_eq!(
            p.body.last(),
            Some(&round),
            "round {} not delivered",
            round - b'0'
        );
        let id = [p.body[4], p.body[5]];
        sub.send(&packet(0x50, &id));
        sub.expect_packet(6);
        sub.send(&packet(0x70, &id));
    }
}

#[test]
fn invalid_utf8_payload_declared_utf8_is_refused() {
    let hub = hub();
    // 3.3.2.3.2: Payload Format Indicator 1 with a payload that is not UTF-8: a receiver that
    // validates answers 0x99 Payload format invalid (PUBACK or DISCONNECT). Moat validates.
    let (mut w, _) = connected_v5(&hub, 60);
    w.send(&pkt(
        "32 09 00 01 61 00 01 02 01 01 ff # PUBLISH QoS 1 \"a\" id 1, PFI 1, payload ff",
    ));
    match w.read_packet() {
        Some(p) if p.kind() == 4 => {
            assert_eq!(p.body.get(2), Some(&0x99), "PUBACK {}", to_hex(&p.body))
        }
        Some(p) if p.kind() == 14 => assert_eq!(
            p.body.first(),
            Some(&0x99),
            "DISCONNECT {}",
            to_hex(&p.body)
        ),
        other => panic!("expected PUBACK or DISCONNECT 0x99, got {other:?}"),
    }
    assert_alive(&hub);
}

#[test]
fn hostile_counts_within_the_packet_size_are_bounded() {
    // Issue 2 point 6: counts an attacker controls inside one legal-sized packet (properties,
    // topic levels, filters per SUBSCRIBE) end in a reason code or are served, never in a
    // crash; the hub stays up.
    let hub = hub();
    // 20,000 empty User Properties (100 KB) on a QoS 1 PUBLISH.
    let (mut w, _) = connected_v5(&hub, 60);
    let mut props = Vec::new();
    for _ in 0..20_000 {
        props.extend(hex("26 00 00 00 00"));
    }
    let mut body = mstr(b"hostile/props");
    body.extend(hex("00 01"));
    body.extend(varint(props.len()));
    body.extend(props);
    body.push(b'x');
    w.send(&packet(0x32, &body));
    match w.read_packet() {
        Some(p) if p.kind() == 4 => {} // served or refused with a PUBACK reason code
        Some(p) if p.kind() == 14 => assert!(p.body.first().is_some_and(|r| *r >= 0x80)),
        None => {}
        Some(p) => panic!("unexpected packet {:02x} {}", p.first, to_hex(&p.body)),
    }
    // A topic of 30,000 levels.
    let (mut w, _) = connected_v5(&hub, 60);
    let topic = "/".repeat(29_999);
    let mut body = mstr(topic.as_bytes());
    body.extend(hex("00 01 00 78"));
    w.send(&packet(0x32, &body));
    match w.read_packet() {
        Some(p) if p.kind() == 4 => assert!(
            p.body.get(2).is_some_and(|r| *r >= 0x80),
            "PUBACK {}",
            to_hex(&p.body)
        ),
        Some(p) if p.kind() == 14 => assert!(p.body.first().is_some_and(|r| *r >= 0x80)),
        other => panic!("30,000-level topic: {other:?}"),
    }
    // 5,000 filters in one SUBSCRIBE: one reason code each, failures past the limit.
    let (mut w, _) = connected_v5(&hub, 60);
    let mut body = hex("00 01 00");
    for i in 0..5_000 {
        body.extend(mstr(format!("f/{i}").as_bytes()));
        body.push(0x01);
    }
    w.send(&packet(0x82, &body));
    match w.read_packet() {
        Some(p) if p.kind() == 9 => {
            let (_, used) = Props::parse(&p.body[2..]);
            assert_eq!(p.body.len() - 2 - used, 5_000, "one SUBACK code per filter");
        }
        Some(p) if p.kind() == 14 => assert!(p.body.first().is_some_and(|r| *r >= 0x80)),
        other => panic!("5,000-filter SUBSCRIBE: {other:?}"),
    }
    assert_alive(&hub);
}
