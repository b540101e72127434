//! PEM encoding (RFC 7468), so certificates read from disk are handed out in one canonical
//! form whatever surrounded them in the file. Decoding certificates and requests is
//! rustls-pki-types' job; [`decode_block`] reads the one label it does not know,
//! `ENCRYPTED PRIVATE KEY` (RFC 5958 3).

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

/// The label and contents of the only PEM block in `text`. Explanatory text before the
/// block is skipped (RFC 7468 2); after it only whitespace may follow. The error says what is
/// wrong without quoting the text (it may be a key).
pub(crate) fn decode_block(text: &str) -> Result<(&str, Vec<u8>), &'static str> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";
    let start = text.find(BEGIN).ok_or("no PEM block")?;
    let after_begin = &text[start + BEGIN.len()..];
    let label_end = after_begin.find(DASHES).ok_or("malformed PEM header")?;
    let label = &after_begin[..label_end];
    if label.contains(['\r', '\n']) {
        return Err("malformed PEM header");
    }
    let body_and_rest = &after_begin[label_end + DASHES.len()..];
    let footer = format!("{END}{label}{DASHES}");
    let body_end = body_and_rest
        .find(&footer)
        .ok_or("no PEM footer matching the header")?;
    let trailing = &body_and_rest[body_end + footer.len()..];
    if !trailing.trim().is_empty() {
        return Err("data after the PEM block");
    }
    let der = base64::decode(&body_and_rest.as_bytes()[..body_end])
        .map_err(|_| "the PEM body is not valid base64")?;
    Ok((label, der))
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
    fn blocks_decode_strictly() {
        let pem = encode("ENCRYPTED PRIVATE KEY", &[1, 2, 3, 250]);
        assert_eq!(
            decode_block(&pem),
            Ok(("ENCRYPTED PRIVATE KEY", vec![1, 2, 3, 250]))
        );
        let explained = format!("Comment: made by hand\n{pem}\n\n");
        assert_eq!(
            decode_block(&explained).map(|(_, der)| der),
            Ok(vec![1, 2, 3, 250])
        );
        for bad in [
            String::new(),
            "-----BEGIN X-----\nAQID\n-----END Y-----\n".to_owned(),
            "-----BEGIN X-----\nAQ!D\n-----END X-----\n".to_owned(),
            format!("{pem}{pem}"),
        ] {
            assert!(decode_block(&bad).is_err(), "{bad}");
        }
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
