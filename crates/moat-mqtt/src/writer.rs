//! Writing MQTT data types (MQTT 5.0 §1.5), either into a buffer or into a byte counter.
//!
//! Every packet is emitted through the [`Sink`] trait once with a [`Counter`] (to learn its
//! length) and once with a `BytesMut` (to write it). Because both passes run the same code,
//! [`crate::encoded_len`] cannot disagree with what [`crate::encode`] writes.

use bytes::{BufMut, BytesMut};

use crate::reader::VARINT_MAX;

/// Longest string or binary field the two-byte length prefix can describe.
pub(crate) const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Where encoded bytes go.
pub(crate) trait Sink {
    fn u8(&mut self, value: u8);
    fn u16(&mut self, value: u16);
    fn u32(&mut self, value: u32);
    fn raw(&mut self, bytes: &[u8]);

    /// A Variable Byte Integer. Callers never pass more than [`VARINT_MAX`]; a larger value
    /// is clamped rather than panicking.
    fn varint(&mut self, value: usize) {
        let mut value = value.min(VARINT_MAX as usize);
        loop {
            // Truncation is intended: the low seven bits.
            let mut byte = (value & 0x7F) as u8;
            value >>= 7;
            if value > 0 {
                byte |= 0x80;
            }
            self.u8(byte);
            if value == 0 {
                break;
            }
        }
    }

    /// Binary Data (MQTT 5.0 §1.5.6): a two-byte length and the bytes. Longer input is
    /// truncated to 65,535 bytes; the encoder trusts its (server-generated) input and would
    /// rather send a shorter field than panic or corrupt the stream.
    fn binary(&mut self, bytes: &[u8]) {
        let bytes = bytes.get(..MAX_FIELD_LEN).unwrap_or(bytes);
        self.u16(field_len(bytes.len()));
        self.raw(bytes);
    }

    /// A UTF-8 Encoded String (MQTT 5.0 §1.5.4). Longer input is truncated to the last
    /// character boundary at or below 65,535 bytes.
    fn string(&mut self, text: &str) {
        let text = clamp_str(text);
        self.u16(field_len(text.len()));
        self.raw(text.as_bytes());
    }
}

fn field_len(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// The longest prefix of `text` that fits a UTF-8 Encoded String, cut on a char boundary.
pub(crate) fn clamp_str(text: &str) -> &str {
    if text.len() <= MAX_FIELD_LEN {
        return text;
    }
    let mut end = MAX_FIELD_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

impl Sink for BytesMut {
    fn u8(&mut self, value: u8) {
        self.put_u8(value);
    }
    fn u16(&mut self, value: u16) {
        self.put_u16(value);
    }
    fn u32(&mut self, value: u32) {
        self.put_u32(value);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
    fn varint(&mut self, value: usize) {
        self.0 += crate::reader::varint_len(value);
    }
}

/// Counts what `emit` writes.
pub(crate) fn count(emit: impl FnOnce(&mut Counter)) -> usize {
    let mut counter = Counter::default();
    emit(&mut counter);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_on_a_char_boundary() {
        // 'é' is two bytes; 32,768 of them straddle the 65,535 limit.
        let text = "é".repeat(32_768);
        let clamped = clamp_str(&text);
        assert_eq!(clamped.len(), 65_534);
        let mut buf = BytesMut::new();
        buf.string(&text);
        assert_eq!(buf.len(), 2 + 65_534);
        assert_eq!(count(|c| c.string(&text)), buf.len());
    }

    #[test]
    fn long_binary_is_truncated() {
        let data = vec![7u8; 70_000];
        let mut buf = BytesMut::new();
        buf.binary(&data);
        assert_eq!(buf.len(), 2 + 65_535);
        assert_eq!(&buf[..2], &[0xFF, 0xFF]);
        assert_eq!(count(|c| c.binary(&data)), buf.len());
    }

    #[test]
    fn varint_counter_matches_writer() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = BytesMut::new();
            buf.varint(value);
            assert_eq!(count(|c| c.varint(value)), buf.len(), "{value}");
        }
    }
}
