//! The root and issuing CAs, and the certificate profiles they issue.
//!
//! ```text
//! Moat Root CA {suffix}      20 years, pathLen 1, keyCertSign+cRLSign; key used only to
//!   │                        sign issuing CAs (here, or offline: `offline`), checked at load
//!   │                        if present, then dropped from memory
//!   ├─ Moat Issuing CA {suffix}   5 years, pathLen 0, keyCertSign+cRLSign; key kept in memory
//!   │    ├─ server certificate    serverAuth, SAN localhost, 127.0.0.1, ::1 + configured names
//!   │    ├─ device certificate    clientAuth, CN = id, SAN urn:moat:device:{id}; for a key
//!   │    │                        generated here, or for the key of a verified CSR (`csr`)
//!   │    └─ CRL (`crl`)           the device certificates it revoked
//!   └─ previous issuing CA        after a rotation (`rotation`): still trusted until it
//!        └─ CRL                   expires, signs only the CRL of what it issued
//! ```
//! Every certificate has a random serial, a notBefore backdated by
//! [`CLOCK_SKEW_ALLOWANCE`], a Subject Key Identifier, and (below the root) an Authority Key
//! Identifier equal to its issuer's SKI, so OpenSSL and webpki both build the chain.
//!
//! Keys are found by public key, not by file name: the loader looks for each issuing CA's
//! key among the issuing key roles, so the short windows of a rotation in which a key has
//! not yet moved to its role's file still load (see `rotation`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use moat_types::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::{OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::key::{self, CaKeyRole, CaSigningKey, FileKeySource, KeyAlgorithm, KeySource, Signer};
use crate::storage::{self, PUBLIC_FILE_MODE, Replace};
use crate::{CertificateRequest, PkiError, identity, pem, random};

/// The root CA certificate: what clients trust (hand it out as `ca.crt`).
pub const ROOT_CA_CERT_FILE: &str = "root-ca.crt";
/// The root CA private key (PKCS#8 PEM, mode 0600). Absent from a hub whose root is offline.
pub const ROOT_CA_KEY_FILE: &str = "root-ca.key";
/// The current issuing CA certificate: signs new certificates.
pub const ISSUING_CA_CERT_FILE: &str = "issuing-ca.crt";
/// The current issuing CA private key (PKCS#8 PEM, mode 0600).
pub const ISSUING_CA_KEY_FILE: &str = "issuing-ca.key";
/// The issuing CA before the last rotation, trusted until it expires.
pub const ISSUING_CA_PREVIOUS_CERT_FILE: &str = "issuing-ca.previous.crt";
/// The previous issuing CA's private key (mode 0600), kept to sign the CRL of what it issued.
pub const ISSUING_CA_PREVIOUS_KEY_FILE: &str = "issuing-ca.previous.key";
/// A new issuing CA key waiting for its certificate (mode 0600).
pub const ISSUING_CA_PENDING_KEY_FILE: &str = "issuing-ca.pending.key";

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Validity of the root CA: 20 years.
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs((20 * 365 + 5) * DAY);
/// Validity of the issuing CA: 5 years.
pub const ISSUING_CA_VALIDITY: Duration = Duration::from_secs((5 * 365 + 1) * DAY);
/// How far every notBefore is backdated, so a peer whose clock runs behind ours still accepts
/// a certificate issued just now.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(HOUR);
/// Default validity of a device certificate: 30 days.
pub const DEFAULT_DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(30 * DAY);
/// Longest device certificate validity we issue: 1 year. Short-lived certificates limit what
/// a stolen device key is worth; renewal is cheap.
pub const MAX_DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// Validity of a server certificate: 90 days. The hub issues a fresh one at start and when
/// the current one is near its `not_after`.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * DAY);
/// Most extra names [`CertificateAuthority::issue_server_certificate`] accepts.
pub const MAX_SERVER_NAMES: usize = 32;
/// Default algorithm of newly created CA keys ([`CaOptions::default`]).
pub const CA_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256Sha256;
/// Algorithm of the server and device keys generated here. Certificates issued for a
/// request keep the device's own key type.
pub const LEAF_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256Sha256;

/// Names that are always in the server certificate, so local clients work out of the box.
const SERVER_DEFAULT_DNS_NAME: &str = "localhost";
const SERVER_DEFAULT_IPS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
const ORGANIZATION: &str = "Moat";
/// Random bytes in the CA names, so that two installations, and two issuing CAs of one
/// installation, never share an issuer name (a verifier matches issuers and CRLs by name).
pub(crate) const CA_NAME_SUFFIX_LEN: usize = 8;

/// What to choose when a CA is created. Loading ignores it: the algorithm of an existing CA
/// is that of its stored keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaOptions {
    /// Algorithm of the new CA keys (root and issuing); [`CA_KEY_ALGORITHM`] by default.
    /// Server and device keys generated here stay [`LEAF_KEY_ALGORITHM`].
    pub algorithm: KeyAlgorithm,
}

impl CaOptions {
    /// The defaults, with CA keys of `algorithm`.
    pub fn with_algorithm(algorithm: KeyAlgorithm) -> Self {
        Self { algorithm }
    }
}

