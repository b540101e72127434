//! Behaviour monitoring and automatic responses (issue 4): one task owns moat-detect's
//! [`Engine`], fed with the security facts the hub sees (a bounded queue) and, every
//! second, with the broker's per-connection traffic counts. What the engine says is stored
//! (`alerts` in the registry), audited, executed (the response ladder) and sent to the
//! alert sinks (the `$moat/alerts/...` MQTT topics, JSON log lines, metrics).
//!
//! Responses and where they act:
//!
//! | rung | executed as | undone by a release |
//! |---|---|---|
//! | alert | nothing | — |
//! | throttle | the device's quota tightened to the alert's rate × `throttle_factor` | yes |
//! | read_only | publishes refused (policy decisions still apply to the rest) | yes |
//! | quarantine | the `quarantine` policy alone, in place of the device's policies | yes |
//! | disconnect | live sessions closed (DISCONNECT 0x98 Administrative action) | nothing to undo |
//! | revoke_certificate | the device revoked (its certificates on the CRL, sessions closed) | **no**: revocation is permanent; the device re-enrolls |
//! | ban_address | a ban of the address with the alert's time box as expiry | yes (the ban is removed) |
//!
//! Trust boundary: facts describe untrusted peers. The queue is bounded
//! ([`FACT_QUEUE`]); facts that do not fit are dropped and counted, never waited for, so
//! a flood cannot slow the packet path. The engine bounds its own tables.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moat_audit::{Entry, Outcome};
use moat_broker::{Broker, Principal, ReasonCode, Traffic};
use moat_detect::{
    Alert, DetectConfig, Detector, DisconnectCause, Engine, Event, EventKind, GroupName, Output,
    ProtocolFault, RefusedReason, Release, Response, Side, Source, TlsFailure, TrafficSummary,
};
use moat_store::registry::{AlertRecord, AlertState, NewAlert, Registry};
use moat_types::{ClientId, DeviceId, TopicFilter, TopicName};
use tokio::sync::{mpsc, watch};

use crate::identity::{AuditSink, now_ms};

/// Facts waiting for the engine. 65,536 (a few MB); when full, new facts are dropped and
/// counted in `moat_defence_facts_dropped_total`.
pub const FACT_QUEUE: usize = 65_536;

/// How often traffic is collected and the engine's windows advance.
pub const TICK: Duration = Duration::from_secs(1);

/// One thing the hub saw, owned, on its way to the engine.
#[derive(Debug, Clone)]
pub(crate) struct Fact {
    pub at_ms: u64,
    pub peer: SocketAddr,
    /// The broker's connection id (0 before CONNECT was accepted).
    pub connection: u64,
    pub device: Option<DeviceId>,
    pub client: Option<ClientId>,
    pub kind: FactKind,
}

/// What happened.
#[derive(Debug, Clone)]
pub(crate) enum FactKind {
    /// A connection passed the shield and begins its handshake.
    Opened,
    /// The peer closed it after the handshake, before a complete CONNECT, breaking no rule.
    ClosedBeforeConnect,
    TlsFailed(TlsFailure),
    HandshakeTimeout,
    ConnectTimeout,
    Refused(RefusedReason),
    Accepted,
    Disconnected {
        cause: DisconnectCause,
        connected_ms: u64,
    },
    ProtocolError(ProtocolFault),
    Denied {
        action: moat_detect::Action,
        topic: String,
    },
    FirstTopic(TopicName),
    Subscribed(TopicFilter),
    /// An operator confirmed the engine's alert with this id (`Engine::confirm`: its episode
    /// is not learned as the device's normal).
    Confirmed(u64),
}

/// A device-scoped response in force, as the policy authorizer applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Applied {
    /// At most this many messages per second.
    Throttle(u32),
    /// Publishes refused.
    ReadOnly,
    /// The `quarantine` policy alone.
    Quarantine,
    /// Connections closed and refused.
    Blocked,
}

/// The mitigations in force per device (per alert, so that releasing one alert leaves the
/// others' in force), read by the policy authorizer at every bind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Mitigations {
    by_device: HashMap<String, BTreeMap<u64, Applied>>,
}

/// What the authorizer applies to one device: the harshest of each kind in force.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mitigation {
    pub blocked: bool,
    pub quarantine: bool,
    pub read_only: bool,
    /// Messages per second allowed, when throttled.
    pub throttle: Option<u32>,
}

