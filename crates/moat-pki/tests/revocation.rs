//! API tests for revocation: CRLs checked by OpenSSL and by rustls' webpki (the hub's own
//! verifier), and the certificate facts a revocation check reads.

mod common;

use std::fs;
use std::sync::Arc;

use common::{TestResult, device, new_ca, now, openssl, openssl_available};
use moat_pki::{
    CertificateAuthority, DEFAULT_DEVICE_CERT_VALIDITY, DeviceId, IssuedCertificate,
    MAX_CRL_ENTRIES, PkiError, RevocationReason, RevokedSerial, certificate_facts,
    device_id_from_certificate, serial_hex,
};
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;

fn issue(ca: &CertificateAuthority, id: &str) -> Result<IssuedCertificate, PkiError> {
    Ok(ca
        .issue_device_certificate(&device(id), DEFAULT_DEVICE_CERT_VALIDITY, now())?
        .certificate)
}

fn revoked(cert: &IssuedCertificate, reason: Option<RevocationReason>) -> RevokedSerial {
    RevokedSerial {
        serial: cert.serial.clone(),
        revoked_at: now() - time::Duration::minutes(5),
        reason,
    }
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).expect("after 1970"),
    ))
}

#[test]
fn openssl_verifies_the_crl_and_refuses_revoked_certificates() -> TestResult {
    if !openssl_available("openssl_verifies_the_crl_and_refuses_revoked_certificates") {
        return Ok(());
    }
    let (ca, dir) = new_ca("crl-openssl")?;
    let lost = issue(&ca, "lost")?;
    let retired = issue(&ca, "retired")?;
    let fine = issue(&ca, "fine")?;
    let this_update = now();
    let crl = ca.issue_crl(
        &[
            revoked(&lost, Some(RevocationReason::KeyCompromise)),
            revoked(&retired, None),
        ],
        42,
        this_update,
        this_update + time::Duration::days(7),
    )?;

    let files = dir.path();
    fs::write(files.join("root.pem"), ca.root_cert_pem())?;
    fs::write(files.join("issuing.pem"), ca.issuing_cert_pem())?;
    fs::write(files.join("crl.der"), &crl)?;
    for (name, cert) in [("lost", &lost), ("retired", &retired), ("fine", &fine)] {
        fs::write(files.join(format!("{name}.pem")), &cert.cert_pem)?;
    }

    let out = openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "issuing.pem",
            "-noout",
            "-verify",
        ],
        files,
    )?;
    assert!(out.contains("verify OK"), "{out}");
    let text = openssl(
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
        files,
    )?;
    for cert in [&lost, &retired] {
        let serial = serial_hex(&cert.serial).to_uppercase();
        assert!(
            text.contains(&format!("Serial Number: {serial}")),
            "{serial}\n{text}"
        );
    }
    assert!(
        !text.contains(&serial_hex(&fine.serial).to_uppercase()),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                42"),
        "{text}"
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    let issuing_subject = openssl(&["x509", "-in", "issuing.pem", "-noout", "-subject"], files)?;
    let crl_issuer = openssl(
        &[
            "crl", "-inform", "DER", "-in", "crl.der", "-noout", "-issuer",
        ],
        files,
    )?;
    assert_eq!(
        issuing_subject.trim().trim_start_matches("subject="),
        crl_issuer.trim().trim_start_matches("issuer=")
    );

    // A CRL signed by another installation's CA does not verify.
    let (other, _other_dir) = new_ca("crl-openssl-other")?;
    fs::write(
        files.join("other.der"),
        other.issue_crl(&[], 1, this_update, this_update + time::Duration::days(1))?,
    )?;
    assert!(
        openssl(
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "other.der",
                "-CAfile",
                "issuing.pem",
                "-noout",
                "-verify"
            ],
            files,
        )
        .map_or(true, |out| !out.contains("verify OK"))
    );

    // Chain verification with the CRL: revoked leaves fail, the others pass.
    openssl(
        &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
        files,
    )?;
    let verify = |leaf: &str| {
        openssl(
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "-CRLfile",
                "crl.pem",
                leaf,
            ],
            files,
        )
    };
    assert!(verify("fine.pem")?.contains("fine.pem: OK"));
    for leaf in ["lost.pem", "retired.pem"] {
        let err = verify(leaf).expect_err("revoked").to_string();
        assert!(err.contains("certificate revoked"), "{leaf}: {err}");
    }
    Ok(())
}

