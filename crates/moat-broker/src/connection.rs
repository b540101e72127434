//! The per-connection protocol state machine, from an accepted CONNECT to the close.
//!
//! ```text
//!   Broker::connect ──▶ Connection ──handle()/poll_outbound()──▶ … ──Err(Close)──▶ closed()
//! ```
//! `handle` takes one decoded packet and appends responses to an [`Outbox`]; acknowledgements
//! of durable work carry the commit sequence they must wait for, and everything behind them
//! waits too, so packets leave in the order they were produced. `poll_outbound` moves queued
//! messages into flight within the client's Receive Maximum. Both return [`Close`] when the
//! connection must end; the driver then sends DISCONNECT (MQTT 5) if [`Close::notify_peer`]
//! and calls [`Connection::closed`].

use bytes::{Bytes, BytesMut};
use moat_mqtt::{
    AckProperties, ConnectProperties, Disconnect, Packet, PacketId, ProtocolVersion, PubResponse,
    Publish, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use moat_types::{ClientId, QoS, Quota, QuotaLimit, SubscriptionFilter, Timestamp, TopicName};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::auth::{self, Permissions, Principal};
use crate::broker::Broker;
use crate::message::Message;
use crate::persist::{OutboundState, StoreOp};
use crate::quota::Rates;
use crate::session::{Inflight, SessionCell};
use crate::traffic::{SeenTopics, Traffic};
use crate::{ReasonCode, Wake};

/// Most messages moved into the outbox by one [`Connection::poll_outbound`] call, so that one
/// busy subscriber cannot monopolise its driver between reads.
const POLL_BUDGET: usize = 256;

/// An outbox's in-place encoding buffer larger than this is released when it empties.
const MAX_IDLE_DIRECT_BUFFER: usize = 16 * 1024;

/// Most bytes the hub adds to a message it forwards (subscription identifiers for up to the
/// subscription limit, topic alias, message expiry), used to skip measuring packets that
/// cannot exceed the client's Maximum Packet Size.
const OUTBOUND_HEADROOM: u64 = 64 * 1024;

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// The client sent DISCONNECT; `will` is true for reason 0x04 (Disconnect with Will).
    ClientDisconnect {
        /// Whether the will is still published.
        will: bool,
    },
    /// The client broke the protocol or a limit.
    Violation,
    /// Another connection took the session over.
    TakenOver,
    /// The hub ended the connection (shutdown, administrative action).
    Kicked,
    /// The network connection failed or the keep alive expired.
    Lost,
}

/// A decision to end the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// Reason code for the DISCONNECT sent to an MQTT 5 client.
    pub reason: ReasonCode,
    /// What happened.
    pub kind: CloseKind,
}

impl Close {
    /// A protocol or limit violation by the client.
    pub fn violation(reason: ReasonCode) -> Self {
        Self {
            reason,
            kind: CloseKind::Violation,
        }
    }

    /// The network connection was lost, or keep alive expired.
    pub fn lost(reason: ReasonCode) -> Self {
        Self {
            reason,
            kind: CloseKind::Lost,
        }
    }

    /// Whether the server should send DISCONNECT before closing (MQTT 5 only).
    pub fn notify_peer(&self) -> bool {
        match self.kind {
            CloseKind::ClientDisconnect { .. } => false,
            // A lost socket can take no DISCONNECT; an expired keep alive still may.
            CloseKind::Lost => self.reason == ReasonCode::KeepAliveTimeout,
            CloseKind::Violation | CloseKind::TakenOver | CloseKind::Kicked => true,
        }
    }

    /// Whether the will message is published (MQTT-3.1.2-8, -10).
    pub fn publishes_will(&self) -> bool {
        !matches!(self.kind, CloseKind::ClientDisconnect { will: false })
    }
}

/// What the outbox holds: a packet to encode, or one already encoded (a QoS 0 message is
/// encoded once and the bytes are shared by every subscriber that receives it unchanged).
#[derive(Debug)]
pub enum Outgoing {
    /// Encode for the connection's protocol version.
    Packet(Packet),
    /// Write as is.
    Encoded(Bytes),
}

