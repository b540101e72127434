//! The few DER (X.690) encodings this crate writes and reads by hand: the certs-only CMS
//! message (`pkcs7`) and encrypted PKCS#8 key files (`pkcs8`).
//!
//! The reader is strict: definite, minimally encoded lengths only (X.690 10.1), no
//! indefinite forms, no high tag numbers, and every value must lie inside its parent.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
/// `[0]`, constructed.
pub(crate) const TAG_CONTEXT_0: u8 = 0xa0;

/// One DER tag-length-value.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 10);
    out.push(tag);
    push_length(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// The DER encoding of a non-negative INTEGER.
pub(crate) fn integer(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(7);
    let mut content = Vec::with_capacity(9);
    // A set top bit would make the INTEGER negative: prefix a zero byte (X.690 8.3.2).
    if bytes[skip] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&bytes[skip..]);
    tlv(TAG_INTEGER, &content)
}

/// X.690 8.1.3: short form below 128, else 0x80 | the number of length bytes, then the
/// length in as few big-endian bytes as possible (10.1).
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Checked just above: fits in seven bits.
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let significant = &bytes[skip..];
    // At most size_of::<usize>() bytes, far below 0x7f.
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// Why DER input was refused. Says what was expected, never quotes the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DerError {
    /// The input ended inside a value.
    Truncated,
    /// A different tag than the one expected.
    UnexpectedTag { expected: u8, found: u8 },
    /// An indefinite, non-minimal or oversized length.
    BadLength,
    /// Bytes left over after the last expected value.
    TrailingData,
    /// An INTEGER that is negative, not minimally encoded or too large for its use.
    BadInteger,
}

impl std::fmt::Display for DerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated DER"),
            Self::UnexpectedTag { expected, found } => {
                write!(f, "expected DER tag 0x{expected:02x}, found 0x{found:02x}")
            }
            Self::BadLength => f.write_str("invalid DER length"),
            Self::TrailingData => f.write_str("trailing data after the DER value"),
            Self::BadInteger => f.write_str("invalid DER INTEGER"),
        }
    }
}

/// Reads consecutive DER values from a byte string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// The tag of the next value, if any.
    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The content of the next value, which must have tag `tag`.
    pub(crate) fn read(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let (&found, after_tag) = self.rest.split_first().ok_or(DerError::Truncated)?;
        if found != tag {
            return Err(DerError::UnexpectedTag {
                expected: tag,
                found,
            });
        }
        let (&first, mut after_length) = after_tag.split_first().ok_or(DerError::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // 0x80 is the indefinite form (BER only); more than four length bytes is far
            // beyond anything this crate reads.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(DerError::BadLength);
            }
            if after_length.len() < count {
                return Err(DerError::Truncated);
            }
            let (len_bytes, rest) = after_length.split_at(count);
            after_length = rest;
            let len = len_bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            // X.690 10.1: the fewest length bytes, and the long form only from 128 on.
            if len_bytes.first() == Some(&0) || len < 0x80 {
                return Err(DerError::BadLength);
            }
            len
        };
        if after_length.len() < len {
            return Err(DerError::Truncated);
        }
        let (content, rest) = after_length.split_at(len);
        self.rest = rest;
        Ok(content)
    }

    /// A non-negative INTEGER that fits in a `u32`.
    pub(crate) fn read_u32(&mut self) -> Result<u32, DerError> {
        let content = self.read(TAG_INTEGER)?;
        match content {
            [] => Err(DerError::BadInteger),
            [first, ..] if first & 0x80 != 0 => Err(DerError::BadInteger),
            [0, second, ..] if second & 0x80 == 0 => Err(DerError::BadInteger),
            _ => {
                let digits = match content {
                    [0, rest @ ..] if !rest.is_empty() => rest,
                    _ => content,
                };
                if digits.len() > 4 {
                    return Err(DerError::BadInteger);
                }
                Ok(digits.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)))
            }
        }
    }

    /// Succeeds if nothing is left.
    pub(crate) fn finish(self) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DerError::TrailingData)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_length(&mut out, len);
        out
    }

    #[test]
    fn lengths_are_minimal_der() {
        assert_eq!(length(0), [0x00]);
        assert_eq!(length(127), [0x7f]);
        assert_eq!(length(128), [0x81, 0x80]);
        assert_eq!(length(255), [0x81, 0xff]);
        assert_eq!(length(256), [0x82, 0x01, 0x00]);
        assert_eq!(length(65_535), [0x82, 0xff, 0xff]);
        assert_eq!(length(65_536), [0x83, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn integers_round_trip() -> Result<(), DerError> {
        for (value, der) in [
            (0u64, &[0x02, 0x01, 0x00][..]),
            (127, &[0x02, 0x01, 0x7f]),
            (128, &[0x02, 0x02, 0x00, 0x80]),
            (600_000, &[0x02, 0x03, 0x09, 0x27, 0xc0]),
            (
                u64::from(u32::MAX),
                &[0x02, 0x05, 0x00, 0xff, 0xff, 0xff, 0xff],
            ),
        ] {
            assert_eq!(integer(value), der, "{value}");
            let mut reader = Reader::new(der);
            assert_eq!(u64::from(reader.read_u32()?), value);
            reader.finish()?;
        }
        Ok(())
    }

    #[test]
    fn reader_refuses_malformed_input() {
        let read = |der: &[u8]| Reader::new(der).read(TAG_SEQUENCE).map(<[u8]>::len);
        assert_eq!(read(&[0x30, 0x00]), Ok(0));
        assert_eq!(read(&[0x30]), Err(DerError::Truncated));
        assert_eq!(read(&[0x30, 0x02, 0x00]), Err(DerError::Truncated));
        assert_eq!(read(&[0x30, 0x80]), Err(DerError::BadLength));
        assert_eq!(read(&[0x30, 0x81, 0x05]), Err(DerError::BadLength));
        assert_eq!(read(&[0x30, 0x82, 0x00, 0x80]), Err(DerError::BadLength));
        assert_eq!(read(&[0x30, 0x85, 1, 0, 0, 0, 0]), Err(DerError::BadLength));
        assert_eq!(
            read(&[0x04, 0x00]),
            Err(DerError::UnexpectedTag {
                expected: TAG_SEQUENCE,
                found: TAG_OCTET_STRING
            })
        );
        let long: Vec<u8> = [&[0x30, 0x81, 0x80][..], &[0u8; 0x80]].concat();
        assert_eq!(read(&long), Ok(0x80));
        for bad in [
            &[0x02, 0x00][..],
            &[0x02, 0x01, 0x80],
            &[0x02, 0x02, 0x00, 0x01],
        ] {
            assert_eq!(Reader::new(bad).read_u32(), Err(DerError::BadInteger));
        }
        assert_eq!(
            Reader::new(&[0x02, 0x05, 0x01, 0, 0, 0, 0]).read_u32(),
            Err(DerError::BadInteger)
        );
        assert_eq!(
            Reader::new(&[0x05, 0x00, 0x05]).finish(),
            Err(DerError::TrailingData)
        );
    }
}
