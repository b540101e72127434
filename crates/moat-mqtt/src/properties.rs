//! MQTT 5 properties (MQTT 5.0 §2.2.2): identifiers, which packets may carry them, their
//! value rules, and reading and writing each packet's property block.
//!
//! Decoding rules enforced here:
//! - the Property Length must fit inside the packet;
//! - an identifier outside the specification's table is Malformed;
//! - a known property in a packet the table does not list it for is a Protocol Error;
//! - a single-valued property sent twice is a Protocol Error (MQTT 5.0 §2.2.2.2);
//! - zero Receive Maximum, Maximum Packet Size, Topic Alias or Subscription Identifier, and
//!   byte flags other than 0 or 1, are Protocol Errors;
//! - user properties count against [`Limits::max_user_properties`] for the whole packet and
//!   subscription identifiers against [`Limits::max_subscription_identifiers`].

use bytes::Bytes;
use moat_types::{QoS, TopicName};

use crate::reader::{Reader, VARINT_MAX};
use crate::writer::{Sink, count};
use crate::{
    AckProperties, ConnAckProperties, ConnectProperties, DecodeError, DisconnectProperties, Limits,
    PublishProperties, UserProperty, WillProperties,
};

// Property identifiers (MQTT 5.0 §2.2.2.2, table 2-4).
const PAYLOAD_FORMAT_INDICATOR: u32 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u32 = 0x02;
const CONTENT_TYPE: u32 = 0x03;
const RESPONSE_TOPIC: u32 = 0x08;
const CORRELATION_DATA: u32 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u32 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u32 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u32 = 0x12;
const SERVER_KEEP_ALIVE: u32 = 0x13;
const AUTHENTICATION_METHOD: u32 = 0x15;
const AUTHENTICATION_DATA: u32 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u32 = 0x17;
const WILL_DELAY_INTERVAL: u32 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u32 = 0x19;
const RESPONSE_INFORMATION: u32 = 0x1A;
const SERVER_REFERENCE: u32 = 0x1C;
const REASON_STRING: u32 = 0x1F;
const RECEIVE_MAXIMUM: u32 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
const TOPIC_ALIAS: u32 = 0x23;
const MAXIMUM_QOS: u32 = 0x24;
const RETAIN_AVAILABLE: u32 = 0x25;
const USER_PROPERTY: u32 = 0x26;
const MAXIMUM_PACKET_SIZE: u32 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u32 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u32 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u32 = 0x2A;

/// One decoded property, its value already checked against the rules that do not depend on
/// the packet carrying it.
#[derive(Debug)]
enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(TopicName),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    User(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// A byte that must be 0 or 1.
fn flag(r: &mut Reader, what: &'static str) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol(what)),
    }
}

fn non_zero_u16(r: &mut Reader, what: &'static str) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol(what)),
        v => Ok(v),
    }
}

