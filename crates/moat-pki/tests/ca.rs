//! API tests: CA creation and loading, certificate profiles, chain verification with rustls'
//! webpki and with the OpenSSL command line.

use std::error::Error;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moat_pki::{
    CLOCK_SKEW_ALLOWANCE, CertificateAuthority, CertifiedKey, DEFAULT_DEVICE_CERT_VALIDITY,
    DeviceId, ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE, MAX_DEVICE_CERT_VALIDITY,
    MAX_SERVER_NAMES, PkiError, ROOT_CA_CERT_FILE, ROOT_CA_KEY_FILE, device_id_from_certificate,
    write_private_file,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

type TestResult = Result<(), Box<dyn Error>>;

/// A unique directory under the system temp dir, removed on drop. Not created: the CA
/// creates it (with mode 0700).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self(std::env::temp_dir().join(format!(
            "moat-pki-{name}-{}-{n}-{nanos}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .expect("a certificate we issued parses")
        .1
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).expect("valid device id")
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(t.unix_timestamp()).expect("after 1970"),
    ))
}

fn truncated(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("0 is a valid nanosecond")
}

// ---------------------------------------------------------------------------------------
// Creating and loading

#[test]
fn created_ca_reloads_identically_with_private_permissions() -> TestResult {
    let dir = TempDir::new("reload");
    let (ca, created) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(created);
    assert_eq!(mode(dir.path()), 0o700);
    assert_eq!(mode(&dir.join(ROOT_CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(ISSUING_CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(ROOT_CA_CERT_FILE)), 0o644);
    assert_eq!(mode(&dir.join(ISSUING_CA_CERT_FILE)), 0o644);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(dir.path())?.count(), 4);

    let (again, created) = CertificateAuthority::load_or_create(dir.path(), now())?;
    assert!(!created);
    assert_eq!(ca.root_cert_pem(), again.root_cert_pem());
    assert_eq!(ca.root_cert_der(), again.root_cert_der());
    assert_eq!(ca.issuing_cert_der(), again.issuing_cert_der());
    assert_eq!(
        ca.root_cert_pem(),
        fs::read_to_string(dir.join(ROOT_CA_CERT_FILE))?
    );
    Ok(())
}

#[test]
fn root_and_issuing_ca_profiles() -> TestResult {
    let dir = TempDir::new("profiles");
    let at = now();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), at)?;
    let root_der = ca.root_cert_der();
    let root = parse(&root_der);
    let issuing_der = ca.issuing_cert_der();
    let issuing = parse(&issuing_der);

    let bc = root
        .basic_constraints()?
        .expect("root has basicConstraints");
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(1));
    let ku = root.key_usage()?.expect("root has keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature() && !ku.key_encipherment());
    assert_eq!(root.subject(), root.issuer());
    let root_cn = root
        .subject()
        .iter_common_name()
        .next()
        .expect("root CN")
        .as_str()?
        .to_owned();
    assert!(root_cn.starts_with("Moat Root CA "), "{root_cn}");
    let root_ski = subject_key_id(&root).expect("root has a SKI");
    let validity = root.validity();
    assert_eq!(
        validity.not_before.to_datetime(),
        truncated(at) - CLOCK_SKEW_ALLOWANCE
    );
    let years = (validity.not_after.to_datetime() - truncated(at)).whole_days() / 365;
    assert_eq!(years, 20);

    let bc = issuing
        .basic_constraints()?
        .expect("issuing CA has basicConstraints");
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert_eq!(issuing.issuer(), root.subject());
    assert_eq!(authority_key_id(&issuing), Some(root_ski));
    assert!(subject_key_id(&issuing).is_some());
    let years = (issuing.validity().not_after.to_datetime() - truncated(at)).whole_days() / 365;
    assert_eq!(years, 5);
    assert_eq!(
        ca.issuing_not_after(),
        issuing.validity().not_after.to_datetime()
    );

    // Two installations never share a CA name.
    let other_dir = TempDir::new("profiles-other");
    let (other, _) = CertificateAuthority::load_or_create(other_dir.path(), at)?;
    let other_der = other.root_cert_der();
    assert_ne!(parse(&other_der).subject(), root.subject());
    Ok(())
}

