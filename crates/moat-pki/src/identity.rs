//! The device identity bound in a client certificate, and the other facts the hub reads
//! from a verified leaf.

use moat_types::DeviceId;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// Prefix of the subjectAltName URI that names a device: `urn:moat:device:{id}`.
pub const DEVICE_URI_PREFIX: &str = "urn:moat:device:";

/// Largest certificate [`device_id_from_certificate`] and [`certificate_facts`] parse: 16 KiB;
/// Moat's are under 1 KiB.
pub const MAX_DEVICE_CERTIFICATE_SIZE: usize = 16 * 1024;

/// The subjectAltName URI for `id`.
pub fn device_uri(id: &DeviceId) -> String {
    format!("{DEVICE_URI_PREFIX}{id}")
}

/// The device identity bound in a client certificate whose chain rustls has verified.
///
/// The identity is the SAN URI `urn:moat:device:{id}` if present, else the subject CN; it is
/// parsed through [`DeviceId::parse`]. Rejected: anything that does not parse, several device
/// URIs or several CNs, a CN that disagrees with the URI, a CA certificate, and a certificate
/// without the clientAuth extended key usage (the last two are checked by rustls already;
/// they are repeated here so this function is safe on its own).
pub fn device_id_from_certificate(der: &[u8]) -> Result<DeviceId, PkiError> {
    match identity(&parse(der)?)? {
        Identity::Device(id) => Ok(id),
        Identity::None(reason) => Err(invalid(reason)),
    }
}

/// What the hub needs to know about a verified leaf certificate, from one parse: for
/// revocation checks (`serial`) and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateFacts {
    /// The device identity, exactly as [`device_id_from_certificate`] computes it; `None` if
    /// the certificate names no device or is not a device certificate (a CA, no clientAuth).
    pub device_id: Option<DeviceId>,
    /// The serial number: the content octets of its DER INTEGER (big-endian two's
    /// complement, as encoded). For certificates this CA issues, the same bytes as
    /// [`IssuedCertificate::serial`](crate::IssuedCertificate::serial); show it with
    /// [`serial_hex`].
    pub serial: Vec<u8>,
    /// The subject common name, if there is exactly one (as encoded: for certificates not
    /// issued by this CA it may hold any characters, so escape it before logging).
    pub subject_cn: Option<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The issuer's distinguished name for display: attributes in certificate order (most
    /// significant first, unlike RFC 4514) separated by `, `, e.g.
    /// `O=Moat, CN=Moat Issuing CA 0123456789abcdef`. For logs, not for comparisons.
    pub issuer_dn: String,
}

/// The [`CertificateFacts`] of a DER certificate (at most [`MAX_DEVICE_CERTIFICATE_SIZE`]
/// bytes), normally the leaf of a chain rustls has verified.
///
/// Safe on arbitrary input. Fails ([`PkiError::InvalidDeviceCertificate`]) on what
/// [`device_id_from_certificate`] rejects as a malformed identity (several device URIs or
/// common names, an invalid id, a CN that disagrees with the URI), on malformed extensions,
/// and on anything that is not exactly one X.509 certificate. Whenever
/// `device_id_from_certificate` returns `Ok(id)`, this returns facts with `device_id ==
/// Some(id)`.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, PkiError> {
    let cert = parse(der)?;
    let device_id = match identity(&cert)? {
        Identity::Device(id) => Some(id),
        Identity::None(_) => None,
    };
    let validity = cert.validity();
    Ok(CertificateFacts {
        device_id,
        serial: cert.raw_serial().to_vec(),
        subject_cn: common_name(&cert)?.map(str::to_owned),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        issuer_dn: cert.issuer().to_string(),
    })
}

/// The validity period of a DER certificate (at most [`MAX_DEVICE_CERTIFICATE_SIZE`] bytes):
/// `notBefore` and `notAfter`, in Unix seconds. Safe on arbitrary input; fails on anything
/// that is not exactly one X.509 certificate.
pub fn certificate_validity(der: &[u8]) -> Result<(i64, i64), PkiError> {
    let validity = parse(der)?.validity().clone();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// A serial number as lowercase hex without separators: Moat's one textual form of a serial
/// (logs, the store, the operator API). `openssl x509 -serial` prints the same digits in
/// upper case.
pub fn serial_hex(serial: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(serial.len() * 2);
    for byte in serial {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    if der.len() > MAX_DEVICE_CERTIFICATE_SIZE {
        return Err(invalid(format!(
            "{} bytes, larger than the limit of {MAX_DEVICE_CERTIFICATE_SIZE}",
            der.len()
        )));
    }
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| invalid("not a DER-encoded X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the certificate"));
    }
    Ok(cert)
}

