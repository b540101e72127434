//! `moat serve` with zero configuration, `moat device add`, and the optional TOML config file
//! (issue 2, point 2; contract for scripts): the data directory with a root and an issuing CA
//! is created on first use, device credentials work at once, config keys equal the flags, and
//! unknown keys or bad values are rejected with file:line and exit code 2.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::*;

fn pem_certs(path: &std::path::Path) -> usize {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn first_serve_creates_the_data_directory_and_cas() {
    let hub = Hub::start(HubOptions::new());
    let pki = hub.data_dir().join("pki");
    assert!(pki.is_dir(), "no {}", pki.display());
    let files: Vec<_> = fs::read_dir(&pki)
        .expect("pki dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let crts = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .count();
    assert!(
        crts >= 2,
        "expected a root and an issuing CA certificate in {}: {files:?}",
        pki.display()
    );
    // Private keys readable by the owner only (DESIGN.md "key files 0600").
    for key in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
    {
        assert_eq!(
            mode(key),
            0o600,
            "{} has mode {:o}",
            key.display(),
            mode(key)
        );
    }
}

#[test]
fn device_credentials_chain_to_the_root() {
    let hub = Hub::start(HubOptions::new());
    let creds = hub.add_device("meter-1");
    assert_eq!(
        pem_certs(&creds.cert),
        2,
        "ID.crt must hold the leaf and the issuing CA"
    );
    assert_eq!(pem_certs(&creds.ca), 1, "ca.crt must hold the root only");
    assert_eq!(mode(&creds.key), 0o600, "device key mode");
    let out = run_with_deadline(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&creds.ca)
            .arg("-untrusted")
            .arg(&creds.cert)
            .arg(&creds.cert),
        EVENT_DEADLINE,
    );
    assert!(
        out.status.success(),
        "openssl verify\n{}",
        show_output(&out)
    );
    let out = run_with_deadline(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&creds.cert),
        EVENT_DEADLINE,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("meter-1"),
        "device id not in the certificate subject\n{}",
        show_output(&out)
    );
    // The device connects at once.
    mosquitto_pub(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        None,
        &["-t", "devices/meter-1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
}

#[test]
fn device_add_before_the_first_serve_creates_the_ca() {
    let mut hub = Hub::prepare(HubOptions::new());
    assert!(!hub.data_dir().exists());
    let creds = hub.add_device("early-1");
    hub.start_again();
    mosquitto_pub(
        &hub,
        &Via::Device(creds),
        Mqtt::V5,
        None,
        &["-t", "devices/early-1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // And while the server runs.
    let late = hub.add_device("late-1");
    mosquitto_pub(
        &hub,
        &Via::Device(late),
        Mqtt::V311,
        None,
        &["-t", "devices/late-1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
}

#[test]
fn device_add_rejects_ids_that_are_not_device_ids() {
    let hub = Hub::start(HubOptions::new());
    for bad in ["", "a/b", "a+b", "#", "../x", ".hidden", &"x".repeat(65)] {
        let out = run_with_deadline(
            Command::new(moat_bin())
                .args(["device", "add", bad, "--data-dir"])
                .arg(hub.data_dir())
                .arg("--out")
                .arg(hub.scratch("bad-ids")),
            EVENT_DEADLINE,
        );
        assert!(
            !out.status.success(),
            "device id {bad:?} accepted\n{}",
            show_output(&out)
        );
    }
}

#[test]
fn config_file_keys_equal_the_flags() {
    let hub = Hub::start(HubOptions::new().config_only(
        "mqtt-tls-listen = \"127.0.0.1:0\"\n\
         api-listen = \"127.0.0.1:0\"\n\
         mqtt-wss-listen = \"127.0.0.1:0\"\n\
         danger-mqtt-plaintext-listen = \"127.0.0.1:0\"\n\
         danger-allow-anonymous = true\n\
         max-keepalive = 7\n\
         \n\
         [limits]\n\
         receive-maximum = 3\n\
         max-packet-size = 4096\n",
    ));
    assert!(
        hub.addrs.mqtt_wss.is_some() && hub.addrs.mqtt_plaintext.is_some(),
        "{:?}",
        hub.addrs
    );
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5("cfg", 600, &[]));
    let (_, props) = w.expect_connack_v5(0);
    assert_eq!(
        props.int(0x13),
        Some(7),
        "Server Keep Alive from max-keepalive = 7"
    );
    assert_eq!(props.int(0x21), Some(3), "Receive Maximum from [limits]");
    assert_eq!(
        props.int(0x27),
        Some(4096),
        "Maximum Packet Size from [limits]"
    );
}

#[test]
fn plaintext_listener_without_allow_anonymous_admits_nobody() {
    let hub = Hub::start(HubOptions::new().config_only(
        "mqtt-tls-listen = \"127.0.0.1:0\"\n\
         api-listen = \"127.0.0.1:0\"\n\
         danger-mqtt-plaintext-listen = \"127.0.0.1:0\"\n",
    ));
    let mut w = Wire::connect(hub.plain_addr());
    w.send(&connect_v5("anon", 60, &[]));
    // Deny by default: no credentials are possible on plaintext, so CONNACK >= 0x80 or close.
    if let Some(p) = w.read_packet() {
        assert_eq!(
            p.kind(),
            2,
            "expected CONNACK, got {:02x} {}",
            p.first,
            to_hex(&p.body)
        );
        assert!(
            p.body[1] >= 0x80,
            "anonymous client admitted without --danger-allow-anonymous"
        );
        w.expect_closed();
    }
}

/// Runs `moat serve` with a config file; it must exit 2 naming `moat.toml:{line}`.
fn assert_config_rejected(toml: &str, line: usize, what: &str) {
    let dir = TempDir::new("cfg");
    let file = dir.path().join("moat.toml");
    // Listeners on port 0 so that a validator that lets the file through cannot take real ports.
    let text = format!("mqtt-tls-listen = \"127.0.0.1:0\"\napi-listen = \"127.0.0.1:0\"\n{toml}");
    fs::write(&file, &text).expect("write");
    let out = run_with_deadline(
        Command::new(moat_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&file),
        EVENT_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code\n{}",
        show_output(&out)
    );
    let at = format!("moat.toml:{}", line + 2);
    assert!(
        stderr.contains(&at),
        "{what}: stderr does not name {at}\n--- file\n{text}\n{}",
        show_output(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: printed on stdout\n{}",
        show_output(&out)
    );
}

#[test]
fn config_errors_name_file_and_line() {
    assert_config_rejected(
        "\nmqtt-tls-listn = \"127.0.0.1:0\"\n",
        2,
        "misspelt top-level key",
    );
    assert_config_rejected(
        "max-keepalive = 60\n[limits]\nmax-packet-sise = 1024\n",
        3,
        "unknown key in [limits]",
    );
    assert_config_rejected("[unknown-table]\nx = 1\n", 1, "unknown table");
    assert_config_rejected("max-keepalive = \"sixty\"\n", 1, "string for a number");
    assert_config_rejected("max-keepalive = 70000\n", 1, "keep alive above 65535");
    assert_config_rejected("mqtt-wss-listen = \"localhost:port\"\n", 1, "bad address");
    assert_config_rejected("danger-allow-anonymous = \"yes\"\n", 1, "string for a bool");
    assert_config_rejected(
        "[limits]\nreceive-maximum = 0\n",
        2,
        "receive maximum 0 (MQTT 5.0 3.2.2.3.3)",
    );
    assert_config_rejected("[limits]\nmax-packet-size = -5\n", 2, "negative size");
    assert_config_rejected(
        "[limits]\nconnect-timeout-secs = \"1s\"\n",
        2,
        "string for a duration",
    );
}

#[test]
fn unreadable_config_file_exits_2() {
    let dir = TempDir::new("cfg");
    let out = run_with_deadline(
        Command::new(moat_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("missing.toml"))
            .args([
                "--mqtt-tls-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ]),
        EVENT_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{}",
        show_output(&out)
    );
}

#[test]
fn config_check_validates_without_starting() {
    let dir = TempDir::new("check");
    let good = dir.path().join("good.toml");
    fs::write(&good, "max-keepalive = 60\ndevice-cert-validity-days = 7\n").expect("write");
    let out = run_with_deadline(
        Command::new(moat_bin())
            .args(["config", "check", "--config"])
            .arg(&good),
        EVENT_DEADLINE,
    );
    assert!(out.status.success(), "{}", show_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configuration ok") && text.contains("max-keepalive: 60 s"),
        "{text}"
    );
    assert!(text.contains("device-cert-validity: 7 days"), "{text}");
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "max-keepalive = 60\nmqtt-tls-listn = \"x\"\n").expect("write");
    let out = run_with_deadline(
        Command::new(moat_bin())
            .args(["config", "check", "--config"])
            .arg(&bad),
        EVENT_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:2"),
        "{}",
        show_output(&out)
    );
    assert!(
        !dir.path().join("moat-data").exists(),
        "config check created a data directory"
    );
}

#[test]
fn json_logs_readiness_and_certificate_reload_on_sighup_keep_sessions() {
    let hub = Hub::start(
        HubOptions::new()
            .plaintext_anonymous()
            .arg("--log-format")
            .arg("json"),
    );
    assert_eq!(hub.api_get("/readyz"), "ready\n");
    let dev = hub.add_device("hup1");
    let via = Via::Device(dev);
    let mut sub = Sub::start(
        &hub,
        &via,
        Mqtt::V5,
        None,
        &["-t", "devices/hup1/#", "-q", "1"],
    );
    hub.send_signal("HUP");
    // The reload is logged (as JSON); wait for it, bounded.
    let end = std::time::Instant::now() + EVENT_DEADLINE;
    while !hub
        .stderr()
        .contains("SIGHUP: CA and certificates reloaded")
    {
        assert!(
            std::time::Instant::now() < end,
            "no reload logged after SIGHUP\n{}",
            hub.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &["-t", "devices/hup1/after", "-m", "still", "-q", "1"],
    )
    .assert_ok();
    sub.expect("devices/hup1/after", "still");
    sub.kill();
    mosquitto_pub(
        &hub,
        &via,
        Mqtt::V5,
        None,
        &["-t", "devices/hup1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    let stderr = hub.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===") && !l.starts_with("  "))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with('{') && l.contains("\"level\""),
            "not a JSON log line: {l}"
        );
    }
}

#[test]
fn shell_completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_with_deadline(
            std::process::Command::new(moat_bin()).args(["completions", shell]),
            EVENT_DEADLINE,
        );
        assert!(out.status.success(), "{shell}\n{}", show_output(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["serve", "device", "alerts", "ban", "policy", "--data-dir"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash.
    let dir = TempDir::new("completions");
    let out = run_with_deadline(
        std::process::Command::new(moat_bin()).args(["completions", "bash"]),
        EVENT_DEADLINE,
    );
    let file = dir.path().join("moat.bash");
    std::fs::write(&file, &out.stdout).expect("write");
    let check = run_with_deadline(
        std::process::Command::new("bash").arg("-n").arg(&file),
        EVENT_DEADLINE,
    );
    assert!(check.status.success(), "{}", show_output(&check));
}

#[test]
fn sighup_reloads_configuration_keeps_sessions_and_names_what_needs_a_restart() {
    let hub = Hub::start(
        HubOptions::new()
            .plaintext_anonymous()
            .config("[detect]\nmode = \"dry_run\"\n"),
    );
    let dev = hub.add_device("hup2");
    let via = Via::Device(dev);
    let mut sub = Sub::start(
        &hub,
        &via,
        Mqtt::V5,
        Some("hup2"),
        &["-t", "devices/hup2/#", "-q", "1"],
    );

    // Two connections per address from now on, and a keep-alive change that needs a restart.
    fs::write(
        hub.config_path(),
        "max-keepalive = 30\n[shield]\nmax-concurrent-per-address = 2\n[detect]\nmode = \"dry_run\"\n",
    )
    .expect("rewrite config");
    hub.send_signal("HUP");
    let reloads = audit_lines(&hub, "config.reload");
    let reload: serde_json::Value = serde_json::from_str(&reloads[0]).expect("audit JSON");
    assert_eq!(reload["outcome"], "success", "{reload}");
    let details = reload.to_string();
    assert!(details.contains("[shield]"), "{details}");
    assert!(details.contains("max-keepalive"), "{details}");

    // The subscriber's session survived and holds one slot; a publisher takes the second.
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some("hup2-pub"),
        &["-t", "devices/hup2/after", "-m", "kept", "-q", "1"],
    )
    .assert_ok();
    sub.expect("devices/hup2/after", "kept");
    // With a second subscriber holding the other slot, a third connection is refused.
    let mut second = Sub::start(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some("hup2-second"),
        &["-t", "devices/hup2/second", "-q", "1"],
    );
    let refused = mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some("hup2-third"),
        &["-t", "devices/hup2/x", "-m", "no", "-q", "1"],
    );
    assert!(!refused.status.success(), "{}", refused.show());

    // A file with an error changes nothing and says where the error is.
    fs::write(hub.config_path(), "max-keepalive = 0\n").expect("rewrite config");
    hub.send_signal("HUP");
    let failed = eventually(EVENT_DEADLINE, "config.reload error", || {
        audit_lines(&hub, "config.reload")
            .into_iter()
            .find(|l| l.contains("\"outcome\":\"error\""))
    });
    assert!(failed.contains("moat.toml:1"), "{failed}");
    let still = mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        Some("hup2-fourth"),
        &["-t", "devices/hup2/x", "-m", "no", "-q", "1"],
    );
    assert!(
        !still.status.success(),
        "the shield kept its reloaded limits: {}",
        still.show()
    );
    second.kill();
    sub.kill();
}