impl Mitigations {
    /// The combined mitigation of `device`, if any is in force.
    pub(crate) fn of(&self, device: &str) -> Option<Mitigation> {
        let applied = self.by_device.get(device)?;
        let mut m = Mitigation::default();
        for a in applied.values() {
            match a {
                Applied::Blocked => m.blocked = true,
                Applied::Quarantine => m.quarantine = true,
                Applied::ReadOnly => m.read_only = true,
                Applied::Throttle(rate) => {
                    m.throttle = Some(m.throttle.map_or(*rate, |t| t.min(*rate)));
                }
            }
        }
        Some(m)
    }
}

/// The handle the rest of the hub holds.
#[derive(Debug, Clone)]
pub(crate) struct Defence {
    tx: mpsc::Sender<Fact>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dropped: AtomicU64,
    alerts: [AtomicU64; Detector::ALL.len()],
    responses_executed: AtomicU64,
    releases: AtomicU64,
    /// Engine alert id → registry id, for alerts whose response is in force.
    active: Mutex<HashMap<u64, Active>>,
    /// The update campaigns' per-device security signals, fed from the facts taken off the
    /// queue (off the packet path).
    signals: std::sync::OnceLock<Arc<crate::ota::signals::SignalTracker>>,
}

#[derive(Debug, Clone)]
struct Active {
    registry_id: u64,
    response: Response,
    device: Option<DeviceId>,
    ban: Option<String>,
}

impl Defence {
    /// A handle and the receiving end for [`run`].
    pub(crate) fn new() -> (Self, mpsc::Receiver<Fact>) {
        let (tx, rx) = mpsc::channel(FACT_QUEUE);
        (
            Self {
                tx,
                shared: Arc::new(Shared {
                    dropped: AtomicU64::new(0),
                    alerts: std::array::from_fn(|_| AtomicU64::new(0)),
                    responses_executed: AtomicU64::new(0),
                    releases: AtomicU64::new(0),
                    active: Mutex::new(HashMap::new()),
                    signals: std::sync::OnceLock::new(),
                }),
            },
            rx,
        )
    }

    /// Queues a fact; never waits.
    /// Feeds the update campaigns' signal tracker from now on (first call only).
    pub(crate) fn set_signal_tracker(&self, tracker: Arc<crate::ota::signals::SignalTracker>) {
        let _ = self.shared.signals.set(tracker);
    }

