//! What the broker asks durable storage to remember, and what it gets back at start-up.
//!
//! The broker never touches a file: it describes changes as [`StoreOp`]s and hands them to a
//! [`Durability`] implementation (SQLite in `moat-store`). Operations are applied in
//! submission order; `submit` returns a commit sequence number, and the implementation
//! publishes the highest durable sequence so that the connection driver can hold back a
//! PUBACK/PUBREC/SUBACK until what it acknowledges is on disk (group commit).

use bytes::Bytes;
use moat_types::{ClientId, Timestamp};

/// A message as stored: an MQTT 5 PUBLISH encoding (topic, flags, properties, payload; the
/// packet identifier is not part of it) plus its absolute expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message encoded as an MQTT 5 PUBLISH packet without packet identifier and with
    /// QoS 0 flags; QoS and retain are stored beside it.
    pub encoded: Bytes,
    /// QoS the message is to be delivered at.
    pub qos: u8,
    /// Retain flag as it is to be delivered.
    pub retain: bool,
    /// When the message expires, if it has a Message Expiry Interval.
    pub expires_at: Option<Timestamp>,
}

/// Where an outbound message of a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundState {
    /// Queued, not yet sent.
    Queued,
    /// Sent with this packet identifier; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(u16),
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    Released(u16),
}

/// A persistent session's subscription as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter as the client sent it (including any `$share/group/` prefix).
    pub filter: String,
    /// The subscription options byte as on the wire (MQTT-3.8.3.1).
    pub options: u8,
    /// Subscription Identifier, if any.
    pub identifier: Option<u32>,
}

/// One change to durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Create or update a persistent session.
    PutSession {
        /// Session key.
        client_id: ClientId,
        /// Session Expiry Interval in seconds (`u32::MAX` never expires).
        expiry_interval: u32,
        /// 4 (3.1.1) or 5.
        protocol_level: u8,
        /// When the client disconnected; `None` while connected.
        disconnected_at: Option<Timestamp>,
    },
    /// Remove a session and everything it owns (subscriptions, outbound, inbound QoS 2).
    DeleteSession {
        /// Session key.
        client_id: ClientId,
    },
    /// Add or replace a subscription.
    PutSubscription {
        /// Session key.
        client_id: ClientId,
        /// The subscription.
        subscription: StoredSubscription,
    },
    /// Remove a subscription.
    DeleteSubscription {
        /// Session key.
        client_id: ClientId,
        /// The filter as the client sent it.
        filter: String,
    },
    /// Append a message to a session's outbound queue. `seq` orders the queue and is unique
    /// per session.
    PutOutbound {
        /// Session key.
        client_id: ClientId,
        /// Queue position.
        seq: u64,
        /// Delivery state.
        state: OutboundState,
        /// The message.
        message: StoredMessage,
    },
    /// Change the state of a queued message.
    SetOutboundState {
        /// Session key.
        client_id: ClientId,
        /// Queue position.
        seq: u64,
        /// New state.
        state: OutboundState,
    },
    /// Drop a message from a session's queue (acknowledged, expired or discarded).
    DeleteOutbound {
        /// Session key.
        client_id: ClientId,
        /// Queue position.
        seq: u64,
    },
    /// Remember an inbound QoS 2 packet identifier awaiting PUBREL (MQTT-4.3.3).
    PutInboundQos2 {
        /// Session key.
        client_id: ClientId,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Forget an inbound QoS 2 packet identifier (PUBREL received).
    DeleteInboundQos2 {
        /// Session key.
        client_id: ClientId,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Set the retained message of a topic.
    PutRetained {
        /// Topic name.
        topic: String,
        /// The message.
        message: StoredMessage,
    },
    /// Clear the retained message of a topic.
    DeleteRetained {
        /// Topic name.
        topic: String,
    },
}

/// A persistent session as loaded at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedSession {
    /// Session key.
    pub client_id: ClientId,
    /// Session Expiry Interval in seconds.
    pub expiry_interval: u32,
    /// 4 or 5.
    pub protocol_level: u8,
    /// When the client disconnected (a session loaded while "connected" was cut by a crash;
    /// the loader treats it as disconnected at load time).
    pub disconnected_at: Option<Timestamp>,
    /// Subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// Outbound messages in queue order (`seq` ascending).
    pub outbound: Vec<(u64, OutboundState, StoredMessage)>,
    /// Inbound QoS 2 packet identifiers awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
}

/// Everything durable, as loaded at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Persistent sessions.
    pub sessions: Vec<LoadedSession>,
    /// Retained messages by topic.
    pub retained: Vec<(String, StoredMessage)>,
}

/// Durable storage as the broker sees it.
pub trait Durability: Send + Sync + std::fmt::Debug {
    /// Queues `ops` to be applied atomically and in order after everything submitted before.
    /// Returns the commit sequence number that covers them; the implementation reports
    /// progress through its own channel (see `moat-store`). Never blocks on disk.
    fn submit(&self, ops: Vec<StoreOp>) -> u64;
}

/// Durability that remembers nothing: for tests and for hubs run without a data directory.
/// Every submission is "committed" at once.
#[derive(Debug, Default)]
pub struct Volatile;

impl Durability for Volatile {
    fn submit(&self, _ops: Vec<StoreOp>) -> u64 {
        0
    }
}
