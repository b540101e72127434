//! API tests for enrollment from a device's own key (EST, RFC 7030): requests made by the
//! OpenSSL command line, the certificates issued for them, and the certs-only response.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    ED25519, P256, P384, RSA1024, RSA2048, TempDir, TestResult, device, new_ca, now, openssl,
    openssl_available, openssl_csr,
};
use moat_pki::{
    CertificateRequest, DEFAULT_DEVICE_CERT_VALIDITY, MAX_CSR_SIZE, MAX_DEVICE_CERT_VALIDITY,
    MAX_EST_BODY_SIZE, MAX_REQUESTED_VALUES, PkiError, PublicKeyKind, certificate_facts,
    certs_only, decode_est_base64, device_id_from_certificate, encode_est_base64,
    parse_certificate_request, serial_hex,
};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The request an attacker would send: asks to be a CA, for a DNS name, for certificate
/// signing and for server authentication.
const GREEDY_EXTENSIONS: &[&str] = &[
    "basicConstraints=critical,CA:TRUE",
    "subjectAltName=DNS:evil.example,IP:10.0.0.1,IP:::1,URI:urn:moat:device:other,\
     email:a@b.example,RID:1.2.3.4",
    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    "extendedKeyUsage=serverAuth,clientAuth,1.2.3.4",
    "nsComment=hello",
];

