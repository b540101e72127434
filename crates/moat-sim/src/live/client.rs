//! Live clients: one tokio task per connection, MQTT 5 over mutual TLS on the workspace codec
//! (`moat-mqtt`), the socket bound to a chosen loopback source address before it connects.
//!
//! Each task records what the *client* saw in [`Shared`]: accepted sessions, refused
//! CONNECTs, TLS failures, refused publishes and subscriptions, server DISCONNECTs, closed
//! sockets. The evaluator reads these effects to tell when a mitigation took hold of a live
//! session and whether a benign device felt one.
//!
//! Trust boundary: the hub is the peer and is trusted as far as a test tool goes; still,
//! the decoder's limits apply and every wait is bounded ([`CONNACK_TIMEOUT`],
//! [`MAX_STALL`]), every queue too ([`COMMAND_QUEUE`], [`MAX_INFLIGHT`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use moat_mqtt::{
    Connect, ConnectProperties, Disconnect, Limits, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, ReasonCode, Subscribe, SubscriptionOptions,
};
use moat_types::{QoS, TopicName};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// Longest wait for the TCP connection, the TLS handshake and the CONNACK together.
pub const CONNACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a stalled (slow-loris) connection is held open when the hub does not close it.
pub const MAX_STALL: Duration = Duration::from_secs(30);
/// Commands queued per connection; beyond it commands are dropped and counted (a flood
/// that outruns the socket does not grow memory).
pub const COMMAND_QUEUE: usize = 4_096;
/// QoS 1 publishes in flight per connection (the hub's Receive Maximum is 1,024); above it
/// publishes go out at QoS 0.
pub const MAX_INFLIGHT: usize = 256;
/// Largest payload a simulated client sends (the models' largest is 64 KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Keep alive requested in CONNECT, seconds (a PINGREQ goes out after half of it idle).
pub const KEEP_ALIVE_SECS: u16 = 60;
/// Most effects kept; later ones are counted but not stored.
pub const MAX_EFFECTS: usize = 1_000_000;
/// Largest alert message kept from the `$moat/alerts/...` sink.
pub const MAX_ALERT_BYTES: usize = 64 * 1024;
/// Most alert messages kept from the sink.
pub const MAX_ALERTS: usize = 100_000;
/// A QoS 1 publish unanswered for this long means the hub stopped reading the connection
/// (a throttle: the broker stops handling a throttled connection's packets).
pub const ACK_STALL: Duration = Duration::from_millis(500);
/// Delays of the probes sent after a mitigating alert, from the alert's arrival: a QoS 1
/// publish to the device's own telemetry topic each, until one is refused or the session
/// ends.
pub const PROBE_DELAYS_MS: [u64; 9] = [0, 10, 20, 40, 80, 160, 320, 640, 1_280];

/// Milliseconds since the Unix epoch (the hub stamps alerts on the same clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a client saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EffectKind {
    /// The session was accepted (CONNACK success).
    Accepted,
    /// CONNACK with a failure reason code.
    ConnectRefused {
        /// MQTT 5 reason code.
        code: u8,
    },
    /// The hub closed or reset the socket before the TLS handshake completed: a ban or the
    /// shield refusing the address before TLS.
    ClosedBeforeTls,
    /// The TLS handshake failed, or a TLS alert arrived before CONNACK (TLS 1.3 reports a
    /// refused client certificate after the client's side of the handshake).
    TlsFailed {
        /// The client library's error.
        error: String,
    },
    /// TCP connect failed (nothing listening, or the source address cannot be bound).
    ConnectFailed {
        /// The error.
        error: String,
    },
    /// A PUBACK with a failure reason code.
    PublishRefused {
        /// Reason code.
        code: u8,
        /// Topic.
        topic: String,
        /// Whether the fleet's policy allows the topic (a refusal is then a mitigation or
        /// a quota, not the policy).
        allowed: bool,
    },
    /// A SUBACK granting the filter.
    Subscribed {
        /// Filter.
        filter: String,
    },
    /// A SUBACK with a failure reason code.
    SubscribeRefused {
        /// Reason code.
        code: u8,
        /// Filter.
        filter: String,
    },
    /// A DISCONNECT from the hub.
    ServerDisconnect {
        /// Reason code.
        code: u8,
    },
    /// The hub closed an accepted session without a DISCONNECT.
    ClosedByServer {
        /// Whether the client provoked it (a malformed packet).
        provoked: bool,
    },
    /// QoS 1 publishes went unanswered for [`ACK_STALL`]: the hub stopped reading the
    /// connection. Stamped with when the oldest unanswered publish was sent.
    AcksStalled {
        /// How long the oldest publish had waited when noticed.
        waited_ms: u64,
    },
    /// A probe publish sent after a mitigating alert (so that the effect can be timed).
    Probe,
    /// A stalled connection ended: closed by the hub after `after_ms`.
    StallClosed {
        /// How long the hub kept it.
        after_ms: u64,
    },
}

