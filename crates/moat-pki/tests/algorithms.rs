//! API tests for the CA key algorithm: an Ed25519 root and issuing CA, checked by OpenSSL and
//! by rustls (the hub's verifier and a full in-memory handshake); leaf keys stay P-256, and
//! certificates issued for a request keep the device's key type.

mod common;

use std::fs;
use std::sync::Arc;

use common::{
    ED25519, P256, P384, RSA2048, TempDir, TestResult, client_verifier, device, mode, now, openssl,
    openssl_available, openssl_csr, openssl_verify, provider, unix_time,
};
use moat_pki::{
    CaOptions, CertificateAuthority, DEFAULT_DEVICE_CERT_VALIDITY, FileKeySource, KeyAlgorithm,
    ROOT_CA_KEY_FILE, parse_certificate_request,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ED25519,
};

fn ed25519_ca(name: &str) -> Result<(CertificateAuthority, TempDir), Box<dyn std::error::Error>> {
    let dir = TempDir::new(name)?;
    let pki = dir.join("pki");
    let (ca, created) = CertificateAuthority::load_or_create_with(
        &pki,
        &FileKeySource::new(&pki),
        &CaOptions::with_algorithm(KeyAlgorithm::Ed25519),
        now(),
    )?;
    assert!(created);
    Ok((ca, dir))
}

#[test]
fn ed25519_ca_signs_with_ed25519_and_reloads_as_such() -> TestResult {
    let (ca, dir) = ed25519_ca("ed25519-reload")?;
    assert_eq!(ca.issuing_key_algorithm(), KeyAlgorithm::Ed25519);
    for der in [ca.root_cert_der(), ca.issuing_cert_der()] {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
        assert_eq!(cert.signature_algorithm.algorithm, OID_SIG_ED25519);
        assert_eq!(cert.public_key().algorithm.algorithm, OID_SIG_ED25519);
    }
    // The device key generated here is P-256; only the signature on it is Ed25519.
    let issued = ca.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.certificate.cert_der)?;
    assert_eq!(leaf.signature_algorithm.algorithm, OID_SIG_ED25519);
    assert_eq!(
        leaf.public_key().algorithm.algorithm,
        OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    // Loading detects the algorithm from the stored keys, whatever the options say.
    let pki = dir.join("pki");
    assert_eq!(mode(&pki.join(ROOT_CA_KEY_FILE)), 0o600);
    let (again, created) = CertificateAuthority::load_or_create(&pki, now())?;
    assert!(!created);
    assert_eq!(again.issuing_key_algorithm(), KeyAlgorithm::Ed25519);
    assert_eq!(again.root_cert_der(), ca.root_cert_der());
    let reissued = again.issue_server_certificate(&[], now())?;
    let (_, server) = x509_parser::parse_x509_certificate(&reissued.certificate.cert_der)?;
    assert_eq!(server.signature_algorithm.algorithm, OID_SIG_ED25519);

    // A default CA is still ECDSA P-256.
    let (p256, _p256_dir) = common::new_ca("p256-default")?;
    assert_eq!(p256.issuing_key_algorithm(), KeyAlgorithm::EcdsaP256Sha256);
    let p256_root = p256.root_cert_der();
    let (_, cert) = x509_parser::parse_x509_certificate(&p256_root)?;
    assert_eq!(
        cert.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );

    if openssl_available("ed25519_ca_signs_with_ed25519_and_reloads_as_such") {
        let text = openssl(&["pkey", "-in", ROOT_CA_KEY_FILE, "-noout", "-text"], &pki)?;
        assert!(text.contains("ED25519 Private-Key"), "{text}");
    }
    Ok(())
}

