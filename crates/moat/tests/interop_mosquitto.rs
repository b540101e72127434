//! The hub with Debian's mosquitto_pub / mosquitto_sub (MQTT 3.1.1 and 5.0) over mutual TLS:
//! delivery at every QoS in both directions, retained messages, and the identity rule of
//! issue 2 point 4 (client id = device id, own namespace only, client certificate required and
//! issued by Moat's CA).
//!
//! Until the policy engine exists a device can only talk to itself, and a second connection
//! with its client id would take its session over, so the other end of each exchange is an
//! anonymous client on the dangerous plaintext listener.
//!
//! The mosquitto client invocations used here were checked by hand against Mosquitto 2.0.11 set
//! up like Moat (tests/interop/reference_mosquitto.py --serve): `-d` prints
//! `Subscribed (mid: 1): <codes>` after the SUBACK, `received PUBACK (Mid: 1, RC:<code>)`, and
//! `received CONNACK (<code>)`.

mod support;

use std::time::Duration;
use support::*;

const QUIET: Duration = Duration::from_secs(1);

fn hub() -> Hub {
    Hub::start(HubOptions::new().plaintext_anonymous())
}

fn pub_ok(hub: &Hub, via: &Via, v: Mqtt, topic: &str, payload: &str, extra: &[&str]) {
    let mut args = vec!["-t", topic, "-m", payload];
    args.extend_from_slice(extra);
    mosquitto_pub(hub, via, v, None, &args).assert_ok();
}

#[test]
fn device_subscribes_over_mutual_tls_at_every_qos() {
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-1"));
    for v in [Mqtt::V311, Mqtt::V5] {
        let mut sub = Sub::start(
            &hub,
            &dev,
            v,
            None,
            &["-t", "devices/sensor-1/#", "-q", "2"],
        );
        assert_eq!(sub.granted, vec![2], "{v:?}: SUBACK\n{}", sub.show());
        for qos in ["0", "1", "2"] {
            let topic = format!("devices/sensor-1/{v:?}/q{qos}");
            let payload = format!("hello at qos {qos}");
            pub_ok(&hub, &Via::Anonymous, v, &topic, &payload, &["-q", qos]);
            sub.expect(&topic, &payload);
        }
        sub.expect_no_message(QUIET);
    }
}

#[test]
fn device_publishes_over_mutual_tls_at_every_qos() {
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-2"));
    for v in [Mqtt::V311, Mqtt::V5] {
        let mut sub = Sub::start(
            &hub,
            &Via::Anonymous,
            v,
            Some(&unique("obs")),
            &["-t", "devices/sensor-2/#", "-q", "2"],
        );
        for qos in ["0", "1", "2"] {
            let topic = format!("devices/sensor-2/{v:?}/q{qos}");
            pub_ok(&hub, &dev, v, &topic, "reading", &["-q", qos]);
            sub.expect(&topic, "reading");
        }
    }
}

