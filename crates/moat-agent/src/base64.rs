//! Base64 (RFC 4648 section 4, the standard alphabet with padding) for EST bodies and HTTP
//! Basic credentials.
//!
//! Written here rather than taken from a crate: it is a few dozen lines, and the agent must
//! not depend on `moat-pki` (which has the hub's copy) to stay small.

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

/// Why [`decode`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("invalid byte 0x{byte:02x} at offset {at}")]
    InvalidByte { at: usize, byte: u8 },
    #[error("data after the padding")]
    DataAfterPadding,
    #[error("length is not a multiple of four characters")]
    Truncated,
    #[error("wrong amount of padding")]
    BadPadding,
    #[error("non-zero bits after the last byte")]
    NonCanonical,
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

/// Decodes padded standard base64, skipping spaces, tabs, CR and LF anywhere (EST bodies are
/// line-wrapped, RFC 7030 4.1.3 and RFC 2045 6.8). Anything else is refused, including
/// encodings with non-zero bits after the last byte, so each byte string has one spelling.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut group = [0u32; 4];
    let mut filled = 0;
    let mut padding = 0;
    let mut finished = false;
    for (at, &byte) in text.iter().enumerate() {
        if matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
            continue;
        }
        if finished {
            return Err(DecodeError::DataAfterPadding);
        }
        if byte == b'=' {
            padding += 1;
            // At most two, and never in the first two places of a group.
            if padding > 2 || filled < 2 {
                return Err(DecodeError::BadPadding);
            }
            group[filled] = 0;
        } else if padding > 0 {
            return Err(DecodeError::DataAfterPadding);
        } else {
            group[filled] = value(byte).ok_or(DecodeError::InvalidByte { at, byte })?;
        }
        filled += 1;
        if filled == 4 {
            let n = group[0] << 18 | group[1] << 12 | group[2] << 6 | group[3];
            // RFC 4648 3.5: the bits below the last encoded byte must be zero.
            let unused = match padding {
                0 => 0,
                1 => n & 0xff,
                _ => n & 0xffff,
            };
            if unused != 0 {
                return Err(DecodeError::NonCanonical);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - padding]);
            filled = 0;
            finished = padding > 0;
        }
    }
    if filled != 0 {
        return Err(DecodeError::Truncated);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() -> Result<(), DecodeError> {
        let data: Vec<u8> = (0..=255).collect();
        for len in 0..40 {
            assert_eq!(decode(encode(&data[..len]).as_bytes())?, &data[..len]);
        }
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(decode(b"Zm9v\r\nYmFy\r\n")?, b"foobar");
        Ok(())
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            &b"Zm9"[..],
            b"Zm9v.",
            b"Zm8==",
            b"Zm8=Zm8=",
            b"Zm9=",
            b"Zg=a",
            b"Zh==",
            b"-----BEGIN",
            b"Zm8===",
        ] {
            assert!(
                decode(bad).is_err(),
                "{:?} decoded",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