#[test]
fn greedy_openssl_request_gets_only_the_device_profile() -> TestResult {
    if !openssl_available("greedy_openssl_request_gets_only_the_device_profile") {
        return Ok(());
    }
    let (ca, dir) = new_ca("csr-greedy")?;
    let csr = openssl_csr(dir.path(), "dev7", P256, "dev7", GREEDY_EXTENSIONS)?;
    let request = parse_certificate_request(&csr)?;

    // Everything the request asked for is visible for the audit log...
    assert_eq!(request.subject_common_name(), Some("dev7"));
    assert_eq!(request.public_key_kind(), PublicKeyKind::EcdsaP256);
    let asked = request.requested_extensions();
    assert!(asked.ca);
    assert_eq!(
        asked.subject_alt_names,
        [
            "DNS:evil.example",
            "IP:10.0.0.1",
            "IP:::1",
            "URI:urn:moat:device:other",
            "email:a@b.example",
            "RID:1.2.3.4"
        ]
    );
    assert_eq!(
        asked.key_usages,
        ["digitalSignature", "keyCertSign", "cRLSign"]
    );
    assert_eq!(
        asked.extended_key_usages,
        ["serverAuth", "clientAuth", "1.2.3.4"]
    );
    // Netscape Comment.
    assert_eq!(asked.other_extensions, ["2.16.840.1.113730.1.13"]);

    // ...and none of it is in the certificate.
    let at = now();
    let issued = ca.issue_device_certificate_for_request(
        &device("dev7"),
        &request,
        DEFAULT_DEVICE_CERT_VALIDITY,
        at,
    )?;
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der)?;
    let bc = cert
        .basic_constraints()?
        .expect("explicit basicConstraints");
    assert!(!bc.value.ca);
    let san = cert.subject_alternative_name()?.expect("SAN").value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("urn:moat:device:dev7")]
    );
    let eku = cert.extended_key_usage()?.expect("EKU").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    let ku = cert.key_usage()?.expect("keyUsage").value;
    assert_eq!(ku.flags, 1 << 0, "digitalSignature only"); // x509-parser: bit 0 first
    assert_eq!(cert.public_key().raw, request.public_key_info_der());
    assert_eq!(cert.raw_serial(), issued.serial.as_slice());
    assert_eq!(
        issued.chain,
        [issued.cert_der.clone(), ca.issuing_cert_der()]
    );
    assert_eq!(
        device_id_from_certificate(&issued.cert_der)?,
        device("dev7")
    );

    // OpenSSL agrees: the chain verifies for TLS client use, and the certificate holds the
    // key openssl generated.
    let files = dir.path();
    fs::write(files.join("root.pem"), ca.root_cert_pem())?;
    fs::write(files.join("issuing.pem"), ca.issuing_cert_pem())?;
    fs::write(files.join("dev7.pem"), &issued.cert_pem)?;
    let out = openssl(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "dev7.pem",
        ],
        files,
    )?;
    assert!(out.contains("dev7.pem: OK"), "{out}");
    assert!(
        openssl(
            &[
                "verify",
                "-purpose",
                "sslserver",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "dev7.pem",
            ],
            files,
        )
        .is_err(),
        "not a server certificate"
    );
    let text = openssl(&["x509", "-in", "dev7.pem", "-noout", "-text"], files)?;
    assert!(!text.contains("evil.example"), "{text}");
    assert!(!text.contains("10.0.0.1"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    let cert_key = openssl(&["x509", "-in", "dev7.pem", "-noout", "-pubkey"], files)?;
    let own_key = openssl(&["pkey", "-in", "dev7.key", "-pubout"], files)?;
    assert_eq!(cert_key, own_key);
    let serial = openssl(&["x509", "-in", "dev7.pem", "-noout", "-serial"], files)?;
    assert_eq!(
        serial.trim(),
        format!("serial={}", serial_hex(&issued.serial).to_uppercase())
    );
    Ok(())
}

#[test]
fn every_accepted_key_type_is_certified_and_verifies() -> TestResult {
    if !openssl_available("every_accepted_key_type_is_certified_and_verifies") {
        return Ok(());
    }
    let (ca, dir) = new_ca("csr-kinds")?;
    let files = dir.path();
    fs::write(files.join("root.pem"), ca.root_cert_pem())?;
    fs::write(files.join("issuing.pem"), ca.issuing_cert_pem())?;
    for (name, key, kind) in [
        ("p256", P256, PublicKeyKind::EcdsaP256),
        ("p384", P384, PublicKeyKind::EcdsaP384),
        ("ed25519", ED25519, PublicKeyKind::Ed25519),
        ("rsa2048", RSA2048, PublicKeyKind::Rsa { bits: 2048 }),
    ] {
        let csr = openssl_csr(files, name, key, name, &[])?;
        let request = parse_certificate_request(&csr)?;
        assert_eq!(request.public_key_kind(), kind, "{name}");
        assert_eq!(request.requested_extensions(), &Default::default());
        let issued = ca.issue_device_certificate_for_request(
            &device(name),
            &request,
            DEFAULT_DEVICE_CERT_VALIDITY,
            now(),
        )?;
        let pem = format!("{name}.pem");
        fs::write(files.join(&pem), &issued.cert_pem)?;
        let out = openssl(
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslclient",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                &pem,
            ],
            files,
        )?;
        assert!(out.contains(": OK"), "{name}: {out}");
        let cert_key = openssl(&["x509", "-in", &pem, "-noout", "-pubkey"], files)?;
        let own_key = openssl(&["pkey", "-in", &format!("{name}.key"), "-pubout"], files)?;
        assert_eq!(cert_key, own_key, "{name}");
    }
    Ok(())
}