#[test]
fn group_readable_key_is_refused() -> TestResult {
    for key in [ROOT_CA_KEY_FILE, ISSUING_CA_KEY_FILE] {
        let dir = TempDir::new("perm");
        CertificateAuthority::load_or_create(dir.path(), now())?;
        let key_path = dir.join(key);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644))?;
        let err = CertificateAuthority::load_or_create(dir.path(), now())
            .expect_err("a 0644 key must be refused");
        match &err {
            PkiError::InsecurePermissions { path, mode, .. } => {
                assert_eq!(path, &key_path);
                assert_eq!(*mode, 0o644);
            }
            other => panic!("unexpected error {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", key_path.display())),
            "{message}"
        );
    }
    Ok(())
}

#[test]
fn world_writable_directory_is_refused() -> TestResult {
    let dir = TempDir::new("dirperm");
    CertificateAuthority::load_or_create(dir.path(), now())?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))?;
    let err = CertificateAuthority::load_or_create(dir.path(), now()).expect_err("refused");
    assert!(
        matches!(&err, PkiError::InsecurePermissions { path, .. } if path == dir.path()),
        "{err:?}"
    );
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[test]
fn incomplete_ca_is_reported_not_replaced() -> TestResult {
    let dir = TempDir::new("partial");
    CertificateAuthority::load_or_create(dir.path(), now())?;
    let root_key = fs::read(dir.join(ROOT_CA_KEY_FILE))?;
    fs::remove_file(dir.join(ISSUING_CA_CERT_FILE))?;
    let err = CertificateAuthority::load_or_create(dir.path(), now()).expect_err("refused");
    let message = err.to_string();
    assert!(matches!(err, PkiError::Misconfigured(_)), "{err:?}");
    assert!(
        message.contains("missing") && message.contains(ISSUING_CA_CERT_FILE),
        "{message}"
    );
    assert_eq!(fs::read(dir.join(ROOT_CA_KEY_FILE))?, root_key);
    Ok(())
}

#[test]
fn files_from_another_ca_are_refused_naming_the_file() -> TestResult {
    let a = TempDir::new("mix-a");
    let b = TempDir::new("mix-b");
    CertificateAuthority::load_or_create(a.path(), now())?;
    CertificateAuthority::load_or_create(b.path(), now())?;
    let copy = |name: &str| fs::copy(b.join(name), a.join(name)).map(|_| ());
    let restore = |name: &str, bytes: &[u8]| write_private_file(&a.join(name), bytes);
    let originals: Vec<(&str, Vec<u8>)> = [
        ROOT_CA_CERT_FILE,
        ROOT_CA_KEY_FILE,
        ISSUING_CA_CERT_FILE,
        ISSUING_CA_KEY_FILE,
    ]
    .into_iter()
    .map(|n| Ok((n, fs::read(a.join(n))?)))
    .collect::<Result<_, std::io::Error>>()?;
    let restore_all = || -> TestResult {
        for (name, bytes) in &originals {
            restore(name, bytes)?;
        }
        Ok(())
    };

    // Issuing CA certificate of another installation: wrong issuer.
    copy(ISSUING_CA_CERT_FILE)?;
    let err = CertificateAuthority::load_or_create(a.path(), now()).expect_err("refused");
    assert!(
        matches!(&err, PkiError::Corrupt { path, .. } if path == &a.join(ISSUING_CA_CERT_FILE)),
        "{err:?}"
    );
    restore_all()?;

    // Root key of another installation.
    copy(ROOT_CA_KEY_FILE)?;
    let err = CertificateAuthority::load_or_create(a.path(), now()).expect_err("refused");
    assert!(
        matches!(&err, PkiError::KeyMismatch { key, certificate }
            if key.ends_with(ROOT_CA_KEY_FILE) && certificate == &a.join(ROOT_CA_CERT_FILE)),
        "{err:?}"
    );
    restore_all()?;

    // Issuing key of another installation.
    copy(ISSUING_CA_KEY_FILE)?;
    let err = CertificateAuthority::load_or_create(a.path(), now()).expect_err("refused");
    assert!(matches!(&err, PkiError::KeyMismatch { .. }), "{err:?}");
    restore_all()?;

    // A damaged certificate.
    fs::write(a.join(ROOT_CA_CERT_FILE), "garbage")?;
    let err = CertificateAuthority::load_or_create(a.path(), now()).expect_err("refused");
    assert!(
        matches!(&err, PkiError::Corrupt { path, .. } if path == &a.join(ROOT_CA_CERT_FILE)),
        "{err:?}"
    );
    restore_all()?;

    CertificateAuthority::load_or_create(a.path(), now())?;
    Ok(())
}

