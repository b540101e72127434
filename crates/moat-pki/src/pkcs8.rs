//! Passphrase-encrypted private keys: PKCS#8 `EncryptedPrivateKeyInfo` (RFC 5958 3) with
//! PBES2 (RFC 8018 6.2), PBKDF2-HMAC-SHA256 and AES-256-CBC. This is what
//! `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256` writes and what
//! `openssl pkey -passin` reads.
//!
//! ```text
//! EncryptedPrivateKeyInfo SEQUENCE {
//!   encryptionAlgorithm SEQUENCE {
//!     id-PBES2 (1.2.840.113549.1.5.13)
//!     PBES2-params SEQUENCE {
//!       keyDerivationFunc SEQUENCE {
//!         id-PBKDF2 (1.2.840.113549.1.5.12)
//!         PBKDF2-params SEQUENCE {
//!           salt            OCTET STRING (16 random bytes)
//!           iterationCount  INTEGER (PBKDF2_ITERATIONS)
//!           keyLength       INTEGER OPTIONAL     -- not written; 32 if read
//!           prf SEQUENCE { hmacWithSHA256 (1.2.840.113549.2.9), NULL }
//!         }
//!       }
//!       encryptionScheme SEQUENCE { aes256-CBC (2.16.840.1.101.3.4.1.42), OCTET STRING iv }
//!     }
//!   }
//!   encryptedData OCTET STRING   -- AES-256-CBC, PKCS#7 padding, of the PKCS#8 DER
//! }
//! ```
//!
//! Reading accepts only this profile (with or without `keyLength`, with or without the
//! NULL after the PRF identifier, as encoders differ), so a file names its algorithms and
//! nothing weaker (PBES1, HMAC-SHA1, DES) is ever tried.

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;

