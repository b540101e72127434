//! The shared broker: session registry, router, retained messages, durability.
//!
//! Lock order (never take an earlier lock while holding a later one):
//! `sessions` → `router` → `retained` → a session's state. Routing takes the router lock
//! only to collect targets and releases it before locking any session.

use crate::traffic::{Observer, Traffic};
use moat_mqtt::{
    ConnAck, ConnAckProperties, Connect, ProtocolVersion, Publish, SubscriptionOptions,
};
use moat_types::{
    ClientId, QoS, QuotaLimit, SubscriptionFilter, Timestamp, TopicFilter, TopicName,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::auth::{self, Authorized, Authorizer, ConnectDenied, Principal};
use crate::connection::Connection;
use crate::message::Message;
use crate::persist::{Durability, OutboundState, Snapshot, StoreOp, StoredSubscription};
use crate::router::{Router, Subscriber};
use crate::session::{Inflight, Pending, SessionCell, SessionState, SubRecord, WillSpec};
use crate::stats::Stats;
use crate::{BrokerConfig, ReasonCode, Wake};

/// What [`Broker::enqueue`] did with a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Enqueued {
    /// Queued; the session needs a wake.
    pub accepted: bool,
    /// The session's queue length afterwards, if a connection is attached: what flow control
    /// compares with the high watermark without taking the session's lock again.
    pub backlog: Option<usize>,
}

/// Largest match list kept for the next message: a wider fan-out allocates its own list.
const MAX_ROUTE_SCRATCH: usize = 1024;

thread_local! {
    /// The match list of [`Broker::route_from`], kept between calls on each thread so that
    /// routing a message allocates no list. Left empty between calls.
    static ROUTE_SCRATCH: RefCell<Vec<Subscriber>> = const { RefCell::new(Vec::new()) };
}

/// The broker. Cheap to clone; every clone is the same broker.
#[derive(Clone, Debug)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub authorizer: Arc<dyn Authorizer>,
    pub durability: Arc<dyn Durability>,
    sessions: Mutex<HashMap<ClientId, Arc<SessionCell>>>,
    router: RwLock<Router>,
    retained: RwLock<HashMap<TopicName, Arc<Message>>>,
    next_id: AtomicU64,
    pub stats: Stats,
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
    tap: std::sync::OnceLock<Arc<dyn crate::traffic::PublishTap>>,
    /// Counts of connections that ended (or were taken over) since the last
    /// `collect_traffic`, so that a short connection is counted too. At most
    /// [`crate::traffic::MAX_DEPARTED_TRAFFIC`] entries; beyond, counts are dropped.
    departed: Mutex<Vec<(ClientId, u64, Principal, Traffic)>>,
}

