//! Bounds-checked reading of MQTT data types (MQTT 5.0 §1.5) from one packet's bytes.
//!
//! Every read checks that the bytes are present before slicing or allocating, so a length
//! field can never make us allocate more than the peer actually sent.

use bytes::Bytes;

use crate::DecodeError;

/// The largest value a Variable Byte Integer can carry (MQTT 5.0 §1.5.5).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// A cursor over the bytes of one complete packet. Slices handed out share the packet's
/// buffer (no copy).
#[derive(Debug)]
pub(crate) struct Reader {
    data: Bytes,
    pos: usize,
}

const TRUNCATED: DecodeError = DecodeError::Malformed("field runs past the end of the packet");

impl Reader {
    pub(crate) fn new(data: Bytes) -> Self {
        Self { data, pos: 0 }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Fails unless every byte has been read: trailing bytes mean the lengths disagree.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(what))
        }
    }

    fn slice(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(TRUNCATED)?;
        let bytes = self.data.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(bytes)
    }

    /// The next `n` bytes as a shared slice of the packet.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.slice(n)?;
        Ok(self.data.slice(start..self.pos))
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        self.data.slice(start..)
    }

    /// A reader over the next `n` bytes (for a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader::new)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.slice(1)? {
            [b] => Ok(*b),
            _ => Err(TRUNCATED),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        match self.slice(2)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(TRUNCATED),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        match self.slice(4)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(TRUNCATED),
        }
    }

    /// A Variable Byte Integer (MQTT 5.0 §1.5.5).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        match parse_varint(rest)? {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None => Err(TRUNCATED),
        }
    }

    /// Two Byte Integer length followed by that many bytes (MQTT 5.0 §1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String (MQTT 5.0 §1.5.4), still as shared bytes, checked for valid
    /// UTF-8 and the absence of U+0000.
    pub(crate) fn utf8_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let bytes = self.binary()?;
        check_utf8(&bytes)?;
        Ok(bytes)
    }

    /// A UTF-8 Encoded String as an owned `String`.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()?;
        let bytes = self.slice(usize::from(len))?;
        check_utf8(bytes).map(str::to_owned)
    }
}

/// MQTT-1.5.4-1 (valid UTF-8) and MQTT-1.5.4-2 (no U+0000).
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?; // MQTT-1.5.4-1
    // In UTF-8 the byte 0x00 only ever encodes U+0000.
    if bytes.contains(&0) {
        return Err(DecodeError::Malformed("string contains U+0000")); // MQTT-1.5.4-2
    }
    Ok(text)
}

/// Parses a Variable Byte Integer from the front of `bytes`: `Ok(None)` if more bytes are
/// needed, otherwise the value and how many bytes it took (1 to 4).
///
/// A fifth byte, or a longer encoding than the value needs, is Malformed (MQTT-1.5.5-1).
pub(crate) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of zero after the first means the encoding was padded.
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer is not minimally encoded",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Bytes a Variable Byte Integer holding `value` takes (values above [`VARINT_MAX`] are
/// never encoded; they count as 4).
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_spec_boundaries() {
        // MQTT 5.0 §1.5.5, table 1-1.
        let cases: &[(&[u8], u32)] = &[
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], VARINT_MAX),
        ];
        for (bytes, value) in cases {
            assert_eq!(parse_varint(bytes), Ok(Some((*value, bytes.len()))));
            assert_eq!(varint_len(*value as usize), bytes.len());
        }
    }

    #[test]
    fn varint_incomplete_and_too_long() {
        assert_eq!(parse_varint(&[]), Ok(None));
        assert_eq!(parse_varint(&[0x80]), Ok(None));
        assert_eq!(parse_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn varint_non_minimal_is_malformed() {
        assert!(matches!(
            parse_varint(&[0x80, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_varint(&[0x81, 0x80, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn strings_reject_bad_utf8_and_nul() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0xA9]));
        assert_eq!(r.string().as_deref(), Ok("é"));
        assert!(r.is_empty());
    }
}
