//! Why a policy document was rejected. Every variant is the operator's to fix (a
//! misconfiguration); none is caused by a device.

use crate::limits::{MAX_DOCUMENT_BYTES, MAX_NAME_LEN};
use std::fmt;

/// The syntax a document was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// Where in a document an error was found: 1-based line and column (in characters), or
/// both 0 when the parser did not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`.
    pub(crate) fn of_offset(text: &str, offset: usize) -> Self {
        let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line_text = before.get(line_start..).unwrap_or_default();
        Self {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            // Count characters, not bytes: skip UTF-8 continuation bytes.
            column: line_text.iter().filter(|&&b| b & 0xC0 != 0x80).count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("at an unknown position")
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

/// Why a policy document could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy's name is not 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`.
    #[error("policy name {name:?} is not 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9._-]")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`]; checked before parsing.
    #[error("policy `{policy}` is {len} bytes, larger than the limit of {MAX_DOCUMENT_BYTES}")]
    TooLarge {
        /// The policy's name.
        policy: String,
        /// The document's size in bytes.
        len: usize,
    },
    /// The document parsed, but its canonical JSON form would be larger than
    /// [`MAX_DOCUMENT_BYTES`] (and so could not be read back).
    #[error(
        "policy `{policy}`: its canonical JSON form is {len} bytes, larger than the limit of \
         {MAX_DOCUMENT_BYTES}"
    )]
    CanonicalFormTooLarge {
        /// The policy's name.
        policy: String,
        /// The canonical form's size in bytes.
        len: usize,
    },
    /// Bad syntax, an unknown or missing key, a bad value (action, effect, topic pattern,
    /// statement id, version), a duplicate statement id or an exceeded count limit.
    #[error("policy `{policy}` ({format}) {location}: {message}")]
    Invalid {
        /// The policy's name.
        policy: String,
        /// The syntax the document was read in.
        format: Format,
        /// Where the parser found the problem.
        location: Location,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    pub(crate) fn from_toml(policy: &str, text: &str, err: &toml::de::Error) -> Self {
        let location = err.span().map_or(Location { line: 0, column: 0 }, |span| {
            Location::of_offset(text, span.start)
        });
        PolicyError::Invalid {
            policy: policy.to_owned(),
            format: Format::Toml,
            location,
            message: err.message().trim_end().to_owned(),
        }
    }

    pub(crate) fn from_json(policy: &str, err: &serde_json::Error) -> Self {
        let location = Location {
            line: err.line(),
            column: err.column(),
        };
        // serde_json's Display appends the position, which `location` already carries.
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        PolicyError::Invalid {
            policy: policy.to_owned(),
            format: Format::Json,
            location,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let text = "ab\ncdé\nf";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 3),
            Location { line: 2, column: 1 }
        );
        // After "cdé" (é is two bytes): column 4.
        assert_eq!(
            Location::of_offset(text, 7),
            Location { line: 2, column: 4 }
        );
        assert_eq!(
            Location::of_offset(text, 8),
            Location { line: 3, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 99),
            Location { line: 3, column: 2 }
        );
        assert_eq!(
            Location { line: 0, column: 0 }.to_string(),
            "at an unknown position"
        );
    }
}
