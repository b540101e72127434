//! Certificates and keys: reading PEM, the facts the agent needs from a certificate, and
//! verifying an issued certificate, the one place a [`VerifiedIdentity`] is made.
//!
//! Verification uses rustls' webpki client verifier with the aws-lc-rs provider: the issued
//! leaf must chain to a root of the CA file (through the issuing CA from `cacerts`), be valid
//! now, allow TLS client authentication, carry the public key of the key the agent just
//! generated and name this device.

use std::fmt;
use std::sync::Arc;

use moat_types::DeviceId;
use rcgen::{KeyPair, PublicKeyData};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::AgentError;

/// Largest certificate accepted, in DER bytes: 16 KiB.
pub const MAX_CERTIFICATE_SIZE: usize = 16 * 1024;
/// Most certificates read from one PEM file (the CA file, `device.crt`): 16.
pub const MAX_PEM_CERTIFICATES: usize = 16;
/// Most certificates in the chain written to `device.crt` (leaf and intermediates): 4.
pub const MAX_CHAIN_LEN: usize = 4;
/// The URI subject alternative name Moat binds a device id into.
pub const DEVICE_URI_PREFIX: &str = "urn:moat:device:";

/// The parts of a certificate the agent uses.
#[derive(Debug, Clone)]
pub(crate) struct CertificateFacts {
    pub(crate) serial: Vec<u8>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// The DER SubjectPublicKeyInfo.
    pub(crate) public_key: Vec<u8>,
    pub(crate) subject: Vec<u8>,
    pub(crate) issuer: Vec<u8>,
    /// Subject common names that are valid UTF-8.
    pub(crate) common_names: Vec<String>,
    /// Device ids from `urn:moat:device:` URI names.
    pub(crate) device_uris: Vec<String>,
}

impl CertificateFacts {
    /// Parses one DER certificate (nothing after it), at most [`MAX_CERTIFICATE_SIZE`].
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        if der.len() > MAX_CERTIFICATE_SIZE {
            return Err(format!(
                "a certificate of {} bytes, over the limit of {MAX_CERTIFICATE_SIZE}",
                der.len()
            ));
        }
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| "not a DER X.509 certificate".to_owned())?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        let device_uris = match cert.subject_alternative_name() {
            Err(_) => return Err("malformed subjectAltName".into()),
            Ok(None) => Vec::new(),
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri)
                        if uri.len() > DEVICE_URI_PREFIX.len()
                            && uri.is_char_boundary(DEVICE_URI_PREFIX.len())
                            && uri[..DEVICE_URI_PREFIX.len()]
                                .eq_ignore_ascii_case(DEVICE_URI_PREFIX) =>
                    {
                        Some(uri[DEVICE_URI_PREFIX.len()..].to_owned())
                    }
                    _ => None,
                })
                .collect(),
        };
        let validity = cert.validity();
        Ok(CertificateFacts {
            serial: cert.raw_serial().to_vec(),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            public_key: cert.public_key().raw.to_vec(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            common_names: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
            device_uris,
        })
    }

    /// The serial number as lowercase hex, Moat's one textual form of a serial.
    pub(crate) fn serial_hex(&self) -> String {
        serial_hex(&self.serial)
    }

    /// Whether the certificate names `id` and no other device (by CN and by device URI).
    fn names_only(&self, id: &DeviceId) -> bool {
        let names: Vec<&str> = self
            .common_names
            .iter()
            .chain(&self.device_uris)
            .map(String::as_str)
            .collect();
        !names.is_empty() && names.iter().all(|n| *n == id.as_str())
    }
}