#[test]
fn expired_issuing_ca_is_refused() -> TestResult {
    let dir = TempDir::new("expired");
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let later = ca.issuing_not_after() + time::Duration::seconds(1);
    let err = CertificateAuthority::load_or_create(dir.path(), later).expect_err("refused");
    assert!(matches!(err, PkiError::Misconfigured(_)), "{err:?}");
    let err = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, later)
        .expect_err("refused");
    assert!(matches!(err, PkiError::Misconfigured(_)), "{err:?}");
    Ok(())
}

#[test]
fn ca_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
    assert_send_sync::<moat_pki::IssuedCertificate>();
    assert_send_sync::<CertifiedKey>();
    assert_send_sync::<moat_pki::CertificateRequest>();
    assert_send_sync::<moat_pki::CertificateFacts>();
    assert_send_sync::<PkiError>();
}

#[test]
fn debug_output_holds_no_key_material() -> TestResult {
    let dir = TempDir::new("debug");
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let issued = ca.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;
    let key_body = issued.key.pem().lines().nth(1).expect("PEM body");
    for debug in [format!("{ca:?}"), format!("{issued:?}")] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains(key_body), "{debug}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Device certificates

#[test]
fn device_certificate_profile() -> TestResult {
    let dir = TempDir::new("device");
    let at = now();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), at)?;
    let id = device("sensor-01.line_2");
    let CertifiedKey {
        certificate: issued,
        key,
        ..
    } = ca.issue_device_certificate(&id, DEFAULT_DEVICE_CERT_VALIDITY, at)?;
    let cert = parse(&issued.cert_der);

    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str())
        .collect::<Result<_, _>>()?;
    assert_eq!(cn, ["sensor-01.line_2"]);
    let san = cert.subject_alternative_name()?.expect("SAN present").value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("urn:moat:device:sensor-01.line_2")]
    );
    let eku = cert.extended_key_usage()?.expect("EKU present").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    let bc = cert
        .basic_constraints()?
        .expect("explicit basicConstraints");
    assert!(!bc.value.ca);
    let ku = cert.key_usage()?.expect("keyUsage present").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment());

    let at = truncated(at);
    assert_eq!(
        cert.validity().not_before.to_datetime(),
        at - CLOCK_SKEW_ALLOWANCE
    );
    assert_eq!(
        cert.validity().not_after.to_datetime(),
        at + DEFAULT_DEVICE_CERT_VALIDITY
    );
    assert_eq!(issued.not_after, cert.validity().not_after.to_datetime());
    assert_eq!(issued.not_before, cert.validity().not_before.to_datetime());

    // Serial: positive, 16 bytes, as reported, fresh each time.
    assert_eq!(cert.raw_serial(), issued.serial.as_slice());
    assert_eq!(issued.serial.len(), 16);
    assert!(issued.serial[0] < 0x80);
    let second = ca
        .issue_device_certificate(&id, DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    assert_ne!(second.serial, issued.serial);

    // Chain building aids: AKI is the issuing CA's SKI.
    let issuing_der = ca.issuing_cert_der();
    let issuing = parse(&issuing_der);
    assert_eq!(authority_key_id(&cert), subject_key_id(&issuing));
    assert_eq!(cert.issuer(), issuing.subject());

    // The chain and key are what a TLS client needs.
    assert_eq!(
        issued.chain,
        [issued.cert_der.clone(), ca.issuing_cert_der()]
    );
    let pem_chain: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()?;
    assert_eq!(pem_chain, issued.chain);
    assert!(key.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    let key_pair = rcgen::KeyPair::from_pem(key.pem())?;
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&key_pair),
        cert.public_key().subject_public_key.data.as_ref()
    );
    assert_eq!(key.der().secret_der(), key_pair.serialized_der());

    assert_eq!(device_id_from_certificate(&issued.cert_der)?, id);
    Ok(())
}

