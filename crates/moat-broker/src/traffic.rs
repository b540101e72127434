//! What a connection sent and received, counted for behaviour monitoring, and the hook
//! through which the broker reports the few packet-level facts a detector needs (a topic a
//! connection publishes to for the first time, a subscription).
//!
//! Counting is cheap by construction: a connection adds its publishes to plain fields and
//! folds them into its session once per batch of packets; deliveries are counted under the
//! session lock the delivery path holds anyway. [`Broker::collect_traffic`] takes the
//! counts of every connected session.
//!
//! [`Broker::collect_traffic`]: crate::Broker::collect_traffic

use crate::auth::Principal;
use moat_types::{ClientId, TopicFilter, TopicName};
use std::fmt;

/// Number of payload-size buckets in [`Traffic::size_histogram`].
pub const TRAFFIC_SIZE_BUCKETS: usize = 8;

/// Counts of one connection since they were last collected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// PUBLISH packets received from the client (allowed or not).
    pub msgs_in: u32,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// PUBLISH packets sent to the client.
    pub msgs_out: u32,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Sizes of the payloads received, in buckets `< 16`, `< 64`, `< 256`, `< 1 KiB`,
    /// `< 4 KiB`, `< 16 KiB`, `< 64 KiB` and larger.
    pub size_histogram: [u32; TRAFFIC_SIZE_BUCKETS],
    /// Largest payload received.
    pub max_payload: u32,
    /// Milliseconds the connection was held unread by a rate quota (a policy's, or a
    /// detection `throttle`) while packets it had sent were waiting to be handled: the client
    /// offered more than it may. Counted once per stretch of the throttle, when the driver
    /// starts holding, so one collection may show more than its interval.
    pub held_ms: u32,
}

impl Traffic {
    /// The histogram bucket of a payload of `len` bytes.
    pub fn bucket(len: usize) -> usize {
        // Bucket k ≥ 1 holds [16·4^(k-1), 16·4^k): two bits of length per bucket above 15.
        if len < 16 {
            return 0;
        }
        let bits = (usize::BITS - len.leading_zeros()) as usize;
        ((bits - 5) / 2 + 1).min(TRAFFIC_SIZE_BUCKETS - 1)
    }

    pub(crate) fn record_in(&mut self, len: usize) {
        self.msgs_in = self.msgs_in.saturating_add(1);
        self.bytes_in = self.bytes_in.saturating_add(len as u64);
        let b = Self::bucket(len);
        self.size_histogram[b] = self.size_histogram[b].saturating_add(1);
        self.max_payload = self.max_payload.max(u32::try_from(len).unwrap_or(u32::MAX));
    }

    pub(crate) fn record_out(&mut self, len: usize) {
        self.msgs_out = self.msgs_out.saturating_add(1);
        self.bytes_out = self.bytes_out.saturating_add(len as u64);
    }

    /// Adds `other`'s inbound counts (what a connection gathered between flushes).
    pub(crate) fn merge_in(&mut self, other: &Traffic) {
        self.msgs_in = self.msgs_in.saturating_add(other.msgs_in);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        for (a, b) in self.size_histogram.iter_mut().zip(other.size_histogram) {
            *a = a.saturating_add(b);
        }
        self.max_payload = self.max_payload.max(other.max_payload);
    }

    /// Whether nothing was counted (a connection held back by its quota is not idle).
    pub fn is_empty(&self) -> bool {
        self.msgs_in == 0 && self.msgs_out == 0 && self.held_ms == 0
    }
}

/// Receives packet-level facts for behaviour monitoring. Called on the packet path, off its
/// common case (a topic already seen, no subscription): implementations must not block
/// (queue and return). Every method has an empty default.
pub trait Observer: Send + Sync + fmt::Debug {
    /// The connection published (allowed) to `topic` for the first time, as far as its
    /// bounded memory of topics (`TOPICS_REMEMBERED`) can tell.
    fn first_topic(&self, _client: &ClientId, _principal: &Principal, _topic: &TopicName) {}
    /// The connection subscribed to `filter` (allowed).
    fn subscribed(&self, _client: &ClientId, _principal: &Principal, _filter: &TopicFilter) {}
}

