//! The hub as the engine sees it. [`Hub`] is what a simulated client can do on the wire;
//! [`ReplayHub`] implements it in virtual time by producing exactly the facts
//! `moat-hub`'s `defence.rs` feeds the engine, so that a live implementation (real MQTT
//! clients against a hub on loopback) can later drive the same device and attack models.
//!
//! What `ReplayHub` mirrors from the hub, on purpose, including its quirks:
//!
//! * The client id is bound to the certificate: a CONNECT whose client id is not the
//!   certificate's device id is refused with `NotAuthorized`, naming the device; a second
//!   CONNECT with the same client id takes the session over (the old one ends with
//!   `TakenOver` just after the new one is accepted).
//! * The default policy: a device may publish and subscribe only under
//!   `devices/{its id}/...`, plus per-device grants (gateways, mobile apps); anything else
//!   is an `AuthorizationDenied` fact, one per denied packet.
//! * `FirstTopic` (publish side only), `Subscribed` and `AuthorizationDenied` come from the
//!   broker's packet path without an address; like the hub's `LiveConnections`, they are
//!   attributed to the device's *latest* connection and its address.
//! * Traffic is summed per connection and fed once per virtual second, at the second, for
//!   connections that published or received anything (the broker skips empty ones); what a
//!   connection counted in the second it closed is lost, as in the broker.
//! * A TLS handshake that times out is reported as `TlsHandshakeFailed { Negotiation }` (the
//!   hub classifies the text "TLS handshake timed out"); only a WebSocket upgrade or a
//!   CONNECT that misses its deadline is a `HandshakeTimeout` / `ConnectTimeout`.
//! * A malformed packet after CONNECT closes the connection: `ProtocolError` (reserved
//!   packet type 0: `ProtocolViolation`), then
//!   `Disconnected { Server }`. (Malformed bytes before CONNECT are a `ProtocolError` with
//!   connection 0 in the hub; no simulated client sends them.)
//! * Every connection the shield admits is a `ConnectAttempt` (no identity yet) when it
//!   opens, before its handshake; its end (accepted, refused, failed, timed out) follows.
//! * Events carry no group unless [`GroupMode::Assigned`] (today's hub sends `group: None`).
//! * Responses are decided, not executed: the engine's alerts do not throttle, ban or
//!   disconnect anyone in replay (see the crate's README).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use moat_detect::{
    Action, DetectConfig, DisconnectCause, Engine, Event, EventKind, GroupName, Output,
    ProtocolFault, RefusedReason, Side, Source, TlsFailure, TrafficSummary,
};
use moat_types::{ClientId, DeviceId, TopicFilter, TopicName};

/// The hub's TLS handshake deadline (`NetLimits::tls_handshake_timeout`, 10 s).
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// The hub's CONNECT deadline (`NetLimits::connect_timeout`, 10 s).
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How often traffic is collected and the engine ticks (`defence::TICK`).
pub const TICK_MS: u64 = 1_000;
/// The address of facts whose connection is unknown (`defence::UNKNOWN_PEER`).
pub const UNKNOWN_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Whether events name the device's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupMode {
    /// Every event names the device's group (what the engine is designed for).
    Assigned,
    /// No event names a group, as `moat-hub` feeds the engine today.
    None,
}

/// Where a slow client stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stall {
    /// In the TLS handshake of the MQTT listener.
    Tls,
    /// In the WebSocket upgrade.
    WebSocketUpgrade,
    /// After the handshake, before CONNECT (needs a valid certificate).
    Connect,
}

