//! What the hub tells the engine: discrete connection events and a periodic per-connection
//! [`TrafficSummary`]. Events borrow their identifiers from the caller, so feeding the engine
//! allocates nothing.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use moat_types::{ClientId, DeviceId, IdError, TopicFilter, TopicName};

/// Longest accepted group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 64;

/// The name of a device group (a cohort that shares priors and a streaming model).
///
/// 1 to [`MAX_GROUP_NAME_LEN`] bytes of `[A-Za-z0-9._-]`, the same alphabet as a
/// [`DeviceId`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(Arc<str>);

impl GroupName {
    /// Parses a group name.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_GROUP_NAME_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: MAX_GROUP_NAME_LEN,
            });
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadCharacter(c));
        }
        Ok(Self(s.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupName({})", &*self.0)
    }
}

impl<'de> serde::Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Who an event is about. `device` is the authenticated identity when there is one; on
/// refused connections and failed handshakes it is the identity the peer *claimed* (a
/// certificate subject, a username), or `None`.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The hub's id of the connection (unique per accepted socket).
    pub connection: u64,
    /// The peer's address.
    pub address: IpAddr,
    /// The device identity, if authenticated or claimed.
    pub device: Option<&'a DeviceId>,
    /// The MQTT client identifier, once CONNECT was read.
    pub client: Option<&'a ClientId>,
    /// The device's group, if it has one.
    pub group: Option<&'a GroupName>,
}

/// One thing the hub saw, at `time_ms` (milliseconds of wall or virtual time; the engine never
/// reads a clock).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// When it happened, in milliseconds.
    pub time_ms: u64,
    /// Who it is about.
    pub source: Source<'a>,
    /// What happened.
    pub kind: EventKind<'a>,
}

/// What happened.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// A TCP connection was accepted (before TLS).
    ConnectAttempt,
    /// A connection closed by its peer before a complete CONNECT, breaking no rule: a TCP
    /// or TLS health check, a client that gave up. It only ends the connection's pending
    /// pre-MQTT phase (see `pending_connections_per_address`).
    ClosedBeforeConnect,
    /// The TLS handshake failed.
    TlsHandshakeFailed {
        /// Why.
        reason: TlsFailure,
    },
    /// The TLS handshake did not complete within the hub's handshake timeout.
    HandshakeTimeout,
    /// No CONNECT packet arrived within the hub's CONNECT timeout after the handshake.
    ConnectTimeout,
    /// CONNECT was refused.
    ConnectRefused {
        /// Why.
        reason: RefusedReason,
    },
    /// CONNECT was accepted: the connection now belongs to `source.device`.
    ConnectAccepted,
    /// The connection ended.
    Disconnected {
        /// Why.
        cause: DisconnectCause,
        /// How long it had been connected, in milliseconds.
        connected_ms: u64,
    },
    /// The peer sent a packet the protocol forbids (the hub closed the connection).
    ProtocolError {
        /// Which rule it broke.
        fault: ProtocolFault,
    },
    /// The policy denied an action; `topic` is the topic name or filter as sent.
    AuthorizationDenied {
        /// What was denied.
        action: Action,
        /// The topic name or filter.
        topic: &'a str,
    },
    /// A subscription was accepted.
    Subscribed {
        /// The filter.
        filter: &'a TopicFilter,
    },
    /// The first publish to (or delivery from) a topic on this connection.
    FirstTopic {
        /// The topic.
        topic: &'a TopicName,
        /// Which direction.
        side: Side,
    },
    /// The hub itself saw a honey topic touched (for example by its own routing).
    HoneyTouch {
        /// The topic name or filter.
        topic: &'a str,
    },
    /// The periodic per-connection traffic summary.
    Traffic(TrafficSummary),
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// No client certificate.
    NoCertificate,
    /// Chain does not lead to Moat's CA.
    UnknownIssuer,
    /// Bad signature, malformed certificate, wrong key usage.
    BadCertificate,
    /// Certificate expired or not yet valid (often a benign device that missed a rotation).
    Expired,
    /// Certificate revoked.
    Revoked,
    /// Protocol version, cipher suite or other negotiation failure.
    Negotiation,
}

