//! Decoding (to be written).
use crate::{DecodeError, Limits, Packet, ProtocolVersion};
use bytes::BytesMut;

/// Decodes one packet from the front of `buf` for a connection speaking `version`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (and nothing is consumed);
/// otherwise consumes exactly one packet. Fails as soon as the fixed header announces a
/// packet larger than `limits.max_packet_size`, before the rest arrives.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, limits);
    Err(DecodeError::Malformed("unimplemented"))
}

/// Decodes the first packet of a connection, which must be CONNECT (MQTT-3.1.0-1).
pub fn decode_connect(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, limits);
    Err(DecodeError::Malformed("unimplemented"))
}
