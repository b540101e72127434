//! Network counters, read by the hub's metrics endpoint. Label sets are fixed enums.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shield::Refusal;

/// Why a connection failed before MQTT began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The TLS handshake did not finish within its deadline.
    Timeout,
    /// The TLS handshake failed (bad or missing client certificate, protocol error).
    Tls,
    /// The certificate verified but names no valid device.
    Identity,
    /// The WebSocket upgrade was refused (wrong path or subprotocol).
    WebSocket,
    /// No CONNECT within the deadline.
    ConnectTimeout,
    /// The first packet was not a valid CONNECT.
    BadConnect,
}

impl HandshakeFailure {
    /// Every variant, for metric registration.
    pub const ALL: [HandshakeFailure; 6] = [
        Self::Timeout,
        Self::Tls,
        Self::Identity,
        Self::WebSocket,
        Self::ConnectTimeout,
        Self::BadConnect,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "tls_timeout",
            Self::Tls => "tls_error",
            Self::Identity => "identity",
            Self::WebSocket => "websocket",
            Self::ConnectTimeout => "connect_timeout",
            Self::BadConnect => "bad_connect",
        }
    }
}

/// Monotonic counters and gauges of the network layer.
#[derive(Debug, Default)]
pub struct NetStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections currently open (gauge).
    pub open: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Connections closed because keep alive expired.
    pub keep_alive_timeouts: AtomicU64,
    failures: [AtomicU64; 6],
    refusals: [AtomicU64; 4],
    /// Automatic bans the shield issued.
    pub auto_bans: AtomicU64,
}

impl NetStats {
    /// Counts one pre-MQTT failure.
    pub fn fail(&self, why: HandshakeFailure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of one kind so far.
    pub fn failures(&self, why: HandshakeFailure) -> u64 {
        self.failures[why as usize].load(Ordering::Relaxed)
    }

    /// Counts one connection the shield closed at accept.
    pub fn refuse(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections the shield closed for one reason so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].load(Ordering::Relaxed)
    }
}