/// One thing a client saw, stamped.
#[derive(Debug, Clone, Serialize)]
pub struct Effect {
    /// When, ms since the epoch.
    pub time_ms: u64,
    /// The simulator's connection id.
    pub conn: u64,
    /// The identity whose certificate the client presented, if any.
    pub identity: Option<String>,
    /// The client id sent in CONNECT, if any.
    pub client: Option<String>,
    /// Source address.
    pub address: IpAddr,
    /// What.
    #[serde(flatten)]
    pub kind: EffectKind,
}

/// State shared by every connection task and the driver.
#[derive(Debug)]
pub struct Shared {
    effects: Mutex<Vec<Effect>>,
    alerts: Mutex<Vec<(u64, Bytes)>>,
    payload: Bytes,
    /// Messages published (every QoS).
    pub published: AtomicU64,
    /// Messages received from the hub.
    pub received: AtomicU64,
    /// Commands dropped because a connection's queue was full.
    pub dropped_commands: AtomicU64,
    /// Effects not stored (over [`MAX_EFFECTS`]).
    pub dropped_effects: AtomicU64,
    /// Signalled when an alert arrives on the sink (the driver probes at once).
    pub alert_arrived: tokio::sync::Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            effects: Mutex::new(Vec::new()),
            alerts: Mutex::new(Vec::new()),
            payload: Bytes::from(vec![b'x'; MAX_PAYLOAD]),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped_commands: AtomicU64::new(0),
            dropped_effects: AtomicU64::new(0),
            alert_arrived: tokio::sync::Notify::new(),
        }
    }
}

