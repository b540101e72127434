//! A root CA kept off the hub: created, and used to sign issuing CAs, on a machine of its own.
//!
//! ```text
//! offline machine                               hub
//! ───────────────                               ───
//! OfflineRoot::create(R)   root-ca.key, root-ca.crt
//!                                               CertificateAuthority::issuing_request(D)
//!                                    ◀── issuing.csr ── (issuing-ca.pending.key stays here)
//! OfflineRoot::load(R)?.sign_issuing(csr)
//!                          ── issuing.crt, root-ca.crt ──▶
//!                                               CertificateAuthority::import_issuing(D, ..)
//!                                               load_or_create(D): no root key needed
//! ```
//! The CLI drives it: `moat ca init-root --dir R [--ed25519] [--passphrase-file F]`,
//! `moat ca issuing-request --data-dir D --out issuing.csr`, `moat ca sign-issuing --dir R
//! --csr issuing.csr --out issuing.crt`, `moat ca import-issuing`. The same steps rotate the
//! issuing CA later (see `rotation`).
//!
//! The request is the hub operator's, but it is still checked as evidence, not followed as
//! instructions: its self-signature must verify, its key must be one a Moat issuing CA uses,
//! and only its public key and subject name reach the certificate. The CA rights (pathLen 0,
//! keyCertSign and cRLSign) and the validity are the root's decision.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::asn1_rs::Tag;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_COUNTRY_NAME, OID_X509_LOCALITY_NAME,
    OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::authority::{
    CA_NAME_SUFFIX_LEN, CaCertificate, Direction, Origin, ca_params, check_key_matches, parse_root,
    shift, to_utc_seconds, write_cert,
};
use crate::key::{CaKeyRole, KeyAlgorithm, KeySource, Signer};
use crate::storage::{self, Replace};
use crate::{
    CLOCK_SKEW_ALLOWANCE, CaOptions, MAX_CA_FILE_SIZE, MAX_COMMON_NAME_LEN, PkiError,
    PublicKeyKind, ROOT_CA_CERT_FILE, ROOT_CA_VALIDITY, parse_certificate_request, pem, random,
};

/// A root CA whose key is on this machine, for signing issuing CAs: on a machine of its own
/// (an offline root), or in the hub's directory while the root is still kept there.
pub struct OfflineRoot {
    root: CaCertificate,
    issuer: Issuer<'static, Signer>,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for OfflineRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfflineRoot")
            .field("subject", &self.root.subject)
            .field("not_after", &self.root.not_after)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl OfflineRoot {
    /// Creates a root CA in `dir` (created with mode 0700 if missing): its key in `keys`
    /// (e.g. a [`FileKeySource`](crate::FileKeySource) on `dir`, with a passphrase) and
    /// [`ROOT_CA_CERT_FILE`], self-signed, valid for [`ROOT_CA_VALIDITY`], pathLen 1,
    /// keyCertSign and cRLSign, with keys of `options.algorithm`.
    ///
    /// Refused if `dir` or `keys` already hold a root CA: a root is never replaced.
    pub fn create(
        dir: &Path,
        keys: &dyn KeySource,
        options: &CaOptions,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        storage::ensure_private_dir(dir)?;
        let cert_path = dir.join(ROOT_CA_CERT_FILE);
        if storage::exists(&cert_path).map_err(|e| PkiError::io(&cert_path, e))?
            || keys.exists(CaKeyRole::Root)?
        {
            return Err(PkiError::Misconfigured(format!(
                "{} already holds a root CA ({}, {}); a root is never replaced",
                dir.display(),
                cert_path.display(),
                keys.location(CaKeyRole::Root)
            )));
        }
        let now = to_utc_seconds(now);
        let suffix = random::hex(CA_NAME_SUFFIX_LEN)?;
        let key = Signer(keys.create(CaKeyRole::Root, options.algorithm)?);
        let params = ca_params(&format!("Moat Root CA {suffix}"), 1, ROOT_CA_VALIDITY, now)?;
        let cert = params.self_signed(&key)?;
        drop(key);
        write_cert(&cert_path, cert.der(), Replace::Refuse)?;
        Self::load(dir, keys, now)
    }

    /// Loads the root CA in `dir` with its key from `keys`, checking that the certificate is
    /// a valid, unexpired, self-signed CA and that the key is its key.
    pub fn load(dir: &Path, keys: &dyn KeySource, now: OffsetDateTime) -> Result<Self, PkiError> {
        if !storage::exists(dir).map_err(|e| PkiError::io(dir, e))? {
            return Err(PkiError::Misconfigured(format!(
                "{} does not exist",
                dir.display()
            )));
        }
        storage::ensure_private_dir(dir)?;
        let now = to_utc_seconds(now);
        let path = dir.join(ROOT_CA_CERT_FILE);
        let bytes = storage::read_public_file(&path)?.ok_or_else(|| {
            PkiError::Misconfigured(format!(
                "no root CA certificate: {} is missing",
                path.display()
            ))
        })?;
        let root = parse_root(Origin::File(&path), &bytes, now)?;
        let key = keys.open(CaKeyRole::Root)?.ok_or_else(|| {
            PkiError::Misconfigured(format!(
                "the root CA key is not on this machine ({} is missing): sign issuing CAs \
                 where the root is kept (`moat ca sign-issuing`)",
                keys.location(CaKeyRole::Root)
            ))
        })?;
        check_key_matches(
            key.as_ref(),
            keys.location(CaKeyRole::Root),
            &path,
            &root.x509()?,
        )?;
        let algorithm = key.algorithm();
        let issuer = Issuer::from_ca_cert_der(&root.der, Signer(key)).map_err(|_| {
            PkiError::corrupt(&path, "subject name cannot be used as an issuer name")
        })?;
        Ok(Self {
            root,
            issuer,
            algorithm,
        })
    }

    /// The root CA certificate in PEM: what the hub imports with its issuing CA and what
    /// clients trust.
    pub fn root_cert_pem(&self) -> &str {
        &self.root.pem
    }

    /// The root CA certificate in DER.
    pub fn root_cert_der(&self) -> CertificateDer<'static> {
        self.root.der.clone()
    }

