//! Accept loops. Each accepted socket gets its own task, so TLS handshakes run off the
//! accept loop and spread over the runtime's worker threads (all cores).

use moat_broker::{Broker, Principal};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::driver::{self, Committed, DriverContext};
use crate::events::SecurityEvents;
use crate::shield::{Offender, Shield, ShieldGuard};
use crate::stats::{HandshakeFailure, NetStats};
use crate::transport::Stream;
use crate::ws;

/// Deadlines and bounds of the pre-MQTT phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// Longest a TLS handshake (and, for WebSocket, the upgrade) may take. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Longest from the end of the handshake to a complete CONNECT. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest one write to a client may take; a client that stops reading is disconnected
    /// after it. Default 30 s.
    pub write_timeout: Duration,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// A listener's TLS configuration, replaceable while it runs (CA rotation, new trust
/// anchors): each handshake uses the configuration current when it starts.
pub type TlsSlot = Arc<arc_swap::ArcSwap<ServerConfig>>;

/// A slot holding `config`.
pub fn tls_slot(config: Arc<ServerConfig>) -> TlsSlot {
    Arc::new(arc_swap::ArcSwap::new(config))
}

/// What a listener speaks.
#[derive(Clone)]
pub enum ListenerKind {
    /// MQTT over mutual TLS.
    MqttTls(TlsSlot),
    /// MQTT over WebSocket over mutual TLS, path `/mqtt`.
    MqttWss(TlsSlot),
    /// MQTT over plain TCP: only with an explicit `--danger-...` option. Without
    /// `allow_anonymous` every CONNECT is refused (there are no credentials to check yet).
    DangerPlaintext {
        /// Accept clients without credentials, unrestricted.
        allow_anonymous: bool,
    },
}

impl std::fmt::Debug for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MqttTls(_) => "MqttTls",
            Self::MqttWss(_) => "MqttWss",
            Self::DangerPlaintext { .. } => "DangerPlaintext",
        })
    }
}

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// The protocol stack on it.
    pub kind: ListenerKind,
}

/// Wall-clock milliseconds since the Unix epoch, which ban expiries are in.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Counts an authentication failure from `peer` against its address and, when the identity
/// was proven, against `device`; records the automatic bans that completes.
pub(crate) fn authentication_failed(ctx: &DriverContext, peer: SocketAddr, device: Option<&str>) {
    let now = std::time::Instant::now();
    let now_ms = now_ms();
    let offenders = std::iter::once(Offender::Address(peer.ip()))
        .chain(device.map(|d| Offender::Device(d.to_owned())));
    for offender in offenders {
        if let Some(ban) = ctx.shield.note_failure(offender, now, now_ms) {
            ctx.stats.auto_bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, offender = ?ban.offender, secs = ban.duration.as_secs(), "automatic ban");
            ctx.events.auto_banned(peer, &ban);
        }
    }
}