impl Property {
    fn read(id: u32, r: &mut Reader) -> Result<Self, DecodeError> {
        use Property::*;
        Ok(match id {
            PAYLOAD_FORMAT_INDICATOR => PayloadFormatIndicator(u8::from(flag(
                r,
                "payload format indicator other than 0 or 1",
            )?)),
            MESSAGE_EXPIRY_INTERVAL => MessageExpiryInterval(r.u32()?),
            CONTENT_TYPE => ContentType(r.string()?),
            RESPONSE_TOPIC => {
                let bytes = r.utf8_bytes()?;
                // MQTT-3.3.2-14: a Topic Name, so no wildcards.
                ResponseTopic(
                    TopicName::from_bytes(bytes).map_err(|_| DecodeError::TopicNameInvalid)?,
                )
            }
            CORRELATION_DATA => CorrelationData(r.binary()?),
            SUBSCRIPTION_IDENTIFIER => match r.varint()? {
                // MQTT 5.0 §3.8.2.1.2: "It is a Protocol Error if the Subscription
                // Identifier has a value of 0."
                0 => return Err(DecodeError::Protocol("subscription identifier 0")),
                v => SubscriptionIdentifier(v),
            },
            SESSION_EXPIRY_INTERVAL => SessionExpiryInterval(r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => AssignedClientIdentifier(r.string()?),
            SERVER_KEEP_ALIVE => ServerKeepAlive(r.u16()?),
            AUTHENTICATION_METHOD => AuthenticationMethod(r.string()?),
            AUTHENTICATION_DATA => AuthenticationData(r.binary()?),
            REQUEST_PROBLEM_INFORMATION => {
                RequestProblemInformation(flag(r, "request problem information other than 0 or 1")?)
            }
            WILL_DELAY_INTERVAL => WillDelayInterval(r.u32()?),
            REQUEST_RESPONSE_INFORMATION => RequestResponseInformation(flag(
                r,
                "request response information other than 0 or 1",
            )?),
            RESPONSE_INFORMATION => ResponseInformation(r.string()?),
            SERVER_REFERENCE => ServerReference(r.string()?),
            REASON_STRING => ReasonString(r.string()?),
            // MQTT 5.0 §3.1.2.11.3 / §3.2.2.3.3: zero is a Protocol Error.
            RECEIVE_MAXIMUM => ReceiveMaximum(non_zero_u16(r, "receive maximum 0")?),
            TOPIC_ALIAS_MAXIMUM => TopicAliasMaximum(r.u16()?),
            // MQTT-3.3.2-8: a Topic Alias of 0 is not permitted.
            TOPIC_ALIAS => TopicAlias(non_zero_u16(r, "topic alias 0")?),
            // MQTT 5.0 §3.2.2.3.4: a value other than 0 or 1 is a Protocol Error.
            MAXIMUM_QOS => MaximumQoS(if flag(r, "maximum QoS other than 0 or 1")? {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            }),
            RETAIN_AVAILABLE => RetainAvailable(flag(r, "retain available other than 0 or 1")?),
            USER_PROPERTY => User(r.string()?, r.string()?),
            // MQTT 5.0 §3.1.2.11.4: zero is a Protocol Error.
            MAXIMUM_PACKET_SIZE => match r.u32()? {
                0 => return Err(DecodeError::Protocol("maximum packet size 0")),
                v => MaximumPacketSize(v),
            },
            WILDCARD_SUBSCRIPTION_AVAILABLE => WildcardSubscriptionAvailable(flag(
                r,
                "wildcard subscription available other than 0 or 1",
            )?),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => SubscriptionIdentifierAvailable(flag(
                r,
                "subscription identifier available other than 0 or 1",
            )?),
            SHARED_SUBSCRIPTION_AVAILABLE => SharedSubscriptionAvailable(flag(
                r,
                "shared subscription available other than 0 or 1",
            )?),
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        })
    }
}

/// Per-packet counters for the limits that span several property blocks (CONNECT carries
/// both its own and the will's).
#[derive(Debug)]
pub(crate) struct Budget<'a> {
    limits: &'a Limits,
    user_properties: usize,
}

impl<'a> Budget<'a> {
    pub(crate) fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            user_properties: 0,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        self.limits
    }
}

/// Reads a Property Length and the properties it covers, handing each to `apply`.
fn read_block(
    r: &mut Reader,
    budget: &mut Budget<'_>,
    mut apply: impl FnMut(Property) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut block = r
        .sub(len as usize)
        .map_err(|_| DecodeError::Malformed("property length exceeds the packet"))?;
    let mut seen: u64 = 0;
    while !block.is_empty() {
        let id = block.varint()?;
        let property = Property::read(id, &mut block)?;
        match property {
            Property::User(..) => {
                budget.user_properties += 1;
                if budget.user_properties > budget.limits.max_user_properties {
                    return Err(DecodeError::LimitExceeded("too many user properties"));
                }
            }
            // May repeat in PUBLISH; SUBSCRIBE checks for itself.
            Property::SubscriptionIdentifier(_) => {}
            _ => {
                // Every known identifier is below 64.
                let bit = 1u64 << (id & 63);
                if seen & bit != 0 {
                    // MQTT 5.0 §2.2.2.2: "It is a Protocol Error to include [a property]
                    // more than once."
                    return Err(DecodeError::Protocol("property included more than once"));
                }
                seen |= bit;
            }
        }
        apply(property)?;
    }
    Ok(())
}