    pub(crate) fn report(&self, fact: Fact) {
        if self.tx.try_send(fact).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Metrics: facts dropped, alerts by detector, responses executed, releases, webhook
    /// deliveries.
    pub(crate) fn render_metrics(
        &self,
        out: &mut String,
        webhook: Option<&crate::webhook::Webhook>,
    ) {
        use std::fmt::Write;
        let s = &self.shared;
        let _ = writeln!(
            out,
            "# HELP moat_defence_facts_dropped_total Security facts dropped because the detection queue was full.\n# TYPE moat_defence_facts_dropped_total counter\nmoat_defence_facts_dropped_total {}",
            s.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP moat_alerts_total Alerts raised, by detector.\n# TYPE moat_alerts_total counter"
        );
        for d in Detector::ALL {
            let _ = writeln!(
                out,
                "moat_alerts_total{{detector=\"{}\"}} {}",
                d.as_str(),
                s.alerts[d as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP moat_responses_executed_total Automatic responses executed (rungs above alert).\n# TYPE moat_responses_executed_total counter\nmoat_responses_executed_total {}",
            s.responses_executed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP moat_responses_released_total Responses released (by the engine or an operator).\n# TYPE moat_responses_released_total counter\nmoat_responses_released_total {}",
            s.releases.load(Ordering::Relaxed)
        );
        if let Some(w) = webhook {
            let _ = writeln!(
                out,
                "# HELP moat_alert_webhook_total Alerts sent to the webhook, by result (failed: queue full or every attempt failed).\n# TYPE moat_alert_webhook_total counter\nmoat_alert_webhook_total{{result=\"delivered\"}} {}\nmoat_alert_webhook_total{{result=\"failed\"}} {}",
                w.stats.delivered.load(Ordering::Relaxed),
                w.stats.failed.load(Ordering::Relaxed)
            );
        }
    }
}

/// What the defence task acts through.
#[derive(Debug, Clone)]
pub(crate) struct Actors {
    pub broker: Broker,
    pub identity: Arc<crate::identity::Identity>,
    pub registry: Arc<Registry>,
    pub audit: AuditSink,
    pub bans: Arc<crate::bans::Bans>,
    /// The signed webhook sink, if configured.
    pub webhook: Option<crate::webhook::Webhook>,
    /// Per-device message rates, fed from the traffic counts this task collects.
    pub rates: Arc<crate::rates::DeviceRates>,
}

/// Runs the engine until `stop` turns true.
///
/// A new value of `config` (configuration reload) is put in force without losing what was
/// learned (`Engine::reconfigure`).
pub(crate) async fn run(
    defence: Defence,
    mut config: watch::Receiver<DetectConfig>,
    mut rx: mpsc::Receiver<Fact>,
    actors: Actors,
    mut stop: watch::Receiver<bool>,
) {
    let initial = config.borrow_and_update().clone();
    let mut engine = match Engine::new(initial) {
        Ok(e) => e,
        Err(errors) => {
            // The configuration was validated at start; this is a bug, not an input.
            for e in errors {
                tracing::error!(error = %e, "detection disabled: invalid configuration");
            }
            return;
        }
    };
    let mut live = LiveConnections::default();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                for mut fact in batch.drain(..) {
                    if let FactKind::Confirmed(alert_id) = fact.kind {
                        engine.confirm(alert_id);
                        continue;
                    }
                    live.complete(&mut fact, &actors.identity);
                    if let Some(t) = defence.shared.signals.get() {
                        t.observe(&fact);
                    }
                    let group = live.group_of(fact.device.as_ref());
                    observe_fact(&mut engine, &fact, group, &mut out);
                }
            }
            _ = interval.tick() => {
                let now = now_ms();
                let mut traffic: Vec<(DeviceId, ClientId, u64, Traffic)> = Vec::new();
                actors.broker.collect_traffic(|client, conn, principal, t| {
                    if let Principal::Device(d) = principal {
                        traffic.push((d.clone(), client.clone(), conn, t));
                    }
                });
                actors.rates.record(
                    now,
                    traffic
                        .iter()
                        .map(|(d, _, _, t)| (d.as_str(), t.msgs_in, t.msgs_out, t.held_ms)),
                );
                for (device, client, conn, t) in &traffic {
                    let address = live.address_of(*conn);
                    let group = live.group_of(Some(device));
                    observe_traffic(
                        &mut engine,
                        now,
                        (device, client, *conn, address, group),
                        t,
                        &mut out,
                    );
                }
                engine.tick(now, &mut out);
            }
            Ok(()) = config.changed() => {
                let next = config.borrow_and_update().clone();
                match engine.reconfigure(next) {
                    Ok(waiting) if waiting.is_empty() => tracing::info!("detection reconfigured"),
                    Ok(waiting) => tracing::warn!(?waiting, "detection reconfigured; these wait for a restart"),
                    Err(errors) => {
                        for e in errors {
                            tracing::error!(error = %e, "detection configuration refused; the previous one stays");
                        }
                    }
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        for output in out.drain(..) {
            handle_output(&defence, &actors, output).await;
        }
    }
}

/// Most live connections whose address is remembered; beyond it the oldest are forgotten
/// (their facts then carry the unspecified address). Twice the default connection limit
/// of one hub is far more than one process serves.
pub const MAX_LIVE_CONNECTIONS: usize = 1 << 20;

/// Addresses of live connections, so that facts from the broker's packet path (which knows
/// the device, not the socket) and traffic counts carry the connection's real address.
#[derive(Debug, Default)]
struct LiveConnections {
    by_connection: HashMap<u64, IpAddr>,
    /// The latest connection of each device.
    by_device: HashMap<DeviceId, u64>,
    /// Groups of connected devices (looked up at CONNECT), so that the engine applies its
    /// group priors, drift and exemptions.
    groups: HashMap<DeviceId, GroupName>,
}

impl LiveConnections {
    fn complete(&mut self, fact: &mut Fact, identity: &crate::identity::Identity) {
        match fact.kind {
            FactKind::Accepted if fact.connection != 0 => {
                if self.by_connection.len() >= MAX_LIVE_CONNECTIONS {
                    self.by_connection.clear();
                    self.by_device.clear();
                    self.groups.clear();
                }
                self.by_connection
                    .insert(fact.connection, fact.peer.ip().to_canonical());
                if let Some(d) = &fact.device {
                    self.by_device.insert(d.clone(), fact.connection);
                    match identity
                        .group_of(d.as_str())
                        .and_then(|g| GroupName::parse(&g).ok())
                    {
                        Some(g) => {
                            self.groups.insert(d.clone(), g);
                        }
                        None => {
                            self.groups.remove(d);
                        }
                    }
                }
            }
            FactKind::Disconnected { .. } if fact.connection != 0 => {
                self.by_connection.remove(&fact.connection);
                if let Some(d) = &fact.device
                    && self.by_device.get(d) == Some(&fact.connection)
                {
                    self.by_device.remove(d);
                    self.groups.remove(d);
                }
            }
            _ if fact.peer == UNKNOWN_PEER => {
                if let Some(conn) = fact.device.as_ref().and_then(|d| self.by_device.get(d)) {
                    fact.connection = *conn;
                    if let Some(ip) = self.by_connection.get(conn) {
                        fact.peer = SocketAddr::new(*ip, 0);
                    }
                }
            }
            _ => {}
        }
    }

    fn group_of(&self, device: Option<&DeviceId>) -> Option<&GroupName> {
        device.and_then(|d| self.groups.get(d))
    }

    fn address_of(&self, connection: u64) -> IpAddr {
        self.by_connection
            .get(&connection)
            .copied()
            .unwrap_or(UNKNOWN_PEER.ip())
    }
}

fn observe_fact(
    engine: &mut Engine,
    fact: &Fact,
    group: Option<&GroupName>,
    out: &mut Vec<Output>,
) {
    let source = Source {
        connection: fact.connection,
        address: fact.peer.ip().to_canonical(),
        device: fact.device.as_ref(),
        client: fact.client.as_ref(),
        group,
    };
    let kind = match &fact.kind {
        FactKind::Opened => EventKind::ConnectAttempt,
        FactKind::ClosedBeforeConnect => EventKind::ClosedBeforeConnect,
        FactKind::TlsFailed(reason) => EventKind::TlsHandshakeFailed { reason: *reason },
        FactKind::HandshakeTimeout => EventKind::HandshakeTimeout,
        FactKind::ConnectTimeout => EventKind::ConnectTimeout,
        FactKind::Refused(reason) => EventKind::ConnectRefused { reason: *reason },
        FactKind::Accepted => EventKind::ConnectAccepted,
        FactKind::Disconnected {
            cause,
            connected_ms,
        } => EventKind::Disconnected {
            cause: *cause,
            connected_ms: *connected_ms,
        },
        FactKind::ProtocolError(fault) => EventKind::ProtocolError { fault: *fault },
        FactKind::Denied { action, topic } => EventKind::AuthorizationDenied {
            action: *action,
            topic,
        },
        FactKind::FirstTopic(topic) => EventKind::FirstTopic {
            topic,
            side: Side::Publish,
        },
        FactKind::Subscribed(filter) => EventKind::Subscribed { filter },
        // Handled by `run` before it gets here.
        FactKind::Confirmed(_) => return,
    };
    engine.observe(
        &Event {
            time_ms: fact.at_ms,
            source,
            kind,
        },
        out,
    );
}

fn observe_traffic(
    engine: &mut Engine,
    now: u64,
    (device, client, connection, address, group): (
        &DeviceId,
        &ClientId,
        u64,
        IpAddr,
        Option<&GroupName>,
    ),
    t: &Traffic,
    out: &mut Vec<Output>,
) {
    let summary = TrafficSummary {
        interval_ms: TICK.as_millis() as u32,
        msgs_published: t.msgs_in,
        bytes_published: t.bytes_in,
        msgs_delivered: t.msgs_out,
        bytes_delivered: t.bytes_out,
        held_ms: t.held_ms,
        size_histogram: t.size_histogram,
        max_payload: t.max_payload,
    };
    engine.observe(
        &Event {
            time_ms: now,
            source: Source {
                connection,
                address,
                device: Some(device),
                client: Some(client),
                group,
            },
            kind: EventKind::Traffic(summary),
        },
        out,
    );
}

async fn handle_output(defence: &Defence, actors: &Actors, output: Output) {
    match output {
        Output::Alert(alert) => raise(defence, actors, alert).await,
        Output::Release(release) => release_by_engine(defence, actors, release).await,
    }
}

fn rung_name(r: &Response) -> &'static str {
    match r {
        Response::Alert => "alert",
        Response::Throttle { .. } => "throttle",
        Response::ReadOnly => "read_only",
        Response::Quarantine => "quarantine",
        Response::Disconnect => "disconnect",
        Response::RevokeCertificate => "revoke_certificate",
        Response::BanAddress => "ban_address",
    }
}

async fn raise(defence: &Defence, actors: &Actors, alert: Alert) {
    let s = &defence.shared;
    s.alerts[alert.detector as usize].fetch_add(1, Ordering::Relaxed);
    let body = serde_json::to_string(&alert).unwrap_or_else(|_| "{}".to_owned());
    let device = alert.device.as_ref().map(|d| d.as_str().to_owned());
    let address = alert.address.map(|a| a.to_string());
    let record = NewAlert {
        time_ms: alert.time_ms,
        detector: alert.detector.as_str(),
        severity: severity_name(alert.severity),
        device: device.as_deref(),
        address: address.as_deref(),
        response: rung_name(&alert.response),
        body: &body,
    };
    let registry = actors.registry.clone();
    let stored = {
        let record = NewAlertOwned::from(&record);
        tokio::task::spawn_blocking(move || registry.add_alert(&record.borrow())).await
    };
    let registry_id = match stored {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store an alert; its response still runs");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "alert store task failed");
            0
        }
    };
    // The JSON log line is one of the sinks: one object per alert.
    tracing::warn!(target: "moat::alert", alert_id = registry_id, alert = %body, "security alert");
    let envelope = format!("{{\"id\":{registry_id},\"alert\":{body}}}");
    publish_alert(&actors.broker, &alert, &envelope);
    if let Some(webhook) = &actors.webhook {
        webhook.send(envelope.into_bytes());
    }
    let entry = Entry::new(
        alert.time_ms,
        "detect",
        "alert.raised",
        alert_subject(&alert),
        Outcome::Success,
    )
    .with("alert", registry_id)
    .with("detector", alert.detector.as_str())
    .with("severity", severity_name(alert.severity))
    .with("response", rung_name(&alert.response))
    .with("intended", rung_name(&alert.intended))
    .with("feature", alert.explanation.feature)
    .with("observed", alert.explanation.observed)
    .with("threshold", alert.explanation.threshold);
    actors.audit.record(entry);

    // An escalation replaces the response of the alert it escalates: the engine will only
    // release the new one.
    if let Some(previous) = alert.escalates
        && let Some(superseded) = undo(actors, defence, previous).await
    {
        let registry = actors.registry.clone();
        let id = superseded.registry_id;
        let _ = tokio::task::spawn_blocking(move || {
            registry.set_alert_state(id, AlertState::Released, "detect", now_ms())
        })
        .await;
        actors.audit.record(
            Entry::new(
                now_ms(),
                "detect",
                "response.superseded",
                alert_subject(&alert),
                Outcome::Success,
            )
            .with("alert", id)
            .with("by_alert", registry_id),
        );
    }
    let ban = if alert.response == Response::Alert {
        // Nothing to execute; remembered so that the engine's release closes it too.
        None
    } else {
        s.responses_executed.fetch_add(1, Ordering::Relaxed);
        execute(actors, &alert, registry_id).await
    };
    let mut active = s.active.lock().unwrap_or_else(PoisonError::into_inner);
    // Executed responses are always remembered (they must be undone); alert-only ones only
    // while the table has room (the engine's incidents are bounded the same way).
    if alert.response != Response::Alert || active.len() < MAX_ACTIVE_ALERTS {
        active.insert(
            alert.id,
            Active {
                registry_id,
                response: alert.response,
                device: alert.device.clone(),
                ban,
            },
        );
    }
}

/// Alerts remembered until the engine releases them: twice the engine's default incident
/// limit.
pub const MAX_ACTIVE_ALERTS: usize = 131_072;

/// Owned copy of a [`NewAlert`] to move into a blocking task.
struct NewAlertOwned {
    time_ms: u64,
    detector: String,
    severity: String,
    device: Option<String>,
    address: Option<String>,
    response: String,
    body: String,
}

impl NewAlertOwned {
    fn from(a: &NewAlert<'_>) -> Self {
        Self {
            time_ms: a.time_ms,
            detector: a.detector.to_owned(),
            severity: a.severity.to_owned(),
            device: a.device.map(str::to_owned),
            address: a.address.map(str::to_owned),
            response: a.response.to_owned(),
            body: a.body.to_owned(),
        }
    }

