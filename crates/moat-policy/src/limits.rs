//! Named limits on everything an operator (or, through variables, a device) can make large.
//!
//! They bound parse time, the size of a bound policy (built per connection) and the work of
//! one decision. A document that exceeds one is rejected whole; a variable value that
//! exceeds [`MAX_VARIABLE_VALUE_LEN`] is treated as unbound.

/// Largest policy document accepted, in bytes, and largest canonical form
/// ([`PolicyDocument::to_json`](crate::PolicyDocument::to_json)) a document may have, so
/// that the canonical form always parses again. 64 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Most statements in one document. 256.
pub const MAX_STATEMENTS: usize = 256;

/// Most topic patterns in one statement. 64.
pub const MAX_TOPICS_PER_STATEMENT: usize = 64;

/// Longest topic pattern, in bytes, before substitution. 1024 (MQTT allows 65,535, far more
/// than any policy needs).
pub const MAX_PATTERN_LEN: usize = 1024;

/// Most levels (`/`-separated parts) in one topic pattern. 32.
pub const MAX_PATTERN_LEVELS: usize = 32;

/// Most `${...}` variables in one topic pattern. 8.
pub const MAX_VARIABLES_PER_PATTERN: usize = 8;

/// Longest value substituted for a variable, in bytes. A longer value (say, a device
/// attribute) leaves the variable unbound. 256, the longest client id Moat accepts; with
/// the two limits above a bound filter is at most 3,072 bytes.
pub const MAX_VARIABLE_VALUE_LEN: usize = 256;

/// Longest attribute name in `${device.attr.NAME}`, in bytes. 64.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 64;

/// Longest policy name or statement id, in bytes. 64.
pub const MAX_NAME_LEN: usize = 64;
