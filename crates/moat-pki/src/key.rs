//! CA signing keys: the [`KeySource`] abstraction and its file-backed implementation.
//!
//! A key source hands out signers, not key bytes, so a PKCS#11 token or a TPM can implement
//! it later without the private key ever entering this process.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::storage::{self, PRIVATE_FILE_MODE, Replace};
use crate::{ISSUING_CA_KEY_FILE, PkiError, ROOT_CA_KEY_FILE};

/// Signature algorithm of a key this crate generates or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: understood by every TLS stack Moat meets (OpenSSL in
    /// mosquitto and paho, mbedTLS on microcontrollers, rustls in the hub).
    EcdsaP256Sha256,
    // Ed25519 goes here once the device TLS stacks in the field accept it.
}

impl KeyAlgorithm {
    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    fn from_rcgen(alg: &rcgen::SignatureAlgorithm) -> Option<Self> {
        (alg == &rcgen::PKCS_ECDSA_P256_SHA256).then_some(Self::EcdsaP256Sha256)
    }
}

/// Which of the two CA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaKeyRole {
    /// Signs only issuing CA certificates (and, later, their revocations).
    Root,
    /// Signs server and device certificates.
    Issuing,
}

/// A CA private key that can sign. Implementations may keep the key outside this process.
pub trait CaSigningKey: Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key as it appears in the subjectPublicKey BIT STRING of a certificate
    /// (for P-256: the uncompressed SEC1 point).
    fn public_key(&self) -> &[u8];
    /// Signs `message` (the DER of a TBSCertificate) and returns the signature as it goes
    /// into the certificate's signatureValue (for ECDSA: a DER `Ecdsa-Sig-Value`).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError>;
}

/// Source of CA signing keys. Only this crate touches CA key material.
///
/// File-backed today ([`FileKeySource`]); PKCS#11 or a TPM later.
pub trait KeySource: Send + Sync {
    /// Opens the existing key for `role`, or `Ok(None)` if there is none yet.
    fn open(&self, role: CaKeyRole) -> Result<Option<Box<dyn CaSigningKey>>, PkiError>;
    /// Generates and stores a new key for `role`. Fails if one exists already: a CA key is
    /// never overwritten.
    fn create(
        &self,
        role: CaKeyRole,
        algorithm: KeyAlgorithm,
    ) -> Result<Box<dyn CaSigningKey>, PkiError>;
    /// Where the key for `role` lives, for messages to the operator (a path, a PKCS#11 URI).
    fn location(&self, role: CaKeyRole) -> String;
}

/// CA keys as PKCS#8 PEM files `root-ca.key` and `issuing-ca.key` in one directory.
///
/// Files are created with mode 0600 and refused on load if group or others can access them.
#[derive(Debug, Clone)]
pub struct FileKeySource {
    dir: PathBuf,
}

impl FileKeySource {
    /// Keys in `dir` (which the caller has created with mode 0700).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, role: CaKeyRole) -> PathBuf {
        self.dir.join(match role {
            CaKeyRole::Root => ROOT_CA_KEY_FILE,
            CaKeyRole::Issuing => ISSUING_CA_KEY_FILE,
        })
    }
}

impl KeySource for FileKeySource {
    fn open(&self, role: CaKeyRole) -> Result<Option<Box<dyn CaSigningKey>>, PkiError> {
        let path = self.path(role);
        let Some(bytes) = storage::read_private_file(&path)? else {
            return Ok(None);
        };
        let pem = std::str::from_utf8(bytes.as_slice())
            .map_err(|_| PkiError::corrupt(&path, "not a PEM file (not UTF-8)"))?;
        // Never include the parser's message verbatim: it could quote the file's contents.
        let key_pair = rcgen::KeyPair::from_pem(pem)
            .map_err(|_| PkiError::corrupt(&path, "not a PEM-encoded private key"))?;
        let algorithm = KeyAlgorithm::from_rcgen(key_pair.algorithm()).ok_or_else(|| {
            PkiError::Misconfigured(format!(
                "{}: unsupported key algorithm (Moat's CA uses ECDSA P-256)",
                path.display()
            ))
        })?;
        Ok(Some(Box::new(SoftwareKey {
            key_pair,
            algorithm,
        })))
    }

    fn create(
        &self,
        role: CaKeyRole,
        algorithm: KeyAlgorithm,
    ) -> Result<Box<dyn CaSigningKey>, PkiError> {
        let path = self.path(role);
        let key = SoftwareKey::generate(algorithm)?;
        let pem = storage::SecretBytes::from(key.key_pair.serialize_pem().into_bytes());
        storage::write_atomically(&path, pem.as_slice(), PRIVATE_FILE_MODE, Replace::Refuse)
            .map_err(|e| PkiError::io(&path, e))?;
        Ok(Box::new(key))
    }

    fn location(&self, role: CaKeyRole) -> String {
        self.path(role).display().to_string()
    }
}

/// A private key held in this process's memory.
pub(crate) struct SoftwareKey {
    pub(crate) key_pair: rcgen::KeyPair,
    algorithm: KeyAlgorithm,
}

impl SoftwareKey {
    pub(crate) fn generate(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        Ok(Self {
            key_pair: rcgen::KeyPair::generate_for(algorithm.rcgen())?,
            algorithm,
        })
    }
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl CaSigningKey for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.key_pair)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        Ok(rcgen::SigningKey::sign(&self.key_pair, message)?)
    }
}

/// Adapts a [`CaSigningKey`] to what rcgen signs with.
pub(crate) struct Signer(pub(crate) Box<dyn CaSigningKey>);

impl Signer {
    /// The DER SubjectPublicKeyInfo, for comparison with a certificate's.
    pub(crate) fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(self)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.0.algorithm())
            .finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for Signer {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl rcgen::SigningKey for Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}
