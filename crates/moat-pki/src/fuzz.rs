//! Entry point for the cargo-fuzz target `pkcs8` in `/fuzz` (feature `fuzzing`), kept in the
//! crate so that the target is a three-line shim and regression tests run the same code.
//! Panics only when a promise of the CA key-file reader is broken.
//!
//! The bytes are read the two ways they reach the reader: as the text of a key file
//! ([`FileKeySource`]'s parser, without and with a passphrase: PEM, PBES2 parameters,
//! PBKDF2, AES-256-CBC, then the PKCS#8 key), and as the DER `EncryptedPrivateKeyInfo` inside
//! such a file (so that the fuzzer mutates the ASN.1 directly rather than through base64).
//!
//! PBKDF2 iteration counts come from the input, and the reader accepts up to
//! [`MAX_PBKDF2_ITERATIONS`](crate::MAX_PBKDF2_ITERATIONS) (seconds of work). An input asking
//! for more than [`MAX_ITERATIONS`] is parsed but not derived, so the target measures
//! parsing, not PBKDF2.

use std::path::Path;

use crate::key::FileKeySource;
use crate::pkcs8::{self, ENCRYPTED_KEY_LABEL, Passphrase};
use crate::storage::SecretBytes;
use crate::{PkiError, pem};

/// The passphrase the encrypted seeds in `fuzz/seeds/pkcs8/` are encrypted under.
pub const PASSPHRASE: &str = "moat fuzzing passphrase";
/// Most PBKDF2 iterations one input may cost. The seeds use 10.
pub const MAX_ITERATIONS: u32 = 1000;

/// Where the key file "is", for error messages. Nothing is read from disk.
const KEY_PATH: &str = "/fuzz/ca.key";

/// Reads `data` as a CA key file and as the DER inside one. Neither panics; a key that opens
/// is written back by the crate's own writer and opens again to the same key; no error
/// quotes the passphrase or a line of the file.
pub fn key_file(data: &[u8]) {
    let _ = read(data);
}

/// How far one way of reading got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// Not tried: not UTF-8 text.
    NotTried,
    /// Asked for more than [`MAX_ITERATIONS`]: parsed, not derived.
    Skipped,
    /// Refused.
    Refused,
    /// A key came out.
    Opened,
}

/// What reading `data` each way achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    /// As a key file, without a passphrase.
    plain: Reached,
    /// As a key file, with [`PASSPHRASE`].
    encrypted: Reached,
    /// As a DER `EncryptedPrivateKeyInfo`, with [`PASSPHRASE`].
    der: Reached,
}

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE).expect("a valid passphrase")
}

fn read(data: &[u8]) -> Outcome {
    let passphrase = passphrase();
    let path = Path::new(KEY_PATH);
    let dir = Path::new("/fuzz");
    let mut outcome = Outcome {
        plain: Reached::NotTried,
        encrypted: Reached::NotTried,
        der: read_der(data, &passphrase),
    };
    // `FileKeySource::open` refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return outcome;
    };

    let plain = FileKeySource::new(dir).parse(path, text);
    outcome.plain = check(plain, text);

    // The same steps `parse` takes before deriving: the one PEM block, its label, the PBES2
    // parameters. Deterministic, so this sees exactly the iteration count `parse` would use.
    let greedy = pem::decode_block(text).is_ok_and(|(label, der)| {
        label == ENCRYPTED_KEY_LABEL && pkcs8::iterations(&der).is_some_and(|n| n > MAX_ITERATIONS)
    });
    outcome.encrypted = if greedy {
        Reached::Skipped
    } else {
        let encrypted = FileKeySource::with_passphrase(dir, passphrase).parse(path, text);
        check(encrypted, text)
    };
    outcome
}

/// `data` as the DER inside an encrypted key file, opened as `FileKeySource` opens it.
fn read_der(data: &[u8], passphrase: &Passphrase) -> Reached {
    match pkcs8::iterations(data) {
        // Refused while parsing the parameters, before any derivation.
        None => {
            assert!(pkcs8::decrypt(data, passphrase).is_err());
            Reached::Refused
        }
        Some(n) if n > MAX_ITERATIONS => Reached::Skipped,
        Some(_) => {
            let Ok(plain) = pkcs8::decrypt(data, passphrase) else {
                return Reached::Refused;
            };
            match rcgen::KeyPair::try_from(plain.as_slice()) {
                Ok(key) => {
                    round_trip(&key);
                    Reached::Opened
                }
                Err(_) => Reached::Refused,
            }
        }
    }
}

/// Checks the result of `FileKeySource::parse` on `text`.
fn check(result: Result<rcgen::KeyPair, PkiError>, text: &str) -> Reached {
    match result {
        Ok(key) => {
            round_trip(&key);
            Reached::Opened
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains(PASSPHRASE), "{message}");
            // Nothing of the file: no line of base64 from it appears in the message.
            for line in text.lines().map(str::trim).filter(|l| l.len() >= 16) {
                let base64 = line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                assert!(!base64 || !message.contains(line), "{message}");
            }
            Reached::Refused
        }
    }
}

