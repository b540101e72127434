use std::fmt;

/// Longest accepted device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest accepted MQTT client identifier, in bytes (MQTT-3.1.3-5 requires at least 23).
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty identifier.
    #[error("identifier is empty")]
    Empty,
    /// Longer than the named limit.
    #[error("identifier is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains a character outside the allowed set.
    #[error("identifier contains the character {0:?}, outside [A-Za-z0-9._-]")]
    BadCharacter(char),
}

/// A device's identity as bound into its certificate.
///
/// 1 to [`MAX_DEVICE_ID_LEN`] bytes of `[A-Za-z0-9._-]`, not starting with `.`, so that it
/// can be substituted into a topic (`devices/{id}/#`) or a file name without escaping and can
/// never introduce a wildcard, a level separator or a path traversal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Parses a device id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: MAX_DEVICE_ID_LEN,
            });
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadCharacter(c));
        }
        if s.starts_with('.') {
            return Err(IdError::BadCharacter('.'));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An MQTT client identifier: 1 to [`MAX_CLIENT_ID_LEN`] bytes of UTF-8 without NUL.
///
/// The empty client id of MQTT is not a `ClientId`: the broker assigns one instead.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(std::sync::Arc<str>);

impl ClientId {
    /// Parses a client identifier.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_CLIENT_ID_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: MAX_CLIENT_ID_LEN,
            });
        }
        if s.contains('\0') {
            return Err(IdError::BadCharacter('\0'));
        }
        Ok(Self(s.into()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a connection of `device` may use this client id: the device id itself, or
    /// the device id followed by [`AGENT_CLIENT_SUFFIX`] (moat-agent's own connection, so
    /// that its reports never take over the session of the device's application). A device
    /// id has no `/`, so no other device's id can end up matching.
    pub fn belongs_to(&self, device: &DeviceId) -> bool {
        let id = device.as_str();
        match self.0.strip_prefix(id) {
            Some("") => true,
            Some(rest) => rest == AGENT_CLIENT_SUFFIX,
            None => false,
        }
    }
}

/// The suffix of the second client id a device may use (see [`ClientId::belongs_to`]).
pub const AGENT_CLIENT_SUFFIX: &str = "/agent";

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_owns_its_id_and_its_agents_id_only() {
        let d = DeviceId::parse("cam-7").expect("id");
        let c = |s: &str| ClientId::parse(s).expect("client id");
        assert!(c("cam-7").belongs_to(&d));
        assert!(c("cam-7/agent").belongs_to(&d));
        for other in [
            "cam-70",
            "cam-7/agent2",
            "cam-7/",
            "cam",
            "x/cam-7",
            "cam-7/agent/x",
        ] {
            assert!(!c(other).belongs_to(&d), "{other}");
        }
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("sensor-01.a_b").is_ok());
        assert_eq!(DeviceId::parse(""), Err(IdError::Empty));
        assert_eq!(DeviceId::parse("a/b"), Err(IdError::BadCharacter('/')));
        assert_eq!(DeviceId::parse("a+"), Err(IdError::BadCharacter('+')));
        assert_eq!(DeviceId::parse(".."), Err(IdError::BadCharacter('.')));
        assert!(DeviceId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn client_ids() {
        assert!(ClientId::parse("any thing/ü").is_ok());
        assert!(ClientId::parse("a\0").is_err());
        assert!(ClientId::parse("").is_err());
    }
}
