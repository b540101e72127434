//! Durability (issue 2, point 5): persistent sessions, their subscriptions, queued QoS 1/2
//! messages, in-flight state and retained messages survive a restart; a message whose
//! PUBACK/PUBREC the publisher has received survives SIGKILL.
//!
//! Publishers and subscribers are mosquitto_pub/mosquitto_sub over mutual TLS where a device can
//! play the role, and raw MQTT 5 bytes on the anonymous plaintext listener where the test needs
//! to hold an acknowledgement back or read the Session Present and DUP flags.

mod support;

use std::time::Duration;
use support::*;

const QUIET: Duration = Duration::from_secs(1);
/// Session Expiry Interval used for persistent sessions (MQTT 5.0 3.1.2.11.2).
const EXPIRY: u32 = 3600;

fn hub() -> Hub {
    Hub::start(HubOptions::new().plaintext_anonymous())
}

/// Persistent subscription for a device made by mosquitto_sub, which then exits (-E).
fn persistent_subscribe(hub: &Hub, dev: &Via, v: Mqtt, filter: &str, qos: &str) {
    let mut args = vec!["-c", "-q", qos, "-t", filter, "-E"];
    if v == Mqtt::V5 {
        args.extend(["-x", "3600"]);
    }
    let mut sub = Sub::start(hub, dev, v, None, &args);
    assert_eq!(
        sub.granted,
        vec![qos.parse::<u8>().expect("qos")],
        "{}",
        sub.show()
    );
    assert!(sub.wait_exit().success(), "{}", sub.show());
}

/// Resumes the device's session with mosquitto_sub and returns the first `n` messages.
fn resume_and_collect(
    hub: &Hub,
    dev: &Via,
    v: Mqtt,
    filter: &str,
    qos: &str,
    n: usize,
) -> Vec<(String, String)> {
    let count = n.to_string();
    let mut args = vec!["-c", "-q", qos, "-t", filter, "-C", &count, "-W", "10"];
    if v == Mqtt::V5 {
        args.extend(["-x", "3600"]);
    }
    let mut sub = Sub::start(hub, dev, v, None, &args);
    let (msgs, status) = sub.messages_until_exit();
    assert!(
        status.success(),
        "mosquitto_sub did not get {n} messages\n{}",
        sub.show()
    );
    msgs
}

fn publish_anon(hub: &Hub, v: Mqtt, topic: &str, payload: &str, extra: &[&str]) {
    let mut args = vec!["-t", topic, "-m", payload];
    args.extend_from_slice(extra);
    mosquitto_pub(hub, &Via::Anonymous, v, Some(&unique("pub")), &args).assert_ok();
}

