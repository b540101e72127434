//! Entry point for the cargo-fuzz target `agent_pkcs7` in `/fuzz` (feature `fuzzing`), kept
//! in the crate so that the target is a three-line shim and regression tests run the same
//! code. Panics only when a promise of the EST response reader is broken.
//!
//! The bytes are read as the agent reads an EST response body (base64, then the certs-only
//! message, [`pkcs7::parse_certs_only`]) and as the DER message itself; each certificate that
//! comes out is then parsed as the agent parses an issued certificate.

use crate::certificate::CertificateFacts;
use crate::pkcs7::{self, MAX_PKCS7_CERTIFICATES, MAX_PKCS7_SIZE, Pkcs7Error};
use rustls_pki_types::CertificateDer;

/// Reads `data` as an EST response body and as a DER certs-only message. Neither panics;
/// only canonical base64 decodes; a message that parses is exactly the DER encoding of the
/// certificates it yields (strict DER: one encoding per message), within the size and count
/// limits; the facts of a certificate are parts of it.
pub fn est_response(data: &[u8]) {
    let _ = read(data);
}

/// How many certificates came out of `data` read as an EST body and as DER.
fn read(data: &[u8]) -> (Option<usize>, Option<usize>) {
    let from_body = crate::base64::decode(data).ok().and_then(|der| {
        let significant: Vec<u8> = data
            .iter()
            .copied()
            .filter(|b| !b" \t\r\n".contains(b))
            .collect();
        assert_eq!(
            crate::base64::encode(&der).as_bytes(),
            significant,
            "a non-canonical spelling decoded"
        );
        check(&der)
    });
    (from_body, check(data))
}

/// Parses `der` as a certs-only message and checks what comes out.
fn check(der: &[u8]) -> Option<usize> {
    let parsed = pkcs7::parse_certs_only(der);
    if der.len() > MAX_PKCS7_SIZE {
        assert_eq!(parsed, Err(Pkcs7Error::TooLarge { size: der.len() }));
    }
    let certs = parsed.ok()?;
    assert!(certs.len() <= MAX_PKCS7_CERTIFICATES);
    // The optional `certificates` field may be absent or empty when there are none.
    assert!(
        encode(&certs, false) == der || (certs.is_empty() && encode(&certs, true) == der),
        "the message is not the DER encoding of its certificates"
    );
    for cert in &certs {
        assert_eq!(cert.first(), Some(&0x30));
        if let Ok(facts) = CertificateFacts::parse(cert) {
            for part in [
                &facts.public_key,
                &facts.subject,
                &facts.issuer,
                &facts.serial,
            ] {
                assert!(
                    part.is_empty() || cert.windows(part.len()).any(|w| w == part.as_slice()),
                    "a fact that is not part of the certificate"
                );
            }
            let hex = facts.serial_hex();
            assert_eq!(hex.len(), 2 * facts.serial.len());
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }
    Some(certs.len())
}

/// The DER certs-only message holding `certs`, with an empty `certificates` field when
/// there are none and `empty_set` is true.
fn encode(certs: &[CertificateDer<'_>], empty_set: bool) -> Vec<u8> {
    const OID_SIGNED_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const OID_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let mut sd = tlv(0x02, &[1]);
    sd.extend(tlv(0x31, &[]));
    sd.extend(tlv(0x30, &tlv(0x06, &OID_DATA)));
    if !certs.is_empty() || empty_set {
        let all: Vec<u8> = certs.iter().flat_map(|c| c.iter().copied()).collect();
        sd.extend(tlv(0xa0, &all));
    }
    sd.extend(tlv(0x31, &[]));
    let mut ci = tlv(0x06, &OID_SIGNED_DATA);
    ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
    tlv(0x30, &ci)
}

/// One DER tag-length-value, with the length in its minimal form.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every committed seed parses as its name says: `refused-*` not at all, `*-empty.*` to
    /// no certificate, the rest (OpenSSL's `crl2pkcs7` output and the hub's responses) to at
    /// least one certificate that parses; `.b64` as an EST body, `.der` as the message.
    #[test]
    fn seeds_parse() -> Result<(), Box<dyn std::error::Error>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/agent_pkcs7");
        let mut count = 0;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("seed name")?
                .to_owned();
            let data = std::fs::read(&path)?;
            let (from_body, from_der) = read(&data);
            let found = if name.ends_with(".b64") {
                from_body
            } else {
                from_der
            };
            if name.starts_with("refused-") {
                assert_eq!(found, None, "{name}");
                continue;
            }
            let certs = if name.ends_with(".b64") {
                pkcs7::parse_certs_only(&crate::base64::decode(&data)?)?
            } else {
                pkcs7::parse_certs_only(&data)?
            };
            assert_eq!(found, Some(certs.len()), "{name}");
            assert_eq!(certs.is_empty(), name.contains("-empty."), "{name}");
            for cert in &certs {
                assert!(CertificateFacts::parse(cert).is_ok(), "{name}");
            }
            count += 1;
        }
        assert!(count >= 6, "only {count} seeds");
        Ok(())
    }

    #[test]
    fn encode_matches_the_parser() -> Result<(), Pkcs7Error> {
        let certs = [
            CertificateDer::from(tlv(0x30, &[0x02, 0x01, 0x05])),
            CertificateDer::from(tlv(0x30, &[0x55; 300])),
            CertificateDer::from(tlv(0x30, &vec![0x55; 40_000])),
        ];
        for n in 0..=certs.len() {
            let der = encode(&certs[..n], false);
            assert_eq!(pkcs7::parse_certs_only(&der)?, &certs[..n]);
            assert_eq!(check(&der), Some(n));
        }
        assert_eq!(check(&encode(&[], true)), Some(0));
        Ok(())
    }
}