/// Accepts connections until `shutdown` turns true. Each accepted socket first passes the
/// `shield` (bans, rates, concurrent caps); a refused one is closed before any TLS work.
#[allow(clippy::too_many_arguments)] // each is a distinct part of the hub's wiring
pub async fn serve(
    listener: Listener,
    broker: Broker,
    limits: NetLimits,
    stats: Arc<NetStats>,
    committed: Committed,
    events: Arc<dyn SecurityEvents>,
    shield: Arc<Shield>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(DriverContext {
        broker,
        limits,
        stats,
        committed,
        events,
        shield,
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let guard = match ctx
            .shield
            .admit(peer.ip(), std::time::Instant::now(), now_ms())
        {
            Ok(guard) => guard,
            Err(refusal) => {
                // Closed at once: no task, no TLS, no log line per connection (a flood would
                // turn it into a log flood); the metric counts it.
                ctx.stats.refuse(refusal);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        ctx.events.connection_opened(peer);
        let ctx = Arc::clone(&ctx);
        let admission = Admission::new(Arc::clone(&ctx.stats), guard);
        let span = tracing::debug_span!("conn", %peer);
        // Each kind spawns its own future type, so a task is exactly as large as its
        // transport needs (a plaintext connection does not carry TLS or WebSocket state).
        match &listener.kind {
            ListenerKind::DangerPlaintext { allow_anonymous } => {
                let principal = if *allow_anonymous {
                    Principal::Anonymous
                } else {
                    Principal::Unauthenticated
                };
                tokio::spawn(
                    driver::run(Stream(tcp), peer, principal, ctx, admission).instrument(span),
                );
            }
            ListenerKind::MqttTls(slot) => {
                let config = slot.load_full();
                tokio::spawn(mqtt_tls(tcp, peer, config, ctx, admission).instrument(span));
            }
            ListenerKind::MqttWss(slot) => {
                let config = slot.load_full();
                tokio::spawn(mqtt_wss(tcp, peer, config, ctx, admission).instrument(span));
            }
        }
    }
}

/// A connection's admission: counted in `open` while it lives, and holding its address's
/// concurrent slot in the shield. It travels inside the connection's own future and is
/// released when that ends: wrapping the future in another one to do the counting would
/// store the connection's future twice in its task.
pub(crate) struct Admission {
    stats: Arc<NetStats>,
    _slot: ShieldGuard,
}

impl Admission {
    fn new(stats: Arc<NetStats>, slot: ShieldGuard) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self { stats, _slot: slot }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // The slot (a field) is freed right after this.
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

// `mqtt_tls` and `mqtt_wss` return `async move` blocks rather than being `async fn`s, which
// would keep each argument twice in the connection's task (see `driver::run`).

#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
fn mqtt_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    ctx: Arc<DriverContext>,
    admission: Admission,
) -> impl Future<Output = ()> {
    async move {
        let Some((tls, principal)) = Box::pin(handshake(tcp, peer, config, &ctx)).await else {
            return;
        };
        driver::run(Stream(tls), peer, principal, ctx, admission).await;
    }
}

#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
fn mqtt_wss(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    ctx: Arc<DriverContext>,
    admission: Admission,
) -> impl Future<Output = ()> {
    async move {
        let deadline = tokio::time::Instant::now() + ctx.limits.tls_handshake_timeout;
        let Some((tls, principal)) = Box::pin(handshake(tcp, peer, config, &ctx)).await else {
            return;
        };
        let max = usize::try_from(ctx.broker.config().max_packet_size).unwrap_or(usize::MAX);
        match tokio::time::timeout_at(deadline, Box::pin(ws::accept(tls, max))).await {
            Ok(Ok(ws)) => driver::run(ws, peer, principal, ctx, admission).await,
            Ok(Err(e)) => {
                ctx.stats.fail(HandshakeFailure::WebSocket);
                ctx.events
                    .handshake_failed(peer, &format!("websocket upgrade refused: {e}"));
                tracing::debug!(%peer, error = %e, "websocket upgrade refused");
            }
            Err(_) => {
                ctx.stats.fail(HandshakeFailure::Timeout);
                ctx.events.deadline_missed(peer, "WebSocket upgrade");
            }
        }
    }
}

/// Whether a failed handshake is an authentication failure (a client certificate refused or
/// missing), as opposed to a network or protocol problem (a port scan, a health check that
/// closes at once, an old TLS version), which does not count towards an automatic ban.
fn is_authentication_failure(e: &std::io::Error) -> bool {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
}

/// The TLS handshake and the identity it proves.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    ctx: &DriverContext,
) -> Option<(Box<tokio_rustls::server::TlsStream<TcpStream>>, Principal)> {
    // One deadline for the whole handshake, however the client trickles its bytes: a
    // slow-loris cannot extend it by sending a byte now and then.
    let accept = TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(ctx.limits.tls_handshake_timeout, accept).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            ctx.stats.fail(HandshakeFailure::Tls);
            tracing::debug!(error = %e, "TLS handshake failed");
            ctx.events.handshake_failed(peer, &e.to_string());
            if is_authentication_failure(&e) {
                authentication_failed(ctx, peer, None);
            }
            return None;
        }
        Err(_) => {
            ctx.stats.fail(HandshakeFailure::Timeout);
            ctx.events.handshake_failed(peer, "TLS handshake timed out");
            return None;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    // The verifier requires a client certificate, so a missing one is unreachable; it is
    // still handled as a failure rather than trusted.
    let Some(leaf) = leaf else {
        ctx.stats.fail(HandshakeFailure::Identity);
        return None;
    };
    match moat_pki::device_id_from_certificate(leaf) {
        Ok(id) => Some((tls, Principal::Device(id))),
        Err(e) => {
            ctx.stats.fail(HandshakeFailure::Identity);
            tracing::info!(error = %e, "certificate names no valid device");
            ctx.events
                .handshake_failed(peer, &format!("certificate names no valid device: {e}"));
            authentication_failed(ctx, peer, None);
            None
        }
    }
}
