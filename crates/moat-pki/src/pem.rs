//! PEM encoding (RFC 7468), so certificates read from disk are handed out in one canonical
//! form whatever surrounded them in the file. Decoding is rustls-pki-types' job.

use crate::base64;

/// RFC 7468 2: lines of exactly 64 characters except the last.
const LINE_LEN: usize = 64;

/// `der` as a PEM block with the given label, ending in a newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    push_lines(&mut out, &base64::encode(der), "\n");
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Appends `b64` to `out` in lines of [`LINE_LEN`] characters, each ended by `eol`.
pub(crate) fn push_lines(out: &mut String, b64: &str, eol: &str) {
    for line in b64.as_bytes().chunks(LINE_LEN) {
        // Base64 output is ASCII; chunking it at any byte is a char boundary.
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push_str(eol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let body = |s: &str| {
            let pem = encode("X", s.as_bytes());
            pem.lines().nth(1).unwrap_or_default().to_owned()
        };
        assert_eq!(body("f"), "Zg==");
        assert_eq!(body("fo"), "Zm8=");
        assert_eq!(body("foo"), "Zm9v");
        assert_eq!(body("foob"), "Zm9vYg==");
        assert_eq!(body("fooba"), "Zm9vYmE=");
        assert_eq!(body("foobar"), "Zm9vYmFy");
        assert_eq!(encode("X", b""), "-----BEGIN X-----\n-----END X-----\n");
    }

    #[test]
    fn lines_are_64_characters() {
        let pem = encode("CERTIFICATE", &[0xffu8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        // 100 bytes are 136 base64 characters: 64 + 64 + 8.
        let body: Vec<usize> = lines[1..lines.len() - 1].iter().map(|l| l.len()).collect();
        assert_eq!(body, [64, 64, 8]);
        assert_eq!(lines[4], "-----END CERTIFICATE-----");
    }
}
