//! Security-relevant facts the network layer observes, handed to whoever audits and
//! detects (the hub). Calls must be cheap and must not block: implementations queue.

use std::fmt;
use std::net::SocketAddr;

use moat_broker::{Close, Principal, ReasonCode};
use moat_types::ClientId;
use std::time::Duration;

use crate::shield::AutoBan;

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
    /// `connection` is the broker's id of the connection ([`Connection::id`]).
    ///
    /// [`Connection::id`]: moat_broker::Connection::id
    fn connected(
        &self,
        _peer: SocketAddr,
        _principal: &Principal,
        _client_id: &ClientId,
        _connection: u64,
    ) {
    }
    /// A connection accepted with [`connected`](Self::connected) ended, why (`close`) and
    /// how long after its CONNECT was accepted.
    fn disconnected(
        &self,
        _peer: SocketAddr,
        _principal: &Principal,
        _connection: u64,
        _close: &Close,
        _lasted: Duration,
    ) {
    }
    /// A connection from `peer` passed the shield and begins its handshake (TLS, then
    /// CONNECT). Each such connection later ends its pre-MQTT phase in one of the facts
    /// here (handshake failed, deadline missed, malformed before CONNECT, refused,
    /// connected) or in a close by the peer, so that the connections an address holds open
    /// without finishing (a slow-loris) are visible before any deadline.
    fn connection_opened(&self, _peer: SocketAddr) {}
    /// The peer at `peer` closed the connection after the handshake and before a complete
    /// CONNECT, breaking no rule (a TLS health check, a client that gave up): the end of a
    /// connection [`SecurityEvents::connection_opened`] announced, when no other fact here
    /// is.
    fn closed_before_connect(&self, _peer: SocketAddr) {}
    /// The first packet from `peer` (authenticated by TLS as `principal`) was malformed or
    /// not a CONNECT (MQTT-3.1.0-1); the connection was closed. `error` is fit for an audit
    /// record.
    fn malformed_before_connect(&self, _peer: SocketAddr, _principal: &Principal, _error: &str) {}
    /// The shield banned an address or a device after repeated authentication failures
    /// (already in force until [`AutoBan::expires_at_ms`]); the last failure came from `peer`.
    fn auto_banned(&self, _peer: SocketAddr, _ban: &AutoBan) {}
    /// A connection from `peer` was closed because `phase` did not finish within its
    /// deadline (a slow-loris, or a client that connects and says nothing).
    fn deadline_missed(&self, _peer: SocketAddr, _phase: &str) {}
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl SecurityEvents for NoEvents {}
