//! CA signing keys: the [`KeySource`] abstraction and its file-backed implementation.
//!
//! A key source hands out signers, not key bytes, so a PKCS#11 token or a TPM can implement
//! it later without the private key ever entering this process. File keys may be encrypted
//! under a [`Passphrase`] (`pkcs8`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::pkcs8::{self, DecryptError, ENCRYPTED_KEY_LABEL, Passphrase};
use crate::storage::{self, PRIVATE_FILE_MODE, Replace, SecretBytes};
use crate::{
    ISSUING_CA_KEY_FILE, ISSUING_CA_PENDING_KEY_FILE, ISSUING_CA_PREVIOUS_KEY_FILE, PkiError,
    ROOT_CA_KEY_FILE, pem,
};

/// Signature algorithm of a key this crate generates or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: understood by every TLS stack Moat meets (OpenSSL in
    /// mosquitto and paho, mbedTLS on microcontrollers, rustls in the hub). The default.
    EcdsaP256Sha256,
    /// Ed25519 (RFC 8032, RFC 8410): deterministic signatures with no nonce to get wrong.
    /// For CA keys only where every device verifies Ed25519 certificate signatures (OpenSSL
    /// 1.1.1 and later, rustls, wolfSSL; not mbedTLS).
    Ed25519,
}

impl KeyAlgorithm {
    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn from_rcgen(alg: &rcgen::SignatureAlgorithm) -> Option<Self> {
        [Self::EcdsaP256Sha256, Self::Ed25519]
            .into_iter()
            .find(|candidate| candidate.rcgen() == alg)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256Sha256 => "ECDSA P-256",
            Self::Ed25519 => "Ed25519",
        })
    }
}

/// Which CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaKeyRole {
    /// Signs only issuing CA certificates. May be absent from the hub (offline root).
    Root,
    /// The current issuing CA: signs server and device certificates, and the CRL of what it
    /// issued.
    Issuing,
    /// The issuing CA before the last rotation: signs nothing but the CRL of the
    /// certificates it issued, and is kept until it expires.
    PreviousIssuing,
    /// A new issuing CA key waiting for its certificate (from
    /// [`CertificateAuthority::issuing_request`](crate::CertificateAuthority::issuing_request)
    /// until the certificate is imported).
    PendingIssuing,
}

/// A CA private key that can sign. Implementations may keep the key outside this process.
pub trait CaSigningKey: Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key as it appears in the subjectPublicKey BIT STRING of a certificate
    /// (for P-256: the uncompressed SEC1 point; for Ed25519: the 32 bytes of RFC 8410).
    fn public_key(&self) -> &[u8];
    /// Signs `message` (the DER of a TBSCertificate) and returns the signature as it goes
    /// into the certificate's signatureValue (for ECDSA: a DER `Ecdsa-Sig-Value`; for
    /// Ed25519: the 64 bytes of RFC 8032).
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

    /// Whether a key for `role` exists, without unlocking it. The default opens it.
    fn exists(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        Ok(self.open(role)?.is_some())
    }

    /// Moves the key of `from` to `to`, failing if `to` holds a key (a CA key is never
    /// overwritten). Issuing-CA rotation needs it; the default refuses, so a source that
    /// cannot move keys cannot rotate.
    fn move_key(&self, from: CaKeyRole, to: CaKeyRole) -> Result<(), PkiError> {
        Err(PkiError::Misconfigured(format!(
            "the key source cannot move the key at {} to {}",
            self.location(from),
            self.location(to)
        )))
    }

    /// Destroys the key for `role`; `Ok(false)` if there was none. Called only for a
    /// previous issuing CA that expired or that the operator discards, and for a second copy
    /// of a key that an interrupted [`move_key`](Self::move_key) left behind. The default
    /// refuses.
    fn delete(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        Err(PkiError::Misconfigured(format!(
            "the key source cannot delete the key at {}",
            self.location(role)
        )))
    }
}

