//! Identity (issue 3) with real third-party clients: the `moat` CLI as an operator, curl and
//! openssl as an EST client and certificate tooling, mosquitto_pub/sub and paho-mqtt as
//! devices.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn api_url(hub: &Hub, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.addrs.api.port())
}

/// The hub's root CA as the API and the EST endpoints present it.
fn root_ca(hub: &Hub) -> PathBuf {
    hub.data_dir().join("pki").join("root-ca.crt")
}

/// curl with the hub's CA; returns (HTTP status, body).
fn curl(hub: &Hub, dir: &Path, args: &[&str]) -> (u16, String) {
    let ca = root_ca(hub);
    let mut all = vec![
        "-sS",
        "--cacert",
        ca.to_str().expect("utf-8 path"),
        "-o",
        "body.out",
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    let out = tool("curl", &all, dir);
    assert!(
        out.status.success(),
        "curl {args:?} failed\n{}",
        show_output(&out)
    );
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("curl printed the status");
    let body = fs::read_to_string(dir.join("body.out")).unwrap_or_default();
    (status, body)
}

/// mosquitto_pub (MQTT 5) through `via` must fail: the handshake or the CONNECT is refused.
fn assert_refused(hub: &Hub, via: &Via, client_id: Option<&str>, topic: &str, what: &str) {
    let out = mosquitto_pub(hub, via, Mqtt::V5, client_id, &["-t", topic, "-m", "1"]);
    assert!(!out.status.success(), "{what}\n{}", out.show());
}

/// Makes an EC P-256 private key (PEM) in `dir`/`file`.
fn ec_key(dir: &Path, file: &str) {
    tool_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            file,
        ],
        dir,
    );
}

/// Makes an EC P-256 key and a PKCS#10 request for `cn` with `extra` openssl req options;
/// returns (key file, base64 DER request file) in `dir`.
fn key_and_csr(dir: &Path, name: &str, cn: &str, extra: &[&str]) -> (String, String) {
    let key = format!("{name}.key");
    ec_key(dir, &key);
    let der = format!("{name}.csr.der");
    let subj = format!("/CN={cn}");
    let mut args = vec![
        "req", "-new", "-key", &key, "-subj", &subj, "-outform", "DER", "-out", &der,
    ];
    args.extend_from_slice(extra);
    tool_ok("openssl", &args, dir);
    let b64 = format!("{name}.csr.b64");
    tool_ok("openssl", &["base64", "-in", &der, "-out", &b64], dir);
    (key, b64)
}

/// Decodes an EST certs-only response (base64 PKCS#7) into PEM certificates in `out`.
fn est_certs(dir: &Path, body: &str, out: &str) -> String {
    fs::write(dir.join("resp.b64"), body).expect("write");
    tool_ok(
        "openssl",
        &["base64", "-d", "-in", "resp.b64", "-out", "resp.p7"],
        dir,
    );
    tool_ok(
        "openssl",
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "resp.p7",
            "-print_certs",
            "-out",
            out,
        ],
        dir,
    );
    fs::read_to_string(dir.join(out)).expect("certs")
}

#[test]
fn revocation_disabling_and_policy_changes_reach_live_sessions() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous().wss());
    for id in SCRIPT_DEVICES {
        hub.add_device(id);
    }
    let data_dir = hub.data_dir();
    run_script(
        &hub,
        "identity.py",
        &[
            "--moat",
            moat_bin(),
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
        ],
    );
}

