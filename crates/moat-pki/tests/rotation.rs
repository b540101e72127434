//! API tests for issuing-CA rotation: certificates issued before a rotation keep verifying
//! (rustls and OpenSSL), each issuing CA signs the CRL of what it issued, only one previous
//! CA is kept, and a rotation interrupted at any step loads and completes.

mod common;

use std::fs;
use std::path::Path;

use common::{
    TempDir, TestResult, client_verifier, device, mode, now, openssl, openssl_available,
    openssl_verify, unix_time,
};
use moat_pki::{
    CaOptions, CertificateAuthority, DEFAULT_DEVICE_CERT_VALIDITY, FileKeySource,
    ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE, ISSUING_CA_PENDING_KEY_FILE,
    ISSUING_CA_PREVIOUS_CERT_FILE, ISSUING_CA_PREVIOUS_KEY_FILE, ISSUING_CA_VALIDITY,
    IssuedCertificate, IssuerSlot, KeyAlgorithm, OfflineRoot, PkiError, ROOT_CA_CERT_FILE,
    RevocationReason, RevokedSerial,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

fn issue(
    ca: &CertificateAuthority,
    id: &str,
    at: OffsetDateTime,
) -> Result<IssuedCertificate, PkiError> {
    Ok(ca
        .issue_device_certificate(&device(id), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate)
}

/// The hub's trust anchors: every trusted issuing CA, then the root.
fn anchors(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    let mut anchors = ca.trusted_issuing_certs();
    anchors.push(ca.root_cert_der());
    anchors
}

fn file_names(dir: &Path) -> Result<Vec<String>, std::io::Error> {
    let mut names = fs::read_dir(dir)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, std::io::Error>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn rotation_keeps_earlier_certificates_valid() -> TestResult {
    let dir = TempDir::new("rotate")?;
    let keys = FileKeySource::new(dir.path());
    let (before, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let old = issue(&before, "old", now())?;
    assert_eq!(before.trusted_issuing_certs(), [before.issuing_cert_der()]);
    assert_eq!(before.issuer_of(&old.cert_der), Some(IssuerSlot::Current));

    let after = CertificateAuthority::rotate_issuing(dir.path(), &keys, now())?;
    assert_ne!(after.issuing_cert_der(), before.issuing_cert_der());
    assert_eq!(after.root_cert_der(), before.root_cert_der());
    assert_eq!(
        after.trusted_issuing_certs(),
        [after.issuing_cert_der(), before.issuing_cert_der()]
    );
    assert_eq!(
        after.previous_issuing_cert_pem(),
        Some(before.issuing_cert_pem())
    );
    assert_eq!(
        after.previous_issuing_not_after(),
        Some(before.issuing_not_after())
    );
    let new = issue(&after, "new", now())?;
    assert_eq!(new.chain[1], after.issuing_cert_der());

    // Which CA issued what: by signature, and by key identifier.
    assert_eq!(after.issuer_of(&old.cert_der), Some(IssuerSlot::Previous));
    assert_eq!(after.issuer_of(&new.cert_der), Some(IssuerSlot::Current));
    let (foreign, _foreign_dir) = common::new_ca("rotate-foreign")?;
    assert_eq!(
        after.issuer_of(&issue(&foreign, "x", now())?.cert_der),
        None
    );
    assert_eq!(after.issuer_of(b"garbage"), None);
    let key_id = |cert: &IssuedCertificate| cert.issuer_key_id.clone().unwrap_or_default();
    assert_eq!(
        after.issuer_slot_for_key_id(&key_id(&old)),
        Some(IssuerSlot::Previous)
    );
    assert_eq!(
        after.issuer_slot_for_key_id(&key_id(&new)),
        Some(IssuerSlot::Current)
    );
    assert_ne!(key_id(&old), key_id(&new));

    // Files: the previous CA kept with its key; no pending key left.
    assert_eq!(
        file_names(dir.path())?,
        [
            ISSUING_CA_CERT_FILE,
            ISSUING_CA_KEY_FILE,
            ISSUING_CA_PREVIOUS_CERT_FILE,
            ISSUING_CA_PREVIOUS_KEY_FILE,
            ROOT_CA_CERT_FILE,
            moat_pki::ROOT_CA_KEY_FILE,
        ]
    );
    assert_eq!(mode(&dir.join(ISSUING_CA_PREVIOUS_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(ISSUING_CA_KEY_FILE)), 0o600);

    // rustls, as the hub configures it: both chains verify, with or without the issuing CA
    // in the presented chain.
    let at = now();
    let verifier = client_verifier(&anchors(&after), Vec::new())?;
    for cert in [&old, &new] {
        verifier.verify_client_cert(&cert.chain[0], &cert.chain[1..], unix_time(at))?;
        verifier.verify_client_cert(&cert.cert_der, &[], unix_time(at))?;
    }
    // With only the root as anchor, each leaf verifies with its own issuing CA in the chain.
    let root_only = client_verifier(&[after.root_cert_der()], Vec::new())?;
    root_only.verify_client_cert(&old.chain[0], &old.chain[1..], unix_time(at))?;
    root_only.verify_client_cert(&new.chain[0], &new.chain[1..], unix_time(at))?;

    // The next start loads the same state.
    let (reloaded, created) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(!created);
    assert_eq!(
        reloaded.trusted_issuing_certs(),
        after.trusted_issuing_certs()
    );

    if openssl_available("rotation_keeps_earlier_certificates_valid") {
        let files = TempDir::new("rotate-openssl")?;
        fs::write(files.join("root.pem"), after.root_cert_pem())?;
        fs::write(files.join("new-issuing.pem"), after.issuing_cert_pem())?;
        fs::write(files.join("old-issuing.pem"), before.issuing_cert_pem())?;
        // Both intermediates offered at once: OpenSSL picks each leaf's own.
        fs::write(
            files.join("both.pem"),
            format!("{}{}", after.issuing_cert_pem(), before.issuing_cert_pem()),
        )?;
        fs::write(files.join("old.pem"), &old.cert_pem)?;
        fs::write(files.join("new.pem"), &new.cert_pem)?;
        for (issuing, leaf) in [
            ("old-issuing.pem", "old.pem"),
            ("new-issuing.pem", "new.pem"),
        ] {
            openssl_verify(files.path(), "root.pem", issuing, &[], "sslclient", leaf)?;
            openssl_verify(files.path(), "root.pem", "both.pem", &[], "sslclient", leaf)?;
        }
        assert!(
            openssl_verify(
                files.path(),
                "root.pem",
                "new-issuing.pem",
                &[],
                "sslclient",
                "old.pem"
            )
            .is_err()
        );
    }
    Ok(())
}

#[test]
fn each_issuing_ca_signs_the_crl_of_what_it_issued() -> TestResult {
    let dir = TempDir::new("rotate-crl")?;
    let keys = FileKeySource::new(dir.path());
    let (before, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(matches!(
        before.issue_crl_for(
            IssuerSlot::Previous,
            &[],
            1,
            now(),
            now() + time::Duration::days(1)
        ),
        Err(PkiError::InvalidRequest(_))
    ));
    let old_lost = issue(&before, "old-lost", now())?;
    let old_fine = issue(&before, "old-fine", now())?;
    let ca = CertificateAuthority::rotate_issuing(dir.path(), &keys, now())?;
    let new_lost = issue(&ca, "new-lost", now())?;
    let new_fine = issue(&ca, "new-fine", now())?;

    let at = now();
    let revoked = |cert: &IssuedCertificate| RevokedSerial {
        serial: cert.serial.clone(),
        revoked_at: at - time::Duration::minutes(1),
        reason: Some(RevocationReason::KeyCompromise),
    };
    // The hub routes each revoked serial to the CRL of the CA that issued it.
    let mut current = Vec::new();
    let mut previous = Vec::new();
    for cert in [&old_lost, &new_lost] {
        match ca.issuer_of(&cert.cert_der) {
            Some(IssuerSlot::Current) => current.push(revoked(cert)),
            Some(IssuerSlot::Previous) => previous.push(revoked(cert)),
            other => return Err(format!("unexpected issuer {other:?}").into()),
        }
    }
    let next = at + time::Duration::hours(1);
    let current_crl = ca.issue_crl(&current, 2, at, next)?;
    let previous_crl = ca.issue_crl_for(IssuerSlot::Previous, &previous, 2, at, next)?;

    let verifier = client_verifier(
        &anchors(&ca),
        vec![current_crl.clone(), previous_crl.clone()],
    )?;
    for fine in [&old_fine, &new_fine] {
        verifier.verify_client_cert(&fine.chain[0], &fine.chain[1..], unix_time(at))?;
    }
    for lost in [&old_lost, &new_lost] {
        assert_eq!(
            verifier
                .verify_client_cert(&lost.chain[0], &lost.chain[1..], unix_time(at))
                .expect_err("revoked"),
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        );
    }

    if !openssl_available("each_issuing_ca_signs_the_crl_of_what_it_issued") {
        return Ok(());
    }
    let files = dir.path();
    fs::write(files.join("current.crl.der"), &current_crl)?;
    fs::write(files.join("previous.crl.der"), &previous_crl)?;
    for crl in ["current", "previous"] {
        openssl(
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &format!("{crl}.crl.der"),
                "-out",
                &format!("{crl}.crl"),
            ],
            files,
        )?;
    }
    // Each CRL verifies with its own issuing CA's key, and not with the other's.
    fs::write(
        files.join("previous-issuing.pem"),
        before.issuing_cert_pem(),
    )?;
    for (crl, issuing, ok) in [
        ("current.crl", ISSUING_CA_CERT_FILE, true),
        ("previous.crl", "previous-issuing.pem", true),
        ("previous.crl", ISSUING_CA_CERT_FILE, false),
    ] {
        let out = openssl(
            &["crl", "-in", crl, "-CAfile", issuing, "-noout", "-verify"],
            files,
        );
        assert_eq!(
            out.is_ok_and(|o| o.contains("verify OK")),
            ok,
            "{crl} with {issuing}"
        );
    }
    fs::write(
        files.join("both-issuing.pem"),
        format!("{}{}", ca.issuing_cert_pem(), before.issuing_cert_pem()),
    )?;
    let crls = ["current.crl", "previous.crl"];
    for (name, cert) in [
        ("old-fine", &old_fine),
        ("new-fine", &new_fine),
        ("old-lost", &old_lost),
        ("new-lost", &new_lost),
    ] {
        let leaf = format!("{name}.pem");
        fs::write(files.join(&leaf), &cert.cert_pem)?;
        let result = openssl_verify(
            files,
            ROOT_CA_CERT_FILE,
            "both-issuing.pem",
            &crls,
            "sslclient",
            &leaf,
        );
        if name.ends_with("lost") {
            let err = result.expect_err("revoked").to_string();
            assert!(err.contains("certificate revoked"), "{name}: {err}");
        } else {
            result?;
        }
    }
    Ok(())
}

#[test]
fn only_one_previous_issuing_ca_is_kept() -> TestResult {
    let dir = TempDir::new("rotate-twice")?;
    let keys = FileKeySource::new(dir.path());
    let (first, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let rotated_at = now() + time::Duration::days(10);
    let second = CertificateAuthority::rotate_issuing(dir.path(), &keys, rotated_at)?;

    // Rotating again would drop the previous CA while its certificates may be in use.
    let err = CertificateAuthority::rotate_issuing(dir.path(), &keys, rotated_at)
        .expect_err("previous still trusted");
    assert!(
        matches!(&err, PkiError::Misconfigured(m) if m.contains("previous issuing CA")),
        "{err:?}"
    );
    assert!(
        !dir.join(ISSUING_CA_PENDING_KEY_FILE).exists(),
        "refused before creating a key"
    );

    // Once it has expired, the next rotation discards it by itself; loading ignores it.
    let later = first.issuing_not_after() + time::Duration::days(1);
    let (loaded_later, _) = CertificateAuthority::load_or_create(dir.path(), later)?;
    assert_eq!(
        loaded_later.trusted_issuing_certs(),
        [second.issuing_cert_der()]
    );
    let old_of_second = issue(&second, "d", later - time::Duration::days(2))?;
    let third = CertificateAuthority::rotate_issuing(dir.path(), &keys, later)?;
    assert_eq!(
        third.trusted_issuing_certs(),
        [third.issuing_cert_der(), second.issuing_cert_der()]
    );
    assert_eq!(
        third.issuer_of(&old_of_second.cert_der),
        Some(IssuerSlot::Previous)
    );

    // Or the operator discards it early.
    assert!(CertificateAuthority::discard_previous_issuing(
        dir.path(),
        &keys
    )?);
    assert!(!CertificateAuthority::discard_previous_issuing(
        dir.path(),
        &keys
    )?);
    assert!(!dir.join(ISSUING_CA_PREVIOUS_CERT_FILE).exists());
    assert!(!dir.join(ISSUING_CA_PREVIOUS_KEY_FILE).exists());
    let fourth = CertificateAuthority::rotate_issuing(dir.path(), &keys, later)?;
    assert_eq!(
        fourth.previous_issuing_cert_pem(),
        Some(third.issuing_cert_pem())
    );
    Ok(())
}

#[test]
fn rotation_can_change_the_algorithm() -> TestResult {
    let dir = TempDir::new("rotate-ed25519")?;
    let keys = FileKeySource::new(dir.path());
    let (before, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let old = issue(&before, "old", now())?;
    let after = CertificateAuthority::rotate_issuing_with(
        dir.path(),
        &keys,
        &CaOptions::with_algorithm(KeyAlgorithm::Ed25519),
        now(),
    )?;
    assert_eq!(after.issuing_key_algorithm(), KeyAlgorithm::Ed25519);
    let new = issue(&after, "new", now())?;
    let verifier = client_verifier(&anchors(&after), Vec::new())?;
    for cert in [&old, &new] {
        verifier.verify_client_cert(&cert.cert_der, &[], unix_time(now()))?;
    }
    // The previous CA keeps its own algorithm for its CRL.
    let crl = after.issue_crl_for(
        IssuerSlot::Previous,
        &[],
        1,
        now(),
        now() + time::Duration::days(1),
    )?;
    let (_, parsed) = x509_parser::parse_x509_crl(&crl)?;
    assert_eq!(
        parsed.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    Ok(())
}

/// The offline root rotates the hub's issuing CA with the same three steps that installed
/// the first one.
#[test]
fn offline_rotation() -> TestResult {
    let root_dir = TempDir::new("offline-rotation-root")?;
    let hub = TempDir::new("offline-rotation-hub")?;
    let root = OfflineRoot::create(
        root_dir.path(),
        &FileKeySource::new(root_dir.path()),
        &CaOptions::default(),
        now(),
    )?;
    let keys = FileKeySource::new(hub.path());
    let install = || -> Result<CertificateAuthority, PkiError> {
        let request = CertificateAuthority::issuing_request(hub.path(), &keys, now())?;
        let cert = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
        CertificateAuthority::import_issuing(hub.path(), &keys, &cert, root.root_cert_pem(), now())
    };
    let first = install()?;
    assert_eq!(first.trusted_issuing_certs().len(), 1);
    let old = issue(&first, "old", now())?;
    let second = install()?;
    assert_eq!(
        second.trusted_issuing_certs(),
        [second.issuing_cert_der(), first.issuing_cert_der()]
    );
    let verifier = client_verifier(&anchors(&second), Vec::new())?;
    verifier.verify_client_cert(&old.cert_der, &[], unix_time(now()))?;
    // A hub that has a previous CA refuses a third request before making a key.
    assert!(CertificateAuthority::issuing_request(hub.path(), &keys, now()).is_err());
    Ok(())
}

/// Replays each point where a rotation can be interrupted: the directory loads (as the old
/// CA before the commit, as the new one after it), and the next step tidies it up.
#[test]
fn interrupted_rotations_load_and_complete() -> TestResult {
    type Stage = fn(&Path) -> std::io::Result<()>;
    // Each case: what the interrupted install did, and whether it got past the commit.
    let cases: [(&str, Stage, bool); 5] = [
        (
            "previous written",
            |d| {
                fs::copy(
                    d.join(ISSUING_CA_CERT_FILE),
                    d.join(ISSUING_CA_PREVIOUS_CERT_FILE),
                )
                .map(|_| ())
            },
            false,
        ),
        (
            "committed",
            |d| {
                fs::copy(
                    d.join(ISSUING_CA_CERT_FILE),
                    d.join(ISSUING_CA_PREVIOUS_CERT_FILE),
                )?;
                fs::copy(d.join("new.crt"), d.join(ISSUING_CA_CERT_FILE)).map(|_| ())
            },
            true,
        ),
        (
            "current key linked to previous",
            |d| {
                fs::copy(
                    d.join(ISSUING_CA_CERT_FILE),
                    d.join(ISSUING_CA_PREVIOUS_CERT_FILE),
                )?;
                fs::copy(d.join("new.crt"), d.join(ISSUING_CA_CERT_FILE))?;
                fs::hard_link(
                    d.join(ISSUING_CA_KEY_FILE),
                    d.join(ISSUING_CA_PREVIOUS_KEY_FILE),
                )
            },
            true,
        ),
        (
            "current key moved to previous",
            |d| {
                fs::copy(
                    d.join(ISSUING_CA_CERT_FILE),
                    d.join(ISSUING_CA_PREVIOUS_CERT_FILE),
                )?;
                fs::copy(d.join("new.crt"), d.join(ISSUING_CA_CERT_FILE))?;
                fs::rename(
                    d.join(ISSUING_CA_KEY_FILE),
                    d.join(ISSUING_CA_PREVIOUS_KEY_FILE),
                )
            },
            true,
        ),
        (
            "pending key linked to current",
            |d| {
                fs::copy(
                    d.join(ISSUING_CA_CERT_FILE),
                    d.join(ISSUING_CA_PREVIOUS_CERT_FILE),
                )?;
                fs::copy(d.join("new.crt"), d.join(ISSUING_CA_CERT_FILE))?;
                fs::rename(
                    d.join(ISSUING_CA_KEY_FILE),
                    d.join(ISSUING_CA_PREVIOUS_KEY_FILE),
                )?;
                fs::hard_link(
                    d.join(ISSUING_CA_PENDING_KEY_FILE),
                    d.join(ISSUING_CA_KEY_FILE),
                )
            },
            true,
        ),
    ];
    for (name, interrupt, committed) in cases {
        let dir = TempDir::new("interrupted")?;
        let keys = FileKeySource::new(dir.path());
        let (old, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
        let request = CertificateAuthority::issuing_request(dir.path(), &keys, now())?;
        let root = OfflineRoot::load(dir.path(), &keys, now())?;
        let new_pem = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
        fs::write(dir.join("new.crt"), &new_pem)?;
        interrupt(dir.path())?;
        fs::remove_file(dir.join("new.crt"))?;

        let (loaded, _) = CertificateAuthority::load_or_create(dir.path(), now())
            .map_err(|e| format!("{name}: {e}"))?;
        let expected = if committed {
            vec![loaded.issuing_cert_der(), old.issuing_cert_der()]
        } else {
            vec![old.issuing_cert_der()]
        };
        assert_eq!(loaded.trusted_issuing_certs(), expected, "{name}");
        if committed {
            assert_ne!(loaded.issuing_cert_der(), old.issuing_cert_der(), "{name}");
        }
        // Retrying the import completes it (or finds it done) and leaves a tidy directory.
        let done = CertificateAuthority::import_issuing(
            dir.path(),
            &keys,
            &new_pem,
            root.root_cert_pem(),
            now(),
        )
        .map_err(|e| format!("{name}: {e}"))?;
        assert_eq!(done.trusted_issuing_certs().len(), 2, "{name}");
        assert_eq!(
            done.previous_issuing_cert_pem(),
            Some(old.issuing_cert_pem()),
            "{name}"
        );
        assert!(!dir.join(ISSUING_CA_PENDING_KEY_FILE).exists(), "{name}");
        let key_pub = |file: &str| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let pem = fs::read_to_string(dir.join(file))?;
            Ok(rcgen::PublicKeyData::subject_public_key_info(
                &rcgen::KeyPair::from_pem(&pem)?,
            ))
        };
        let cert_pub = |pem: &str| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            use rustls::pki_types::pem::PemObject;
            let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
            let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
            Ok(cert.public_key().raw.to_vec())
        };
        assert_eq!(
            key_pub(ISSUING_CA_KEY_FILE)?,
            cert_pub(done.issuing_cert_pem())?,
            "{name}"
        );
        assert_eq!(
            key_pub(ISSUING_CA_PREVIOUS_KEY_FILE)?,
            cert_pub(old.issuing_cert_pem())?,
            "{name}"
        );
    }
    Ok(())
}