pub(crate) fn read_connect(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<ConnectProperties, DecodeError> {
    let mut p = ConnectProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Property::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Property::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Property::RequestResponseInformation(v) => p.request_response_information = Some(v),
            Property::RequestProblemInformation(v) => p.request_problem_information = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            _ => return Err(DecodeError::Protocol("property not allowed in CONNECT")),
        }
        Ok(())
    })?;
    // MQTT 5.0 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if
    // there is no Authentication Method."
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(p)
}

pub(crate) fn read_will(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<WillProperties, DecodeError> {
    let mut p = WillProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::WillDelayInterval(v) => p.will_delay_interval = Some(v),
            Property::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Property::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Property::ContentType(v) => p.content_type = Some(v),
            Property::ResponseTopic(v) => p.response_topic = Some(v),
            Property::CorrelationData(v) => p.correlation_data = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            _ => return Err(DecodeError::Protocol("property not allowed in will")),
        }
        Ok(())
    })?;
    Ok(p)
}

pub(crate) fn read_connack(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<ConnAckProperties, DecodeError> {
    let mut p = ConnAckProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Property::MaximumQoS(v) => p.maximum_qos = Some(v),
            Property::RetainAvailable(v) => p.retain_available = Some(v),
            Property::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Property::AssignedClientIdentifier(v) => p.assigned_client_identifier = Some(v),
            Property::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => {
                p.wildcard_subscription_available = Some(v)
            }
            Property::SubscriptionIdentifierAvailable(v) => {
                p.subscription_identifiers_available = Some(v)
            }
            Property::SharedSubscriptionAvailable(v) => p.shared_subscription_available = Some(v),
            Property::ServerKeepAlive(v) => p.server_keep_alive = Some(v),
            Property::ResponseInformation(v) => p.response_information = Some(v),
            Property::ServerReference(v) => p.server_reference = Some(v),
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            _ => return Err(DecodeError::Protocol("property not allowed in CONNACK")),
        }
        Ok(())
    })?;
    Ok(p)
}

pub(crate) fn read_publish(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<PublishProperties, DecodeError> {
    let max_ids = budget.limits.max_subscription_identifiers;
    let mut p = PublishProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Property::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Property::TopicAlias(v) => p.topic_alias = Some(v),
            Property::ResponseTopic(v) => p.response_topic = Some(v),
            Property::CorrelationData(v) => p.correlation_data = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::SubscriptionIdentifier(v) => {
                if p.subscription_identifiers.len() >= max_ids {
                    return Err(DecodeError::LimitExceeded(
                        "too many subscription identifiers",
                    ));
                }
                p.subscription_identifiers.push(v);
            }
            Property::ContentType(v) => p.content_type = Some(v),
            _ => return Err(DecodeError::Protocol("property not allowed in PUBLISH")),
        }
        Ok(())
    })?;
    Ok(p)
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub(crate) fn read_ack(
    r: &mut Reader,
    budget: &mut Budget<'_>,
    not_allowed: &'static str,
) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            _ => return Err(DecodeError::Protocol(not_allowed)),
        }
        Ok(())
    })?;
    Ok(p)
}