    /// When the root CA expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.root.not_after
    }

    /// The algorithm of the root key.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Signs an issuing CA certificate for the PKCS#10 request `csr_pem` (what
    /// [`CertificateAuthority::issuing_request`](crate::CertificateAuthority::issuing_request)
    /// wrote) and returns it in PEM.
    ///
    /// The certificate: the request's public key and subject name, exactly; basicConstraints
    /// CA:TRUE, pathLen 0 (critical); keyUsage keyCertSign and cRLSign (critical); no name
    /// constraints; Subject and Authority Key Identifiers; a random serial; valid from `now`
    /// (backdated by [`CLOCK_SKEW_ALLOWANCE`]) for `validity` (typically
    /// [`ISSUING_CA_VALIDITY`](crate::ISSUING_CA_VALIDITY)), but never past the root's own
    /// expiry. Nothing else the request asks for is honoured.
    ///
    /// Refused: a request over [`MAX_CA_FILE_SIZE`] bytes or not in PEM; one whose signature
    /// does not verify (the sender does not hold the key); a key other than ECDSA P-256 or
    /// Ed25519 ([`PkiError::UnsupportedKey`]); a subject without a common name, with
    /// attributes other than CN, O, OU, C, ST and L, repeated or multi-valued ones, values
    /// longer than [`MAX_COMMON_NAME_LEN`] characters, or the root's own name; a zero
    /// `validity`; an expired root.
    pub fn sign_issuing(
        &self,
        csr_pem: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        if csr_pem.len() as u64 > MAX_CA_FILE_SIZE {
            return Err(PkiError::TooLarge {
                what: "issuing CA request",
                size: csr_pem.len(),
                limit: usize::try_from(MAX_CA_FILE_SIZE).unwrap_or(usize::MAX),
            });
        }
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| {
                PkiError::InvalidCertificateRequest(
                    "not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)".into(),
                )
            })?;
        // Verifies the self-signature and the key type.
        let request = parse_certificate_request(&der)?;
        match request.public_key_kind() {
            PublicKeyKind::EcdsaP256 | PublicKeyKind::Ed25519 => {}
            other => {
                return Err(PkiError::UnsupportedKey(format!(
                    "{other} key; an issuing CA key is ECDSA P-256 or Ed25519"
                )));
            }
        }
        let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|_| {
            PkiError::InvalidCertificateRequest("not a PKCS#10 certification request".into())
        })?;
        let subject = &csr.certification_request_info.subject;
        let root_x509 = self.root.x509()?;
        if subject.as_raw() == root_x509.subject().as_raw() {
            return Err(PkiError::InvalidCertificateRequest(
                "the requested subject is the root CA's own name".into(),
            ));
        }
        let distinguished_name = issuing_subject(subject)?;

        let now = to_utc_seconds(now);
        if now >= self.root.not_after {
            return Err(PkiError::Misconfigured(format!(
                "the root CA \"{}\" expired at {}",
                self.root.subject, self.root.not_after
            )));
        }
        if validity.is_zero() {
            return Err(PkiError::InvalidRequest("zero issuing CA validity".into()));
        }
        let mut params = CertificateParams::default();
        params.not_before = shift(now, CLOCK_SKEW_ALLOWANCE, Direction::Back)?;
        params.not_after = shift(now, validity, Direction::Forward)
            .unwrap_or(self.root.not_after)
            .min(self.root.not_after);
        params.serial_number = Some(random::serial_number()?);
        params.distinguished_name = distinguished_name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(request.public_key(), &self.issuer)?;

        // The names must come out byte for byte: the subject as requested (the hub matches
        // it to its key and CRLs by it), the issuer as the root's subject (chains are built
        // by name).
        let (_, issued) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|_| PkiError::Generation("the issued certificate does not parse".into()))?;
        if issued.subject().as_raw() != subject.as_raw() {
            return Err(PkiError::InvalidCertificateRequest(
                "the requested subject cannot be reproduced exactly (unusual string types?)".into(),
            ));
        }
        if issued.issuer().as_raw() != root_x509.subject().as_raw() {
            return Err(PkiError::Generation(
                "the issuer name does not reproduce the root CA's subject".into(),
            ));
        }
        Ok(pem::encode("CERTIFICATE", cert.der()))
    }
}