#[test]
fn revoked_certificate_is_refused_to_mosquitto_and_listed_in_the_signed_crl() {
    let hub = Hub::start(HubOptions::new());
    let creds = hub.add_device("lost1");
    let via = Via::Device(creds);
    mosquitto_pub(
        &hub,
        &via,
        Mqtt::V5,
        None,
        &["-t", "devices/lost1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    let shown = cli_ok(&hub, &["device", "show", "lost1"]);
    let serial = shown
        .split("\"serial\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("device show lists the certificate serial")
        .to_owned();
    cli_ok(
        &hub,
        &["device", "revoke", "lost1", "--reason", "keyCompromise"],
    );
    for v in [Mqtt::V311, Mqtt::V5] {
        let out = mosquitto_pub(
            &hub,
            &via,
            v,
            None,
            &["-t", "devices/lost1/x", "-m", "1", "-q", "1"],
        );
        assert!(
            !out.status.success(),
            "a revoked certificate published\n{}",
            out.show()
        );
    }
    // The CRL: signed by the issuing CA, listing the serial.
    let dir = hub.scratch("crl");
    let (status, _) = curl(&hub, &dir, &[&api_url(&hub, "/pki/crl")]);
    assert_eq!(status, 200);
    fs::rename(dir.join("body.out"), dir.join("crl.der")).expect("rename");
    let issuing = hub.data_dir().join("pki").join("issuing-ca.crt");
    let verify = tool(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-noout",
            "-verify",
            "-CAfile",
            issuing.to_str().expect("utf-8"),
        ],
        &dir,
    );
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("verify OK")
            || String::from_utf8_lossy(&verify.stdout).contains("verify OK"),
        "CRL signature does not verify\n{}",
        show_output(&verify)
    );
    let text = tool_ok(
        "openssl",
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
        &dir,
    );
    assert!(
        text.to_ascii_lowercase().replace(':', "").contains(&serial),
        "CRL does not list serial {serial}\n{text}"
    );
    assert!(
        text.contains("Key Compromise"),
        "CRL entry lacks its reason\n{text}"
    );
    // Revocation survives a restart.
    let mut hub = hub;
    hub.restart();
    assert_refused(
        &hub,
        &via,
        None,
        "devices/lost1/x",
        "revocation did not survive a restart",
    );
}

#[test]
fn est_enrollment_with_curl_takes_only_the_public_key_and_renewal_keeps_the_session() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let dir = hub.scratch("est");
    let ca = root_ca(&hub);

    // cacerts: the issuing CA and the root.
    let (status, body) = curl(&hub, &dir, &[&api_url(&hub, "/.well-known/est/cacerts")]);
    assert_eq!(status, 200, "cacerts: {body}");
    let cas = est_certs(&dir, &body, "cacerts.pem");
    assert_eq!(cas.matches("BEGIN CERTIFICATE").count(), 2, "{cas}");

    let token = cli_ok(&hub, &["token", "create", "--uses", "1", "--ttl", "10m"]);
    assert!(
        token.starts_with("moat_et_"),
        "token create printed {token:?}"
    );

    // A request asking for CA:TRUE, a DNS name and keyCertSign.
    let (key, csr) = key_and_csr(
        &dir,
        "est1",
        "est1",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example,IP:10.0.0.1",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let enroll = api_url(&hub, "/.well-known/est/simpleenroll");
    let user = format!("est1:{token}");
    let data = format!("@{csr}");
    let (status, body) = curl(
        &hub,
        &dir,
        &[
            "-u",
            &user,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
            &enroll,
        ],
    );
    assert_eq!(status, 200, "simpleenroll: {body}");
    let cert = est_certs(&dir, &body, "est1.crt");
    assert_eq!(cert.matches("BEGIN CERTIFICATE").count(), 1);
    let text = tool_ok(
        "openssl",
        &["x509", "-in", "est1.crt", "-noout", "-text"],
        &dir,
    );
    assert!(
        text.contains("CA:FALSE"),
        "issued certificate is not CA:FALSE\n{text}"
    );
    assert!(
        !text.contains("evil.example") && !text.contains("10.0.0.1"),
        "requested names were copied\n{text}"
    );
    assert!(
        !text.contains("Certificate Sign"),
        "requested key usage was copied\n{text}"
    );
    assert!(
        text.contains("URI:urn:moat:device:est1"),
        "no device identity\n{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication"),
        "no clientAuth\n{text}"
    );
    // The certificate carries the device's own key.
    let pub_cert = tool_ok(
        "openssl",
        &["x509", "-in", "est1.crt", "-noout", "-pubkey"],
        &dir,
    );
    let pub_key = tool_ok("openssl", &["pkey", "-in", &key, "-pubout"], &dir);
    assert_eq!(
        pub_cert, pub_key,
        "the certificate's key is not the device's"
    );

    // The token was single-use.
    let (key2, csr2) = key_and_csr(&dir, "est2", "est2", &[]);
    let data2 = format!("@{csr2}");
    let (status, _) = curl(
        &hub,
        &dir,
        &[
            "-u",
            &format!("est2:{token}"),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data2,
            &enroll,
        ],
    );
    assert_eq!(status, 401, "a used-up token enrolled a second device");
    let _ = key2;
    // No token at all.
    let (status, _) = curl(
        &hub,
        &dir,
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data2,
            &enroll,
        ],
    );
    assert_eq!(status, 401);

    // The enrolled device connects with mosquitto and its own key.
    let via = Via::Files {
        cert: dir.join("est1.crt"),
        key: dir.join(&key),
        ca: ca.clone(),
    };
    mosquitto_pub(
        &hub,
        &via,
        Mqtt::V5,
        Some("est1"),
        &["-t", "devices/est1/hello", "-m", "1", "-q", "1"],
    )
    .assert_ok();

    // Renewal over mutual TLS with the current certificate, while the device stays connected.
    let mut sub = Sub::start(
        &hub,
        &via,
        Mqtt::V5,
        Some("est1"),
        &["-t", "devices/est1/#", "-q", "1"],
    );
    let (key3, csr3) = key_and_csr(&dir, "est1-renew", "est1", &[]);
    let data3 = format!("@{csr3}");
    let reenroll = api_url(&hub, "/.well-known/est/simplereenroll");
    let (status, body) = curl(
        &hub,
        &dir,
        &[
            "--cert",
            "est1.crt",
            "--key",
            &key,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data3,
            &reenroll,
        ],
    );
    assert_eq!(status, 200, "simplereenroll: {body}");
    est_certs(&dir, &body, "est1-renewed.crt");
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &[
            "-t",
            "devices/est1/after-renewal",
            "-m",
            "still-here",
            "-q",
            "1",
        ],
    )
    .assert_ok();
    sub.expect("devices/est1/after-renewal", "still-here");
    sub.kill();
    let renewed = Via::Files {
        cert: dir.join("est1-renewed.crt"),
        key: dir.join(&key3),
        ca: ca.clone(),
    };
    mosquitto_pub(
        &hub,
        &renewed,
        Mqtt::V5,
        Some("est1"),
        &["-t", "devices/est1/renewed", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // Renewal without a client certificate is refused.
    let (status, _) = curl(
        &hub,
        &dir,
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data3,
            &reenroll,
        ],
    );
    assert_eq!(status, 401);

    let issued = audit_lines(&hub, "certificate.issue");
    assert!(
        issued.iter().any(|l| l.contains("\"source\":\"est\"")
            && l.contains("CA:TRUE")
            && l.contains("DNS:evil.example")),
        "the enrollment and what it asked for are not in the audit trail: {issued:?}"
    );
    assert!(
        issued.iter().any(|l| l.contains("\"source\":\"reenroll\"")),
        "{issued:?}"
    );
}