impl Shared {
    fn record(&self, effect: Effect) {
        let mut v = self.effects.lock().unwrap_or_else(PoisonError::into_inner);
        if v.len() < MAX_EFFECTS {
            v.push(effect);
        } else {
            self.dropped_effects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Alert messages received since the first `from`.
    pub fn alerts_from(&self, from: usize) -> Vec<(u64, Bytes)> {
        let a = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        a.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Every effect so far.
    pub fn effects(&self) -> Vec<Effect> {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Alert messages received on `$moat/alerts/...` so far, with their arrival time.
    pub fn alerts(&self) -> Vec<(u64, Bytes)> {
        self.alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A command to a live connection.
#[derive(Debug)]
pub enum Command {
    /// `count` PUBLISH packets of `size` bytes to `topic`.
    Publish {
        /// Topic.
        topic: String,
        /// Payload bytes.
        size: u32,
        /// Packets.
        count: u32,
        /// Whether the fleet's policy allows it.
        allowed: bool,
    },
    /// SUBSCRIBE to one filter.
    Subscribe(String),
    /// A malformed packet (reserved packet type 0); the hub closes the connection.
    Malformed,
    /// Probe the session after a mitigating alert: QoS 1 publishes of 16 bytes to `topic`
    /// (allowed by the policy) at [`PROBE_DELAYS_MS`].
    Probe(String),
    /// End the connection: with a DISCONNECT (`graceful`) or by dropping the socket.
    Close {
        /// Send DISCONNECT first.
        graceful: bool,
    },
}

/// Whether a connection is still open, as the driver sees it.
#[derive(Debug)]
pub struct ConnState {
    open: AtomicBool,
}

impl ConnState {
    /// Whether the connection is open (or still being opened).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// What one connection task needs.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The simulator's connection id.
    pub id: u64,
    /// The hub's MQTT over TLS listener.
    pub hub: SocketAddr,
    /// Source address to bind.
    pub source: IpAddr,
    /// TLS configuration (client certificate or none).
    pub tls: Arc<ClientConfig>,
    /// The identity of the client certificate, if any (for the record).
    pub identity: Option<String>,
    /// Client id for CONNECT.
    pub client: String,
    /// Username and password for CONNECT (a credential guess).
    pub password: Option<(String, Vec<u8>)>,
    /// Keep `$moat/alerts/...` messages received on this connection.
    pub collect_alerts: bool,
}

impl Spec {
    fn effect(&self, kind: EffectKind) -> Effect {
        Effect {
            time_ms: now_ms(),
            conn: self.id,
            identity: self.identity.clone(),
            client: Some(self.client.clone()),
            address: self.source,
            kind,
        }
    }
}

/// Starts a connection task; returns its command queue and state.
pub fn spawn(spec: Spec, shared: Arc<Shared>) -> (mpsc::Sender<Command>, Arc<ConnState>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let state = Arc::new(ConnState {
        open: AtomicBool::new(true),
    });
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        session(&spec, rx, &shared).await;
        st.open.store(false, Ordering::Release);
    });
    (tx, state)
}

/// A TCP connection from `source` to `hub`, Nagle off.
pub async fn tcp_from(source: IpAddr, hub: SocketAddr) -> Result<TcpStream, String> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("binding {source}: {e}"))?;
    let stream = socket
        .connect(hub)
        .await
        .map_err(|e| format!("connecting to {hub} from {source}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(stream)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn server_name() -> Result<ServerName<'static>, String> {
    ServerName::try_from("localhost").map_err(|e| e.to_string())
}

/// Whether an I/O error means the peer closed or reset the socket.
fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

const VERSION: ProtocolVersion = ProtocolVersion::V5;

fn limits() -> Limits {
    Limits {
        max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
        ..Limits::default()
    }
}

async fn session(spec: &Spec, rx: mpsc::Receiver<Command>, shared: &Shared) {
    let opened = tokio::time::timeout(CONNACK_TIMEOUT, open(spec)).await;
    let (io, buf) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(kind)) => {
            shared.record(spec.effect(kind));
            return;
        }
        Err(_) => {
            shared.record(spec.effect(EffectKind::TlsFailed {
                error: format!("no CONNACK within {CONNACK_TIMEOUT:?}"),
            }));
            return;
        }
    };
    shared.record(spec.effect(EffectKind::Accepted));
    if let Some(kind) = run(spec, io, buf, rx, shared).await {
        shared.record(spec.effect(kind));
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP, TLS, CONNECT, CONNACK.
async fn open(spec: &Spec) -> Result<(Tls, BytesMut), EffectKind> {
    let tcp = tcp_from(spec.source, spec.hub)
        .await
        .map_err(|error| EffectKind::ConnectFailed { error })?;
    let name = server_name().map_err(|error| EffectKind::TlsFailed { error })?;
    let mut io = TlsConnector::from(Arc::clone(&spec.tls))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            if is_closed(&e) {
                EffectKind::ClosedBeforeTls
            } else {
                EffectKind::TlsFailed {
                    error: e.to_string(),
                }
            }
        })?;
    let (username, password) = match &spec.password {
        Some((u, p)) => (Some(u.clone()), Some(Bytes::from(p.clone()))),
        None => (None, None),
    };
    let mut out = BytesMut::new();
    moat_mqtt::encode(
        &Packet::Connect(Box::new(Connect {
            protocol: VERSION,
            clean_start: true,
            keep_alive: KEEP_ALIVE_SECS,
            properties: ConnectProperties::default(),
            client_id: spec.client.clone(),
            will: None,
            username,
            password,
        })),
        VERSION,
        &mut out,
    );
    io.write_all(&out).await.map_err(|e| tls_error(&e))?;
    let mut buf = BytesMut::with_capacity(4096);
    let limits = limits();
    loop {
        match moat_mqtt::decode(&mut buf, VERSION, &limits) {
            Ok(Some(Packet::ConnAck(ack))) => {
                return if !ack.reason_code.is_error() {
                    Ok((io, buf))
                } else {
                    Err(EffectKind::ConnectRefused {
                        code: ack.reason_code.as_u8(),
                    })
                };
            }
            Ok(Some(Packet::Disconnect(d))) => {
                return Err(EffectKind::ConnectRefused {
                    code: d.reason_code.as_u8(),
                });
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => {
                return Err(EffectKind::TlsFailed {
                    error: format!("decoding CONNACK: {e}"),
                });
            }
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => {
                return Err(EffectKind::ClosedByServer { provoked: false });
            }
            Ok(_) => {}
            Err(e) => return Err(tls_error(&e)),
        }
    }
}

/// After the client's side of a TLS 1.3 handshake, a refused certificate arrives as an
/// alert on the first read.
fn tls_error(e: &std::io::Error) -> EffectKind {
    if is_closed(e) {
        EffectKind::ClosedByServer { provoked: false }
    } else {
        EffectKind::TlsFailed {
            error: e.to_string(),
        }
    }
}

fn packet_id(next: &mut u16) -> NonZeroU16 {
    *next = next.wrapping_add(1);
    if *next == 0 {
        *next = 1;
    }
    NonZeroU16::new(*next).unwrap_or(NonZeroU16::MIN)
}

/// The session loop; returns how it ended (`None`: the client closed it).
async fn run(
    spec: &Spec,
    io: Tls,
    mut buf: BytesMut,
    mut rx: mpsc::Receiver<Command>,
    shared: &Shared,
) -> Option<EffectKind> {
    let (mut reader, mut writer) = tokio::io::split(io);
    let limits = limits();
    let mut next_id: u16 = 0;
    let mut inflight: HashMap<u16, (String, bool, u64)> = HashMap::new();
    let mut stalled = false;
    let mut probe: Option<(String, usize, tokio::time::Instant)> = None;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut subs: HashMap<u16, String> = HashMap::new();
    let mut provoked = false;
    let mut out = BytesMut::new();
    let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2);
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    loop {
        // Packets already buffered first.
        loop {
            match moat_mqtt::decode(&mut buf, VERSION, &limits) {
                Ok(Some(p)) => {
                    if let Some(end) = incoming(spec, p, shared, &mut inflight, &mut subs, &mut out)
                    {
                        return Some(end);
                    }
                }
                Ok(None) => break,
                Err(_) => return Some(EffectKind::ClosedByServer { provoked }),
            }
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                return Some(EffectKind::ClosedByServer { provoked });
            }
            out.clear();
        }
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else {
                    // The driver is gone: drop the socket.
                    return None;
                };
                match cmd {
                    Command::Publish { topic, size, count, allowed } => {
                        let Ok(name) = TopicName::parse(&topic) else { continue };
                        let size = (size as usize).min(MAX_PAYLOAD);
                        for k in 0..count {
                            let confirm = inflight.len() < MAX_INFLIGHT
                                && (count <= 20 || k + 1 == count);
                            let (qos, id) = if confirm {
                                let id = packet_id(&mut next_id);
                                inflight.insert(id.get(), (topic.clone(), allowed, now_ms()));
                                (QoS::AtLeastOnce, Some(id))
                            } else {
                                (QoS::AtMostOnce, None)
                            };
                            moat_mqtt::encode(
                                &Packet::Publish(Publish {
                                    dup: false,
                                    qos,
                                    retain: false,
                                    topic: Some(name.clone()),
                                    packet_id: id,
                                    properties: PublishProperties::default(),
                                    payload: shared.payload.slice(..size),
                                }),
                                VERSION,
                                &mut out,
                            );
                        }
                        shared.published.fetch_add(u64::from(count), Ordering::Relaxed);
                    }
                    Command::Subscribe(filter) => {
                        let id = packet_id(&mut next_id);
                        subs.insert(id.get(), filter.clone());
                        moat_mqtt::encode(
                            &Packet::Subscribe(Subscribe {
                                packet_id: id,
                                subscription_identifier: None,
                                user_properties: Vec::new(),
                                filters: vec![(filter, SubscriptionOptions {
                                    qos: QoS::AtLeastOnce,
                                    ..SubscriptionOptions::default()
                                })],
                            }),
                            VERSION,
                            &mut out,
                        );
                    }
                    Command::Probe(topic) => {
                        shared.record(spec.effect(EffectKind::Probe));
                        probe = Some((topic, 0, tokio::time::Instant::now()));
                    }
                    Command::Malformed => {
                        provoked = true;
                        // Packet type 0 is reserved (MQTT-2.1.2): a protocol error.
                        out.extend_from_slice(&[0x00, 0x00]);
                    }
                    Command::Close { graceful } => {
                        if graceful {
                            moat_mqtt::encode(
                                &Packet::Disconnect(Disconnect::with_reason(ReasonCode::Success)),
                                VERSION,
                                &mut out,
                            );
                            let _ = writer.write_all(&out).await;
                            let _ = writer.shutdown().await;
                        }
                        return None;
                    }
                }
            }
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => return Some(EffectKind::ClosedByServer { provoked }),
                    Ok(_) => {}
                }
            }
            _ = ping.tick() => {
                moat_mqtt::encode(&Packet::PingReq, VERSION, &mut out);
            }
            _ = check.tick() => {
                let now = now_ms();
                let oldest = inflight.values().map(|v| v.2).min();
                match oldest {
                    Some(sent) if now.saturating_sub(sent) >= ms(ACK_STALL) => {
                        if !stalled {
                            stalled = true;
                            let mut e = spec.effect(EffectKind::AcksStalled {
                                waited_ms: now.saturating_sub(sent),
                            });
                            e.time_ms = sent;
                            shared.record(e);
                        }
                    }
                    _ => stalled = false,
                }
            }
            _ = async {
                match &probe {
                    Some((_, k, t0)) => {
                        let delay = PROBE_DELAYS_MS.get(*k).copied().unwrap_or(0);
                        tokio::time::sleep_until(*t0 + Duration::from_millis(delay)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some((topic, k, t0)) = probe.take() {
                    if let Ok(name) = TopicName::parse(&topic)
                        && inflight.len() < MAX_INFLIGHT
                    {
                        let id = packet_id(&mut next_id);
                        inflight.insert(id.get(), (topic.clone(), true, now_ms()));
                        moat_mqtt::encode(
                            &Packet::Publish(Publish {
                                dup: false,
                                qos: QoS::AtLeastOnce,
                                retain: false,
                                topic: Some(name),
                                packet_id: Some(id),
                                properties: PublishProperties::default(),
                                payload: shared.payload.slice(..16),
                            }),
                            VERSION,
                            &mut out,
                        );
                    }
                    if k + 1 < PROBE_DELAYS_MS.len() {
                        probe = Some((topic, k + 1, t0));
                    }
                }
            }
        }
    }
}