/// Receives copies of allowed publishes to a few topics the hub itself consumes (device
/// update reports: `devices/+/ota/+`), after the policy allowed them and before they are
/// routed (they are routed as usual too).
///
/// Called on the packet path for every allowed publish: [`wants`](Self::wants) must be a
/// cheap check of the topic's shape (a few byte comparisons, no allocation), and
/// [`publish`](Self::publish) must not block (queue and return; drop and count when full).
pub trait PublishTap: Send + Sync + fmt::Debug {
    /// Whether publishes to `topic` are for the tap.
    fn wants(&self, topic: &TopicName) -> bool;
    /// An allowed publish by `principal` to a topic the tap wants; `payload` shares the
    /// read buffer.
    fn publish(&self, principal: &Principal, topic: &TopicName, payload: bytes::Bytes);
}

/// Observes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// Ended connections whose counts wait for the next `Broker::collect_traffic` (about a
/// second's worth of disconnects); beyond it their counts are not reported.
pub const MAX_DEPARTED_TRAFFIC: usize = 65_536;

/// Topics one connection remembers having published to (hashes, oldest forgotten first).
pub const TOPICS_REMEMBERED: usize = 32;

/// The bounded memory of topics behind [`Observer::first_topic`].
#[derive(Debug, Default)]
pub(crate) struct SeenTopics {
    hashes: Vec<u64>,
    next: usize,
}

impl SeenTopics {
    /// Remembers `topic`; returns whether it was new.
    pub(crate) fn insert(&mut self, topic: &[u8]) -> bool {
        // FNV-1a: topics are short and the hash only has to separate one device's topics.
        let hash = topic.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        if self.hashes.contains(&hash) {
            return false;
        }
        if self.hashes.len() < TOPICS_REMEMBERED {
            self.hashes.push(hash);
        } else {
            self.hashes[self.next] = hash;
            self.next = (self.next + 1) % TOPICS_REMEMBERED;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_four() {
        assert_eq!(Traffic::bucket(0), 0);
        assert_eq!(Traffic::bucket(15), 0);
        assert_eq!(Traffic::bucket(16), 1);
        assert_eq!(Traffic::bucket(63), 1);
        assert_eq!(Traffic::bucket(64), 2);
        assert_eq!(Traffic::bucket(1023), 3);
        assert_eq!(Traffic::bucket(1024), 4);
        assert_eq!(Traffic::bucket(16 * 1024), 6);
        assert_eq!(Traffic::bucket(64 * 1024 - 1), 6);
        assert_eq!(Traffic::bucket(64 * 1024), 7);
        assert_eq!(Traffic::bucket(usize::MAX), 7);
        for len in 0..300_000usize {
            // The definition, one bucket at a time.
            let mut bucket = 0;
            let mut bound = 16usize;
            while len >= bound && bucket < TRAFFIC_SIZE_BUCKETS - 1 {
                bucket += 1;
                bound <<= 2;
            }
            assert_eq!(Traffic::bucket(len), bucket, "{len}");
        }
    }

    #[test]
    fn counts_merge() {
        let mut a = Traffic::default();
        a.record_in(10);
        a.record_in(100);
        a.record_out(7);
        let mut b = Traffic::default();
        b.record_in(5000);
        a.merge_in(&b);
        assert_eq!(a.msgs_in, 3);
        assert_eq!(a.bytes_in, 5110);
        assert_eq!(a.max_payload, 5000);
        assert_eq!(a.size_histogram[..6], [1, 0, 1, 0, 0, 1]);
        assert_eq!((a.msgs_out, a.bytes_out), (1, 7));
        assert!(!a.is_empty());
        assert!(Traffic::default().is_empty());
    }

    #[test]
    fn seen_topics_are_bounded_and_forget_the_oldest() {
        let mut seen = SeenTopics::default();
        assert!(seen.insert(b"a/0"));
        assert!(!seen.insert(b"a/0"));
        for i in 1..TOPICS_REMEMBERED {
            assert!(seen.insert(format!("a/{i}").as_bytes()));
        }
        assert_eq!(seen.hashes.len(), TOPICS_REMEMBERED);
        assert!(seen.insert(b"b"));
        assert_eq!(seen.hashes.len(), TOPICS_REMEMBERED);
        // "a/0" was the oldest: forgotten, so new again.
        assert!(seen.insert(b"a/0"));
    }
}