/// The subject of an issuing CA request as rcgen writes it, if it is a plain name: every
/// component single-valued, only CN (required), O, OU, C, ST and L, each at most once, as
/// PrintableString or UTF8String of at most [`MAX_COMMON_NAME_LEN`] characters without
/// control characters.
fn issuing_subject(name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let invalid = |why: String| PkiError::InvalidCertificateRequest(format!("subject: {why}"));
    let mut dn = DistinguishedName::new();
    let mut seen: Vec<DnType> = Vec::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(invalid("multi-valued or empty name component".into()));
        };
        let oid = attribute.attr_type();
        let dn_type = [
            (OID_X509_COMMON_NAME, DnType::CommonName),
            (OID_X509_ORGANIZATION_NAME, DnType::OrganizationName),
            (OID_X509_ORGANIZATIONAL_UNIT, DnType::OrganizationalUnitName),
            (OID_X509_COUNTRY_NAME, DnType::CountryName),
            (OID_X509_STATE_OR_PROVINCE_NAME, DnType::StateOrProvinceName),
            (OID_X509_LOCALITY_NAME, DnType::LocalityName),
        ]
        .into_iter()
        .find_map(|(known, dn_type)| (*oid == known).then_some(dn_type))
        .ok_or_else(|| {
            invalid(format!(
                "attribute {} (only CN, O, OU, C, ST and L are accepted)",
                oid.to_id_string()
            ))
        })?;
        if seen.contains(&dn_type) {
            return Err(invalid(format!("{dn_type:?} appears twice")));
        }
        let value = attribute.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| invalid(format!("{dn_type:?} is not text")))?;
        if text.chars().count() > MAX_COMMON_NAME_LEN || text.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{dn_type:?} is longer than {MAX_COMMON_NAME_LEN} characters or contains \
                 control characters"
            )));
        }
        let dn_value = match value.header.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| invalid(format!("{dn_type:?} is not a PrintableString")))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            _ => {
                return Err(invalid(format!(
                    "{dn_type:?} is neither a PrintableString nor a UTF8String"
                )));
            }
        };
        dn.push(dn_type.clone(), dn_value);
        seen.push(dn_type);
    }
    if !seen.contains(&DnType::CommonName) {
        return Err(invalid("no common name".into()));
    }
    Ok(dn)
}
