//! Usage quotas of one identity: the limits operators set through policies (attached to a
//! device or to its group) and the broker enforces per connection.

use std::fmt;

/// Limits on what one device may use. `None` means no limit from policy (the hub-wide
/// limits still apply). Several policies combine field by field, the tightest value winning
/// ([`Quota::tighten`]), so attaching a policy can only lower a device's quota.
///
/// How the broker enforces each field:
///
/// | field | enforced | when exceeded |
/// |---|---|---|
/// | `messages_per_second` | token bucket per connection (burst: one second's worth) | the connection is not read until the bucket refills: TCP pushes back, nothing is lost |
/// | `bytes_per_second` | the same, over PUBLISH payload bytes | the same |
/// | `max_subscriptions` | subscriptions held by the session | SUBACK 0x97 Quota exceeded (0x80 in 3.1.1) |
/// | `max_payload_bytes` | each PUBLISH payload | not routed; PUBACK/PUBREC 0x97 in 5.0 (3.1.1 has no refusal: acknowledged and dropped, like a denied publish) |
/// | `connections_per_minute` | accepted CONNECTs per identity over the last minute (sliding) | CONNACK 0x9F Connection rate exceeded (0x03 Server unavailable in 3.1.1) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quota {
    /// PUBLISH packets per second.
    pub messages_per_second: Option<u32>,
    /// PUBLISH payload bytes per second.
    pub bytes_per_second: Option<u32>,
    /// Subscriptions the session may hold at once.
    pub max_subscriptions: Option<u32>,
    /// Largest PUBLISH payload, in bytes.
    pub max_payload_bytes: Option<u32>,
    /// CONNECT attempts accepted per minute.
    pub connections_per_minute: Option<u32>,
}

impl Quota {
    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        messages_per_second: None,
        bytes_per_second: None,
        max_subscriptions: None,
        max_payload_bytes: None,
        connections_per_minute: None,
    };

    /// The tighter of `self` and `other`, field by field.
    #[must_use]
    pub fn tighten(self, other: Self) -> Self {
        fn min(a: Option<u32>, b: Option<u32>) -> Option<u32> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            messages_per_second: min(self.messages_per_second, other.messages_per_second),
            bytes_per_second: min(self.bytes_per_second, other.bytes_per_second),
            max_subscriptions: min(self.max_subscriptions, other.max_subscriptions),
            max_payload_bytes: min(self.max_payload_bytes, other.max_payload_bytes),
            connections_per_minute: min(self.connections_per_minute, other.connections_per_minute),
        }
    }

    /// Whether no field is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::UNLIMITED
    }

    /// The limit set for `limit`, if any.
    pub fn get(&self, limit: QuotaLimit) -> Option<u32> {
        match limit {
            QuotaLimit::MessagesPerSecond => self.messages_per_second,
            QuotaLimit::BytesPerSecond => self.bytes_per_second,
            QuotaLimit::Subscriptions => self.max_subscriptions,
            QuotaLimit::PayloadSize => self.max_payload_bytes,
            QuotaLimit::ConnectionsPerMinute => self.connections_per_minute,
        }
    }
}

/// One field of a [`Quota`], named the same way in policies, metrics and audit records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaLimit {
    /// `messages_per_second`.
    MessagesPerSecond,
    /// `bytes_per_second`.
    BytesPerSecond,
    /// `max_subscriptions`.
    Subscriptions,
    /// `max_payload_bytes`.
    PayloadSize,
    /// `connections_per_minute`.
    ConnectionsPerMinute,
}

impl QuotaLimit {
    /// Every limit, in a stable order (metrics use it).
    pub const ALL: [Self; 5] = [
        Self::MessagesPerSecond,
        Self::BytesPerSecond,
        Self::Subscriptions,
        Self::PayloadSize,
        Self::ConnectionsPerMinute,
    ];

    /// The field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessagesPerSecond => "messages_per_second",
            Self::BytesPerSecond => "bytes_per_second",
            Self::Subscriptions => "max_subscriptions",
            Self::PayloadSize => "max_payload_bytes",
            Self::ConnectionsPerMinute => "connections_per_minute",
        }
    }

    /// Its position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for QuotaLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_takes_the_smaller_of_each_field() {
        let a = Quota {
            messages_per_second: Some(10),
            max_payload_bytes: Some(100),
            ..Quota::UNLIMITED
        };
        let b = Quota {
            messages_per_second: Some(20),
            bytes_per_second: Some(5),
            max_payload_bytes: Some(50),
            ..Quota::UNLIMITED
        };
        let t = a.tighten(b);
        assert_eq!(t.messages_per_second, Some(10));
        assert_eq!(t.bytes_per_second, Some(5));
        assert_eq!(t.max_payload_bytes, Some(50));
        assert_eq!(t.max_subscriptions, None);
        assert_eq!(t, b.tighten(a));
        assert_eq!(a.tighten(Quota::UNLIMITED), a);
        assert!(Quota::UNLIMITED.is_unlimited());
        assert!(!a.is_unlimited());
        for (i, l) in QuotaLimit::ALL.iter().enumerate() {
            assert_eq!(l.index(), i);
        }
    }
}
