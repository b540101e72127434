//! The broker's limits and protocol settings. Every attacker-controlled size, count and
//! duration the broker enforces is a named field here, with its default in the doc comment.

use std::time::Duration;

/// Broker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest keep alive the hub grants, and the keep alive imposed on clients asking for
    /// 0 (none) or more. MQTT 5 clients are told through Server Keep Alive; 3.1.1 clients
    /// cannot be told, so the same limit is enforced silently. Default 300 s.
    pub max_keep_alive: Duration,
    /// Longest Session Expiry Interval granted; also the expiry of MQTT 3.1.1 sessions with
    /// Clean Session 0 (which the protocol keeps forever). Default 7 days.
    pub max_session_expiry: Duration,
    /// Receive Maximum the hub announces: QoS 1/2 PUBLISHes a client may have unacknowledged
    /// towards the hub; one more ends the connection with 0x93 (MQTT-3.3.4-7). Default 1024.
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight towards one client, whatever Receive Maximum it
    /// announces. Default 1024.
    pub max_inflight_outbound: u16,
    /// Most messages queued for one session beyond those in flight. When full, a new message
    /// for that session is dropped (and counted); messages already queued are kept, so an
    /// offline device finds the oldest ones. Before that, flow control: once a connected
    /// session's queue holds three quarters of this, publishers feeding it stop being read
    /// until it drains to half (keeping the subscriber supplied while they resume). Default 1000.
    pub max_queued_messages: usize,
    /// Most subscriptions one session may hold. Default 256.
    pub max_subscriptions: usize,
    /// Longest topic name or filter, in bytes. Default 1024.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter. Default 32.
    pub max_topic_levels: usize,
    /// Topic Alias Maximum the hub accepts from a client (MQTT 5). Default 64.
    pub topic_alias_maximum: u16,
    /// Most topic aliases the hub assigns towards one client, capped by the client's own
    /// Topic Alias Maximum. Default 64.
    pub max_outbound_topic_aliases: u16,
    /// Most retained messages kept hub-wide; a new retained topic beyond it is not retained.
    /// Default 100,000.
    pub max_retained_messages: usize,
    /// Largest packet accepted from a client, in bytes (announced as Maximum Packet Size).
    /// Default 1 MiB.
    pub max_packet_size: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_keep_alive: Duration::from_secs(300),
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            receive_maximum: 1024,
            max_inflight_outbound: 1024,
            max_queued_messages: 1000,
            max_subscriptions: 256,
            max_topic_length: 1024,
            max_topic_levels: 32,
            topic_alias_maximum: 64,
            max_outbound_topic_aliases: 64,
            max_retained_messages: 100_000,
            max_packet_size: 1024 * 1024,
        }
    }
}

impl BrokerConfig {
    /// Queue length at which publishers feeding a connected session are paused.
    pub(crate) fn queue_high_watermark(&self) -> usize {
        (self.max_queued_messages * 3 / 4).max(1)
    }

    /// Queue length at or below which paused publishers resume.
    pub(crate) fn queue_low_watermark(&self) -> usize {
        self.max_queued_messages / 2
    }

    /// The session expiry cap in whole seconds.
    pub(crate) fn max_session_expiry_secs(&self) -> u32 {
        u32::try_from(self.max_session_expiry.as_secs()).unwrap_or(u32::MAX)
    }

    /// The keep alive cap in whole seconds (at least 1).
    pub(crate) fn max_keep_alive_secs(&self) -> u16 {
        u16::try_from(self.max_keep_alive.as_secs())
            .unwrap_or(u16::MAX)
            .max(1)
    }
}