/// Signs a certificate for `id` with the hub's issuing CA key using `openssl ca`, with the
/// given validity window (YYYYMMDDHHMMSSZ).
fn sign_with_issuing_ca(hub: &Hub, dir: &Path, id: &str, start: &str, end: &str) -> Via {
    let pki = hub.data_dir().join("pki");
    fs::write(dir.join("index.txt"), "").expect("index");
    fs::write(dir.join("serial"), "1000\n").expect("serial");
    fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n\
             [ext]\nsubjectAltName = URI:urn:moat:device:{id}\nextendedKeyUsage = clientAuth\n\
             basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        ),
    )
    .expect("cnf");
    let key = format!("{id}-{start}.key");
    ec_key(dir, &key);
    let csr = format!("{id}-{start}.csr");
    tool_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={id}"),
            "-out",
            &csr,
        ],
        dir,
    );
    let cert = format!("{id}-{start}.crt");
    tool_ok(
        "openssl",
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-extensions",
            "ext",
            "-cert",
            pki.join("issuing-ca.crt").to_str().expect("utf-8"),
            "-keyfile",
            pki.join("issuing-ca.key").to_str().expect("utf-8"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-in",
            &csr,
            "-out",
            &cert,
        ],
        dir,
    );
    Via::Files {
        cert: dir.join(cert),
        key: dir.join(key),
        ca: root_ca(hub),
    }
}

