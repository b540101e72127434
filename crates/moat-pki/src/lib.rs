//! # moat-pki: Moat's built-in certificate authority
//!
//! **Owns:** the root CA and the issuing CA (creating them on first start, loading and
//! cross-checking them afterwards), the certificate profiles Moat issues (the hub's server
//! certificate, device client certificates with a generated key or for a device's own key),
//! CA key material behind the [`KeySource`] trait, and the CA's wire formats: PKCS#10
//! requests ([`parse_certificate_request`], which verifies proof of possession), EST's base64
//! bodies ([`decode_est_base64`], [`encode_est_base64`]) and certs-only CMS responses
//! ([`certs_only`]), and CRLs signed by the issuing CA ([`CertificateAuthority::issue_crl`]).
//! It also reads verified client certificates: their [`DeviceId`]
//! ([`device_id_from_certificate`]) and the facts revocation and audit need
//! ([`certificate_facts`], [`serial_hex`]).
//!
//! **Does not own:** TLS or chain verification (`moat-net` runs rustls with
//! [`CertificateAuthority::root_cert_der`] as the trust anchor and calls
//! [`device_id_from_certificate`] on the verified leaf); the EST HTTP endpoints, who may
//! enroll as which device, and enrollment policy (`moat-hub`); which certificates are
//! revoked, CRL numbering and publication, and where certificates are stored (`moat-hub`,
//! `moat-store`); CA rotation (later).
//!
//! **Trust boundary:** the CA keys. Nothing outside this crate can read them: the API hands
//! out certificates, CRLs and freshly generated *leaf* keys only. The CA files on disk are
//! operator territory and are verified on load (chain, signatures, key/certificate match,
//! permissions) rather than trusted. Peer bytes enter through [`decode_est_base64`],
//! [`parse_certificate_request`], [`device_id_from_certificate`] and [`certificate_facts`]:
//! all are size-limited, safe on arbitrary input and fuzzed (`fuzz/`). A request is evidence,
//! not instructions: only its public key reaches a certificate, never its names or
//! extensions.
//!
//! **I/O:** unlike the other engines this crate reads and writes files (only in the `storage`
//! module), because CA keys must not pass through any other crate. It never reads the clock:
//! every operation takes `now`.
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
mod identity;
mod key;
mod pem;
mod pkcs7;
mod random;
mod storage;

pub use authority::{
    CA_KEY_ALGORITHM, CLOCK_SKEW_ALLOWANCE, CertificateAuthority, CertifiedKey,
    DEFAULT_DEVICE_CERT_VALIDITY, ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE, ISSUING_CA_VALIDITY,
    IssuedCertificate, LEAF_KEY_ALGORITHM, LeafKey, MAX_DEVICE_CERT_VALIDITY, MAX_SERVER_NAMES,
    ROOT_CA_CERT_FILE, ROOT_CA_KEY_FILE, ROOT_CA_VALIDITY, SERVER_CERT_VALIDITY,
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
    certificate_facts,
    device_id_from_certificate, device_uri, serial_hex,
};
pub use key::{CaKeyRole, CaSigningKey, FileKeySource, KeyAlgorithm, KeySource};
pub use pkcs7::certs_only;
pub use storage::{MAX_CA_FILE_SIZE, write_private_file};

#[doc(no_inline)]
pub use moat_types::DeviceId;
