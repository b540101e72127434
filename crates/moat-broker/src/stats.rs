//! Broker counters, read by the hub's metrics endpoint. Bounded: no per-client labels.

use moat_types::QuotaLimit;
use std::sync::atomic::AtomicU64;

/// Monotonic counters of broker events.
#[derive(Debug, Default)]
pub struct Stats {
    /// CONNECTs accepted.
    pub connects: AtomicU64,
    /// CONNECTs refused by the authorizer.
    pub connect_denied: AtomicU64,
    /// Session takeovers (MQTT-3.1.4-3).
    pub takeovers: AtomicU64,
    /// Messages accepted for routing (including wills).
    pub messages_in: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_out: AtomicU64,
    /// Publishes refused by the authorizer.
    pub publish_denied: AtomicU64,
    /// Subscriptions refused by the authorizer.
    pub subscribe_denied: AtomicU64,
    /// Deliveries withheld because the subscriber may not receive the topic.
    pub receive_denied: AtomicU64,
    /// Live subscriptions removed because a policy change no longer allows them.
    pub subscriptions_revoked: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages dropped because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// New retained topics refused because the retained store was full.
    pub retained_dropped: AtomicU64,
    /// Will messages published.
    pub wills: AtomicU64,
    /// Sessions removed after their expiry interval.
    pub sessions_expired: AtomicU64,
    /// Times a connection hit a policy quota, by [`QuotaLimit::index`]: throttling episodes
    /// for the rates, refusals for the others.
    pub quota_exceeded: [AtomicU64; QuotaLimit::ALL.len()],
    /// Milliseconds connections were held unread by a rate quota with packets waiting (the
    /// sum of [`Traffic::held_ms`](crate::Traffic::held_ms)).
    pub quota_held_ms: AtomicU64,
}