#[test]
fn expired_not_yet_valid_foreign_and_mismatched_certificates_are_refused_with_reasons_on_record() {
    let hub = Hub::start(HubOptions::new());
    hub.add_device("old1");
    let dir = hub.scratch("certs-bad");

    let expired = sign_with_issuing_ca(&hub, &dir, "old1", "20200101000000Z", "20200102000000Z");
    assert_refused(
        &hub,
        &expired,
        Some("old1"),
        "devices/old1/x",
        "an expired certificate connected",
    );
    let future = sign_with_issuing_ca(&hub, &dir, "old1", "20990101000000Z", "20990102000000Z");
    assert_refused(
        &hub,
        &future,
        Some("old1"),
        "devices/old1/x",
        "a not-yet-valid certificate connected",
    );

    // A CA Moat does not know, issuing a perfect-looking device certificate.
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
            "foreign-ca.key",
            "-out",
            "foreign-ca.crt",
            "-subj",
            "/CN=Foreign CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        &dir,
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
            "forged.key",
            "-out",
            "forged.csr",
            "-subj",
            "/CN=old1",
        ],
        &dir,
    );
    fs::write(
        dir.join("forged.ext"),
        "subjectAltName = URI:urn:moat:device:old1\nextendedKeyUsage = clientAuth\n",
    )
    .expect("ext");
    tool_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "forged.csr",
            "-CA",
            "foreign-ca.crt",
            "-CAkey",
            "foreign-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "forged.ext",
            "-out",
            "forged.crt",
        ],
        &dir,
    );
    let forged = Via::Files {
        cert: dir.join("forged.crt"),
        key: dir.join("forged.key"),
        ca: root_ca(&hub),
    };
    assert_refused(
        &hub,
        &forged,
        Some("old1"),
        "devices/old1/x",
        "a foreign-CA certificate connected",
    );

    // Client id different from the certificate's device id.
    let good = hub.add_device("good1");
    let out = mosquitto_pub(
        &hub,
        &Via::Device(good),
        Mqtt::V5,
        Some("someone-else"),
        &["-t", "devices/good1/x", "-m", "1"],
    );
    assert!(
        !out.status.success(),
        "client id mismatch was accepted\n{}",
        out.show()
    );

    let rejected = audit_lines(&hub, "auth.certificate_rejected");
    let has = |needle: &str| rejected.iter().any(|l| l.contains(needle));
    assert!(
        has("\"reason_code\":\"expired\""),
        "no expired-certificate reason in the audit trail: {rejected:?}"
    );
    assert!(
        has("\"reason_code\":\"not_yet_valid\""),
        "no not-yet-valid reason in the audit trail: {rejected:?}"
    );
    assert!(
        has("\"reason_code\":\"unknown_issuer\""),
        "no foreign-CA reason in the audit trail: {rejected:?}"
    );
    let refused = audit_lines(&hub, "auth.connect_refused");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("device:good1") && l.contains("client id does not match")),
        "no client-id mismatch in the audit trail: {refused:?}"
    );
}