/// What a simulated client can do to a hub.
pub trait Hub {
    /// CONNECT with a certificate of `identity` and client id `client` from `address`;
    /// the accepted connection's id, or `None` when refused.
    fn connect(
        &mut self,
        now: u64,
        address: IpAddr,
        identity: &DeviceId,
        client: &str,
    ) -> Option<u64>;
    /// CONNECT without a client certificate (a password or token guess); always refused.
    fn connect_unauthenticated(&mut self, now: u64, address: IpAddr, client: &str);
    /// A TLS handshake that fails for `reason` (an untrusted, bad, expired certificate).
    fn fail_handshake(&mut self, now: u64, address: IpAddr, reason: TlsFailure);
    /// Opens a connection and stops at `stage` until the hub's deadline closes it.
    fn stall(&mut self, now: u64, address: IpAddr, stage: Stall);
    /// `count` PUBLISH packets of `size` payload bytes to `topic` on connection `conn`.
    fn publish(&mut self, now: u64, conn: u64, topic: &str, size: u32, count: u32);
    /// SUBSCRIBE to `filter` on `conn`.
    fn subscribe(&mut self, now: u64, conn: u64, filter: &str);
    /// A malformed packet on `conn` (the hub closes the connection).
    fn send_malformed(&mut self, now: u64, conn: u64);
    /// The client ends `conn` (`Client`, `ConnectionLost`, `KeepAliveTimeout`).
    fn disconnect(&mut self, now: u64, conn: u64, cause: DisconnectCause);
    /// Whether `conn` is still open.
    fn is_live(&self, conn: u64) -> bool;
    /// Every connection ends at once (`Shutdown` for a hub restart, `ConnectionLost` for a
    /// network outage).
    fn drop_all(&mut self, now: u64, cause: DisconnectCause);
}

/// An engine output with what the replay measured about it.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The output.
    pub output: Output,
    /// Wall-clock duration of the engine call that produced it, in nanoseconds: the
    /// engine's decision latency.
    pub decision_ns: u64,
}

#[derive(Debug)]
struct Conn {
    device: DeviceId,
    client: ClientId,
    address: IpAddr,
    accepted_ms: u64,
    traffic: TrafficSummary,
    dirty: bool,
    seen: HashSet<String>,
    subs: Vec<String>,
}

/// Engine, outputs and the group map: the part of the hub that feeds the engine.
#[derive(Debug)]
struct Feed {
    engine: Engine,
    out: Vec<Output>,
    outputs: Vec<Stamped>,
    groups: HashMap<DeviceId, GroupName>,
    mode: GroupMode,
    events: u64,
}

impl Feed {
    fn observe(
        &mut self,
        time_ms: u64,
        connection: u64,
        address: IpAddr,
        device: Option<&DeviceId>,
        client: Option<&ClientId>,
        kind: EventKind<'_>,
    ) {
        let group = match self.mode {
            GroupMode::Assigned => device.and_then(|d| self.groups.get(d)),
            GroupMode::None => None,
        };
        let ev = Event {
            time_ms,
            source: Source {
                connection,
                address,
                device,
                client,
                group,
            },
            kind,
        };
        self.events += 1;
        let t0 = Instant::now();
        self.engine.observe(&ev, &mut self.out);
        self.stamp(t0);
    }

    /// A TCP connection from `address` passed the shield (`SecurityEvents::connection_opened`).
    fn attempt(&mut self, now: u64, address: IpAddr) {
        self.observe(now, 0, address, None, None, EventKind::ConnectAttempt);
    }

    fn tick(&mut self, now: u64) {
        let t0 = Instant::now();
        self.engine.tick(now, &mut self.out);
        self.stamp(t0);
    }

    fn stamp(&mut self, t0: Instant) {
        if self.out.is_empty() {
            return;
        }
        let decision_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.outputs
            .extend(self.out.drain(..).map(|output| Stamped {
                output,
                decision_ns,
            }));
    }
}

