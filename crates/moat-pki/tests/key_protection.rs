//! API tests for passphrase-encrypted CA key files: written as standard encrypted PKCS#8
//! that the OpenSSL command line opens, read back, and refused with clear errors that never
//! show the passphrase.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{TempDir, TestResult, mode, now, openssl, openssl_available};
use moat_pki::{
    CaKeyRole, CaOptions, CaSigningKey, CertificateAuthority, FileKeySource, ISSUING_CA_CERT_FILE,
    ISSUING_CA_KEY_FILE, KeyAlgorithm, KeySource, MIN_PASSPHRASE_LEN, PBKDF2_ITERATIONS,
    Passphrase, PkiError, ROOT_CA_CERT_FILE, ROOT_CA_KEY_FILE, write_private_file,
};

const SECRET: &str = "correct horse battery staple";

fn secret() -> Passphrase {
    Passphrase::new(SECRET).expect("long enough")
}

fn encrypted_ca(
    name: &str,
    algorithm: KeyAlgorithm,
) -> Result<(CertificateAuthority, TempDir), Box<dyn std::error::Error>> {
    let dir = TempDir::new(name)?;
    let (ca, created) = CertificateAuthority::load_or_create_with(
        dir.path(),
        &FileKeySource::with_passphrase(dir.path(), secret()),
        &CaOptions::with_algorithm(algorithm),
        now(),
    )?;
    assert!(created);
    Ok((ca, dir))
}

/// The public key of an encrypted key file, and of a certificate, as OpenSSL prints them.
fn openssl_public_keys(
    dir: &Path,
    key: &str,
    cert: &str,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let passin = format!("pass:{SECRET}");
    let key_pub = openssl(&["pkey", "-in", key, "-passin", &passin, "-pubout"], dir)?;
    let cert_pub = openssl(&["x509", "-in", cert, "-noout", "-pubkey"], dir)?;
    Ok((key_pub, cert_pub))
}

#[test]
fn encrypted_keys_are_standard_pkcs8_that_openssl_opens() -> TestResult {
    for algorithm in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
        let (ca, dir) = encrypted_ca("encrypted", algorithm)?;
        for key in [ROOT_CA_KEY_FILE, ISSUING_CA_KEY_FILE] {
            let text = fs::read_to_string(dir.join(key))?;
            assert!(
                text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
                "{text}"
            );
            assert_eq!(mode(&dir.join(key)), 0o600);
        }
        // Reloads with the passphrase.
        let (again, created) = CertificateAuthority::load_or_create_with_keys(
            dir.path(),
            &FileKeySource::with_passphrase(dir.path(), secret()),
            now(),
        )?;
        assert!(!created);
        assert_eq!(again.root_cert_der(), ca.root_cert_der());
        assert_eq!(again.issuing_key_algorithm(), algorithm);

        if !openssl_available("encrypted_keys_are_standard_pkcs8_that_openssl_opens") {
            continue;
        }
        for (key, cert) in [
            (ROOT_CA_KEY_FILE, ROOT_CA_CERT_FILE),
            (ISSUING_CA_KEY_FILE, ISSUING_CA_CERT_FILE),
        ] {
            let (key_pub, cert_pub) = openssl_public_keys(dir.path(), key, cert)?;
            assert_eq!(key_pub, cert_pub, "{key}");
        }
        // PBES2 with PBKDF2-HMAC-SHA256 at the documented count, and AES-256-CBC.
        let asn1 = openssl(&["asn1parse", "-in", ROOT_CA_KEY_FILE], dir.path())?;
        for expected in ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"] {
            assert!(asn1.contains(expected), "{expected}: {asn1}");
        }
        // OpenSSL prints the INTEGER's content bytes in hex.
        let mut hex = format!("{PBKDF2_ITERATIONS:X}");
        if hex.len() % 2 == 1 {
            hex.insert(0, '0');
        }
        let iterations = format!("INTEGER           :{hex}");
        assert!(asn1.contains(&iterations), "{iterations}: {asn1}");
        // The wrong passphrase does not open it for OpenSSL either.
        assert!(
            openssl(
                &[
                    "pkey",
                    "-in",
                    ROOT_CA_KEY_FILE,
                    "-passin",
                    "pass:wrong passphrase",
                    "-noout"
                ],
                dir.path()
            )
            .is_err()
        );
    }
    Ok(())
}

