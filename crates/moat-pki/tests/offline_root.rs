//! API tests for the offline-root ceremony: a root CA created in a directory of its own, an
//! issuing CA requested by the hub, signed by the root and imported, and a hub that runs
//! without the root key.

mod common;

use std::fs;
use std::path::Path;

use common::{
    P256, P384, RSA2048, TempDir, TestResult, client_verifier, device, now, openssl,
    openssl_available, openssl_csr, openssl_verify, unix_time,
};
use moat_pki::{
    CaOptions, CertificateAuthority, DEFAULT_DEVICE_CERT_VALIDITY, FileKeySource,
    ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE, ISSUING_CA_PENDING_KEY_FILE, ISSUING_CA_VALIDITY,
    IssuingRequest, KeyAlgorithm, OfflineRoot, Passphrase, PkiError, ROOT_CA_CERT_FILE,
    ROOT_CA_KEY_FILE,
};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::X509Certificate;

const ROOT_SECRET: &str = "offline root passphrase";

fn root_keys(dir: &Path) -> FileKeySource {
    FileKeySource::with_passphrase(dir, Passphrase::new(ROOT_SECRET).expect("long enough"))
}

fn parse_pem(pem: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

fn key_id(cert: &X509Certificate<'_>, authority: bool) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) if !authority => Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

/// An offline root in its own directory and an empty hub directory.
struct Ceremony {
    root_dir: TempDir,
    hub_dir: TempDir,
}

impl Ceremony {
    fn new(
        name: &str,
        options: &CaOptions,
    ) -> Result<(Self, OfflineRoot), Box<dyn std::error::Error>> {
        let root_dir = TempDir::new(&format!("{name}-root"))?;
        let hub_dir = TempDir::new(&format!("{name}-hub"))?;
        let root =
            OfflineRoot::create(root_dir.path(), &root_keys(root_dir.path()), options, now())?;
        Ok((Self { root_dir, hub_dir }, root))
    }

    fn hub(&self) -> &Path {
        self.hub_dir.path()
    }

    fn hub_keys(&self) -> FileKeySource {
        FileKeySource::new(self.hub())
    }

    fn request(&self) -> Result<IssuingRequest, PkiError> {
        CertificateAuthority::issuing_request(self.hub(), &self.hub_keys(), now())
    }

    /// The root as the `sign-issuing` command loads it.
    fn root(&self) -> Result<OfflineRoot, PkiError> {
        OfflineRoot::load(
            self.root_dir.path(),
            &root_keys(self.root_dir.path()),
            now(),
        )
    }
}

#[test]
fn offline_root_ceremony() -> TestResult {
    let (ceremony, root) = Ceremony::new("ceremony", &CaOptions::default())?;
    let root_dir = ceremony.root_dir.path();
    assert!(
        fs::read_to_string(root_dir.join(ROOT_CA_KEY_FILE))?
            .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    );
    assert_eq!(
        fs::read_to_string(root_dir.join(ROOT_CA_CERT_FILE))?,
        root.root_cert_pem()
    );
    // A root is never replaced.
    assert!(matches!(
        OfflineRoot::create(root_dir, &root_keys(root_dir), &CaOptions::default(), now()),
        Err(PkiError::Misconfigured(_))
    ));

    // The hub asks for its issuing CA; until it is imported the hub does not start (and does
    // not create a CA of its own instead).
    let request = ceremony.request()?;
    assert!(request.key_created);
    assert_eq!(request.algorithm, KeyAlgorithm::EcdsaP256Sha256);
    assert!(ceremony.hub().join(ISSUING_CA_PENDING_KEY_FILE).exists());
    let err = CertificateAuthority::load_or_create(ceremony.hub(), now()).expect_err("pending");
    assert!(err.to_string().contains("awaits its certificate"), "{err}");
    assert!(!ceremony.hub().join(ROOT_CA_CERT_FILE).exists());
    // Asking again reuses the pending key.
    let again = ceremony.request()?;
    assert!(!again.key_created);

    let issuing_pem =
        ceremony
            .root()?
            .sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
    let issuing_der = parse_pem(&issuing_pem)?;
    let (_, issuing) = x509_parser::parse_x509_certificate(&issuing_der)?;
    let root_der = root.root_cert_der();
    let (_, root_x509) = x509_parser::parse_x509_certificate(&root_der)?;
    let bc = issuing.basic_constraints()?.ok_or("basicConstraints")?;
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = issuing.key_usage()?.ok_or("keyUsage")?;
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(issuing.name_constraints()?.is_none());
    assert_eq!(issuing.issuer(), root_x509.subject());
    assert_eq!(key_id(&issuing, true), key_id(&root_x509, false));
    let cn = issuing
        .subject()
        .iter_common_name()
        .next()
        .ok_or("CN")?
        .as_str()?;
    assert!(cn.starts_with("Moat Issuing CA "), "{cn}");

    let ca = CertificateAuthority::import_issuing(
        ceremony.hub(),
        &ceremony.hub_keys(),
        &issuing_pem,
        root.root_cert_pem(),
        now(),
    )?;
    assert!(!ca.root_key_available());
    assert_eq!(ca.issuing_cert_der().as_ref(), issuing_der.as_slice());
    assert_eq!(ca.root_cert_der(), root.root_cert_der());
    assert!(!ceremony.hub().join(ROOT_CA_KEY_FILE).exists());
    assert!(!ceremony.hub().join(ISSUING_CA_PENDING_KEY_FILE).exists());
    assert!(ceremony.hub().join(ISSUING_CA_KEY_FILE).exists());
    // Importing the same certificate again changes nothing.
    CertificateAuthority::import_issuing(
        ceremony.hub(),
        &ceremony.hub_keys(),
        &issuing_pem,
        root.root_cert_pem(),
        now(),
    )?;

    // Every later start loads without the root key, and issues.
    let (hub, created) = CertificateAuthority::load_or_create(ceremony.hub(), now())?;
    assert!(!created && !hub.root_key_available());
    let at = now();
    let issued = hub
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    let verifier = client_verifier(&[hub.issuing_cert_der(), hub.root_cert_der()], Vec::new())?;
    verifier.verify_client_cert(&issued.cert_der, &[], unix_time(at))?;
    // The hub without its root key cannot sign a new issuing CA by itself.
    let err = CertificateAuthority::rotate_issuing(ceremony.hub(), &ceremony.hub_keys(), now())
        .expect_err("offline root");
    assert!(
        err.to_string()
            .contains("root CA key is not on this machine"),
        "{err}"
    );

    if openssl_available("offline_root_ceremony") {
        let files = ceremony.hub();
        fs::write(files.join("request.csr"), &request.csr_pem)?;
        let out = openssl(&["req", "-in", "request.csr", "-noout", "-verify"], files)?;
        assert!(out.contains("verify OK"), "{out}");
        fs::write(files.join("d1.pem"), &issued.cert_pem)?;
        openssl_verify(
            files,
            ROOT_CA_CERT_FILE,
            ISSUING_CA_CERT_FILE,
            &[],
            "sslclient",
            "d1.pem",
        )?;
        let passin = format!("pass:{ROOT_SECRET}");
        openssl(
            &[
                "pkey",
                "-in",
                ROOT_CA_KEY_FILE,
                "-passin",
                &passin,
                "-noout",
            ],
            root_dir,
        )?;
    }
    Ok(())
}

#[test]
fn ed25519_offline_root_with_a_p256_issuing_ca() -> TestResult {
    let (ceremony, root) = Ceremony::new(
        "ceremony-ed",
        &CaOptions::with_algorithm(KeyAlgorithm::Ed25519),
    )?;
    assert_eq!(root.key_algorithm(), KeyAlgorithm::Ed25519);
    let request = ceremony.request()?;
    let issuing_pem = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
    let ca = CertificateAuthority::import_issuing(
        ceremony.hub(),
        &ceremony.hub_keys(),
        &issuing_pem,
        root.root_cert_pem(),
        now(),
    )?;
    assert_eq!(ca.issuing_key_algorithm(), KeyAlgorithm::EcdsaP256Sha256);
    let at = now();
    let issued = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    client_verifier(&[ca.root_cert_der()], Vec::new())?.verify_client_cert(
        &issued.chain[0],
        &issued.chain[1..],
        unix_time(at),
    )?;
    if openssl_available("ed25519_offline_root_with_a_p256_issuing_ca") {
        fs::write(ceremony.hub().join("d1.pem"), &issued.cert_pem)?;
        openssl_verify(
            ceremony.hub(),
            ROOT_CA_CERT_FILE,
            ISSUING_CA_CERT_FILE,
            &[],
            "sslclient",
            "d1.pem",
        )?;
    }
    Ok(())
}

#[test]
fn a_hub_created_with_its_root_key_runs_without_it() -> TestResult {
    let dir = TempDir::new("root-key-removed")?;
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(ca.root_key_available());
    // The operator moves the root key off the hub.
    fs::remove_file(dir.join(ROOT_CA_KEY_FILE))?;
    let (hub, created) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(!created && !hub.root_key_available());
    assert_eq!(hub.issuing_cert_der(), ca.issuing_cert_der());
    hub.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;
    // A root certificate alone is still an incomplete CA, and a root key of another CA is
    // still refused.
    let other = TempDir::new("root-key-other")?;
    CertificateAuthority::load_or_create(other.path(), now())?;
    fs::copy(other.join(ROOT_CA_KEY_FILE), dir.join(ROOT_CA_KEY_FILE))?;
    assert!(matches!(
        CertificateAuthority::load_or_create(dir.path(), now()),
        Err(PkiError::KeyMismatch { .. })
    ));
    Ok(())
}

#[test]
fn sign_issuing_takes_only_key_and_subject_and_refuses_bad_requests() -> TestResult {
    let (ceremony, root) = Ceremony::new("sign-refuse", &CaOptions::default())?;
    let request = ceremony.request()?;

    // Validity is clamped to the root's.
    let long = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY * 10, now())?;
    let long_der = parse_pem(&long)?;
    let (_, long_cert) = x509_parser::parse_x509_certificate(&long_der)?;
    assert_eq!(
        long_cert.validity().not_after.to_datetime(),
        root.not_after()
    );
    assert!(matches!(
        root.sign_issuing(&request.csr_pem, std::time::Duration::ZERO, now()),
        Err(PkiError::InvalidRequest(_))
    ));

    // A request whose signature does not verify.
    let csr_der = {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject;
        CertificateSigningRequestDer::from_pem_slice(request.csr_pem.as_bytes())?
            .as_ref()
            .to_vec()
    };
    let mut tampered = csr_der.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    let tampered_pem = pem("CERTIFICATE REQUEST", &tampered);
    assert!(matches!(
        root.sign_issuing(&tampered_pem, ISSUING_CA_VALIDITY, now()),
        Err(PkiError::InvalidCertificateRequest(_))
    ));
    for garbage in [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        assert!(
            root.sign_issuing(garbage, ISSUING_CA_VALIDITY, now())
                .is_err(),
            "{garbage}"
        );
    }
    let huge = "A".repeat(1 << 17);
    assert!(matches!(
        root.sign_issuing(&huge, ISSUING_CA_VALIDITY, now()),
        Err(PkiError::TooLarge { .. })
    ));

    if !openssl_available("sign_issuing_takes_only_key_and_subject_and_refuses_bad_requests") {
        return Ok(());
    }
    let files = ceremony.hub();
    let csr_pem = |name: &str,
                   key: &[&str],
                   subject: &str,
                   extensions: &[&str]|
     -> Result<String, Box<dyn std::error::Error>> {
        let key_file = format!("{name}.key");
        let csr_file = format!("{name}.csr");
        let mut args = vec![
            "req", "-new", "-nodes", "-keyout", &key_file, "-subj", subject,
        ];
        args.extend(key);
        for ext in extensions {
            args.extend(["-addext", ext]);
        }
        args.extend(["-out", &csr_file]);
        openssl(&args, files)?;
        Ok(fs::read_to_string(files.join(csr_file))?)
    };
    // A greedy request: its extensions are ignored, its subject kept exactly.
    let greedy = csr_pem(
        "greedy",
        P256,
        "/C=DE/O=Example Ltd/OU=Plant 7/CN=Example Issuing CA",
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:5",
            "subjectAltName=DNS:evil.example",
            "keyUsage=critical,digitalSignature,keyCertSign",
            "nameConstraints=permitted;DNS:example.com",
        ],
    )?;
    let signed = root.sign_issuing(&greedy, ISSUING_CA_VALIDITY, now())?;
    let signed_der = parse_pem(&signed)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&signed_der)?;
    assert_eq!(
        cert.basic_constraints()?
            .ok_or("bc")?
            .value
            .path_len_constraint,
        Some(0)
    );
    assert!(cert.subject_alternative_name()?.is_none());
    assert!(cert.name_constraints()?.is_none());
    let ku = cert.key_usage()?.ok_or("ku")?.value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    fs::write(files.join("greedy.crt"), &signed)?;
    let subject = openssl(&["x509", "-in", "greedy.crt", "-noout", "-subject"], files)?;
    assert_eq!(
        subject.trim(),
        "subject=C = DE, O = Example Ltd, OU = Plant 7, CN = Example Issuing CA"
    );

    // Keys an issuing CA does not use.
    for (name, key) in [("p384", P384), ("rsa", RSA2048)] {
        let csr = csr_pem(name, key, "/CN=Issuing", &[])?;
        assert!(
            matches!(
                root.sign_issuing(&csr, ISSUING_CA_VALIDITY, now()),
                Err(PkiError::UnsupportedKey(_))
            ),
            "{name}"
        );
    }
    // Subjects it will not sign: no CN, an unknown attribute, a repeated one, the root's own.
    fs::write(files.join("root.crt"), root.root_cert_pem())?;
    let root_subj = openssl(
        &[
            "x509", "-in", "root.crt", "-noout", "-subject", "-nameopt", "compat",
        ],
        files,
    )?;
    let root_subj = root_subj.trim().trim_start_matches("subject=").to_owned();
    for (name, subject) in [
        ("no-cn", "/O=Moat".to_owned()),
        ("email", "/CN=Issuing/emailAddress=a@b.example".to_owned()),
        ("twice", "/CN=Issuing/OU=a/OU=b".to_owned()),
        ("root-name", root_subj),
    ] {
        let csr = csr_pem(name, P256, &subject, &[])?;
        assert!(
            matches!(
                root.sign_issuing(&csr, ISSUING_CA_VALIDITY, now()),
                Err(PkiError::InvalidCertificateRequest(_))
            ),
            "{name}: {subject}"
        );
    }
    // openssl_csr writes DER; the PEM path is what sign-issuing reads, DER is refused.
    let der = openssl_csr(files, "der", P256, "Issuing", &[])?;
    assert!(
        root.sign_issuing(&String::from_utf8_lossy(&der), ISSUING_CA_VALIDITY, now())
            .is_err()
    );
    Ok(())
}