#[test]
fn device_validity_is_bounded() -> TestResult {
    let dir = TempDir::new("validity");
    let at = now();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), at)?;
    let id = device("d1");
    for bad in [
        Duration::ZERO,
        MAX_DEVICE_CERT_VALIDITY + Duration::from_secs(1),
    ] {
        let err = ca
            .issue_device_certificate(&id, bad, at)
            .expect_err("refused");
        assert!(matches!(err, PkiError::InvalidRequest(_)), "{err:?}");
    }
    let short = ca
        .issue_device_certificate(&id, Duration::from_secs(600), at)?
        .certificate;
    assert_eq!(short.not_after, truncated(at) + Duration::from_secs(600));

    // Never past the issuing CA's own expiry.
    let late = ca.issuing_not_after() - time::Duration::days(1);
    let clamped = ca
        .issue_device_certificate(&id, DEFAULT_DEVICE_CERT_VALIDITY, late)?
        .certificate;
    assert_eq!(clamped.not_after, ca.issuing_not_after());
    Ok(())
}

/// A certificate with the given identity fields, self-signed (chain verification is not
/// `device_id_from_certificate`'s job).
fn crafted(
    common_names: &[&str],
    uris: &[&str],
    is_ca: bool,
    eku: Option<&rcgen::ExtendedKeyUsagePurpose>,
) -> Result<CertificateDer<'static>, Box<dyn Error>> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    for (i, cn) in common_names.iter().enumerate() {
        // rcgen keeps one value per DnType; a custom type with the CN OID adds a second CN.
        let ty = match i {
            0 => rcgen::DnType::CommonName,
            _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
        };
        dn.push(ty, *cn);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = uris
        .iter()
        .map(|u| Ok(rcgen::SanType::URI((*u).try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.extended_key_usages = eku.into_iter().cloned().collect();
    let key = rcgen::KeyPair::generate()?;
    Ok(params.self_signed(&key)?.der().clone())
}

#[test]
fn device_identity_extraction() -> TestResult {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let client = Some(&ClientAuth);
    let ok = |cert: CertificateDer<'_>| device_id_from_certificate(&cert);
    let rejected = |cert: CertificateDer<'_>| {
        matches!(
            device_id_from_certificate(&cert),
            Err(PkiError::InvalidDeviceCertificate(_))
        )
    };

    assert_eq!(
        ok(crafted(&["d1"], &["urn:moat:device:d1"], false, client)?)?,
        device("d1")
    );
    assert_eq!(
        ok(crafted(&[], &["urn:moat:device:d1"], false, client)?)?,
        device("d1")
    );
    assert_eq!(ok(crafted(&["d1"], &[], false, client)?)?, device("d1"));
    // Unrelated URIs are ignored.
    assert_eq!(
        ok(crafted(
            &["d1"],
            &["https://example.com/", "urn:moat:device:d1"],
            false,
            client
        )?)?,
        device("d1")
    );

    // Not a valid device id.
    assert!(rejected(crafted(&["a/b"], &[], false, client)?));
    assert!(rejected(crafted(
        &["a/b"],
        &["urn:moat:device:a/b"],
        false,
        client
    )?));
    assert!(rejected(crafted(
        &["d1"],
        &["urn:moat:device:"],
        false,
        client
    )?));
    assert!(rejected(crafted(&["+"], &[], false, client)?));
    // Conflicts and ambiguity.
    assert!(rejected(crafted(
        &["d2"],
        &["urn:moat:device:d1"],
        false,
        client
    )?));
    assert!(rejected(crafted(
        &["d1"],
        &["URN:MOAT:device:d2"],
        false,
        client
    )?));
    assert!(rejected(crafted(
        &[],
        &["urn:moat:device:d1", "urn:moat:device:d2"],
        false,
        client
    )?));
    assert!(rejected(crafted(&["d1", "d2"], &[], false, client)?));
    // No identity at all.
    assert!(rejected(crafted(&[], &[], false, client)?));
    // Wrong kind of certificate.
    assert!(rejected(crafted(&["d1"], &[], true, client)?));
    assert!(rejected(crafted(&["d1"], &[], false, Some(&ServerAuth))?));
    assert!(rejected(crafted(&["d1"], &[], false, None)?));
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// `device_id_from_certificate` sees peer bytes: damaged certificates are rejected, never
    /// a panic, and never turned into a different identity.
    #[test]
    fn damaged_certificates_never_panic(
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
        if let Ok(id) = device_id_from_certificate(&der) {
            // An edit inside the name can change it; it must still be a valid id.
            proptest::prop_assert!(DeviceId::parse(id.as_str()).is_ok());
        }
    }
}

static DEVICE_CERT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let dir = TempDir::new("proptest");
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now()).expect("CA");
    let issued = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())
        .expect("device certificate");
    issued.certificate.cert_der.to_vec()
});

