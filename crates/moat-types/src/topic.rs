//! Topic names, topic filters and shared-subscription filters (MQTT-4.7, MQTT-4.8.2).

use bytes::Bytes;
use std::fmt;

/// Longest topic name or filter the protocol can carry, in bytes (a UTF-8 string's 16-bit
/// length prefix). The broker applies a lower configurable limit on top.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero-length topic (MQTT-4.7.3-1).
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// Not UTF-8 (MQTT-1.5.4-1).
    #[error("topic is not valid UTF-8")]
    NotUtf8,
    /// Contains U+0000 (MQTT-1.5.4-2).
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name containing `+` or `#` (MQTT-3.3.2-2).
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level (MQTT-4.7.1-1, -2).
    #[error("wildcard is not alone in its level or `#` is not last")]
    MisplacedWildcard,
    /// `$share/` without a valid group name and filter (MQTT-4.8.2-1, -2).
    #[error("malformed shared subscription")]
    BadShare,
}

fn check_text(bytes: &[u8]) -> Result<(), TopicError> {
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| TopicError::NotUtf8)?;
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

fn as_text(bytes: &Bytes) -> &str {
    // Validated as UTF-8 at construction; the fallback is unreachable.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// A topic name a message is published to: non-empty UTF-8, no NUL, no wildcards.
///
/// Backed by [`Bytes`] so that decoding slices it out of the read buffer without copying.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Validates `bytes` as a topic name.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, TopicError> {
        check_text(&bytes)?;
        if bytes.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(bytes))
    }

    /// Validates a string as a topic name.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The raw bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The same name in a buffer of its own: a name decoded from a packet is a slice of the
    /// connection's read buffer and keeps all of it allocated, so one that is kept for long
    /// (an alias, a retained message) is copied.
    pub fn to_owned_bytes(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        as_text(&self.0)
    }

    /// Topic levels, split on `/`.
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// Number of levels.
    pub fn level_count(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count() + 1
    }

    /// Whether this is a `$`-topic, which leading wildcards do not match (MQTT-4.7.2-1).
    pub fn is_dollar(&self) -> bool {
        self.0.first() == Some(&b'$')
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a topic name is not empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", self.as_str())
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic filter a client subscribes with; may contain `+` and `#` wildcards.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(Bytes);

impl TopicFilter {
    /// Validates `bytes` as a topic filter.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, TopicError> {
        check_text(&bytes)?;
        let count = bytes.split(|&b| b == b'/').count();
        for (i, level) in bytes.split(|&b| b == b'/').enumerate() {
            let has_wild = level.iter().any(|&b| b == b'+' || b == b'#');
            if !has_wild {
                continue;
            }
            match level {
                b"+" => {}
                b"#" if i + 1 == count => {}
                _ => return Err(TopicError::MisplacedWildcard),
            }
        }
        Ok(Self(bytes))
    }

    /// Validates a string as a topic filter.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The raw bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The filter as text.
    pub fn as_str(&self) -> &str {
        as_text(&self.0)
    }

    /// Filter levels, split on `/`.
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// Number of levels.
    pub fn level_count(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count() + 1
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcard(&self) -> bool {
        self.0.iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether `topic` matches this filter, including the `$` rule (MQTT-4.7.2-1).
    pub fn matches(&self, topic: &TopicName) -> bool {
        naive_matches(self.as_bytes(), topic.as_bytes())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a topic filter is not empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", self.as_str())
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The straightforward matcher: the oracle the subscription trie is property-tested against.
///
/// `filter` and `topic` are raw levels; `+` matches one level, a trailing `#` matches the
/// parent and any number of levels; a topic starting with `$` is not matched by a filter
/// starting with a wildcard.
pub fn naive_matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(fl), Some(tl)) => {
                if fl != b"+" && fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The name of a shared-subscription group: non-empty, no `/`, `+` or `#` (MQTT-4.8.2-2).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ShareGroup(String);

impl ShareGroup {
    /// The group name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a SUBSCRIBE entry asks for: a plain filter or `$share/{group}/{filter}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SubscriptionFilter {
    /// The shared-subscription group, if any.
    pub share: Option<ShareGroup>,
    /// The filter messages are matched against.
    pub filter: TopicFilter,
}

impl SubscriptionFilter {
    /// Parses a subscription filter as sent in SUBSCRIBE or UNSUBSCRIBE.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        if let Some(rest) = s.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            let filter = TopicFilter::parse(filter)?;
            return Ok(Self {
                share: Some(ShareGroup(group.to_owned())),
                filter,
            });
        }
        Ok(Self {
            share: None,
            filter: TopicFilter::parse(s)?,
        })
    }

    /// The text as the client sent it (the key of the subscription in its session).
    pub fn to_wire(&self) -> String {
        match &self.share {
            Some(g) => format!("$share/{}/{}", g.0, self.filter.as_str()),
            None => self.filter.as_str().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(f: &str, t: &str) -> bool {
        naive_matches(f.as_bytes(), t.as_bytes())
    }

    #[test]
    fn matching_follows_the_standard() {
        // MQTT-4.7.1 examples.
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/#", "sport"));
        assert!(m("#", "a/b"));
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        // MQTT-4.7.2-1: $-topics.
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn filters_validate_wildcards() {
        assert!(TopicFilter::parse("a/+/b/#").is_ok());
        assert_eq!(
            TopicFilter::parse("a/#/b"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(TopicFilter::parse("a+"), Err(TopicError::MisplacedWildcard));
        assert_eq!(TopicName::parse("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_subscriptions() {
        let s = SubscriptionFilter::parse("$share/g1/a/+").expect("valid");
        assert_eq!(s.share.as_ref().map(ShareGroup::as_str), Some("g1"));
        assert_eq!(s.filter.as_str(), "a/+");
        assert_eq!(s.to_wire(), "$share/g1/a/+");
        assert!(SubscriptionFilter::parse("$share/g1").is_err());
        assert!(SubscriptionFilter::parse("$share//a").is_err());
        assert!(SubscriptionFilter::parse("$share/g+/a").is_err());
    }
}
