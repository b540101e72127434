//! Detection and the response ladder (issue 4) end to end: paho-mqtt devices, the `moat` CLI
//! as the operator, the hub's metrics and audit trail. `tests/interop/defence.py` does the
//! protocol work.

mod support;

use std::process::Command;

use support::*;

/// Short time boxes, so that an automatic release happens within the test.
const SHORT_BOXES: &str = "
[detect.responses.time_box]
quarantine_secs = 2
quiet_secs = 1
";

#[test]
fn honey_topic_alerts_quarantine_live_sessions_and_release_by_operator_and_by_time_box() {
    let hub = Hub::start(HubOptions::new().config(SHORT_BOXES));
    for id in ["watcher", "nosy", "h1", "h2"] {
        hub.add_device(id);
    }
    let data_dir = hub.data_dir();
    run_script(
        &hub,
        "defence.py",
        &[
            "--moat",
            moat_bin(),
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
        ],
    );
    // The sinks besides MQTT: counters and the audit trail.
    let alerts = hub.metric("moat_alerts_total{detector=\"honey_topic\"}");
    assert!(
        alerts.is_some_and(|n| n >= 2.0),
        "honey_topic alerts: {alerts:?}"
    );
    let executed = hub.metric("moat_responses_executed_total");
    assert!(
        executed.is_some_and(|n| n >= 2.0),
        "responses executed: {executed:?}"
    );
    let released = hub.metric("moat_responses_released_total");
    assert!(
        released.is_some_and(|n| n >= 2.0),
        "responses released: {released:?}"
    );
    let trail = cli_ok(&hub, &["audit", "export"]);
    for action in [
        "\"alert.raised\"",
        "\"response.executed\"",
        "\"alert.release\"",
        "\"response.released\"",
    ] {
        assert!(trail.contains(action), "no {action} in the audit trail");
    }
}

/// A device that passed mutual TLS and then sends one packet the protocol forbids is reported
/// at once (it is buggy or compromised): a low `malformed_stream` alert, alert only, naming
/// the fault. One packet; the per-minute stream rule would need three.
#[test]
fn one_bad_packet_from_an_authenticated_device_is_reported_at_once() {
    let hub = Hub::start(HubOptions::new());
    let creds = hub.add_device("quirky-1");
    // Python's ssl, so the test needs no TLS client crate: CONNECT, CONNACK, then a packet of
    // the reserved type 0, and read until the hub closes the connection.
    const SEND: &str = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        ctx.check_hostname = False\n\
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])\n\
        host, port = sys.argv[1].rsplit(':', 1)\n\
        s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))\n\
        s.sendall(bytes.fromhex(sys.argv[5]))\n\
        assert s.recv(1)[0] >> 4 == 2, 'no CONNACK'\n\
        s.sendall(bytes([0, 0]))\n\
        try:\n\
        \x20   while s.recv(4096): pass\n\
        except (ssl.SSLError, OSError): pass\n";
    let connect: String = connect_v5("quirky-1", 60, &[])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = run_with_deadline(
        Command::new("python3")
            .args(["-B", "-c", SEND, &hub.tls_addr().to_string()])
            .arg(&creds.ca)
            .arg(&creds.cert)
            .arg(&creds.key)
            .arg(&connect),
        EVENT_DEADLINE,
    );
    assert!(out.status.success(), "{}", show_output(&out));
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    let line = loop {
        let out = cli_ok(&hub, &["alerts", "list", "--json"]);
        if let Some(line) = out.lines().find(|l| l.contains("malformed_stream")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no malformed_stream alert after one bad packet"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(line.contains("\"severity\":\"low\""), "{line}");
    assert!(line.contains("\"response\":\"alert\""), "{line}");
    assert!(line.contains("quirky-1"), "{line}");
    assert!(line.contains("protocol_violation"), "{line}");
}

#[test]
fn dry_run_records_the_intended_response_and_executes_nothing() {
    let hub = Hub::start(HubOptions::new().config("[detect]\nmode = \"dry_run\"\n"));
    let creds = hub.add_device("d1");
    // Outside d1's policy (denied), and a honey topic.
    mosquitto_pub(
        &hub,
        &Via::Device(creds.clone()),
        Mqtt::V5,
        None,
        &["-t", "_moat/honey/x", "-m", "1", "-q", "1"],
    );
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    let line = loop {
        let out = cli_ok(&hub, &["alerts", "list", "--json"]);
        if let Some(line) = out.lines().find(|l| l.contains("honey_topic")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no honey_topic alert in dry-run mode"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(line.contains("\"response\":\"alert\""), "{line}");
    assert!(line.contains("\"intended\":\"quarantine\""), "{line}");
    // Nothing was executed: d1 still publishes into its own namespace.
    mosquitto_pub(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        None,
        &["-t", "devices/d1/temp", "-m", "2", "-q", "1"],
    )
    .assert_ok();
}

