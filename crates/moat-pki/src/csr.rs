//! PKCS#10 certificate signing requests (RFC 2986), as EST's `simpleenroll` and
//! `simplereenroll` carry them (RFC 7030 4.2.1).
//!
//! A request is evidence, not instructions. [`parse_certificate_request`] verifies its
//! self-signature (proof that the sender holds the private key) and accepts only key types
//! Moat certifies; what else the request asks for (names, CA rights, key usages) is
//! summarised for the audit log in [`RequestedExtensions`] and never reaches a certificate:
//! [`CertificateAuthority::issue_device_certificate_for_request`] takes only the public key.
//!
//! [`CertificateAuthority::issue_device_certificate_for_request`]:
//! crate::CertificateAuthority::issue_device_certificate_for_request

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, KeyUsage, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo, X509Name};

use crate::PkiError;
use crate::identity::printable;

/// Largest request (DER) [`parse_certificate_request`] parses: 8 KiB. An ECDSA request is
/// about 300 bytes, an RSA-4096 one about 1.2 KiB.
pub const MAX_CSR_SIZE: usize = 8 * 1024;
/// Most attributes a request may carry: 16 (openssl sends one, `extensionRequest`; EST adds
/// at most `challengePassword`).
pub const MAX_CSR_ATTRIBUTES: usize = 16;
/// Most extensions a request may ask for, over all its `extensionRequest` attributes: 32.
pub const MAX_REQUESTED_EXTENSIONS: usize = 32;
/// Most entries in any one requested list (subjectAltNames, extended key usages): 32.
pub const MAX_REQUESTED_VALUES: usize = 32;
/// Longest subject common name accepted, in characters: 64 (`ub-common-name`, RFC 5280
/// appendix A.1).
pub const MAX_COMMON_NAME_LEN: usize = 64;
/// Smallest RSA modulus certified: 2048 bits (NIST SP 800-131A; webpki refuses less).
pub const MIN_RSA_KEY_BITS: usize = 2048;
/// Largest RSA modulus certified: 4096 bits. The hub verifies the key's signature on every
/// handshake, and no device TLS stack needs more.
pub const MAX_RSA_KEY_BITS: usize = 4096;

/// Longest requested name or OID kept in [`RequestedExtensions`] (longer ones are
/// truncated with `...`): a DNS name's 253 characters fit.
const MAX_AUDIT_STRING_LEN: usize = 256;

/// The type of public key in a request Moat accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublicKeyKind {
    /// ECDSA on NIST P-256 (the uncompressed point).
    EcdsaP256,
    /// ECDSA on NIST P-384 (the uncompressed point).
    EcdsaP384,
    /// Ed25519 (RFC 8410).
    Ed25519,
    /// RSA with a modulus of `bits` bits, between [`MIN_RSA_KEY_BITS`] and
    /// [`MAX_RSA_KEY_BITS`].
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// What a request asked for besides its key, for the audit log. None of it is honoured.
///
/// Strings are escaped (control characters, quotes and backslashes as Rust escapes) and cut
/// after 256 bytes of the original (marked `...`), so they can go into a log line as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestedExtensions {
    /// Requested subjectAltNames in OpenSSL's notation: `DNS:host`, `IP:10.0.0.1`,
    /// `URI:urn:x`, `email:a@b`, `dirName:CN=x`, `otherName:1.2.3`, `RID:1.2.3`.
    pub subject_alt_names: Vec<String>,
    /// Whether basicConstraints with `cA` TRUE was requested.
    pub ca: bool,
    /// Requested keyUsage bits, by their RFC 5280 names (`digitalSignature`, `keyCertSign`).
    pub key_usages: Vec<&'static str>,
    /// Requested extendedKeyUsage purposes: the RFC 5280 name (`clientAuth`) or the OID.
    pub extended_key_usages: Vec<String>,
    /// OIDs of the other requested extensions.
    pub other_extensions: Vec<String>,
}

/// A PKCS#10 request whose self-signature verified, with a public key Moat certifies.
///
/// Only [`parse_certificate_request`] makes one, so holding one proves the sender held the
/// private key (RFC 7030 3.4 "proof-of-possession").
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    subject_common_name: Option<String>,
    key: RequestedKey,
    public_key_info_der: Vec<u8>,
    requested: RequestedExtensions,
}