/// The result of a CONNECT.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// Accepted: send `connack` once the commit `commit` is durable, then run `connection`.
    Accepted {
        /// The connection state machine.
        connection: Box<Connection>,
        /// The CONNACK to send.
        connack: ConnAck,
        /// Commit sequence to wait for before sending the CONNACK (0: none).
        commit: u64,
    },
    /// Refused: send `connack`, then close.
    Refused {
        /// The CONNACK to send.
        connack: ConnAck,
        /// Why, for logs and metrics.
        reason: ReasonCode,
    },
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteOutcome {
    /// Number of sessions the message was delivered or queued to.
    pub matched: usize,
    /// Commit sequence covering the durable part (0: nothing to wait for).
    pub commit: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn refused(reason: ReasonCode) -> ConnectOutcome {
    ConnectOutcome::Refused {
        connack: ConnAck {
            session_present: false,
            reason_code: reason,
            properties: ConnAckProperties::default(),
        },
        reason,
    }
}

impl Broker {
    /// A broker with the given settings, authorizer and durable storage.
    pub fn new(
        config: BrokerConfig,
        authorizer: Arc<dyn Authorizer>,
        durability: Arc<dyn Durability>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                authorizer,
                durability,
                sessions: Mutex::new(HashMap::new()),
                router: RwLock::new(Router::default()),
                retained: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stats: Stats::default(),
                observer: std::sync::OnceLock::new(),
                tap: std::sync::OnceLock::new(),
                departed: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Installs the [`Observer`] told about first-seen topics and subscriptions. Only the
    /// first call takes effect; returns whether it did.
    pub fn set_observer(&self, observer: Arc<dyn Observer>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.shared.observer.get()
    }

    /// Installs the [`PublishTap`](crate::PublishTap) that receives allowed publishes to the
    /// topics it wants (the hub's device reports). Only the first call takes effect;
    /// returns whether it did.
    pub fn set_tap(&self, tap: Arc<dyn crate::traffic::PublishTap>) -> bool {
        self.shared.tap.set(tap).is_ok()
    }

    pub(crate) fn tap(&self) -> Option<&Arc<dyn crate::traffic::PublishTap>> {
        self.shared.tap.get()
    }

    /// Takes the [`Traffic`] counted for every connected session since the last call,
    /// calling `f` with the client id, the connection's id, its principal and the counts
    /// (sessions with nothing counted are skipped). The hub calls it about once a second.
    pub fn collect_traffic(&self, mut f: impl FnMut(&ClientId, u64, &Principal, Traffic)) {
        let departed = std::mem::take(&mut *lock(&self.shared.departed));
        for (client, conn_id, principal, traffic) in departed {
            f(&client, conn_id, &principal, traffic);
        }
        let cells: Vec<Arc<SessionCell>> = lock(&self.shared.sessions).values().cloned().collect();
        for cell in cells {
            let mut st = cell.lock();
            let principal = st.principal.clone();
            if let Some(a) = st.attached.as_mut()
                && !a.traffic.is_empty()
                && let Some(principal) = principal
            {
                let traffic = std::mem::take(&mut a.traffic);
                let conn_id = a.conn_id;
                drop(st);
                f(&cell.client_id, conn_id, &principal, traffic);
            }
        }
    }

    /// Keeps the counts of a connection leaving `st` for the next `collect_traffic`.
    fn depart(
        &self,
        client: &ClientId,
        st: &crate::session::SessionState,
        old: &crate::session::Attached,
    ) {
        if old.traffic.is_empty() {
            return;
        }
        let Some(principal) = st.principal.clone() else {
            return;
        };
        let mut departed = lock(&self.shared.departed);
        if departed.len() < crate::traffic::MAX_DEPARTED_TRAFFIC {
            departed.push((client.clone(), old.conn_id, principal, old.traffic));
        }
    }

    /// The settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        read(&self.shared.retained).len()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        read(&self.shared.router).len()
    }

    /// Checks a topic name against the configured length and level limits.
    pub(crate) fn topic_within_limits(&self, len: usize, levels: usize) -> bool {
        len <= self.shared.config.max_topic_length && levels <= self.shared.config.max_topic_levels
    }

    fn assign_client_id(&self, principal: &Principal) -> Option<ClientId> {
        match principal {
            // A device's only acceptable client id is its device id (MQTT-3.1.3-6 lets the
            // server choose).
            Principal::Device(id) => ClientId::parse(id.as_str()).ok(),
            Principal::Unauthenticated => None,
            Principal::Anonymous => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(self.next_id());
                ClientId::parse(&format!("moat-{:016x}", h.finish())).ok()
            }
        }
    }

    /// Handles a CONNECT from `principal` (MQTT-3.1.4). `waker` is called whenever the
    /// connection has something to send or must close.
    pub fn connect(
        &self,
        connect: Connect,
        principal: Principal,
        waker: Arc<dyn Wake>,
        now: Timestamp,
    ) -> ConnectOutcome {
        let cfg = &self.shared.config;
        let protocol = connect.protocol;
        let v5 = protocol == ProtocolVersion::V5;

        // Enhanced authentication (MQTT-4.12) is not offered: identity comes from the TLS
        // client certificate. A client that asks for a method is refused (MQTT-4.12.0-1).
        if connect.properties.authentication_method.is_some() {
            return refused(ReasonCode::BadAuthenticationMethod);
        }

        // Client identifier (MQTT-3.1.3-7, -8).
        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            if !v5 && !connect.clean_start {
                return refused(ReasonCode::ClientIdentifierNotValid);
            }
            match self.assign_client_id(&principal) {
                Some(id) => id,
                None => return refused(ReasonCode::ClientIdentifierNotValid),
            }
        } else {
            match ClientId::parse(&connect.client_id) {
                Ok(id) => id,
                Err(_) => return refused(ReasonCode::ClientIdentifierNotValid),
            }
        };
        let permissions = match self
            .shared
            .authorizer
            .authorize_connect(&principal, &client_id)
        {
            Ok(permissions) => permissions,
            Err(ConnectDenied::ClientIdMismatch | ConnectDenied::NotAuthorized) => {
                self.shared
                    .stats
                    .connect_denied
                    .fetch_add(1, Ordering::Relaxed);
                return refused(ReasonCode::NotAuthorized);
            }
            Err(ConnectDenied::ConnectionRateExceeded) => {
                self.shared
                    .stats
                    .connect_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.stats.quota_exceeded[QuotaLimit::ConnectionsPerMinute.index()]
                    .fetch_add(1, Ordering::Relaxed);
                return refused(ReasonCode::ConnectionRateExceeded);
            }
        };

        // The will must be publishable by this principal, like any message.
        let will = match connect.will {
            None => None,
            Some(will) => {
                if !self.topic_within_limits(will.topic.len(), will.topic.level_count()) {
                    return refused(ReasonCode::TopicNameInvalid);
                }
                if !permissions.may_publish(&will.topic)
                    || (will.retain && !permissions.may_retain(&will.topic))
                {
                    return refused(ReasonCode::NotAuthorized);
                }
                let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
                let publish = Publish {
                    dup: false,
                    qos: will.qos,
                    retain: will.retain,
                    topic: Some(will.topic.clone()),
                    packet_id: None,
                    properties: moat_mqtt::PublishProperties {
                        payload_format_indicator: will.properties.payload_format_indicator,
                        message_expiry_interval: will.properties.message_expiry_interval,
                        topic_alias: None,
                        response_topic: will.properties.response_topic,
                        correlation_data: will.properties.correlation_data,
                        user_properties: will.properties.user_properties,
                        subscription_identifiers: Vec::new(),
                        content_type: will.properties.content_type,
                    },
                    payload: will.payload,
                };
                // The expiry clock of a will starts when it is published; `now` is replaced
                // then (see `publish_will`). The will is kept for the connection's life and
                // possibly a will delay after it, so it owns its bytes rather than keeping the
                // CONNECT's read buffer allocated.
                Some(WillSpec {
                    message: Message::new(will.topic, publish, now, None).detached(),
                    delay_secs,
                })
            }
        };

        // Keep alive (MQTT-3.1.2-22, MQTT 5 Server Keep Alive).
        let max_ka = cfg.max_keep_alive_secs();
        let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > max_ka {
            max_ka
        } else {
            connect.keep_alive
        };

        // Session expiry.
        let cap = cfg.max_session_expiry_secs();
        let (expiry_interval, expiry_capped) = if v5 {
            let asked = connect.properties.session_expiry_interval.unwrap_or(0);
            (asked.min(cap), asked > cap)
        } else if connect.clean_start {
            (0, false)
        } else {
            (cap, false)
        };

        let conn_id = self.next_id();
        let mut ops = Vec::new();
        let mut wills_now = Vec::new();
        let mut ended_subs = Vec::new();
        let (cell, session_present) = {
            let mut sessions = lock(&self.shared.sessions);
            let existing = sessions.get(&client_id).cloned();
            // A session belongs to the identity that made it: another principal using the
            // same client id neither resumes nor takes it over. The one exception is a
            // device, whose client id is bound to its certificate: the id is its own, so
            // whatever another principal left under it is discarded (a clean start).
            let foreign = existing.as_ref().is_some_and(|cell| {
                cell.lock()
                    .principal
                    .as_ref()
                    .is_some_and(|owner| *owner != principal)
            });
            if foreign && !matches!(principal, Principal::Device(_)) {
                drop(sessions);
                self.shared
                    .stats
                    .connect_denied
                    .fetch_add(1, Ordering::Relaxed);
                return refused(ReasonCode::NotAuthorized);
            }
            let clean_start = connect.clean_start || foreign;
            let resumed = match existing {
                Some(cell) if !clean_start => {
                    let mut st = cell.lock();
                    // Takeover (MQTT-3.1.4-3): the old connection is told to go.
                    if let Some(old) = st.attached.take() {
                        self.depart(&cell.client_id, &st, &old);
                        old.waker.wake();
                        self.shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                        if let Some(will) = st.will.take()
                            && will.delay_secs == 0
                        {
                            wills_now.push(will.message);
                        }
                    }
                    // Reconnected before the will delay passed: the will is not sent.
                    st.pending_will = None;
                    st.protocol = protocol;
                    drop(st);
                    Some(cell)
                }
                Some(cell) => {
                    // Clean start: the old session ends (its will goes now).
                    let mut st = cell.lock();
                    if let Some(old) = st.attached.take() {
                        self.depart(&cell.client_id, &st, &old);
                        old.waker.wake();
                        self.shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(will) = st.will.take() {
                        wills_now.push(will.message);
                    }
                    if let Some((_, will)) = st.pending_will.take() {
                        wills_now.push(will);
                    }
                    st.ended = true;
                    for w in st.take_space_waiters() {
                        w.wake();
                    }
                    if st.is_persistent() || st.persisted {
                        ops.push(StoreOp::DeleteSession {
                            client_id: client_id.clone(),
                        });
                    }
                    ended_subs.extend(st.subscriptions.drain().map(|(_, s)| (cell.id, s)));
                    st.queue.clear();
                    st.inflight.clear();
                    cell.set_online(false);
                    sessions.remove(&client_id);
                    None
                }
                None => None,
            };
            let session_present = resumed.is_some();
            let cell = match resumed {
                Some(cell) => cell,
                None => {
                    let cell = SessionCell::new(
                        self.next_id(),
                        client_id.clone(),
                        SessionState::new(protocol, expiry_interval),
                    );
                    sessions.insert(client_id.clone(), cell.clone());
                    cell
                }
            };
            {
                let mut st = cell.lock();
                let was_persistent = st.is_persistent();
                st.expiry_interval = expiry_interval;
                st.attached = Some(crate::session::Attached {
                    conn_id,
                    waker: waker.clone(),
                    kick: None,
                    traffic: crate::traffic::Traffic::default(),
                });
                st.disconnected_at = None;
                st.will = will;
                st.principal = Some(principal.clone());
                if expiry_interval > 0 {
                    st.persisted = true;
                    ops.push(StoreOp::PutSession {
                        client_id: client_id.clone(),
                        expiry_interval,
                        protocol_level: protocol.level(),
                        disconnected_at: None,
                    });
                } else if was_persistent || st.persisted {
                    st.persisted = false;
                    ops.push(StoreOp::DeleteSession {
                        client_id: client_id.clone(),
                    });
                }
                // QoS 0 messages are not kept for a session between connections.
                if session_present {
                    st.queue.retain(|p| p.qos != QoS::AtMostOnce);
                }
                // What was queued under earlier permissions is delivered only if the current
                // ones allow receiving it.
                if session_present && permissions.checks_receive() {
                    let mut withheld = 0u64;
                    st.queue.retain(|p| {
                        if permissions.may_receive(&p.message.topic) {
                            return true;
                        }
                        withheld += 1;
                        if p.stored {
                            ops.push(StoreOp::DeleteOutbound {
                                client_id: client_id.clone(),
                                seq: p.seq,
                            });
                        }
                        false
                    });
                    self.shared
                        .stats
                        .receive_denied
                        .fetch_add(withheld, Ordering::Relaxed);
                }
            }
            cell.set_permissions(permissions);
            cell.set_online(true);
            (cell, session_present)
        };
        // A resumed session keeps only the subscriptions its identity may still make.
        if session_present {
            ended_subs.extend(self.revoke_disallowed_subscriptions(&cell, &mut ops));
        }
        self.unroute(ended_subs);
        for will in wills_now {
            self.publish_will(&will, now);
        }
        let commit = self.submit(ops);

        let mut properties = ConnAckProperties::default();
        if v5 {
            properties.receive_maximum = Some(cfg.receive_maximum);
            properties.maximum_packet_size = Some(cfg.max_packet_size);
            properties.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            if assigned {
                properties.assigned_client_identifier = Some(client_id.as_str().to_owned());
            }
            if keep_alive != connect.keep_alive {
                properties.server_keep_alive = Some(keep_alive);
            }
            if expiry_capped {
                properties.session_expiry_interval = Some(expiry_interval);
            }
        }
        self.shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        let connection = Connection::new(
            self.clone(),
            cell,
            conn_id,
            principal,
            client_id,
            protocol,
            keep_alive,
            &connect.properties,
            session_present,
            waker,
        );
        ConnectOutcome::Accepted {
            connection: Box::new(connection),
            connack: ConnAck {
                session_present,
                reason_code: ReasonCode::Success,
                properties,
            },
            commit,
        }
    }

    pub(crate) fn submit(&self, ops: Vec<StoreOp>) -> u64 {
        if ops.is_empty() {
            0
        } else {
            self.shared.durability.submit(ops)
        }
    }

    fn unroute(&self, subs: Vec<(u64, SubRecord)>) {
        if subs.is_empty() {
            return;
        }
        let mut router = write(&self.shared.router);
        for (session_id, sub) in subs {
            router.remove(&sub.filter.filter, sub.filter.share.as_ref(), session_id);
        }
    }

    /// Publishes a message the hub itself originates (alerts on `$moat/...` topics), QoS 0,
    /// not retained, without a principal check. Subscribers still need the right to
    /// receive it.
    pub fn publish_internal(&self, topic: TopicName, payload: bytes::Bytes, now: Timestamp) {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Some(topic.clone()),
            packet_id: None,
            properties: moat_mqtt::PublishProperties::default(),
            payload,
        };
        let message = Message::new(topic, publish, now, None);
        self.route(auth::trusted(message), Vec::new(), now);
    }

    /// Publishes a will (or any hub-originated message) without a principal check: the will
    /// was authorized when the CONNECT was accepted.
    pub(crate) fn publish_will(&self, will: &Arc<Message>, now: Timestamp) {
        // The Message Expiry Interval of a will counts from its publication.
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: Some(will.topic.clone()),
            packet_id: None,
            properties: will.properties.clone(),
            payload: will.payload.clone(),
        };
        let message = Message::new(will.topic.clone(), publish, now, None);
        self.shared.stats.wills.fetch_add(1, Ordering::Relaxed);
        self.route(auth::trusted(message), Vec::new(), now);
    }

    /// Routes an authorized message to every matching subscription, updates the retained
    /// store, and submits `extra_ops` in the same durable batch.
    pub fn route(
        &self,
        message: Authorized<Arc<Message>>,
        extra_ops: Vec<StoreOp>,
        now: Timestamp,
    ) -> RouteOutcome {
        self.shared
            .stats
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        self.route_from(message, extra_ops, now, None, &mut Vec::new(), None)
    }

    /// [`Broker::route`] for a message from a connection: every connected session whose
    /// queue passed its high watermark registers `publisher` to be woken when it drains and
    /// is appended to `congested`, so that the publisher can stop reading (flow control).
    /// The caller counts the message in `messages_in` (a connection once per batch).
    pub(crate) fn route_from(
        &self,
        message: Authorized<Arc<Message>>,
        mut extra_ops: Vec<StoreOp>,
        now: Timestamp,
        publisher: Option<&Arc<dyn Wake>>,
        congested: &mut Vec<Arc<SessionCell>>,
        deferred_wakes: Option<&mut Vec<Arc<SessionCell>>>,
    ) -> RouteOutcome {
        let message = message.into_inner();
        let stats = &self.shared.stats;
        if message.is_expired(now) {
            stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
            return RouteOutcome {
                matched: 0,
                commit: self.submit(extra_ops),
            };
        }

        if message.retain {
            self.retain(&message, &mut extra_ops);
        }

        // The match list is a per-thread scratch vector: routing allocates nothing for it.
        let mut targets = ROUTE_SCRATCH.with_borrow_mut(std::mem::take);
        read(&self.shared.router).collect(&message.topic, &mut targets);

        // One copy per session: the maximum QoS of the matching subscriptions and all their
        // identifiers (MQTT-3.3.4-2, -4).
        if targets.len() > 1 {
            targets.sort_unstable_by_key(|s| s.session.id);
        }
        // Overlapping subscriptions of one session also count here; the hint only decides
        // whether to share one encoding.
        if targets.len() > 1 {
            message.mark_fan_out();
        }
        let mut matched = 0;
        // A publisher handling a batch of packets wakes each subscriber once, at the end of
        // the batch, so subscribers drain many messages per write. Its sessions go straight
        // into the caller's list and are claimed there after the submit below.
        let mut deferred_wakes = deferred_wakes;
        let first_deferred = deferred_wakes.as_ref().map_or(0, |d| d.len());
        let mut woken = Vec::new();
        let mut i = 0;
        while i < targets.len() {
            let session_id = targets[i].session.id;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids = Vec::new();
            let mut j = i;
            while j < targets.len() && targets[j].session.id == session_id {
                let sub = &targets[j];
                j += 1;
                // No Local (MQTT-3.8.3-3).
                if sub.options.no_local && message.origin == Some(session_id) {
                    continue;
                }
                qos = Some(qos.map_or(sub.options.qos, |q| q.max(sub.options.qos)));
                retain |= sub.options.retain_as_published && message.retain;
                if let Some(id) = sub.identifier {
                    ids.push(id);
                }
            }
            if let Some(sub_qos) = qos {
                let delivery_qos = message.qos.min(sub_qos);
                let cell = &targets[i].session;
                let enqueued =
                    self.enqueue(cell, &message, delivery_qos, retain, ids, &mut extra_ops);
                if enqueued.accepted {
                    matched += 1;
                    match deferred_wakes.as_deref_mut() {
                        Some(deferred) => deferred.push(cell.clone()),
                        None => woken.push(cell.clone()),
                    }
                }
                // A client subscribed to what it publishes drains its own queue; pausing it
                // on itself would stop it reading the acknowledgements that drain it.
                let backed_up = enqueued
                    .backlog
                    .is_some_and(|n| n >= self.shared.config.queue_high_watermark());
                if let Some(publisher) =
                    publisher.filter(|_| backed_up && message.origin != Some(cell.id))
                {
                    let mut st = cell.lock();
                    // Checked again under the lock: the subscriber may have drained meanwhile.
                    if st.attached.is_some()
                        && st.queue.len() >= self.shared.config.queue_high_watermark()
                    {
                        st.wait_for_space(publisher);
                        drop(st);
                        if !congested.iter().any(|c| Arc::ptr_eq(c, cell)) {
                            congested.push(cell.clone());
                        }
                    }
                }
            }
            i = j;
        }
        targets.clear();
        if targets.capacity() <= MAX_ROUTE_SCRATCH {
            ROUTE_SCRATCH.with_borrow_mut(|scratch| *scratch = targets);
        }
        // Wake subscribers only after the batch is submitted, so that whatever they do next
        // (a DeleteOutbound after a PUBACK) is ordered after the PutOutbound it undoes.
        let commit = self.submit(extra_ops);
        match deferred_wakes {
            // Keeps the sessions whose wake this publisher claims; a session already marked
            // is woken by whoever marked it.
            Some(deferred) => {
                let mut kept = first_deferred;
                for k in first_deferred..deferred.len() {
                    if deferred[k].claim_wake() {
                        deferred.swap(kept, k);
                        kept += 1;
                    }
                }
                deferred.truncate(kept);
            }
            None => {
                for cell in woken {
                    cell.lock().wake();
                }
            }
        }
        RouteOutcome { matched, commit }
    }

    fn retain(&self, message: &Arc<Message>, ops: &mut Vec<StoreOp>) {
        let mut retained = write(&self.shared.retained);
        let topic = message.topic.clone();
        // MQTT-3.3.1-6, -7: an empty payload clears the retained message.
        if message.payload.is_empty() {
            if retained.remove(&topic).is_some() {
                ops.push(StoreOp::DeleteRetained {
                    topic: topic.as_str().to_owned(),
                });
            }
            return;
        }
        if !retained.contains_key(&topic)
            && retained.len() >= self.shared.config.max_retained_messages
        {
            self.shared
                .stats
                .retained_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stored = message.to_stored(message.qos, true);
        // The retained copy owns its bytes: a retained message would otherwise keep its
        // publisher's read buffer allocated for as long as it is retained.
        let kept = message.detached();
        ops.push(StoreOp::PutRetained {
            topic: topic.as_str().to_owned(),
            message: stored,
        });
        retained.insert(topic.to_owned_bytes(), kept);
    }

    /// Queues a message for one session. Does not wake the connection: the caller does,
    /// after submitting `ops`.
    pub(crate) fn enqueue(
        &self,
        cell: &Arc<SessionCell>,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        ops: &mut Vec<StoreOp>,
    ) -> Enqueued {
        let refused = Enqueued {
            accepted: false,
            backlog: None,
        };
        if !cell.may_receive(&message.topic) {
            self.shared
                .stats
                .receive_denied
                .fetch_add(1, Ordering::Relaxed);
            return refused;
        }
        let mut st = cell.lock();
        if st.ended {
            return refused;
        }
        let online = st.attached.is_some();
        // QoS 0 messages are not queued for a disconnected session (MQTT-3.1.2-5 permits).
        if !online && qos == QoS::AtMostOnce {
            return refused;
        }
        if st.queue.len() >= self.shared.config.max_queued_messages {
            st.dropped += 1;
            self.shared
                .stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Enqueued {
                accepted: false,
                backlog: online.then_some(st.queue.len()),
            };
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let stored = qos != QoS::AtMostOnce && st.is_persistent();
        if stored {
            ops.push(StoreOp::PutOutbound {
                client_id: cell.client_id.clone(),
                seq,
                state: OutboundState::Queued,
                message: message.to_stored(qos, retain),
            });
        }
        st.queue.push_back(Pending {
            seq,
            // What waits for a disconnected session owns its bytes (`Message::detached`).
            message: if online {
                message.clone()
            } else {
                message.detached()
            },
            qos,
            retain,
            subscription_ids,
            stored,
        });
        Enqueued {
            accepted: true,
            backlog: online.then_some(st.queue.len()),
        }
    }

    /// Adds (or replaces) a subscription and queues the retained messages it asks for.
    /// Returns the granted QoS and whether it replaced an existing subscription.
    pub(crate) fn subscribe(
        &self,
        cell: &Arc<SessionCell>,
        wire: String,
        filter: Authorized<SubscriptionFilter>,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        ops: &mut Vec<StoreOp>,
    ) -> bool {
        let filter = filter.into_inner();
        let existed;
        let persistent;
        {
            let mut st = cell.lock();
            existed = st
                .subscriptions
                .insert(
                    wire.clone(),
                    SubRecord {
                        filter: filter.clone(),
                        options,
                        identifier,
                    },
                )
                .is_some();
            persistent = st.is_persistent();
            // Under the state lock (as permission swaps are) and before the route exists: no
            // delivery through it skips a receive check it needs.
            cell.subscription_added(&filter.filter);
        }
        write(&self.shared.router).insert(
            &filter.filter,
            filter.share.as_ref(),
            Subscriber {
                session: cell.clone(),
                options,
                identifier,
            },
        );
        if persistent {
            ops.push(StoreOp::PutSubscription {
                client_id: cell.client_id.clone(),
                subscription: StoredSubscription {
                    filter: wire,
                    options: encode_options(options),
                    identifier,
                },
            });
        }
        existed
    }

    /// Queues the retained messages matching `filter` for a new subscription (MQTT-3.3.1-9,
    /// retain handling MQTT-3.8.3.1). Not for shared subscriptions (MQTT-4.8.2-?).
    pub(crate) fn send_retained(
        &self,
        cell: &Arc<SessionCell>,
        filter: &TopicFilter,
        max_qos: QoS,
        identifier: Option<u32>,
        now: Timestamp,
        ops: &mut Vec<StoreOp>,
    ) {
        let matches: Vec<Arc<Message>> = read(&self.shared.retained)
            .values()
            .filter(|m| filter.matches(&m.topic) && !m.is_expired(now))
            .cloned()
            .collect();
        // The subscribing connection polls its queue after handling SUBSCRIBE; no wake.
        for m in matches {
            let qos = m.qos.min(max_qos);
            self.enqueue(cell, &m, qos, true, identifier.into_iter().collect(), ops);
        }
    }

    /// Removes a subscription. Returns whether it existed.
    pub(crate) fn unsubscribe(
        &self,
        cell: &Arc<SessionCell>,
        wire: &str,
        ops: &mut Vec<StoreOp>,
    ) -> bool {
        let (record, persistent) = {
            let mut st = cell.lock();
            (st.subscriptions.remove(wire), st.is_persistent())
        };
        let Some(record) = record else {
            return false;
        };
        write(&self.shared.router).remove(
            &record.filter.filter,
            record.filter.share.as_ref(),
            cell.id,
        );
        if persistent {
            ops.push(StoreOp::DeleteSubscription {
                client_id: cell.client_id.clone(),
                filter: wire.to_owned(),
            });
        }
        true
    }

    /// Detaches connection `conn_id` from its session after the network connection closed
    /// (MQTT-3.1.2-8 will handling; MQTT-3.1.2-23 session expiry).
    pub(crate) fn disconnected(
        &self,
        cell: &Arc<SessionCell>,
        conn_id: u64,
        publish_will: bool,
        now: Timestamp,
    ) {
        let mut ops = Vec::new();
        let mut will_now = None;
        let mut end = false;
        {
            let mut st = cell.lock();
            if st.attached.as_ref().map(|a| a.conn_id) != Some(conn_id) {
                // Taken over: the new connection owns the session now.
                return;
            }
            if let Some(old) = st.attached.take() {
                self.depart(&cell.client_id, &st, &old);
            }
            cell.set_online(false);
            st.disconnected_at = Some(now);
            // Paused publishers must not wait for a session nobody drains.
            for w in st.take_space_waiters() {
                w.wake();
            }
            let will = st.will.take();
            // Messages in flight stay for redelivery; QoS 0 ones are dropped.
            st.queue.retain(|p| p.qos != QoS::AtMostOnce);
            if st.expiry_interval == 0 {
                end = true;
                if publish_will {
                    will_now = will.map(|w| w.message);
                }
            } else {
                // What stays queued or in flight waits for the client to come back, possibly
                // for days: it must not keep its publishers' read buffers allocated.
                let st = &mut *st;
                let kept = st.queue.iter_mut();
                for pending in kept.chain(st.inflight.iter_mut().map(|i| &mut i.pending)) {
                    pending.message = pending.message.detached();
                }
                ops.push(StoreOp::PutSession {
                    client_id: cell.client_id.clone(),
                    expiry_interval: st.expiry_interval,
                    protocol_level: st.protocol.level(),
                    disconnected_at: Some(now),
                });
                if publish_will && let Some(will) = will {
                    let delay = will.delay_secs.min(st.expiry_interval);
                    if delay == 0 {
                        will_now = Some(will.message);
                    } else {
                        let due =
                            now.saturating_add(std::time::Duration::from_secs(u64::from(delay)));
                        st.pending_will = Some((due, will.message));
                    }
                }
            }
        }
        if end {
            self.end_session(cell, &mut ops);
        }
        if let Some(will) = will_now {
            self.publish_will(&will, now);
        }
        self.submit(ops);
    }

    /// Removes a session from the registry and the router.
    fn end_session(&self, cell: &Arc<SessionCell>, ops: &mut Vec<StoreOp>) {
        let subs: Vec<(u64, SubRecord)> = {
            let mut sessions = lock(&self.shared.sessions);
            let mut st = cell.lock();
            // A connection that resumed the session since the caller decided to end it
            // keeps it.
            if st.attached.is_some() || st.ended {
                return;
            }
            if sessions
                .get(&cell.client_id)
                .is_some_and(|c| Arc::ptr_eq(c, cell))
            {
                sessions.remove(&cell.client_id);
            }
            drop(sessions);
            st.ended = true;
            cell.set_online(false);
            for w in st.take_space_waiters() {
                w.wake();
            }
            if st.persisted || st.is_persistent() {
                ops.push(StoreOp::DeleteSession {
                    client_id: cell.client_id.clone(),
                });
            }
            st.queue.clear();
            st.inflight.clear();
            st.subscriptions
                .drain()
                .map(|(_, s)| (cell.id, s))
                .collect()
        };
        self.unroute(subs);
    }

    /// Periodic work: expires sessions (MQTT-4.1.0-?), publishes wills whose delay passed.
    /// Call about once a second.
    pub fn tick(&self, now: Timestamp) {
        let cells: Vec<Arc<SessionCell>> = lock(&self.shared.sessions)
            .values()
            .filter(|c| !c.is_online())
            .cloned()
            .collect();
        let mut ops = Vec::new();
        for cell in cells {
            let (expired, will) = {
                let mut st = cell.lock();
                if st.attached.is_some() {
                    continue;
                }
                let expired = st.disconnected_at.is_some_and(|at| {
                    now.saturating_since(at).as_secs() >= u64::from(st.expiry_interval)
                        && st.expiry_interval != u32::MAX
                });
                let due = st.pending_will.as_ref().is_some_and(|(due, _)| *due <= now);
                let will = if due || expired {
                    st.pending_will.take().map(|(_, w)| w)
                } else {
                    None
                };
                (expired, will)
            };
            if let Some(will) = will {
                self.publish_will(&will, now);
            }
            if expired {
                self.shared
                    .stats
                    .sessions_expired
                    .fetch_add(1, Ordering::Relaxed);
                self.end_session(&cell, &mut ops);
            }
        }
        self.submit(ops);
        self.expire_retained(now);
    }

    fn expire_retained(&self, now: Timestamp) {
        let expired: Vec<TopicName> = read(&self.shared.retained)
            .iter()
            .filter(|(_, m)| m.is_expired(now))
            .map(|(t, _)| t.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut retained = write(&self.shared.retained);
        for topic in expired {
            if retained.get(&topic).is_some_and(|m| m.is_expired(now)) {
                retained.remove(&topic);
                ops.push(StoreOp::DeleteRetained {
                    topic: topic.as_str().to_owned(),
                });
            }
        }
        drop(retained);
        self.submit(ops);
    }

    /// Applies changed policies to every session: re-binds each one's permissions, closes
    /// the connections of identities that may no longer connect (with `reason`), and removes
    /// subscriptions that are no longer allowed, so that they stop receiving at once.
    /// Returns how many connections were closed.
    pub fn reauthorize(&self, reason: ReasonCode) -> usize {
        let cells: Vec<Arc<SessionCell>> = lock(&self.shared.sessions).values().cloned().collect();
        let mut kicked = 0;
        let mut ops = Vec::new();
        let mut removed = Vec::new();
        for cell in cells {
            let Some(principal) = cell.lock().principal.clone() else {
                continue;
            };
            match self
                .shared
                .authorizer
                .authorize_connect(&principal, &cell.client_id)
            {
                Ok(permissions) => cell.set_permissions(permissions),
                Err(_) => {
                    cell.set_permissions(Arc::new(auth::DenyAll));
                    let mut st = cell.lock();
                    if let Some(a) = st.attached.as_mut() {
                        a.kick = Some(reason);
                        a.waker.wake();
                        kicked += 1;
                    }
                }
            }
            removed.extend(self.revoke_disallowed_subscriptions(&cell, &mut ops));
        }
        self.unroute(removed);
        self.submit(ops);
        kicked
    }

    /// Closes (with `reason`) the connection attached to the session of `client_id`, if
    /// any; whether there was one.
    pub fn kick_client_id(&self, reason: ReasonCode, client_id: &ClientId) -> bool {
        let cell = lock(&self.shared.sessions).get(client_id).cloned();
        let Some(cell) = cell else {
            return false;
        };
        let mut st = cell.lock();
        match st.attached.as_mut() {
            Some(a) => {
                a.kick = Some(reason);
                a.waker.wake();
                true
            }
            None => false,
        }
    }

    /// Closes (with `reason`) every connection whose principal matches; returns how many.
    pub fn kick_where(&self, reason: ReasonCode, matches: impl Fn(&Principal) -> bool) -> usize {
        let cells: Vec<Arc<SessionCell>> = lock(&self.shared.sessions).values().cloned().collect();
        let mut kicked = 0;
        for cell in cells {
            let mut st = cell.lock();
            if st.principal.as_ref().is_some_and(&matches)
                && let Some(a) = st.attached.as_mut()
            {
                a.kick = Some(reason);
                a.waker.wake();
                kicked += 1;
            }
        }
        kicked
    }

    /// Removes the session's subscriptions its permissions no longer allow; returns them for
    /// [`unroute`](Self::unroute) (after every lock is released).
    fn revoke_disallowed_subscriptions(
        &self,
        cell: &Arc<SessionCell>,
        ops: &mut Vec<StoreOp>,
    ) -> Vec<(u64, SubRecord)> {
        let permissions = cell.permissions();
        let mut st = cell.lock();
        let denied: Vec<String> = st
            .subscriptions
            .iter()
            .filter(|(_, s)| !permissions.may_subscribe(&s.filter.filter))
            .map(|(wire, _)| wire.clone())
            .collect();
        let persistent = st.is_persistent();
        let mut removed = Vec::with_capacity(denied.len());
        for wire in denied {
            if let Some(sub) = st.subscriptions.remove(&wire) {
                self.shared
                    .stats
                    .subscriptions_revoked
                    .fetch_add(1, Ordering::Relaxed);
                if persistent {
                    ops.push(StoreOp::DeleteSubscription {
                        client_id: cell.client_id.clone(),
                        filter: wire,
                    });
                }
                removed.push((cell.id, sub));
            }
        }
        removed
    }

    /// Asks every connected client to go (hub shutdown), with `reason`.
    pub fn kick_all(&self, reason: ReasonCode) {
        let cells: Vec<Arc<SessionCell>> = lock(&self.shared.sessions).values().cloned().collect();
        for cell in cells {
            let mut st = cell.lock();
            if let Some(a) = st.attached.as_mut() {
                a.kick = Some(reason);
                a.waker.wake();
            }
        }
    }

    /// Rebuilds persistent sessions and retained messages from storage at start-up. Damaged
    /// entries are skipped and counted in the returned number.
    pub fn restore(&self, snapshot: Snapshot, now: Timestamp) -> usize {
        let mut skipped = 0;
        for (topic, stored) in snapshot.retained {
            match (TopicName::parse(&topic), Message::from_stored(&stored)) {
                (Ok(t), Some((m, _, _))) if !m.is_expired(now) => {
                    write(&self.shared.retained).insert(t, m);
                }
                (Ok(_), Some(_)) => {}
                _ => skipped += 1,
            }
        }
        for loaded in snapshot.sessions {
            let protocol = if loaded.protocol_level == 5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            };
            let mut st = SessionState::new(protocol, loaded.expiry_interval);
            st.persisted = true;
            // A session that was connected when the hub stopped counts as disconnected now.
            st.disconnected_at = Some(loaded.disconnected_at.unwrap_or(now));
            let cell_id = self.next_id();
            let mut subs = Vec::new();
            for s in loaded.subscriptions {
                let Ok(filter) = SubscriptionFilter::parse(&s.filter) else {
                    skipped += 1;
                    continue;
                };
                let Some(options) = decode_options(s.options) else {
                    skipped += 1;
                    continue;
                };
                subs.push((s.filter, filter, options, s.identifier));
            }
            for (seq, state, stored) in loaded.outbound {
                let Some((message, qos, retain)) = Message::from_stored(&stored) else {
                    skipped += 1;
                    continue;
                };
                st.next_seq = st.next_seq.max(seq + 1);
                let pending = Pending {
                    seq,
                    message,
                    qos,
                    retain,
                    subscription_ids: Vec::new(),
                    stored: true,
                };
                match state {
                    OutboundState::Queued => st.queue.push_back(pending),
                    OutboundState::Sent(id) | OutboundState::Released(id) => {
                        let Some(packet_id) = moat_mqtt::PacketId::new(id) else {
                            st.queue.push_back(pending);
                            continue;
                        };
                        st.packet_ids.mark(id);
                        st.inflight.push_back(Inflight {
                            pending,
                            packet_id,
                            released: matches!(state, OutboundState::Released(_)),
                        });
                    }
                }
            }
            st.inbound_qos2.extend(loaded.inbound_qos2);
            let cell = SessionCell::new(cell_id, loaded.client_id.clone(), st);
            for (wire, filter, options, identifier) in subs {
                let authorized = auth::trusted(filter);
                let mut ignored = Vec::new();
                self.subscribe(&cell, wire, authorized, options, identifier, &mut ignored);
            }
            lock(&self.shared.sessions).insert(loaded.client_id, cell);
        }
        skipped
    }
}

/// The subscription options byte (MQTT-3.8.3.1).
pub(crate) fn encode_options(o: SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | (o.retain_handling.as_u8() << 4)
}

pub(crate) fn decode_options(b: u8) -> Option<SubscriptionOptions> {
    use moat_mqtt::RetainHandling;
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 0b11)?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling: match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::NamespaceAuthorizer;
    use crate::persist::Volatile;
    use crate::{Close, Outbox};
    use bytes::Bytes;
    use moat_mqtt::Packet;

    /// A broker with default limits, the namespace rule and no storage.
    fn broker() -> Broker {
        Broker::new(
            BrokerConfig::default(),
            Arc::new(NamespaceAuthorizer),
            Arc::new(Volatile),
        )
    }

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    /// Connects an MQTT 5 session of `client_id` (expiry one hour) with `will`.
    fn connected(
        broker: &Broker,
        client_id: &str,
        will: Option<moat_mqtt::Will>,
        now: Timestamp,
    ) -> Box<Connection> {
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            properties: moat_mqtt::ConnectProperties {
                session_expiry_interval: Some(3600),
                ..Default::default()
            },
            client_id: client_id.to_owned(),
            will,
            username: None,
            password: None,
        };
        let ConnectOutcome::Accepted { connection, .. } =
            broker.connect(connect, Principal::Anonymous, Arc::new(NoWake), now)
        else {
            panic!("CONNECT refused");
        };
        connection
    }

    /// A connected MQTT 5 session of `client_id` (expiry one hour) subscribed to `filter`
    /// at QoS 1.
    fn subscribed(broker: &Broker, client_id: &str, filter: &str, now: Timestamp) -> Connection {
        let mut connection = connected(broker, client_id, None, now);
        let subscribe = moat_mqtt::Subscribe {
            packet_id: std::num::NonZeroU16::MIN,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(
                filter.to_owned(),
                moat_mqtt::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        };
        connection
            .handle(Packet::Subscribe(subscribe), now, &mut Outbox::new())
            .expect("SUBSCRIBE accepted");
        *connection
    }

    /// A message whose topic, payload and correlation data are slices of `buffer`, a
    /// stand-in for a connection's read buffer: a large allocation, small slices.
    fn cut_from(buffer: &Bytes, qos: QoS, retain: bool, now: Timestamp) -> Arc<Message> {
        let topic = TopicName::from_bytes(buffer.slice(..9)).expect("valid topic");
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: Some(topic.clone()),
            packet_id: (qos != QoS::AtMostOnce).then_some(std::num::NonZeroU16::MIN),
            properties: moat_mqtt::PublishProperties {
                correlation_data: Some(buffer.slice(19..23)),
                message_expiry_interval: Some(60),
                ..Default::default()
            },
            payload: buffer.slice(9..19),
        };
        Message::new(topic, publish, now, Some(7))
    }

    fn read_buffer() -> Bytes {
        let mut buffer = vec![b'p'; 64 * 1024];
        buffer[..9].copy_from_slice(b"sensors/t");
        Bytes::from(buffer)
    }

    /// A message queued for a disconnected session owns its bytes, with the same content,
    /// and the copy is made once for every session it waits for.
    #[test]
    fn a_message_queued_offline_does_not_keep_the_publishers_read_buffer() {
        let broker = broker();
        let now = Timestamp::from_millis(1_000);
        let close = Close::lost(ReasonCode::UnspecifiedError);
        for client in ["a", "b"] {
            subscribed(&broker, client, "sensors/#", now).closed(&close, now);
        }
        let buffer = read_buffer();
        broker.route(
            auth::trusted(cut_from(&buffer, QoS::AtLeastOnce, false, now)),
            Vec::new(),
            now,
        );
        assert!(
            buffer.is_unique(),
            "a queued message still holds the read buffer"
        );
        let sessions = lock(&broker.shared.sessions);
        let queued: Vec<Arc<Message>> = ["a", "b"]
            .iter()
            .map(|id| {
                let cell = &sessions[&ClientId::parse(id).expect("valid id")];
                let st = cell.lock();
                assert_eq!(st.queue.len(), 1, "{id}'s queue");
                Arc::clone(&st.queue[0].message)
            })
            .collect();
        assert!(Arc::ptr_eq(&queued[0], &queued[1]), "one copy for both");
        let kept = &queued[0];
        assert_eq!(kept.topic.as_str(), "sensors/t");
        assert_eq!(&kept.payload[..], b"pppppppppp");
        assert_eq!(
            kept.properties.correlation_data.as_deref(),
            Some(&b"pppp"[..])
        );
        assert_eq!(
            (kept.qos, kept.retain, kept.origin),
            (QoS::AtLeastOnce, false, Some(7))
        );
        assert_eq!(kept.properties.message_expiry_interval, Some(60));
        assert_eq!(kept.expires_at, Some(Timestamp::from_millis(61_000)));
    }

    /// A will owns its bytes: it is kept for the connection's life and a will delay after
    /// it, and would otherwise keep the CONNECT's read buffer allocated. Its Message Expiry
    /// Interval, which the stored encoding leaves out, is kept.
    #[test]
    fn a_will_does_not_keep_the_connects_read_buffer() {
        let broker = broker();
        let now = Timestamp::from_millis(1_000);
        let buffer = read_buffer();
        let will = moat_mqtt::Will {
            topic: TopicName::from_bytes(buffer.slice(..9)).expect("valid topic"),
            payload: buffer.slice(9..19),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: moat_mqtt::WillProperties {
                message_expiry_interval: Some(30),
                correlation_data: Some(buffer.slice(19..23)),
                ..Default::default()
            },
        };
        let _connection = connected(&broker, "a", Some(will), now);
        assert!(buffer.is_unique(), "the will still holds the read buffer");
        let sessions = lock(&broker.shared.sessions);
        let st = sessions[&ClientId::parse("a").expect("valid id")].lock();
        let kept = &st.will.as_ref().expect("the will is kept").message;
        assert_eq!(kept.topic.as_str(), "sensors/t");
        assert_eq!(&kept.payload[..], b"pppppppppp");
        assert_eq!(kept.properties.message_expiry_interval, Some(30));
        assert_eq!(
            kept.properties.correlation_data.as_deref(),
            Some(&b"pppp"[..])
        );
    }

    /// A message queued while its session was connected stops holding the read buffer
    /// when the session disconnects and is kept.
    #[test]
    fn a_message_queued_online_lets_go_of_the_read_buffer_at_disconnect() {
        let broker = broker();
        let now = Timestamp::from_millis(1_000);
        let connection = subscribed(&broker, "a", "sensors/#", now);
        let buffer = read_buffer();
        broker.route(
            auth::trusted(cut_from(&buffer, QoS::AtLeastOnce, false, now)),
            Vec::new(),
            now,
        );
        assert!(
            !buffer.is_unique(),
            "the online queue shares the read buffer"
        );
        connection.closed(&Close::lost(ReasonCode::UnspecifiedError), now);
        assert!(
            buffer.is_unique(),
            "the message kept for the disconnected session still holds the read buffer"
        );
        let sessions = lock(&broker.shared.sessions);
        let st = sessions[&ClientId::parse("a").expect("valid id")].lock();
        assert_eq!(&st.queue[0].message.payload[..], b"pppppppppp");
    }

    /// A retained message and its key own their bytes: neither keeps the read buffer its
    /// topic and payload were cut from allocated.
    #[test]
    fn a_retained_message_does_not_keep_the_publishers_read_buffer() {
        let broker = broker();
        let buffer = read_buffer();
        let now = Timestamp::from_millis(1_000);
        let message = cut_from(&buffer, QoS::AtMostOnce, true, now);
        broker.route(auth::trusted(message), Vec::new(), now);
        assert!(
            buffer.is_unique(),
            "the retained message still holds the read buffer"
        );
        let retained = read(&broker.shared.retained);
        let kept = retained
            .get(&TopicName::parse("sensors/t").expect("valid topic"))
            .expect("retained");
        assert_eq!(&kept.payload[..], b"pppppppppp");
        assert!(kept.retain);
        assert_eq!(kept.qos, QoS::AtMostOnce);
    }
}
