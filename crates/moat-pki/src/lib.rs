//! # moat-pki: Moat's built-in certificate authority
//!
//! **Owns:** the root CA and the issuing CAs: creating them on first start (ECDSA P-256 by
//! default, Ed25519 on request: [`CaOptions`]), loading and cross-checking them afterwards,
//! an offline root that never touches the hub ([`OfflineRoot`]), and issuing-CA rotation
//! without downtime ([`CertificateAuthority::rotate_issuing`], or
//! [`issuing_request`](CertificateAuthority::issuing_request) →
//! [`OfflineRoot::sign_issuing`] → [`import_issuing`](CertificateAuthority::import_issuing)),
//! after which the previous issuing CA stays trusted until it expires. It owns the
//! certificate profiles Moat issues (the hub's server certificate, device client certificates
//! with a generated key or for a device's own key), CA key material behind the [`KeySource`]
//! trait (files, optionally encrypted under a [`Passphrase`] as standard PKCS#8 PBES2), and
//! the CA's wire formats: PKCS#10 requests ([`parse_certificate_request`], which verifies
//! proof of possession), EST's base64 bodies ([`decode_est_base64`], [`encode_est_base64`])
//! and certs-only CMS responses ([`certs_only`]), and CRLs signed by each issuing CA
//! ([`CertificateAuthority::issue_crl`], [`CertificateAuthority::issue_crl_for`]). It also
//! reads verified client certificates: their [`DeviceId`] ([`device_id_from_certificate`]),
//! the facts revocation and audit need ([`certificate_facts`], [`serial_hex`]) and which
//! issuing CA signed them ([`CertificateAuthority::issuer_of`]).
//!
//! **Does not own:** TLS or chain verification (`moat-net` runs rustls with the root and
//! [`CertificateAuthority::trusted_issuing_certs`] as trust anchors and calls
//! [`device_id_from_certificate`] on the verified leaf); the EST HTTP endpoints, who may
//! enroll as which device, and enrollment policy (`moat-hub`); which certificates are
//! revoked, CRL numbering and publication, and where certificates are stored (`moat-hub`,
//! `moat-store`); when to rotate, reloading the CA after a rotation, reading passphrases from
//! argv or the environment, and the `moat ca ...` commands (`moat-hub`, the binary).
//!
//! **Trust boundary:** the CA keys. Nothing outside this crate can read them: the API hands
//! out certificates, CRLs, certificate requests and freshly generated *leaf* keys only. The
//! root key is needed only to create the CA and to sign issuing CAs, so it can live on
//! another machine; a passphrase protects key files at rest and never appears in `Debug`
//! output or errors. The CA files on disk are operator territory and are verified on load
//! (chain, signatures, key/certificate match, permissions) rather than trusted. Peer bytes
//! enter through [`decode_est_base64`], [`parse_certificate_request`],
//! [`device_id_from_certificate`] and [`certificate_facts`]: all are size-limited, safe on
//! arbitrary input and fuzzed (`fuzz/`), as is the CA key-file reader (module `fuzz`,
//! feature `fuzzing`). A request is evidence, not instructions: only its public key reaches
//! a device certificate, never its names or extensions; an issuing CA request contributes
//! its key and subject name, never its extensions.
//!
//! **I/O:** unlike the other engines this crate reads and writes files (only through the
//! `storage` module), because CA keys must not pass through any other crate. It never reads
//! the clock: every operation takes `now`.
//!
//! Unix only: key file permissions are part of the security argument.
#![forbid(unsafe_code)]

mod authority;
mod base64;
mod crl;
mod csr;
mod der;
mod error;
mod est;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod identity;
mod key;
mod offline;
mod pem;
mod pkcs7;
mod pkcs8;
mod random;
mod rotation;
mod storage;

pub use authority::{
    CA_KEY_ALGORITHM, CLOCK_SKEW_ALLOWANCE, CaOptions, CertificateAuthority, CertifiedKey,
    DEFAULT_DEVICE_CERT_VALIDITY, ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE,
    ISSUING_CA_PENDING_KEY_FILE, ISSUING_CA_PREVIOUS_CERT_FILE, ISSUING_CA_PREVIOUS_KEY_FILE,
    ISSUING_CA_VALIDITY, IssuedCertificate, IssuerSlot, LEAF_KEY_ALGORITHM, LeafKey,
    MAX_DEVICE_CERT_VALIDITY, MAX_SERVER_NAMES, ROOT_CA_CERT_FILE, ROOT_CA_KEY_FILE,
    ROOT_CA_VALIDITY, SERVER_CERT_VALIDITY,
};
pub use crl::{MAX_CRL_ENTRIES, MAX_SERIAL_LEN, RevocationReason, RevokedSerial};
pub use csr::{
    CertificateRequest, MAX_COMMON_NAME_LEN, MAX_CSR_ATTRIBUTES, MAX_CSR_SIZE,
    MAX_REQUESTED_EXTENSIONS, MAX_REQUESTED_VALUES, MAX_RSA_KEY_BITS, MIN_RSA_KEY_BITS,
    PublicKeyKind, RequestedExtensions, parse_certificate_request,
};
pub use error::{Blame, PkiError};
pub use est::{MAX_EST_BODY_SIZE, decode_est_base64, encode_est_base64};
pub use identity::{
    CertificateFacts, DEVICE_URI_PREFIX, MAX_DEVICE_CERTIFICATE_SIZE, ca_certificate_subject,
    certificate_facts, certificate_validity, device_id_from_certificate, device_uri, serial_hex,
};
pub use key::{CaKeyRole, CaSigningKey, FileKeySource, KeyAlgorithm, KeySource};
pub use offline::OfflineRoot;
pub use pkcs7::certs_only;
pub use pkcs8::{
    MAX_PASSPHRASE_LEN, MAX_PBKDF2_ITERATIONS, MIN_PASSPHRASE_LEN, PBKDF2_ITERATIONS, Passphrase,
};
pub use rotation::IssuingRequest;
pub use storage::{MAX_CA_FILE_SIZE, write_private_file};

#[doc(no_inline)]
pub use moat_types::DeviceId;