#[test]
fn persistent_session_and_queued_messages_survive_restart() {
    let mut hub = hub();
    let dev = Via::Device(hub.add_device("keeper"));
    for v in [Mqtt::V311, Mqtt::V5] {
        let base = format!("devices/keeper/{v:?}");
        persistent_subscribe(&hub, &dev, v, &format!("{base}/#"), "2");
        publish_anon(&hub, v, &format!("{base}/a"), "queued-q1", &["-q", "1"]);
        publish_anon(&hub, v, &format!("{base}/b"), "queued-q2", &["-q", "2"]);
        hub.restart();
        let msgs = resume_and_collect(&hub, &dev, v, &format!("{base}/#"), "2", 2);
        assert_eq!(
            msgs,
            vec![
                (format!("{base}/a"), "queued-q1".to_owned()),
                (format!("{base}/b"), "queued-q2".to_owned())
            ],
            "{v:?}: queued messages after a restart"
        );
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let mut hub = hub();
    let dev = Via::Device(hub.add_device("survivor"));
    for v in [Mqtt::V311, Mqtt::V5] {
        let base = format!("devices/survivor/{v:?}");
        persistent_subscribe(&hub, &dev, v, &format!("{base}/#"), "2");
        // mosquitto_pub exits only after PUBACK (QoS 1) / PUBCOMP (QoS 2): acknowledged.
        for i in 0..5 {
            publish_anon(
                &hub,
                v,
                &format!("{base}/q1"),
                &format!("m{i}"),
                &["-q", "1"],
            );
        }
        publish_anon(&hub, v, &format!("{base}/q2"), "exactly-once", &["-q", "2"]);
        hub.kill9();
        hub.start_again();
        let msgs = resume_and_collect(&hub, &dev, v, &format!("{base}/#"), "2", 6);
        let mut want: Vec<(String, String)> = (0..5)
            .map(|i| (format!("{base}/q1"), format!("m{i}")))
            .collect();
        want.push((format!("{base}/q2"), "exactly-once".to_owned()));
        assert_eq!(msgs, want, "{v:?}: acknowledged messages after SIGKILL");
    }
}

#[test]
fn retained_messages_survive_sigkill_and_deletions_stay_deleted() {
    let mut hub = hub();
    let dev = Via::Device(hub.add_device("lamp"));
    for (qos, topic) in [("1", "devices/lamp/q1"), ("2", "devices/lamp/q2")] {
        mosquitto_pub(
            &hub,
            &dev,
            Mqtt::V5,
            None,
            &["-t", topic, "-m", "on", "-q", qos, "-r"],
        )
        .assert_ok();
    }
    mosquitto_pub(
        &hub,
        &dev,
        Mqtt::V5,
        None,
        &["-t", "devices/lamp/gone", "-m", "x", "-q", "1", "-r"],
    )
    .assert_ok();
    mosquitto_pub(
        &hub,
        &dev,
        Mqtt::V5,
        None,
        &["-t", "devices/lamp/gone", "-m", "", "-q", "1", "-r"],
    )
    .assert_ok();
    hub.kill9();
    hub.start_again();
    let mut sub = Sub::start(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some(&unique("r")),
        &["-t", "devices/lamp/#", "-q", "1"],
    );
    let mut got = vec![sub.expect_message(), sub.expect_message()];
    got.sort();
    assert_eq!(
        got,
        vec![
            ("devices/lamp/q1".to_owned(), "on".to_owned()),
            ("devices/lamp/q2".to_owned(), "on".to_owned())
        ],
        "retained messages after SIGKILL\n{}",
        sub.show()
    );
    sub.expect_no_message(QUIET);
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT 5: Session Present, subscriptions without re-subscribing, in-flight state

/// A received PUBLISH (MQTT 5.0 3.3).
#[derive(Debug)]
struct Publish {
    dup: bool,
    qos: u8,
    topic: String,
    packet_id: Option<u16>,
    payload: Vec<u8>,
}

fn expect_publish(w: &mut Wire) -> Publish {
    let p = w.expect_packet(3);
    let qos = (p.first >> 1) & 3;
    let n = usize::from(u16::from_be_bytes([p.body[0], p.body[1]]));
    let topic = String::from_utf8(p.body[2..2 + n].to_vec()).expect("utf-8 topic");
    let mut at = 2 + n;
    let packet_id = (qos > 0).then(|| {
        at += 2;
        u16::from_be_bytes([p.body[at - 2], p.body[at - 1]])
    });
    let (_, used) = Props::parse(&p.body[at..]);
    Publish {
        dup: p.first & 0x08 != 0,
        qos,
        topic,
        packet_id,
        payload: p.body[at + used..].to_vec(),
    }
}

/// Connects a v5 session; asserts Session Present.
fn session(hub: &Hub, id: &str, clean: bool, present: bool) -> Wire {
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5_session(id, clean, EXPIRY));
    let (sp, _) = w.expect_connack_v5(0);
    assert_eq!(sp, present, "{id}: Session Present (clean start {clean})");
    w
}

fn subscribe(w: &mut Wire, filter: &str, qos: u8) {
    let mut body = hex("00 01 00"); // packet id 1, no properties
    body.extend(mstr(filter.as_bytes()));
    body.push(qos);
    w.send(&packet(0x82, &body));
    let suback = w.expect_packet(9);
    assert_eq!(
        suback.body.last(),
        Some(&qos),
        "SUBACK {}",
        to_hex(&suback.body)
    );
}

fn ack(w: &mut Wire, kind: u8, id: u16) {
    let first = (kind << 4) | if kind == 6 { 0x02 } else { 0 };
    w.send(&packet(first, &id.to_be_bytes()));
}

#[test]
fn subscriptions_survive_sigkill_without_resubscribing() {
    let mut hub = hub();
    let id = unique("subs");
    let mut w = session(&hub, &id, true, false);
    subscribe(&mut w, "durable/subs/#", 1);
    w.shutdown();
    hub.kill9();
    hub.start_again();
    let mut w = session(&hub, &id, false, true);
    publish_anon(&hub, Mqtt::V5, "durable/subs/x", "after-kill", &["-q", "1"]);
    let p = expect_publish(&mut w);
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("durable/subs/x", b"after-kill".as_slice())
    );
}