impl CertificateRequest {
    /// The subject's common name as requested (at most [`MAX_COMMON_NAME_LEN`] characters,
    /// no control characters), or `None` if the subject has none. Not an identity: the
    /// request is self-signed and says whatever its sender likes.
    pub fn subject_common_name(&self) -> Option<&str> {
        self.subject_common_name.as_deref()
    }

    /// The type and size of the public key.
    pub fn public_key_kind(&self) -> PublicKeyKind {
        self.key.kind
    }

    /// The SubjectPublicKeyInfo, DER, exactly as in the request and as it will be in the
    /// certificate.
    pub fn public_key_info_der(&self) -> &[u8] {
        &self.public_key_info_der
    }

    /// What else the request asked for (ignored when issuing).
    pub fn requested_extensions(&self) -> &RequestedExtensions {
        &self.requested
    }

    pub(crate) fn public_key(&self) -> &RequestedKey {
        &self.key
    }
}

/// The request's public key in the form rcgen writes into a certificate.
#[derive(Clone)]
pub(crate) struct RequestedKey {
    kind: PublicKeyKind,
    /// Chosen for the SubjectPublicKeyInfo algorithm identifier it writes; the key never
    /// signs anything for us.
    algorithm: &'static rcgen::SignatureAlgorithm,
    /// The subjectPublicKey BIT STRING contents.
    raw: Vec<u8>,
}

impl fmt::Debug for RequestedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestedKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// Parses a DER PKCS#10 request (use [`decode_est_base64`](crate::decode_est_base64) first
/// for an EST body) and verifies its self-signature.
///
/// Refused: input over [`MAX_CSR_SIZE`] ([`PkiError::TooLarge`]); anything but exactly one
/// v1 request; a signature that does not verify with the request's own key, or one made with
/// SHA-1 or an algorithm outside ECDSA with SHA-256/384, Ed25519, RSA PKCS#1 v1.5 with
/// SHA-256/384/512 and RSA-PSS ([`PkiError::InvalidCertificateRequest`]); keys other than
/// those of [`PublicKeyKind`] ([`PkiError::UnsupportedKey`]); a non-canonical key encoding;
/// several subject common names or one that is not text, too long or contains control
/// characters; malformed, duplicate or too many requested extensions or names.
pub fn parse_certificate_request(der: &[u8]) -> Result<CertificateRequest, PkiError> {
    if der.len() > MAX_CSR_SIZE {
        return Err(PkiError::TooLarge {
            what: "certificate request",
            size: der.len(),
            limit: MAX_CSR_SIZE,
        });
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|_| invalid("not a DER-encoded PKCS#10 certification request"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the request"));
    }
    let info = &csr.certification_request_info;
    // RFC 2986 4.1: version is 0 for this version of the standard.
    if info.version.0 != 0 {
        return Err(invalid(format!(
            "version {} (only v1 exists)",
            info.version.0
        )));
    }
    check_signature_algorithm(&csr.signature_algorithm)?;
    // The cheap checks before the signature: an RSA-1024 request is refused as such, not as
    // a bad signature, and malformed content costs no public-key operation. (Checking the
    // content before the signature trusts nothing: anyone can sign a request with a key of
    // their own.)
    let key = requested_key(&info.subject_pki)?;
    let subject_common_name = common_name(&info.subject)?;
    let requested = requested_extensions(&csr)?;
    csr.verify_signature().map_err(|_| {
        invalid("its signature does not verify with its own public key (no proof of possession)")
    })?;
    Ok(CertificateRequest {
        subject_common_name,
        key,
        public_key_info_der: info.subject_pki.raw.to_vec(),
        requested,
    })
}

fn invalid(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidCertificateRequest(reason.into())
}

fn unsupported(reason: impl Into<String>) -> PkiError {
    PkiError::UnsupportedKey(reason.into())
}

/// Accepts the signature algorithms the hub's TLS stack also accepts; SHA-1 in particular is
/// refused even though the verifier could check it.
fn check_signature_algorithm(algorithm: &AlgorithmIdentifier<'_>) -> Result<(), PkiError> {
    let oid = &algorithm.algorithm;
    let allowed = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
    ];
    if allowed.contains(oid) {
        Ok(())
    } else {
        Err(invalid(format!(
            "signature algorithm {} is not accepted",
            printable(&oid.to_id_string(), MAX_AUDIT_STRING_LEN)
        )))
    }
}

