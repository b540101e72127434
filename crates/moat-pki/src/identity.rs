//! The device identity bound in a client certificate.

use moat_types::DeviceId;
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// Prefix of the subjectAltName URI that names a device: `urn:moat:device:{id}`.
pub const DEVICE_URI_PREFIX: &str = "urn:moat:device:";

/// Largest client certificate [`device_id_from_certificate`] parses; Moat's are under 1 KiB.
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

    match cert.basic_constraints() {
        Err(_) => return Err(invalid("malformed basicConstraints")),
        Ok(Some(bc)) if bc.value.ca => return Err(invalid("it is a CA certificate")),
        Ok(_) => {}
    }
    match cert.extended_key_usage() {
        Err(_) => return Err(invalid("malformed extendedKeyUsage")),
        Ok(Some(eku)) if eku.value.client_auth => {}
        Ok(_) => return Err(invalid("not issued for TLS client authentication")),
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

    let mut common_names = cert.subject().iter_common_name();
    let cn = common_names.next();
    if common_names.next().is_some() {
        return Err(invalid("several common names in the subject"));
    }
    let cn = cn
        .map(|attr| {
            attr.as_str()
                .map_err(|_| invalid("the subject common name is not a text string"))
        })
        .transpose()?;

    match (uri_id, cn) {
        (Some(id), Some(cn)) if cn != id.as_str() => Err(invalid(format!(
            "subject common name {} conflicts with device URI for {}",
            quoted(cn),
            quoted(id.as_str())
        ))),
        (Some(id), _) => Ok(id),
        (None, Some(cn)) => {
            DeviceId::parse(cn).map_err(|e| invalid(format!("common name {}: {e}", quoted(cn))))
        }
        (None, None) => Err(invalid("neither a device URI nor a subject common name")),
    }
}

fn invalid(reason: impl Into<String>) -> PkiError {
    PkiError::InvalidDeviceCertificate(reason.into())
}

/// Longest piece of a peer's certificate quoted in an error message.
const MAX_QUOTED_LEN: usize = 80;

/// A peer-supplied string, escaped and truncated so it can go into a log line safely.
fn quoted(s: &str) -> String {
    let mut end = s.len().min(MAX_QUOTED_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < s.len() { "..." } else { "" };
    format!("{:?}{ellipsis}", &s[..end])
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
