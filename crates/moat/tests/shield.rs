//! The pre-authentication shield and the ban list (issue 4, point 1), against the real
//! `moat serve` with real sockets and real TLS: a slow-loris, a handshake flood, a
//! concurrent-connection cap, bans by address, network, device and client id (through the
//! `moat ban` CLI), and automatic bans after repeated authentication failures.
//!
//! Clients come from other loopback addresses (127.0.0.2, ...) by binding the client socket
//! before connecting: `mosquitto_pub -A`, or the small Python client below (raw MQTT over
//! Python's `ssl`, so that the tests can read exact CONNACK and DISCONNECT codes).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A raw client. Modes (all take HOST PORT SRC first; SRC is the local address to bind):
/// - `trickle`: TCP, then a TLS ClientHello one byte every 200 ms until the hub closes;
///   prints `closed after N bytes` (or `still open` after 60 s).
/// - `connect CA CERT KEY CLIENT_ID VERSION [hold]`: mutual TLS, CONNECT (VERSION 5 or 4),
///   prints `connack CODE` (decimal) or `failed ERROR`; with `hold`, then waits for the hub to
///   end the session and prints `disconnect REASON` or `closed`.
/// - `trickle-connect CA CERT KEY CLIENT_ID`: mutual TLS, then the CONNECT one byte every
///   200 ms until the hub closes; prints `closed after N bytes`.
/// - `flood CA N`: N TLS handshakes without a client certificate, 16 at a time; prints `done`.
/// - `probe N`: opens and closes N TCP connections at once (a port scan); prints `done`.
/// - `hold-tcp N`: opens N TCP connections and keeps them, then opens one more and prints
///   `extra closed` if the hub closes it within 5 s (it would otherwise wait for a ClientHello
///   for the whole handshake deadline), else `extra open`.
const CLIENT: &str = r#"
import socket, ssl, sys, time, concurrent.futures

host, port, src, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
args = sys.argv[5:]

def tcp():
    return socket.create_connection((host, port), timeout=10, source_address=(src, 0))