impl Default for CaOptions {
    fn default() -> Self {
        Self::with_algorithm(CA_KEY_ALGORITHM)
    }
}

/// Which of the (at most two) trusted issuing CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IssuerSlot {
    /// The current issuing CA: signs every new certificate.
    Current,
    /// The issuing CA before the last rotation: trusted until it expires, signs only the CRL
    /// of what it issued.
    Previous,
}

/// Where a certificate being checked came from, for error messages: a file of the CA
/// directory (damaged stored state) or an input the caller handed in (a refused request).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin<'a> {
    File(&'a Path),
    Given(&'static str),
}

impl Origin<'_> {
    pub(crate) fn error(self, reason: impl Into<String>) -> PkiError {
        match self {
            Self::File(path) => PkiError::corrupt(path, reason),
            Self::Given(what) => PkiError::InvalidRequest(format!("{what}: {}", reason.into())),
        }
    }

    fn name(self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Given(what) => what.to_owned(),
        }
    }
}

/// A CA certificate as loaded and checked.
pub(crate) struct CaCertificate {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
    pub(crate) subject: String,
    pub(crate) not_after: OffsetDateTime,
    /// Its Subject Key Identifier, if it has one.
    pub(crate) key_id: Option<Vec<u8>>,
}

impl CaCertificate {
    /// The certificate parsed again (it parsed when it was loaded).
    pub(crate) fn x509(&self) -> Result<X509Certificate<'_>, PkiError> {
        x509_parser::parse_x509_certificate(&self.der)
            .map(|(_, cert)| cert)
            .map_err(|_| PkiError::Generation("a loaded CA certificate no longer parses".into()))
    }
}

/// One issuing CA: its certificate and the signer for its key.
pub(crate) struct IssuingCa {
    pub(crate) cert: CaCertificate,
    pub(crate) issuer: Issuer<'static, Signer>,
    algorithm: KeyAlgorithm,
}

/// Moat's certificate authority: a root CA and the issuing CA signed by it that signs new
/// certificates, plus, after a rotation, the previous issuing CA until it expires.
///
/// Holds the issuing CAs' signing keys; the root key is only touched when the CA is created,
/// when it is loaded (to check it matches, if it is present at all) and when it signs a new
/// issuing CA, then dropped.
pub struct CertificateAuthority {
    root: CaCertificate,
    root_key_available: bool,
    current: IssuingCa,
    previous: Option<IssuingCa>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuers hold the signing keys: list only public facts.
        f.debug_struct("CertificateAuthority")
            .field("root", &self.root.subject)
            .field("root_key_available", &self.root_key_available)
            .field("issuing", &self.current.cert.subject)
            .field("issuing_not_after", &self.current.cert.not_after)
            .field("issuing_algorithm", &self.current.algorithm)
            .field(
                "previous_issuing",
                &self.previous.as_ref().map(|p| &p.cert.subject),
            )
            .finish_non_exhaustive()
    }
}

/// The certificate files of a CA directory, as bytes (each `None` if absent).
pub(crate) struct CertFiles {
    pub(crate) root: Option<Vec<u8>>,
    pub(crate) issuing: Option<Vec<u8>>,
    pub(crate) previous: Option<Vec<u8>>,
}

impl CertFiles {
    pub(crate) fn read(dir: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            root: storage::read_public_file(&dir.join(ROOT_CA_CERT_FILE))?,
            issuing: storage::read_public_file(&dir.join(ISSUING_CA_CERT_FILE))?,
            previous: storage::read_public_file(&dir.join(ISSUING_CA_PREVIOUS_CERT_FILE))?,
        })
    }

    /// The previous issuing CA certificate, unless it is a byte-for-byte copy of the current
    /// one (what a rotation interrupted before its commit leaves).
    pub(crate) fn distinct_previous(&self) -> Option<&[u8]> {
        self.previous
            .as_deref()
            .filter(|previous| Some(*previous) != self.issuing.as_deref())
    }
}

/// The issuing key roles, in the order they are searched for a certificate's key.
pub(crate) const ISSUING_KEY_ROLES: [CaKeyRole; 3] = [
    CaKeyRole::Issuing,
    CaKeyRole::PendingIssuing,
    CaKeyRole::PreviousIssuing,
];

/// The issuing keys of a key source, each opened (and, if encrypted, decrypted) at most
/// once, matched to certificates by public key.
pub(crate) struct KeyPool<'k> {
    keys: &'k dyn KeySource,
    opened: Vec<(CaKeyRole, Option<Box<dyn CaSigningKey>>)>,
}

impl<'k> KeyPool<'k> {
    pub(crate) fn new(keys: &'k dyn KeySource) -> Self {
        Self {
            keys,
            opened: Vec::new(),
        }
    }

    /// The key for `role`, if there is one.
    pub(crate) fn get(&mut self, role: CaKeyRole) -> Result<Option<&dyn CaSigningKey>, PkiError> {
        if !self.opened.iter().any(|(r, _)| *r == role) {
            let key = self.keys.open(role)?;
            self.opened.push((role, key));
        }
        Ok(self
            .opened
            .iter()
            .find(|(r, _)| *r == role)
            .and_then(|(_, key)| key.as_deref()))
    }

