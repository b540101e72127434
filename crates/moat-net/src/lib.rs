//! Listeners, TLS, WebSocket and the per-connection driver.
//!
//! Owns: accepting sockets, the pre-authentication [`Shield`] (ban snapshot, connection rates,
//! concurrent caps, automatic bans), the TLS handshake (rustls with aws-lc-rs; client
//! certificates verified against the hub's CA), turning a verified certificate into a
//! [`moat_broker::Principal`], MQTT over WebSocket (`/mqtt`, subprotocol `mqtt`), and the
//! task that moves bytes between a socket and a [`moat_broker::Connection`].
//!
//! Does not own: protocol decisions (the broker makes them), storage, configuration files.
//!
//! Trust boundary: everything read from a socket. Before anything else, the [`Shield`] closes
//! connections from banned addresses and networks, and from addresses over their connection
//! rate or concurrent cap, before any TLS work. Past it, before CONNECT is accepted a peer can
//! make us spend at most one TLS handshake (bounded by [`NetLimits::tls_handshake_timeout`],
//! a total deadline however the bytes trickle in), one packet of at most the configured maximum
//! size, and [`NetLimits::connect_timeout`] (total as well). Repeated authentication failures
//! earn automatic bans ([`AutoBanLimits`]).

#![forbid(unsafe_code)]

mod driver;
mod events;
mod listener;
mod shield;
mod stats;
mod tls;
mod transport;
mod ws;

pub use driver::Committed;
pub use events::{NoEvents, SecurityEvents};
pub use listener::{Listener, ListenerKind, NetLimits, TlsSlot, serve, tls_slot};
pub use shield::{
    AutoBan, AutoBanLimits, BanExpiry, BanList, BanTarget, IpNet, IpNetError, MAX_BANS, Offender,
    Refusal, Shield, ShieldGuard, ShieldLimits,
};
pub use stats::{HandshakeFailure, NetStats};
pub use tls::{
    AcceptAll, ClientCertCheck, MAX_REMEMBERED_CHAINS, TlsError, server_config,
    server_config_no_client_auth, server_config_optional_client_auth,
};