use aws_lc_rs::cipher::{
    AES_256, DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::pbkdf2;

use crate::der::{self, Reader, TAG_NULL, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, tlv};
use crate::storage::{self, SecretBytes};
use crate::{PkiError, random};

/// PBKDF2-HMAC-SHA256 iterations for the CA key files this crate writes: 600,000, OWASP's
/// recommendation for PBKDF2-HMAC-SHA256 (2023). Each key file costs one derivation when it
/// is opened: about 70 ms in a release build on one core of an AMD EPYC server (140 ms in a
/// debug build; measured by this module's `pbkdf2_cost` test), so a hub start, which opens
/// the current issuing key and, where present, the root and previous issuing keys, pays at
/// most about a fifth of a second.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Most PBKDF2 iterations accepted when reading a key file: 10,000,000 (a few seconds). A
/// file demanding more is refused rather than left to stall the start.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Shortest passphrase accepted, in bytes: 8.
pub const MIN_PASSPHRASE_LEN: usize = 8;
/// Longest passphrase accepted, in bytes: 1024.
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// PEM label of an encrypted key (RFC 7468 11).
pub(crate) const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// Salt written: 16 bytes (NIST SP 800-132 asks for at least 128 bits).
const SALT_LEN: usize = 16;
/// Salt lengths accepted when reading (OpenSSL 1.1 wrote 8 bytes).
const SALT_LEN_RANGE: std::ops::RangeInclusive<usize> = 8..=64;
const AES_256_KEY_LEN: usize = 32;
const AES_BLOCK_LEN: usize = 16;

/// id-PBES2, RFC 8018 A.4.
const OID_PBES2: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
/// id-PBKDF2, RFC 8018 A.2.
const OID_PBKDF2: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
/// id-hmacWithSHA256, RFC 8018 B.1.2.
const OID_HMAC_SHA256: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
/// aes256-CBC-PAD, RFC 8018 B.2.5 (NIST OID 2.16.840.1.101.3.4.1.42).
const OID_AES_256_CBC: [u8; 9] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// The passphrase protecting CA key files. Its bytes are overwritten with zeros on drop
/// (best effort) and never appear in `Debug` output or in errors.
///
/// Between [`MIN_PASSPHRASE_LEN`] and [`MAX_PASSPHRASE_LEN`] bytes, used exactly as given
/// (no normalisation), so a passphrase that opens a key with `openssl pkey -passin` opens it
/// here too.
pub struct Passphrase(SecretBytes);

impl Passphrase {
    /// A passphrase from its bytes; refused (without echoing it) if its length is outside
    /// [`MIN_PASSPHRASE_LEN`]`..=`[`MAX_PASSPHRASE_LEN`].
    pub fn new(passphrase: impl Into<Vec<u8>>) -> Result<Self, PkiError> {
        let bytes = SecretBytes::from(passphrase.into());
        Self::check_len(bytes.as_slice().len(), "the passphrase")?;
        Ok(Self(bytes))
    }

    /// Reads a passphrase file (e.g. `--passphrase-file`, or a systemd credential): its whole
    /// contents but one final line break (`\n` or `\r\n`). Like a key file, it must be a
    /// regular file that group and others cannot access.
    pub fn read_file(path: &Path) -> Result<Self, PkiError> {
        let bytes = storage::read_private_file(path)?.ok_or_else(|| {
            PkiError::Misconfigured(format!("passphrase file {} not found", path.display()))
        })?;
        let mut text = bytes.as_slice();
        if let Some(rest) = text.strip_suffix(b"\n") {
            text = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        Self::check_len(text.len(), &format!("the passphrase in {}", path.display()))?;
        Ok(Self(SecretBytes::from(text.to_vec())))
    }

    fn check_len(len: usize, what: &str) -> Result<(), PkiError> {
        if (MIN_PASSPHRASE_LEN..=MAX_PASSPHRASE_LEN).contains(&len) {
            Ok(())
        } else {
            Err(PkiError::Misconfigured(format!(
                "{what} is {len} bytes long; it must be {MIN_PASSPHRASE_LEN} to \
                 {MAX_PASSPHRASE_LEN} bytes"
            )))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Clone for Passphrase {
    fn clone(&self) -> Self {
        Self(SecretBytes::from(self.as_bytes().to_vec()))
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why an encrypted key could not be opened. Never carries key or passphrase bytes.
#[derive(Debug)]
pub(crate) enum DecryptError {
    /// Not a well-formed `EncryptedPrivateKeyInfo`.
    Malformed(String),
    /// Well-formed, but with algorithms or parameters this crate does not use.
    Unsupported(String),
    /// The padding did not check out: the passphrase is wrong (or the ciphertext damaged).
    WrongPassphrase,
}

impl From<der::DerError> for DecryptError {
    fn from(e: der::DerError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// `pkcs8` (a PKCS#8 `PrivateKeyInfo`, DER) encrypted under `passphrase` with a fresh
/// random salt and IV, as a DER `EncryptedPrivateKeyInfo`.
pub(crate) fn encrypt(pkcs8: &[u8], passphrase: &Passphrase) -> Result<Vec<u8>, PkiError> {
    encrypt_with_iterations(pkcs8, passphrase, PBKDF2_ITERATIONS)
}

pub(crate) fn encrypt_with_iterations(
    pkcs8: &[u8],
    passphrase: &Passphrase,
    iterations: u32,
) -> Result<Vec<u8>, PkiError> {
    let failed = || PkiError::Generation("encrypting the key failed".into());
    let iterations = NonZeroU32::new(iterations).ok_or_else(failed)?;
    let mut salt = [0u8; SALT_LEN];
    random::fill(&mut salt)?;
    let key = derive_key(passphrase, &salt, iterations);
    let cipher = UnboundCipherKey::new(&AES_256, key.as_slice())
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| failed())?;
    // Room for the padding up front, so the buffer holding the plaintext is never
    // reallocated (which would leave a copy behind); encryption then overwrites it in place.
    let mut data = Vec::with_capacity(pkcs8.len() + AES_BLOCK_LEN);
    data.extend_from_slice(pkcs8);
    // `encrypt` draws a random IV and hands it back.
    let context = cipher.encrypt(&mut data).map_err(|_| failed())?;
    let iv: &[u8] = (&context).try_into().map_err(|_| failed())?;

    let prf = tlv(
        TAG_SEQUENCE,
        &[tlv(TAG_OID, &OID_HMAC_SHA256), tlv(TAG_NULL, &[])].concat(),
    );
    let pbkdf2_params = tlv(
        TAG_SEQUENCE,
        &[
            tlv(TAG_OCTET_STRING, &salt),
            der::integer(u64::from(iterations.get())),
            prf,
        ]
        .concat(),
    );
    let kdf = tlv(
        TAG_SEQUENCE,
        &[tlv(TAG_OID, &OID_PBKDF2), pbkdf2_params].concat(),
    );
    let scheme = tlv(
        TAG_SEQUENCE,
        &[tlv(TAG_OID, &OID_AES_256_CBC), tlv(TAG_OCTET_STRING, iv)].concat(),
    );
    let algorithm = tlv(
        TAG_SEQUENCE,
        &[
            tlv(TAG_OID, &OID_PBES2),
            tlv(TAG_SEQUENCE, &[kdf, scheme].concat()),
        ]
        .concat(),
    );
    Ok(tlv(
        TAG_SEQUENCE,
        &[algorithm, tlv(TAG_OCTET_STRING, &data)].concat(),
    ))
}

/// The PKCS#8 DER inside an `EncryptedPrivateKeyInfo` (DER). A wrong passphrase shows as
/// [`DecryptError::WrongPassphrase`] most of the time; when the padding happens to check out
/// the plaintext is garbage, which the caller's PKCS#8 parser then refuses.
pub(crate) fn decrypt(der: &[u8], passphrase: &Passphrase) -> Result<SecretBytes, DecryptError> {
    let params = Pbes2::parse(der)?;
    let key = derive_key(passphrase, params.salt, params.iterations);
    let unsupported = || DecryptError::Unsupported("AES-256-CBC key setup failed".into());
    let cipher = UnboundCipherKey::new(&AES_256, key.as_slice())
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| unsupported())?;
    let mut data = params.encrypted.to_vec();
    let context = DecryptionContext::Iv128(FixedLength::from(params.iv));
    let plain_len = cipher
        .decrypt(&mut data, context)
        .map_err(|_| DecryptError::WrongPassphrase)?
        .len();
    data.truncate(plain_len);
    Ok(SecretBytes::from(data))
}

/// The PBKDF2 iteration count an `EncryptedPrivateKeyInfo` (DER) asks for, if it parses;
/// derives nothing. The fuzz target skips inputs asking for many iterations with it.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn iterations(der: &[u8]) -> Option<u32> {
    Pbes2::parse(der).ok().map(|params| params.iterations.get())
}

/// The PBES2 parameters and ciphertext of an `EncryptedPrivateKeyInfo`.
struct Pbes2<'a> {
    salt: &'a [u8],
    iterations: NonZeroU32,
    iv: [u8; AES_BLOCK_LEN],
    encrypted: &'a [u8],
}

impl<'a> Pbes2<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, DecryptError> {
        let unsupported = |what: &str| DecryptError::Unsupported(what.to_owned());
        let malformed = |what: &str| DecryptError::Malformed(what.to_owned());

        let mut outer = Reader::new(der);
        let info = outer.read(TAG_SEQUENCE)?;
        outer.finish()?;
        let mut info = Reader::new(info);
        let algorithm = info.read(TAG_SEQUENCE)?;
        let encrypted = info.read(TAG_OCTET_STRING)?;
        info.finish()?;

        let mut algorithm = Reader::new(algorithm);
        if algorithm.read(TAG_OID)? != OID_PBES2 {
            return Err(unsupported(
                "encryption scheme is not PBES2 (PKCS#5 v2.0; re-encrypt with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`)",
            ));
        }
        let pbes2 = algorithm.read(TAG_SEQUENCE)?;
        algorithm.finish()?;

        let mut pbes2 = Reader::new(pbes2);
        let kdf = pbes2.read(TAG_SEQUENCE)?;
        let scheme = pbes2.read(TAG_SEQUENCE)?;
        pbes2.finish()?;

        let mut kdf = Reader::new(kdf);
        if kdf.read(TAG_OID)? != OID_PBKDF2 {
            return Err(unsupported("key derivation function is not PBKDF2"));
        }
        let kdf_params = kdf.read(TAG_SEQUENCE)?;
        kdf.finish()?;
        let mut kdf_params = Reader::new(kdf_params);
        let salt = kdf_params.read(TAG_OCTET_STRING)?;
        if !SALT_LEN_RANGE.contains(&salt.len()) {
            return Err(malformed("PBKDF2 salt length out of range"));
        }
        let iterations = kdf_params.read_u32()?;
        if iterations > MAX_PBKDF2_ITERATIONS {
            return Err(unsupported(&format!(
                "{iterations} PBKDF2 iterations, more than the limit of {MAX_PBKDF2_ITERATIONS}"
            )));
        }
        let iterations =
            NonZeroU32::new(iterations).ok_or_else(|| malformed("zero PBKDF2 iterations"))?;
        if kdf_params.peek_tag() == Some(der::TAG_INTEGER) {
            let key_length = kdf_params.read_u32()?;
            if usize::try_from(key_length).ok() != Some(AES_256_KEY_LEN) {
                return Err(malformed("PBKDF2 key length is not 32 bytes"));
            }
        }
        // RFC 8018 A.2: an absent PRF means HMAC-SHA1.
        if kdf_params.peek_tag() != Some(TAG_SEQUENCE) {
            return Err(unsupported(
                "PBKDF2 with HMAC-SHA1 (only HMAC-SHA256 is used)",
            ));
        }
        let mut prf = Reader::new(kdf_params.read(TAG_SEQUENCE)?);
        kdf_params.finish()?;
        if prf.read(TAG_OID)? != OID_HMAC_SHA256 {
            return Err(unsupported("PBKDF2 PRF is not HMAC-SHA256"));
        }
        if prf.peek_tag().is_some() && !prf.read(TAG_NULL)?.is_empty() {
            return Err(malformed("PRF parameters are not NULL"));
        }
        prf.finish()?;

        let mut scheme = Reader::new(scheme);
        if scheme.read(TAG_OID)? != OID_AES_256_CBC {
            return Err(unsupported("cipher is not AES-256-CBC"));
        }
        let iv = <[u8; AES_BLOCK_LEN]>::try_from(scheme.read(TAG_OCTET_STRING)?)
            .map_err(|_| malformed("AES-CBC IV is not 16 bytes"))?;
        scheme.finish()?;

        if encrypted.is_empty() || !encrypted.len().is_multiple_of(AES_BLOCK_LEN) {
            return Err(malformed(
                "encrypted data is not a whole number of AES blocks",
            ));
        }
        Ok(Self {
            salt,
            iterations,
            iv,
            encrypted,
        })
    }
}

/// The AES-256 key PBKDF2-HMAC-SHA256 derives from the passphrase.
fn derive_key(passphrase: &Passphrase, salt: &[u8], iterations: NonZeroU32) -> SecretBytes {
    let mut key = vec![0u8; AES_256_KEY_LEN];
    // Cannot panic: 32 bytes is far below PBKDF2-HMAC-SHA256's maximum output length.
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase.as_bytes(),
        &mut key,
    );
    SecretBytes::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase() -> Passphrase {
        Passphrase::new("correct horse battery staple").expect("valid length")
    }

    #[test]
    fn round_trip_and_wrong_passphrase() -> Result<(), Box<dyn std::error::Error>> {
        let plain = b"not really PKCS#8, but any bytes round-trip".to_vec();
        let der = encrypt_with_iterations(&plain, &passphrase(), 1000)?;
        let opened = decrypt(&der, &passphrase()).map_err(|e| format!("{e:?}"))?;
        assert_eq!(opened.as_slice(), plain);

        // Fresh salt and IV every time.
        let again = encrypt_with_iterations(&plain, &passphrase(), 1000)?;
        assert_ne!(der, again);

        // A wrong passphrase either fails the padding or yields garbage.
        let wrong = Passphrase::new("incorrect horse battery staple")?;
        match decrypt(&der, &wrong) {
            Err(DecryptError::WrongPassphrase) => {}
            Ok(garbage) => assert_ne!(garbage.as_slice(), plain),
            Err(other) => panic!("unexpected {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn parameters_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let der = encrypt_with_iterations(b"0123456789abcdef", &passphrase(), 1000)?;
        // Every truncation is refused without a panic.
        for len in 0..der.len() {
            assert!(decrypt(&der[..len], &passphrase()).is_err(), "{len}");
        }
        // Too many iterations: refused before deriving anything.
        let greedy = encrypt_with_iterations(b"x", &passphrase(), MAX_PBKDF2_ITERATIONS + 1)?;
        assert!(matches!(
            decrypt(&greedy, &passphrase()),
            Err(DecryptError::Unsupported(_))
        ));
        // Another cipher OID (AES-128-CBC) is refused.
        let aes128 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02];
        let at = der
            .windows(OID_AES_256_CBC.len())
            .position(|w| w == OID_AES_256_CBC)
            .ok_or("cipher OID present")?;
        let mut other = der.clone();
        other[at..at + aes128.len()].copy_from_slice(&aes128);
        assert!(matches!(
            decrypt(&other, &passphrase()),
            Err(DecryptError::Unsupported(_))
        ));
        Ok(())
    }

    #[test]
    fn passphrase_limits_and_debug() {
        assert!(Passphrase::new(vec![b'x'; MIN_PASSPHRASE_LEN - 1]).is_err());
        assert!(Passphrase::new(vec![b'x'; MAX_PASSPHRASE_LEN + 1]).is_err());
        let err = Passphrase::new("short").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| !e.contains("short")));
        assert_eq!(format!("{:?}", passphrase()), "Passphrase(<redacted>)");
    }

    /// Measures one key-file derivation at [`PBKDF2_ITERATIONS`] (run with `--nocapture` to
    /// see the figure quoted in its documentation).
    #[test]
    fn pbkdf2_cost() {
        let start = std::time::Instant::now();
        let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero");
        let key = derive_key(&passphrase(), &[0u8; SALT_LEN], iterations);
        assert_eq!(key.as_slice().len(), AES_256_KEY_LEN);
        println!(
            "PBKDF2-HMAC-SHA256, {PBKDF2_ITERATIONS} iterations: {:?}",
            start.elapsed()
        );
    }
}