/// Handles one packet from the hub; returns how the session ended, if it did.
fn incoming(
    spec: &Spec,
    p: Packet,
    shared: &Shared,
    inflight: &mut HashMap<u16, (String, bool, u64)>,
    subs: &mut HashMap<u16, String>,
    out: &mut BytesMut,
) -> Option<EffectKind> {
    match p {
        Packet::PubAck(ack) => {
            if let Some((topic, allowed, _)) = inflight.remove(&ack.packet_id.get())
                && ack.reason_code.is_error()
            {
                shared.record(spec.effect(EffectKind::PublishRefused {
                    code: ack.reason_code.as_u8(),
                    topic,
                    allowed,
                }));
            }
        }
        Packet::SubAck(ack) => {
            if let Some(filter) = subs.remove(&ack.packet_id.get()) {
                let kind = match ack.reason_codes.iter().find(|c| c.is_error()) {
                    Some(code) => EffectKind::SubscribeRefused {
                        code: code.as_u8(),
                        filter,
                    },
                    None => EffectKind::Subscribed { filter },
                };
                shared.record(spec.effect(kind));
            }
        }
        Packet::Publish(p) => {
            shared.received.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = p.packet_id
                && p.qos == QoS::AtLeastOnce
            {
                moat_mqtt::encode(&Packet::PubAck(PubResponse::success(id)), VERSION, out);
            }
            if spec.collect_alerts
                && p.topic
                    .as_ref()
                    .is_some_and(|t| t.as_str().starts_with("$moat/alerts/"))
                && p.payload.len() <= MAX_ALERT_BYTES
            {
                let mut a = shared.alerts.lock().unwrap_or_else(PoisonError::into_inner);
                if a.len() < MAX_ALERTS {
                    a.push((now_ms(), p.payload));
                }
                drop(a);
                shared.alert_arrived.notify_one();
            }
        }
        Packet::Disconnect(d) => {
            return Some(EffectKind::ServerDisconnect {
                code: d.reason_code.as_u8(),
            });
        }
        _ => {}
    }
    None
}

