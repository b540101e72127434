//! Regression tests for defects found in review, each named after what it guards. Raw wire on
//! the anonymous plaintext listener, as in `wire.rs`.

mod support;

use support::*;

fn publish_v5_qos2(topic: &str, id: u16) -> Vec<u8> {
    let mut body = mstr(topic.as_bytes());
    body.extend(id.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(b"x");
    packet(0x34, &body)
}

fn publish_v311_qos1(topic: &str, id: u16) -> Vec<u8> {
    let mut body = mstr(topic.as_bytes());
    body.extend(id.to_be_bytes());
    body.extend_from_slice(b"x");
    packet(0x32, &body)
}

/// MQTT-3.3.4-9: a burst of QoS 2 PUBLISHes within the announced Receive Maximum is
/// accepted. Each was once counted twice (inbound identifier and pending PUBREC), so the hub
/// sent DISCONNECT 0x93 after about 400 of 1,000.
#[test]
fn qos2_burst_within_receive_maximum_is_accepted() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5(&unique("q2"), 60, &[]));
    let (_, props) = w.expect_connack_v5(0x00);
    let receive_maximum = props.int(0x21).unwrap_or(65_535);
    let n = 1000u16;
    assert!(
        u32::from(n) <= receive_maximum,
        "hub announces {receive_maximum}"
    );
    let mut burst = Vec::new();
    for id in 1..=n {
        burst.extend(publish_v5_qos2("r/burst", id));
    }
    w.send(&burst);
    for i in 0..n {
        let p = w
            .read_packet()
            .unwrap_or_else(|| panic!("closed after {i} PUBRECs"));
        assert_eq!(
            p.first,
            0x50,
            "packet {i}: expected PUBREC, got {:02x} {}",
            p.first,
            to_hex(&p.body)
        );
    }
}

/// A client subscribed to the topic it publishes to must not stall: the hub once paused
/// reading it because its own queue was backed up, so it never read the PUBACKs that drain
/// that queue.
#[test]
fn client_subscribed_to_its_own_topic_is_not_stalled() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v311(&unique("self"), 60));
    w.expect(&hex("20 02 00 00"));
    let topic = unique("self/t");
    let mut sub = Vec::new();
    sub.extend(1u16.to_be_bytes());
    sub.extend(mstr(topic.as_bytes()));
    sub.push(1);
    w.send(&packet(0x82, &sub));
    w.expect_packet(9);
    let n = 1500u16;
    let mut burst = Vec::new();
    for id in 1..=n {
        burst.extend(publish_v311_qos1(&topic, id));
    }
    w.send(&burst);
    let mut pubacks = 0;
    while pubacks < n {
        let p = w
            .read_packet()
            .unwrap_or_else(|| panic!("closed after {pubacks} PUBACKs"));
        match p.first >> 4 {
            4 => pubacks += 1,
            3 => {
                // Acknowledge deliveries so that the hub's window keeps moving.
                let topic_len = usize::from(u16::from_be_bytes([p.body[0], p.body[1]]));
                let id = &p.body[2 + topic_len..4 + topic_len];
                w.send(&packet(0x40, id));
            }
            other => panic!("unexpected packet type {other}"),
        }
    }
}

/// MQTT-3.14.2.2.2: DISCONNECT with Session Expiry Interval 0 ends a session that was
/// created with a longer expiry, also in the store: it once came back after a restart.
#[test]
fn session_expiry_zero_on_disconnect_is_not_restored() {
    let mut hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let id = unique("exp");
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5_session(&id, true, 3600));
    let (present, _) = w.expect_connack_v5(0x00);
    assert!(!present);
    let mut sub = Vec::new();
    sub.extend(1u16.to_be_bytes());
    sub.push(0); // no properties
    sub.extend(mstr(b"exp/#"));
    sub.push(1);
    w.send(&packet(0x82, &sub));
    w.expect_packet(9);
    // DISCONNECT, reason 0, properties: Session Expiry Interval (0x11) = 0.
    w.send(&hex("e0 07 00 05 11 00 00 00 00"));
    w.expect_closed();

    hub.restart();
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5_session(&id, false, 3600));
    let (present, _) = w.expect_connack_v5(0x00);
    assert!(
        !present,
        "the session ended by DISCONNECT came back after a restart"
    );
}
