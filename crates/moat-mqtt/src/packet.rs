//! The packet model shared by MQTT 3.1.1 and 5.0.
//!
//! Properties that only exist in MQTT 5 are carried in `*Properties` structs; when the
//! session speaks 3.1.1 they are neither decoded (absent on the wire) nor encoded.
//! Strings from the wire are validated UTF-8 without U+0000 (MQTT-1.5.4).

use bytes::Bytes;
use moat_types::{QoS, TopicName};
use std::num::NonZeroU16;

use crate::ReasonCode;

/// A packet identifier: never zero (MQTT-2.2.1-3).
pub type PacketId = NonZeroU16;

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// Protocol level byte in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }
}

/// A user property: a name/value pair passed through unchanged (MQTT-3.3.2-17).
pub type UserProperty = (String, String);

/// Any MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both ways).
    Publish(Publish),
    /// PUBACK (both ways).
    PubAck(PubResponse),
    /// PUBREC (both ways).
    PubRec(PubResponse),
    /// PUBREL (both ways).
    PubRel(PubResponse),
    /// PUBCOMP (both ways).
    PubComp(PubResponse),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    UnsubAck(UnsubAck),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (both ways in MQTT 5, client to server in 3.1.1).
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only).
    Auth(Auth),
}

/// CONNECT (MQTT-3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// MQTT 5 properties.
    pub properties: ConnectProperties,
    /// Client identifier as sent; may be empty (the server then assigns one).
    pub client_id: String,
    /// The will message, if the Will Flag is set.
    pub will: Option<Will>,
    /// User name, if present.
    pub username: Option<String>,
    /// Password, if present (binary data).
    pub password: Option<Bytes>,
}

/// CONNECT properties (MQTT-3.1.2.11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds (absent means 0).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (absent means 65,535; 0 is a protocol error).
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size the client accepts (0 is a protocol error).
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information.
    pub request_response_information: Option<bool>,
    /// Request Problem Information.
    pub request_problem_information: Option<bool>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method.
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// A will message (MQTT-3.1.2.5, 3.1.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will topic.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub properties: WillProperties,
}

/// Will properties (MQTT-3.1.3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval in seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator (0 bytes, 1 UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK (MQTT-3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Reason code; mapped onto the 3.1.1 return codes when encoding for 3.1.1.
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: ConnAckProperties,
}

/// CONNACK properties (MQTT-3.2.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval the server uses, if different from the request.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum of the server.
    pub receive_maximum: Option<u16>,
    /// Maximum QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Retain Available.
    pub retain_available: Option<bool>,
    /// Maximum Packet Size the server accepts.
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier.
    pub assigned_client_identifier: Option<String>,
    /// Topic Alias Maximum the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    /// Response Information.
    pub response_information: Option<String>,
    /// Server Reference.
    pub server_reference: Option<String>,
    /// Authentication Method.
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH (MQTT-3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; `None` only in MQTT 5 when a Topic Alias stands in for it
    /// (a zero-length topic on the wire).
    pub topic: Option<TopicName>,
    /// Packet identifier; present exactly when `qos > 0` (MQTT-2.2.1-2).
    pub packet_id: Option<PacketId>,
    /// MQTT 5 properties.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

/// PUBLISH properties (MQTT-3.3.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator (0 bytes, 1 UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (never 0).
    pub topic_alias: Option<u16>,
    /// Response Topic.
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Subscription Identifiers (server to client only; each 1..=268,435,455).
    pub subscription_identifiers: Vec<u32>,
    /// Content Type.
    pub content_type: Option<String>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (MQTT-3.4 to 3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResponse {
    /// Packet identifier being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (absent on the wire means Success).
    pub reason_code: ReasonCode,
    /// Reason String and user properties.
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful acknowledgement without properties.
    pub fn success(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// The properties of acknowledgement packets: a reason string and user properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
}

/// Retain Handling subscription option (MQTT-3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: send retained messages only if the subscription did not exist.
    SendAtSubscribeIfNew,
    /// 2: do not send retained messages at subscribe.
    DoNotSend,
}

impl RetainHandling {
    /// Wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::SendAtSubscribe => 0,
            Self::SendAtSubscribeIfNew => 1,
            Self::DoNotSend => 2,
        }
    }
}

/// Subscription options byte (MQTT-3.8.3.1); in 3.1.1 only `qos` is meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (MQTT-3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Subscription Identifier (1..=268,435,455), if any.
    pub subscription_identifier: Option<u32>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Topic filters as sent (UTF-8 checked; wildcard and `$share` syntax is the broker's
    /// to judge, per entry) with their options. At least one (MQTT-3.8.3-2).
    pub filters: Vec<(String, SubscriptionOptions)>,
}

/// SUBACK (MQTT-3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Reason String and user properties.
    pub properties: AckProperties,
    /// One code per filter, in order. For 3.1.1, success codes are the granted QoS and
    /// any failure is encoded as 0x80.
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (MQTT-3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Topic filters as sent. At least one (MQTT-3.10.3-2).
    pub filters: Vec<String>,
}

/// UNSUBACK (MQTT-3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Reason String and user properties.
    pub properties: AckProperties,
    /// One code per filter (MQTT 5 only; not encoded for 3.1.1).
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (MQTT-3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (absent on the wire means Normal disconnection).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with only a reason code.
    pub fn with_reason(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }
}

/// DISCONNECT properties (MQTT-3.14.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// Reason String.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// Server Reference.
    pub server_reference: Option<String>,
}

/// AUTH (MQTT-3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub reason_code: ReasonCode,
    /// Authentication Method.
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Reason String.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
}