#[test]
fn unacknowledged_delivery_is_resent_after_restart_and_sigkill() {
    let mut hub = hub();
    let id = unique("inflight");
    let mut w = session(&hub, &id, true, false);
    subscribe(&mut w, "durable/inflight/#", 1);
    publish_anon(
        &hub,
        Mqtt::V5,
        "durable/inflight/a",
        "hold-me",
        &["-q", "1"],
    );
    let first = expect_publish(&mut w);
    assert!(!first.dup && first.qos == 1, "{first:?}");
    w.shutdown(); // no PUBACK

    // Graceful restart: the in-flight message is resent with DUP=1 and its packet id
    // (MQTT-4.4.0-1, MQTT-3.3.1-1).
    hub.restart();
    let mut w = session(&hub, &id, false, true);
    let again = expect_publish(&mut w);
    assert_eq!(again.payload, b"hold-me");
    assert!(
        again.dup,
        "redelivery after restart without DUP=1: {again:?}"
    );
    assert_eq!(
        again.packet_id, first.packet_id,
        "redelivery with another packet id"
    );
    w.shutdown(); // still no PUBACK

    // SIGKILL: the message was acknowledged to its publisher, so it must come again. (Whether
    // the hub had durably noted the delivery attempt is up to its group commit, so DUP is not
    // checked here.)
    hub.kill9();
    hub.start_again();
    let mut w = session(&hub, &id, false, true);
    let third = expect_publish(&mut w);
    assert_eq!(third.payload, b"hold-me", "{third:?}");
    ack(&mut w, 4, third.packet_id.expect("qos 1"));
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00")); // nothing else was queued
    w.shutdown();

    // Acknowledged now: not delivered again after another restart.
    hub.restart();
    let mut w = session(&hub, &id, false, true);
    w.send(&hex("c0 00"));
    w.expect(&hex("d0 00"));
}

#[test]
fn qos2_publisher_state_survives_sigkill_between_pubrec_and_pubrel() {
    let mut hub = hub();
    // An offline persistent subscriber.
    let sub_id = unique("q2sub");
    let mut s = session(&hub, &sub_id, true, false);
    subscribe(&mut s, "durable/q2/#", 2);
    s.shutdown();
    // The publisher gets PUBREC: the message is now the hub's responsibility (issue 2 point 5).
    let pub_id = unique("q2pub");
    let mut p = session(&hub, &pub_id, true, false);
    p.send(&pkt_publish_qos2("durable/q2/x", 42, b"once"));
    let rec = p.expect_packet(5);
    assert_eq!(&rec.body[..2], &[0, 42], "PUBREC packet id");
    assert!(
        rec.body.get(2).is_none_or(|r| *r < 0x80),
        "PUBREC reason {}",
        to_hex(&rec.body)
    );
    p.shutdown();
    hub.kill9();
    hub.start_again();
    // MQTT-4.3.3: the publisher resumes and releases; the hub knows the packet id.
    let mut p = session(&hub, &pub_id, false, true);
    ack(&mut p, 6, 42);
    let comp = p.expect_packet(7);
    assert_eq!(&comp.body[..2], &[0, 42], "PUBCOMP packet id");
    assert!(
        comp.body.get(2).is_none_or(|r| *r == 0),
        "PUBCOMP reason {} (0x92 = the hub forgot the PUBREC'd message)",
        to_hex(&comp.body)
    );
    // The subscriber gets it exactly once.
    let mut s = session(&hub, &sub_id, false, true);
    let m = expect_publish(&mut s);
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        ("durable/q2/x", b"once".as_slice(), 2)
    );
    let id = m.packet_id.expect("qos 2");
    ack(&mut s, 5, id);
    let rel = s.expect_packet(6);
    assert_eq!(&rel.body[..2], &id.to_be_bytes());
    ack(&mut s, 7, id);
    s.send(&hex("c0 00"));
    s.expect(&hex("d0 00"));
}

