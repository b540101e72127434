//! Moat's vocabulary: the small, validated types every other crate speaks in.
//!
//! Owns: identifiers ([`DeviceId`], [`ClientId`]), MQTT topic names and filters
//! ([`TopicName`], [`TopicFilter`], [`SubscriptionFilter`]), [`QoS`], usage [`Quota`]s and
//! wall-clock [`Timestamp`]s. Every constructor rejects bad input, so a value of one of these types is
//! proof that it was checked ("parse, don't validate").
//!
//! Does not own: any I/O. Nothing here reads a clock except [`Timestamp::now`], which only
//! adapters and binaries call; engines take `now` as an argument.

#![forbid(unsafe_code)]

mod id;
mod qos;
mod quota;
mod time;
mod topic;

pub use id::{
    AGENT_CLIENT_SUFFIX, ClientId, DeviceId, IdError, MAX_CLIENT_ID_LEN, MAX_DEVICE_ID_LEN,
};
pub use qos::QoS;
pub use quota::{Quota, QuotaLimit};
pub use time::Timestamp;
pub use topic::{
    MAX_TOPIC_LEN, ShareGroup, SubscriptionFilter, TopicError, TopicFilter, TopicName,
    naive_matches,
};
