//! The transfer encoding of EST bodies (RFC 7030 4.1.3, 4.2.1): base64 of DER, possibly
//! broken into lines.
//!
//! The HTTP layer (not this crate) checks the content type and reads at most
//! [`MAX_EST_BODY_SIZE`] bytes; [`decode_est_base64`] checks the limit again so it is safe on
//! its own.

use crate::{PkiError, base64, pem};

/// Largest EST request body [`decode_est_base64`] accepts: 16 KiB, room for a
/// [`MAX_CSR_SIZE`](crate::MAX_CSR_SIZE) request in base64 with CRLF line breaks (about
/// 11.3 KiB).
pub const MAX_EST_BODY_SIZE: usize = 16 * 1024;

/// Decodes an EST body: standard base64 with padding, where spaces, tabs, CR and LF are
/// skipped wherever they occur (RFC 7030 bodies are line-wrapped by many clients).
///
/// Strict otherwise: any other character (including PEM armour and the URL-safe alphabet),
/// missing or misplaced padding, non-zero bits after the last byte, an empty body and a body
/// over [`MAX_EST_BODY_SIZE`] are refused.
pub fn decode_est_base64(body: &[u8]) -> Result<Vec<u8>, PkiError> {
    if body.len() > MAX_EST_BODY_SIZE {
        return Err(PkiError::TooLarge {
            what: "EST body",
            size: body.len(),
            limit: MAX_EST_BODY_SIZE,
        });
    }
    if body.starts_with(b"-----") {
        return Err(PkiError::InvalidEncoding(
            "PEM armour; EST carries bare base64 (RFC 7030 4.2.1)".into(),
        ));
    }
    let der = base64::decode(body).map_err(|e| PkiError::InvalidEncoding(e.to_string()))?;
    if der.is_empty() {
        return Err(PkiError::InvalidEncoding("empty body".into()));
    }
    Ok(der)
}

/// `der` as an EST response body: base64 in lines of 64 characters, each ended by CRLF
/// (RFC 2045 6.8, which EST's `Content-Transfer-Encoding: base64` refers to).
pub fn encode_est_base64(der: &[u8]) -> String {
    let b64 = base64::encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len().div_ceil(64) * 2);
    pem::push_lines(&mut out, &b64, "\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_wrapped_bodies_decode() -> Result<(), PkiError> {
        let der: Vec<u8> = (0..=255).collect();
        let body = encode_est_base64(&der);
        assert!(body.lines().all(|l| l.len() <= 65), "{body}");
        assert!(body.ends_with("\r\n"));
        assert_eq!(decode_est_base64(body.as_bytes())?, der);
        // LF only, and no line breaks at all.
        assert_eq!(
            decode_est_base64(body.replace("\r\n", "\n").as_bytes())?,
            der
        );
        assert_eq!(decode_est_base64(body.replace("\r\n", "").as_bytes())?, der);
        Ok(())
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b""[..],
            b"\r\n",
            b"-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n",
            b"Zm9v.",
            b"Zm9",
        ] {
            assert!(
                matches!(decode_est_base64(body), Err(PkiError::InvalidEncoding(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn oversized_bodies_are_refused_before_decoding() {
        let body = vec![b'A'; MAX_EST_BODY_SIZE + 4];
        assert!(matches!(
            decode_est_base64(&body),
            Err(PkiError::TooLarge {
                what: "EST body",
                ..
            })
        ));
        assert!(decode_est_base64(&body[..MAX_EST_BODY_SIZE]).is_ok());
    }
}