#[test]
fn wrong_or_missing_passphrase_is_a_clear_error() -> TestResult {
    let (_ca, dir) = encrypted_ca("passphrase-errors", KeyAlgorithm::EcdsaP256Sha256)?;
    let wrong = "incorrect horse battery staple";
    let err = CertificateAuthority::load_or_create_with_keys(
        dir.path(),
        &FileKeySource::with_passphrase(dir.path(), Passphrase::new(wrong)?),
        now(),
    )
    .expect_err("a wrong passphrase is refused");
    assert!(
        matches!(&err, PkiError::WrongPassphrase { path } if path == &dir.join(ROOT_CA_KEY_FILE)),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("wrong passphrase"), "{shown}");
    assert!(shown.contains(ROOT_CA_KEY_FILE), "{shown}");
    assert!(!shown.contains(wrong) && !shown.contains(SECRET), "{shown}");

    // No passphrase at all.
    let err = CertificateAuthority::load_or_create(dir.path(), now())
        .expect_err("an encrypted key needs a passphrase");
    assert!(
        matches!(&err, PkiError::PassphraseRequired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("needs a passphrase"), "{err}");

    // Nothing was created or replaced by the failed attempts.
    assert_eq!(fs::read_dir(dir.path())?.count(), 4);

    // A passphrase given for keys that are not encrypted: refused, not silently ignored.
    let plain = TempDir::new("passphrase-plain")?;
    CertificateAuthority::load_or_create(plain.path(), now())?;
    let err = CertificateAuthority::load_or_create_with_keys(
        plain.path(),
        &FileKeySource::with_passphrase(plain.path(), secret()),
        now(),
    )
    .expect_err("plaintext keys refused when a passphrase is configured");
    assert!(
        matches!(&err, PkiError::Misconfigured(m) if m.contains("not encrypted")),
        "{err:?}"
    );

    // The source's Debug output does not show the passphrase.
    let source = FileKeySource::with_passphrase(dir.path(), secret());
    assert!(!format!("{source:?}").contains(SECRET));
    Ok(())
}

/// Keys encrypted by OpenSSL (an operator protecting an existing CA) are read, and a weaker
/// scheme is refused as unsupported, not reported as a wrong passphrase.
#[test]
fn keys_encrypted_by_openssl_are_read() -> TestResult {
    if !openssl_available("keys_encrypted_by_openssl_are_read") {
        return Ok(());
    }
    let dir = TempDir::new("openssl-encrypted")?;
    let (ca, _) = CertificateAuthority::load_or_create(dir.path(), now())?;
    let passout = format!("pass:{SECRET}");
    for key in [ROOT_CA_KEY_FILE, ISSUING_CA_KEY_FILE] {
        let out = format!("{key}.new");
        openssl(
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-v2prf",
                "hmacWithSHA256",
                "-iter",
                "20000",
                "-in",
                key,
                "-out",
                &out,
                "-passout",
                &passout,
            ],
            dir.path(),
        )?;
        write_private_file(&dir.join(key), &fs::read(dir.join(&out))?)?;
        fs::remove_file(dir.join(&out))?;
    }
    let (again, _) = CertificateAuthority::load_or_create_with_keys(
        dir.path(),
        &FileKeySource::with_passphrase(dir.path(), secret()),
        now(),
    )?;
    assert_eq!(again.issuing_cert_der(), ca.issuing_cert_der());

    // PBES1 with SHA-1 and 3DES: not something Moat reads.
    openssl(
        &[
            "pkcs8",
            "-topk8",
            "-v1",
            "PBE-SHA1-3DES",
            "-in",
            ISSUING_CA_KEY_FILE,
            "-passin",
            &passout,
            "-out",
            "legacy.key",
            "-passout",
            &passout,
        ],
        dir.path(),
    )?;
    write_private_file(
        &dir.join(ISSUING_CA_KEY_FILE),
        &fs::read(dir.join("legacy.key"))?,
    )?;
    fs::remove_file(dir.join("legacy.key"))?;
    let err = CertificateAuthority::load_or_create_with_keys(
        dir.path(),
        &FileKeySource::with_passphrase(dir.path(), secret()),
        now(),
    )
    .expect_err("PBES1 refused");
    assert!(
        matches!(&err, PkiError::Misconfigured(m) if m.contains("PBES2")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn passphrase_files() -> TestResult {
    let dir = TempDir::new("passphrase-file")?;
    let path = dir.join("passphrase");
    write_private_file(&path, format!("{SECRET}\r\n").as_bytes())?;
    let from_file = Passphrase::read_file(&path)?;
    // The final line break is not part of the passphrase: the file opens keys made with it.
    let pki = dir.join("pki");
    CertificateAuthority::load_or_create_with_keys(
        &pki,
        &FileKeySource::with_passphrase(&pki, secret()),
        now(),
    )?;
    CertificateAuthority::load_or_create_with_keys(
        &pki,
        &FileKeySource::with_passphrase(&pki, from_file),
        now(),
    )?;

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    assert!(matches!(
        Passphrase::read_file(&path),
        Err(PkiError::InsecurePermissions { .. })
    ));
    write_private_file(&path, &[b'x'; MIN_PASSPHRASE_LEN - 1])?;
    let err = Passphrase::read_file(&path).expect_err("too short");
    assert!(!err.to_string().contains("xxxxxxx"), "{err}");
    assert!(matches!(
        Passphrase::read_file(&dir.join("absent")),
        Err(PkiError::Misconfigured(_))
    ));
    Ok(())
}

/// A key source that counts how often each key is unlocked.
struct Counting {
    inner: FileKeySource,
    opened: std::sync::Mutex<Vec<CaKeyRole>>,
}

impl Counting {
    fn opened(&self, role: CaKeyRole) -> usize {
        self.opened
            .lock()
            .map_or(0, |opened| opened.iter().filter(|r| **r == role).count())
    }
}

impl KeySource for Counting {
    fn open(&self, role: CaKeyRole) -> Result<Option<Box<dyn CaSigningKey>>, PkiError> {
        if let Ok(mut opened) = self.opened.lock() {
            opened.push(role);
        }
        self.inner.open(role)
    }

    fn create(
        &self,
        role: CaKeyRole,
        algorithm: KeyAlgorithm,
    ) -> Result<Box<dyn CaSigningKey>, PkiError> {
        self.inner.create(role, algorithm)
    }

    fn location(&self, role: CaKeyRole) -> String {
        self.inner.location(role)
    }

    fn exists(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        self.inner.exists(role)
    }

    fn move_key(&self, from: CaKeyRole, to: CaKeyRole) -> Result<(), PkiError> {
        self.inner.move_key(from, to)
    }

    fn delete(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        self.inner.delete(role)
    }
}

/// Every encrypted key costs a PBKDF2 derivation: a start unlocks each key it needs once,
/// and no key it does not need.
#[test]
fn a_start_unlocks_each_key_once() -> TestResult {
    let (_ca, dir) = encrypted_ca("unlock-count", KeyAlgorithm::EcdsaP256Sha256)?;
    let keys = FileKeySource::with_passphrase(dir.path(), secret());
    CertificateAuthority::rotate_issuing(dir.path(), &keys, now())?;
    let counting = Counting {
        inner: keys,
        opened: std::sync::Mutex::new(Vec::new()),
    };
    let (ca, _) = CertificateAuthority::load_or_create_with_keys(dir.path(), &counting, now())?;
    assert_eq!(ca.trusted_issuing_certs().len(), 2);
    for (role, times) in [
        (CaKeyRole::Root, 1),
        (CaKeyRole::Issuing, 1),
        (CaKeyRole::PreviousIssuing, 1),
        (CaKeyRole::PendingIssuing, 0),
    ] {
        assert_eq!(counting.opened(role), times, "{role:?}");
    }
    Ok(())
}