/// The hub in virtual time, feeding one [`Engine`].
#[derive(Debug)]
pub struct ReplayHub {
    feed: Feed,
    next_conn: u64,
    conns: HashMap<u64, Conn>,
    by_client: HashMap<String, u64>,
    latest: HashMap<DeviceId, u64>,
    /// Subscribers by the device namespace their filter lies in.
    subs_by_namespace: HashMap<String, Vec<(u64, String)>>,
    /// Subscribers whose filter spans namespaces (gateways).
    subs_wide: Vec<(u64, String)>,
    dirty: Vec<u64>,
    pending: BinaryHeap<Reverse<(u64, u64, IpAddr, Stall)>>,
    pending_seq: u64,
    /// Extra filters each device's policy grants (publish and subscribe).
    grants: HashMap<DeviceId, Vec<String>>,
    /// Devices accepted from each address, with when they last connected.
    address_log: HashMap<IpAddr, Vec<(DeviceId, u64)>>,
}

impl ReplayHub {
    /// A hub feeding an engine built from `config`.
    pub fn new(config: DetectConfig, mode: GroupMode) -> Result<Self, String> {
        let engine = Engine::new(config).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Self {
            feed: Feed {
                engine,
                out: Vec::new(),
                outputs: Vec::new(),
                groups: HashMap::new(),
                mode,
                events: 0,
            },
            next_conn: 1,
            conns: HashMap::new(),
            by_client: HashMap::new(),
            latest: HashMap::new(),
            subs_by_namespace: HashMap::new(),
            subs_wide: Vec::new(),
            dirty: Vec::new(),
            pending: BinaryHeap::new(),
            pending_seq: 0,
            grants: HashMap::new(),
            address_log: HashMap::new(),
        })
    }

    /// Registers a device's group.
    pub fn set_group(&mut self, device: &DeviceId, group: &GroupName) {
        self.feed.groups.insert(device.clone(), group.clone());
    }

    /// Grants `device` publish and subscribe rights on `filter` besides its namespace.
    pub fn grant(&mut self, device: &DeviceId, filter: String) {
        self.grants.entry(device.clone()).or_default().push(filter);
    }

    /// Events fed to the engine so far.
    pub fn events_fed(&self) -> u64 {
        self.feed.events
    }

    /// The engine (for inspection).
    pub fn engine(&self) -> &Engine {
        &self.feed.engine
    }

    /// Takes the outputs produced so far.
    pub fn take_outputs(&mut self) -> Vec<Stamped> {
        std::mem::take(&mut self.feed.outputs)
    }

    /// Devices accepted from `address` at or after `since_ms`.
    pub fn devices_at(&self, address: IpAddr, since_ms: u64) -> Vec<DeviceId> {
        self.address_log
            .get(&address)
            .map(|v| {
                v.iter()
                    .filter(|(_, t)| *t >= since_ms)
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Feeds the deadline facts due at or before `now` (slow clients cut off by the hub).
    pub fn advance(&mut self, now: u64) {
        while let Some(Reverse((at, _, address, stage))) = self.pending.peek().copied() {
            if at > now {
                break;
            }
            self.pending.pop();
            let kind = match stage {
                Stall::Tls => EventKind::TlsHandshakeFailed {
                    reason: TlsFailure::Negotiation,
                },
                Stall::WebSocketUpgrade => EventKind::HandshakeTimeout,
                Stall::Connect => EventKind::ConnectTimeout,
            };
            self.feed.observe(at, 0, address, None, None, kind);
        }
    }

    /// The end of a virtual second: per-connection traffic summaries, then the engine's
    /// tick, as `defence::run` does on every `TICK`.
    pub fn second(&mut self, now: u64) {
        self.advance(now);
        self.dirty.sort_unstable();
        self.dirty.dedup();
        for id in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.dirty = false;
            let t = std::mem::take(&mut c.traffic);
            if t.msgs_published == 0 && t.msgs_delivered == 0 {
                continue;
            }
            let summary = TrafficSummary {
                interval_ms: TICK_MS as u32,
                ..t
            };
            self.feed.observe(
                now,
                id,
                c.address,
                Some(&c.device),
                Some(&c.client),
                EventKind::Traffic(summary),
            );
        }
        self.feed.tick(now);
    }

    fn mark(dirty: &mut Vec<u64>, c: &mut Conn, id: u64) {
        if !c.dirty {
            c.dirty = true;
            dirty.push(id);
        }
    }

    /// The device's latest connection and its address, as `LiveConnections::complete`
    /// attributes packet-path facts.
    fn attribution(&self, device: &DeviceId) -> (u64, IpAddr) {
        match self.latest.get(device) {
            Some(id) => (
                *id,
                self.conns.get(id).map_or(UNKNOWN_ADDRESS, |c| c.address),
            ),
            None => (0, UNKNOWN_ADDRESS),
        }
    }

    fn end(&mut self, now: u64, id: u64, cause: DisconnectCause) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if self.by_client.get(c.client.as_str()) == Some(&id) {
            self.by_client.remove(c.client.as_str());
        }
        if self.latest.get(&c.device) == Some(&id) {
            self.latest.remove(&c.device);
        }
        for f in &c.subs {
            if let Some(ns) = namespace_of(f) {
                if let Some(v) = self.subs_by_namespace.get_mut(ns) {
                    v.retain(|(s, _)| *s != id);
                    if v.is_empty() {
                        self.subs_by_namespace.remove(ns);
                    }
                }
            } else {
                self.subs_wide.retain(|(s, _)| *s != id);
            }
        }
        self.feed.observe(
            now,
            id,
            c.address,
            Some(&c.device),
            None,
            EventKind::Disconnected {
                cause,
                connected_ms: now.saturating_sub(c.accepted_ms),
            },
        );
    }
}

