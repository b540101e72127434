//! The root and issuing CA, and the certificate profiles they issue.
//!
//! ```text
//! Moat Root CA {suffix}      20 years, pathLen 1, keyCertSign+cRLSign; key used only at
//!   │                        creation and checked at load, then dropped from memory
//!   └─ Moat Issuing CA {suffix}   5 years, pathLen 0, keyCertSign+cRLSign; key kept in memory
//!        ├─ server certificate    serverAuth, SAN localhost, 127.0.0.1, ::1 + configured names
//!        ├─ device certificate    clientAuth, CN = id, SAN urn:moat:device:{id}; for a key
//!        │                        generated here, or for the key of a verified CSR (`csr`)
//!        └─ CRL (`crl`)           the device certificates it revoked
//! ```
//! Every certificate has a random serial, a notBefore backdated by
//! [`CLOCK_SKEW_ALLOWANCE`], a Subject Key Identifier, and (below the root) an Authority Key
//! Identifier equal to its issuer's SKI, so OpenSSL and webpki both build the chain.

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

use crate::key::{CaKeyRole, CaSigningKey, FileKeySource, KeyAlgorithm, KeySource, Signer};
use crate::storage::{self, PUBLIC_FILE_MODE, Replace};
use crate::{CertificateRequest, PkiError, identity, pem, random};

/// The root CA certificate: what clients trust (hand it out as `ca.crt`).
pub const ROOT_CA_CERT_FILE: &str = "root-ca.crt";
/// The root CA private key (PKCS#8 PEM, mode 0600).
pub const ROOT_CA_KEY_FILE: &str = "root-ca.key";
/// The issuing CA certificate.
pub const ISSUING_CA_CERT_FILE: &str = "issuing-ca.crt";
/// The issuing CA private key (PKCS#8 PEM, mode 0600).
pub const ISSUING_CA_KEY_FILE: &str = "issuing-ca.key";

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
/// Algorithm of newly created CA keys.
pub const CA_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256Sha256;
/// Algorithm of the server and device keys generated here.
pub const LEAF_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256Sha256;

/// Names that are always in the server certificate, so local clients work out of the box.
const SERVER_DEFAULT_DNS_NAME: &str = "localhost";
const SERVER_DEFAULT_IPS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
const ORGANIZATION: &str = "Moat";
/// Random bytes in the CA names, so that two installations never share an issuer name (a
/// client trusting both would otherwise try the wrong one).
const CA_NAME_SUFFIX_LEN: usize = 8;

/// A CA certificate as loaded and checked.
struct CaCertificate {
    der: CertificateDer<'static>,
    pem: String,
    subject: String,
    not_after: OffsetDateTime,
}

/// Moat's certificate authority: a root CA and an issuing CA signed by it.
///
/// Holds the issuing CA's signing key; the root key is only touched when the CA is created
/// and when it is loaded (to check it matches), then dropped.
pub struct CertificateAuthority {
    root: CaCertificate,
    issuing: CaCertificate,
    issuer: Issuer<'static, Signer>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer holds the signing key: list only public facts.
        f.debug_struct("CertificateAuthority")
            .field("root", &self.root.subject)
            .field("issuing", &self.issuing.subject)
            .field("issuing_not_after", &self.issuing.not_after)
            .finish_non_exhaustive()
    }
}

/// What is on disk (or in the key source) for the four CA parts.
struct Stored {
    root_cert: Option<Vec<u8>>,
    root_key: Option<Box<dyn CaSigningKey>>,
    issuing_cert: Option<Vec<u8>>,
    issuing_key: Option<Box<dyn CaSigningKey>>,
}