#[test]
fn webpki_refuses_revoked_device_certificates() -> TestResult {
    let (ca, _dir) = new_ca("crl-webpki")?;
    let lost = issue(&ca, "lost")?;
    let fine = issue(&ca, "fine")?;
    let at = now();
    let crl = ca.issue_crl(
        &[revoked(&lost, Some(RevocationReason::KeyCompromise))],
        1,
        at,
        at + time::Duration::hours(1),
    )?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.root_cert_der())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .with_crls([crl])
    // The root publishes no CRL for the issuing CA yet.
    .only_check_end_entity_revocation()
    .build()?;
    verifier.verify_client_cert(&fine.chain[0], &fine.chain[1..], unix_time(at))?;
    let err = verifier
        .verify_client_cert(&lost.chain[0], &lost.chain[1..], unix_time(at))
        .expect_err("revoked");
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
    );
    Ok(())
}

#[test]
fn bad_revocation_lists_are_refused() -> TestResult {
    let (ca, _dir) = new_ca("crl-bad")?;
    let cert = issue(&ca, "d1")?;
    let at = now();
    let week = at + time::Duration::days(7);
    let refused = |result: Result<_, PkiError>| matches!(result, Err(PkiError::InvalidRequest(_)));

    let entry = revoked(&cert, None);
    assert!(refused(ca.issue_crl(
        &[entry.clone(), entry.clone()],
        1,
        at,
        week
    )));
    assert!(refused(ca.issue_crl(&[], 1, at, at)));
    assert!(refused(ca.issue_crl(&[], 1, week, at)));
    let future = RevokedSerial {
        revoked_at: at + time::Duration::hours(1),
        ..entry.clone()
    };
    assert!(refused(ca.issue_crl(&[future], 1, at, week)));
    for serial in [vec![], vec![0x80, 1], vec![0, 1], vec![1; 21]] {
        let bad = RevokedSerial {
            serial,
            ..entry.clone()
        };
        assert!(refused(ca.issue_crl(&[bad], 1, at, week)));
    }
    let too_many: Vec<RevokedSerial> = (0..=MAX_CRL_ENTRIES as u32)
        .map(|n| RevokedSerial {
            serial: (n + 1).to_be_bytes().to_vec(),
            ..entry.clone()
        })
        .collect();
    assert!(refused(ca.issue_crl(&too_many, 1, at, week)));
    // The limit itself is fine (the serials are minimal once leading zeros go).
    let at_limit: Vec<RevokedSerial> = (1..=MAX_CRL_ENTRIES as u32)
        .map(|n| {
            let bytes = n.to_be_bytes();
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(3);
            let start = if bytes[start] & 0x80 != 0 {
                start - 1
            } else {
                start
            };
            RevokedSerial {
                serial: bytes[start..].to_vec(),
                ..entry.clone()
            }
        })
        .collect();
    let crl = ca.issue_crl(&at_limit, u64::MAX, at, week)?;
    let (_, parsed) = x509_parser::parse_x509_crl(&crl)?;
    assert_eq!(parsed.iter_revoked_certificates().count(), MAX_CRL_ENTRIES);
    Ok(())
}