/// The outcome of looking for a device identity in a well-formed certificate.
enum Identity {
    Device(DeviceId),
    /// Not a device certificate, or one naming no device: why.
    None(&'static str),
}

/// The device identity of `cert`; errors are malformed extensions or identities.
fn identity(cert: &X509Certificate<'_>) -> Result<Identity, PkiError> {
    match cert.basic_constraints() {
        Err(_) => return Err(invalid("malformed basicConstraints")),
        Ok(Some(bc)) if bc.value.ca => return Ok(Identity::None("it is a CA certificate")),
        Ok(_) => {}
    }
    match cert.extended_key_usage() {
        Err(_) => return Err(invalid("malformed extendedKeyUsage")),
        Ok(Some(eku)) if eku.value.client_auth => {}
        Ok(_) => {
            return Ok(Identity::None("not issued for TLS client authentication"));
        }
    }

    let uri_id = match cert.subject_alternative_name() {
        Err(_) => return Err(invalid("malformed subjectAltName")),
        Ok(None) => None,
        Ok(Some(san)) => {
            let mut ids = san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    // The `urn:` scheme and the namespace id are case-insensitive (RFC 8141 3.1),
                    // so compare them that way: a differently-cased URI must not slip past the
                    // conflict check below.
                    GeneralName::URI(uri)
                        if uri.len() >= DEVICE_URI_PREFIX.len()
                            && uri.is_char_boundary(DEVICE_URI_PREFIX.len())
                            && uri[..DEVICE_URI_PREFIX.len()]
                                .eq_ignore_ascii_case(DEVICE_URI_PREFIX) =>
                    {
                        Some(&uri[DEVICE_URI_PREFIX.len()..])
                    }
                    _ => None,
                });
            let first = ids.next();
            if ids.next().is_some() {
                return Err(invalid("several device URIs in subjectAltName"));
            }
            match first {
                None => None,
                Some(s) => Some(
                    DeviceId::parse(s)
                        .map_err(|e| invalid(format!("device URI names {}: {e}", quoted(s))))?,
                ),
            }
        }
    };

    match (uri_id, common_name(cert)?) {
        (Some(id), Some(cn)) if cn != id.as_str() => Err(invalid(format!(
            "subject common name {} conflicts with device URI for {}",
            quoted(cn),
            quoted(id.as_str())
        ))),
        (Some(id), _) => Ok(Identity::Device(id)),
        (None, Some(cn)) => DeviceId::parse(cn)
            .map(Identity::Device)
            .map_err(|e| invalid(format!("common name {}: {e}", quoted(cn)))),
        (None, None) => Ok(Identity::None(
            "neither a device URI nor a subject common name",
        )),
    }
}

/// The subject's common name; several, or one that is not text, are an error.
fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Result<Option<&'a str>, PkiError> {
    let mut common_names = cert.subject().iter_common_name();
    let cn = common_names.next();
    if common_names.next().is_some() {
        return Err(invalid("several common names in the subject"));
    }
    cn.map(|attr| {
        attr.as_str()
            .map_err(|_| invalid("the subject common name is not a text string"))
    })
    .transpose()
}

fn invalid(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidDeviceCertificate(reason.into())
}

/// Longest piece of a peer's certificate quoted in an error message.
const MAX_QUOTED_LEN: usize = 80;

/// A peer-supplied string, quoted, escaped and truncated so it can go into a log line safely.
fn quoted(s: &str) -> String {
    let (head, ellipsis) = truncated(s, MAX_QUOTED_LEN);
    format!("{head:?}{ellipsis}")
}

/// A peer-supplied string with control characters, quotes and backslashes escaped and at most
/// `max_len` bytes of it kept (then `...`), so it can go into a log line as it is.
pub(crate) fn printable(s: &str, max_len: usize) -> String {
    let (head, ellipsis) = truncated(s, max_len);
    format!("{}{ellipsis}", head.escape_debug())
}

/// At most `max_len` bytes of `s`, cut at a character boundary, and `"..."` if cut.
fn truncated(s: &str, max_len: usize) -> (&str, &'static str) {
    let mut end = s.len().min(max_len);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], if end < s.len() { "..." } else { "" })
}

/// A CA certificate an operator registers (a manufacturer's): its subject in RFC 4514
/// notation, which is the issuer name of the certificates it signs.
///
/// Refuses anything that is not exactly one X.509 certificate with basicConstraints cA TRUE.
pub fn ca_certificate_subject(der: &[u8]) -> Result<String, PkiError> {
    let cert = parse(der)?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(PkiError::InvalidRequest(
            "the certificate is not a CA certificate (basicConstraints cA is not TRUE)".into(),
        ));
    }
    Ok(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_and_truncates() {
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(100);
        let q = quoted(&long);
        assert!(q.ends_with("..."));
        assert!(q.len() < 100);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(
            device_id_from_certificate(b"not a certificate"),
            Err(PkiError::InvalidDeviceCertificate(_))
        ));
        assert!(device_id_from_certificate(&vec![0u8; MAX_DEVICE_CERTIFICATE_SIZE + 1]).is_err());
    }
}