impl Stored {
    fn read(dir: &Path, keys: &dyn KeySource) -> Result<Self, PkiError> {
        Ok(Self {
            root_cert: storage::read_public_file(&dir.join(ROOT_CA_CERT_FILE))?,
            root_key: keys.open(CaKeyRole::Root)?,
            issuing_cert: storage::read_public_file(&dir.join(ISSUING_CA_CERT_FILE))?,
            issuing_key: keys.open(CaKeyRole::Issuing)?,
        })
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir` (e.g. `DATA_DIR/pki`), creating a fresh root CA and an issuing
    /// CA signed by it on first use. Returns whether it was created.
    ///
    /// Files: [`ROOT_CA_CERT_FILE`], [`ROOT_CA_KEY_FILE`], [`ISSUING_CA_CERT_FILE`],
    /// [`ISSUING_CA_KEY_FILE`]. Keys are created with mode 0600 and refused if group or others
    /// can access them; `dir` is created with mode 0700 and refused if others can write it.
    /// Loading checks that the files belong together (see
    /// [`load_or_create_with_keys`](Self::load_or_create_with_keys)).
    pub fn load_or_create(dir: &Path, now: OffsetDateTime) -> Result<(Self, bool), PkiError> {
        Self::load_or_create_with_keys(dir, &FileKeySource::new(dir), now)
    }

    /// Like [`load_or_create`](Self::load_or_create), with the CA keys in `keys` and only the
    /// certificates in `dir`.
    ///
    /// A partial CA (some of the four parts missing) is an error, never silently replaced. On
    /// load, fails naming the file when: a certificate does not parse or is not a CA; the
    /// root is not validly self-signed; the issuing CA is not named and signed by the root; a
    /// key does not match its certificate; either CA has expired.
    pub fn load_or_create_with_keys(
        dir: &Path,
        keys: &dyn KeySource,
        now: OffsetDateTime,
    ) -> Result<(Self, bool), PkiError> {
        storage::ensure_private_dir(dir)?;
        let stored = Stored::read(dir, keys)?;
        let created = match &stored {
            Stored {
                root_cert: None,
                root_key: None,
                issuing_cert: None,
                issuing_key: None,
            } => {
                create(dir, keys, now)?;
                true
            }
            Stored {
                root_cert: Some(_),
                root_key: Some(_),
                issuing_cert: Some(_),
                issuing_key: Some(_),
            } => false,
            partial => return Err(incomplete(dir, keys, partial)),
        };
        // After creating, load what was written through the same checks as every later start.
        let stored = if created {
            Stored::read(dir, keys)?
        } else {
            stored
        };
        Ok((Self::load(dir, keys, stored, now)?, created))
    }

    fn load(
        dir: &Path,
        keys: &dyn KeySource,
        stored: Stored,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let (Some(root_bytes), Some(root_key), Some(issuing_bytes), Some(issuing_key)) = (
            stored.root_cert,
            stored.root_key,
            stored.issuing_cert,
            stored.issuing_key,
        ) else {
            return Err(PkiError::Misconfigured(format!(
                "CA files in {} disappeared while loading",
                dir.display()
            )));
        };
        let now = to_utc_seconds(now);
        let root_path = dir.join(ROOT_CA_CERT_FILE);
        let issuing_path = dir.join(ISSUING_CA_CERT_FILE);

        let root_der = parse_cert_pem(&root_path, &root_bytes)?;
        let issuing_der = parse_cert_pem(&issuing_path, &issuing_bytes)?;
        let root_x509 = parse_der(&root_path, &root_der)?;
        let issuing_x509 = parse_der(&issuing_path, &issuing_der)?;

        check_ca(&root_path, &root_x509)?;
        if root_x509.subject().as_raw() != root_x509.issuer().as_raw() {
            return Err(PkiError::corrupt(&root_path, "not a self-signed root CA"));
        }
        root_x509
            .verify_signature(None)
            .map_err(|_| PkiError::corrupt(&root_path, "its self-signature does not verify"))?;
        check_key_matches(
            &Signer(root_key),
            keys.location(CaKeyRole::Root),
            &root_path,
            &root_x509,
        )?;
        // The root key is dropped here: issuing needs only the issuing key.

        check_ca(&issuing_path, &issuing_x509)?;
        if issuing_x509.issuer().as_raw() != root_x509.subject().as_raw() {
            return Err(PkiError::corrupt(
                &issuing_path,
                format!(
                    "issued by \"{}\", not by the root CA \"{}\" in {}",
                    issuing_x509.issuer(),
                    root_x509.subject(),
                    root_path.display()
                ),
            ));
        }
        issuing_x509
            .verify_signature(Some(root_x509.public_key()))
            .map_err(|_| {
                PkiError::corrupt(
                    &issuing_path,
                    format!(
                        "its signature does not verify with the root CA key in {}",
                        root_path.display()
                    ),
                )
            })?;
        let issuing_signer = Signer(issuing_key);
        check_key_matches(
            &issuing_signer,
            keys.location(CaKeyRole::Issuing),
            &issuing_path,
            &issuing_x509,
        )?;

        let root = ca_certificate(&root_path, &root_x509, &root_der, now)?;
        let issuing = ca_certificate(&issuing_path, &issuing_x509, &issuing_der, now)?;
        // rcgen rebuilds the issuer name from the certificate and panics on an empty RDN;
        // x509-parser should reject those, but a CA must not crash on a bad file.
        if issuing_x509
            .subject()
            .iter()
            .any(|rdn| rdn.iter().count() != 1)
        {
            return Err(PkiError::corrupt(
                &issuing_path,
                "subject name has multi-valued or empty components",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&issuing_der, issuing_signer).map_err(|_| {
            PkiError::corrupt(
                &issuing_path,
                "subject name cannot be used as an issuer name",
            )
        })?;
        Ok(Self {
            root,
            issuing,
            issuer,
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

    /// The issuing CA certificate in PEM.
    pub fn issuing_cert_pem(&self) -> &str {
        &self.issuing.pem
    }

    /// The issuing CA certificate in DER.
    pub fn issuing_cert_der(&self) -> CertificateDer<'static> {
        self.issuing.der.clone()
    }

    /// When the issuing CA expires: no certificate is issued past this instant.
    pub fn issuing_not_after(&self) -> OffsetDateTime {
        self.issuing.not_after
    }

    /// Server certificate for the hub's listeners, valid for [`SERVER_CERT_VALIDITY`].
    ///
    /// SANs: DNS `localhost`, IP `127.0.0.1` and `::1`, plus `extra_names` (each a DNS name
    /// or an IP address; no wildcards; at most [`MAX_SERVER_NAMES`]). EKU serverAuth, fresh
    /// ECDSA P-256 key, signed by the issuing CA.
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
    /// Only the public key is taken from the request. Its subject, requested names, CA flag,
    /// key usages and every other extension are ignored (they are in
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

    /// Fills in what every end-entity certificate shares and signs it for `public_key`.
    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        validity: Duration,
        now: OffsetDateTime,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCertificate, PkiError> {
        let now = to_utc_seconds(now);
        if now >= self.issuing.not_after {
            return Err(PkiError::Misconfigured(format!(
                "the issuing CA \"{}\" expired at {}; CA rotation is not implemented yet",
                self.issuing.subject, self.issuing.not_after
            )));
        }
        let not_before = shift(now, CLOCK_SKEW_ALLOWANCE, Direction::Back)?;
        let not_after = shift(now, validity, Direction::Forward)?.min(self.issuing.not_after);
        let serial = random::serial_number()?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        // Leaf keys only sign in TLS (no key encipherment): the server keys generated here
        // are ECDSA, and a client key of any type only signs its CertificateVerify.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;

        let cert = params.signed_by(public_key, &self.issuer)?;
        let cert_der = cert.der().clone();
        Ok(IssuedCertificate {
            cert_pem: format!(
                "{}{}",
                pem::encode("CERTIFICATE", &cert_der),
                self.issuing.pem
            ),
            chain: vec![cert_der.clone(), self.issuing.der.clone()],
            cert_der,
            serial: serial.to_bytes(),
            not_before,
            not_after,
        })
    }

    /// The issuing CA as rcgen signs with it (certificates here, CRLs in `crl`).
    pub(crate) fn issuer(&self) -> &Issuer<'static, Signer> {
        &self.issuer
    }

    /// The issuing CA certificate's Subject Key Identifier, for the Authority Key Identifier
    /// of what it signs outside rcgen's certificate path (CRLs); `None` if it has none.
    pub(crate) fn issuing_key_identifier(&self) -> Option<Vec<u8>> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.issuing.der).ok()?;
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    }
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
fn create(dir: &Path, keys: &dyn KeySource, now: OffsetDateTime) -> Result<(), PkiError> {
    let now = to_utc_seconds(now);
    let suffix = random::hex(CA_NAME_SUFFIX_LEN)?;

    let root_key = Signer(keys.create(CaKeyRole::Root, CA_KEY_ALGORITHM)?);
    let root_params = ca_params(&format!("Moat Root CA {suffix}"), 1, ROOT_CA_VALIDITY, now)?;
    let root_cert = root_params.self_signed(&root_key)?;

    let issuing_key = Signer(keys.create(CaKeyRole::Issuing, CA_KEY_ALGORITHM)?);
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
        let path = dir.join(name);
        storage::write_atomically(
            &path,
            pem::encode("CERTIFICATE", der).as_bytes(),
            PUBLIC_FILE_MODE,
            Replace::Refuse,
        )
        .map_err(|e| PkiError::io(&path, e))?;
    }
    Ok(())
}

fn ca_params(
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

fn distinguished_name(common_name: &str) -> DistinguishedName {
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
enum Direction {
    Back,
    Forward,
}

/// `now` moved by `by`, or an error if that leaves the representable range.
fn shift(
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

fn parse_cert_pem(path: &Path, bytes: &[u8]) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = CertificateDer::pem_slice_iter(bytes);
    let der = match certs.next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(PkiError::corrupt(path, format!("bad PEM: {e}"))),
        None => return Err(PkiError::corrupt(path, "no PEM certificate in the file")),
    };
    if certs.next().is_some() {
        return Err(PkiError::corrupt(
            path,
            "more than one certificate in the file",
        ));
    }
    Ok(der)
}

fn parse_der<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::corrupt(
            path,
            "trailing data after the certificate",
        )),
        Err(e) => Err(PkiError::corrupt(
            path,
            format!("not a valid X.509 certificate: {e}"),
        )),
    }
}

fn check_ca(path: &Path, cert: &X509Certificate<'_>) -> Result<(), PkiError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(PkiError::corrupt(path, "not a CA certificate")),
        Err(e) => Err(PkiError::corrupt(
            path,
            format!("malformed basicConstraints: {e}"),
        )),
    }
}

fn check_key_matches(
    key: &Signer,
    key_location: String,
    cert_path: &Path,
    cert: &X509Certificate<'_>,
) -> Result<(), PkiError> {
    if key.spki_der() == cert.public_key().raw {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch {
            key: key_location,
            certificate: cert_path.to_owned(),
        })
    }
}

fn ca_certificate(
    path: &Path,
    cert: &X509Certificate<'_>,
    der: &CertificateDer<'static>,
    now: OffsetDateTime,
) -> Result<CaCertificate, PkiError> {
    let not_after = cert.validity().not_after.to_datetime();
    let subject = cert.subject().to_string();
    if now > not_after {
        return Err(PkiError::Misconfigured(format!(
            "the CA certificate {} (\"{subject}\") expired at {not_after}; CA rotation is not \
             implemented yet",
            path.display()
        )));
    }
    Ok(CaCertificate {
        pem: pem::encode("CERTIFICATE", der),
        der: der.clone(),
        subject,
        not_after,
    })
}

/// The error for a CA directory with some parts missing.
fn incomplete(dir: &Path, keys: &dyn KeySource, stored: &Stored) -> PkiError {
    let parts = [
        (
            dir.join(ROOT_CA_CERT_FILE).display().to_string(),
            stored.root_cert.is_some(),
        ),
        (keys.location(CaKeyRole::Root), stored.root_key.is_some()),
        (
            dir.join(ISSUING_CA_CERT_FILE).display().to_string(),
            stored.issuing_cert.is_some(),
        ),
        (
            keys.location(CaKeyRole::Issuing),
            stored.issuing_key.is_some(),
        ),
    ];
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