impl Hub for ReplayHub {
    fn connect(
        &mut self,
        now: u64,
        address: IpAddr,
        identity: &DeviceId,
        client: &str,
    ) -> Option<u64> {
        self.feed.attempt(now, address);
        let client_id = ClientId::parse(client).ok();
        if identity.as_str() != client {
            // The client id is bound to the certificate.
            self.feed.observe(
                now,
                0,
                address,
                Some(identity),
                client_id.as_ref(),
                EventKind::ConnectRefused {
                    reason: RefusedReason::NotAuthorized,
                },
            );
            return None;
        }
        let client_id = client_id?;
        let id = self.next_conn;
        self.next_conn += 1;
        self.feed.observe(
            now,
            id,
            address,
            Some(identity),
            Some(&client_id),
            EventKind::ConnectAccepted,
        );
        let old = self.by_client.insert(client.to_owned(), id);
        self.latest.insert(identity.clone(), id);
        self.conns.insert(
            id,
            Conn {
                device: identity.clone(),
                client: client_id,
                address,
                accepted_ms: now,
                traffic: TrafficSummary::default(),
                dirty: false,
                seen: HashSet::new(),
                subs: Vec::new(),
            },
        );
        let log = self.address_log.entry(address).or_default();
        match log.iter_mut().find(|(d, _)| d == identity) {
            Some(e) => e.1 = now,
            None => log.push((identity.clone(), now)),
        }
        if let Some(old) = old {
            self.end(now, old, DisconnectCause::TakenOver);
        }
        Some(id)
    }

    fn connect_unauthenticated(&mut self, now: u64, address: IpAddr, client: &str) {
        self.feed.attempt(now, address);
        let client_id = ClientId::parse(client).ok();
        self.feed.observe(
            now,
            0,
            address,
            None,
            client_id.as_ref(),
            EventKind::ConnectRefused {
                reason: RefusedReason::NotAuthorized,
            },
        );
    }

    fn fail_handshake(&mut self, now: u64, address: IpAddr, reason: TlsFailure) {
        self.feed.attempt(now, address);
        self.feed.observe(
            now,
            0,
            address,
            None,
            None,
            EventKind::TlsHandshakeFailed { reason },
        );
    }