    /// The roles holding the key whose SubjectPublicKeyInfo is `spki`, `preferred` first if
    /// it is one of them.
    pub(crate) fn holding(
        &mut self,
        spki: &[u8],
        preferred: CaKeyRole,
    ) -> Result<Vec<CaKeyRole>, PkiError> {
        let order = std::iter::once(preferred)
            .chain(ISSUING_KEY_ROLES.into_iter().filter(|r| *r != preferred));
        let mut found = Vec::new();
        for role in order {
            if let Some(key) = self.get(role)?
                && key::spki_der(key) == spki
            {
                found.push(role);
            }
        }
        Ok(found)
    }

    /// The first role, `preferred` first, holding the key whose SubjectPublicKeyInfo is
    /// `spki`; keys after it are not opened.
    fn find(&mut self, spki: &[u8], preferred: CaKeyRole) -> Result<Option<CaKeyRole>, PkiError> {
        let order = std::iter::once(preferred)
            .chain(ISSUING_KEY_ROLES.into_iter().filter(|r| *r != preferred));
        for role in order {
            if let Some(key) = self.get(role)?
                && key::spki_der(key) == spki
            {
                return Ok(Some(role));
            }
        }
        Ok(None)
    }

    /// Takes the key for `role` out of the pool.
    fn take(&mut self, role: CaKeyRole) -> Option<Box<dyn CaSigningKey>> {
        self.opened
            .iter_mut()
            .find(|(r, _)| *r == role)
            .and_then(|(_, key)| key.take())
    }

