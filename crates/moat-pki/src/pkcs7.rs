//! The "certs-only" CMS message EST answers with (RFC 7030 4.1.3 and 4.2.3): a degenerate
//! SignedData (RFC 5652 5) that carries certificates and no signature.
//!
//! ```text
//! ContentInfo SEQUENCE {
//!   contentType   id-signedData (1.2.840.113549.1.7.2)
//!   content [0] EXPLICIT SignedData SEQUENCE {
//!     version            INTEGER 1
//!     digestAlgorithms   SET {}
//!     encapContentInfo   SEQUENCE { eContentType id-data (1.2.840.113549.1.7.1) }  -- no eContent
//!     certificates [0] IMPLICIT  the certificates, in the order given
//!     signerInfos        SET {}
//!   }
//! }
//! ```
//!
//! Encoded by hand: five fixed fields around the certificates' own DER.

use rustls_pki_types::CertificateDer;

// `[0]`, constructed, is both the EXPLICIT content wrapper and the IMPLICIT certificates set.
use crate::der::{TAG_CONTEXT_0, TAG_INTEGER, TAG_SEQUENCE, TAG_SET, tlv};

/// id-signedData, RFC 5652 5.1, as a complete DER OBJECT IDENTIFIER.
const OID_SIGNED_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-data, RFC 5652 4, as a complete DER OBJECT IDENTIFIER.
const OID_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// A certs-only CMS SignedData (DER) holding `certs`, for EST's `/cacerts` (the CA
/// certificates) and `/simpleenroll` (the issued certificate) responses. Send it base64
/// encoded ([`encode_est_base64`](crate::encode_est_base64)) as
/// `application/pkcs7-mime; smime-type=certs-only`.
///
/// The certificates keep the order given, though DER would sort a SET OF: EST clients read
/// the issued certificate as the first one, and RFC 5652 receivers (OpenSSL among them)
/// accept either order. With no certificates the optional `certificates` field is omitted.
pub fn certs_only(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut signed_data = Vec::new();
    // RFC 5652 5.1: version 1 when there are only X.509 certificates, no CRLs of other
    // formats, and the content type is id-data.
    signed_data.extend(tlv(TAG_INTEGER, &[1]));
    signed_data.extend(tlv(TAG_SET, &[]));
    signed_data.extend(tlv(TAG_SEQUENCE, &OID_DATA));
    if !certs.is_empty() {
        let certificates: Vec<u8> = certs.iter().flat_map(|c| c.iter().copied()).collect();
        signed_data.extend(tlv(TAG_CONTEXT_0, &certificates));
    }
    signed_data.extend(tlv(TAG_SET, &[]));

    let mut content_info = OID_SIGNED_DATA.to_vec();
    content_info.extend(tlv(TAG_CONTEXT_0, &tlv(TAG_SEQUENCE, &signed_data)));
    tlv(TAG_SEQUENCE, &content_info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_message_matches_the_hand_assembled_encoding() {
        // SEQUENCE { id-signedData, [0] { SEQUENCE { 1, SET {}, SEQUENCE { id-data }, SET {} } } }
        let expected: Vec<u8> = [
            &[0x30, 0x23][..],
            &OID_SIGNED_DATA,
            &[
                0xa0, 0x16, 0x30, 0x14, 0x02, 0x01, 0x01, 0x31, 0x00, 0x30, 0x0b,
            ],
            &OID_DATA,
            &[0x31, 0x00],
        ]
        .concat();
        assert_eq!(certs_only(&[]), expected);
    }

    #[test]
    fn certificates_are_embedded_in_order_with_long_lengths() {
        let a: Vec<u8> = [&[0x30, 0x82, 0x01, 0x2c][..], &[0xaa; 300]].concat();
        let a = CertificateDer::from(a);
        let b = CertificateDer::from(vec![0x30, 0x03, 0xbb, 0xbb, 0xbb]);
        let der = certs_only(&[a.clone(), b.clone()]);
        let joined: Vec<u8> = [a.as_ref(), b.as_ref()].concat();
        let at = der
            .windows(joined.len())
            .position(|w| w == joined.as_slice())
            .expect("certificates embedded contiguously, in order");
        // The [0] IMPLICIT tag and its long-form length (304 + 5 bytes) precede them.
        assert_eq!(&der[at - 4..at], &[0xa0, 0x82, 0x01, 0x35]);
        // The outer length covers everything after the header.
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1], 0x82);
        assert_eq!(
            usize::from(der[2]) << 8 | usize::from(der[3]),
            der.len() - 4
        );
    }
}