#[test]
fn import_refuses_what_does_not_belong() -> TestResult {
    let (ceremony, root) = Ceremony::new("import-refuse", &CaOptions::default())?;
    let hub = ceremony.hub();
    let keys = ceremony.hub_keys();

    // No pending key yet.
    let stray = TempDir::new("import-stray-hub")?;
    let stray_request = CertificateAuthority::issuing_request(
        stray.path(),
        &FileKeySource::new(stray.path()),
        now(),
    )?;
    let stray_cert = root.sign_issuing(&stray_request.csr_pem, ISSUING_CA_VALIDITY, now())?;
    let err =
        CertificateAuthority::import_issuing(hub, &keys, &stray_cert, root.root_cert_pem(), now())
            .expect_err("nothing pending");
    assert!(
        err.to_string().contains("no pending issuing CA key"),
        "{err}"
    );

    let request = ceremony.request()?;
    // A certificate for another hub's key.
    let err =
        CertificateAuthority::import_issuing(hub, &keys, &stray_cert, root.root_cert_pem(), now())
            .expect_err("another key");
    assert!(
        matches!(&err, PkiError::InvalidRequest(m) if m.contains("pending key")),
        "{err:?}"
    );

    // Signed by another root, or presented with another root.
    let other_dir = TempDir::new("import-other-root")?;
    let other = OfflineRoot::create(
        other_dir.path(),
        &FileKeySource::new(other_dir.path()),
        &CaOptions::default(),
        now(),
    )?;
    let by_other = other.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
    let err =
        CertificateAuthority::import_issuing(hub, &keys, &by_other, root.root_cert_pem(), now())
            .expect_err("wrong root");
    assert!(
        matches!(&err, PkiError::InvalidRequest(m) if m.contains("root")),
        "{err:?}"
    );
    let good = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now())?;
    assert!(
        CertificateAuthority::import_issuing(hub, &keys, &good, other.root_cert_pem(), now())
            .is_err()
    );
    // Expired, or not a certificate at all.
    let old = now() - time::Duration::days(30);
    let expired = root.sign_issuing(
        &request.csr_pem,
        std::time::Duration::from_secs(86_400),
        old,
    )?;
    let err =
        CertificateAuthority::import_issuing(hub, &keys, &expired, root.root_cert_pem(), now())
            .expect_err("expired");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(
        CertificateAuthority::import_issuing(hub, &keys, "garbage", root.root_cert_pem(), now())
            .is_err()
    );
    assert!(CertificateAuthority::import_issuing(hub, &keys, &good, "garbage", now()).is_err());
    // The root certificate in place of the issuing one.
    assert!(
        CertificateAuthority::import_issuing(
            hub,
            &keys,
            root.root_cert_pem(),
            root.root_cert_pem(),
            now()
        )
        .is_err()
    );

    // Nothing was installed by the refusals; the good one still imports.
    assert!(!hub.join(ROOT_CA_CERT_FILE).exists() && !hub.join(ISSUING_CA_CERT_FILE).exists());
    assert!(hub.join(ISSUING_CA_PENDING_KEY_FILE).exists());
    CertificateAuthority::import_issuing(hub, &keys, &good, root.root_cert_pem(), now())?;

    // Later imports must come under the same root.
    let next = ceremony.request()?;
    let next_by_other = other.sign_issuing(&next.csr_pem, ISSUING_CA_VALIDITY, now())?;
    let err = CertificateAuthority::import_issuing(
        hub,
        &keys,
        &next_by_other,
        other.root_cert_pem(),
        now(),
    )
    .expect_err("another root");
    assert!(
        matches!(&err, PkiError::InvalidRequest(m) if m.contains("not the hub's root")),
        "{err:?}"
    );
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 0x3f])
            } else {
                '='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}
