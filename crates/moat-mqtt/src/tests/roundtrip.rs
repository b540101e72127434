//! Property tests: round trips, prefixes, arbitrary and mutated input, byte-at-a-time
//! streams.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::strategies::{connect, packet, versioned_packet};
use crate::{Limits, Packet, ProtocolVersion, decode, decode_connect, encode, encoded_len, fuzz};

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// encode then decode gives the packet back, in exactly `encoded_len` bytes.
    #[test]
    fn encode_decode_round_trip((version, packet) in versioned_packet()) {
        fuzz::assert_roundtrip(&packet, version, &Limits::default());
    }

    /// Every strict prefix of a valid packet is "need more bytes" and consumes nothing.
    #[test]
    fn prefixes_are_incomplete((version, packet) in versioned_packet()) {
        let mut full = BytesMut::new();
        encode(&packet, version, &mut full);
        prop_assert_eq!(full.len(), encoded_len(&packet, version));
        let limits = Limits::default();
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            prop_assert_eq!(decode(&mut buf, version, &limits), Ok(None));
            prop_assert_eq!(buf.len(), n);
            if let Packet::Connect(_) = packet {
                prop_assert_eq!(decode_connect(&mut buf, &limits), Ok(None));
                prop_assert_eq!(buf.len(), n);
            }
        }
    }

    /// Arbitrary bytes never panic, and whatever decodes survives a round trip.
    #[test]
    fn arbitrary_bytes(data in vec(any::<u8>(), 0..512)) {
        fuzz::decode_stream(&data);
        fuzz::roundtrip(&data);
    }

    /// Valid packets with a few bytes changed: no panic, and whatever decodes round-trips.
    #[test]
    fn mutated_packets(
        (version, packet) in versioned_packet(),
        flips in vec((any::<Index>(), 1..=255u8), 1..4),
    ) {
        let mut bytes = BytesMut::new();
        encode(&packet, version, &mut bytes);
        for (index, mask) in flips {
            let i = index.index(bytes.len());
            bytes[i] ^= mask;
        }
        fuzz::decode_stream(&bytes);
        fuzz::roundtrip(&bytes);
    }

    /// A connection's stream fed one byte at a time decodes to the same packets.
    #[test]
    fn byte_at_a_time(
        (version, first, rest) in version().prop_flat_map(|v| {
            (Just(v), connect(v), vec(packet(v), 0..8))
        })
    ) {
        let mut wire = BytesMut::new();
        encode(&first, version, &mut wire);
        for p in &rest {
            encode(p, version, &mut wire);
        }
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in wire.iter() {
            buf.extend_from_slice(&[byte]);
            loop {
                let decoded = if got.is_empty() {
                    decode_connect(&mut buf, &limits)
                } else {
                    decode(&mut buf, version, &limits)
                };
                match decoded {
                    Ok(Some(p)) => got.push(p),
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e} after {} packets", got.len()))),
                }
            }
        }
        prop_assert!(buf.is_empty());
        let mut expected = vec![first];
        expected.extend(rest);
        prop_assert_eq!(got, expected);
    }
}