    fn stall(&mut self, now: u64, address: IpAddr, stage: Stall) {
        self.feed.attempt(now, address);
        let deadline = match stage {
            Stall::Tls | Stall::WebSocketUpgrade => TLS_HANDSHAKE_TIMEOUT_MS,
            Stall::Connect => CONNECT_TIMEOUT_MS,
        };
        self.pending_seq += 1;
        self.pending
            .push(Reverse((now + deadline, self.pending_seq, address, stage)));
    }

    fn publish(&mut self, now: u64, conn: u64, topic: &str, size: u32, count: u32) {
        if count == 0 {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let t = &mut c.traffic;
        t.msgs_published += count;
        t.bytes_published += u64::from(size) * u64::from(count);
        t.size_histogram[TrafficSummary::bucket(size as usize)] += count;
        t.max_payload = t.max_payload.max(size);
        Self::mark(&mut self.dirty, c, conn);
        if !allowed(&self.grants, &c.device, topic, true) {
            let device = c.device.clone();
            let (id, address) = self.attribution(&device);
            for _ in 0..count {
                self.feed.observe(
                    now,
                    id,
                    address,
                    Some(&device),
                    None,
                    EventKind::AuthorizationDenied {
                        action: Action::Publish,
                        topic,
                    },
                );
            }
            return;
        }
        if !c.seen.contains(topic) {
            c.seen.insert(topic.to_owned());
            let (device, client) = (c.device.clone(), c.client.clone());
            if let Ok(name) = TopicName::parse(topic) {
                let (id, address) = self.attribution(&device);
                self.feed.observe(
                    now,
                    id,
                    address,
                    Some(&device),
                    Some(&client),
                    EventKind::FirstTopic {
                        topic: &name,
                        side: Side::Publish,
                    },
                );
            }
        }
        // Route to subscribers.
        let bytes = u64::from(size) * u64::from(count);
        let ns_subs = namespace_of(topic).and_then(|ns| self.subs_by_namespace.get(ns));
        for (sub, filter) in ns_subs.into_iter().flatten().chain(self.subs_wide.iter()) {
            if *sub == conn || !matches(filter, topic) {
                continue;
            }
            if let Some(s) = self.conns.get_mut(sub) {
                s.traffic.msgs_delivered += count;
                s.traffic.bytes_delivered += bytes;
                Self::mark(&mut self.dirty, s, *sub);
            }
        }
    }

    fn subscribe(&mut self, now: u64, conn: u64, filter: &str) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let device = c.device.clone();
        let client = c.client.clone();
        let (id, address) = self.attribution(&device);
        let parsed = TopicFilter::parse(filter);
        match parsed {
            Ok(f) if allowed(&self.grants, &device, filter, false) => {
                self.feed.observe(
                    now,
                    id,
                    address,
                    Some(&device),
                    Some(&client),
                    EventKind::Subscribed { filter: &f },
                );
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subs.push(filter.to_owned());
                }
                match namespace_of(filter) {
                    Some(ns) => self
                        .subs_by_namespace
                        .entry(ns.to_owned())
                        .or_default()
                        .push((conn, filter.to_owned())),
                    None => self.subs_wide.push((conn, filter.to_owned())),
                }
            }
            _ => self.feed.observe(
                now,
                id,
                address,
                Some(&device),
                None,
                EventKind::AuthorizationDenied {
                    action: Action::Subscribe,
                    topic: filter,
                },
            ),
        }
    }

    fn send_malformed(&mut self, now: u64, conn: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (device, address) = (c.device.clone(), c.address);
        self.feed.observe(
            now,
            conn,
            address,
            Some(&device),
            None,
            // The simulated malformed packet is of the reserved type 0, which the hub's
            // decoder refuses with reason code 0x82.
            EventKind::ProtocolError {
                fault: ProtocolFault::ProtocolViolation,
            },
        );
        self.end(now, conn, DisconnectCause::Server);
    }

    fn disconnect(&mut self, now: u64, conn: u64, cause: DisconnectCause) {
        self.end(now, conn, cause);
    }

    fn is_live(&self, conn: u64) -> bool {
        self.conns.contains_key(&conn)
    }

    fn drop_all(&mut self, now: u64, cause: DisconnectCause) {
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end(now, id, cause);
        }
    }
}