// ---------------------------------------------------------------------------------------
// Server certificates

#[test]
fn server_names_are_validated() -> TestResult {
    let dir = TempDir::new("names");
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    for bad in [
        "",
        "*.example.com",
        "a b",
        "exa_mple..com",
        "http://x",
        "-x.example",
    ] {
        let err = ca
            .issue_server_certificate(&[bad.to_owned()], now())
            .expect_err(bad);
        assert!(matches!(err, PkiError::InvalidRequest(_)), "{bad}: {err:?}");
    }
    let too_many: Vec<String> = (0..=MAX_SERVER_NAMES)
        .map(|i| format!("h{i}.example"))
        .collect();
    assert!(ca.issue_server_certificate(&too_many, now()).is_err());

    let issued = ca.issue_server_certificate(
        &["localhost".into(), "Hub.Example.com.".into(), "::1".into()],
        now(),
    )?;
    let cert = parse(&issued.certificate.cert_der);
    let san = cert.subject_alternative_name()?.expect("SAN").value;
    assert_eq!(
        san.general_names,
        [
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
            GeneralName::IPAddress(&std::net::Ipv6Addr::LOCALHOST.octets()),
            GeneralName::DNSName("hub.example.com"),
        ]
    );
    let eku = cert.extended_key_usage()?.expect("EKU").value;
    assert!(eku.server_auth && !eku.client_auth);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Chain verification with rustls' webpki (what the hub and Rust clients run)

fn roots(ca: &CertificateAuthority) -> Result<Arc<RootCertStore>, Box<dyn Error>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.root_cert_der())?;
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[test]
fn webpki_verifies_device_chain_as_client() -> TestResult {
    let dir = TempDir::new("webpki-client");
    let at = now();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), at)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider()).build()?;
    let issued = ca
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    verifier.verify_client_cert(&issued.chain[0], &issued.chain[1..], unix_time(at))?;
    // Within the backdated window: a peer clock slightly behind still accepts it.
    verifier.verify_client_cert(
        &issued.chain[0],
        &issued.chain[1..],
        unix_time(at - time::Duration::minutes(30)),
    )?;
    // Expired.
    assert!(
        verifier
            .verify_client_cert(
                &issued.chain[0],
                &issued.chain[1..],
                unix_time(issued.not_after + time::Duration::seconds(1)),
            )
            .is_err()
    );
    // A server certificate is not a client certificate.
    let server = ca.issue_server_certificate(&[], at)?.certificate;
    assert!(
        verifier
            .verify_client_cert(&server.chain[0], &server.chain[1..], unix_time(at))
            .is_err()
    );
    // A device of another installation is not trusted.
    let other_dir = TempDir::new("webpki-client-other");
    let (other, _) = CertificateAuthority::load_or_create(other_dir.path(), at)?;
    let foreign = other
        .issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    assert!(
        verifier
            .verify_client_cert(&foreign.chain[0], &foreign.chain[1..], unix_time(at))
            .is_err()
    );
    Ok(())
}