/// A key that opened, encrypted by the crate's writer (at one iteration) and read back,
/// is the same key.
fn round_trip(key: &rcgen::KeyPair) {
    let plain = SecretBytes::from(key.serialize_der());
    let der = pkcs8::encrypt_with_iterations(plain.as_slice(), &passphrase(), 1)
        .expect("the writer encrypts any key");
    let text = pem::encode(ENCRYPTED_KEY_LABEL, &der);
    let again = FileKeySource::with_passphrase(Path::new("/fuzz"), passphrase())
        .parse(Path::new(KEY_PATH), &text)
        .expect("the writer's output opens");
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&again),
        rcgen::PublicKeyData::der_bytes(key)
    );
    assert_eq!(again.serialize_der(), key.serialize_der());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAlgorithm;
    use crate::key::SoftwareKey;
    use std::path::PathBuf;

    fn seeds(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target)
    }

    /// Writes the seeds made by this crate: encrypted key files from its own writer (10
    /// iterations) for `pkcs8`, and the hub's EST responses (certs-only CMS, DER and the
    /// base64 body) for `agent_pkcs7`. Run by hand with
    /// `cargo test -p moat-pki write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand"]
    fn write_fuzz_seeds() -> Result<(), Box<dyn std::error::Error>> {
        let dir = seeds("pkcs8");
        std::fs::create_dir_all(&dir)?;
        for (name, algorithm) in [
            ("crate-p256", KeyAlgorithm::EcdsaP256Sha256),
            ("crate-ed25519", KeyAlgorithm::Ed25519),
        ] {
            let key = SoftwareKey::generate(algorithm)?;
            let plain = SecretBytes::from(key.key_pair.serialize_der());
            let der = pkcs8::encrypt_with_iterations(plain.as_slice(), &passphrase(), 10)?;
            std::fs::write(dir.join(format!("{name}.der")), &der)?;
            let text = pem::encode(ENCRYPTED_KEY_LABEL, &der);
            std::fs::write(dir.join(format!("{name}.pem")), text)?;
        }

        let dir = seeds("agent_pkcs7");
        std::fs::create_dir_all(&dir)?;
        let ca_dir = std::env::temp_dir().join(format!(
            "moat-pki-fuzz-seeds-{}-{}",
            std::process::id(),
            crate::random::hex(8)?
        ));
        let now = time::OffsetDateTime::now_utc();
        let (ca, _) = crate::CertificateAuthority::load_or_create(&ca_dir, now)?;
        let id = crate::DeviceId::parse("d1")?;
        let device = ca.issue_device_certificate(&id, crate::DEFAULT_DEVICE_CERT_VALIDITY, now)?;
        let mut cacerts = ca.trusted_issuing_certs();
        cacerts.push(ca.root_cert_der());
        for (name, certs) in [
            ("hub-cacerts", cacerts),
            ("hub-simpleenroll", vec![device.certificate.cert_der]),
            ("hub-empty", Vec::new()),
        ] {
            let der = crate::certs_only(&certs);
            std::fs::write(dir.join(format!("{name}.der")), &der)?;
            std::fs::write(
                dir.join(format!("{name}.b64")),
                crate::encode_est_base64(&der),
            )?;
        }
        std::fs::remove_dir_all(&ca_dir)?;
        Ok(())
    }

    /// Every committed seed reaches as far as its name says: `plain-*` open without a
    /// passphrase, `refused-*` are refused, `greedy-*` are skipped before deriving, and the
    /// rest (OpenSSL's and this crate's encrypted keys) open with [`PASSPHRASE`].
    #[test]
    fn seeds_reach_the_key() -> Result<(), Box<dyn std::error::Error>> {
        let mut count = 0;
        for entry in std::fs::read_dir(seeds("pkcs8"))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("seed name")?
                .to_owned();
            let outcome = read(&std::fs::read(&path)?);
            let expected = if name.starts_with("refused-") {
                Reached::Refused
            } else if name.starts_with("greedy-") {
                Reached::Skipped
            } else {
                Reached::Opened
            };
            if name.ends_with(".der") {
                assert_eq!(outcome.der, expected, "{name}");
            } else if name.starts_with("plain-") {
                assert_eq!(outcome.plain, Reached::Opened, "{name}");
                assert_eq!(outcome.encrypted, Reached::Refused, "{name}");
            } else {
                assert_eq!(outcome.plain, Reached::Refused, "{name}");
                assert_eq!(outcome.encrypted, expected, "{name}");
            }
            count += 1;
        }
        assert!(count >= 10, "only {count} seeds");
        Ok(())
    }

    #[test]
    fn many_iterations_are_parsed_not_derived() -> Result<(), Box<dyn std::error::Error>> {
        let key = SoftwareKey::generate(KeyAlgorithm::EcdsaP256Sha256)?;
        let plain = SecretBytes::from(key.key_pair.serialize_der());
        let der = pkcs8::encrypt_with_iterations(plain.as_slice(), &passphrase(), 1001)?;
        let text = pem::encode(ENCRYPTED_KEY_LABEL, &der);
        assert_eq!(read(&der).der, Reached::Skipped);
        assert_eq!(read(text.as_bytes()).encrypted, Reached::Skipped);
        let der = pkcs8::encrypt_with_iterations(plain.as_slice(), &passphrase(), 1000)?;
        let text = pem::encode(ENCRYPTED_KEY_LABEL, &der);
        assert_eq!(read(&der).der, Reached::Opened);
        assert_eq!(read(text.as_bytes()).encrypted, Reached::Opened);
        Ok(())
    }

    #[test]
    fn garbage_is_refused() {
        for data in [
            &b""[..],
            b"\xff",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n-----END ENCRYPTED PRIVATE KEY-----\n",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            &[0x30, 0x03, 0x30, 0x01, 0x00],
        ] {
            let outcome = read(data);
            assert_ne!(outcome.plain, Reached::Opened);
            assert_ne!(outcome.encrypted, Reached::Opened);
            assert_ne!(outcome.der, Reached::Opened);
        }
    }
}
