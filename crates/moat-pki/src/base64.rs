//! Base64 (RFC 4648 section 4, the standard alphabet with padding), for PEM and EST bodies.
//!
//! Written here rather than taken from a crate: it is forty lines, and the decoder's
//! strictness is part of this crate's contract with peers (see [`decode`]).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in base64, padded, on one line.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 0x3f]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Why [`decode`] refused its input. Positions are byte offsets into the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A byte that is neither in the alphabet, nor `=`, nor skipped whitespace.
    InvalidByte { at: usize, byte: u8 },
    /// Something other than whitespace or `=` after the first `=`.
    DataAfterPadding { at: usize },
    /// The number of characters (padding included) is not a multiple of four.
    Truncated,
    /// More than two `=`, or padding where the last group has room for no padding.
    BadPadding,
    /// The bits below the last encoded byte are not zero: another spelling of the same
    /// bytes. Refused so that every byte string has exactly one accepted encoding.
    NonCanonical,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidByte { at, byte } if byte.is_ascii_graphic() => {
                write!(
                    f,
                    "invalid character {:?} at offset {at}",
                    char::from(*byte)
                )
            }
            Self::InvalidByte { at, byte } => write!(f, "invalid byte 0x{byte:02x} at offset {at}"),
            Self::DataAfterPadding { at } => write!(f, "data after the padding at offset {at}"),
            Self::Truncated => f.write_str("length is not a multiple of four characters"),
            Self::BadPadding => f.write_str("wrong amount of padding"),
            Self::NonCanonical => f.write_str("non-zero bits after the last byte"),
        }
    }
}

/// Whitespace that line-wrapped base64 may contain (RFC 2045 6.8 wraps lines with CRLF;
/// some encoders use LF or indent with spaces or tabs). Nothing else is skipped.
fn is_skipped(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

fn value(byte: u8) -> Option<u32> {
    let v = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded standard base64, skipping spaces, tabs, CR and LF anywhere.
///
/// Strict otherwise: no other characters, no URL-safe alphabet, padding required and only at
/// the end, and the unused low bits of the last character must be zero.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    // Bits collected so far (at most 24) and how many characters supplied them.
    let mut acc = 0u32;
    let mut chars = 0usize;
    let mut padding = 0usize;
    for (at, &byte) in text.iter().enumerate() {
        if is_skipped(byte) {
            continue;
        }
        if byte == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return Err(DecodeError::DataAfterPadding { at });
        }
        let v = value(byte).ok_or(DecodeError::InvalidByte { at, byte })?;
        acc = acc << 6 | v;
        chars += 1;
        if chars.is_multiple_of(4) {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
        }
    }
    // A final group of 2 characters carries one byte and needs "==", one of 3 carries two
    // bytes and needs "=".
    match (chars % 4, padding) {
        (0, 0) => {}
        (2, 2) => {
            if acc & 0xf != 0 {
                return Err(DecodeError::NonCanonical);
            }
            out.push((acc >> 4) as u8);
        }
        (3, 1) => {
            if acc & 0x3 != 0 {
                return Err(DecodeError::NonCanonical);
            }
            out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
        }
        (1, _) => return Err(DecodeError::Truncated),
        (_, 0) => return Err(DecodeError::Truncated),
        _ => return Err(DecodeError::BadPadding),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC4648: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors() {
        for (plain, encoded) in RFC4648 {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded.as_bytes()), Ok(plain.as_bytes().to_vec()));
        }
    }

    #[test]
    fn whitespace_is_skipped_anywhere() {
        assert_eq!(decode(b"Zm9v\r\nYmFy\r\n"), Ok(b"foobar".to_vec()));
        assert_eq!(decode(b" Z m\t9vY\ng=\r\n=\n"), Ok(b"foob".to_vec()));
    }

    #[test]
    fn everything_else_is_refused() {
        use DecodeError::*;
        for (input, error) in [
            (&b"Zm9v!"[..], InvalidByte { at: 4, byte: b'!' }),
            (b"Zm9-", InvalidByte { at: 3, byte: b'-' }),
            (b"Zm9_", InvalidByte { at: 3, byte: b'_' }),
            (b"Zm\x0b9v", InvalidByte { at: 2, byte: 0x0b }),
            (b"Zm\x009v", InvalidByte { at: 2, byte: 0 }),
            (b"Zg==Zg==", DataAfterPadding { at: 4 }),
            (b"Zg=a", DataAfterPadding { at: 3 }),
            (b"Zm9", Truncated),
            (b"Zg", Truncated),
            (b"Z", Truncated),
            (b"Z===", Truncated),
            (b"Zm9vZ", Truncated),
            (b"Zg=", BadPadding),
            (b"Zm8==", BadPadding),
            (b"Zm9v====", BadPadding),
            (b"====", BadPadding),
            (b"Zh==", NonCanonical),
            (b"Zm9=", NonCanonical),
        ] {
            assert_eq!(
                decode(input),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn roundtrip_and_canonical(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let text = encode(&bytes);
            proptest::prop_assert_eq!(decode(text.as_bytes()), Ok(bytes));
        }

        #[test]
        fn arbitrary_input_never_panics_and_decodes_canonically(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            if let Ok(bytes) = decode(&text) {
                // Accepted input is the canonical encoding, up to skipped whitespace.
                let significant: Vec<u8> =
                    text.iter().copied().filter(|b| !is_skipped(*b)).collect();
                proptest::prop_assert_eq!(encode(&bytes).into_bytes(), significant);
            }
        }
    }
}
