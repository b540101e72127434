//! Session state (MQTT-4.1): what the hub keeps for a client id across connections.

use arc_swap::ArcSwap;
use moat_mqtt::{PacketId, ProtocolVersion, SubscriptionOptions};
use moat_types::{ClientId, QoS, SubscriptionFilter, Timestamp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::{Permissions, Principal};
use crate::message::Message;
use crate::{ReasonCode, Wake};

/// The permissions of a session restored from storage whose client has not connected yet:
/// nothing to publish or subscribe (no connection), and receiving follows the subscriptions
/// authorized when they were made. The next CONNECT binds the real ones and re-checks every
/// subscription.
#[derive(Debug)]
struct Unbound;

impl Permissions for Unbound {
    fn may_publish(&self, _: &moat_types::TopicName) -> bool {
        false
    }
    fn may_subscribe(&self, _: &moat_types::TopicFilter) -> bool {
        false
    }
}

/// A session shared between the registry, the router and at most one live connection.
#[derive(Debug)]
pub(crate) struct SessionCell {
    /// Unique for the life of the process; the router's key.
    pub id: u64,
    pub client_id: ClientId,
    online: AtomicBool,
    /// Set while some publisher holds this session in its deferred wake list.
    wake_pending: AtomicBool,
    /// What the session's identity may do; swapped when policies change.
    permissions: ArcSwap<Arc<dyn Permissions>>,
    /// Cached `permissions.checks_receive()`, so deliveries skip the load when false.
    checks_receive: AtomicBool,
    /// Bumped at every swap, so that the connection re-reads `permissions` only then.
    permissions_generation: AtomicU64,
    state: Mutex<SessionState>,
}

impl SessionCell {
    pub fn new(id: u64, client_id: ClientId, state: SessionState) -> Arc<Self> {
        Arc::new(Self {
            id,
            client_id,
            online: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            permissions: ArcSwap::from_pointee(Arc::new(Unbound) as Arc<dyn Permissions>),
            checks_receive: AtomicBool::new(false),
            permissions_generation: AtomicU64::new(0),
            state: Mutex::new(state),
        })
    }

    /// What the session's identity may do now.
    pub fn permissions(&self) -> arc_swap::Guard<Arc<Arc<dyn Permissions>>> {
        self.permissions.load()
    }

    /// Replaces the permissions (at CONNECT, and when policies change). The state lock
    /// must not be held.
    pub fn set_permissions(&self, permissions: Arc<dyn Permissions>) {
        // Under the state lock, like `subscription_added`: a subscription added meanwhile is
        // either seen here or sees the new permissions there.
        let st = self.lock();
        let checks = self.receive_checks_needed(&permissions, &st);
        self.checks_receive.store(checks, Ordering::Release);
        self.permissions.store(Arc::new(permissions));
        drop(st);
        self.permissions_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever [`set_permissions`](Self::set_permissions) runs.
    pub fn permissions_generation(&self) -> u64 {
        self.permissions_generation.load(Ordering::Acquire)
    }

    /// Whether deliveries to this session must be checked one by one: only when the
    /// permissions have receive rules that some subscription reaches beyond.
    fn receive_checks_needed(&self, permissions: &Arc<dyn Permissions>, st: &SessionState) -> bool {
        permissions.checks_receive()
            && st
                .subscriptions
                .values()
                .any(|s| !permissions.may_receive_all(&s.filter.filter))
    }

    /// Before a subscription is routed, with the state lock held: deliveries are checked
    /// from now on if it reaches beyond the receive rules.
    pub fn subscription_added(&self, filter: &moat_types::TopicFilter) {
        if !self.checks_receive.load(Ordering::Acquire)
            && !self.permissions().may_receive_all(filter)
        {
            self.checks_receive.store(true, Ordering::Release);
        }
    }

    /// May a message on `topic` be delivered to this session?
    pub fn may_receive(&self, topic: &moat_types::TopicName) -> bool {
        !self.checks_receive.load(Ordering::Acquire) || self.permissions().may_receive(topic)
    }

    /// Whether a connection is attached (a hint for shared-subscription picks).
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Marks a wake as pending; true if the caller must deliver it (nobody else will).
    pub fn claim_wake(&self) -> bool {
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Delivers a pending wake: clears the mark first, so that a message queued after this
    /// point claims a new wake rather than relying on this one.
    pub fn deliver_wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
        self.lock().wake();
    }

    /// Locks the state. A poisoned lock means a panic elsewhere already broke an invariant
    /// of this session only; its data is still memory-safe, so it is used as is.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A subscription as the session records it. Options and identifier are kept so that the
/// policy engine can re-evaluate live subscriptions.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub(crate) struct SubRecord {
    pub filter: SubscriptionFilter,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// A message waiting to be sent.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub seq: u64,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub stored: bool,
}

/// A QoS 1/2 message sent and not yet fully acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Inflight {
    pub pending: Pending,
    pub packet_id: PacketId,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
}

/// The live connection a session is attached to.
pub(crate) struct Attached {
    pub conn_id: u64,
    pub waker: Arc<dyn Wake>,
    /// Set when the hub wants that connection closed (takeover, administrative action).
    pub kick: Option<ReasonCode>,
    /// What the connection sent and received since the hub last collected it.
    pub traffic: crate::traffic::Traffic,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("conn_id", &self.conn_id)
            .field("kick", &self.kick)
            .finish_non_exhaustive()
    }
}