/// The request's key if it is one of [`PublicKeyKind`], in a form that re-encodes to exactly
/// the request's SubjectPublicKeyInfo.
fn requested_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<RequestedKey, PkiError> {
    let algorithm = &spki.algorithm;
    if spki.subject_public_key.unused_bits != 0 {
        return Err(invalid("the public key is not a whole number of bytes"));
    }
    let raw: &[u8] = &spki.subject_public_key.data;
    let (kind, rcgen_algorithm) = if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| unsupported("EC key without a named curve"))?;
        let (kind, rcgen_algorithm, point_len) = if curve == OID_EC_P256 {
            (PublicKeyKind::EcdsaP256, &rcgen::PKCS_ECDSA_P256_SHA256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (PublicKeyKind::EcdsaP384, &rcgen::PKCS_ECDSA_P384_SHA384, 97)
        } else {
            return Err(unsupported(format!(
                "EC curve {} (Moat certifies P-256 and P-384)",
                printable(&curve.to_id_string(), MAX_AUDIT_STRING_LEN)
            )));
        };
        // SEC 1 2.3.3: 0x04 then both coordinates. Compressed points are valid SEC 1 but not
        // every TLS stack takes them in a certificate.
        if raw.len() != point_len || raw.first() != Some(&0x04) {
            return Err(unsupported(format!(
                "{kind} key is not an uncompressed point"
            )));
        }
        (kind, rcgen_algorithm)
    } else if algorithm.algorithm == OID_SIG_ED25519 {
        if raw.len() != 32 {
            return Err(unsupported("Ed25519 key is not 32 bytes"));
        }
        (PublicKeyKind::Ed25519, &rcgen::PKCS_ED25519)
    } else if algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(invalid("malformed RSA public key"));
        };
        let bits = bit_length(rsa.modulus);
        if bits < MIN_RSA_KEY_BITS {
            return Err(unsupported(format!(
                "RSA key of {bits} bits; at least {MIN_RSA_KEY_BITS} are required"
            )));
        }
        if bits > MAX_RSA_KEY_BITS {
            return Err(unsupported(format!(
                "RSA key of {bits} bits; at most {MAX_RSA_KEY_BITS} are accepted"
            )));
        }
        // The signature algorithm written here never matters: only the key's identifier
        // (rsaEncryption, NULL parameters) goes into the certificate.
        (PublicKeyKind::Rsa { bits }, &rcgen::PKCS_RSA_SHA256)
    } else if algorithm.algorithm == OID_KEY_TYPE_DSA {
        return Err(unsupported("DSA keys are not certified"));
    } else {
        return Err(unsupported(format!(
            "key algorithm {} (Moat certifies ECDSA P-256 and P-384, Ed25519 and RSA)",
            printable(&algorithm.algorithm.to_id_string(), MAX_AUDIT_STRING_LEN)
        )));
    };
    let key = RequestedKey {
        kind,
        algorithm: rcgen_algorithm,
        raw: raw.to_vec(),
    };
    // The certificate gets rcgen's encoding of the key. Insisting that it is byte for byte
    // the request's means the certificate binds exactly the key whose possession was proven
    // (no stray parameters, no alternative encodings).
    if rcgen::PublicKeyData::subject_public_key_info(&key) != spki.raw {
        return Err(invalid(
            "the SubjectPublicKeyInfo is not in its canonical encoding",
        ));
    }
    Ok(key)
}

/// Bits in a big-endian unsigned integer, ignoring leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    match bytes.get(start) {
        None => 0,
        Some(first) => (bytes.len() - start) * 8 - first.leading_zeros() as usize,
    }
}

fn common_name(subject: &X509Name<'_>) -> Result<Option<String>, PkiError> {
    let mut names = subject.iter_common_name();
    let first = names.next();
    if names.next().is_some() {
        return Err(invalid("several common names in the subject"));
    }
    let Some(attr) = first else {
        return Ok(None);
    };
    let cn = attr
        .as_str()
        .map_err(|_| invalid("the subject common name is not a text string"))?;
    if cn.chars().count() > MAX_COMMON_NAME_LEN {
        return Err(invalid(format!(
            "the subject common name is longer than {MAX_COMMON_NAME_LEN} characters"
        )));
    }
    if cn.chars().any(char::is_control) {
        return Err(invalid(
            "the subject common name contains control characters",
        ));
    }
    Ok(Some(cn.to_owned()))
}

