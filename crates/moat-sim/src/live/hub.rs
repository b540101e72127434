//! [`LiveHub`]: the [`Hub`] trait over real connections, so that the fleet's device models
//! and the attackers of replay drive a real hub unchanged.
//!
//! Differences from [`crate::hub::ReplayHub`], all on purpose:
//!
//! * Calls return at once; the work happens in one tokio task per connection. `connect`
//!   answers `Some(id)` before the hub has decided: a refused session shows up as
//!   `is_live(id) == false` soon after (models then reconnect as after any loss).
//! * Addresses: the models' site addresses (`10.a.b.c`) and cellular ones (`100.x.y.z`)
//!   become `127.a.b.c` / `127.x.y.z`, so that sockets bind to loopback; attackers keep
//!   their `127.0.0.10 + k`. Benign sites never land on `127.0.0.x`.
//! * Slow clients stall on the MQTT over TLS listener for both [`Stall::Tls`] and
//!   [`Stall::WebSocketUpgrade`] (nothing after the TCP handshake); [`Stall::Connect`]
//!   completes TLS with the identity's certificate and sends no CONNECT.
//! * Failed handshakes present a self-signed certificate ([`TlsFailure::UnknownIssuer`]),
//!   or one signed by a forged CA with a fleet device's name (any other reason).
//! * `connect_unauthenticated` opens TLS without a client certificate and sends CONNECT
//!   with a username and a guessed password; the hub refuses it where it refuses it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use moat_detect::{DisconnectCause, TlsFailure};
use moat_types::DeviceId;
use rustls::ClientConfig;
use tokio::sync::mpsc;

use super::client::{self, Command, ConnState, Shared, Spec};
use crate::hub::{Hub, Stall, matches};

/// The loopback address a model's address maps to.
pub fn loopback(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v4) if v4.octets()[0] != 127 => {
            let [_, b, c, d] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(127, b, c, d))
        }
        other => other,
    }
}

#[derive(Debug)]
struct Handle {
    tx: mpsc::Sender<Command>,
    state: Arc<ConnState>,
    identity: Option<String>,
}

/// The hub over real sockets.
#[derive(Debug)]
pub struct LiveHub {
    hub: SocketAddr,
    shared: Arc<Shared>,
    creds: HashMap<String, Arc<ClientConfig>>,
    anonymous: Arc<ClientConfig>,
    self_signed: Arc<ClientConfig>,
    forged: Arc<ClientConfig>,
    grants: HashMap<String, Vec<String>>,
    conns: HashMap<u64, Handle>,
    next: u64,
    /// Sessions opened by identity (for the report).
    pub opened: u64,
}

impl LiveHub {
    /// A hub at `hub` (its MQTT over TLS listener); `creds` maps identities to their TLS
    /// configurations; `anonymous` trusts the hub without a client certificate;
    /// `self_signed` and `forged` present certificates the hub does not trust.
    pub fn new(
        hub: SocketAddr,
        shared: Arc<Shared>,
        creds: HashMap<String, Arc<ClientConfig>>,
        anonymous: Arc<ClientConfig>,
        self_signed: Arc<ClientConfig>,
        forged: Arc<ClientConfig>,
    ) -> Self {
        Self {
            hub,
            shared,
            creds,
            anonymous,
            self_signed,
            forged,
            grants: HashMap::new(),
            conns: HashMap::new(),
            next: 1,
            opened: 0,
        }
    }

    /// Grants `device` publish and subscribe rights on `filter` (as its policy does on the
    /// hub), so that refusals of allowed topics can be told from the policy's own.
    pub fn grant(&mut self, device: &DeviceId, filter: String) {
        self.grants
            .entry(device.as_str().to_owned())
            .or_default()
            .push(filter);
    }

    fn allowed(&self, identity: &str, topic: &str) -> bool {
        let mut levels = topic.split('/');
        if levels.next() == Some("devices") && levels.next() == Some(identity) {
            return true;
        }
        self.grants
            .get(identity)
            .is_some_and(|gs| gs.iter().any(|g| matches(g, topic)))
    }