/// Packets waiting to be written, each gated on a durability commit sequence.
///
/// PUBLISHes that wait for nothing while nothing else waits are encoded straight into
/// `direct`, which the driver writes before any queued item: everything in `direct` was
/// written while `items` was empty, so it precedes every item.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<(u64, Outgoing)>,
    gate: u64,
    pending_acks: usize,
    direct: BytesMut,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `packet`, to be sent once commit `commit` is durable (0: no wait). A packet
    /// never overtakes one appended before it.
    pub fn push(&mut self, packet: Packet, commit: u64) {
        self.gate = self.gate.max(commit);
        // QoS 2 messages are counted by the session's inbound identifiers instead.
        if matches!(packet, Packet::PubAck(_)) {
            self.pending_acks += 1;
        }
        self.items.push_back((self.gate, Outgoing::Packet(packet)));
    }

    /// Appends an already encoded packet, in order like [`Outbox::push`].
    pub fn push_encoded(&mut self, bytes: Bytes) {
        if self.items.is_empty() {
            self.direct.extend_from_slice(&bytes);
        } else {
            self.items.push_back((self.gate, Outgoing::Encoded(bytes)));
        }
    }

    /// Appends a PUBLISH for a connection speaking `version`, in order like
    /// [`Outbox::push`]; encoded at once when nothing is queued ahead of it.
    pub fn push_publish(&mut self, publish: Publish, version: ProtocolVersion, commit: u64) {
        if self.items.is_empty() && commit == 0 {
            moat_mqtt::encode_publish(&publish, publish.packet_id, version, &mut self.direct);
        } else {
            self.push(Packet::Publish(publish), commit);
        }
    }

    /// Moves the bytes encoded in place into `wbuf`: swapped when `wbuf` is empty (no copy),
    /// appended otherwise. Call before [`Outbox::pop_ready`].
    pub fn take_direct(&mut self, wbuf: &mut BytesMut) {
        if self.direct.is_empty() {
            return;
        }
        if wbuf.is_empty() {
            std::mem::swap(wbuf, &mut self.direct);
        } else {
            wbuf.extend_from_slice(&self.direct);
            self.direct.clear();
        }
    }

    /// The next packet whose commit is durable given `committed`.
    pub fn pop_ready(&mut self, committed: u64) -> Option<Outgoing> {
        if self
            .items
            .front()
            .is_some_and(|(gate, _)| *gate <= committed)
        {
            let (_, out) = self.items.pop_front()?;
            if matches!(out, Outgoing::Packet(Packet::PubAck(_))) {
                self.pending_acks -= 1;
            }
            Some(out)
        } else {
            None
        }
    }

    /// The commit sequence the first packet waits for, if it waits.
    pub fn blocked_on(&self, committed: u64) -> Option<u64> {
        self.items
            .front()
            .map(|(gate, _)| *gate)
            .filter(|gate| *gate > committed)
    }

    /// Frees the queue's storage when nothing waits, so that an idle connection does not
    /// keep room for several packets.
    pub fn release_if_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
        if self.direct.is_empty() && self.direct.capacity() > MAX_IDLE_DIRECT_BUFFER {
            self.direct = BytesMut::new();
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    broker: Broker,
    cell: Arc<SessionCell>,
    conn_id: u64,
    principal: Principal,
    client_id: ClientId,
    protocol: ProtocolVersion,
    keep_alive: u16,
    client_receive_maximum: u16,
    client_max_packet_size: u32,
    client_topic_alias_maximum: u16,
    /// Topic aliases in both directions, allocated on the first alias (most connections
    /// never use one, and an idle connection should not carry two empty maps).
    aliases: Option<Box<Aliases>>,
    resend: bool,
    waker: Arc<dyn Wake>,
    /// Sessions whose queues this connection's messages filled past the high watermark.
    congested: Vec<Arc<SessionCell>>,
    /// Sessions to wake at the end of the current batch of packets.
    pending_wakes: Vec<Arc<SessionCell>>,
    /// Messages routed since the last [`Connection::flush_wakes`], added to the broker's
    /// `messages_in` counter there.
    routed: u64,
    /// The session's permissions as of `permissions_generation`: checked per packet without
    /// touching the shared slot unless the hub swapped them since.
    permissions: Arc<dyn Permissions>,
    permissions_generation: u64,
    /// The last topic `permissions` allowed this connection to publish to (see
    /// `auth::check_publish_remembering`); cleared when they change.
    last_allowed_topic: Option<Box<[u8]>>,
    /// The quota of `permissions`, and the token buckets of its rates.
    quota: Quota,
    rates: Rates,
    /// Publishes counted since the last batch, folded into the session by `flush_wakes`.
    traffic_in: Traffic,
    /// Topics published to, for `Observer::first_topic`.
    seen_topics: SeenTopics,
}

/// A connection's topic aliases (MQTT-3.3.2-7 .. -12): the client's, and those the hub
/// assigned towards it.
#[derive(Debug, Default)]
struct Aliases {
    inbound: HashMap<u16, TopicName>,
    outbound: HashMap<TopicName, u16>,
}