    /// Forgets what was opened for `role` (after the key source moved or deleted it).
    pub(crate) fn forget(&mut self, role: CaKeyRole) {
        self.opened.retain(|(r, _)| *r != role);
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir` (e.g. `DATA_DIR/pki`), creating a fresh root CA and an issuing
    /// CA signed by it on first use. Returns whether it was created.
    ///
    /// Files: [`ROOT_CA_CERT_FILE`], [`ROOT_CA_KEY_FILE`] (may be absent: offline root),
    /// [`ISSUING_CA_CERT_FILE`], [`ISSUING_CA_KEY_FILE`], and after a rotation
    /// [`ISSUING_CA_PREVIOUS_CERT_FILE`] and [`ISSUING_CA_PREVIOUS_KEY_FILE`]. Keys are
    /// created with mode 0600 and refused if group or others can access them; `dir` is
    /// created with mode 0700 and refused if others can write it. Loading checks that the
    /// files belong together (see [`load_or_create_with_keys`](Self::load_or_create_with_keys)).
    pub fn load_or_create(dir: &Path, now: OffsetDateTime) -> Result<(Self, bool), PkiError> {
        Self::load_or_create_with_keys(dir, &FileKeySource::new(dir), now)
    }

    /// Like [`load_or_create`](Self::load_or_create), with the CA keys in `keys` and only the
    /// certificates in `dir`.
    ///
    /// A partial CA (some parts missing) is an error, never silently replaced. The root key
    /// may be absent (the root is kept offline: see [`OfflineRoot`](crate::OfflineRoot));
    /// everything else must be there. On load, fails naming the file when: a certificate
    /// does not parse or is not a CA; the root is not validly self-signed; an issuing CA is
    /// not named and signed by the root; a key does not match its certificate; the root or
    /// the current issuing CA has expired. A previous issuing CA that has expired is ignored.
    pub fn load_or_create_with_keys(
        dir: &Path,
        keys: &dyn KeySource,
        now: OffsetDateTime,
    ) -> Result<(Self, bool), PkiError> {
        Self::load_or_create_with(dir, keys, &CaOptions::default(), now)
    }

    /// Like [`load_or_create_with_keys`](Self::load_or_create_with_keys), creating a new CA
    /// with `options` (e.g. Ed25519 keys). An existing CA is loaded as it is, whatever its
    /// algorithm.
    pub fn load_or_create_with(
        dir: &Path,
        keys: &dyn KeySource,
        options: &CaOptions,
        now: OffsetDateTime,
    ) -> Result<(Self, bool), PkiError> {
        storage::ensure_private_dir(dir)?;
        let created = nothing_stored(dir, keys)?;
        if created {
            create(dir, keys, options, now)?;
        }
        // After creating, load what was written through the same checks as every later start.
        Ok((Self::load(dir, keys, now)?, created))
    }

    /// Loads and checks the CA in `dir`, which must be complete.
    pub(crate) fn load(
        dir: &Path,
        keys: &dyn KeySource,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let now = to_utc_seconds(now);
        let files = CertFiles::read(dir)?;
        let (Some(root_bytes), Some(issuing_bytes)) = (&files.root, &files.issuing) else {
            return Err(incomplete(dir, keys, &files));
        };
        let root_path = dir.join(ROOT_CA_CERT_FILE);
        let root = parse_root(Origin::File(&root_path), root_bytes, now)?;
        let root_x509 = root.x509()?;
        let root_key_available = match keys.open(CaKeyRole::Root)? {
            Some(root_key) => {
                check_key_matches(
                    root_key.as_ref(),
                    keys.location(CaKeyRole::Root),
                    &root_path,
                    &root_x509,
                )?;
                // The root key is dropped here: issuing needs only the issuing key.
                true
            }
            None => false,
        };

        let mut pool = KeyPool::new(keys);
        let current = load_issuing(
            &dir.join(ISSUING_CA_CERT_FILE),
            issuing_bytes,
            &root_x509,
            &mut pool,
            CaKeyRole::Issuing,
            now,
        )?;
        let previous = match files.distinct_previous() {
            None => None,
            Some(bytes) => {
                let path = dir.join(ISSUING_CA_PREVIOUS_CERT_FILE);
                if expired(Origin::File(&path), bytes, now)? {
                    // Every certificate it issued has expired too: nothing left to trust.
                    None
                } else {
                    let previous = load_issuing(
                        &path,
                        bytes,
                        &root_x509,
                        &mut pool,
                        CaKeyRole::PreviousIssuing,
                        now,
                    )?;
                    if previous.cert.x509()?.subject().as_raw()
                        == current.cert.x509()?.subject().as_raw()
                    {
                        return Err(PkiError::corrupt(
                            &path,
                            "has the same subject as the current issuing CA",
                        ));
                    }
                    Some(previous)
                }
            }
        };
        drop(root_x509);
        Ok(Self {
            root,
            root_key_available,
            current,
            previous,
        })
    }

    /// The root CA certificate in PEM: what clients trust (`ca.crt`).
    pub fn root_cert_pem(&self) -> &str {
        &self.root.pem
    }

    /// The root CA certificate in DER: the trust anchor for the hub's client verifier.
    pub fn root_cert_der(&self) -> CertificateDer<'static> {
        self.root.der.clone()
    }

    /// Whether the root CA key was found (and matched) when the CA was loaded. `false` for a
    /// hub whose root is kept offline: it can issue leaf certificates and CRLs, but a new
    /// issuing CA must be signed on the root's machine.
    pub fn root_key_available(&self) -> bool {
        self.root_key_available
    }

    /// The current issuing CA certificate in PEM.
    pub fn issuing_cert_pem(&self) -> &str {
        &self.current.cert.pem
    }

    /// The current issuing CA certificate in DER.
    pub fn issuing_cert_der(&self) -> CertificateDer<'static> {
        self.current.cert.der.clone()
    }

    /// When the current issuing CA expires: no certificate is issued past this instant.
    pub fn issuing_not_after(&self) -> OffsetDateTime {
        self.current.cert.not_after
    }

    /// The algorithm of the current issuing CA's key (what new certificates are signed with).
    pub fn issuing_key_algorithm(&self) -> KeyAlgorithm {
        self.current.algorithm
    }

    /// The issuing CA certificates to trust, DER, current first: the current one, then the
    /// previous one while it has not expired (as of loading). Certificates issued before the
    /// last rotation chain to the previous one; make every one of them (and the root) a trust
    /// anchor, and publish a CRL for each ([`issue_crl_for`](Self::issue_crl_for)).
    pub fn trusted_issuing_certs(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|ca| ca.cert.der.clone())
            .collect()
    }

    /// The previous issuing CA certificate in PEM, if one is still trusted.
    pub fn previous_issuing_cert_pem(&self) -> Option<&str> {
        self.previous.as_ref().map(|ca| ca.cert.pem.as_str())
    }

    /// When the previous issuing CA expires, if one is still trusted: the last instant a
    /// certificate it issued can be valid, after which a rotation discards it.
    pub fn previous_issuing_not_after(&self) -> Option<OffsetDateTime> {
        self.previous.as_ref().map(|ca| ca.cert.not_after)
    }

    /// Which trusted issuing CA signed the certificate `cert_der` (DER, at most
    /// [`MAX_DEVICE_CERTIFICATE_SIZE`](crate::MAX_DEVICE_CERTIFICATE_SIZE) bytes), or `None`
    /// if neither did: its issuer name must be the CA's subject, its Authority Key Identifier
    /// (if any) the CA's Subject Key Identifier, and its signature must verify with the CA's
    /// key. For routing a revoked serial to the right CRL.
    pub fn issuer_of(&self, cert_der: &[u8]) -> Option<IssuerSlot> {
        if cert_der.len() > identity::MAX_DEVICE_CERTIFICATE_SIZE {
            return None;
        }
        let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let aki = authority_key_id(&cert);
        self.slots().into_iter().find_map(|(slot, ca)| {
            let ca_x509 = ca.cert.x509().ok()?;
            let named = cert.issuer().as_raw() == ca_x509.subject().as_raw();
            let key_id_agrees = match (&aki, &ca.cert.key_id) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            };
            let signed = cert.verify_signature(Some(ca_x509.public_key())).is_ok();
            (named && key_id_agrees && signed).then_some(slot)
        })
    }

    /// Which trusted issuing CA has the Subject Key Identifier `key_id` (what an issued
    /// certificate carries as its Authority Key Identifier, and
    /// [`IssuedCertificate::issuer_key_id`] records), or `None`.
    pub fn issuer_slot_for_key_id(&self, key_id: &[u8]) -> Option<IssuerSlot> {
        self.slots()
            .into_iter()
            .find_map(|(slot, ca)| (ca.cert.key_id.as_deref() == Some(key_id)).then_some(slot))
    }

    fn slots(&self) -> Vec<(IssuerSlot, &IssuingCa)> {
        std::iter::once((IssuerSlot::Current, &self.current))
            .chain(self.previous.iter().map(|p| (IssuerSlot::Previous, p)))
            .collect()
    }

    /// The issuing CA in `slot`, if there is one.
    pub(crate) fn issuing_ca(&self, slot: IssuerSlot) -> Option<&IssuingCa> {
        match slot {
            IssuerSlot::Current => Some(&self.current),
            IssuerSlot::Previous => self.previous.as_ref(),
        }
    }

    /// Server certificate for the hub's listeners, valid for [`SERVER_CERT_VALIDITY`].
    ///
    /// SANs: DNS `localhost`, IP `127.0.0.1` and `::1`, plus `extra_names` (each a DNS name
    /// or an IP address; no wildcards; at most [`MAX_SERVER_NAMES`]). EKU serverAuth, fresh
    /// ECDSA P-256 key, signed by the current issuing CA.
    pub fn issue_server_certificate(
        &self,
        extra_names: &[String],
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        if extra_names.len() > MAX_SERVER_NAMES {
            return Err(PkiError::InvalidRequest(format!(
                "{} server names, more than the limit of {MAX_SERVER_NAMES}",
                extra_names.len()
            )));
        }
        let mut names = vec![SanType::DnsName(SERVER_DEFAULT_DNS_NAME.try_into()?)];
        names.extend(SERVER_DEFAULT_IPS.map(SanType::IpAddress));
        for name in extra_names {
            let san = server_san(name)?;
            if !names.contains(&san) {
                names.push(san);
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name("Moat hub");
        params.subject_alt_names = names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_new_key(params, SERVER_CERT_VALIDITY, now)
    }

    /// Device certificate with a freshly generated ECDSA P-256 key: subject CN = `id`, SAN
    /// URI `urn:moat:device:{id}`, EKU clientAuth, keyUsage digitalSignature, not a CA, fresh
    /// random serial.
    ///
    /// `validity` (typically [`DEFAULT_DEVICE_CERT_VALIDITY`]) must be non-zero and at most
    /// [`MAX_DEVICE_CERT_VALIDITY`]; the certificate never outlives the issuing CA.
    pub fn issue_device_certificate(
        &self,
        id: &DeviceId,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        self.issue_with_new_key(device_profile(id, validity)?, validity, now)
    }

    /// Device certificate for the key in `request` (EST enrollment, RFC 7030 4.2), with
    /// exactly the profile of [`issue_device_certificate`](Self::issue_device_certificate).
    ///
    /// Only the public key is taken from the request (so the certificate keeps the device's
    /// key type, whatever the CA's). Its subject, requested names, CA flag, key usages and
    /// every other extension are ignored (they are in
    /// [`CertificateRequest::requested_extensions`] for the audit log); the identity is `id`,
    /// which the caller must have established by authenticating the device, never from the
    /// request's own subject.
    pub fn issue_device_certificate_for_request(
        &self,
        id: &DeviceId,
        request: &CertificateRequest,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.issue_leaf(
            device_profile(id, validity)?,
            validity,
            now,
            request.public_key(),
        )
    }

    /// Generates a leaf key of [`LEAF_KEY_ALGORITHM`] and issues `params` for it.
    fn issue_with_new_key(
        &self,
        params: CertificateParams,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        let key = rcgen::KeyPair::generate_for(LEAF_KEY_ALGORITHM.rcgen())?;
        let certificate = self.issue_leaf(params, validity, now, &key)?;
        Ok(CertifiedKey {
            certificate,
            key: LeafKey {
                pem: key.serialize_pem(),
                der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            },
        })
    }

    /// Fills in what every end-entity certificate shares and signs it for `public_key` with
    /// the current issuing CA.
    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        validity: Duration,
        now: OffsetDateTime,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCertificate, PkiError> {
        let now = to_utc_seconds(now);
        let issuing = &self.current.cert;
        if now >= issuing.not_after {
            return Err(PkiError::Misconfigured(format!(
                "the issuing CA \"{}\" expired at {}; rotate it (CertificateAuthority::\
                 rotate_issuing, or issuing_request and import_issuing with an offline root)",
                issuing.subject, issuing.not_after
            )));
        }
        let not_before = shift(now, CLOCK_SKEW_ALLOWANCE, Direction::Back)?;
        let not_after = shift(now, validity, Direction::Forward)?.min(issuing.not_after);
        let serial = random::serial_number()?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        // Leaf keys only sign in TLS (no key encipherment): the server keys generated here
        // are ECDSA, and a client key of any type only signs its CertificateVerify.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;

        let cert = params.signed_by(public_key, &self.current.issuer)?;
        let cert_der = cert.der().clone();
        Ok(IssuedCertificate {
            cert_pem: format!("{}{}", pem::encode("CERTIFICATE", &cert_der), issuing.pem),
            chain: vec![cert_der.clone(), issuing.der.clone()],
            cert_der,
            serial: serial.to_bytes(),
            not_before,
            not_after,
            issuer_key_id: issuing.key_id.clone(),
        })
    }
}

/// Whether nothing of a CA is stored yet: no certificate in `dir`, no key in `keys`.
fn nothing_stored(dir: &Path, keys: &dyn KeySource) -> Result<bool, PkiError> {
    for name in [
        ROOT_CA_CERT_FILE,
        ISSUING_CA_CERT_FILE,
        ISSUING_CA_PREVIOUS_CERT_FILE,
    ] {
        let path = dir.join(name);
        if storage::exists(&path).map_err(|e| PkiError::io(&path, e))? {
            return Ok(false);
        }
    }
    for role in [
        CaKeyRole::Root,
        CaKeyRole::Issuing,
        CaKeyRole::PreviousIssuing,
        CaKeyRole::PendingIssuing,
    ] {
        if keys.exists(role)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The root CA in `bytes` (PEM), checked: a CA, validly self-signed, names rcgen can
/// rebuild, not expired at `now`.
pub(crate) fn parse_root(
    origin: Origin<'_>,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<CaCertificate, PkiError> {
    let der = parse_cert_pem(origin, bytes)?;
    let cert = parse_der(origin, &der)?;
    check_ca(origin, &cert)?;
    if cert.subject().as_raw() != cert.issuer().as_raw() {
        return Err(origin.error("not a self-signed root CA"));
    }
    cert.verify_signature(None)
        .map_err(|_| origin.error("its self-signature does not verify"))?;
    check_name_components(origin, &cert)?;
    ca_certificate(origin, &cert, &der, now)
}

/// Checks that `cert` is named and signed by `root`.
pub(crate) fn check_issued_by_root(
    origin: Origin<'_>,
    cert: &X509Certificate<'_>,
    root: &X509Certificate<'_>,
) -> Result<(), PkiError> {
    if cert.issuer().as_raw() != root.subject().as_raw() {
        return Err(origin.error(format!(
            "issued by \"{}\", not by the root CA \"{}\"",
            cert.issuer(),
            root.subject(),
        )));
    }
    cert.verify_signature(Some(root.public_key()))
        .map_err(|_| origin.error("its signature does not verify with the root CA key"))
}

/// Loads one issuing CA from the file at `path` (contents `bytes`), with its key from
/// `pool` (normally in `role`).
fn load_issuing(
    path: &Path,
    bytes: &[u8],
    root: &X509Certificate<'_>,
    pool: &mut KeyPool<'_>,
    role: CaKeyRole,
    now: OffsetDateTime,
) -> Result<IssuingCa, PkiError> {
    let origin = Origin::File(path);
    let der = parse_cert_pem(origin, bytes)?;
    let cert = parse_der(origin, &der)?;
    check_ca(origin, &cert)?;
    check_issued_by_root(origin, &cert, root)?;
    let key = match pool.find(cert.public_key().raw, role)? {
        Some(found) => pool.take(found),
        None => None,
    };
    let Some(key) = key else {
        let location = pool.keys.location(role);
        return Err(if pool.get(role)?.is_some() {
            PkiError::KeyMismatch {
                key: location,
                certificate: path.to_owned(),
            }
        } else {
            PkiError::Misconfigured(format!(
                "the key of {} is missing: {location} does not exist. Restore it from a backup",
                path.display()
            ))
        });
    };
    let ca = ca_certificate(origin, &cert, &der, now)?;
    check_name_components(origin, &cert)?;
    let algorithm = key.algorithm();
    let issuer = Issuer::from_ca_cert_der(&der, Signer(key))
        .map_err(|_| origin.error("subject name cannot be used as an issuer name"))?;
    Ok(IssuingCa {
        cert: ca,
        issuer,
        algorithm,
    })
}

/// rcgen rebuilds an issuer name from its certificate and panics on an empty RDN; x509-parser
/// should reject those, but a CA must not crash on a bad file. Multi-valued RDNs it cannot
/// rebuild at all.
pub(crate) fn check_name_components(
    origin: Origin<'_>,
    cert: &X509Certificate<'_>,
) -> Result<(), PkiError> {
    if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(origin.error("subject name has multi-valued or empty components"));
    }
    Ok(())
}

/// Whether the certificate in `bytes` has expired at `now`.
pub(crate) fn expired(
    origin: Origin<'_>,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<bool, PkiError> {
    let der = parse_cert_pem(origin, bytes)?;
    let cert = parse_der(origin, &der)?;
    Ok(now > cert.validity().not_after.to_datetime())
}

/// The device profile without its key and validity: CN = `id`, SAN URI
/// `urn:moat:device:{id}`, EKU clientAuth. [`CertificateAuthority::issue_leaf`] adds the
/// rest (CA:FALSE, keyUsage, serial, validity, key identifiers).
fn device_profile(id: &DeviceId, validity: Duration) -> Result<CertificateParams, PkiError> {
    if validity.is_zero() || validity > MAX_DEVICE_CERT_VALIDITY {
        return Err(PkiError::InvalidRequest(format!(
            "device certificate validity of {}s is outside 1s..={}s",
            validity.as_secs(),
            MAX_DEVICE_CERT_VALIDITY.as_secs()
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity::device_uri(id).try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A certificate this CA issued, with the issuing CA's certificate for the chain. Carries no
/// private key: see [`CertifiedKey`] for certificates whose key was generated here.
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedCertificate {
    /// The leaf followed by the issuing CA certificate, PEM: the chain a peer presents.
    pub cert_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Leaf, then issuing CA: what rustls' `with_single_cert` takes.
    pub chain: Vec<CertificateDer<'static>>,
    /// The serial number, big-endian (positive, 16 bytes): the handle for revocation. The
    /// same bytes as [`CertificateFacts::serial`](crate::CertificateFacts::serial) of the
    /// certificate; show it with [`serial_hex`](crate::serial_hex).
    pub serial: Vec<u8>,
    /// Start of validity (backdated by [`CLOCK_SKEW_ALLOWANCE`]).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The Subject Key Identifier of the issuing CA that signed it (the certificate's
    /// Authority Key Identifier): store it with the serial to find the CRL the serial
    /// belongs in after a rotation ([`CertificateAuthority::issuer_slot_for_key_id`]).
    pub issuer_key_id: Option<Vec<u8>>,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &identity::serial_hex(&self.serial))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A certificate and the private key this CA generated for it (server certificates, and
/// device certificates issued without a request).
#[derive(Debug)]
#[non_exhaustive]
pub struct CertifiedKey {
    /// The certificate and its chain.
    pub certificate: IssuedCertificate,
    /// Its private key.
    pub key: LeafKey,
}

/// A freshly generated end-entity private key ([`LEAF_KEY_ALGORITHM`]). Its `Debug` output
/// never shows the key; the PEM copy is overwritten with zeros on drop (best effort).
pub struct LeafKey {
    pem: String,
    der: PrivateKeyDer<'static>,
}

impl LeafKey {
    /// The key, PKCS#8 PEM. Write it with [`write_private_file`](crate::write_private_file).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The key, PKCS#8 DER: what rustls' `with_single_cert` takes (`der().clone_key()`).
    pub fn der(&self) -> &PrivateKeyDer<'static> {
        &self.der
    }
}

impl fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafKey")
            .field("algorithm", &LEAF_KEY_ALGORITHM)
            .finish_non_exhaustive()
    }
}

impl Drop for LeafKey {
    fn drop(&mut self) {
        drop(storage::SecretBytes::from(
            std::mem::take(&mut self.pem).into_bytes(),
        ));
    }
}

/// Creates the root and issuing CA in `dir` and `keys`. Keys first (never overwriting one),
/// certificates last: a crash leaves an incomplete CA that the next load reports, not a
/// certificate without its key.
fn create(
    dir: &Path,
    keys: &dyn KeySource,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let now = to_utc_seconds(now);
    let suffix = random::hex(CA_NAME_SUFFIX_LEN)?;

    let root_key = Signer(keys.create(CaKeyRole::Root, options.algorithm)?);
    let root_params = ca_params(&format!("Moat Root CA {suffix}"), 1, ROOT_CA_VALIDITY, now)?;
    let root_cert = root_params.self_signed(&root_key)?;

    let issuing_key = Signer(keys.create(CaKeyRole::Issuing, options.algorithm)?);
    let mut issuing_params = ca_params(
        &format!("Moat Issuing CA {suffix}"),
        0,
        ISSUING_CA_VALIDITY,
        now,
    )?;
    issuing_params.use_authority_key_identifier_extension = true;
    let root_issuer = Issuer::from_params(&root_params, &root_key);
    let issuing_cert = issuing_params.signed_by(&issuing_key, &root_issuer)?;

    for (name, der) in [
        (ISSUING_CA_CERT_FILE, issuing_cert.der()),
        (ROOT_CA_CERT_FILE, root_cert.der()),
    ] {
        write_cert(&dir.join(name), der, Replace::Refuse)?;
    }
    Ok(())
}

/// Writes a certificate file (PEM, mode 0644) atomically.
pub(crate) fn write_cert(path: &Path, der: &[u8], replace: Replace) -> Result<(), PkiError> {
    write_public_file(path, pem::encode("CERTIFICATE", der).as_bytes(), replace)
}

/// Writes a public file (mode 0644) atomically.
pub(crate) fn write_public_file(
    path: &Path,
    contents: &[u8],
    replace: Replace,
) -> Result<(), PkiError> {
    storage::write_atomically(path, contents, PUBLIC_FILE_MODE, replace)
        .map_err(|e| PkiError::io(path, e))
}

/// The profile shared by root and issuing CAs: `common_name` under O=Moat, basicConstraints
/// CA with `path_len`, keyCertSign and cRLSign, valid from `now` (backdated) for `validity`.
pub(crate) fn ca_params(
    common_name: &str,
    path_len: u8,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.not_before = shift(now, CLOCK_SKEW_ALLOWANCE, Direction::Back)?;
    params.not_after = shift(now, validity, Direction::Forward)?;
    params.serial_number = Some(random::serial_number()?);
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// `O=Moat, CN={common_name}`.
pub(crate) fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// One extra server name: a DNS name (validated as a hostname; wildcards refused) or an IP.
fn server_san(name: &str) -> Result<SanType, PkiError> {
    let bad = || {
        PkiError::InvalidRequest(format!(
            "server name {name:?} is neither a DNS host name nor an IP address"
        ))
    };
    match ServerName::try_from(name).map_err(|_| bad())? {
        ServerName::DnsName(dns) => {
            let dns = dns.as_ref().trim_end_matches('.').to_ascii_lowercase();
            Ok(SanType::DnsName(dns.try_into()?))
        }
        ServerName::IpAddress(ip) => Ok(SanType::IpAddress(IpAddr::from(ip))),
        _ => Err(bad()),
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Back,
    Forward,
}

/// `now` moved by `by`, or an error if that leaves the representable range.
pub(crate) fn shift(
    now: OffsetDateTime,
    by: Duration,
    direction: Direction,
) -> Result<OffsetDateTime, PkiError> {
    let by = time::Duration::try_from(by).ok();
    let shifted = by.and_then(|by| match direction {
        Direction::Back => now.checked_sub(by),
        Direction::Forward => now.checked_add(by),
    });
    shifted.ok_or_else(|| PkiError::InvalidRequest("validity period out of range".into()))
}

/// `t` in UTC, truncated to whole seconds as X.509 encodes it, so that the instants reported
/// in [`IssuedCertificate`] are exactly those in the certificate.
pub(crate) fn to_utc_seconds(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(0).unwrap_or(t)
}

/// The one certificate in the PEM `bytes`.
pub(crate) fn parse_cert_pem(
    origin: Origin<'_>,
    bytes: &[u8],
) -> Result<CertificateDer<'static>, PkiError> {
    if bytes.len() as u64 > storage::MAX_CA_FILE_SIZE {
        return Err(origin.error(format!(
            "larger than the limit of {} bytes",
            storage::MAX_CA_FILE_SIZE
        )));
    }
    let mut certs = CertificateDer::pem_slice_iter(bytes);
    let der = match certs.next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(origin.error(format!("bad PEM: {e}"))),
        None => return Err(origin.error("no PEM certificate")),
    };
    if certs.next().is_some() {
        return Err(origin.error("more than one certificate"));
    }
    Ok(der)
}

pub(crate) fn parse_der<'a>(
    origin: Origin<'_>,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(origin.error("trailing data after the certificate")),
        Err(e) => Err(origin.error(format!("not a valid X.509 certificate: {e}"))),
    }
}

pub(crate) fn check_ca(origin: Origin<'_>, cert: &X509Certificate<'_>) -> Result<(), PkiError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(origin.error("not a CA certificate")),
        Err(e) => Err(origin.error(format!("malformed basicConstraints: {e}"))),
    }
}

pub(crate) fn check_key_matches(
    key: &dyn CaSigningKey,
    key_location: String,
    cert_path: &Path,
    cert: &X509Certificate<'_>,
) -> Result<(), PkiError> {
    if key::spki_der(key) == cert.public_key().raw {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch {
            key: key_location,
            certificate: cert_path.to_owned(),
        })
    }
}

/// The checked facts of a CA certificate; an error if it has expired at `now`.
pub(crate) fn ca_certificate(
    origin: Origin<'_>,
    cert: &X509Certificate<'_>,
    der: &CertificateDer<'static>,
    now: OffsetDateTime,
) -> Result<CaCertificate, PkiError> {
    let not_after = cert.validity().not_after.to_datetime();
    let subject = cert.subject().to_string();
    if now > not_after {
        let what = origin.name();
        return Err(match origin {
            Origin::File(_) => PkiError::Misconfigured(format!(
                "the CA certificate {what} (\"{subject}\") expired at {not_after}"
            )),
            Origin::Given(_) => {
                PkiError::InvalidRequest(format!("{what} (\"{subject}\") expired at {not_after}"))
            }
        });
    }
    Ok(CaCertificate {
        pem: pem::encode("CERTIFICATE", der),
        der: der.clone(),
        subject,
        not_after,
        key_id: subject_key_id(cert),
    })
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

/// The error for a CA directory with required parts missing.
fn incomplete(dir: &Path, keys: &dyn KeySource, files: &CertFiles) -> PkiError {
    let exists = |role| keys.exists(role).unwrap_or(true);
    if files.issuing.is_none() && exists(CaKeyRole::PendingIssuing) {
        return PkiError::Misconfigured(format!(
            "the issuing CA key {} awaits its certificate: have the root sign the request \
             (`moat ca sign-issuing`) and import the certificate (`moat ca import-issuing`)",
            keys.location(CaKeyRole::PendingIssuing)
        ));
    }
    let file = |name: &str| dir.join(name).display().to_string();
    let mut parts: Vec<(String, bool)> = vec![
        (file(ROOT_CA_CERT_FILE), files.root.is_some()),
        (file(ISSUING_CA_CERT_FILE), files.issuing.is_some()),
        (
            keys.location(CaKeyRole::Issuing),
            exists(CaKeyRole::Issuing),
        ),
    ];
    // Optional parts are listed only when present.
    if exists(CaKeyRole::Root) {
        parts.insert(1, (keys.location(CaKeyRole::Root), true));
    }
    let list = |present: bool| {
        parts
            .iter()
            .filter(|(_, p)| *p == present)
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    PkiError::Misconfigured(format!(
        "incomplete CA in {}: found {}; missing {}. Restore the missing files from a backup. \
         Only if no certificate of this CA is still in use, move the directory aside to create \
         a new CA.",
        dir.display(),
        list(true),
        list(false)
    ))
}
