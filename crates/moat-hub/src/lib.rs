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

mod access;
mod api;
pub mod client;
pub mod config;
mod enroll;
mod est;
mod identity;
mod jit;
mod metrics;
mod openapi;
mod run;

pub use access::{Role, cli_token_path};
pub use config::{ConfigError, HubConfig, Settings};
pub use identity::{ANONYMOUS_GROUP, DEFAULT_POLICY};
pub use run::{HUB_FILE, HubError, Ready, add_device, open_registry, run};