/// PUBLISH QoS 2 (MQTT 5.0 3.3) with no properties.
fn pkt_publish_qos2(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = mstr(topic.as_bytes());
    body.extend(id.to_be_bytes());
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x34, &body)
}

#[test]
fn session_queue_is_bounded_and_keeps_the_oldest() {
    // Issue 2 point 5 and README "Bounded queues": at most max-queued-messages per session
    // beyond its in-flight window; when full, new messages are dropped and counted in
    // moat_messages_dropped_total{reason="queue_full"}; the oldest are kept.
    let hub = Hub::start(
        HubOptions::new()
            .plaintext_anonymous()
            .config("[limits]\nmax-queued-messages = 3\n"),
    );
    let dev = Via::Device(hub.add_device("backlog"));
    persistent_subscribe(&hub, &dev, Mqtt::V5, "devices/backlog/#", "1");
    for i in 0..10 {
        // Every publish is still acknowledged: the publisher is not punished for a full queue.
        publish_anon(
            &hub,
            Mqtt::V5,
            "devices/backlog/m",
            &format!("m{i}"),
            &["-q", "1"],
        );
    }
    let mut sub = Sub::start(
        &hub,
        &dev,
        Mqtt::V5,
        None,
        &[
            "-c",
            "-x",
            "3600",
            "-q",
            "1",
            "-t",
            "devices/backlog/#",
            "-W",
            "3",
        ],
    );
    let (msgs, _) = sub.messages_until_exit();
    let payloads: Vec<&str> = msgs.iter().map(|(_, p)| p.as_str()).collect();
    let kept = payloads.len();
    assert!(
        (3..10).contains(&kept),
        "{kept} of 10 queued messages delivered with max-queued-messages = 3\n{}",
        sub.show()
    );
    let want: Vec<String> = (0..kept).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want, "the oldest messages must be the ones kept");
    let dropped = hub.metric("moat_messages_dropped_total{reason=\"queue_full\"}");
    assert_eq!(
        dropped,
        Some((10 - kept) as f64),
        "queue_full drops in /metrics"
    );
}

#[test]
fn expiry_intervals_still_apply_after_a_restart() {
    // A restored session, or a restored queued message, keeps its Session Expiry Interval
    // (3.1.2.11.2) / Message Expiry Interval (3.3.2.3.3): the restart must not make it immortal.
    let mut hub = hub();
    let gone = unique("shortlived");
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5_session(&gone, true, 2));
    w.expect_connack_v5(0);
    subscribe(&mut w, "durable/expiry/#", 1);
    w.send(&hex("e0 00")); // DISCONNECT: the 2 s session expiry starts now
    w.expect_closed();

    let keeper = unique("keeper");
    let mut k = session(&hub, &keeper, true, false);
    subscribe(&mut k, "durable/expiry/#", 1);
    k.shutdown();
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &[
            "-t",
            "durable/expiry/short",
            "-m",
            "short",
            "-q",
            "1",
            "-D",
            "publish",
            "message-expiry-interval",
            "2",
        ],
    )
    .assert_ok();
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &[
            "-t",
            "durable/expiry/long",
            "-m",
            "long",
            "-q",
            "1",
            "-D",
            "publish",
            "message-expiry-interval",
            "600",
        ],
    )
    .assert_ok();
    hub.restart();
    // The passage of time is what is under test here, not a synchronisation.
    std::thread::sleep(Duration::from_millis(3500));
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5_session(&gone, false, 2));
    let (present, _) = w.expect_connack_v5(0);
    assert!(
        !present,
        "a session with a 2 s expiry was still present 3.5 s after disconnect and a restart"
    );
    let mut k = session(&hub, &keeper, false, true);
    let p = expect_publish(&mut k);
    assert_eq!(
        p.payload, b"long",
        "the 2 s message must have expired across the restart (MQTT-3.3.2-5)"
    );
    ack(&mut k, 4, p.packet_id.expect("qos 1"));
    k.send(&hex("c0 00"));
    k.expect(&hex("d0 00"));
}