#[test]
fn server_certificate_valid_for_localhost_and_127_0_0_1() {
    let hub = hub();
    let creds = hub.add_device("sensor-3");
    // mosquitto_args uses -h localhost; repeat with the IP address (both are in the SAN).
    let dev = Via::Device(creds.clone());
    pub_ok(
        &hub,
        &dev,
        Mqtt::V5,
        "devices/sensor-3/x",
        "by name",
        &["-q", "1"],
    );
    let out = run_with_deadline(
        std::process::Command::new("mosquitto_pub")
            .args(["-d", "-V", "mqttv5", "-h", "127.0.0.1", "-p"])
            .arg(hub.tls_addr().port().to_string())
            .arg("--cafile")
            .arg(&creds.ca)
            .arg("--cert")
            .arg(&creds.cert)
            .arg("--key")
            .arg(&creds.key)
            .args([
                "-i",
                "sensor-3",
                "-t",
                "devices/sensor-3/x",
                "-m",
                "by ip",
                "-q",
                "1",
            ]),
        EVENT_DEADLINE,
    );
    assert!(out.status.success(), "{}", show_output(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 0x00 Success or 0x10 No matching subscribers (MQTT 5.0 3.4.2.1).
    assert!(
        stdout.contains("received PUBACK (Mid: 1, RC:0)")
            || stdout.contains("received PUBACK (Mid: 1, RC:16)"),
        "{}",
        show_output(&out)
    );
}

#[test]
fn retained_message_from_a_device_reaches_later_subscribers() {
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-4"));
    for v in [Mqtt::V311, Mqtt::V5] {
        let topic = format!("devices/sensor-4/{v:?}/state");
        pub_ok(&hub, &dev, v, &topic, "on", &["-q", "1", "-r"]);
        let mut sub = Sub::start(
            &hub,
            &Via::Anonymous,
            v,
            Some(&unique("late")),
            &["-t", &topic, "-q", "1", "-C", "1", "-W", "10"],
        );
        let (msgs, status) = sub.messages_until_exit();
        assert!(status.success(), "{}", sub.show());
        assert_eq!(
            msgs,
            vec![(topic.clone(), "on".to_owned())],
            "{}",
            sub.show()
        );
        // The device itself gets it too (its own namespace).
        let mut own = Sub::start(
            &hub,
            &dev,
            v,
            None,
            &["-t", &topic, "-q", "1", "-C", "1", "-W", "10"],
        );
        let (msgs, _) = own.messages_until_exit();
        assert_eq!(
            msgs,
            vec![(topic.clone(), "on".to_owned())],
            "{}",
            own.show()
        );
        // An empty retained message (-m "") deletes it again.
        pub_ok(&hub, &dev, v, &topic, "", &["-q", "1", "-r"]);
    }
}

#[test]
fn client_id_other_than_the_device_id_is_refused() {
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-5"));
    hub.add_device("sensor-6");
    for (v, code) in [(Mqtt::V311, "CONNACK (5)"), (Mqtt::V5, "CONNACK (135)")] {
        for id in ["sensor-6", "sensor-5x", "SENSOR-5"] {
            let out = mosquitto_pub(
                &hub,
                &dev,
                v,
                Some(id),
                &["-t", "devices/sensor-5/x", "-m", "x", "-q", "1"],
            );
            assert!(
                !out.status.success(),
                "{v:?} client id {id:?} with sensor-5's certificate accepted\n{}",
                out.show()
            );
            assert!(
                out.stdout.contains(&format!("received {code}")),
                "{v:?} client id {id:?}: expected {code} (not authorized)\n{}",
                out.show()
            );
        }
    }
}

#[test]
fn foreign_namespace_is_denied() {
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-7"));
    let other = Via::Device(hub.add_device("sensor-8"));
    let mut watcher = Sub::start(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some(&unique("w")),
        &["-t", "devices/sensor-8/#", "-q", "1"],
    );
    for (v, denied) in [(Mqtt::V311, 0x80u8), (Mqtt::V5, 0x87u8)] {
        for filter in [
            "devices/sensor-8/#",
            "devices/+/temp",
            "#",
            "devices/sensor-7x/#",
        ] {
            let sub = Sub::start(&hub, &dev, v, None, &["-t", filter, "-q", "1"]);
            assert_eq!(
                sub.granted,
                vec![denied],
                "{v:?} filter {filter:?}: SUBACK\n{}",
                sub.show()
            );
        }
        // Allowed and denied in one SUBSCRIBE: reason codes per filter.
        let sub = Sub::start(
            &hub,
            &dev,
            v,
            None,
            &[
                "-t",
                "devices/sensor-7/ok",
                "-t",
                "devices/sensor-8/no",
                "-q",
                "1",
            ],
        );
        assert_eq!(
            sub.granted,
            vec![1, denied],
            "{v:?}: mixed SUBSCRIBE\n{}",
            sub.show()
        );
        drop(sub);

        let out = mosquitto_pub(
            &hub,
            &dev,
            v,
            None,
            &["-t", "devices/sensor-8/x", "-m", "intrusion-q1", "-q", "1"],
        );
        if v == Mqtt::V5 {
            assert!(
                out.stdout.contains("received PUBACK (Mid: 1, RC:135)"),
                "v5 QoS 1 publish into a foreign namespace: expected PUBACK 0x87\n{}",
                out.show()
            );
        }
        let out = mosquitto_pub(
            &hub,
            &dev,
            v,
            None,
            &["-t", "devices/sensor-8/x", "-m", "intrusion-q0"],
        );
        assert!(
            out.status.success(),
            "denied QoS 0 publishes are dropped silently\n{}",
            out.show()
        );
    }
    // A legitimate message after the denied ones arrives first and alone.
    pub_ok(
        &hub,
        &other,
        Mqtt::V5,
        "devices/sensor-8/marker",
        "legit",
        &["-q", "1"],
    );
    watcher.expect("devices/sensor-8/marker", "legit");
    watcher.expect_no_message(QUIET);
}

#[test]
fn no_client_certificate_is_refused_at_tls() {
    let hub = hub();
    let creds = hub.add_device("sensor-9");
    let mut watcher = Sub::start(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some(&unique("w")),
        &["-t", "devices/sensor-9/#", "-q", "1"],
    );
    for v in [Mqtt::V311, Mqtt::V5] {
        let out = mosquitto_pub(
            &hub,
            &Via::NoClientCert {
                ca: creds.ca.clone(),
            },
            v,
            Some("sensor-9"),
            &["-t", "devices/sensor-9/x", "-m", "nocert", "-q", "1"],
        );
        assert!(
            !out.status.success(),
            "{v:?}: connection without a client certificate accepted\n{}",
            out.show()
        );
        assert!(
            !out.stdout.contains("received CONNACK"),
            "{v:?}: got a CONNACK without a client certificate\n{}",
            out.show()
        );
    }
    pub_ok(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        "devices/sensor-9/marker",
        "legit",
        &["-q", "1"],
    );
    watcher.expect("devices/sensor-9/marker", "legit");
    watcher.expect_no_message(QUIET);
}

#[test]
fn certificate_from_another_ca_is_refused_at_tls() {
    let hub = hub();
    let creds = hub.add_device("sensor-10");
    let dir = hub.scratch("foreign-ca");
    // Same CN as a real device: only the issuer differs.
    let (cert, key) = foreign_ca_device(&dir, "sensor-10");
    let mut watcher = Sub::start(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some(&unique("w")),
        &["-t", "devices/sensor-10/#", "-q", "1"],
    );
    for v in [Mqtt::V311, Mqtt::V5] {
        let out = mosquitto_pub(
            &hub,
            &Via::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: creds.ca.clone(),
            },
            v,
            Some("sensor-10"),
            &["-t", "devices/sensor-10/x", "-m", "forged", "-q", "1"],
        );
        assert!(
            !out.status.success(),
            "{v:?}: certificate from a foreign CA accepted\n{}",
            out.show()
        );
        assert!(
            !out.stdout.contains("received CONNACK"),
            "{v:?}: got a CONNACK with a foreign certificate\n{}",
            out.show()
        );
    }
    pub_ok(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        "devices/sensor-10/marker",
        "legit",
        &["-q", "1"],
    );
    watcher.expect("devices/sensor-10/marker", "legit");
    watcher.expect_no_message(QUIET);
}

#[test]
fn plaintext_listener_is_off_unless_asked_for() {
    let hub = Hub::start(HubOptions::new());
    assert_eq!(hub.addrs.mqtt_plaintext, None);
    assert_eq!(hub.addrs.mqtt_wss, None);
}

#[test]
fn silent_tls_clients_do_not_block_handshakes() {
    // Issue 2 point 7: handshakes run off the accept loop. Connections that open TCP and never
    // send a ClientHello must not delay a real client.
    let hub = hub();
    let dev = Via::Device(hub.add_device("sensor-11"));
    let silent: Vec<Wire> = (0..50).map(|_| Wire::connect(hub.tls_addr())).collect();
    let started = std::time::Instant::now();
    pub_ok(
        &hub,
        &dev,
        Mqtt::V5,
        "devices/sensor-11/x",
        "through",
        &["-q", "1"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a real client took {:?} with 50 silent TLS connections open",
        started.elapsed()
    );
    drop(silent);
}

#[test]
fn message_counters_in_metrics_match_what_the_clients_sent_and_received() {
    // Issue 2 point 8: moat_messages_in_total counts the messages routed, and
    // moat_messages_out_total the PUBLISH packets sent. Both are added up per batch of
    // packets, before the subscriber is woken and before the write, so they are exact as
    // soon as the subscriber has its messages.
    let hub = hub();
    let dev = Via::Device(hub.add_device("counted"));
    let mut sub = Sub::start(
        &hub,
        &dev,
        Mqtt::V5,
        None,
        &["-t", "devices/counted/#", "-q", "1"],
    );
    for i in 0..5 {
        let topic = format!("devices/counted/m{i}");
        pub_ok(&hub, &Via::Anonymous, Mqtt::V5, &topic, "x", &["-q", "1"]);
        sub.expect(&topic, "x");
    }
    // One more that nobody is subscribed to: routed, not sent. (QoS 1: its PUBACK leaves
    // after the batch is counted.)
    pub_ok(
        &hub,
        &Via::Anonymous,
        Mqtt::V311,
        "elsewhere/m",
        "x",
        &["-q", "1"],
    );
    assert_eq!(hub.metric("moat_messages_in_total"), Some(6.0), "routed");
    assert_eq!(hub.metric("moat_messages_out_total"), Some(5.0), "sent");
}
