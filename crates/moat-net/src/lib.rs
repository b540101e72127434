//! Listeners, TLS, WebSocket and the per-connection driver.
//!
//! Owns: accepting sockets, the TLS handshake (rustls with aws-lc-rs; client certificates
//! verified against the hub's CA), turning a verified certificate into a
//! [`moat_broker::Principal`], MQTT over WebSocket (`/mqtt`, subprotocol `mqtt`), and the
//! task that moves bytes between a socket and a [`moat_broker::Connection`].
//!
//! Does not own: protocol decisions (the broker makes them), storage, configuration files.
//!
//! Trust boundary: everything read from a socket. Before CONNECT is accepted a peer can make
//! us spend at most one TLS handshake (bounded by [`NetLimits::tls_handshake_timeout`]), one
//! packet of at most the configured maximum size, and [`NetLimits::connect_timeout`].

#![forbid(unsafe_code)]

mod driver;
mod events;
mod listener;
mod stats;
mod tls;
mod transport;
mod ws;

pub use driver::Committed;
pub use events::{NoEvents, SecurityEvents};
pub use listener::{Listener, ListenerKind, NetLimits, TlsSlot, serve, tls_slot};
pub use stats::{HandshakeFailure, NetStats};
pub use tls::{
    AcceptAll, ClientCertCheck, TlsError, server_config, server_config_no_client_auth,
    server_config_optional_client_auth,
};