#[test]
fn certificate_facts_of_issued_certificates() -> TestResult {
    let (ca, _dir) = new_ca("facts")?;
    let at = now();
    let device_cert = issue(&ca, "sensor-9")?;
    let facts = certificate_facts(&device_cert.cert_der)?;
    assert_eq!(facts.device_id, Some(device("sensor-9")));
    assert_eq!(facts.serial, device_cert.serial);
    assert_eq!(facts.subject_cn.as_deref(), Some("sensor-9"));
    assert_eq!(facts.not_before, device_cert.not_before);
    assert_eq!(facts.not_after, device_cert.not_after);
    let issuing_der = ca.issuing_cert_der();
    let (_, issuing) = x509_parser::parse_x509_certificate(&issuing_der)?;
    assert_eq!(facts.issuer_dn, issuing.subject().to_string());
    assert!(
        facts.issuer_dn.starts_with("O=Moat, CN=Moat Issuing CA "),
        "{}",
        facts.issuer_dn
    );

    // Not device certificates: facts, but no device.
    let server = ca.issue_server_certificate(&[], at)?.certificate;
    let facts = certificate_facts(&server.cert_der)?;
    assert_eq!(facts.device_id, None);
    assert_eq!(facts.subject_cn.as_deref(), Some("Moat hub"));
    assert_eq!(facts.serial, server.serial);
    let facts = certificate_facts(&ca.issuing_cert_der())?;
    assert_eq!(facts.device_id, None);
    assert!(device_id_from_certificate(&ca.issuing_cert_der()).is_err());

    assert!(matches!(
        certificate_facts(b"garbage"),
        Err(PkiError::InvalidDeviceCertificate(_))
    ));
    Ok(())
}

#[test]
fn serial_hex_is_lowercase_without_separators() {
    assert_eq!(serial_hex(&[]), "");
    assert_eq!(serial_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
}

/// A certificate naming two different devices, or one with an invalid id, is an error for
/// both functions; one naming nobody is `None` for the facts.
#[test]
fn facts_and_device_id_agree_on_crafted_identities() -> TestResult {
    let crafted =
        |cn: Option<&str>, uris: &[&str]| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let mut params = rcgen::CertificateParams::default();
            let mut dn = rcgen::DistinguishedName::new();
            if let Some(cn) = cn {
                dn.push(rcgen::DnType::CommonName, cn);
            }
            params.distinguished_name = dn;
            params.subject_alt_names = uris
                .iter()
                .map(|u| Ok(rcgen::SanType::URI((*u).try_into()?)))
                .collect::<Result<_, rcgen::Error>>()?;
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = rcgen::KeyPair::generate()?;
            Ok(params.self_signed(&key)?.der().to_vec())
        };
    let conflict = crafted(Some("d2"), &["urn:moat:device:d1"])?;
    assert!(device_id_from_certificate(&conflict).is_err());
    assert!(certificate_facts(&conflict).is_err());
    let invalid = crafted(Some("a/b"), &[])?;
    assert!(device_id_from_certificate(&invalid).is_err());
    assert!(certificate_facts(&invalid).is_err());
    let nobody = crafted(None, &[])?;
    assert!(device_id_from_certificate(&nobody).is_err());
    assert_eq!(certificate_facts(&nobody)?.device_id, None);
    let uri_only = crafted(None, &["urn:moat:device:d1"])?;
    assert_eq!(
        certificate_facts(&uri_only)?.device_id,
        Some(DeviceId::parse("d1")?)
    );
    Ok(())
}

static DEVICE_CERT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let (ca, _dir) = new_ca("facts-proptest").expect("CA");
    issue(&ca, "d1").expect("certificate").cert_der.to_vec()
});

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// On damaged certificates `certificate_facts` never panics, and whenever
    /// `device_id_from_certificate` finds an identity the facts carry the same one.
    #[test]
    fn facts_agree_with_device_id_on_damaged_certificates(
        edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..4),
        cut in proptest::option::of(proptest::num::usize::ANY),
    ) {
        let mut der = DEVICE_CERT.to_vec();
        for (at, byte) in edits {
            let at = at % der.len();
            der[at] = byte;
        }
        if let Some(cut) = cut {
            der.truncate(cut % der.len());
        }
        let facts = certificate_facts(&der);
        if let Ok(id) = device_id_from_certificate(&der) {
            let facts = facts.map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(facts.device_id, Some(id));
        } else if let Ok(facts) = facts {
            proptest::prop_assert_eq!(facts.device_id, None);
        }
    }
}