#[test]
fn weak_forged_and_oversized_requests_are_refused() -> TestResult {
    if !openssl_available("weak_forged_and_oversized_requests_are_refused") {
        return Ok(());
    }
    let dir = TempDir::new("csr-refused")?;
    let files = dir.path();

    let weak = openssl_csr(files, "rsa1024", RSA1024, "dev", &[])?;
    match parse_certificate_request(&weak) {
        Err(PkiError::UnsupportedKey(why)) => assert!(why.contains("1024"), "{why}"),
        other => panic!("RSA-1024 accepted or wrongly refused: {other:?}"),
    }

    // SHA-1 signatures are refused even with a strong key.
    let strong = openssl_csr(files, "rsa2048", RSA2048, "dev", &[])?;
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "rsa2048.key",
            "-subj",
            "/CN=dev",
            "-sha1",
            "-outform",
            "DER",
            "-out",
            "sha1.der",
        ],
        files,
    )?;
    let sha1 = fs::read(files.join("sha1.der"))?;
    match parse_certificate_request(&sha1) {
        Err(PkiError::InvalidCertificateRequest(why)) => {
            assert!(why.contains("signature algorithm"), "{why}")
        }
        other => panic!("SHA-1 request accepted or wrongly refused: {other:?}"),
    }
    assert!(parse_certificate_request(&strong).is_ok());

    // A flipped bit in the signature: no proof of possession.
    for (name, key) in [("p256", P256), ("ed25519", ED25519), ("rsa", RSA2048)] {
        let good = openssl_csr(files, name, key, "dev", &[])?;
        assert!(parse_certificate_request(&good).is_ok(), "{name}");
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        match parse_certificate_request(&forged) {
            Err(PkiError::InvalidCertificateRequest(why)) => {
                assert!(why.contains("proof of possession"), "{name}: {why}")
            }
            other => panic!("{name}: forged request accepted or wrongly refused: {other:?}"),
        }
        // Swapping in another subject without re-signing is caught the same way.
        let mut renamed = good.clone();
        if let Some(at) = renamed.windows(3).position(|w| w == b"dev") {
            renamed[at] = b'D';
            assert!(parse_certificate_request(&renamed).is_err(), "{name}");
        }
    }

    // Over MAX_CSR_SIZE: refused before parsing.
    let names: Vec<String> = (0..200)
        .map(|i| format!("DNS:host-{i:03}-padding-padding-padding-padding.example"))
        .collect();
    let big = openssl_csr(
        files,
        "big",
        P256,
        "dev",
        &[&format!("subjectAltName={}", names.join(","))],
    )?;
    assert!(big.len() > MAX_CSR_SIZE);
    assert!(matches!(
        parse_certificate_request(&big),
        Err(PkiError::TooLarge {
            what: "certificate request",
            ..
        })
    ));
    // Under the size limit but asking for more names than the audit summary keeps.
    let names: Vec<String> = (0..=MAX_REQUESTED_VALUES)
        .map(|i| format!("DNS:h{i}.example"))
        .collect();
    let many = openssl_csr(
        files,
        "many",
        P256,
        "dev",
        &[&format!("subjectAltName={}", names.join(","))],
    )?;
    assert!(many.len() <= MAX_CSR_SIZE);
    assert!(matches!(
        parse_certificate_request(&many),
        Err(PkiError::InvalidCertificateRequest(_))
    ));

    // Trailing data, and a certificate instead of a request.
    let mut trailing = strong.clone();
    trailing.push(0);
    assert!(parse_certificate_request(&trailing).is_err());
    let (ca, _ca_dir) = new_ca("csr-refused-ca")?;
    assert!(parse_certificate_request(&ca.issuing_cert_der()).is_err());
    Ok(())
}

#[test]
fn est_base64_bodies_decode_to_the_request() -> TestResult {
    if !openssl_available("est_base64_bodies_decode_to_the_request") {
        return Ok(());
    }
    let dir = TempDir::new("csr-base64")?;
    let csr = openssl_csr(dir.path(), "dev", P256, "dev", &[])?;
    // As OpenSSL (and most EST clients) wrap it: 64-character lines, LF.
    let body = openssl(&["base64", "-in", "dev.csr.der"], dir.path())?;
    assert!(body.lines().count() > 1, "{body}");
    assert_eq!(decode_est_base64(body.as_bytes())?, csr);
    assert_eq!(
        decode_est_base64(body.replace('\n', "\r\n").as_bytes())?,
        csr
    );
    assert_eq!(decode_est_base64(encode_est_base64(&csr).as_bytes())?, csr);
    let request = parse_certificate_request(&decode_est_base64(body.as_bytes())?)?;
    assert_eq!(request.subject_common_name(), Some("dev"));

    // PEM is not EST's encoding; a body over the limit is refused unread.
    let pem = openssl(
        &[
            "req",
            "-inform",
            "DER",
            "-in",
            "dev.csr.der",
            "-outform",
            "PEM",
        ],
        dir.path(),
    )?;
    assert!(matches!(
        decode_est_base64(pem.as_bytes()),
        Err(PkiError::InvalidEncoding(_))
    ));
    let huge = "QUFB\r\n".repeat(MAX_EST_BODY_SIZE / 6 + 1);
    assert!(matches!(
        decode_est_base64(huge.as_bytes()),
        Err(PkiError::TooLarge { .. })
    ));
    Ok(())
}