/// Whether the policy lets `device` publish to (or subscribe to) `name`: its own namespace,
/// or a filter its policy grants.
fn allowed(
    grants: &HashMap<DeviceId, Vec<String>>,
    device: &DeviceId,
    name: &str,
    publish: bool,
) -> bool {
    let mut levels = name.split('/');
    if levels.next() == Some("devices") && levels.next() == Some(device.as_str()) {
        return true;
    }
    grants.get(device).is_some_and(|gs| {
        gs.iter()
            .any(|g| if publish { matches(g, name) } else { g == name })
    })
}

/// The device namespace (`devices/{ns}/...`) a topic or filter lies in, if one.
fn namespace_of(s: &str) -> Option<&str> {
    let mut levels = s.split('/');
    if levels.next() != Some("devices") {
        return None;
    }
    levels
        .next()
        .filter(|l| !l.is_empty() && *l != "+" && *l != "#")
}

/// MQTT topic matching of `filter` against `topic` (MQTT-4.7.1): `+` one level, `#` the rest.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching() {
        assert!(matches("devices/+/telemetry", "devices/a/telemetry"));
        assert!(!matches("devices/+/telemetry", "devices/a/telemetry/v2"));
        assert!(matches("devices/a/cmd/#", "devices/a/cmd/set"));
        assert!(matches("#", "x/y"));
        assert!(!matches("a/b", "a"));
        assert_eq!(namespace_of("devices/x/#"), Some("x"));
        assert_eq!(namespace_of("devices/+/t"), None);
    }

    #[test]
    fn client_id_is_bound_and_same_client_takes_over() {
        let mut hub = ReplayHub::new(DetectConfig::default(), GroupMode::None).expect("hub");
        let d = DeviceId::parse("d1").expect("id");
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert!(hub.connect(0, a, &d, "other").is_none());
        let c1 = hub.connect(0, a, &d, "d1").expect("accepted");
        let c2 = hub.connect(5, b, &d, "d1").expect("accepted");
        assert!(!hub.is_live(c1) && hub.is_live(c2));
        assert_eq!(hub.devices_at(a, 0), vec![d.clone()]);
        // Three attempts (each admitted connection opens with one), refused, accepted,
        // accepted, taken over.
        assert_eq!(hub.events_fed(), 7);
    }

    #[test]
    fn denials_first_topics_and_one_summary_per_busy_second() {
        let mut hub = ReplayHub::new(DetectConfig::default(), GroupMode::None).expect("hub");
        let d = DeviceId::parse("d1").expect("id");
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let c = hub.connect(0, a, &d, "d1").expect("accepted");
        let base = hub.events_fed();
        hub.publish(10, c, "devices/d1/t", 100, 2); // first topic
        hub.publish(20, c, "devices/d1/t", 100, 1); // seen
        hub.publish(30, c, "devices/d2/t", 10, 1); // denied
        assert_eq!(hub.events_fed() - base, 2);
        hub.second(1_000);
        assert_eq!(hub.events_fed() - base, 3, "one summary");
        hub.second(2_000);
        assert_eq!(hub.events_fed() - base, 3, "no empty summary");
        hub.stall(2_500, a, Stall::Tls);
        assert_eq!(hub.events_fed() - base, 4, "the attempt, at once");
        hub.advance(12_499);
        assert_eq!(hub.events_fed() - base, 4);
        hub.advance(12_500);
        assert_eq!(hub.events_fed() - base, 5, "the deadline fact");
    }
}