/// CA keys as PKCS#8 PEM files in one directory: [`ROOT_CA_KEY_FILE`],
/// [`ISSUING_CA_KEY_FILE`], [`ISSUING_CA_PREVIOUS_KEY_FILE`], [`ISSUING_CA_PENDING_KEY_FILE`].
///
/// Files are created with mode 0600 and refused on load if group or others can access them.
/// With a passphrase ([`with_passphrase`](Self::with_passphrase)) new keys are written
/// encrypted (`ENCRYPTED PRIVATE KEY`: PBES2 with PBKDF2-HMAC-SHA256 at
/// [`PBKDF2_ITERATIONS`](crate::PBKDF2_ITERATIONS) and AES-256-CBC, as `openssl pkcs8 -topk8
/// -v2 aes-256-cbc -v2prf hmacWithSHA256` writes them) and only encrypted keys are read.
#[derive(Debug, Clone)]
pub struct FileKeySource {
    dir: PathBuf,
    passphrase: Option<Passphrase>,
}

impl FileKeySource {
    /// Unencrypted keys in `dir` (which the caller has created with mode 0700). An encrypted
    /// key found there is refused with [`PkiError::PassphraseRequired`].
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            passphrase: None,
        }
    }

    /// Keys in `dir` encrypted under `passphrase`. A key that does not open with it is
    /// refused with [`PkiError::WrongPassphrase`]; an unencrypted key is refused too, since
    /// accepting it would silently drop the protection the operator asked for.
    pub fn with_passphrase(dir: &Path, passphrase: Passphrase) -> Self {
        Self {
            dir: dir.to_owned(),
            passphrase: Some(passphrase),
        }
    }

    fn path(&self, role: CaKeyRole) -> PathBuf {
        self.dir.join(match role {
            CaKeyRole::Root => ROOT_CA_KEY_FILE,
            CaKeyRole::Issuing => ISSUING_CA_KEY_FILE,
            CaKeyRole::PreviousIssuing => ISSUING_CA_PREVIOUS_KEY_FILE,
            CaKeyRole::PendingIssuing => ISSUING_CA_PENDING_KEY_FILE,
        })
    }

    /// The key pair in a PEM key file, decrypting it if it is encrypted.
    pub(crate) fn parse(&self, path: &Path, pem_text: &str) -> Result<rcgen::KeyPair, PkiError> {
        let encrypted = pem_text.contains(&format!("-----BEGIN {ENCRYPTED_KEY_LABEL}-----"));
        match (&self.passphrase, encrypted) {
            (None, true) => Err(PkiError::PassphraseRequired {
                path: path.to_owned(),
            }),
            (Some(_), false) => Err(PkiError::Misconfigured(format!(
                "{}: the key is not encrypted, but a passphrase was given. Encrypt it with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -iter {} -in KEY \
                 -out KEY.new`, then replace the key with KEY.new (mode 0600)",
                path.display(),
                pkcs8::PBKDF2_ITERATIONS
            ))),
            (None, false) => {
                // Never include the parser's message verbatim: it could quote the file.
                rcgen::KeyPair::from_pem(pem_text)
                    .map_err(|_| PkiError::corrupt(path, "not a PEM-encoded private key"))
            }
            (Some(passphrase), true) => {
                let (label, der) = pem::decode_block(pem_text)
                    .map_err(|why| PkiError::corrupt(path, format!("bad PEM: {why}")))?;
                if label != ENCRYPTED_KEY_LABEL {
                    return Err(PkiError::corrupt(
                        path,
                        "more than one PEM block in the key file",
                    ));
                }
                let plain = pkcs8::decrypt(&der, passphrase).map_err(|e| match e {
                    DecryptError::WrongPassphrase => PkiError::WrongPassphrase {
                        path: path.to_owned(),
                    },
                    DecryptError::Malformed(why) => {
                        PkiError::corrupt(path, format!("malformed encrypted key: {why}"))
                    }
                    DecryptError::Unsupported(why) => {
                        PkiError::Misconfigured(format!("{}: {why}", path.display()))
                    }
                })?;
                // Garbage after a wrong passphrase whose padding happened to check out.
                rcgen::KeyPair::try_from(plain.as_slice()).map_err(|_| PkiError::WrongPassphrase {
                    path: path.to_owned(),
                })
            }
        }
    }
}

