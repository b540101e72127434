//! Composition: configuration, wiring and lifecycle of the hub.
//!
//! Owns: the data directory layout, start-up (CA, server certificate, store, restore),
//! binding listeners, periodic broker work, the HTTPS endpoint for `/metrics` and
//! `/healthz`, and graceful shutdown.
//!
//! Does not own: protocol logic (moat-broker), sockets per connection (moat-net), SQL
//! (moat-store), key material (moat-pki).
//!
//! Data directory layout: `pki/` (CA keys and certificates, 0700), `moat.db` (SQLite, 0600).

#![forbid(unsafe_code)]

pub mod config;
mod metrics;
mod run;

pub use config::{ConfigError, HubConfig, Settings};
pub use run::{HubError, Ready, add_device, run};
