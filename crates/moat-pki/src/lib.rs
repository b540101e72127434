//! # moat-pki: Moat's built-in certificate authority
//!
//! **Owns:** the root CA and the issuing CA (creating them on first start, loading and
//! cross-checking them afterwards), the certificate profiles Moat issues (the hub's server
//! certificate, device client certificates), CA key material behind the [`KeySource`] trait,
//! and the mapping from a verified client certificate to its [`DeviceId`]
//! ([`device_id_from_certificate`]).
//!
//! **Does not own:** TLS or chain verification (`moat-net` runs rustls with
//! [`CertificateAuthority::root_cert_der`] as the trust anchor and calls
//! [`device_id_from_certificate`] on the verified leaf); where device certificates are stored
//! or to whom they are handed (`moat-hub`, `moat-store`); revocation lists, enrollment from
//! device-generated keys (CSR) and CA rotation (later).
//!
//! **Trust boundary:** the CA keys. Nothing outside this crate can read them: the API hands
//! out certificates and freshly generated *leaf* keys only. The CA files on disk are operator
//! territory and are verified on load (chain, signatures, key/certificate match,
//! permissions) rather than trusted. [`device_id_from_certificate`] parses peer-supplied
//! bytes; it runs after rustls has verified the chain but is safe on arbitrary input.
//!
//! **I/O:** unlike the other engines this crate reads and writes files (only in the `storage`
//! module), because CA keys must not pass through any other crate. It never reads the clock:
//! every operation takes `now`.
//!
//! Unix only: key file permissions are part of the security argument.
#![forbid(unsafe_code)]

mod authority;
mod error;
mod identity;
mod key;
mod pem;
mod random;
mod storage;

pub use authority::{
    CA_KEY_ALGORITHM, CLOCK_SKEW_ALLOWANCE, CertificateAuthority, DEFAULT_DEVICE_CERT_VALIDITY,
    ISSUING_CA_CERT_FILE, ISSUING_CA_KEY_FILE, ISSUING_CA_VALIDITY, IssuedCertificate,
    LEAF_KEY_ALGORITHM, MAX_DEVICE_CERT_VALIDITY, MAX_SERVER_NAMES, ROOT_CA_CERT_FILE,
    ROOT_CA_KEY_FILE, ROOT_CA_VALIDITY, SERVER_CERT_VALIDITY,
};
pub use error::{Blame, PkiError};
pub use identity::{
    DEVICE_URI_PREFIX, MAX_DEVICE_CERTIFICATE_SIZE, device_id_from_certificate, device_uri,
};
pub use key::{CaKeyRole, CaSigningKey, FileKeySource, KeyAlgorithm, KeySource};
pub use storage::{MAX_CA_FILE_SIZE, write_private_file};

#[doc(no_inline)]
pub use moat_types::DeviceId;