impl KeySource for FileKeySource {
    fn open(&self, role: CaKeyRole) -> Result<Option<Box<dyn CaSigningKey>>, PkiError> {
        let path = self.path(role);
        let Some(bytes) = storage::read_private_file(&path)? else {
            return Ok(None);
        };
        let pem_text = std::str::from_utf8(bytes.as_slice())
            .map_err(|_| PkiError::corrupt(&path, "not a PEM file (not UTF-8)"))?;
        let key_pair = self.parse(&path, pem_text)?;
        let algorithm = KeyAlgorithm::from_rcgen(key_pair.algorithm()).ok_or_else(|| {
            PkiError::Misconfigured(format!(
                "{}: unsupported key algorithm (Moat's CA keys are ECDSA P-256 or Ed25519)",
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
        let pem = match &self.passphrase {
            None => SecretBytes::from(key.key_pair.serialize_pem().into_bytes()),
            Some(passphrase) => {
                let plain = SecretBytes::from(key.key_pair.serialize_der());
                let encrypted = pkcs8::encrypt(plain.as_slice(), passphrase)?;
                SecretBytes::from(pem::encode(ENCRYPTED_KEY_LABEL, &encrypted).into_bytes())
            }
        };
        storage::write_atomically(&path, pem.as_slice(), PRIVATE_FILE_MODE, Replace::Refuse)
            .map_err(|e| PkiError::io(&path, e))?;
        Ok(Box::new(key))
    }

    fn location(&self, role: CaKeyRole) -> String {
        self.path(role).display().to_string()
    }

    fn exists(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        let path = self.path(role);
        storage::exists(&path).map_err(|e| PkiError::io(&path, e))
    }

    fn move_key(&self, from: CaKeyRole, to: CaKeyRole) -> Result<(), PkiError> {
        let (from_path, to_path) = (self.path(from), self.path(to));
        storage::move_refusing(&from_path, &to_path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                PkiError::Misconfigured(format!(
                    "cannot move the key {} to {}: a key is there already",
                    from_path.display(),
                    to_path.display()
                ))
            } else {
                PkiError::io(&from_path, e)
            }
        })
    }

    fn delete(&self, role: CaKeyRole) -> Result<bool, PkiError> {
        let path = self.path(role);
        storage::remove(&path).map_err(|e| PkiError::io(&path, e))
    }
}

/// A private key held in this process's memory.
pub(crate) struct SoftwareKey {
    pub(crate) key_pair: rcgen::KeyPair,
    algorithm: KeyAlgorithm,
}

impl SoftwareKey {
    pub(crate) fn generate(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        let key_pair = match algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => rcgen::KeyPair::generate_for(algorithm.rcgen())?,
            KeyAlgorithm::Ed25519 => {
                // rcgen would store the key as PKCS#8 v2 (RFC 5958, with the public key),
                // which OpenSSL 3.0 cannot read; v1 (RFC 8410) is what `openssl genpkey`
                // writes, and what the key file will hold.
                let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(
                    &aws_lc_rs::rand::SystemRandom::new(),
                )
                .map_err(|_| PkiError::Generation("Ed25519 key generation failed".into()))?;
                let der = SecretBytes::from(pkcs8.as_ref().to_vec());
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
                    &rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice()),
                    &rcgen::PKCS_ED25519,
                )?
            }
        };
        Ok(Self {
            key_pair,
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

/// The DER SubjectPublicKeyInfo of `key`.
pub(crate) fn spki_der(key: &dyn CaSigningKey) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(&PublicKeyOf(key))
}

/// The public half of a [`CaSigningKey`], as rcgen encodes it.
struct PublicKeyOf<'a>(&'a dyn CaSigningKey);

impl rcgen::PublicKeyData for PublicKeyOf<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
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
