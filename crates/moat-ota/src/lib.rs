//! Signed updates, TUF and Uptane style.
//!
//! Owns: the image repository's metadata (TUF roles root, targets with delegations per hardware
//! class, snapshot and timestamp), the director's per-device metadata, online re-signing,
//! campaigns as a pure state machine, and the verifier a device runs before it downloads.
//!
//! Does not own: storage, HTTP, MQTT or the install itself (moat-hub and moat-agent).

#![forbid(unsafe_code)]

pub mod campaign;