/// Opens a connection and stops: before the TLS handshake (`tls == None`) or after it,
/// before CONNECT. Records when the hub closed it.
pub fn spawn_stall(
    id: u64,
    hub: SocketAddr,
    source: IpAddr,
    tls: Option<Arc<ClientConfig>>,
    shared: Arc<Shared>,
) {
    tokio::spawn(async move {
        let t0 = now_ms();
        let effect = |kind| Effect {
            time_ms: now_ms(),
            conn: id,
            identity: None,
            client: None,
            address: source,
            kind,
        };
        let tcp = match tcp_from(source, hub).await {
            Ok(t) => t,
            Err(error) => {
                shared.record(effect(EffectKind::ConnectFailed { error }));
                return;
            }
        };
        let mut buf = [0u8; 1024];
        let waited = match tls {
            None => {
                let mut tcp = tcp;
                tokio::time::timeout(MAX_STALL, drain(&mut tcp, &mut buf)).await
            }
            Some(cfg) => {
                let Ok(name) = server_name() else { return };
                match TlsConnector::from(cfg).connect(name, tcp).await {
                    Ok(mut s) => tokio::time::timeout(MAX_STALL, drain(&mut s, &mut buf)).await,
                    Err(_) => Ok(()),
                }
            }
        };
        let _ = waited;
        shared.record(effect(EffectKind::StallClosed {
            after_ms: now_ms().saturating_sub(t0),
        }));
    });
}

