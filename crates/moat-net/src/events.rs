//! Security-relevant facts the network layer observes, handed to whoever audits and
//! detects (the hub). Calls must be cheap and must not block: implementations queue.

use std::fmt;
use std::net::SocketAddr;

use moat_broker::{Principal, ReasonCode};
use moat_types::ClientId;

/// Receives what happened at the edge. Every method has an empty default.
pub trait SecurityEvents: Send + Sync + fmt::Debug {
    /// A TLS handshake (or WebSocket upgrade) from `peer` failed; `reason` is rustls' or
    /// the upgrade's error, fit for an audit record.
    fn handshake_failed(&self, _peer: SocketAddr, _reason: &str) {}
    /// A CONNECT from `peer` was refused with `reason`.
    fn connect_refused(
        &self,
        _peer: SocketAddr,
        _principal: &Principal,
        _client_id: &str,
        _reason: ReasonCode,
    ) {
    }
    /// A CONNECT from `peer` was accepted.
    fn connected(&self, _peer: SocketAddr, _principal: &Principal, _client_id: &ClientId) {}
    /// A connection accepted with [`connected`](Self::connected) ended.
    fn disconnected(&self, _peer: SocketAddr, _principal: &Principal) {}
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl SecurityEvents for NoEvents {}