    fn id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    fn send(&mut self, conn: u64, cmd: Command) {
        let Some(h) = self.conns.get(&conn) else {
            return;
        };
        if h.tx.try_send(cmd).is_err() {
            self.shared
                .dropped_commands
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Opens a session for `identity` with client id `client` from `address` (already a
    /// loopback address); `collect_alerts` keeps what arrives on `$moat/alerts/...`.
    pub fn open(
        &mut self,
        address: IpAddr,
        identity: &str,
        client: &str,
        collect_alerts: bool,
    ) -> Option<u64> {
        let tls = self.creds.get(identity)?.clone();
        let id = self.id();
        let spec = Spec {
            id,
            hub: self.hub,
            source: address,
            tls,
            identity: Some(identity.to_owned()),
            client: client.to_owned(),
            password: None,
            collect_alerts,
        };
        let (tx, state) = client::spawn(spec, Arc::clone(&self.shared));
        self.conns.insert(
            id,
            Handle {
                tx,
                state,
                identity: Some(identity.to_owned()),
            },
        );
        self.opened += 1;
        if self.conns.len() > 4 * 1024 && self.conns.len().is_power_of_two() {
            self.conns.retain(|_, h| h.state.is_open());
        }
        Some(id)
    }

    /// Subscribes `conn` to `filter` (for the alert reader).
    pub fn subscribe_raw(&mut self, conn: u64, filter: &str) {
        self.send(conn, Command::Subscribe(filter.to_owned()));
    }

    /// Probes every open session of `identity` after a mitigating alert (see
    /// [`Command::Probe`]).
    pub fn probe_device(&mut self, identity: &str) {
        let topic = format!("devices/{identity}/telemetry");
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, h)| h.identity.as_deref() == Some(identity) && h.state.is_open())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(id, Command::Probe(topic.clone()));
        }
    }

    /// Probes `address` after a ban (see [`client::spawn_address_probe`]).
    pub fn probe_address(&mut self, address: IpAddr) {
        let id = self.id();
        client::spawn_address_probe(
            id,
            self.hub,
            address,
            Arc::clone(&self.anonymous),
            Arc::clone(&self.shared),
        );
    }

    /// Closes every connection (end of the run).
    pub fn close_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.send(id, Command::Close { graceful: true });
        }
    }

    /// Connections still open.
    pub fn open_count(&self) -> usize {
        self.conns.values().filter(|h| h.state.is_open()).count()
    }
}

impl Hub for LiveHub {
    fn connect(
        &mut self,
        _now: u64,
        address: IpAddr,
        identity: &DeviceId,
        client: &str,
    ) -> Option<u64> {
        self.open(loopback(address), identity.as_str(), client, false)
    }

    fn connect_unauthenticated(&mut self, _now: u64, address: IpAddr, client: &str) {
        let id = self.id();
        let spec = Spec {
            id,
            hub: self.hub,
            source: loopback(address),
            tls: Arc::clone(&self.anonymous),
            identity: None,
            client: client.to_owned(),
            password: Some(("admin".to_owned(), format!("guess-{id}").into_bytes())),
            collect_alerts: false,
        };
        // Fire and forget: the session ends when the hub refuses it.
        let (_tx, _state) = client::spawn(spec, Arc::clone(&self.shared));
    }

    fn fail_handshake(&mut self, _now: u64, address: IpAddr, reason: TlsFailure) {
        let tls = match reason {
            TlsFailure::UnknownIssuer => Arc::clone(&self.self_signed),
            _ => Arc::clone(&self.forged),
        };
        let id = self.id();
        let spec = Spec {
            id,
            hub: self.hub,
            source: loopback(address),
            tls,
            identity: None,
            client: format!("probe-{id}"),
            password: None,
            collect_alerts: false,
        };
        let (_tx, _state) = client::spawn(spec, Arc::clone(&self.shared));
    }

    fn stall(&mut self, _now: u64, address: IpAddr, stage: Stall) {
        let id = self.id();
        let tls = match stage {
            Stall::Tls | Stall::WebSocketUpgrade => None,
            // A valid certificate is needed to get past TLS; any fleet identity will do.
            Stall::Connect => self.creds.values().next().cloned(),
        };
        client::spawn_stall(
            id,
            self.hub,
            loopback(address),
            tls,
            Arc::clone(&self.shared),
        );
    }

    fn publish(&mut self, _now: u64, conn: u64, topic: &str, size: u32, count: u32) {
        if count == 0 {
            return;
        }
        let allowed = self
            .conns
            .get(&conn)
            .and_then(|h| h.identity.as_deref())
            .is_some_and(|id| self.allowed(id, topic));
        self.send(
            conn,
            Command::Publish {
                topic: topic.to_owned(),
                size,
                count,
                allowed,
            },
        );
    }

    fn subscribe(&mut self, _now: u64, conn: u64, filter: &str) {
        self.send(conn, Command::Subscribe(filter.to_owned()));
    }

    fn send_malformed(&mut self, _now: u64, conn: u64) {
        self.send(conn, Command::Malformed);
    }

    fn disconnect(&mut self, _now: u64, conn: u64, cause: DisconnectCause) {
        let graceful = matches!(cause, DisconnectCause::Client);
        self.send(conn, Command::Close { graceful });
        self.conns.remove(&conn);
    }

    fn is_live(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|h| h.state.is_open())
    }

    fn drop_all(&mut self, _now: u64, _cause: DisconnectCause) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.send(id, Command::Close { graceful: false });
        }
        self.conns.clear();
    }
}