async fn drain<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut [u8]) {
    loop {
        match s.read(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A TLS configuration trusting the CA certificate(s) in `ca`, with the client
/// certificate chain and key in `cert` and `key` if given.
pub fn tls_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let chain_key = match cert_key {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            Some((chain, key))
        }
        None => None,
    };
    tls_config_der(ca, chain_key)
}

/// As [`tls_config`], with the client certificate in DER.
pub fn tls_config_der(
    ca: &Path,
    chain_key: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match chain_key {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client certificate the hub does not trust: `cn` signed by a CA of its own
/// (`forged`), or self-signed.
pub fn untrusted_identity(
    cn: &str,
    forged: bool,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = if forged {
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Moat Issuing CA (forged)");
        let issuer = Issuer::from_params(&ca, &ca_key);
        params.signed_by(&key, &issuer).map_err(e)?
    } else {
        params.self_signed(&key).map_err(e)?
    };
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    Ok((vec![cert.der().clone()], der))
}

/// Probes an address after a ban: connection attempts (TLS without a client certificate)
/// from `source` at [`PROBE_DELAYS_MS`] until the hub closes one before TLS completes.
pub fn spawn_address_probe(
    id: u64,
    hub: SocketAddr,
    source: IpAddr,
    tls: Arc<ClientConfig>,
    shared: Arc<Shared>,
) {
    tokio::spawn(async move {
        let effect = |kind| Effect {
            time_ms: now_ms(),
            conn: id,
            identity: None,
            client: None,
            address: source,
            kind,
        };
        shared.record(effect(EffectKind::Probe));
        let t0 = tokio::time::Instant::now();
        for delay in PROBE_DELAYS_MS {
            tokio::time::sleep_until(t0 + Duration::from_millis(delay)).await;
            let Ok(tcp) = tcp_from(source, hub).await else {
                shared.record(effect(EffectKind::ClosedBeforeTls));
                return;
            };
            let Ok(name) = server_name() else { return };
            let attempt = tokio::time::timeout(
                CONNACK_TIMEOUT,
                TlsConnector::from(Arc::clone(&tls)).connect(name, tcp),
            )
            .await;
            if let Ok(Err(e)) = attempt
                && is_closed(&e)
            {
                shared.record(effect(EffectKind::ClosedBeforeTls));
                return;
            }
        }
    });
}
