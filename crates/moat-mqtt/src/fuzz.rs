//! Entry points for the cargo-fuzz targets in `/fuzz` (feature `fuzzing`), kept in the
//! crate so that the targets are three-line shims and regression tests can call the same
//! code. Each function panics only when an invariant of the codec is broken.

use bytes::BytesMut;

use crate::{Limits, Packet, ProtocolVersion, decode, decode_connect, encode, encoded_len};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

/// The defaults, and limits small enough for short fuzz inputs to reach every limit check.
fn limit_sets() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_packet_size: 64,
            max_user_properties: 2,
            max_filters_per_packet: 2,
            max_subscription_identifiers: 1,
        },
    ]
}

/// Decodes `data` as a server would: CONNECT first and then packets of the negotiated
/// version; then again as an established connection of each version. Checks that
/// `Ok(None)` never consumes input. Runs once with the default limits and once with tiny
/// ones.
pub fn decode_stream(data: &[u8]) {
    for limits in limit_sets() {
        let mut buf = BytesMut::from(data);
        if let Ok(Some(Packet::Connect(connect))) = decode_connect(&mut buf, &limits) {
            drain(&mut buf, connect.protocol, &limits);
        }
        for version in VERSIONS {
            drain(&mut BytesMut::from(data), version, &limits);
        }
    }
}

fn drain(buf: &mut BytesMut, version: ProtocolVersion, limits: &Limits) {
    loop {
        let before = buf.len();
        match decode(buf, version, limits) {
            Ok(Some(_)) => assert!(buf.len() < before, "a decoded packet consumed nothing"),
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed input");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Decodes `data` for each version and limit set; every packet that decodes is encoded again, which must
/// take exactly [`encoded_len`] bytes and decode to an equal packet.
pub fn roundtrip(data: &[u8]) {
    for limits in limit_sets() {
        for version in VERSIONS {
            let mut buf = BytesMut::from(data);
            while let Ok(Some(packet)) = decode(&mut buf, version, &limits) {
                assert_roundtrip(&packet, version, &limits);
            }
        }
    }
}

/// Encodes `packet` for `version`, checks the length, decodes it back and compares.
pub fn assert_roundtrip(packet: &Packet, version: ProtocolVersion, limits: &Limits) {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, version),
        "encoded_len disagrees"
    );
    let again = decode(&mut out, version, limits);
    assert_eq!(
        again,
        Ok(Some(packet.clone())),
        "round trip changed the packet"
    );
    assert!(out.is_empty(), "re-encoded packet left bytes behind");
}