/// A serial number as lowercase hex without separators (as the hub shows it; `openssl x509
/// -serial` prints the same digits in upper case).
pub fn serial_hex(serial: &[u8]) -> String {
    use fmt::Write as _;
    let mut hex = String::with_capacity(serial.len() * 2);
    for byte in serial {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The certificates of a PEM file's text: at least one, at most [`MAX_PEM_CERTIFICATES`];
/// other PEM sections are skipped.
pub(crate) fn certificates_from_pem(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let cert = item.map_err(|e| format!("{what}: malformed PEM: {e}"))?;
        if certs.len() == MAX_PEM_CERTIFICATES {
            return Err(format!(
                "{what}: more than {MAX_PEM_CERTIFICATES} certificates"
            ));
        }
        CertificateFacts::parse(&cert).map_err(|e| format!("{what}: {e}"))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate"));
    }
    Ok(certs)
}

/// PEM text of `certs`, concatenated.
pub(crate) fn certificates_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = crate::base64::encode(cert);
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// A device key read back from PEM, for mutual TLS and to check it matches a certificate.
pub(crate) struct DeviceKey {
    pair: KeyPair,
}

impl DeviceKey {
    /// A fresh ECDSA P-256 key, made on the device.
    pub(crate) fn generate() -> Result<Self, AgentError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| DeviceKey { pair })
            .map_err(|e| AgentError::Crypto(format!("generating a P-256 key: {e}")))
    }

    /// A key from PEM (PKCS#8 as written by the agent, or SEC1).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        KeyPair::from_pem(pem)
            .map(|pair| DeviceKey { pair })
            .map_err(|_| "not a usable private key (PEM PKCS#8 P-256 expected)".into())
    }

    #[cfg(test)]
    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    pub(crate) fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    pub(crate) fn der_for_tls(&self) -> Result<PrivateKeyDer<'static>, AgentError> {
        PrivateKeyDer::try_from(self.pair.serialize_der())
            .map_err(|e| AgentError::Crypto(format!("encoding the device key: {e}")))
    }

    /// Whether `cert` carries this key's public key.
    pub(crate) fn matches(&self, cert: &CertificateFacts) -> bool {
        self.pair.subject_public_key_info() == cert.public_key
    }

    /// A PKCS#10 request (DER) for `id`: subject CN = the device id, nothing else (the hub
    /// builds every other field from its device profile).
    pub(crate) fn certificate_request(&self, id: &DeviceId) -> Result<Vec<u8>, AgentError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, id.as_str());
        params
            .serialize_request(&self.pair)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| AgentError::Crypto(format!("building the certificate request: {e}")))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(<secret>)")
    }
}

/// Proof that a certificate was issued for this device's key, names this device and chains
/// to the trusted CA. Only [`verify_issued`] makes one, and only a `VerifiedIdentity` can be
/// written as the device's identity ([`crate::files`]), so an unverified certificate never
/// replaces a working one.
pub(crate) struct VerifiedIdentity {
    pub(crate) device_id: DeviceId,
    pub(crate) key: DeviceKey,
    /// The leaf then its issuing CA(s), as TLS clients present it.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) leaf: CertificateFacts,
}

impl fmt::Debug for VerifiedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedIdentity")
            .field("device_id", &self.device_id)
            .field("serial", &self.leaf.serial_hex())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Checks what the hub issued: `issued[0]` is the leaf; other certificates in `issued` and
/// `ca_certs` (from EST `cacerts`) may serve as intermediates; only `roots` (the CA file) are
/// trusted.
pub(crate) fn verify_issued(
    device_id: &DeviceId,
    key: DeviceKey,
    issued: &[CertificateDer<'static>],
    ca_certs: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<VerifiedIdentity, AgentError> {
    let not_verified = AgentError::NotVerified;
    let Some(leaf_der) = issued.first() else {
        return Err(not_verified("the hub returned no certificate".into()));
    };
    let leaf = CertificateFacts::parse(leaf_der).map_err(not_verified)?;
    if !key.matches(&leaf) {
        return Err(not_verified(
            "the certificate does not carry the key this device generated".into(),
        ));
    }
    if !leaf.names_only(device_id) {
        return Err(not_verified(format!(
            "the certificate does not name device {device_id} (and only it)"
        )));
    }

    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| AgentError::Misconfigured(format!("a CA certificate is unusable: {e}")))?;
    }
    let intermediates: Vec<CertificateDer<'static>> = issued[1..]
        .iter()
        .chain(ca_certs)
        .filter(|c| !roots.contains(c))
        .take(MAX_PEM_CERTIFICATES)
        .cloned()
        .collect();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), crate::provider())
        .build()
        .map_err(|e| AgentError::Misconfigured(format!("the CA file is unusable: {e}")))?;
    verifier
        .verify_client_cert(leaf_der, &intermediates, now)
        .map_err(|e| not_verified(e.to_string()))?;

    let chain = build_chain(leaf_der, &leaf, &intermediates, roots);
    Ok(VerifiedIdentity {
        device_id: device_id.clone(),
        key,
        chain,
        leaf,
    })
}

