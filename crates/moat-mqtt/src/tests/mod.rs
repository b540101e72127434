//! Codec tests: spec byte vectors, one test per decoding rule, and property tests.

mod encoder;
mod errors;
mod roundtrip;
mod seeds;
mod strategies;
mod vectors;

use bytes::BytesMut;

use crate::{DecodeError, Limits, Packet, ProtocolVersion, decode, decode_connect, encode};

/// Decodes exactly one packet from `bytes` and checks that nothing is left over.
fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, version, &Limits::default());
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
    result
}

/// Like [`decode_one`], for a connection's first packet.
fn decode_first(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode_connect(&mut buf, &Limits::default());
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
    result
}

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf);
    buf.to_vec()
}