    fn borrow(&self) -> NewAlert<'_> {
        NewAlert {
            time_ms: self.time_ms,
            detector: &self.detector,
            severity: &self.severity,
            device: self.device.as_deref(),
            address: self.address.as_deref(),
            response: &self.response,
            body: &self.body,
        }
    }
}

fn severity_name(s: moat_detect::Severity) -> &'static str {
    match s {
        moat_detect::Severity::Low => "low",
        moat_detect::Severity::Medium => "medium",
        moat_detect::Severity::High => "high",
        moat_detect::Severity::Critical => "critical",
    }
}

fn alert_subject(alert: &Alert) -> String {
    match (&alert.device, alert.address) {
        (Some(d), _) => format!("device:{d}"),
        (None, Some(a)) => format!("address:{a}"),
        (None, None) => "fleet".to_owned(),
    }
}

/// The MQTT sink: `$moat/alerts/{detector}`, QoS 0, the alert's JSON with its registry id.
/// Only identities whose policies grant `$moat/alerts/...` receive it (`#` does not match
/// `$` topics).
fn publish_alert(broker: &Broker, alert: &Alert, envelope: &str) {
    let topic = format!("$moat/alerts/{}", alert.detector.as_str());
    let Ok(topic) = TopicName::parse(&topic) else {
        return;
    };
    broker.publish_internal(
        topic,
        envelope.as_bytes().to_vec().into(),
        moat_types::Timestamp::now(),
    );
}