/// The leaf followed by the intermediates that issued it, walking issuer to subject, until a
/// root of the CA file or [`MAX_CHAIN_LEN`]. Only called after the chain verified, so the
/// walk finds the path the verifier used (Moat has one issuing CA).
fn build_chain(
    leaf_der: &CertificateDer<'static>,
    leaf: &CertificateFacts,
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    let root_subjects: Vec<Vec<u8>> = roots
        .iter()
        .filter_map(|r| CertificateFacts::parse(r).ok().map(|f| f.subject))
        .collect();
    let candidates: Vec<(CertificateFacts, &CertificateDer<'static>)> = intermediates
        .iter()
        .filter_map(|c| CertificateFacts::parse(c).ok().map(|f| (f, c)))
        .collect();
    let mut chain = vec![leaf_der.clone()];
    let mut issuer = leaf.issuer.clone();
    while chain.len() < MAX_CHAIN_LEN && !root_subjects.contains(&issuer) {
        let Some((facts, der)) = candidates
            .iter()
            .find(|(f, d)| f.subject == issuer && !chain.contains(d))
        else {
            break;
        };
        chain.push((*der).clone());
        issuer = facts.issuer.clone();
    }
    chain
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyUsagePurpose, SanType,
    };

    /// A root, an issuing CA under it, and helpers to issue device certificates: a small
    /// stand-in for the hub's CA, built with rcgen.
    pub(crate) struct TestCa {
        pub(crate) root: CertificateDer<'static>,
        pub(crate) issuing: CertificateDer<'static>,
        issuing_issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let root_key = KeyPair::generate().expect("test key");
            let root_params = ca_params("test root");
            let root = root_params.self_signed(&root_key).expect("root");
            let root_issuer = Issuer::new(root_params, root_key);
            let issuing_key = KeyPair::generate().expect("test key");
            let issuing_params = ca_params("test issuing");
            let issuing = issuing_params
                .signed_by(&issuing_key, &root_issuer)
                .expect("issuing");
            TestCa {
                root: root.der().clone(),
                issuing: issuing.der().clone(),
                issuing_issuer: Issuer::new(issuing_params, issuing_key),
            }
        }

        /// A device certificate for `key` naming `id`, valid from `not_before` to `not_after`.
        pub(crate) fn issue(
            &self,
            id: &str,
            key: &KeyPair,
            not_before: OffsetDateTime,
            not_after: OffsetDateTime,
        ) -> CertificateDer<'static> {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, id);
            p.subject_alt_names = vec![SanType::URI(
                format!("{DEVICE_URI_PREFIX}{id}").try_into().expect("uri"),
            )];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.not_before = not_before;
            p.not_after = not_after;
            p.signed_by(key, &self.issuing_issuer)
                .expect("device cert")
                .der()
                .clone()
        }
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    fn now() -> (OffsetDateTime, OffsetDateTime) {
        let n = OffsetDateTime::now_utc();
        (n - time::Duration::hours(1), n + time::Duration::days(30))
    }

    #[test]
    fn a_good_certificate_verifies_and_the_chain_includes_the_issuing_ca() -> Result<(), AgentError>
    {
        let ca = TestCa::new();
        let key = DeviceKey::generate()?;
        let (nb, na) = now();
        let leaf = ca.issue("dev1", key.pair(), nb, na);
        let v = verify_issued(
            &id("dev1"),
            key,
            std::slice::from_ref(&leaf),
            &[ca.issuing.clone(), ca.root.clone()],
            std::slice::from_ref(&ca.root),
            UnixTime::now(),
        )?;
        assert_eq!(v.chain, vec![leaf, ca.issuing.clone()]);
        Ok(())
    }

    #[test]
    fn wrong_key_wrong_name_wrong_ca_and_expired_are_refused() -> Result<(), AgentError> {
        let ca = TestCa::new();
        let other_ca = TestCa::new();
        let (nb, na) = now();
        let cacerts = [ca.issuing.clone(), ca.root.clone()];
        let roots = [ca.root.clone()];
        let check = |key: DeviceKey, leaf: CertificateDer<'static>, roots: &[_]| {
            verify_issued(&id("dev1"), key, &[leaf], &cacerts, roots, UnixTime::now())
        };

        let key = DeviceKey::generate()?;
        let someone_else = DeviceKey::generate()?;
        let leaf = ca.issue("dev1", someone_else.pair(), nb, na);
        assert!(matches!(
            check(key, leaf, &roots),
            Err(AgentError::NotVerified(_))
        ));

        let key = DeviceKey::generate()?;
        let leaf = ca.issue("dev2", key.pair(), nb, na);
        assert!(matches!(
            check(key, leaf, &roots),
            Err(AgentError::NotVerified(_))
        ));

        let key = DeviceKey::generate()?;
        let leaf = ca.issue("dev1", key.pair(), nb, na);
        assert!(matches!(
            check(key, leaf, std::slice::from_ref(&other_ca.root)),
            Err(AgentError::NotVerified(_))
        ));

        let key = DeviceKey::generate()?;
        let past = OffsetDateTime::now_utc() - time::Duration::days(40);
        let leaf = ca.issue("dev1", key.pair(), past, past + time::Duration::days(30));
        assert!(matches!(
            check(key, leaf, &roots),
            Err(AgentError::NotVerified(_))
        ));

        let key = DeviceKey::generate()?;
        assert!(matches!(
            verify_issued(&id("dev1"), key, &[], &cacerts, &roots, UnixTime::now()),
            Err(AgentError::NotVerified(_))
        ));
        Ok(())
    }

    #[test]
    fn pem_round_trips_and_garbage_is_refused() -> Result<(), String> {
        let ca = TestCa::new();
        let pem = certificates_to_pem(&[ca.issuing.clone(), ca.root.clone()]);
        assert_eq!(
            certificates_from_pem(pem.as_bytes(), "test")?,
            vec![ca.issuing.clone(), ca.root.clone()]
        );
        assert!(certificates_from_pem(b"", "test").is_err());
        assert!(certificates_from_pem(b"not pem at all", "test").is_err());
        let truncated = &pem[..pem.len() / 3];
        assert!(certificates_from_pem(truncated.as_bytes(), "test").is_err());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(certificates_from_pem(garbage.as_bytes(), "test").is_err());
        let many = pem.repeat(MAX_PEM_CERTIFICATES);
        assert!(certificates_from_pem(many.as_bytes(), "test").is_err());
        Ok(())
    }

    #[test]
    fn a_key_survives_pem_and_matches_its_certificate() -> Result<(), AgentError> {
        let ca = TestCa::new();
        let key = DeviceKey::generate()?;
        let (nb, na) = now();
        let leaf = CertificateFacts::parse(&ca.issue("dev1", key.pair(), nb, na))
            .map_err(AgentError::Misconfigured)?;
        let again = DeviceKey::from_pem(&key.pem()).map_err(AgentError::Misconfigured)?;
        assert!(again.matches(&leaf));
        assert!(!DeviceKey::generate()?.matches(&leaf));
        assert!(DeviceKey::from_pem("garbage").is_err());
        Ok(())
    }
}