#[test]
fn audit_trail_tampering_is_detected() {
    let mut hub = Hub::start(HubOptions::new());
    hub.add_device("a1");
    hub.add_device("a2");
    cli_ok(&hub, &["device", "disable", "a1", "--reason", "test"]);
    cli_ok(&hub, &["device", "enable", "a1"]);
    let ok = cli_ok(&hub, &["audit", "verify"]);
    assert!(ok.starts_with("audit trail intact"), "{ok}");
    hub.stop();
    let db = hub.data_dir().join("registry.db");
    let edit = |sql: &str| {
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()\n";
        let out = run_with_deadline(
            Command::new("python3")
                .args(["-c", script])
                .arg(&db)
                .arg(sql),
            EVENT_DEADLINE,
        );
        assert!(out.status.success(), "{}", show_output(&out));
    };
    let verify = |hub: &Hub| {
        let out = cli(hub, &["audit", "verify"]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    edit("UPDATE audit SET at = at + 1 WHERE seq = 2");
    let (ok, text) = verify(&hub);
    assert!(
        !ok && text.contains("record 2 was edited"),
        "an edited entry went unnoticed: {text}"
    );
    edit("UPDATE audit SET at = at - 1 WHERE seq = 2");
    edit("DELETE FROM audit WHERE seq = 3");
    let (ok, text) = verify(&hub);
    assert!(
        !ok && text.contains("TAMPERED"),
        "a deleted entry went unnoticed: {text}"
    );
    edit("DELETE FROM audit WHERE seq >= 3");
    let (ok, text) = verify(&hub);
    assert!(
        !ok && text.contains("deleted"),
        "entries cut from the end went unnoticed: {text}"
    );
}

#[test]
fn operator_access_roles_tokens_and_login() {
    let mut hub = Hub::start(HubOptions::new());
    let dir = hub.scratch("ops");
    // The first start showed the admin password once.
    let first = hub.stderr();
    let password = first
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .expect("the first start prints the admin password")
        .trim()
        .to_owned();
    hub.add_device("r1");
    let auditor = cli_ok(
        &hub,
        &[
            "api-token",
            "create",
            "--name",
            "audit-bot",
            "--role",
            "auditor",
        ],
    );
    let bearer = format!("Authorization: Bearer {auditor}");
    let (status, body) = curl(
        &hub,
        &dir,
        &["-H", &bearer, &api_url(&hub, "/api/v1/devices")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"id\":\"r1\""), "{body}");
    let (status, body) = curl(
        &hub,
        &dir,
        &[
            "-X",
            "POST",
            "-H",
            &bearer,
            &api_url(&hub, "/api/v1/devices/r1/revoke"),
        ],
    );
    assert_eq!(status, 403, "an auditor revoked a device: {body}");
    assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    let (status, body) = curl(&hub, &dir, &[&api_url(&hub, "/api/v1/devices")]);
    assert_eq!(status, 401, "{body}");
    let (status, _) = curl(
        &hub,
        &dir,
        &[
            "-H",
            "Authorization: Bearer moat_at_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
            &api_url(&hub, "/api/v1/devices"),
        ],
    );
    assert_eq!(status, 401);
    let (status, body) = curl(&hub, &dir, &[&api_url(&hub, "/api/openapi.json")]);
    assert_eq!(status, 200);
    assert!(body.contains("\"openapi\""), "{body}");

    // Login with the first-start password; wrong passwords are limited per address.
    let login = api_url(&hub, "/api/v1/login");
    let good = format!("{{\"user\":\"admin\",\"password\":\"{password}\"}}");
    let (status, body) = curl(
        &hub,
        &dir,
        &["-H", "Content-Type: application/json", "-d", &good, &login],
    );
    assert_eq!(status, 200, "{body}");
    let session = body
        .split("\"token\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("token")
        .to_owned();
    let (status, _) = curl(
        &hub,
        &dir,
        &[
            "-H",
            &format!("Authorization: Bearer {session}"),
            &api_url(&hub, "/api/v1/groups"),
        ],
    );
    assert_eq!(status, 200);
    for _ in 0..5 {
        let (status, _) = curl(
            &hub,
            &dir,
            &[
                "-H",
                "Content-Type: application/json",
                "-d",
                "{\"user\":\"admin\",\"password\":\"guess\"}",
                &login,
            ],
        );
        assert_eq!(status, 401);
    }
    let (status, body) = curl(
        &hub,
        &dir,
        &["-H", "Content-Type: application/json", "-d", &good, &login],
    );
    assert_eq!(status, 401, "login not limited after 5 failures: {body}");
    assert!(body.contains("too many failed logins"), "{body}");
    let failed = audit_lines(&hub, "operator.login");
    assert!(
        failed
            .iter()
            .filter(|l| l.contains("\"outcome\":\"denied\""))
            .count()
            >= 5,
        "{failed:?}"
    );
    assert!(
        !cli_ok(&hub, &["audit", "export"]).contains(&password),
        "the password reached the audit trail"
    );

    // Shown once: a restart does not print it again.
    hub.restart();
    assert!(
        !hub.stderr().contains(&password),
        "the admin password was shown again"
    );
    assert!(
        !hub.stderr().contains("password:"),
        "a second operator credential was made"
    );
}

#[test]
fn factory_certificates_of_a_registered_manufacturer_enroll_just_in_time_after_approval() {
    let hub = Hub::start(HubOptions::new());
    let dir = hub.scratch("jit");
    // The manufacturer's CA and a device's factory certificate (CN = device id).
    let make_ca = |name: &str| {
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
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-subj",
                &format!("/O=Acme/CN={name}"),
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
            &dir,
        );
    };
    make_ca("acme-ca");
    make_ca("rogue-ca");
    let factory_cert = |ca: &str, cn: &str| {
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
                &format!("{cn}-{ca}.key"),
                "-out",
                &format!("{cn}-{ca}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
            &dir,
        );
        fs::write(
            dir.join("factory.ext"),
            "extendedKeyUsage = clientAuth\nbasicConstraints = critical,CA:FALSE\n",
        )
        .expect("ext");
        tool_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &format!("{cn}-{ca}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "factory.ext",
                "-out",
                &format!("{cn}-{ca}.crt"),
            ],
            &dir,
        );
    };
    factory_cert("acme-ca", "fac1");
    factory_cert("rogue-ca", "fac2");
    let out = cli_ok(
        &hub,
        &[
            "manufacturer",
            "add",
            "acme",
            "--ca",
            dir.join("acme-ca.crt").to_str().expect("utf-8"),
            "--approval",
        ],
    );
    assert!(out.contains("CN=acme-ca"), "{out}");

    let (key, csr) = key_and_csr(&dir, "fac1-op", "fac1", &[]);
    let data = format!("@{csr}");
    let enroll = api_url(&hub, "/.well-known/est/simpleenroll");
    let with_factory = |ca: &str, cn: &str| {
        curl(
            &hub,
            &dir,
            &[
                "--cert",
                &format!("{cn}-{ca}.crt"),
                "--key",
                &format!("{cn}-{ca}.key"),
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                &data,
                &enroll,
            ],
        )
    };
    let (status, body) = with_factory("acme-ca", "fac1");
    assert_eq!(status, 202, "held for approval expected: {body}");
    let listed = cli_ok(&hub, &["device", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("fac1") && l.contains("pending")),
        "{listed}"
    );
    // Still pending: asking again changes nothing.
    assert_eq!(with_factory("acme-ca", "fac1").0, 202);
    cli_ok(&hub, &["device", "approve", "fac1"]);
    let (status, body) = with_factory("acme-ca", "fac1");
    assert_eq!(status, 200, "after approval: {body}");
    est_certs(&dir, &body, "fac1-op.crt");
    let via = Via::Files {
        cert: dir.join("fac1-op.crt"),
        key: dir.join(&key),
        ca: root_ca(&hub),
    };
    mosquitto_pub(
        &hub,
        &via,
        Mqtt::V5,
        Some("fac1"),
        &["-t", "devices/fac1/up", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // Enrolled once: the factory certificate cannot mint a second identity.
    assert_eq!(with_factory("acme-ca", "fac1").0, 409);
    // The factory certificate itself is no MQTT credential.
    let factory_via = Via::Files {
        cert: dir.join("fac1-acme-ca.crt"),
        key: dir.join("fac1-acme-ca.key"),
        ca: root_ca(&hub),
    };
    assert_refused(
        &hub,
        &factory_via,
        Some("fac1"),
        "devices/fac1/up",
        "a factory certificate connected over MQTT",
    );
    // An unregistered manufacturer's certificate does not even complete the TLS handshake
    // with a certificate the hub accepts: no enrollment.
    let (key2, csr2) = key_and_csr(&dir, "fac2-op", "fac2", &[]);
    let _ = key2;
    let data2 = format!("@{csr2}");
    let out = tool(
        "curl",
        &[
            "-sS",
            "--cacert",
            root_ca(&hub).to_str().expect("utf-8"),
            "--cert",
            "fac2-rogue-ca.crt",
            "--key",
            "fac2-rogue-ca.key",
            "-o",
            "rogue.out",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data2,
            &enroll,
        ],
        &dir,
    );
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !out.status.success() || code == "401",
        "a rogue factory certificate enrolled: {code}\n{}",
        show_output(&out)
    );
    let issued = audit_lines(&hub, "certificate.issue");
    assert!(
        issued
            .iter()
            .any(|l| l.contains("\"source\":\"jit\"") && l.contains("\"manufacturer\":\"acme\"")),
        "{issued:?}"
    );
}

#[test]
fn issuing_ca_rotation_without_downtime_keeps_old_devices_and_sessions() {
    let hub = Hub::start(HubOptions::new().plaintext_anonymous());
    let old = hub.add_device("before1");
    let old_via = Via::Device(old);
    let mut sub = Sub::start(
        &hub,
        &old_via,
        Mqtt::V5,
        None,
        &["-t", "devices/before1/#", "-q", "1"],
    );
    let shown = cli_ok(&hub, &["ca", "show"]);
    assert!(
        shown.contains("previous issuing CA (still trusted): none"),
        "{shown}"
    );
    let rotated = cli_ok(&hub, &["ca", "rotate"]);
    assert!(rotated.contains("previous one stays trusted"), "{rotated}");
    // The live session was not touched.
    mosquitto_pub(
        &hub,
        &Via::Anonymous,
        Mqtt::V5,
        None,
        &[
            "-t",
            "devices/before1/after-rotation",
            "-m",
            "live",
            "-q",
            "1",
        ],
    )
    .assert_ok();
    sub.expect("devices/before1/after-rotation", "live");
    sub.kill();
    // A device issued before the rotation still connects; one issued after (by the new CA)
    // connects too: no restart in between.
    mosquitto_pub(
        &hub,
        &old_via,
        Mqtt::V5,
        None,
        &["-t", "devices/before1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    let new = hub.add_device("after1");
    let dir = hub.scratch("rotation");
    let issuer = tool_ok(
        "openssl",
        &[
            "x509",
            "-in",
            new.cert.to_str().expect("utf-8"),
            "-noout",
            "-issuer",
        ],
        &dir,
    );
    let old_issuer = tool_ok(
        "openssl",
        &[
            "x509",
            "-in",
            hub.certs_dir().join("before1.crt").to_str().expect("utf-8"),
            "-noout",
            "-issuer",
        ],
        &dir,
    );
    assert_ne!(
        issuer, old_issuer,
        "the device certificate after rotation comes from the old issuing CA"
    );
    mosquitto_pub(
        &hub,
        &Via::Device(new),
        Mqtt::V5,
        None,
        &["-t", "devices/after1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // Both issuing CAs publish a CRL; the previous one's verifies with its certificate.
    let (status, _) = curl(&hub, &dir, &[&api_url(&hub, "/pki/crl/previous")]);
    assert_eq!(status, 200);
    let info = cli_ok(&hub, &["ca", "show", "--json"]);
    let previous = info
        .split("\"previous_issuing_pem\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("previous issuing CA in ca show")
        .replace("\\n", "\n");
    fs::write(dir.join("previous.pem"), previous).expect("write");
    fs::rename(dir.join("body.out"), dir.join("previous.crl")).expect("rename");
    let verify = tool(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "previous.crl",
            "-noout",
            "-verify",
            "-CAfile",
            "previous.pem",
        ],
        &dir,
    );
    assert!(
        format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        )
        .contains("verify OK"),
        "{}",
        show_output(&verify)
    );
    assert!(
        !audit_lines(&hub, "ca.rotate").is_empty(),
        "the rotation is not in the audit trail"
    );
    // Discarding the previous issuing CA (its key compromised, say) cuts what it issued.
    cli_ok(&hub, &["ca", "discard-previous"]);
    assert_refused(
        &hub,
        &old_via,
        None,
        "devices/before1/x",
        "a certificate of the discarded CA connected",
    );
    let after2 = hub.add_device("after2");
    mosquitto_pub(
        &hub,
        &Via::Device(after2),
        Mqtt::V5,
        None,
        &["-t", "devices/after2/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
}

#[test]
fn offline_root_ceremony_leaves_no_root_key_on_the_hub() {
    let mut hub = Hub::prepare(HubOptions::new());
    let dir = hub.scratch("ceremony");
    let offline = dir.join("offline-root");
    let pass = dir.join("root.pass");
    fs::write(&pass, "correct horse battery staple\n").expect("pass");
    tool_ok("chmod", &["600", pass.to_str().expect("utf-8")], &dir);
    let run = |args: &[&str]| {
        let out = run_with_deadline(Command::new(moat_bin()).args(args), EVENT_DEADLINE);
        assert!(
            out.status.success(),
            "moat {}\n{}",
            args.join(" "),
            show_output(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let data = hub.data_dir();
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    run(&[
        "ca",
        "init-root",
        "--dir",
        &s(&offline),
        "--passphrase-file",
        &s(&pass),
    ]);
    let root_key = fs::read_to_string(offline.join("root-ca.key")).expect("root key");
    assert!(
        root_key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "root key not encrypted"
    );
    run(&[
        "ca",
        "issuing-request",
        "--data-dir",
        &s(&data),
        "--out",
        &s(&dir.join("issuing.csr")),
    ]);
    run(&[
        "ca",
        "sign-issuing",
        "--dir",
        &s(&offline),
        "--csr",
        &s(&dir.join("issuing.csr")),
        "--out",
        &s(&dir.join("issuing.crt")),
        "--passphrase-file",
        &s(&pass),
    ]);
    run(&[
        "ca",
        "import-issuing",
        "--data-dir",
        &s(&data),
        "--cert",
        &s(&dir.join("issuing.crt")),
        "--root",
        &s(&offline.join("root-ca.crt")),
    ]);
    hub.start_again();
    assert!(
        !data.join("pki").join("root-ca.key").exists(),
        "a root key is on the hub"
    );
    let shown = cli_ok(&hub, &["ca", "show"]);
    assert!(shown.contains("root key on this hub: false"), "{shown}");
    let dev = hub.add_device("cer1");
    mosquitto_pub(
        &hub,
        &Via::Device(dev),
        Mqtt::V5,
        None,
        &["-t", "devices/cer1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // Rotation needs the root: refused here (the offline path is the way).
    let out = cli(&hub, &["ca", "rotate"]);
    assert!(
        !out.status.success(),
        "rotated without a root key\n{}",
        show_output(&out)
    );
}

#[test]
fn ca_keys_encrypted_with_a_passphrase_and_an_ed25519_ca() {
    let dir = TempDir::new("passphrase");
    let pass = dir.path().join("ca.pass");
    fs::write(&pass, "a long and secret passphrase\n").expect("pass");
    tool_ok("chmod", &["600", pass.to_str().expect("utf-8")], dir.path());
    let mut hub = Hub::start(HubOptions::new().config(&format!(
        "ca-passphrase-file = \"{}\"\nca-algorithm = \"ed25519\"\n",
        pass.display()
    )));
    let pki = hub.data_dir().join("pki");
    for key in ["root-ca.key", "issuing-ca.key"] {
        let text = fs::read_to_string(pki.join(key)).expect("key");
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key} is not encrypted"
        );
        let opened = tool(
            "openssl",
            &[
                "pkey",
                "-in",
                pki.join(key).to_str().expect("utf-8"),
                "-passin",
                &format!("file:{}", pass.display()),
                "-noout",
                "-text",
            ],
            dir.path(),
        );
        assert!(
            opened.status.success(),
            "openssl cannot open {key}\n{}",
            show_output(&opened)
        );
        assert!(
            String::from_utf8_lossy(&opened.stdout).contains("ED25519"),
            "{key} is not Ed25519"
        );
    }
    // Devices are issued with the passphrase and connect through the Ed25519 chain.
    let out = run_with_deadline(
        Command::new(moat_bin())
            .args(["device", "add", "ed1", "--data-dir"])
            .arg(hub.data_dir())
            .arg("--out")
            .arg(hub.certs_dir())
            .arg("--ca-passphrase-file")
            .arg(&pass),
        EVENT_DEADLINE,
    );
    assert!(out.status.success(), "{}", show_output(&out));
    let via = Via::Files {
        cert: hub.certs_dir().join("ed1.crt"),
        key: hub.certs_dir().join("ed1.key"),
        ca: hub.certs_dir().join("ca.crt"),
    };
    mosquitto_pub(
        &hub,
        &via,
        Mqtt::V5,
        Some("ed1"),
        &["-t", "devices/ed1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    // Without the passphrase the hub does not start, and says why.
    hub.stop();
    let out = run_with_deadline(
        Command::new(moat_bin())
            .args([
                "serve",
                "--mqtt-tls-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(hub.data_dir()),
        EVENT_DEADLINE,
    );
    assert!(!out.status.success(), "started without the passphrase");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a passphrase"),
        "{}",
        show_output(&out)
    );
}

#[test]
fn one_certificate_revoked_by_serial_while_the_device_keeps_its_other_one() {
    let hub = Hub::start(HubOptions::new());
    let first = hub.add_device("two1");
    let dir = hub.scratch("two-certs");
    fs::copy(&first.cert, dir.join("first.crt")).expect("copy");
    fs::copy(&first.key, dir.join("first.key")).expect("copy");
    let old = Via::Files {
        cert: dir.join("first.crt"),
        key: dir.join("first.key"),
        ca: root_ca(&hub),
    };
    let serial = tool_ok(
        "openssl",
        &["x509", "-in", "first.crt", "-noout", "-serial"],
        &dir,
    )
    .trim()
    .trim_start_matches("serial=")
    .to_owned();
    // A second certificate (a renewal) for the same device.
    let second = hub.add_device("two1");
    let out = cli_ok(
        &hub,
        &[
            "device",
            "revoke-cert",
            &serial,
            "--reason",
            "keyCompromise",
        ],
    );
    assert!(out.contains("revoked"), "{out}");
    let refused = mosquitto_pub(
        &hub,
        &old,
        Mqtt::V5,
        Some("two1"),
        &["-t", "devices/two1/x", "-m", "1"],
    );
    assert!(
        !refused.status.success(),
        "the revoked certificate connected\n{}",
        refused.show()
    );
    mosquitto_pub(
        &hub,
        &Via::Device(second),
        Mqtt::V5,
        None,
        &["-t", "devices/two1/x", "-m", "1", "-q", "1"],
    )
    .assert_ok();
    let again = cli(&hub, &["device", "revoke-cert", &serial]);
    assert!(!again.status.success(), "revoking twice succeeded");
    let lines = audit_lines(&hub, "certificate.revoke");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&serial.to_ascii_lowercase())),
        "{lines:?}"
    );
}

#[test]
fn the_agents_client_id_has_its_own_session_beside_the_application() {
    let hub = Hub::start(HubOptions::new());
    let cam = Via::Device(hub.add_device("cam-9"));
    hub.add_device("cam-90");
    // The device's application holds the session of its own client id.
    let mut app = Sub::start(
        &hub,
        &cam,
        Mqtt::V5,
        Some("cam-9"),
        &["-t", "devices/cam-9/#", "-q", "1"],
    );
    // moat-agent's client id connects beside it, with the same certificate and policies...
    mosquitto_pub(
        &hub,
        &cam,
        Mqtt::V5,
        Some("cam-9/agent"),
        &["-t", "devices/cam-9/ota/status", "-m", "beside", "-q", "1"],
    )
    .assert_ok();
    // ...and the application's session was not taken over: it receives the report.
    app.expect("devices/cam-9/ota/status", "beside");
    // Any other suffix, or another device's agent id, is still a mismatch.
    for claimed in ["cam-9/agent2", "cam-90/agent", "cam-9/"] {
        let refused = mosquitto_pub(
            &hub,
            &cam,
            Mqtt::V5,
            Some(claimed),
            &["-t", "devices/cam-9/x", "-m", "no", "-q", "1"],
        );
        assert!(!refused.status.success(), "{claimed}: {}", refused.show());
    }
    app.kill();
}