/// SUBSCRIBE properties: a Subscription Identifier and user properties.
pub(crate) fn read_subscribe(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<(Option<u32>, Vec<UserProperty>), DecodeError> {
    let mut id = None;
    let mut user = Vec::new();
    read_block(r, budget, |property| {
        match property {
            Property::SubscriptionIdentifier(v) => {
                if id.replace(v).is_some() {
                    // MQTT 5.0 §3.8.2.1.2: more than once is a Protocol Error.
                    return Err(DecodeError::Protocol("property included more than once"));
                }
            }
            Property::User(k, v) => user.push((k, v)),
            _ => return Err(DecodeError::Protocol("property not allowed in SUBSCRIBE")),
        }
        Ok(())
    })?;
    Ok((id, user))
}

/// UNSUBSCRIBE properties: user properties only.
pub(crate) fn read_unsubscribe(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<Vec<UserProperty>, DecodeError> {
    let mut user = Vec::new();
    read_block(r, budget, |property| {
        match property {
            Property::User(k, v) => user.push((k, v)),
            _ => {
                return Err(DecodeError::Protocol("property not allowed in UNSUBSCRIBE"));
            }
        }
        Ok(())
    })?;
    Ok(user)
}

pub(crate) fn read_disconnect(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<DisconnectProperties, DecodeError> {
    let mut p = DisconnectProperties::default();
    read_block(r, budget, |property| {
        match property {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::ServerReference(v) => p.server_reference = Some(v),
            _ => return Err(DecodeError::Protocol("property not allowed in DISCONNECT")),
        }
        Ok(())
    })?;
    Ok(p)
}

/// AUTH properties, in the field order of [`crate::Auth`].
#[derive(Debug, Default)]
pub(crate) struct AuthFields {
    pub(crate) authentication_method: Option<String>,
    pub(crate) authentication_data: Option<Bytes>,
    pub(crate) reason_string: Option<String>,
    pub(crate) user_properties: Vec<UserProperty>,
}

pub(crate) fn read_auth(
    r: &mut Reader,
    budget: &mut Budget<'_>,
) -> Result<AuthFields, DecodeError> {
    let mut p = AuthFields::default();
    read_block(r, budget, |property| {
        match property {
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::User(k, v) => p.user_properties.push((k, v)),
            _ => return Err(DecodeError::Protocol("property not allowed in AUTH")),
        }
        Ok(())
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Encoding. Values the decoder would reject (zero Receive Maximum, Topic Alias 0, a
// Subscription Identifier out of range ...) are skipped rather than sent: the encoder trusts
// its input but never emits a packet a conforming peer must refuse.

/// A property block that can be written through any [`Sink`].
pub(crate) trait PropertyBlock {
    /// Writes the properties, without the Property Length.
    fn emit<S: Sink>(&self, s: &mut S);

    /// Writes the Property Length and the properties.
    fn write<S: Sink>(&self, s: &mut S) {
        let len = count(|c| self.emit(c));
        s.varint(len);
        self.emit(s);
    }

    /// Whether the block has no properties (so that it may be omitted where allowed).
    fn is_empty(&self) -> bool {
        count(|c| self.emit(c)) == 0
    }
}

fn put_u8<S: Sink>(s: &mut S, id: u32, value: Option<u8>) {
    if let Some(v) = value {
        s.varint(id as usize);
        s.u8(v);
    }
}

fn put_flag<S: Sink>(s: &mut S, id: u32, value: Option<bool>) {
    put_u8(s, id, value.map(u8::from));
}

fn put_u16<S: Sink>(s: &mut S, id: u32, value: Option<u16>) {
    if let Some(v) = value {
        s.varint(id as usize);
        s.u16(v);
    }
}

fn put_u32<S: Sink>(s: &mut S, id: u32, value: Option<u32>) {
    if let Some(v) = value {
        s.varint(id as usize);
        s.u32(v);
    }
}

fn put_string<S: Sink>(s: &mut S, id: u32, value: Option<&str>) {
    if let Some(v) = value {
        s.varint(id as usize);
        s.string(v);
    }
}

fn put_binary<S: Sink>(s: &mut S, id: u32, value: Option<&[u8]>) {
    if let Some(v) = value {
        s.varint(id as usize);
        s.binary(v);
    }
}

fn put_user<S: Sink>(s: &mut S, user: &[UserProperty]) {
    for (k, v) in user {
        s.varint(USER_PROPERTY as usize);
        s.string(k);
        s.string(v);
    }
}

fn put_subscription_identifier<S: Sink>(s: &mut S, value: u32) {
    if (1..=VARINT_MAX).contains(&value) {
        s.varint(SUBSCRIPTION_IDENTIFIER as usize);
        s.varint(value as usize);
    }
}

/// Skips zero, which the receiver must treat as a Protocol Error.
fn non_zero<T: Default + PartialEq>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

/// Skips a Payload Format Indicator other than 0 or 1 (absent means "unspecified bytes").
fn format_indicator(value: Option<u8>) -> Option<u8> {
    value.filter(|v| *v <= 1)
}

impl PropertyBlock for ConnectProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, non_zero(self.receive_maximum));
        put_u32(s, MAXIMUM_PACKET_SIZE, non_zero(self.maximum_packet_size));
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_flag(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_flag(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_user(s, &self.user_properties);
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        // Authentication Data without a method is a Protocol Error (MQTT 5.0 §3.1.2.11.10).
        if self.authentication_method.is_some() {
            put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
        }
    }
}

impl PropertyBlock for WillProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8(
            s,
            PAYLOAD_FORMAT_INDICATOR,
            format_indicator(self.payload_format_indicator),
        );
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string(s, CONTENT_TYPE, self.content_type.as_deref());
        put_string(
            s,
            RESPONSE_TOPIC,
            self.response_topic.as_ref().map(|t| t.as_str()),
        );
        put_binary(s, CORRELATION_DATA, self.correlation_data.as_deref());
        put_user(s, &self.user_properties);
    }
}

impl PropertyBlock for ConnAckProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, non_zero(self.receive_maximum));
        // Only 0 or 1 may be sent; absent already means 2 (MQTT 5.0 §3.2.2.3.4).
        put_u8(
            s,
            MAXIMUM_QOS,
            self.maximum_qos
                .filter(|q| *q != QoS::ExactlyOnce)
                .map(QoS::as_u8),
        );
        put_flag(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, MAXIMUM_PACKET_SIZE, non_zero(self.maximum_packet_size));
        put_string(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        );
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user(s, &self.user_properties);
        put_flag(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_flag(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_flag(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string(
            s,
            RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        );
        put_string(s, SERVER_REFERENCE, self.server_reference.as_deref());
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
    }
}

impl PropertyBlock for PublishProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_u8(
            s,
            PAYLOAD_FORMAT_INDICATOR,
            format_indicator(self.payload_format_indicator),
        );
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, TOPIC_ALIAS, non_zero(self.topic_alias));
        put_string(
            s,
            RESPONSE_TOPIC,
            self.response_topic.as_ref().map(|t| t.as_str()),
        );
        put_binary(s, CORRELATION_DATA, self.correlation_data.as_deref());
        put_user(s, &self.user_properties);
        for id in &self.subscription_identifiers {
            put_subscription_identifier(s, *id);
        }
        put_string(s, CONTENT_TYPE, self.content_type.as_deref());
    }

    fn is_empty(&self) -> bool {
        // The hot path: most PUBLISH packets carry no properties.
        self == &PublishProperties::default() || count(|c| self.emit(c)) == 0
    }
}

impl PropertyBlock for AckProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user(s, &self.user_properties);
    }
}

impl PropertyBlock for DisconnectProperties {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user(s, &self.user_properties);
        put_string(s, SERVER_REFERENCE, self.server_reference.as_deref());
    }
}

/// SUBSCRIBE's properties.
#[derive(Debug)]
pub(crate) struct SubscribeProperties<'a> {
    pub(crate) subscription_identifier: Option<u32>,
    pub(crate) user_properties: &'a [UserProperty],
}

impl PropertyBlock for SubscribeProperties<'_> {
    fn emit<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            put_subscription_identifier(s, id);
        }
        put_user(s, self.user_properties);
    }
}

/// UNSUBSCRIBE's properties: user properties only.
#[derive(Debug)]
pub(crate) struct UserProperties<'a>(pub(crate) &'a [UserProperty]);

impl PropertyBlock for UserProperties<'_> {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_user(s, self.0);
    }
}

impl PropertyBlock for crate::Auth {
    fn emit<S: Sink>(&self, s: &mut S) {
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user(s, &self.user_properties);
    }
}