/// The start of the rate buckets' clock: they start full, and refilling from here (any
/// real `now` is later) tops them up to their capacity.
const BUCKETS_EPOCH: Timestamp = Timestamp::from_millis(0);

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        broker: Broker,
        cell: Arc<SessionCell>,
        conn_id: u64,
        principal: Principal,
        client_id: ClientId,
        protocol: ProtocolVersion,
        keep_alive: u16,
        props: &ConnectProperties,
        session_present: bool,
        waker: Arc<dyn Wake>,
    ) -> Self {
        let cfg = broker.config();
        let v5 = protocol == ProtocolVersion::V5;
        let permissions_generation = cell.permissions_generation();
        let permissions = Arc::clone(&**cell.permissions());
        let quota = permissions.quota();
        Self {
            rates: Rates::new(&quota, BUCKETS_EPOCH),
            quota,
            traffic_in: Traffic::default(),
            seen_topics: SeenTopics::default(),
            permissions,
            permissions_generation,
            last_allowed_topic: None,
            client_receive_maximum: if v5 {
                props.receive_maximum.unwrap_or(u16::MAX)
            } else {
                cfg.max_inflight_outbound
            },
            client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            client_topic_alias_maximum: if v5 {
                props
                    .topic_alias_maximum
                    .unwrap_or(0)
                    .min(cfg.max_outbound_topic_aliases)
            } else {
                0
            },
            broker,
            cell,
            conn_id,
            principal,
            client_id,
            protocol,
            keep_alive,
            aliases: None,
            resend: session_present,
            waker,
            congested: Vec::new(),
            pending_wakes: Vec::new(),
            routed: 0,
        }
    }

    /// Picks up permissions the hub swapped since the last packet (one atomic load when
    /// nothing changed).
    fn refresh_permissions(&mut self) {
        let generation = self.cell.permissions_generation();
        if generation != self.permissions_generation {
            self.permissions = Arc::clone(&**self.cell.permissions());
            self.permissions_generation = generation;
            self.last_allowed_topic = None;
            let quota = self.permissions.quota();
            if quota != self.quota {
                self.quota = quota;
                self.rates = Rates::new(&quota, BUCKETS_EPOCH);
            }
        }
    }

    /// Counts and reports a quota hit.
    fn quota_hit(&self, limit: QuotaLimit) {
        self.broker.stats().quota_exceeded[limit.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(limit = %limit, "quota exceeded");
        self.permissions.quota_exceeded(limit);
    }

    /// Whether a rate quota throttles the connection: the driver stops handling and
    /// reading packets (cheap; the remaining time is [`throttled_for`](Self::throttled_for)).
    pub fn is_throttled(&self) -> bool {
        self.rates.is_throttled()
    }

    /// How long the driver must leave the connection unread because a rate quota
    /// (`messages_per_second`, `bytes_per_second`) is overdrawn at `now`.
    pub fn throttled_for(&mut self, now: Timestamp) -> Option<Duration> {
        self.rates.throttled_for(now)
    }

    /// The driver holds the connection unread for a rate quota with packets it already read
    /// waiting to be handled: the client offers more than its quota. Counts the part of the
    /// throttle not counted before into the session's [`Traffic::held_ms`] (what the hub's
    /// detection engine sees) and the broker's stats. Nothing when not throttled.
    pub fn note_held(&mut self, now: Timestamp) {
        let held = self.rates.held(now);
        if held.is_zero() {
            return;
        }
        let ms = u32::try_from(held.as_millis()).unwrap_or(u32::MAX);
        self.broker
            .stats()
            .quota_held_ms
            .fetch_add(u64::from(ms), Ordering::Relaxed);
        let mut st = self.cell.lock();
        if let Some(a) = st.attached.as_mut()
            && a.conn_id == self.conn_id
        {
            a.traffic.held_ms = a.traffic.held_ms.saturating_add(ms);
        }
    }

    /// The connection's id, unique for the life of the process.
    pub fn id(&self) -> u64 {
        self.conn_id
    }

    /// The session's client identifier (assigned or as sent).
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// Who is connected.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The protocol level.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// The decoder limits for this connection's packets.
    pub fn decode_limits(&self) -> moat_mqtt::Limits {
        moat_mqtt::Limits {
            max_packet_size: self.broker.config().max_packet_size,
            ..moat_mqtt::Limits::default()
        }
    }

    /// Wakes the subscribers the messages handled since the last call went to. The driver
    /// calls it after each batch of packets, before waiting for anything.
    pub fn flush_wakes(&mut self) {
        for cell in self.pending_wakes.drain(..) {
            cell.deliver_wake();
        }
        if self.routed > 0 {
            self.broker
                .stats()
                .messages_in
                .fetch_add(std::mem::take(&mut self.routed), Ordering::Relaxed);
        }
        if self.traffic_in.msgs_in > 0 {
            let mut st = self.cell.lock();
            if let Some(a) = st.attached.as_mut()
                && a.conn_id == self.conn_id
            {
                a.traffic.merge_in(&self.traffic_in);
            }
            drop(st);
            self.traffic_in = Traffic::default();
        }
    }

    /// Forgets the sessions this connection waits on, so that it is read again (the
    /// driver's backstop against a pause that does not end).
    pub fn clear_congestion(&mut self) {
        self.congested.clear();
    }

    /// Whether the last publish found a backed-up session (cheap; see [`Self::is_paused`]).
    pub fn has_congestion(&self) -> bool {
        !self.congested.is_empty()
    }

    /// Whether the driver should stop reading from this client because sessions its
    /// messages go to are backed up (flow control instead of drops). Re-checked on every
    /// wake; a session that drained, went offline or ended no longer counts.
    pub fn is_paused(&mut self) -> bool {
        if self.congested.is_empty() {
            return false;
        }
        let low = self.broker.config().queue_low_watermark();
        let waker = &self.waker;
        self.congested.retain(|cell| {
            let mut st = cell.lock();
            let backed_up = st.attached.is_some() && !st.ended && st.queue.len() > low;
            if backed_up {
                // Stay registered: the drain that crosses the low watermark wakes us.
                st.wait_for_space(waker);
            }
            backed_up
        });
        !self.congested.is_empty()
    }

    /// How long the connection may stay silent before it is closed: 1.5 × the granted keep
    /// alive (MQTT-3.1.2-24).
    pub fn keep_alive_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.keep_alive) * 1500)
    }

    fn v5(&self) -> bool {
        self.protocol == ProtocolVersion::V5
    }

    fn ack(&self, packet_id: PacketId, reason: ReasonCode) -> PubResponse {
        PubResponse {
            packet_id,
            // 3.1.1 acknowledgements carry no reason code.
            reason_code: if self.v5() {
                reason
            } else {
                ReasonCode::Success
            },
            properties: AckProperties::default(),
        }
    }

    /// Handles one packet from the client.
    pub fn handle(
        &mut self,
        packet: Packet,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, now, out),
            Packet::PubAck(r) => {
                self.on_puback(r.packet_id);
                Ok(())
            }
            Packet::PubRec(r) => {
                self.on_pubrec(r, out);
                Ok(())
            }
            Packet::PubRel(r) => {
                self.on_pubrel(r.packet_id, out);
                Ok(())
            }
            Packet::PubComp(r) => {
                self.on_pubcomp(r.packet_id);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s, now, out),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u, out);
                Ok(())
            }
            Packet::PingReq => {
                out.push(Packet::PingResp, 0);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(&d)),
            // MQTT-3.1.0-2: a second CONNECT is a protocol error. Enhanced authentication is
            // not offered, so AUTH is one too (MQTT-4.12.0-1). Server-to-client packets from
            // a client are protocol errors.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Close::violation(ReasonCode::ProtocolError)),
        }
    }

    fn on_publish(
        &mut self,
        mut p: Publish,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), Close> {
        let cfg = self.broker.config();
        // Receive Maximum (MQTT-3.3.4-9): unacknowledged QoS 1/2 PUBLISHes from the client.
        if p.qos != QoS::AtMostOnce {
            let limit = if self.v5() {
                usize::from(cfg.receive_maximum)
            } else {
                usize::from(u16::MAX)
            };
            let st = self.cell.lock();
            // A retransmitted QoS 2 PUBLISH (MQTT-4.4.0-1) is already counted.
            let retransmit = p.qos == QoS::ExactlyOnce
                && p.packet_id
                    .is_some_and(|id| st.inbound_qos2.contains(&id.get()));
            let unacked = out.pending_acks + st.inbound_qos2.len();
            drop(st);
            if !retransmit && unacked >= limit {
                return Err(Close::violation(ReasonCode::ReceiveMaximumExceeded));
            }
        }
        // MQTT-3.3.4-6: a client never sends Subscription Identifiers in PUBLISH.
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::violation(ReasonCode::ProtocolError));
        }
        // Topic aliases (MQTT-3.3.2-7 .. -12).
        let topic = match (p.topic.take(), p.properties.topic_alias.take()) {
            (topic, Some(alias)) => {
                if alias == 0 || alias > cfg.topic_alias_maximum {
                    return Err(Close::violation(ReasonCode::TopicAliasInvalid));
                }
                match topic {
                    Some(t) => {
                        self.aliases
                            .get_or_insert_default()
                            .inbound
                            .insert(alias, t.to_owned_bytes());
                        t
                    }
                    None => match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                        Some(t) => t.clone(),
                        None => return Err(Close::violation(ReasonCode::ProtocolError)),
                    },
                }
            }
            (Some(t), None) => t,
            (None, None) => return Err(Close::violation(ReasonCode::ProtocolError)),
        };
        // Rate quotas count every PUBLISH, allowed or not: the message is handled, and the
        // driver then stops reading until the bucket is out of debt.
        self.refresh_permissions();
        if self.rates.is_limited()
            && let Some(limit) = self.rates.charge(p.payload.len(), now)
        {
            self.quota_hit(limit);
        }
        self.traffic_in.record_in(p.payload.len());
        let packet_id = p.packet_id;
        let qos = p.qos;
        let reply = |conn: &Self, reason: ReasonCode, out: &mut Outbox, commit: u64| {
            if let Some(id) = packet_id {
                let ack = conn.ack(id, reason);
                match qos {
                    QoS::AtLeastOnce => out.push(Packet::PubAck(ack), commit),
                    QoS::ExactlyOnce => out.push(Packet::PubRec(ack), commit),
                    QoS::AtMostOnce => {}
                }
            }
        };
        if !self
            .broker
            .topic_within_limits(topic.len(), topic.level_count())
        {
            reply(self, ReasonCode::TopicNameInvalid, out, 0);
            return Ok(());
        }
        if let Some(max) = self.quota.max_payload_bytes
            && p.payload.len() > max as usize
        {
            self.quota_hit(QuotaLimit::PayloadSize);
            reply(self, ReasonCode::QuotaExceeded, out, 0);
            return Ok(());
        }
        // MQTT-3.3.2.3.2: a payload declared UTF-8 must be UTF-8; the hub checks it so that
        // subscribers can rely on the indicator.
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            reply(self, ReasonCode::PayloadFormatInvalid, out, 0);
            return Ok(());
        }
        // QoS 2 duplicate of a message already received: acknowledge, do not route again
        // (MQTT-4.3.3, method B).
        if qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
            && self.cell.lock().inbound_qos2.contains(&id.get())
        {
            reply(self, ReasonCode::Success, out, 0);
            return Ok(());
        }
        let message = Message::new(topic.clone(), p, now, Some(self.cell.id));
        let retain = message.retain;
        // (Permissions were refreshed for this packet before the rate charge above.)
        let repeat = !retain && self.last_allowed_topic.as_deref() == Some(topic.as_bytes());
        let Some(authorized) = auth::check_publish_remembering(
            &*self.permissions,
            &mut self.last_allowed_topic,
            &topic,
            retain,
            message,
        ) else {
            self.broker
                .stats()
                .publish_denied
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %topic, "publish denied");
            self.permissions.publish_denied(&topic, retain);
            reply(self, ReasonCode::NotAuthorized, out, 0);
            return Ok(());
        };
        if !repeat
            && let Some(observer) = self.broker.observer()
            && self.seen_topics.insert(topic.as_bytes())
        {
            observer.first_topic(&self.client_id, &self.principal, &topic);
        }
        if let Some(tap) = self.broker.tap()
            && tap.wants(&topic)
        {
            tap.publish(&self.principal, &topic, authorized.get().payload.clone());
        }
        let mut ops = Vec::new();
        if qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
        {
            let mut st = self.cell.lock();
            st.inbound_qos2.insert(id.get());
            if st.is_persistent() {
                ops.push(StoreOp::PutInboundQos2 {
                    client_id: self.client_id.clone(),
                    packet_id: id.get(),
                });
            }
        }
        let outcome = self.broker.route_from(
            authorized,
            ops,
            now,
            Some(&self.waker),
            &mut self.congested,
            Some(&mut self.pending_wakes),
        );
        self.routed += 1;
        let reason = if outcome.matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        reply(self, reason, out, outcome.commit);
        Ok(())
    }

    fn on_puback(&mut self, id: PacketId) {
        let mut st = self.cell.lock();
        let Some(pos) = st
            .inflight
            .iter()
            .position(|f| f.packet_id == id && f.pending.qos == QoS::AtLeastOnce)
        else {
            return;
        };
        let Some(done) = st.inflight.remove(pos) else {
            return;
        };
        st.packet_ids.release(id.get());
        drop(st);
        self.forget(&done);
    }

    fn forget(&self, done: &Inflight) {
        if done.pending.stored {
            self.broker.submit(vec![StoreOp::DeleteOutbound {
                client_id: self.client_id.clone(),
                seq: done.pending.seq,
            }]);
        }
    }

    fn on_pubrec(&mut self, r: PubResponse, out: &mut Outbox) {
        let mut st = self.cell.lock();
        let pos = st
            .inflight
            .iter()
            .position(|f| f.packet_id == r.packet_id && f.pending.qos == QoS::ExactlyOnce);
        let Some(pos) = pos else {
            drop(st);
            out.push(
                Packet::PubRel(self.ack(r.packet_id, ReasonCode::PacketIdentifierNotFound)),
                0,
            );
            return;
        };
        // A failure code ends the flow (MQTT-4.3.3 / 4.9).
        if r.reason_code.is_error() {
            if let Some(done) = st.inflight.remove(pos) {
                st.packet_ids.release(r.packet_id.get());
                drop(st);
                self.forget(&done);
            }
            return;
        }
        let entry = &mut st.inflight[pos];
        let first = !entry.released;
        entry.released = true;
        let stored = entry.pending.stored;
        let seq = entry.pending.seq;
        drop(st);
        let mut gate = 0;
        if first && stored {
            // Released must be durable before PUBREL leaves, so that a restart resends
            // PUBREL rather than the PUBLISH (MQTT-4.4.0-1).
            gate = self.broker.submit(vec![StoreOp::SetOutboundState {
                client_id: self.client_id.clone(),
                seq,
                state: OutboundState::Released(r.packet_id.get()),
            }]);
        }
        out.push(Packet::PubRel(PubResponse::success(r.packet_id)), gate);
    }

    fn on_pubcomp(&mut self, id: PacketId) {
        let mut st = self.cell.lock();
        let Some(pos) = st
            .inflight
            .iter()
            .position(|f| f.packet_id == id && f.released)
        else {
            return;
        };
        let Some(done) = st.inflight.remove(pos) else {
            return;
        };
        st.packet_ids.release(id.get());
        drop(st);
        self.forget(&done);
    }

    fn on_pubrel(&mut self, id: PacketId, out: &mut Outbox) {
        let (found, persistent) = {
            let mut st = self.cell.lock();
            (st.inbound_qos2.remove(&id.get()), st.is_persistent())
        };
        let mut commit = 0;
        if found && persistent {
            commit = self.broker.submit(vec![StoreOp::DeleteInboundQos2 {
                client_id: self.client_id.clone(),
                packet_id: id.get(),
            }]);
        }
        let reason = if found {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        out.push(Packet::PubComp(self.ack(id, reason)), commit);
    }

    fn on_subscribe(
        &mut self,
        s: Subscribe,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut ops = Vec::new();
        let max_subscriptions = self.broker.config().max_subscriptions;
        for (wire, options) in s.filters {
            let Ok(filter) = SubscriptionFilter::parse(&wire) else {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            if !self
                .broker
                .topic_within_limits(filter.filter.len(), filter.filter.level_count())
            {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            // MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
            if filter.share.is_some() && options.no_local {
                return Err(Close::violation(ReasonCode::ProtocolError));
            }
            let topic_filter = filter.filter.clone();
            let shared = filter.share.is_some();
            self.refresh_permissions();
            let Some(authorized) = auth::check_subscribe(&*self.permissions, &topic_filter, filter)
            else {
                self.broker
                    .stats()
                    .subscribe_denied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(filter = %wire, "subscribe denied");
                self.permissions.subscribe_denied(&topic_filter);
                codes.push(ReasonCode::NotAuthorized);
                continue;
            };
            {
                // The policy's quota (read with the permissions just refreshed) only ever
                // lowers the hub-wide limit.
                let quota = self.quota.max_subscriptions.map(|q| q as usize);
                let limit = quota.map_or(max_subscriptions, |q| q.min(max_subscriptions));
                let st = self.cell.lock();
                if !st.subscriptions.contains_key(&wire) && st.subscriptions.len() >= limit {
                    drop(st);
                    if quota.is_some_and(|q| q < max_subscriptions) {
                        self.quota_hit(QuotaLimit::Subscriptions);
                    }
                    codes.push(ReasonCode::QuotaExceeded);
                    continue;
                }
            }
            let existed = self.broker.subscribe(
                &self.cell,
                wire,
                authorized,
                options,
                s.subscription_identifier,
                &mut ops,
            );
            if let Some(observer) = self.broker.observer() {
                observer.subscribed(&self.client_id, &self.principal, &topic_filter);
            }
            let send = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions (MQTT-4.8.2).
            if send && !shared {
                self.broker.send_retained(
                    &self.cell,
                    &topic_filter,
                    options.qos,
                    s.subscription_identifier,
                    now,
                    &mut ops,
                );
            }
            codes.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
        }
        let commit = self.broker.submit(ops);
        out.push(
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: AckProperties::default(),
                reason_codes: codes,
            }),
            commit,
        );
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, out: &mut Outbox) {
        let mut ops = Vec::new();
        let codes = u
            .filters
            .iter()
            .map(|wire| {
                if SubscriptionFilter::parse(wire).is_err() {
                    ReasonCode::TopicFilterInvalid
                } else if self.broker.unsubscribe(&self.cell, wire, &mut ops) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let commit = self.broker.submit(ops);
        out.push(
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: AckProperties::default(),
                reason_codes: codes,
            }),
            commit,
        );
    }

    fn on_disconnect(&mut self, d: &Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            let mut st = self.cell.lock();
            // MQTT-3.14.2-2: a session created with expiry 0 cannot be given one now.
            if st.expiry_interval == 0 && expiry != 0 {
                return Close::violation(ReasonCode::ProtocolError);
            }
            st.expiry_interval = expiry.min(self.broker.config().max_session_expiry_secs());
        }
        Close {
            reason: ReasonCode::Success,
            kind: CloseKind::ClientDisconnect {
                will: d.reason_code == ReasonCode::DisconnectWithWill,
            },
        }
    }

    /// Moves queued messages into the outbox within the client's Receive Maximum, and
    /// reports whether the hub wants this connection closed. Returns `Ok(true)` when more
    /// messages are ready than one call moves.
    pub fn poll_outbound(&mut self, now: Timestamp, out: &mut Outbox) -> Result<bool, Close> {
        let window = usize::from(
            self.client_receive_maximum
                .min(self.broker.config().max_inflight_outbound)
                .max(1),
        );
        let mut ops = Vec::new();
        let cell = self.cell.clone();
        let mut st = cell.lock();
        match &st.attached {
            Some(a) if a.conn_id == self.conn_id => {
                if let Some(reason) = a.kick {
                    return Err(Close {
                        reason,
                        kind: CloseKind::Kicked,
                    });
                }
            }
            _ => {
                return Err(Close {
                    reason: ReasonCode::SessionTakenOver,
                    kind: CloseKind::TakenOver,
                });
            }
        }
        if self.resend {
            // MQTT-4.4.0-1: resend unacknowledged PUBLISH (DUP set) and PUBREL, in order,
            // with their original packet identifiers.
            self.resend = false;
            let inflight: Vec<Inflight> = st.inflight.iter().cloned().collect();
            for f in &inflight {
                if f.released {
                    out.push(Packet::PubRel(PubResponse::success(f.packet_id)), 0);
                } else if let Some(publish) =
                    self.build_publish(&f.pending, Some(f.packet_id), true, now)
                {
                    out.push_publish(publish, self.protocol, 0);
                } else {
                    // Too large for this connection's Maximum Packet Size: dropped as if
                    // delivered (MQTT-3.1.2-25), so that it does not hold a window slot.
                    st.inflight.retain(|g| g.packet_id != f.packet_id);
                    st.packet_ids.release(f.packet_id.get());
                    if f.pending.stored {
                        ops.push(StoreOp::DeleteOutbound {
                            client_id: self.client_id.clone(),
                            seq: f.pending.seq,
                        });
                    }
                }
            }
        }
        let mut budget = POLL_BUDGET;
        let mut sent: u64 = 0;
        while budget > 0 {
            let Some(front) = st.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(pending) = st.queue.pop_front() else {
                break;
            };
            budget -= 1;
            if pending.message.is_expired(now) {
                self.broker
                    .stats()
                    .dropped_expired
                    .fetch_add(1, Ordering::Relaxed);
                if pending.stored {
                    ops.push(StoreOp::DeleteOutbound {
                        client_id: self.client_id.clone(),
                        seq: pending.seq,
                    });
                }
                continue;
            }
            if let Some(a) = st.attached.as_mut() {
                a.traffic.record_out(pending.message.payload.len());
            }
            if let Some(bytes) = self.shared_encoding(&pending) {
                out.push_encoded(bytes);
                sent += 1;
                continue;
            }
            let packet_id = if pending.qos == QoS::AtMostOnce {
                None
            } else {
                st.packet_ids.allocate()
            };
            let Some(publish) = self.build_publish(&pending, packet_id, false, now) else {
                // Larger than the client accepts (MQTT-3.1.2-25): dropped as if delivered.
                if let Some(id) = packet_id {
                    st.packet_ids.release(id.get());
                }
                if pending.stored {
                    ops.push(StoreOp::DeleteOutbound {
                        client_id: self.client_id.clone(),
                        seq: pending.seq,
                    });
                }
                continue;
            };
            let mut gate = 0;
            if let Some(packet_id) = packet_id {
                if pending.stored {
                    let op = StoreOp::SetOutboundState {
                        client_id: self.client_id.clone(),
                        seq: pending.seq,
                        state: OutboundState::Sent(packet_id.get()),
                    };
                    if pending.qos == QoS::ExactlyOnce {
                        // Exactly once: the packet identifier must be durable before the
                        // PUBLISH leaves, or a crash would resend it under a new one and
                        // the receiver could not recognise the duplicate (MQTT-4.3.3).
                        ops.push(op);
                        gate = self.broker.submit(std::mem::take(&mut ops));
                    } else {
                        ops.push(op);
                    }
                }
                st.inflight.push_back(Inflight {
                    pending,
                    packet_id,
                    released: false,
                });
            }
            out.push_publish(publish, self.protocol, gate);
            sent += 1;
        }
        if sent > 0 {
            // Once per call rather than per message: the counter is shared by every
            // connection, and a write per message bounced its cache line between cores.
            self.broker
                .stats()
                .messages_out
                .fetch_add(sent, Ordering::Relaxed);
        }
        let waiters = if st.queue.len() <= self.broker.config().queue_low_watermark() {
            st.take_space_waiters()
        } else {
            Vec::new()
        };
        let more = budget == 0
            && st
                .queue
                .front()
                .is_some_and(|f| f.qos == QoS::AtMostOnce || st.inflight.len() < window);
        drop(st);
        self.broker.submit(ops);
        for w in waiters {
            w.wake();
        }
        Ok(more)
    }

    /// The message's shared QoS 0 encoding, when this delivery needs nothing per client: no
    /// topic alias, no subscription identifier, no expiry to count down, and a packet that
    /// fits the client's Maximum Packet Size. `None` sends it the general way.
    fn shared_encoding(&self, pending: &crate::session::Pending) -> Option<Bytes> {
        let m = &pending.message;
        let per_client = self.v5()
            && (self.client_topic_alias_maximum > 0
                || !pending.subscription_ids.is_empty()
                || m.expires_at.is_some());
        // A message for one subscriber is encoded straight into the write buffer instead.
        if pending.qos != QoS::AtMostOnce || per_client || !m.is_fanned_out() {
            return None;
        }
        let bytes = m.encoded_qos0(self.protocol, pending.retain);
        (u64::try_from(bytes.len()).unwrap_or(u64::MAX) <= u64::from(self.client_max_packet_size))
            .then_some(bytes)
    }

    /// Builds the PUBLISH for one delivery, assigning an outbound topic alias when the
    /// client accepts them. `None` if the packet would exceed the client's Maximum Packet
    /// Size.
    fn build_publish(
        &mut self,
        pending: &crate::session::Pending,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Timestamp,
    ) -> Option<Publish> {
        let m = &pending.message;
        let v5 = self.v5();
        let mut properties = if v5 {
            let mut p = m.properties.clone();
            p.message_expiry_interval = m.remaining_expiry(now);
            p.subscription_identifiers = pending.subscription_ids.clone();
            p
        } else {
            moat_mqtt::PublishProperties::default()
        };
        let mut topic = Some(m.topic.clone());
        let mut new_alias = None;
        if self.client_topic_alias_maximum > 0 {
            let assigned = self.aliases.as_ref().map_or(0, |a| a.outbound.len());
            if let Some(&alias) = self.aliases.as_ref().and_then(|a| a.outbound.get(&m.topic)) {
                properties.topic_alias = Some(alias);
                topic = None;
            } else if assigned < usize::from(self.client_topic_alias_maximum) {
                let alias = u16::try_from(assigned + 1).unwrap_or(u16::MAX);
                properties.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        let publish = Publish {
            dup,
            qos: pending.qos,
            retain: pending.retain,
            topic,
            packet_id,
            properties,
            payload: m.payload.clone(),
        };
        // A message accepted under our own packet limit, plus what the hub adds (subscription
        // identifiers, an alias, the expiry interval), stays far below a client limit that is
        // more than OUTBOUND_HEADROOM above ours; only closer limits need measuring.
        let limit = self
            .client_max_packet_size
            .min(moat_mqtt::Limits::PROTOCOL_MAX_PACKET_SIZE);
        if u64::from(limit) < u64::from(self.broker.config().max_packet_size) + OUTBOUND_HEADROOM {
            let len = moat_mqtt::encoded_publish_len(&publish, packet_id, self.protocol);
            if u64::try_from(len).unwrap_or(u64::MAX) > u64::from(limit) {
                self.broker
                    .stats()
                    .dropped_too_large
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        if let Some(alias) = new_alias {
            self.aliases
                .get_or_insert_default()
                .outbound
                .insert(m.topic.to_owned_bytes(), alias);
        }
        Some(publish)
    }

    /// Ends the connection: detaches it from its session, publishes or schedules the will,
    /// and ends the session if its expiry interval is 0.
    pub fn closed(mut self, close: &Close, now: Timestamp) {
        self.flush_wakes();
        self.broker
            .disconnected(&self.cell, self.conn_id, close.publishes_will(), now);
    }

    /// The DISCONNECT to send for `close`, if the protocol allows one (MQTT 5 only).
    pub fn disconnect_packet(&self, close: &Close) -> Option<Packet> {
        (self.v5() && close.notify_peer())
            .then(|| Packet::Disconnect(Disconnect::with_reason(close.reason)))
    }
}