def tls(ca, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx.wrap_socket(tcp(), server_hostname="localhost")

def connect_packet(client_id, version):
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + bytes([version, 0x02, 0x00, 0x3c])
    if version == 5:
        var += b"\x00"
    body = var + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body

def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed")
        out += chunk
    return out

def read_packet(s):
    first = read_exact(s, 1)[0]
    length, shift = 0, 0
    while True:
        b = read_exact(s, 1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    return first, read_exact(s, length)

def trickle(s, data):
    s.settimeout(0.2)
    for i, b in enumerate(data):
        try:
            s.sendall(bytes([b]))
            if s.recv(1) == b"":
                return i + 1
        except socket.timeout:
            continue
        except (OSError, ssl.SSLError):
            return i + 1
    return None

def out(line):
    print(line, flush=True)

if mode == "trickle":
    hello = bytes([0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xFC, 0x03, 0x03]) + bytes(290)
    n = trickle(tcp(), hello)
    out("still open" if n is None else "closed after %d bytes" % n)
elif mode == "connect":
    ca, cert, key, cid, version = args[0], args[1], args[2], args[3], int(args[4])
    hold = len(args) > 5 and args[5] == "hold"
    try:
        s = tls(ca, cert, key)
        s.sendall(connect_packet(cid, version))
        first, body = read_packet(s)
    except Exception as e:
        out("failed %s" % e)
        sys.exit(0)
    out("connack %d" % body[1])
    if hold and body[1] == 0:
        s.settimeout(30)
        try:
            while True:
                first, body = read_packet(s)
                if first >> 4 == 14:
                    out("disconnect %d" % (body[0] if body else 0))
                    break
        except Exception:
            out("closed")
elif mode == "trickle-connect":
    ca, cert, key, cid = args
    s = tls(ca, cert, key)
    n = trickle(s, connect_packet(cid, 5) * 20)
    out("still open" if n is None else "closed after %d bytes" % n)
elif mode == "flood":
    ca, n = args[0], int(args[1])
    def attempt(_):
        try:
            s = tls(ca)
            s.recv(1)
        except Exception:
            pass
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(attempt, range(n)))
    out("done")
elif mode == "probe":
    for _ in range(int(args[0])):
        tcp().close()
    out("done")
elif mode == "hold-tcp":
    held = [tcp() for _ in range(int(args[0]))]
    extra = tcp()
    extra.settimeout(5)
    try:
        out("extra closed" if extra.recv(1) == b"" else "extra open")
    except socket.timeout:
        out("extra open")
    except OSError:
        out("extra closed")
"#;

/// A running raw client; its stdout lines arrive on a channel.
struct Client {
    child: Child,
    lines: Receiver<String>,
}

impl Client {
    fn start(hub: &Hub, src: &str, mode: &str, args: &[&str]) -> Client {
        let mut child = Command::new("python3")
            .args(["-B", "-c", CLIENT, "127.0.0.1"])
            .arg(hub.tls_addr().port().to_string())
            .args([src, mode])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Client { child, lines }
    }

    /// The next line, within `deadline`.
    fn line(&mut self, deadline: Duration) -> String {
        self.lines
            .recv_timeout(deadline)
            .unwrap_or_else(|e| panic!("the client printed nothing within {deadline:?}: {e}"))
    }

    /// Runs to completion; its only line.
    fn run(hub: &Hub, src: &str, mode: &str, args: &[&str], deadline: Duration) -> String {
        let mut c = Client::start(hub, src, mode, args);
        let line = c.line(deadline);
        let _ = c.child.wait();
        line
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CONNECT as `creds` from `src`; the client's line (`connack N` or `failed ...`).
fn connect(hub: &Hub, src: &str, creds: &DeviceCreds, client_id: &str, version: u8) -> String {
    Client::run(
        hub,
        src,
        "connect",
        &[
            creds.ca.to_str().expect("utf-8"),
            creds.cert.to_str().expect("utf-8"),
            creds.key.to_str().expect("utf-8"),
            client_id,
            &version.to_string(),
        ],
        EVENT_DEADLINE,
    )
}

/// mosquitto_pub from `src` (`-A`).
fn publish_from(hub: &Hub, src: &str, via: &Via, client_id: Option<&str>) -> PubOutcome {
    mosquitto_pub(
        hub,
        via,
        Mqtt::V5,
        client_id,
        &["-A", src, "-t", "shield/test", "-m", "1"],
    )
}

/// `moat ban list --json`: one JSON object per line.
fn bans(hub: &Hub) -> Vec<Value> {
    cli_ok(hub, &["ban", "list", "--json"])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

fn metric_at_least(hub: &Hub, sample: &str, min: f64) {
    eventually(EVENT_DEADLINE, &format!("{sample} >= {min}"), || {
        hub.metric(sample).filter(|v| *v >= min)
    });
}

fn ban_id(hub: &Hub, kind: &str, value: &str) -> Option<(String, Value)> {
    bans(hub)
        .into_iter()
        .find(|b| b["kind"] == kind && b["value"] == value)
        .map(|b| (b["id"].as_str().expect("id").to_owned(), b))
}

#[test]
fn slow_loris_handshake_and_connect_are_cut_at_their_deadlines_and_counted() {
    let hub = Hub::start(
        HubOptions::new()
            .config("[limits]\ntls-handshake-timeout-secs = 1\nconnect-timeout-secs = 1\n"),
    );
    let dev = hub.add_device("loris");
    // A ClientHello trickled byte by byte: each byte would reset a per-read timer, not the
    // handshake's total deadline.
    let hello = Client::run(&hub, "127.0.0.2", "trickle", &[], Duration::from_secs(90));
    assert!(hello.starts_with("closed after"), "{hello}");
    metric_at_least(
        &hub,
        "moat_handshake_failures_total{reason=\"tls_timeout\"}",
        1.0,
    );
    assert!(
        audit_lines(&hub, "auth.handshake_failed")
            .iter()
            .any(|l| l.contains("timed out") && l.contains("127.0.0.2")),
        "the slow handshake is on the record"
    );
    // The same after the handshake: a CONNECT trickled byte by byte.
    let connect = Client::run(
        &hub,
        "127.0.0.3",
        "trickle-connect",
        &[
            dev.ca.to_str().expect("utf-8"),
            dev.cert.to_str().expect("utf-8"),
            dev.key.to_str().expect("utf-8"),
            "loris",
        ],
        Duration::from_secs(90),
    );
    assert!(connect.starts_with("closed after"), "{connect}");
    metric_at_least(
        &hub,
        "moat_handshake_failures_total{reason=\"connect_timeout\"}",
        1.0,
    );
    assert!(
        audit_lines(&hub, "security.deadline_missed")
            .iter()
            .any(|l| l.contains("CONNECT") && l.contains("127.0.0.3")),
        "the slow CONNECT is on the record"
    );
    // Neither cost the patient client anything.
    publish_from(&hub, "127.0.0.1", &Via::Device(dev), None).assert_ok();
}

#[test]
fn handshake_flood_and_held_connections_from_one_address_are_refused_before_tls() {
    let hub = Hub::start(HubOptions::new().config(
        "[shield]\nmax-connection-rate-per-address = 1\nconnection-burst-per-address = 5\n\
         max-concurrent-per-address = 3\nipv4-network-prefix = 32\nauto-ban-failures = 100000\n",
    ));
    let dev = hub.add_device("steady");
    let ca = hub.ca_file();
    let flood = Client::run(
        &hub,
        "127.0.0.2",
        "flood",
        &[ca.to_str().expect("utf-8"), "100"],
        Duration::from_secs(120),
    );
    assert_eq!(flood, "done");
    metric_at_least(&hub, "moat_shield_refused_total{reason=\"rate\"}", 1.0);
    // A device at another address is untouched by the flood.
    publish_from(&hub, "127.0.0.1", &Via::Device(dev.clone()), None).assert_ok();

    // Three connections held open from one address; the fourth is closed at accept.
    let held = Client::run(
        &hub,
        "127.0.0.7",
        "hold-tcp",
        &["3"],
        Duration::from_secs(30),
    );
    assert_eq!(held, "extra closed");
    metric_at_least(
        &hub,
        "moat_shield_refused_total{reason=\"concurrent\"}",
        1.0,
    );
    // Their slots are freed once they are gone (the client exited, closing them).
    eventually(EVENT_DEADLINE, "127.0.0.7 admitted again", || {
        publish_from(&hub, "127.0.0.7", &Via::Device(dev.clone()), None)
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn bans_by_address_network_device_and_client_id() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let dev1 = hub.add_device("dev1");
    let via1 = Via::Device(dev1.clone());
    publish_from(&hub, "127.0.0.2", &via1, None).assert_ok();

    // By address: refused before TLS, listed, audited, lifted.
    let added = cli_ok(
        &hub,
        &[
            "ban",
            "add",
            "--address",
            "127.0.0.2",
            "--reason",
            "scanner",
        ],
    );
    assert!(added.contains("banned address 127.0.0.2"), "{added}");
    let refused = publish_from(&hub, "127.0.0.2", &via1, None);
    assert!(!refused.status.success(), "{}", refused.show());
    metric_at_least(&hub, "moat_shield_refused_total{reason=\"banned\"}", 1.0);
    publish_from(&hub, "127.0.0.1", &via1, None).assert_ok();
    let (id, ban) = ban_id(&hub, "address", "127.0.0.2").expect("listed");
    assert_eq!(ban["reason"], "scanner");
    assert!(ban["expires_at_ms"].is_null(), "permanent: {ban}");
    assert!(
        ban["created_by"].is_string() && ban["created_at_ms"].is_u64(),
        "{ban}"
    );
    assert!(!audit_lines(&hub, "ban.add").is_empty());
    cli_ok(&hub, &["ban", "remove", &id]);
    publish_from(&hub, "127.0.0.2", &via1, None).assert_ok();
    assert!(ban_id(&hub, "address", "127.0.0.2").is_none());
    assert!(!audit_lines(&hub, "ban.remove").is_empty());

    // By network, with an expiry.
    cli_ok(
        &hub,
        &[
            "ban",
            "add",
            "--cidr",
            "127.0.0.8/29",
            "--for",
            "1h",
            "--reason",
            "range",
        ],
    );
    assert!(
        !publish_from(&hub, "127.0.0.9", &via1, None)
            .status
            .success()
    );
    let (id, ban) = ban_id(&hub, "cidr", "127.0.0.8/29").expect("listed");
    assert!(ban["expires_at_ms"].is_u64(), "{ban}");
    cli_ok(&hub, &["ban", "remove", &id]);
    publish_from(&hub, "127.0.0.9", &via1, None).assert_ok();
    // A network with host bits set is refused, not guessed.
    let bad = cli(
        &hub,
        &["ban", "add", "--cidr", "127.0.0.9/29", "--reason", "typo"],
    );
    assert!(!bad.status.success(), "{}", show_output(&bad));

    // By device: a live session is cut at once, and CONNECT is refused with Banned.
    let ca = dev1.ca.to_str().expect("utf-8").to_owned();
    let cert = dev1.cert.to_str().expect("utf-8").to_owned();
    let key = dev1.key.to_str().expect("utf-8").to_owned();
    let mut live = Client::start(
        &hub,
        "127.0.0.1",
        "connect",
        &[&ca, &cert, &key, "dev1", "5", "hold"],
    );
    assert_eq!(live.line(EVENT_DEADLINE), "connack 0");
    let added = cli_ok(
        &hub,
        &["ban", "add", "--device", "dev1", "--reason", "stolen"],
    );
    assert!(added.contains("1 live connection(s) closed"), "{added}");
    assert_eq!(
        live.line(EVENT_DEADLINE),
        "disconnect 135",
        "0x87 not authorized"
    );
    assert_eq!(
        connect(&hub, "127.0.0.1", &dev1, "dev1", 5),
        "connack 138",
        "0x8A Banned"
    );
    assert_eq!(
        connect(&hub, "127.0.0.1", &dev1, "dev1", 4),
        "connack 5",
        "3.1.1: not authorized"
    );
    let (id, _) = ban_id(&hub, "device", "dev1").expect("listed");
    cli_ok(&hub, &["ban", "remove", &id]);
    assert_eq!(connect(&hub, "127.0.0.1", &dev1, "dev1", 5), "connack 0");

    // By client id, whoever presents it (here an anonymous client on the plaintext listener).
    let mut victim = Wire::connect(hub.plain_addr());
    victim.send(&connect_v5("sensor-7", 60, &[]));
    victim.expect_connack_v5(0x00);
    let added = cli_ok(
        &hub,
        &[
            "ban",
            "add",
            "--client-id",
            "sensor-7",
            "--reason",
            "misbehaving",
        ],
    );
    assert!(added.contains("1 live connection(s) closed"), "{added}");
    victim.expect_disconnect(0x87);
    let mut again = Wire::connect(hub.plain_addr());
    again.send(&connect_v5("sensor-7", 60, &[]));
    again.expect_connack_v5(0x8A);
    let mut other = Wire::connect(hub.plain_addr());
    other.send(&connect_v5("sensor-8", 60, &[]));
    other.expect_connack_v5(0x00);

    // Bans survive a restart (they live in the registry).
    let mut hub = hub;
    hub.restart();
    let mut again = Wire::connect(hub.plain_addr());
    again.send(&connect_v5("sensor-7", 60, &[]));
    again.expect_connack_v5(0x8A);
}

#[test]
fn repeated_authentication_failures_earn_automatic_bans_by_address_and_by_identity() {
    let hub = Hub::start(
        HubOptions::new().config("[shield]\nauto-ban-failures = 3\nauto-ban-base-secs = 3600\n"),
    );
    let dev1 = hub.add_device("dev1");
    let dev2 = hub.add_device("dev2");
    let (cert, key) = foreign_ca_device(&hub.scratch("foreign"), "intruder");
    let foreign = Via::Files {
        cert,
        key,
        ca: hub.ca_file(),
    };
    // Bad client certificates from one address: banned after the third.
    for _ in 0..3 {
        let out = publish_from(&hub, "127.0.0.3", &foreign, Some("intruder"));
        assert!(!out.status.success(), "{}", out.show());
    }
    let (id, ban) = eventually(EVENT_DEADLINE, "an automatic address ban", || {
        ban_id(&hub, "address", "127.0.0.3")
    });
    assert_eq!(ban["created_by"], "auto", "{ban}");
    assert!(
        ban["reason"]
            .as_str()
            .is_some_and(|r| r.contains("3 authentication failures")),
        "the evidence is in the reason: {ban}"
    );
    assert!(ban["expires_at_ms"].is_u64(), "{ban}");
    // Now even a valid device is refused from there, before TLS; elsewhere it is not.
    let refused = publish_from(&hub, "127.0.0.3", &Via::Device(dev1.clone()), None);
    assert!(!refused.status.success(), "{}", refused.show());
    publish_from(&hub, "127.0.0.1", &Via::Device(dev1.clone()), None).assert_ok();
    metric_at_least(&hub, "moat_auto_bans_total", 1.0);
    assert!(
        audit_lines(&hub, "ban.auto")
            .iter()
            .any(|l| l.contains("127.0.0.3"))
    );
    // Removal restores access.
    cli_ok(&hub, &["ban", "remove", &id]);
    publish_from(&hub, "127.0.0.3", &Via::Device(dev1.clone()), None).assert_ok();

    // A proven identity claiming another client id, three times: the device is banned
    // (wherever it connects from next), and so is the address it tried from.
    for _ in 0..3 {
        assert_eq!(
            connect(&hub, "127.0.0.5", &dev2, "not-dev2", 5),
            "connack 135"
        );
    }
    let (_, ban) = eventually(EVENT_DEADLINE, "an automatic device ban", || {
        ban_id(&hub, "device", "dev2")
    });
    assert_eq!(ban["created_by"], "auto", "{ban}");
    assert_eq!(connect(&hub, "127.0.0.1", &dev2, "dev2", 5), "connack 138");
    assert!(ban_id(&hub, "address", "127.0.0.5").is_some());
    // Other devices are not affected.
    assert_eq!(connect(&hub, "127.0.0.1", &dev1, "dev1", 5), "connack 0");

    // A port scan (connections closed before any TLS) fails handshakes but authenticates
    // nothing, so it earns no ban.
    let tls_errors = "moat_handshake_failures_total{reason=\"tls_error\"}";
    let before = hub.metric(tls_errors).expect("metric");
    assert_eq!(
        Client::run(&hub, "127.0.0.6", "probe", &["5"], EVENT_DEADLINE),
        "done"
    );
    metric_at_least(&hub, tls_errors, before + 5.0);
    publish_from(&hub, "127.0.0.6", &Via::Device(dev1.clone()), None).assert_ok();
    assert!(ban_id(&hub, "address", "127.0.0.6").is_none());
}

#[test]
fn automatic_bans_expire_by_themselves() {
    let hub = Hub::start(
        HubOptions::new().config("[shield]\nauto-ban-failures = 2\nauto-ban-base-secs = 2\n"),
    );
    let dev1 = hub.add_device("dev1");
    let (cert, key) = foreign_ca_device(&hub.scratch("foreign"), "intruder");
    let foreign = Via::Files {
        cert,
        key,
        ca: hub.ca_file(),
    };
    for _ in 0..2 {
        assert!(
            !publish_from(&hub, "127.0.0.4", &foreign, Some("intruder"))
                .status
                .success()
        );
    }
    assert!(
        audit_lines(&hub, "ban.auto")
            .iter()
            .any(|l| l.contains("127.0.0.4"))
    );
    // Whether or not the ban is still in force when this first runs, access comes back
    // without anyone lifting it.
    eventually(Duration::from_secs(30), "the ban expires", || {
        publish_from(&hub, "127.0.0.4", &Via::Device(dev1.clone()), None)
            .status
            .success()
            .then_some(())
    });
    assert!(
        ban_id(&hub, "address", "127.0.0.4").is_none(),
        "expired bans are not listed"
    );
}
