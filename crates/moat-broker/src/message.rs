//! An application message as the broker holds it: decoded once, shared by reference count
//! across every session it is delivered to.

use bytes::{Bytes, BytesMut};
use moat_mqtt::{Limits, Packet, ProtocolVersion, Publish, PublishProperties};
use moat_types::{QoS, Timestamp, TopicName};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::persist::StoredMessage;

/// A published message. Topic and payload are slices of the publisher's read buffer.
#[derive(Debug)]
pub struct Message {
    /// Topic name (aliases already resolved).
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// RETAIN flag the publisher used.
    pub retain: bool,
    /// MQTT 5 properties to forward (no topic alias, no subscription identifiers).
    pub properties: PublishProperties,
    /// Absolute expiry from the Message Expiry Interval.
    pub expires_at: Option<Timestamp>,
    /// The publishing session, for No Local (MQTT-3.8.3-3).
    pub origin: Option<u64>,
    stored: OnceLock<Bytes>,
    /// QoS 0 encodings shared by subscribers: [3.1.1, 3.1.1 retained, 5, 5 retained].
    qos0: [OnceLock<Bytes>; 4],
    /// Set by the router when the message goes to more than one session, the case where a
    /// shared encoding pays for itself.
    fan_out: AtomicBool,
    /// Whether topic, payload and properties are slices of a buffer of the message's own
    /// (rebuilt from storage) rather than of a publisher's read buffer.
    owns_bytes: bool,
    /// The copy [`Message::detached`] made, shared by every queue that keeps it.
    detached: OnceLock<Arc<Message>>,
}

impl Message {
    /// Builds a message from a decoded PUBLISH whose topic is resolved.
    pub fn new(
        topic: TopicName,
        publish: Publish,
        now: Timestamp,
        origin: Option<u64>,
    ) -> Arc<Self> {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| now.saturating_add(Duration::from_secs(u64::from(secs))));
        Arc::new(Self {
            topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            origin,
            stored: OnceLock::new(),
            qos0: Default::default(),
            fan_out: AtomicBool::new(false),
            owns_bytes: false,
            detached: OnceLock::new(),
        })
    }

    /// Whether the message has expired at `now` (MQTT-3.3.2-5).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to forward at `now`: the remaining lifetime, rounded up
    /// (MQTT-3.3.2-6).
    pub fn remaining_expiry(&self, now: Timestamp) -> Option<u32> {
        self.expires_at.map(|at| {
            let ms = at.as_millis().saturating_sub(now.as_millis());
            u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// Marks the message as going to several sessions (see [`Message::is_fanned_out`]).
    pub(crate) fn mark_fan_out(&self) {
        self.fan_out.store(true, Ordering::Relaxed);
    }

    /// Whether the router delivered the message to more than one session. Read by a
    /// subscriber after taking the message from its queue, whose lock orders it after the
    /// router's store.
    pub fn is_fanned_out(&self) -> bool {
        self.fan_out.load(Ordering::Relaxed)
    }

    /// The message encoded as a QoS 0 PUBLISH for `version` with `retain`, built on first use
    /// and shared by every delivery that needs nothing per client (no alias, no
    /// subscription identifier, no expiry).
    pub fn encoded_qos0(&self, version: ProtocolVersion, retain: bool) -> Bytes {
        let slot = usize::from(version == ProtocolVersion::V5) * 2 + usize::from(retain);
        self.qos0[slot]
            .get_or_init(|| {
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain,
                    topic: Some(self.topic.clone()),
                    packet_id: None,
                    properties: match version {
                        ProtocolVersion::V5 => self.properties.clone(),
                        ProtocolVersion::V311 => PublishProperties::default(),
                    },
                    payload: self.payload.clone(),
                };
                let mut buf = BytesMut::new();
                moat_mqtt::encode(&Packet::Publish(publish), version, &mut buf);
                buf.freeze()
            })
            .clone()
    }

    /// The message as stored, for a delivery at `qos` with `retain`.
    pub fn to_stored(&self, qos: QoS, retain: bool) -> StoredMessage {
        let encoded = self
            .stored
            .get_or_init(|| {
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: Some(self.topic.clone()),
                    packet_id: None,
                    properties: PublishProperties {
                        // The absolute expiry is stored beside the encoding.
                        message_expiry_interval: None,
                        ..self.properties.clone()
                    },
                    payload: self.payload.clone(),
                };
                let mut buf = BytesMut::new();
                moat_mqtt::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf);
                buf.freeze()
            })
            .clone();
        StoredMessage {
            encoded,
            qos: qos.as_u8(),
            retain,
            expires_at: self.expires_at,
        }
    }

    /// Rebuilds a message from storage. `None` if the stored bytes do not decode (a damaged
    /// row is skipped, not trusted).
    pub fn from_stored(stored: &StoredMessage) -> Option<(Arc<Self>, QoS, bool)> {
        let qos = QoS::from_u8(stored.qos)?;
        let message = Self::decode_stored(stored, qos, None)?;
        Some((Arc::new(message), qos, stored.retain))
    }

    /// This message with bytes of its own, for keeping. A decoded message's topic, payload
    /// and properties are slices of its publisher's read buffer, which may hold much more
    /// than this message; a message waiting in a disconnected session's queue, possibly
    /// for days, would keep that whole buffer allocated. The copy is rebuilt from the
    /// stored encoding (as after a restart), made once and shared by every queue that
    /// keeps it; a message that already owns its bytes is returned as is.
    pub fn detached(self: &Arc<Self>) -> Arc<Self> {
        if self.owns_bytes {
            return Arc::clone(self);
        }
        if let Some(copy) = self.detached.get() {
            return Arc::clone(copy);
        }
        let stored = self.to_stored(self.qos, self.retain);
        match Self::decode_stored(&stored, self.qos, self.origin) {
            Some(mut copy) => {
                copy.fan_out
                    .store(self.fan_out.load(Ordering::Relaxed), Ordering::Relaxed);
                // The stored encoding leaves the interval out (the absolute expiry is kept
                // beside it); a will is republished from its properties.
                copy.properties.message_expiry_interval = self.properties.message_expiry_interval;
                // Two threads may both have made a copy: the first one kept is shared.
                Arc::clone(self.detached.get_or_init(|| Arc::new(copy)))
            }
            // Unreachable (the hub's own encoding decodes). The original is returned and not
            // remembered: a message holding itself would never be freed.
            None => Arc::clone(self),
        }
    }

    /// Decodes a stored encoding into a message that owns its bytes.
    fn decode_stored(stored: &StoredMessage, qos: QoS, origin: Option<u64>) -> Option<Self> {
        let mut buf = BytesMut::from(&stored.encoded[..]);
        let limits = Limits {
            max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
            ..Limits::default()
        };
        let Ok(Some(Packet::Publish(publish))) =
            moat_mqtt::decode(&mut buf, ProtocolVersion::V5, &limits)
        else {
            return None;
        };
        Some(Self {
            topic: publish.topic?,
            payload: publish.payload,
            qos,
            retain: stored.retain,
            properties: publish.properties,
            expires_at: stored.expires_at,
            origin,
            stored: OnceLock::from(stored.encoded.clone()),
            qos0: Default::default(),
            fan_out: AtomicBool::new(false),
            owns_bytes: true,
            detached: OnceLock::new(),
        })
    }
}
