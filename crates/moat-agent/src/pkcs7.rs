//! Reading the "certs-only" CMS message EST answers with (RFC 7030 4.1.3, 4.2.3): a
//! degenerate SignedData (RFC 5652 5) carrying certificates and no signature.
//!
//! ```text
//! ContentInfo SEQUENCE {
//!   contentType   id-signedData (1.2.840.113549.1.7.2)
//!   content [0] EXPLICIT SignedData SEQUENCE {
//!     version            INTEGER 1
//!     digestAlgorithms   SET {}
//!     encapContentInfo   SEQUENCE { eContentType id-data (1.2.840.113549.1.7.1) }
//!     certificates [0] IMPLICIT  SET OF Certificate      -- optional
//!     signerInfos        SET {}
//!   }
//! }
//! ```
//!
//! A minimal DER walk, not a general CMS parser: exactly this shape is accepted and anything
//! else (signers, CRLs, encapsulated content, BER indefinite lengths, non-minimal lengths,
//! trailing bytes, more than [`MAX_PKCS7_CERTIFICATES`]) is refused. The certificates come
//! back as opaque DER, in the order sent; X.509 parsing and verification happen elsewhere.
//! Pure: no I/O, safe on arbitrary input.

use rustls_pki_types::CertificateDer;

/// Largest certs-only message accepted, in DER bytes: 48 KiB (the base64 body is bounded by
/// [`MAX_EST_RESPONSE_SIZE`](crate::MAX_EST_RESPONSE_SIZE), 64 KiB).
pub const MAX_PKCS7_SIZE: usize = 48 * 1024;
/// Most certificates one EST response may carry: 8 (Moat sends one leaf, or the issuing CA
/// and the root).
pub const MAX_PKCS7_CERTIFICATES: usize = 8;

const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_CONTEXT_0: u8 = 0xa0;
/// id-signedData, RFC 5652 5.1 (OID content octets).
const OID_SIGNED_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// id-data, RFC 5652 4 (OID content octets).
const OID_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

/// Why a certs-only message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs7Error {
    /// Over [`MAX_PKCS7_SIZE`].
    #[error("{size} bytes, over the limit of {MAX_PKCS7_SIZE}")]
    TooLarge {
        /// Size received.
        size: usize,
    },
    /// Over [`MAX_PKCS7_CERTIFICATES`].
    #[error("more than {MAX_PKCS7_CERTIFICATES} certificates")]
    TooManyCertificates,
    /// Not the certs-only shape: what was wrong.
    #[error("not a certs-only PKCS#7 message: {0}")]
    Malformed(&'static str),
}

/// One DER element: its tag and content octets, and the whole encoding.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// A cursor over consecutive DER elements.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element (X.690 8.1, DER restrictions of 10.1).
    fn element(&mut self) -> Result<Element<'a>, Pkcs7Error> {
        let bytes = self.rest;
        let (&tag, after_tag) = bytes
            .split_first()
            .ok_or(Pkcs7Error::Malformed("truncated: element expected"))?;
        if tag & 0x1f == 0x1f {
            return Err(Pkcs7Error::Malformed("high tag numbers are not used here"));
        }
        let (&first, after_len_byte) = after_tag
            .split_first()
            .ok_or(Pkcs7Error::Malformed("truncated: length expected"))?;
        let (len, after_len) = if first < 0x80 {
            (usize::from(first), after_len_byte)
        } else if first == 0x80 {
            return Err(Pkcs7Error::Malformed("indefinite length (BER, not DER)"));
        } else {
            let count = usize::from(first & 0x7f);
            // Four length bytes describe far more than MAX_PKCS7_SIZE.
            if count > 4 {
                return Err(Pkcs7Error::Malformed("length of more than four bytes"));
            }
            let digits = after_len_byte
                .get(..count)
                .ok_or(Pkcs7Error::Malformed("truncated length"))?;
            if digits.first() == Some(&0) {
                return Err(Pkcs7Error::Malformed("non-minimal length"));
            }
            let len = digits
                .iter()
                .fold(0usize, |acc, &d| acc << 8 | usize::from(d));
            if len < 0x80 {
                return Err(Pkcs7Error::Malformed("non-minimal length"));
            }
            (len, &after_len_byte[count..])
        };
        let content = after_len
            .get(..len)
            .ok_or(Pkcs7Error::Malformed("truncated: length beyond the end"))?;
        let header = bytes.len() - after_len.len();
        let whole = &bytes[..header + len];
        self.rest = &after_len[len..];
        Ok(Element {
            tag,
            content,
            whole,
        })
    }

    /// The next element, which must have `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Pkcs7Error> {
        let e = self.element()?;
        if e.tag != tag {
            return Err(Pkcs7Error::Malformed(what));
        }
        Ok(e.content)
    }

    fn expect_end(&self, what: &'static str) -> Result<(), Pkcs7Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Pkcs7Error::Malformed(what))
        }
    }
}

