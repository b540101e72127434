//! Composition: configuration, wiring and lifecycle of the hub.
//!
//! Owns: the data directory layout, start-up (CA, server certificate, store, registry,
//! restore), binding listeners, periodic broker work, the identity service (`identity.rs`:
//! device directory, policy authorizer, live certificate check, revocation, audit sink),
//! enrollment (`enroll.rs`, `jit.rs`), CA operations on a running hub (`ca.rs`) and the
//! listeners' swappable TLS (`tls.rs`), the ban list behind the MQTT listeners' shield
//! (`bans.rs`), operator access (`access.rs`), the HTTPS API
//! (`api.rs`: REST under `/api/v1`, `est.rs`: EST, `/pki/`, `/metrics`, `/healthz`,
//! `/api/openapi.json`), the web console on the same listener (`console/`: pages, sessions,
//! CSRF, live events), the CLI's client (`client.rs`), and graceful shutdown.
//!
//! Does not own: protocol logic (moat-broker), sockets per MQTT connection (moat-net), SQL
//! (moat-store), key material (moat-pki), policy semantics (moat-policy), the audit chain
//! (moat-audit).
//!
//! Data directory layout: `pki/` (CA keys and certificates, 0700), `moat.db` (messages and
//! sessions, 0600), `registry.db` (devices, certificates, policies, tokens, audit trail,
//! 0600), `secrets/` (0700: `audit.key`, `token.key`, `cli.token`, each 0600), `hub.json`
//! (the running hub's API address, removed at shutdown).

#![forbid(unsafe_code)]

mod access;
mod api;
mod bans;
pub mod ca;
pub mod client;
pub mod config;
mod console;
mod defence;
mod enroll;
mod est;
mod identity;
mod idle;
mod jit;
mod metrics;
mod openapi;
mod ota;
mod quota;
mod rates;
mod reload;
mod run;
mod tls;
pub mod webhook;

pub use access::{Role, cli_token_path};
pub use config::{ConfigError, HubConfig, Reloader, Settings};
pub use identity::{ANONYMOUS_GROUP, DEFAULT_POLICY, IdentityError};
pub use run::{
    CaSettings, HUB_FILE, HubError, Ready, add_device, add_operator, open_registry, run,
};
