//! Encoding (to be written).
use crate::{Packet, ProtocolVersion};
use bytes::BytesMut;

/// Appends `packet`, encoded for `version`, to `buf`.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let _ = (packet, version, buf);
}

/// The size `packet` would take on the wire for `version`, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    0
}
