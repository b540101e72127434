//! What the harness writes into each payload to measure loss and latency: which publisher
//! sent it, its sequence number and when it was sent.
//!
//! A flood publisher encodes a burst of QoS 0 messages once and only rewrites the stamps in
//! place before each write, so that encoding costs the client almost nothing.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use moat_types::{QoS, TopicName};

use crate::client;

/// Bytes of a stamp at the start of every payload; payloads are at least this long.
pub const STAMP_LEN: usize = 20;

/// The stamp at the start of a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Which publisher (index within the scenario).
    pub publisher: u32,
    /// The publisher's message counter, from 0.
    pub sequence: u64,
    /// Send time since the scenario's origin (zero when not measured).
    pub sent: Duration,
}

impl Stamp {
    /// A payload of `size` bytes (at least [`STAMP_LEN`]) that starts with this stamp.
    pub fn payload(&self, size: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(size.max(STAMP_LEN));
        self.put(&mut buf);
        buf.resize(size.max(STAMP_LEN), b'x');
        buf.freeze()
    }

    fn put(&self, buf: &mut impl BufMut) {
        buf.put_u32(self.publisher);
        buf.put_u64(self.sequence);
        buf.put_u64(self.sent.as_nanos() as u64);
    }

    /// Reads the stamp at the start of `payload`.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let publisher = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
        let sequence = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
        let sent = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Self {
            publisher,
            sequence,
            sent: Duration::from_nanos(sent),
        })
    }
}

/// Counts messages missing from each publisher's sequence as they arrive. MQTT keeps the
/// order of one publisher's messages on one topic (MQTT-4.6.0-6), so a jump is a loss.
#[derive(Clone, Debug, Default)]
pub struct GapCounter {
    last: Vec<Option<u64>>,
}

impl GapCounter {
    /// Records `stamp`; returns how many messages of its publisher were skipped since the
    /// previous one seen.
    pub fn observe(&mut self, stamp: &Stamp) -> u64 {
        let index = stamp.publisher as usize;
        if self.last.len() <= index {
            self.last.resize(index + 1, None);
        }
        let slot = &mut self.last[index];
        match *slot {
            Some(last) if stamp.sequence <= last => 0,
            Some(last) => {
                *slot = Some(stamp.sequence);
                stamp.sequence - last - 1
            }
            None => {
                *slot = Some(stamp.sequence);
                0
            }
        }
    }
}

/// A run of identical QoS 0 PUBLISH packets, encoded once, re-stamped before each write.
#[derive(Clone, Debug)]
pub struct Burst {
    bytes: Vec<u8>,
    message_len: usize,
    payload_offset: usize,
    publisher: u32,
    next_sequence: u64,
}

impl Burst {
    /// About `target_bytes` worth of messages from `publisher` to `topic`.
    pub fn new(
        publisher: u32,
        topic: &TopicName,
        payload_size: usize,
        target_bytes: usize,
    ) -> Self {
        let payload_size = payload_size.max(STAMP_LEN);
        let packet = client::publish(
            topic,
            QoS::AtMostOnce,
            None,
            Bytes::from(vec![b'x'; payload_size]),
        );
        let mut one = BytesMut::new();
        moat_mqtt::encode(&packet, client::VERSION, &mut one);
        let message_len = one.len();
        let count = (target_bytes / message_len).max(1);
        Self {
            bytes: one.repeat(count),
            message_len,
            // A QoS 0 PUBLISH ends with its payload.
            payload_offset: message_len - payload_size,
            publisher,
            next_sequence: 0,
        }
    }

    /// Messages per burst.
    #[cfg(test)]
    pub fn messages(&self) -> u64 {
        (self.bytes.len() / self.message_len) as u64
    }

    /// The next burst's bytes, stamped with the following sequence numbers.
    pub fn next(&mut self) -> &[u8] {
        for chunk in self.bytes.chunks_exact_mut(self.message_len) {
            let stamp = Stamp {
                publisher: self.publisher,
                sequence: self.next_sequence,
                sent: Duration::ZERO,
            };
            stamp.put(&mut &mut chunk[self.payload_offset..]);
            self.next_sequence += 1;
        }
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use moat_mqtt::{Limits, Packet};

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            publisher: 3,
            sequence: 7,
            sent: Duration::from_nanos(123_456_789),
        };
        let payload = stamp.payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(stamp.payload(4).len(), STAMP_LEN);
        assert_eq!(Stamp::read(b"short"), None);
    }

    #[test]
    fn gaps_are_counted_per_publisher() {
        let stamp = |publisher, sequence| Stamp {
            publisher,
            sequence,
            sent: Duration::ZERO,
        };
        let mut gaps = GapCounter::default();
        assert_eq!(gaps.observe(&stamp(0, 5)), 0);
        assert_eq!(gaps.observe(&stamp(0, 6)), 0);
        assert_eq!(gaps.observe(&stamp(2, 0)), 0);
        assert_eq!(gaps.observe(&stamp(0, 10)), 3);
        assert_eq!(gaps.observe(&stamp(0, 9)), 0);
        assert_eq!(gaps.observe(&stamp(2, 2)), 1);
    }

    #[test]
    fn bursts_decode_with_consecutive_stamps() {
        let topic = TopicName::parse("bench/t").expect("valid topic");
        let mut burst = Burst::new(4, &topic, 64, 1000);
        assert!(burst.messages() > 1);
        for round in 0..2 {
            let mut buf = BytesMut::from(burst.next());
            let mut expected = round * burst.messages();
            while let Some(packet) =
                moat_mqtt::decode(&mut buf, client::VERSION, &Limits::default())
                    .expect("the codec decodes what it encoded")
            {
                let Packet::Publish(publish) = packet else {
                    panic!("not a PUBLISH: {packet:?}");
                };
                assert_eq!(publish.payload.len(), 64);
                let stamp = Stamp::read(&publish.payload).expect("stamped");
                assert_eq!((stamp.publisher, stamp.sequence), (4, expected));
                expected += 1;
            }
            assert_eq!(expected, (round + 1) * burst.messages());
        }
    }
}