#[test]
fn request_path_shares_the_device_profile_limits() -> TestResult {
    let (ca, _dir) = new_ca("csr-validity")?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let request: CertificateRequest = parse_certificate_request(csr.der())?;
    let id = device("d1");
    for bad in [
        Duration::ZERO,
        MAX_DEVICE_CERT_VALIDITY + Duration::from_secs(1),
    ] {
        assert!(matches!(
            ca.issue_device_certificate_for_request(&id, &request, bad, now()),
            Err(PkiError::InvalidRequest(_))
        ));
    }
    // Never past the issuing CA's expiry, and not at all once it has expired.
    let late = ca.issuing_not_after() - time::Duration::days(1);
    let clamped =
        ca.issue_device_certificate_for_request(&id, &request, DEFAULT_DEVICE_CERT_VALIDITY, late)?;
    assert_eq!(clamped.not_after, ca.issuing_not_after());
    assert!(matches!(
        ca.issue_device_certificate_for_request(
            &id,
            &request,
            DEFAULT_DEVICE_CERT_VALIDITY,
            ca.issuing_not_after()
        ),
        Err(PkiError::Misconfigured(_))
    ));
    // Two certificates for one request get different serials.
    let a = ca.issue_device_certificate_for_request(
        &id,
        &request,
        DEFAULT_DEVICE_CERT_VALIDITY,
        now(),
    )?;
    let b = ca.issue_device_certificate_for_request(
        &id,
        &request,
        DEFAULT_DEVICE_CERT_VALIDITY,
        now(),
    )?;
    assert_ne!(a.serial, b.serial);
    assert_eq!(certificate_facts(&a.cert_der)?.device_id, Some(id));
    Ok(())
}

#[test]
fn openssl_reads_certs_only_responses() -> TestResult {
    if !openssl_available("openssl_reads_certs_only_responses") {
        return Ok(());
    }
    let (ca, dir) = new_ca("pkcs7")?;
    let files = dir.path();
    let issued = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?
        .certificate;
    // /simpleenroll: the issued certificate; /cacerts: the CA chain; and an empty one.
    let cases: [(&str, Vec<CertificateDer<'static>>); 3] = [
        ("enroll", vec![issued.cert_der.clone()]),
        ("cacerts", vec![ca.issuing_cert_der(), ca.root_cert_der()]),
        ("empty", vec![]),
    ];
    for (name, certs) in cases {
        let file = format!("{name}.p7");
        fs::write(files.join(&file), certs_only(&certs))?;
        let out = openssl(
            &["pkcs7", "-inform", "DER", "-in", &file, "-print_certs"],
            files,
        )?;
        let printed: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(out.as_bytes())
                .collect::<Result<_, _>>()?;
        assert_eq!(printed, certs, "{name}: {out}");
        // And OpenSSL's own parse of the structure finds nothing else in it.
        let structure = openssl(
            &["pkcs7", "-inform", "DER", "-in", &file, "-print", "-noout"],
            files,
        )?;
        assert!(structure.contains("pkcs7-signedData"), "{structure}");
        assert!(
            structure.contains("signer_info:\n      <EMPTY>"),
            "{structure}"
        );
        // The same message through EST's base64 as `openssl base64 -d` decodes it.
        fs::write(
            files.join(format!("{name}.b64")),
            encode_est_base64(&certs_only(&certs)),
        )?;
        openssl(
            &[
                "base64",
                "-d",
                "-in",
                &format!("{name}.b64"),
                "-out",
                &format!("{name}.b64.p7"),
            ],
            files,
        )?;
        assert_eq!(
            fs::read(files.join(format!("{name}.b64.p7")))?,
            certs_only(&certs)
        );
    }
    Ok(())
}