#[test]
fn webpki_verifies_server_chain() -> TestResult {
    let dir = TempDir::new("webpki-server");
    let at = now();
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), at)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca)?, provider()).build()?;
    let issued = ca
        .issue_server_certificate(&["hub.example.com".into(), "10.1.2.3".into()], at)?
        .certificate;
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "hub.example.com",
        "10.1.2.3",
    ] {
        let name = ServerName::try_from(name)?;
        verifier
            .verify_server_cert(
                &issued.chain[0],
                &issued.chain[1..],
                &name,
                &[],
                unix_time(at),
            )
            .map_err(|e| format!("{name:?}: {e}"))?;
    }
    for name in ["other.example.com", "10.1.2.4"] {
        let name = ServerName::try_from(name)?;
        assert!(
            verifier
                .verify_server_cert(
                    &issued.chain[0],
                    &issued.chain[1..],
                    &name,
                    &[],
                    unix_time(at)
                )
                .is_err(),
            "{name:?} accepted"
        );
    }
    // A device certificate cannot impersonate the hub.
    let device_cert = ca
        .issue_device_certificate(&device("localhost"), DEFAULT_DEVICE_CERT_VALIDITY, at)?
        .certificate;
    assert!(
        verifier
            .verify_server_cert(
                &device_cert.chain[0],
                &device_cert.chain[1..],
                &ServerName::try_from("localhost")?,
                &[],
                unix_time(at),
            )
            .is_err()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Interop with OpenSSL (what mosquitto_pub and paho use)

fn openssl(args: &[&str], dir: &Path) -> Result<String, Box<dyn Error>> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout)
}

#[test]
fn openssl_verifies_chains() -> TestResult {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        println!("skipped: the openssl command is not installed");
        return Ok(());
    }
    let dir = TempDir::new("openssl");
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let files = TempDir::new("openssl-files");
    fs::create_dir(files.path())?;
    let device_cert =
        ca.issue_device_certificate(&device("d1"), DEFAULT_DEVICE_CERT_VALIDITY, now())?;
    let server_cert = ca.issue_server_certificate(&[], now())?.certificate;
    fs::write(files.join("root.crt"), ca.root_cert_pem())?;
    fs::write(files.join("issuing.crt"), ca.issuing_cert_pem())?;
    // The leaf alone: `cert_pem` holds leaf + issuing; OpenSSL reads the first.
    fs::write(files.join("device.crt"), &device_cert.certificate.cert_pem)?;
    fs::write(files.join("server.crt"), &server_cert.cert_pem)?;
    write_private_file(&files.join("device.key"), device_cert.key.pem().as_bytes())?;

    for (leaf, purpose) in [("device.crt", "sslclient"), ("server.crt", "sslserver")] {
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                "root.crt",
                "-untrusted",
                "issuing.crt",
                "-purpose",
                purpose,
                leaf,
            ],
            files.path(),
        )?;
        assert!(out.contains(&format!("{leaf}: OK")), "{out}");
    }
    // Strict X.509 checks and hostname matching, as a TLS client does.
    openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "issuing.crt",
            "-verify_hostname",
            "localhost",
            "-verify_ip",
            "127.0.0.1",
            "server.crt",
        ],
        files.path(),
    )?;
    // The wrong purpose fails.
    assert!(
        openssl(
            &[
                "verify",
                "-CAfile",
                "root.crt",
                "-untrusted",
                "issuing.crt",
                "-purpose",
                "sslserver",
                "device.crt",
            ],
            files.path(),
        )
        .is_err()
    );
    // The PKCS#8 key is readable by OpenSSL and belongs to the certificate.
    let key_pub = openssl(&["pkey", "-in", "device.key", "-pubout"], files.path())?;
    let cert_pub = openssl(
        &["x509", "-in", "device.crt", "-noout", "-pubkey"],
        files.path(),
    )?;
    assert_eq!(key_pub, cert_pub);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// write_private_file

#[test]
fn write_private_file_is_0600_and_replaces_atomically() -> TestResult {
    let dir = TempDir::new("private-file");
    fs::create_dir(dir.path())?;
    let path = dir.join("device.key");
    fs::write(&path, "old")?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    write_private_file(&path, b"new secret")?;
    assert_eq!(fs::read(&path)?, b"new secret");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        fs::read_dir(dir.path())?.count(),
        1,
        "no temporary file left"
    );
    assert!(write_private_file(&dir.join("missing-dir/x.key"), b"x").is_err());
    Ok(())
}