#[test]
fn rustls_accepts_device_certificates_of_an_ed25519_ca() -> TestResult {
    let (ca, _dir) = ed25519_ca("ed25519-rustls")?;
    let at = now();
    let issued = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    // With the root as the only anchor (the chain carries the issuing CA), and as the hub
    // configures it: issuing CA and root as anchors, the leaf alone.
    let root_only = client_verifier(&[ca.root_cert_der()], Vec::new())?;
    root_only.verify_client_cert(&issued.chain[0], &issued.chain[1..], unix_time(at))?;
    let hub = client_verifier(&[ca.issuing_cert_der(), ca.root_cert_der()], Vec::new())?;
    hub.verify_client_cert(&issued.cert_der, &[], unix_time(at))?;
    // Another installation's Ed25519 CA is not trusted.
    let (other, _other_dir) = ed25519_ca("ed25519-rustls-other")?;
    let foreign = other
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    assert!(
        hub.verify_client_cert(&foreign.chain[0], &foreign.chain[1..], unix_time(at))
            .is_err()
    );
    Ok(())
}

/// A whole TLS 1.3 handshake between rustls peers with certificates of an Ed25519 CA: the
/// hub's server certificate and a device's client certificate (both P-256 keys).
#[test]
fn tls_handshake_with_an_ed25519_ca() -> TestResult {
    let (ca, _dir) = ed25519_ca("ed25519-handshake")?;
    let server_cert = ca.issue_server_certificate(&[], now())?;
    let device_cert =
        ca.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;

    let verifier = client_verifier(&[ca.issuing_cert_der(), ca.root_cert_der()], Vec::new())?;
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            server_cert.certificate.chain.clone(),
            server_cert.key.der().clone_key(),
        )?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.root_cert_der())?;
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            device_cert.certificate.chain.clone(),
            device_cert.key.der().clone_key(),
        )?;
    let mut client =
        ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost")?)?;
    let mut server = ServerConnection::new(Arc::new(server_config))?;
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes)?;
        }
        server.read_tls(&mut bytes.as_slice())?;
        server.process_new_packets()?;
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes)?;
        }
        client.read_tls(&mut bytes.as_slice())?;
        client.process_new_packets()?;
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let presented = server.peer_certificates().ok_or("client certificate")?;
    assert_eq!(presented[0], device_cert.certificate.cert_der);
    assert_eq!(
        moat_pki::device_id_from_certificate(&presented[0])?,
        device("d1")
    );
    Ok(())
}

#[test]
fn openssl_verifies_ed25519_chains_and_device_key_types_are_kept() -> TestResult {
    if !openssl_available("openssl_verifies_ed25519_chains_and_device_key_types_are_kept") {
        return Ok(());
    }
    let (ca, dir) = ed25519_ca("ed25519-openssl")?;
    let files = dir.path();
    fs::write(files.join("root.pem"), ca.root_cert_pem())?;
    fs::write(files.join("issuing.pem"), ca.issuing_cert_pem())?;
    let generated =
        ca.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;
    fs::write(files.join("d1.pem"), &generated.certificate.cert_pem)?;
    openssl_verify(files, "root.pem", "issuing.pem", &[], "sslclient", "d1.pem")?;
    let server = ca.issue_server_certificate(&[], now())?;
    fs::write(files.join("server.pem"), &server.certificate.cert_pem)?;
    openssl_verify(
        files,
        "root.pem",
        "issuing.pem",
        &[],
        "sslserver",
        "server.pem",
    )?;

    // Enrollment from the device's own key: the certificate keeps the request's key,
    // whatever the CA's algorithm.
    for (name, key) in [
        ("p256", P256),
        ("p384", P384),
        ("ed", ED25519),
        ("rsa", RSA2048),
    ] {
        let csr = openssl_csr(files, name, key, name, &[])?;
        let request = parse_certificate_request(&csr)?;
        let issued = ca.issue_device_certificate_for_request(
            &device(name),
            &request,
            DEFAULT_DEVICE_CERT_VALIDITY,
            now(),
        )?;
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der)?;
        assert_eq!(
            cert.public_key().raw,
            request.public_key_info_der(),
            "{name}"
        );
        assert_eq!(
            cert.signature_algorithm.algorithm, OID_SIG_ED25519,
            "{name}"
        );
        let leaf = format!("{name}.pem");
        fs::write(files.join(&leaf), &issued.cert_pem)?;
        openssl_verify(files, "root.pem", "issuing.pem", &[], "sslclient", &leaf)?;
    }
    Ok(())
}