impl TlsFailure {
    /// Weight of the failure towards `certificate_brute_force`: a stale certificate of a
    /// device that missed a rotation counts a quarter, because such devices retry.
    pub(crate) fn weight(self) -> f32 {
        match self {
            Self::Expired | Self::Revoked => 0.25,
            Self::Negotiation => 0.5,
            Self::NoCertificate | Self::UnknownIssuer | Self::BadCertificate => 1.0,
        }
    }
}

/// Which protocol rule a peer broke: the class of the reason code the hub closed the
/// connection with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolFault {
    /// Bytes that do not decode as an MQTT packet (reason code 0x81).
    MalformedPacket,
    /// A well-formed packet the protocol does not allow there: a reserved packet type, a
    /// packet out of order, a second CONNECT, a packet only servers send (0x82).
    ProtocolViolation,
    /// A packet above the hub's maximum packet size (0x95).
    PacketTooLarge,
    /// A flow-control or topic-alias rule broken (0x93 Receive Maximum exceeded, 0x94 Topic
    /// Alias invalid).
    FlowControl,
    /// The connection's first packet is malformed or not CONNECT (connection 0).
    BadFirstPacket,
    /// Any other violation the hub closed the connection for.
    Other,
}

impl ProtocolFault {
    /// Stable snake_case name (evidence, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedPacket => "malformed_packet",
            Self::ProtocolViolation => "protocol_violation",
            Self::PacketTooLarge => "packet_too_large",
            Self::FlowControl => "flow_control_violation",
            Self::BadFirstPacket => "bad_first_packet",
            Self::Other => "other_violation",
        }
    }
}

/// Why CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusedReason {
    /// Bad username, password or token.
    BadCredentials,
    /// The policy refused the connect.
    NotAuthorized,
    /// The identity is unknown, disabled or quarantined.
    UnknownIdentity,
    /// Client id invalid or already claimed by another identity.
    ClientIdRejected,
    /// The hub is overloaded or shutting down (never the peer's fault).
    ServerUnavailable,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    Client,
    /// Keep-alive expired.
    KeepAliveTimeout,
    /// Socket closed or reset without DISCONNECT.
    ConnectionLost,
    /// Another connection with the same client id or identity took the session over.
    TakenOver,
    /// The broker closed it (protocol error, limit, mitigation).
    Server,
    /// The hub is shutting down.
    Shutdown,
}

/// The action the policy decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Delivery to the device.
    Receive,
}

/// Direction of a first-seen topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device published to it.
    Publish,
    /// The device received from it.
    Receive,
}

/// Number of buckets of [`TrafficSummary::size_histogram`].
pub const SIZE_BUCKETS: usize = 8;

/// Traffic of one connection over `interval_ms` (the hub sends one every second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSummary {
    /// Length of the interval, in milliseconds (0 is read as 1000).
    pub interval_ms: u32,
    /// PUBLISH packets the device sent.
    pub msgs_published: u32,
    /// Payload bytes the device sent.
    pub bytes_published: u64,
    /// PUBLISH packets delivered to the device.
    pub msgs_delivered: u32,
    /// Payload bytes delivered to the device.
    pub bytes_delivered: u64,
    /// Milliseconds the connection was held back by a rate limit (a policy quota or a
    /// `throttle` response: the hub stopped reading its socket) while packets it had sent
    /// were waiting: the device offered more than it was allowed, which the counts above
    /// cannot show. A throttle is not released while its device is held back. May exceed
    /// `interval_ms` (counted when a hold starts).
    pub held_ms: u32,
    /// Published payload sizes, log2 buckets: `< 16`, `< 64`, `< 256`, `< 1 KiB`, `< 4 KiB`,
    /// `< 16 KiB`, `< 64 KiB`, larger.
    pub size_histogram: [u32; SIZE_BUCKETS],
    /// Largest published payload, in bytes.
    pub max_payload: u32,
}

impl TrafficSummary {
    /// The histogram bucket of a payload of `len` bytes.
    pub fn bucket(len: usize) -> usize {
        match len {
            0..16 => 0,
            16..64 => 1,
            64..256 => 2,
            256..1024 => 3,
            1024..4096 => 4,
            4096..16384 => 5,
            16384..65536 => 6,
            _ => 7,
        }
    }
}
