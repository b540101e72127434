//! Sans-IO MQTT 3.1.1 and 5.0 codec with server-side limits.
//!
//! Owns: the packet model ([`Packet`] and friends), [`decode`] from a byte buffer and
//! [`encode`] into one, reason codes, and the [`Limits`] that bound what a peer can make us
//! allocate. One model covers both protocol versions; fields that exist only in MQTT 5 are
//! ignored when encoding for 3.1.1.
//!
//! Does not own: sockets, clocks, session state. "Need more bytes" is `Ok(None)`, never an
//! error. The remaining length is checked against [`Limits::max_packet_size`] before any
//! payload is buffered or parsed.
//!
//! Trust boundary: every byte given to [`decode`] comes from an unauthenticated peer.
//! Decoding never panics, never allocates more than the peer actually sent, and hands out
//! topics, payloads and binary fields as slices of the read buffer (no copy). Semantic
//! checks that need session state (a second CONNECT, topic alias resolution, wildcard and
//! `$share` syntax in filters, client-sent Subscription Identifiers) are the broker's.
//!
//! The encoder trusts its (server-built) input but never panics; values a conforming peer
//! would have to reject are clamped or left out, as listed in the `encode` module.
//! [`encoded_len`] runs the encoder's own code against a byte counter, so it always agrees
//! with [`encode`]; [`encode_publish`] serves the fan-out path without cloning the message.
//!
//! Module map: `decode` (framing and packet grammar), `properties` (MQTT 5 property
//! rules, both directions), `reader`/`writer` (data types), `encode`, and `fuzz`
//! (feature `fuzzing`: the bodies of the cargo-fuzz targets in `/fuzz`).

#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod limits;
mod packet;
mod properties;
mod reader;
mod reason;
mod writer;

pub use decode::{decode, decode_connect};
pub use encode::{encode, encode_publish, encoded_len, encoded_publish_len};
pub use error::DecodeError;
pub use limits::Limits;
pub use packet::*;
pub use reason::ReasonCode;

#[cfg(test)]
mod tests;