/// The certificates of a DER certs-only SignedData, in the order sent (possibly none).
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, Pkcs7Error> {
    if der.len() > MAX_PKCS7_SIZE {
        return Err(Pkcs7Error::TooLarge { size: der.len() });
    }
    let mut top = Reader::new(der);
    let content_info = top.expect(TAG_SEQUENCE, "ContentInfo is not a SEQUENCE")?;
    top.expect_end("bytes after the ContentInfo")?;

    let mut ci = Reader::new(content_info);
    if ci.expect(TAG_OID, "contentType is not an OID")? != OID_SIGNED_DATA {
        return Err(Pkcs7Error::Malformed("contentType is not id-signedData"));
    }
    let explicit = ci.expect(TAG_CONTEXT_0, "content is not [0] EXPLICIT")?;
    ci.expect_end("bytes after the content")?;

    let mut wrapper = Reader::new(explicit);
    let signed_data = wrapper.expect(TAG_SEQUENCE, "SignedData is not a SEQUENCE")?;
    wrapper.expect_end("bytes after the SignedData")?;

    let mut sd = Reader::new(signed_data);
    // RFC 5652 5.1: version 1 for X.509 certificates only and id-data content.
    if sd.expect(TAG_INTEGER, "version is not an INTEGER")? != [1] {
        return Err(Pkcs7Error::Malformed("SignedData version is not 1"));
    }
    if !sd
        .expect(TAG_SET, "digestAlgorithms is not a SET")?
        .is_empty()
    {
        return Err(Pkcs7Error::Malformed("digestAlgorithms is not empty"));
    }
    let encap = sd.expect(TAG_SEQUENCE, "encapContentInfo is not a SEQUENCE")?;
    let mut ec = Reader::new(encap);
    if ec.expect(TAG_OID, "eContentType is not an OID")? != OID_DATA {
        return Err(Pkcs7Error::Malformed("eContentType is not id-data"));
    }
    ec.expect_end("encapsulated content present")?;

    let mut certs = Vec::new();
    if sd.peek_tag() == Some(TAG_CONTEXT_0) {
        let set = sd.expect(TAG_CONTEXT_0, "certificates")?;
        let mut cr = Reader::new(set);
        while !cr.is_empty() {
            let cert = cr.element()?;
            if cert.tag != TAG_SEQUENCE {
                return Err(Pkcs7Error::Malformed(
                    "a certificates entry is not an X.509 Certificate",
                ));
            }
            if certs.len() == MAX_PKCS7_CERTIFICATES {
                return Err(Pkcs7Error::TooManyCertificates);
            }
            certs.push(CertificateDer::from(cert.whole.to_vec()));
        }
    }
    // crls [1] and any signer are refused: certs-only carries neither (RFC 7030 4.1.3).
    if !sd
        .expect(TAG_SET, "signerInfos is not a SET (CRLs are not accepted)")?
        .is_empty()
    {
        return Err(Pkcs7Error::Malformed("signerInfos is not empty"));
    }
    sd.expect_end("bytes after signerInfos")?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A certs-only message built the way RFC 5652 describes it, with `certs` as given and
    /// `signer_infos` / `extra` for the malformed variants.
    fn message(certs: Option<&[Vec<u8>]>, signer_infos: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut sd = tlv(TAG_INTEGER, &[1]);
        sd.extend(tlv(TAG_SET, &[]));
        sd.extend(tlv(TAG_SEQUENCE, &tlv(TAG_OID, &OID_DATA)));
        if let Some(certs) = certs {
            sd.extend(tlv(TAG_CONTEXT_0, &certs.concat()));
        }
        sd.extend_from_slice(extra);
        sd.extend(tlv(TAG_SET, signer_infos));
        let mut ci = tlv(TAG_OID, &OID_SIGNED_DATA);
        ci.extend(tlv(TAG_CONTEXT_0, &tlv(TAG_SEQUENCE, &sd)));
        tlv(TAG_SEQUENCE, &ci)
    }

    /// Stand-ins for certificates: SEQUENCEs of various sizes (the walk does not parse X.509).
    fn fake_certs() -> Vec<Vec<u8>> {
        vec![
            tlv(TAG_SEQUENCE, &[0x02, 0x01, 0x05]),
            tlv(TAG_SEQUENCE, &[0x55; 300]),
        ]
    }

    #[test]
    fn certificates_come_back_in_order() -> Result<(), Pkcs7Error> {
        let certs = fake_certs();
        let parsed = parse_certs_only(&message(Some(&certs), &[], &[]))?;
        let parsed: Vec<&[u8]> = parsed.iter().map(|c| c.as_ref()).collect();
        assert_eq!(parsed, [&certs[0][..], &certs[1][..]]);
        assert!(parse_certs_only(&message(None, &[], &[]))?.is_empty());
        Ok(())
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = message(Some(&fake_certs()), &[], &[]);
        for len in 0..full.len() {
            assert!(
                parse_certs_only(&full[..len]).is_err(),
                "a message truncated to {len} bytes parsed"
            );
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        // Flipping any byte must give an error or a (different) successful parse, never a
        // panic; most give errors.
        let full = message(Some(&fake_certs()), &[], &[]);
        for i in 0..full.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = full.clone();
                m[i] ^= flip;
                let _ = parse_certs_only(&m);
            }
        }
    }

    #[test]
    fn odd_shapes_are_refused() {
        let certs = fake_certs();
        let good = message(Some(&certs), &[], &[]);
        let mut trailing = good.clone();
        trailing.push(0);
        let with_signer = message(Some(&certs), &tlv(TAG_SEQUENCE, &[]), &[]);
        let with_crls = message(Some(&certs), &[], &tlv(0xa1, &[]));
        let not_a_cert = message(Some(&[tlv(TAG_SET, &[])]), &[], &[]);
        let too_many = message(Some(&vec![certs[0].clone(); 9]), &[], &[]);
        let mut indefinite = good.clone();
        indefinite[1] = 0x80;
        let mut wrong_oid = good.clone();
        // The last byte of id-signedData (…07 02) becomes id-data (…07 01).
        let at = good
            .windows(OID_SIGNED_DATA.len())
            .position(|w| w == OID_SIGNED_DATA)
            .map(|p| p + OID_SIGNED_DATA.len() - 1);
        if let Some(at) = at {
            wrong_oid[at] = 0x01;
        }
        // A non-minimal long-form length for a short element.
        let non_minimal = [0x30, 0x81, 0x03, 0x02, 0x01, 0x01];
        for (name, bad) in [
            ("trailing byte", &trailing[..]),
            ("signer", &with_signer[..]),
            ("crls", &with_crls[..]),
            ("not a certificate", &not_a_cert[..]),
            ("too many", &too_many[..]),
            ("indefinite length", &indefinite[..]),
            ("wrong content type", &wrong_oid[..]),
            ("non-minimal length", &non_minimal[..]),
            ("empty", &[][..]),
            ("high tag", &[0x1f, 0x01, 0x00][..]),
            ("huge length", &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..]),
            ("five length bytes", &[0x30, 0x85, 1, 0, 0, 0, 0][..]),
        ] {
            assert!(parse_certs_only(bad).is_err(), "{name} parsed");
        }
        assert_eq!(
            parse_certs_only(&too_many),
            Err(Pkcs7Error::TooManyCertificates)
        );
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; MAX_PKCS7_SIZE + 1];
        assert_eq!(
            parse_certs_only(&big),
            Err(Pkcs7Error::TooLarge {
                size: MAX_PKCS7_SIZE + 1
            })
        );
    }
}
