//! Sans-IO MQTT broker core: sessions, routing, retained messages, wills and QoS flows.
//!
//! Owns: the session registry, the subscription trie, the retained store, per-connection
//! protocol state ([`Connection`]), and the authorization hook ([`Authorizer`]) every
//! publish and subscribe passes through. Describes what must be durable as
//! [`persist::StoreOp`]s.
//!
//! Does not own: sockets, TLS, files, clocks or timers. Callers pass `now`; the network
//! layer turns [`Outbox`] contents into bytes and calls [`Broker::tick`] periodically.
//!
//! Trust boundary: packets handed to [`Connection::handle`] come from an authenticated but
//! untrusted peer; every count they can grow is bounded by [`BrokerConfig`].
//!
//! ```text
//!  CONNECT ──Broker::connect──▶ Connection ──handle(packet)──▶ Outbox (acks, gated on commit)
//!                                   │  ▲
//!                        route()    │  │ poll_outbound(): queue ─▶ in flight ─▶ PUBLISH
//!                                   ▼  │
//!                        Router ──▶ Session queues (bounded) ──wake()──▶ driver
//! ```

#![forbid(unsafe_code)]

mod auth;
mod broker;
mod config;
mod connection;
mod message;
pub mod persist;
mod quota;
mod router;
mod session;
mod stats;
mod traffic;

pub use auth::{
    Authorized, Authorizer, ConnectDenied, DenyAll, Namespace, NamespaceAuthorizer, Permissions,
    Principal,
};
pub use broker::{Broker, ConnectOutcome, RouteOutcome};
pub use config::BrokerConfig;
pub use connection::{Close, CloseKind, Connection, Outbox, Outgoing};
pub use message::Message;
pub use moat_mqtt::ReasonCode;
pub use stats::Stats;
pub use traffic::{
    MAX_DEPARTED_TRAFFIC, NoObserver, Observer, PublishTap, TOPICS_REMEMBERED,
    TRAFFIC_SIZE_BUCKETS, Traffic,
};

/// Called by the broker when a connection has something to send or must close.
/// The network layer implements it (for example with `tokio::sync::Notify`).
pub trait Wake: Send + Sync {
    /// Schedules the connection's driver to call [`Connection::poll_outbound`].
    fn wake(&self);
}

impl std::fmt::Debug for dyn Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}