fn requested_extensions(
    csr: &X509CertificationRequest<'_>,
) -> Result<RequestedExtensions, PkiError> {
    let attributes = csr.certification_request_info.attributes();
    if attributes.len() > MAX_CSR_ATTRIBUTES {
        return Err(invalid(format!(
            "{} attributes, more than the limit of {MAX_CSR_ATTRIBUTES}",
            attributes.len()
        )));
    }
    let mut summary = RequestedExtensions::default();
    let mut seen = Vec::new();
    for attribute in attributes {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            // challengePassword (RFC 7030 3.5 channel binding) and unknown attributes are the
            // EST layer's business, or nobody's.
            continue;
        };
        for extension in &request.extensions {
            if seen.len() == MAX_REQUESTED_EXTENSIONS {
                return Err(invalid(format!(
                    "more than {MAX_REQUESTED_EXTENSIONS} requested extensions"
                )));
            }
            // RFC 5280 4.2: at most one instance of an extension.
            if seen.contains(&&extension.oid) {
                return Err(invalid(format!(
                    "extension {} requested twice",
                    extension.oid.to_id_string()
                )));
            }
            seen.push(&extension.oid);
            summarise(&mut summary, &extension.oid, extension.parsed_extension())?;
        }
    }
    Ok(summary)
}

fn summarise(
    summary: &mut RequestedExtensions,
    oid: &x509_parser::asn1_rs::Oid<'_>,
    extension: &ParsedExtension<'_>,
) -> Result<(), PkiError> {
    let audit = |s: &str| printable(s, MAX_AUDIT_STRING_LEN);
    match extension {
        ParsedExtension::SubjectAlternativeName(san) => {
            check_count("subjectAltNames", san.general_names.len())?;
            for name in &san.general_names {
                summary.subject_alt_names.push(general_name(name, &audit)?);
            }
        }
        ParsedExtension::BasicConstraints(bc) => summary.ca = bc.ca,
        ParsedExtension::KeyUsage(usage) => summary.key_usages = key_usage_names(usage),
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let named = [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ];
            check_count("extended key usages", eku.other.len() + named.len())?;
            summary.extended_key_usages = named
                .iter()
                .filter(|(requested, _)| *requested)
                .map(|(_, name)| (*name).to_owned())
                .chain(eku.other.iter().map(|oid| audit(&oid.to_id_string())))
                .collect();
        }
        ParsedExtension::ParseError { .. } => {
            return Err(invalid(format!(
                "requested extension {} is malformed",
                audit(&oid.to_id_string())
            )));
        }
        _ => summary.other_extensions.push(audit(&oid.to_id_string())),
    }
    Ok(())
}

fn check_count(what: &str, count: usize) -> Result<(), PkiError> {
    if count > MAX_REQUESTED_VALUES {
        return Err(invalid(format!(
            "{count} requested {what}, more than the limit of {MAX_REQUESTED_VALUES}"
        )));
    }
    Ok(())
}

fn general_name(
    name: &GeneralName<'_>,
    audit: &dyn Fn(&str) -> String,
) -> Result<String, PkiError> {
    Ok(match name {
        GeneralName::DNSName(s) => format!("DNS:{}", audit(s)),
        GeneralName::RFC822Name(s) => format!("email:{}", audit(s)),
        GeneralName::URI(s) => format!("URI:{}", audit(s)),
        GeneralName::IPAddress(bytes) => match *bytes {
            [a, b, c, d] => format!("IP:{}", Ipv4Addr::new(*a, *b, *c, *d)),
            _ => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", Ipv6Addr::from(v6)),
                Err(_) => return Err(invalid("a requested IP address is neither IPv4 nor IPv6")),
            },
        },
        GeneralName::DirectoryName(dn) => format!("dirName:{}", audit(&dn.to_string())),
        GeneralName::OtherName(oid, _) => format!("otherName:{}", audit(&oid.to_id_string())),
        GeneralName::RegisteredID(oid) => format!("RID:{}", audit(&oid.to_id_string())),
        GeneralName::X400Address(_) => "x400Address".to_owned(),
        GeneralName::EDIPartyName(_) => "ediPartyName".to_owned(),
        GeneralName::Invalid(..) => return Err(invalid("a requested subjectAltName is malformed")),
    })
}

