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