/// A will message waiting for its delay (MQTT-3.1.3.2.2).
#[derive(Debug, Clone)]
pub(crate) struct WillSpec {
    pub message: Arc<Message>,
    pub delay_secs: u32,
}

/// Packet identifiers in use towards the client: a bitmap allocated on first use so that an
/// idle session costs nothing.
#[derive(Debug, Default)]
pub(crate) struct PacketIds {
    bits: Option<Box<[u64; 1024]>>,
    next: u16,
}

impl PacketIds {
    fn is_set(&self, id: u16) -> bool {
        self.bits
            .as_ref()
            .is_some_and(|b| b[usize::from(id / 64)] & (1 << (id % 64)) != 0)
    }

    pub fn mark(&mut self, id: u16) {
        let bits = self.bits.get_or_insert_with(|| Box::new([0; 1024]));
        bits[usize::from(id / 64)] |= 1 << (id % 64);
    }

    pub fn release(&mut self, id: u16) {
        if let Some(bits) = self.bits.as_mut() {
            bits[usize::from(id / 64)] &= !(1 << (id % 64));
        }
    }

    /// The next free identifier. The caller bounds in-flight messages far below 65,535, so
    /// one is always free.
    pub fn allocate(&mut self) -> Option<PacketId> {
        for _ in 0..=u16::MAX {
            self.next = self.next.wrapping_add(1);
            if self.next == 0 {
                self.next = 1;
            }
            if !self.is_set(self.next) {
                self.mark(self.next);
                return PacketId::new(self.next);
            }
        }
        None
    }
}

/// Everything a session owns. Guarded by [`SessionCell::lock`].
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Session Expiry Interval in seconds (0: ends with the connection).
    pub expiry_interval: u32,
    pub protocol: ProtocolVersion,
    /// Keyed by the filter as sent (with any `$share/` prefix).
    pub subscriptions: HashMap<String, SubRecord>,
    pub queue: VecDeque<Pending>,
    pub inflight: VecDeque<Inflight>,
    pub packet_ids: PacketIds,
    pub inbound_qos2: HashSet<u16>,
    pub next_seq: u64,
    pub attached: Option<Attached>,
    pub disconnected_at: Option<Timestamp>,
    /// The will of the attached connection.
    pub will: Option<WillSpec>,
    /// A will waiting for its delay after the connection closed.
    pub pending_will: Option<(Timestamp, Arc<Message>)>,
    /// Set when the session is removed from the registry; late deliveries are ignored.
    pub ended: bool,
    /// Whether the store holds a record of this session (so ending it must delete it, even
    /// if its expiry interval was set to 0 since).
    pub persisted: bool,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Publishers paused because this session's queue passed its high watermark; woken when
    /// it drains below the low watermark or the session goes offline.
    pub space_waiters: Vec<Arc<dyn Wake>>,
    /// Who last connected to this session (re-authorized when policies change); `None` for
    /// a session restored from storage until its client connects.
    pub principal: Option<Principal>,
}

impl SessionState {
    pub fn new(protocol: ProtocolVersion, expiry_interval: u32) -> Self {
        Self {
            expiry_interval,
            protocol,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            packet_ids: PacketIds::default(),
            inbound_qos2: HashSet::new(),
            next_seq: 1,
            attached: None,
            disconnected_at: None,
            will: None,
            pending_will: None,
            ended: false,
            persisted: false,
            dropped: 0,
            space_waiters: Vec::new(),
            principal: None,
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// Wakes the attached connection, if any.
    pub fn wake(&self) {
        if let Some(a) = &self.attached {
            a.waker.wake();
        }
    }

    /// Registers a publisher to be woken when this queue has room again.
    pub fn wait_for_space(&mut self, waker: &Arc<dyn Wake>) {
        if !self.space_waiters.iter().any(|w| Arc::ptr_eq(w, waker)) {
            self.space_waiters.push(waker.clone());
        }
    }

    /// Takes the publishers waiting for room; the caller wakes them after unlocking.
    pub fn take_space_waiters(&mut self) -> Vec<Arc<dyn Wake>> {
        std::mem::take(&mut self.space_waiters)
    }
}