/// Executes the alert's response; returns the id of a ban it added.
async fn execute(actors: &Actors, alert: &Alert, registry_id: u64) -> Option<String> {
    let subject = alert_subject(alert);
    let mut ban = None;
    let outcome: Result<String, String> = match (&alert.response, &alert.device) {
        (Response::Throttle { .. } | Response::ReadOnly | Response::Quarantine, Some(device)) => {
            let applied = match alert.response {
                Response::Throttle { factor } => {
                    // The rate allowed: the alert's reference rate (the learned baseline's
                    // typical value, else the threshold crossed) times the factor, at least
                    // one message a second.
                    let base = alert
                        .explanation
                        .baseline
                        .as_ref()
                        .map_or(alert.explanation.threshold, |b| b.typical);
                    Applied::Throttle((base * f64::from(factor)).ceil().clamp(1.0, 1e9) as u32)
                }
                Response::ReadOnly => Applied::ReadOnly,
                _ => Applied::Quarantine,
            };
            set_mitigation(actors, device, alert.id, Some(applied));
            Ok(format!("{applied:?} applied to live sessions"))
        }
        (Response::Disconnect, Some(device)) => {
            // Closed, and refused at CONNECT until released.
            let n = set_mitigation(actors, device, alert.id, Some(Applied::Blocked));
            Ok(format!(
                "{n} session(s) closed; reconnection refused until released"
            ))
        }
        (Response::RevokeCertificate, Some(device)) => actors
            .identity
            .set_status(
                "detect",
                device,
                moat_store::registry::DeviceStatus::Revoked,
                &format!("automatic response to alert {registry_id}"),
            )
            .await
            .map(|n| format!("device revoked, {n} session(s) closed"))
            .map_err(|e| e.to_string()),
        (Response::BanAddress, _) => match alert.address.filter(|a| !a.is_unspecified()) {
            Some(address) => {
                let reason = format!(
                    "auto: alert {registry_id} ({}, {})",
                    alert.detector.as_str(),
                    alert.explanation.feature
                );
                let secs = alert
                    .until_ms
                    .saturating_sub(now_ms())
                    .div_ceil(1000)
                    .max(1);
                match actors
                    .bans
                    .add(
                        "detect",
                        moat_store::registry::BanKind::Address,
                        &address.to_string(),
                        Some(Duration::from_secs(secs)),
                        &reason,
                    )
                    .await
                {
                    Ok((record, closed)) => {
                        ban = record["id"].as_str().map(str::to_owned);
                        Ok(format!(
                            "ban {} for {secs} s, {closed} connection(s) closed",
                            ban.as_deref().unwrap_or("?")
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Err("the alert names no address".to_owned()),
        },
        (_, None) => Err("the alert names no device".to_owned()),
        (Response::Alert, _) => Ok(String::new()),
    };
    let (result, detail) = match outcome {
        Ok(d) => (Outcome::Success, d),
        Err(e) => {
            tracing::error!(alert = registry_id, error = %e, "automatic response failed");
            (Outcome::Error, e)
        }
    };
    actors.audit.record(
        Entry::new(now_ms(), "detect", "response.executed", subject, result)
            .with("alert", registry_id)
            .with("response", rung_name(&alert.response))
            .with("detail", detail),
    );
    ban
}

/// Sets (or, with `None`, removes) the mitigation of one alert on `device`, then re-binds
/// live sessions; returns how many connections that closed.
fn set_mitigation(
    actors: &Actors,
    device: &DeviceId,
    alert_id: u64,
    applied: Option<Applied>,
) -> usize {
    let cell = &actors.identity.mitigations;
    let mut next = Mitigations::clone(&cell.load());
    match applied {
        Some(a) => {
            next.by_device
                .entry(device.as_str().to_owned())
                .or_default()
                .insert(alert_id, a);
        }
        None => {
            if let Some(m) = next.by_device.get_mut(device.as_str()) {
                m.remove(&alert_id);
                if m.is_empty() {
                    next.by_device.remove(device.as_str());
                }
            }
        }
    }
    cell.store(Arc::new(next));
    actors.broker.reauthorize(ReasonCode::AdministrativeAction)
}

/// Undoes the response of engine alert `alert_id`, if it is in force; returns what it was.
async fn undo(actors: &Actors, defence: &Defence, alert_id: u64) -> Option<Active> {
    let active = defence
        .shared
        .active
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&alert_id)?;
    if active.response != Response::Alert {
        defence.shared.releases.fetch_add(1, Ordering::Relaxed);
    }
    match (&active.response, &active.device) {
        (
            Response::Throttle { .. }
            | Response::ReadOnly
            | Response::Quarantine
            | Response::Disconnect,
            Some(d),
        ) => {
            set_mitigation(actors, d, alert_id, None);
        }
        (Response::BanAddress, _) => {
            if let Some(ban) = &active.ban
                && let Err(e) = actors.bans.remove("detect", ban).await
            {
                tracing::warn!(ban = %ban, error = %e, "cannot remove an automatic ban");
            }
        }
        _ => {}
    }
    Some(active)
}

async fn release_by_engine(defence: &Defence, actors: &Actors, release: Release) {
    // Already released by an operator, or superseded by an escalation.
    let Some(active) = undo(actors, defence, release.alert_id).await else {
        return;
    };
    let registry = actors.registry.clone();
    let id = active.registry_id;
    let _ = tokio::task::spawn_blocking(move || {
        registry.set_alert_state(id, AlertState::Released, "detect", now_ms())
    })
    .await;
    actors.audit.record(
        Entry::new(
            release.time_ms,
            "detect",
            "response.released",
            match (&release.device, release.address) {
                (Some(d), _) => format!("device:{d}"),
                (None, Some(a)) => format!("address:{a}"),
                (None, None) => "fleet".to_owned(),
            },
            Outcome::Success,
        )
        .with("alert", id)
        .with("response", rung_name(&active.response))
        .with("why", &release.why),
    );
}

/// What an operator does with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep the response; the alert is confirmed.
    Confirm,
    /// End the response now.
    Release,
    /// End the response; the alert was wrong.
    FalsePositive,
}

impl Defence {
    /// Applies an operator's verdict on registry alert `id`; returns the alert as it is now.
    pub(crate) async fn verdict(
        &self,
        actors: &Actors,
        actor: &str,
        id: u64,
        verdict: Verdict,
    ) -> Result<Option<AlertRecord>, crate::identity::IdentityError> {
        let state = match verdict {
            Verdict::Confirm => AlertState::Confirmed,
            Verdict::Release => AlertState::Released,
            Verdict::FalsePositive => AlertState::FalsePositive,
        };
        let registry = actors.registry.clone();
        let actor_owned = actor.to_owned();
        let before = tokio::task::spawn_blocking(move || {
            registry.set_alert_state(id, state, &actor_owned, now_ms())
        })
        .await
        .map_err(|e| crate::identity::IdentityError::Internal(e.to_string()))??;
        let Some(before) = before else {
            return Ok(None);
        };
        let engine_id = self
            .shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(_, a)| a.registry_id == id)
            .map(|(k, _)| *k);
        if verdict != Verdict::Confirm && before.state.is_active() {
            if let Some(engine_id) = engine_id {
                undo(actors, self, engine_id).await;
            }
        } else if verdict == Verdict::Confirm
            && let Some(engine_id) = engine_id
        {
            // The engine must not learn a confirmed episode as the device's normal.
            self.report(Fact {
                at_ms: now_ms(),
                peer: UNKNOWN_PEER,
                connection: 0,
                device: None,
                client: None,
                kind: FactKind::Confirmed(engine_id),
            });
        }
        actors.audit.record(
            Entry::new(
                now_ms(),
                actor,
                match verdict {
                    Verdict::Confirm => "alert.confirm",
                    Verdict::Release => "alert.release",
                    Verdict::FalsePositive => "alert.false_positive",
                },
                format!("alert:{id}"),
                Outcome::Success,
            )
            .with("detector", &before.detector)
            .with("previous_state", before.state.as_str()),
        );
        let registry = actors.registry.clone();
        Ok(tokio::task::spawn_blocking(move || registry.alert(id))
            .await
            .map_err(|e| crate::identity::IdentityError::Internal(e.to_string()))??)
    }
}

/// The defence as the API sees it.
#[derive(Debug, Clone)]
pub(crate) struct DefenceHandle {
    pub defence: Defence,
    pub actors: Actors,
}

/// The broker's packet-level facts (first-seen topics, subscriptions) on their way to the
/// engine.
#[derive(Debug, Clone)]
pub(crate) struct BrokerFacts(pub Defence);

impl BrokerFacts {
    /// Reports what a device's connection did; the task fills in its connection and address.
    fn device_fact(&self, client: &ClientId, principal: &Principal, kind: FactKind) {
        if let Principal::Device(device) = principal {
            self.0.report(Fact {
                at_ms: now_ms(),
                peer: UNKNOWN_PEER,
                connection: 0,
                device: Some(device.clone()),
                client: Some(client.clone()),
                kind,
            });
        }
    }
}

impl moat_broker::Observer for BrokerFacts {
    fn first_topic(&self, client: &ClientId, principal: &Principal, topic: &TopicName) {
        self.device_fact(client, principal, FactKind::FirstTopic(topic.clone()));
    }

    fn subscribed(&self, client: &ClientId, principal: &Principal, filter: &TopicFilter) {
        self.device_fact(client, principal, FactKind::Subscribed(filter.clone()));
    }
}

/// The peer of facts reported from where the address is not at hand (the broker's packet
/// path); the engine keys those on the device.
pub(crate) const UNKNOWN_PEER: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A TLS failure as the engine classifies it, from rustls' error text.
pub(crate) fn tls_failure(reason: &str) -> TlsFailure {
    let r = reason.to_ascii_lowercase();
    if r.contains("revoked") {
        TlsFailure::Revoked
    } else if r.contains("expired") || r.contains("notvalidyet") || r.contains("not valid yet") {
        TlsFailure::Expired
    } else if r.contains("unknownissuer") || r.contains("unknown issuer") {
        TlsFailure::UnknownIssuer
    } else if r.contains("no certificate")
        || r.contains("nocertificate")
        || r.contains("certificate required")
    {
        TlsFailure::NoCertificate
    } else if r.contains("certificate") || r.contains("signature") {
        TlsFailure::BadCertificate
    } else {
        TlsFailure::Negotiation
    }
}

/// The engine's class of the violation the broker closed a connection for.
pub(crate) fn protocol_fault(code: ReasonCode) -> ProtocolFault {
    match code {
        ReasonCode::MalformedPacket => ProtocolFault::MalformedPacket,
        ReasonCode::ProtocolError => ProtocolFault::ProtocolViolation,
        ReasonCode::PacketTooLarge => ProtocolFault::PacketTooLarge,
        ReasonCode::ReceiveMaximumExceeded | ReasonCode::TopicAliasInvalid => {
            ProtocolFault::FlowControl
        }
        _ => ProtocolFault::Other,
    }
}

/// A refused CONNECT as the engine classifies it.
pub(crate) fn refused_reason(code: ReasonCode) -> RefusedReason {
    match code {
        ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => {
            RefusedReason::BadCredentials
        }
        ReasonCode::ClientIdentifierNotValid => RefusedReason::ClientIdRejected,
        ReasonCode::ServerUnavailable
        | ReasonCode::ServerBusy
        | ReasonCode::ServerShuttingDown
        | ReasonCode::ConnectionRateExceeded
        | ReasonCode::QuotaExceeded => RefusedReason::ServerUnavailable,
        ReasonCode::Banned => RefusedReason::UnknownIdentity,
        _ => RefusedReason::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mitigations_combine_per_device_and_release_per_alert() {
        let mut m = Mitigations::default();
        assert!(m.of("d1").is_none());
        m.by_device
            .entry("d1".into())
            .or_default()
            .insert(1, Applied::Throttle(50));
        m.by_device
            .entry("d1".into())
            .or_default()
            .insert(2, Applied::Throttle(10));
        m.by_device
            .entry("d1".into())
            .or_default()
            .insert(3, Applied::ReadOnly);
        let d1 = m.of("d1").expect("in force");
        assert_eq!(d1.throttle, Some(10));
        assert!(d1.read_only && !d1.quarantine && !d1.blocked);
        m.by_device.get_mut("d1").expect("d1").remove(&2);
        assert_eq!(m.of("d1").expect("in force").throttle, Some(50));
        assert!(m.of("d2").is_none());
    }

    #[test]
    fn tls_failures_are_classified() {
        assert_eq!(
            tls_failure("invalid peer certificate: UnknownIssuer"),
            TlsFailure::UnknownIssuer
        );
        assert_eq!(
            tls_failure("invalid peer certificate: Revoked"),
            TlsFailure::Revoked
        );
        assert_eq!(
            tls_failure("invalid peer certificate: Expired"),
            TlsFailure::Expired
        );
        assert_eq!(
            tls_failure("peer sent no certificates"),
            TlsFailure::NoCertificate
        );
        assert_eq!(
            tls_failure("peer is incompatible: no cipher suites in common"),
            TlsFailure::Negotiation
        );
        assert_eq!(
            tls_failure("client certificate required"),
            TlsFailure::NoCertificate
        );
    }
}