fn key_usage_names(usage: &KeyUsage) -> Vec<&'static str> {
    [
        (usage.digital_signature(), "digitalSignature"),
        (usage.non_repudiation(), "nonRepudiation"),
        (usage.key_encipherment(), "keyEncipherment"),
        (usage.data_encipherment(), "dataEncipherment"),
        (usage.key_agreement(), "keyAgreement"),
        (usage.key_cert_sign(), "keyCertSign"),
        (usage.crl_sign(), "cRLSign"),
        (usage.encipher_only(), "encipherOnly"),
        (usage.decipher_only(), "decipherOnly"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }

    /// DER tag-length-value, for hand-built test keys.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len();
        let mut out = vec![tag];
        match len {
            0..=0x7f => out.push(len as u8),
            0x80..=0xff => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// An RSA SubjectPublicKeyInfo with a modulus of exactly `bits` bits.
    fn rsa_spki(bits: usize) -> Vec<u8> {
        let mut modulus = vec![0xff; bits.div_ceil(8)];
        modulus[0] = 0xff >> (modulus.len() * 8 - bits);
        if modulus[0] & 0x80 != 0 {
            modulus.insert(0, 0); // a positive INTEGER
        }
        let key = [tlv(0x02, &modulus), tlv(0x02, &[1, 0, 1])].concat();
        let algorithm = tlv(
            0x30,
            &[
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                ][..],
                &[0x05, 0x00],
            ]
            .concat(),
        );
        let bit_string = tlv(0x03, &[&[0][..], &tlv(0x30, &key)].concat());
        tlv(0x30, &[algorithm, bit_string].concat())
    }

    #[test]
    fn rsa_key_sizes_are_bounded() {
        let kind = |bits: usize| {
            let der = rsa_spki(bits);
            let (_, spki) = SubjectPublicKeyInfo::from_der(&der).map_err(|e| e.to_string())?;
            requested_key(&spki)
                .map(|key| key.kind)
                .map_err(|e| e.to_string())
        };
        assert_eq!(kind(2048), Ok(PublicKeyKind::Rsa { bits: 2048 }));
        assert_eq!(kind(3072), Ok(PublicKeyKind::Rsa { bits: 3072 }));
        assert_eq!(
            kind(MAX_RSA_KEY_BITS),
            Ok(PublicKeyKind::Rsa { bits: 4096 })
        );
        for bits in [1024, MIN_RSA_KEY_BITS - 1, MAX_RSA_KEY_BITS + 1, 8192] {
            let err = kind(bits).expect_err("refused");
            assert!(err.contains(&format!("RSA key of {bits} bits")), "{err}");
        }
    }

    #[test]
    fn garbage_and_oversized_input_is_refused() {
        assert!(matches!(
            parse_certificate_request(b"not a request"),
            Err(PkiError::InvalidCertificateRequest(_))
        ));
        assert!(matches!(
            parse_certificate_request(&vec![0x30; MAX_CSR_SIZE + 1]),
            Err(PkiError::TooLarge { .. })
        ));
    }

    /// Requests made by rcgen (not OpenSSL) for the key types it can generate: all parse,
    /// and the key re-encodes to the same SubjectPublicKeyInfo.
    #[test]
    fn rcgen_requests_of_every_kind_parse() -> Result<(), Box<dyn std::error::Error>> {
        for (algorithm, kind) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, PublicKeyKind::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, PublicKeyKind::EcdsaP384),
            (&rcgen::PKCS_ED25519, PublicKeyKind::Ed25519),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm)?;
            let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()])?;
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            let csr = params.serialize_request(&key)?;
            let request = parse_certificate_request(csr.der())?;
            assert_eq!(request.public_key_kind(), kind);
            assert_eq!(
                request.public_key_info_der(),
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
            let requested = request.requested_extensions();
            assert_eq!(requested.subject_alt_names, ["DNS:evil.example"]);
            assert!(requested.ca);
            assert_eq!(requested.key_usages, ["keyCertSign"]);
        }
        Ok(())
    }
}
