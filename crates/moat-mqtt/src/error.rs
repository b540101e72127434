use crate::ReasonCode;

/// Why bytes from a peer could not be decoded. Each maps onto the reason code the server
/// sends in CONNACK or DISCONNECT before closing (MQTT-4.13).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes violate the packet grammar (bad remaining length, bad UTF-8, reserved flags
    /// set, truncated field, duplicate property ...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that the protocol forbids here (unknown packet type, QoS 3,
    /// property not allowed in this packet ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than [`crate::Limits::max_packet_size`].
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge {
        /// Announced size of the whole packet.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A count limit from [`crate::Limits`] was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// CONNECT names a protocol we do not speak.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocolVersion,
    /// A topic name in PUBLISH or a will is invalid.
    #[error("invalid topic name")]
    TopicNameInvalid,
}

impl DecodeError {
    /// The reason code to report to the peer.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Malformed(_) => ReasonCode::MalformedPacket,
            Self::Protocol(_) => ReasonCode::ProtocolError,
            Self::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Self::LimitExceeded(_) => ReasonCode::ImplementationSpecificError,
            Self::UnsupportedProtocolVersion => ReasonCode::UnsupportedProtocolVersion,
            Self::TopicNameInvalid => ReasonCode::TopicNameInvalid,
        }
    }
}