#[test]
fn alerts_reach_a_signed_https_webhook() {
    use std::io::BufRead;
    let dir = TempDir::new("webhook");
    let d = dir.path();
    // A CA and a server certificate for the receiver, like any internal HTTPS service.
    tool_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=webhook test CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        d,
    );
    tool_ok(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ],
        d,
    );
    std::fs::write(
        d.join("srv.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    tool_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "srv.ext",
        ],
        d,
    );
    std::fs::write(d.join("secret"), "a-webhook-secret-of-32-bytes-xyz\n").expect("secret");

    let mut receiver = Command::new("python3")
        .arg("-B")
        .arg(interop_dir().join("webhook_receiver.py"))
        .args([
            "--cert",
            "srv.pem",
            "--key",
            "srv.key",
            "--secret-file",
            "secret",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = receiver.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(EVENT_DEADLINE)
        .expect("the receiver's port");
    let port: u16 = first
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {first:?}"));

    let hub = Hub::start(HubOptions::new().config(&format!(
        "[alert-webhook]\nurl = \"https://localhost:{port}/hooks/moat\"\nsecret-file = \"{}\"\nca-file = \"{}\"\n",
        d.join("secret").display(),
        d.join("ca.pem").display()
    )));
    let creds = hub.add_device("d1");
    mosquitto_pub(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        None,
        &["-t", "_moat/honey/x", "-m", "1", "-q", "1"],
    );
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the alert at the webhook");
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(line.contains("\"path\": \"/hooks/moat\""), "{line}");
    assert!(
        line.contains("\"verified\": true"),
        "signature did not verify: {line}"
    );
    assert!(
        line.contains("\"tampered_verified\": false"),
        "a tampered body verified: {line}"
    );
    assert!(line.contains("\"detector\": \"honey_topic\""), "{line}");
    assert!(line.contains("\"device\": \"d1\""), "{line}");
    // The hub counts the delivery once the receiver has answered.
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let delivered = hub.metric("moat_alert_webhook_total{result=\"delivered\"}");
        if delivered.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery not counted: {delivered:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn every_rung_of_the_ladder_acts_on_live_sessions_and_is_released_by_itself() {
    for rung in [
        "throttle",
        "read_only",
        "disconnect",
        "ban_address",
        "revoke_certificate",
    ] {
        let config = format!(
            "[detect.responses.time_box]\n{rung}_secs = 2\nquiet_secs = 1\n\
             [detect.responses.rungs.honey_topic]\n\
             low = \"{rung}\"\nmedium = \"{rung}\"\nhigh = \"{rung}\"\ncritical = \"{rung}\"\n"
        );
        let hub = Hub::start(HubOptions::new().config(&config));
        hub.add_device("d1");
        let data_dir = hub.data_dir();
        run_script(
            &hub,
            "defence_rungs.py",
            &[
                "--moat",
                moat_bin(),
                "--data-dir",
                data_dir.to_str().expect("utf-8"),
                "--rung",
                rung,
            ],
        );
    }
}

/// The edge reports what happens before CONNECT: a malformed first packet is a protocol
/// error (malformed stream), and connections held open without finishing their handshake
/// are a slow-loris seen while they are still open, long before their deadline.
#[test]
fn malformed_first_packets_and_unfinished_connections_reach_the_detectors() {
    let hub = Hub::start(
        HubOptions::new()
            .plaintext_anonymous()
            .config("[limits]\ntls-handshake-timeout-secs = 120\n"),
    );
    // Ten connections whose first packet is of the reserved type 0 (no identity: counted
    // against the address, 10 a minute).
    for _ in 0..10 {
        let mut w = Wire::connect(hub.plain_addr());
        w.send(&[0x00, 0x00]);
        w.expect_closed();
    }
    eventually(EVENT_DEADLINE, "a malformed_stream alert", || {
        hub.metric("moat_alerts_total{detector=\"malformed_stream\"}")
            .filter(|n| *n >= 1.0)
    });
    let trail = cli_ok(&hub, &["audit", "export"]);
    assert!(
        trail.contains("security.malformed_before_connect"),
        "the malformed first packets are on the record"
    );
    assert_eq!(
        hub.metric("moat_alerts_total{detector=\"slow_loris\"}"),
        Some(0.0),
        "connections that ended (malformed) are not pending"
    );
    // Ten TLS connections opened and left silent.
    let held: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(hub.tls_addr()).expect("connect"))
        .collect();
    eventually(EVENT_DEADLINE, "a slow_loris alert", || {
        hub.metric("moat_alerts_total{detector=\"slow_loris\"}")
            .filter(|n| *n >= 1.0)
    });
    // Seen while they are all still open: no handshake has reached its deadline.
    assert_eq!(
        hub.metric("moat_handshake_failures_total{reason=\"tls_timeout\"}")
            .unwrap_or(0.0),
        0.0
    );
    drop(held);
}
