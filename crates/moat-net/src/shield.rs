//! The pre-authentication shield: what a connection must pass right after `accept()`, before
//! the hub spends a TLS handshake on it.
//!
//! ```text
//! accept() ─▶ banned address or network? ──yes──▶ close        (refused{reason="banned"})
//!               │ no (one ArcSwap load, no lock)
//!               ▼
//!             exempt address? ──yes──▶ admitted, untracked
//!               │ no
//!               ▼ (one mutex, a leaf)
//!             address bucket empty? ──yes──▶ close             (refused{reason="rate"})
//!             address at its concurrent cap? ──yes──▶ close    (refused{reason="concurrent"})
//!             network (/24, /64) bucket empty? ──yes──▶ close  (refused{reason="network_rate"})
//!               │ no
//!               ▼
//!             admitted: a `ShieldGuard` holds the address's concurrent slot until the
//!             connection task ends
//! ```
//!
//! Authentication failures seen later (a refused client certificate, a CONNECT refused as
//! not authorized or banned) are reported with [`Shield::note_failure`], keyed on the address
//! and, when the identity is proven, on the device. [`AutoBanLimits::failures`] of them within
//! [`AutoBanLimits::window`] earn a ban of [`AutoBanLimits::base`], doubled for every repeat
//! offence up to [`AutoBanLimits::max`], and forgotten after [`AutoBanLimits::forget_after`]
//! without a failure.
//!
//! **Bounded memory.** Each table (addresses, networks, offenders) holds at most
//! [`ShieldLimits::tracked`] entries (about 100 bytes each: 65,536 entries are about 6.5 MB per
//! table). A new key at capacity evicts the least recently seen half of the table first
//! (amortised O(1) per insertion), so millions of addresses or identities passing through
//! cost no more. The one exception: an address with open connections is never evicted (its
//! concurrent count would be lost), so the address table can exceed its capacity by at most the
//! number of open connections, which the process's descriptor limit bounds.
//!
//! The logic takes `now` (a monotonic [`Instant`] for rates and windows, wall-clock
//! milliseconds for ban expiry) and reads no clock itself, so tests drive it with any time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// Most bans in force at once. Beyond it no automatic ban is issued (operators' bans still
/// are, through [`Shield::set_bans`]): the list, copied on each automatic ban, stays bounded
/// however many addresses misbehave.
pub const MAX_BANS: usize = 100_000;

/// An IP network: an address with its host bits zero and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IpNetError(String);

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// `addr` with every bit past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl IpNet {
    /// The network `addr/prefix`; refused if the prefix is too long for the address family or
    /// `addr` has host bits set (so that `10.0.0.1/8` is not silently read as `10.0.0.0/8`).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let addr = addr.to_canonical();
        if prefix > max_prefix(addr) {
            return Err(IpNetError(format!(
                "prefix /{prefix} is too long for {addr}"
            )));
        }
        if masked(addr, prefix) != addr {
            return Err(IpNetError(format!(
                "{addr}/{prefix} has host bits set; the network is {}/{prefix}",
                masked(addr, prefix)
            )));
        }
        Ok(Self { addr, prefix })
    }

    /// The network of `prefix` bits that contains `addr`.
    pub fn containing(addr: IpAddr, prefix: u8) -> Self {
        let addr = addr.to_canonical();
        let prefix = prefix.min(max_prefix(addr));
        Self {
            addr: masked(addr, prefix),
            prefix,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// `192.0.2.0/24`, `2001:db8::/32`; a bare address is a single-host network.
    fn from_str(s: &str) -> Result<Self, IpNetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError(format!("{s:?} is not an IP network like 192.0.2.0/24")))?;
        let prefix = match prefix {
            None => max_prefix(addr.to_canonical()),
            Some(p) => p
                .parse()
                .map_err(|_| IpNetError(format!("{s:?}: the prefix length must be a number")))?,
        };
        Self::new(addr, prefix)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a ban applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// One source address (refused before TLS).
    Address(IpAddr),
    /// A network of source addresses (refused before TLS).
    Network(IpNet),
    /// A device, by id (refused at CONNECT).
    Device(String),
    /// An MQTT client id, whoever presents it (refused at CONNECT).
    ClientId(String),
}

/// When a ban stops applying: milliseconds since the Unix epoch, or `None` for never.
pub type BanExpiry = Option<u64>;

fn in_force(expiry: BanExpiry, now_ms: u64) -> bool {
    expiry.is_none_or(|at| now_ms < at)
}

fn later(a: BanExpiry, b: BanExpiry) -> BanExpiry {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// The bans in force: an immutable snapshot, swapped whole (see [`Shield::set_bans`]).
/// Expired bans stop applying by themselves; the next snapshot leaves them out.
#[derive(Clone, Debug, Default)]
pub struct BanList {
    addresses: HashMap<IpAddr, BanExpiry>,
    /// By (IPv6?, prefix length): network address → expiry. A lookup masks the address once
    /// per distinct prefix length, not once per ban.
    networks: BTreeMap<(bool, u8), HashMap<IpAddr, BanExpiry>>,
    devices: HashMap<String, BanExpiry>,
    client_ids: HashMap<String, BanExpiry>,
}

impl BanList {
    /// Adds a ban; of two bans on the same target the longer one holds.
    pub fn insert(&mut self, target: BanTarget, expiry: BanExpiry) {
        fn put<K: Eq + Hash>(map: &mut HashMap<K, BanExpiry>, key: K, expiry: BanExpiry) {
            map.entry(key)
                .and_modify(|e| *e = later(*e, expiry))
                .or_insert(expiry);
        }
        match target {
            BanTarget::Address(ip) => put(&mut self.addresses, ip.to_canonical(), expiry),
            BanTarget::Network(net) => put(
                self.networks
                    .entry((net.addr().is_ipv6(), net.prefix()))
                    .or_default(),
                net.addr(),
                expiry,
            ),
            BanTarget::Device(id) => put(&mut self.devices, id, expiry),
            BanTarget::ClientId(id) => put(&mut self.client_ids, id, expiry),
        }
    }

    /// How many bans it holds (expired ones included until the next snapshot).
    pub fn len(&self) -> usize {
        self.addresses.len()
            + self.networks.values().map(HashMap::len).sum::<usize>()
            + self.devices.len()
            + self.client_ids.len()
    }

    /// Whether it holds no ban.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `ip` is banned, by address or by a network containing it.
    pub fn address_banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        let ip = ip.to_canonical();
        if self
            .addresses
            .get(&ip)
            .is_some_and(|e| in_force(*e, now_ms))
        {
            return true;
        }
        self.networks.iter().any(|((v6, prefix), nets)| {
            *v6 == ip.is_ipv6()
                && nets
                    .get(&masked(ip, *prefix))
                    .is_some_and(|e| in_force(*e, now_ms))
        })
    }

    /// Whether a CONNECT from `device` (if the principal is one) with `client_id` is banned.
    pub fn identity_banned(&self, device: Option<&str>, client_id: &str, now_ms: u64) -> bool {
        device.is_some_and(|d| self.devices.get(d).is_some_and(|e| in_force(*e, now_ms)))
            || self
                .client_ids
                .get(client_id)
                .is_some_and(|e| in_force(*e, now_ms))
    }
}

/// Automatic bans after repeated authentication failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoBanLimits {
    /// Failures within [`window`](Self::window) that earn a ban. Default 20.
    pub failures: u32,
    /// Window the failures are counted in. Default 10 minutes.
    pub window: Duration,
    /// Length of a first ban. Default 5 minutes.
    pub base: Duration,
    /// Longest ban: each repeat offence doubles the last, up to this. Default 24 hours.
    pub max: Duration,
    /// An offender with no failure for this long starts again from a first offence.
    /// Default 24 hours.
    pub forget_after: Duration,
}

impl Default for AutoBanLimits {
    fn default() -> Self {
        Self {
            failures: 20,
            window: Duration::from_secs(600),
            base: Duration::from_secs(300),
            max: Duration::from_secs(24 * 3600),
            forget_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// The shield's limits. Defaults suit a hub whose devices connect from their own addresses
/// or from NATs of up to a few thousand devices; an address that fronts more (a large NAT, a
/// load balancer) belongs in [`exempt`](Self::exempt) or needs higher limits.
#[derive(Clone, Debug, PartialEq)]
pub struct ShieldLimits {
    /// New connections per second one address may open, sustained. Default 50.
    pub address_rate: u32,
    /// New connections one address may open at once after a quiet period. Default 500.
    pub address_burst: u32,
    /// New connections per second one network (see [`ipv4_prefix`](Self::ipv4_prefix)) may
    /// open, sustained. Default 200.
    pub network_rate: u32,
    /// New connections one network may open at once. Default 2,000.
    pub network_burst: u32,
    /// Prefix length grouping IPv4 addresses into a network. Default 24.
    pub ipv4_prefix: u8,
    /// Prefix length grouping IPv6 addresses into a network. Default 64.
    pub ipv6_prefix: u8,
    /// Connections one address may hold open (in any phase). Default 4,096.
    pub max_concurrent_per_address: u32,
    /// Entries in each table (addresses, networks, offenders). Default 65,536.
    pub tracked: usize,
    /// Networks exempt from rate limits, concurrent caps and automatic address bans (not
    /// from explicit bans, and not from identity auto-bans). Default none.
    pub exempt: Vec<IpNet>,
    /// Automatic bans.
    pub auto_ban: AutoBanLimits,
}

impl Default for ShieldLimits {
    fn default() -> Self {
        Self {
            address_rate: 50,
            address_burst: 500,
            network_rate: 200,
            network_burst: 2_000,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            max_concurrent_per_address: 4_096,
            tracked: 65_536,
            exempt: Vec::new(),
            auto_ban: AutoBanLimits::default(),
        }
    }
}

/// Why the shield closed a connection at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address or its network is banned.
    Banned,
    /// The address opened connections faster than its rate.
    AddressRate,
    /// The address's network opened connections faster than its rate.
    NetworkRate,
    /// The address holds its maximum of open connections.
    Concurrent,
}

impl Refusal {
    /// Every variant, for metric registration.
    pub const ALL: [Refusal; 4] = [
        Self::Banned,
        Self::AddressRate,
        Self::NetworkRate,
        Self::Concurrent,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::AddressRate => "rate",
            Self::NetworkRate => "network_rate",
            Self::Concurrent => "concurrent",
        }
    }
}

/// Whom an authentication failure counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Offender {
    /// A source address.
    Address(IpAddr),
    /// A device whose identity was proven (a completed mutual-TLS handshake). An identity a
    /// peer merely claims (a certificate that failed to verify, an anonymous client id) is
    /// never counted: anyone could otherwise get a victim banned.
    Device(String),
}

/// An automatic ban the shield decided (and already applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoBan {
    /// Who is banned.
    pub offender: Offender,
    /// For how long.
    pub duration: Duration,
    /// Failures that triggered it, within `window`.
    pub failures: u32,
    /// The window they were counted in.
    pub window: Duration,
    /// 1 for a first offence, 2 for the next, ...
    pub offence: u32,
    /// When it ends: milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl AutoBan {
    /// The evidence, for the ban's reason and the audit trail.
    pub fn reason(&self) -> String {
        format!(
            "automatic: {} authentication failures within {} s (offence {}, banned {} s)",
            self.failures,
            self.window.as_secs(),
            self.offence,
            self.duration.as_secs()
        )
    }

    /// What the ban applies to.
    pub fn target(&self) -> BanTarget {
        match &self.offender {
            Offender::Address(ip) => BanTarget::Address(*ip),
            Offender::Device(id) => BanTarget::Device(id.clone()),
        }
    }
}

/// Something a bounded table can evict.
trait Entry {
    fn last_seen(&self) -> Instant;
    /// Never evicted while true.
    fn pinned(&self) -> bool {
        false
    }
}

/// A map of at most `capacity` unpinned entries; see the module header.
#[derive(Debug)]
struct Table<K, V> {
    map: HashMap<K, V>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Entry> Table<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn entry(&mut self, key: K, new: impl FnOnce() -> V) -> &mut V {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.evict_stalest_half();
        }
        self.map.entry(key).or_insert_with(new)
    }

    /// Drops the least recently seen half of the unpinned entries (at least one).
    fn evict_stalest_half(&mut self) {
        let mut seen: Vec<Instant> = self
            .map
            .values()
            .filter(|v| !v.pinned())
            .map(Entry::last_seen)
            .collect();
        if seen.is_empty() {
            return;
        }
        let k = (seen.len() / 2).max(1) - 1;
        let (_, cutoff, _) = seen.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.map.retain(|_, v| v.pinned() || v.last_seen() > cutoff);
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills for the time since the last call; whether a token is there.
    fn refill(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = self.at.max(now);
        self.tokens >= 1.0
    }
}

#[derive(Debug)]
struct AddressEntry {
    bucket: Bucket,
    open: u32,
}

impl Entry for AddressEntry {
    fn last_seen(&self) -> Instant {
        self.bucket.at
    }
    fn pinned(&self) -> bool {
        self.open > 0
    }
}

impl Entry for Bucket {
    fn last_seen(&self) -> Instant {
        self.at
    }
}

#[derive(Debug)]
struct FailureEntry {
    window_start: Instant,
    failures: u32,
    offences: u32,
    last: Instant,
}

impl Entry for FailureEntry {
    fn last_seen(&self) -> Instant {
        self.last
    }
}

#[derive(Debug)]
struct Tables {
    addresses: Table<IpAddr, AddressEntry>,
    networks: Table<IpAddr, Bucket>,
}

/// The shield of a hub's MQTT listeners (shared by all of them). See the module header.
///
/// Locks: `tables` and `offenders` are leaves, never held together and never across an
/// `.await`; the ban list is an `ArcSwap` and takes no lock.
#[derive(Debug)]
pub struct Shield {
    /// Swapped whole by [`Shield::set_limits`] (configuration reload); read once per decision.
    limits: ArcSwap<ShieldLimits>,
    /// Capacity of the tables, fixed at construction (`limits.tracked` as it was then).
    tracked: usize,
    bans: ArcSwap<BanList>,
    tables: Mutex<Tables>,
    offenders: Mutex<Table<Offender, FailureEntry>>,
}

/// Holds one of an address's concurrent-connection slots; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "dropping the guard frees the slot at once"]
pub struct ShieldGuard {
    held: Option<(Arc<Shield>, IpAddr)>,
}

impl Drop for ShieldGuard {
    fn drop(&mut self) {
        if let Some((shield, ip)) = self.held.take() {
            let mut t = shield.tables.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = t.addresses.map.get_mut(&ip) {
                e.open = e.open.saturating_sub(1);
            }
        }
    }
}

impl Shield {
    /// A shield with `limits` and no bans.
    pub fn new(limits: ShieldLimits) -> Arc<Self> {
        let tracked = limits.tracked;
        Arc::new(Self {
            limits: ArcSwap::from_pointee(limits),
            tracked,
            bans: ArcSwap::from_pointee(BanList::default()),
            tables: Mutex::new(Tables {
                addresses: Table::new(tracked),
                networks: Table::new(tracked),
            }),
            offenders: Mutex::new(Table::new(tracked)),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<ShieldLimits> {
        self.limits.load_full()
    }

    /// Replaces the limits (configuration reload); connections from then on are decided by
    /// `limits`. The tables' capacity (`tracked`) stays what it was at construction: the
    /// returned `false` says that a different `tracked` waits for a restart.
    pub fn set_limits(&self, limits: ShieldLimits) -> bool {
        let same_capacity = limits.tracked == self.tracked;
        self.limits.store(Arc::new(limits));
        same_capacity
    }

    /// Replaces the ban list; connections from then on are checked against `bans`.
    pub fn set_bans(&self, bans: BanList) {
        self.bans.store(Arc::new(bans));
    }

    /// Adds one ban to the current list (copy on write).
    pub fn add_ban(&self, target: BanTarget, expiry: BanExpiry) {
        self.bans.rcu(|current| {
            let mut next = BanList::clone(current);
            next.insert(target.clone(), expiry);
            next
        });
    }

    /// The ban list in force.
    pub fn bans(&self) -> Arc<BanList> {
        self.bans.load_full()
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.limits.load().exempt.iter().any(|net| net.contains(ip))
    }

    /// Decides on a connection from `ip` accepted at `now` (`now_ms`: wall clock, for ban
    /// expiry). Admitted, the guard holds one of the address's concurrent slots.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
        now_ms: u64,
    ) -> Result<ShieldGuard, Refusal> {
        let ip = ip.to_canonical();
        {
            let bans = self.bans.load();
            if !bans.is_empty() && bans.address_banned(ip, now_ms) {
                return Err(Refusal::Banned);
            }
        }
        if self.exempt(ip) {
            return Ok(ShieldGuard { held: None });
        }
        let l = self.limits.load();
        let prefix = if ip.is_ipv4() {
            l.ipv4_prefix
        } else {
            l.ipv6_prefix
        };
        let network = masked(ip, prefix);
        let mut guard = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let t = &mut *guard;
        let entry = t.addresses.entry(ip, || AddressEntry {
            bucket: Bucket::full(l.address_burst, now),
            open: 0,
        });
        if !entry.bucket.refill(l.address_rate, l.address_burst, now) {
            return Err(Refusal::AddressRate);
        }
        if entry.open >= l.max_concurrent_per_address {
            return Err(Refusal::Concurrent);
        }
        let net = t
            .networks
            .entry(network, || Bucket::full(l.network_burst, now));
        if !net.refill(l.network_rate, l.network_burst, now) {
            return Err(Refusal::NetworkRate);
        }
        net.tokens -= 1.0;
        entry.bucket.tokens -= 1.0;
        entry.open += 1;
        Ok(ShieldGuard {
            held: Some((self.clone(), ip)),
        })
    }

    /// Counts one authentication failure against `offender` at `now`. When it completes a
    /// ban, the ban is added to the list at once (expiring `duration` after `now_ms`) and
    /// returned, to be recorded.
    pub fn note_failure(&self, offender: Offender, now: Instant, now_ms: u64) -> Option<AutoBan> {
        let offender = match offender {
            Offender::Address(ip) => {
                let ip = ip.to_canonical();
                if self.exempt(ip) {
                    return None;
                }
                Offender::Address(ip)
            }
            device => device,
        };
        let a = self.limits.load().auto_ban;
        let ban = {
            let mut offenders = self
                .offenders
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let e = offenders.entry(offender.clone(), || FailureEntry {
                window_start: now,
                failures: 0,
                offences: 0,
                last: now,
            });
            if now.saturating_duration_since(e.last) >= a.forget_after {
                e.offences = 0;
            }
            if now.saturating_duration_since(e.window_start) >= a.window {
                e.window_start = now;
                e.failures = 0;
            }
            e.last = e.last.max(now);
            e.failures = e.failures.saturating_add(1);
            if e.failures < a.failures.max(1) || self.bans.load().len() >= MAX_BANS {
                return None;
            }
            e.offences = e.offences.saturating_add(1);
            let doublings = (e.offences - 1).min(31);
            let duration = a.base.saturating_mul(1u32 << doublings).min(a.max);
            let failures = e.failures;
            e.failures = 0;
            e.window_start = now;
            AutoBan {
                offender,
                duration,
                failures,
                window: a.window,
                offence: e.offences,
                expires_at_ms: now_ms
                    .saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
            }
        };
        self.add_ban(ban.target(), Some(ban.expires_at_ms));
        Some(ban)
    }

    /// Entries held in the address, network and offender tables (for tests and diagnosis).
    pub fn tracked(&self) -> (usize, usize, usize) {
        let t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let o = self
            .offenders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (t.addresses.map.len(), t.networks.map.len(), o.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn limits() -> ShieldLimits {
        ShieldLimits {
            address_rate: 10,
            address_burst: 5,
            network_rate: 100,
            network_burst: 8,
            max_concurrent_per_address: 3,
            tracked: 64,
            ..ShieldLimits::default()
        }
    }

    #[test]
    fn networks_parse_strictly_and_match() {
        let net: IpNet = "192.0.2.0/24".parse().expect("valid");
        assert!(net.contains(v4(192, 0, 2, 77)));
        assert!(!net.contains(v4(192, 0, 3, 1)));
        assert!(
            net.contains("::ffff:192.0.2.9".parse().expect("mapped")),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
        assert!("192.0.2.1/24".parse::<IpNet>().is_err(), "host bits");
        assert!("192.0.2.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        let host: IpNet = "2001:db8::1".parse().expect("bare address");
        assert_eq!(host.prefix(), 128);
        let v6: IpNet = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("v6")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        let all: IpNet = "0.0.0.0/0".parse().expect("everything");
        assert!(all.contains(v4(203, 0, 113, 1)));
        assert!(!all.contains("2001:db8::1".parse().expect("v6")));
    }

    #[test]
    fn bans_apply_until_they_expire() {
        let mut bans = BanList::default();
        bans.insert(BanTarget::Address(v4(10, 0, 0, 1)), Some(1_000));
        bans.insert(
            BanTarget::Network("10.9.0.0/16".parse().expect("net")),
            None,
        );
        bans.insert(BanTarget::Device("dev1".into()), Some(500));
        bans.insert(BanTarget::ClientId("cid".into()), None);
        assert!(bans.address_banned(v4(10, 0, 0, 1), 999));
        assert!(!bans.address_banned(v4(10, 0, 0, 1), 1_000), "expired");
        assert!(bans.address_banned(v4(10, 9, 200, 3), u64::MAX));
        assert!(!bans.address_banned(v4(10, 10, 0, 1), 0));
        assert!(bans.identity_banned(Some("dev1"), "dev1", 0));
        assert!(!bans.identity_banned(Some("dev1"), "dev1", 500));
        assert!(bans.identity_banned(None, "cid", 0));
        assert!(!bans.identity_banned(Some("dev2"), "dev2", 0));
        // The longer of two bans on one target holds.
        bans.insert(BanTarget::Device("dev1".into()), Some(100));
        assert!(bans.identity_banned(Some("dev1"), "dev1", 400));
        bans.insert(BanTarget::Device("dev1".into()), None);
        assert!(bans.identity_banned(Some("dev1"), "dev1", u64::MAX));
    }

    #[test]
    fn banned_address_is_refused_before_anything_else() {
        let shield = Shield::new(limits());
        let now = Instant::now();
        shield.add_ban(BanTarget::Address(v4(10, 0, 0, 2)), None);
        assert_eq!(
            shield.admit(v4(10, 0, 0, 2), now, 0).err(),
            Some(Refusal::Banned)
        );
        assert!(shield.admit(v4(10, 0, 0, 3), now, 0).is_ok());
        assert_eq!(shield.tracked().0, 1, "a banned address costs no entry");
    }

    #[test]
    fn new_limits_decide_the_next_connection() {
        let shield = Shield::new(ShieldLimits {
            max_concurrent_per_address: 1,
            ..limits()
        });
        let now = Instant::now();
        let ip = v4(10, 0, 0, 7);
        let held = shield.admit(ip, now, 0).expect("first");
        assert_eq!(
            shield.admit(ip, now, 0).err(),
            Some(Refusal::Concurrent),
            "one slot"
        );
        assert!(shield.set_limits(ShieldLimits {
            max_concurrent_per_address: 2,
            ..limits()
        }));
        let second = shield.admit(ip, now, 0).expect("two slots after reload");
        assert_eq!(shield.limits().max_concurrent_per_address, 2);
        assert!(
            !shield.set_limits(ShieldLimits {
                tracked: 128,
                ..limits()
            }),
            "capacity waits for a restart"
        );
        drop((held, second));
    }

    #[test]
    fn rate_and_concurrency_per_address() {
        let shield = Shield::new(ShieldLimits {
            max_concurrent_per_address: 100,
            ..limits()
        });
        let t0 = Instant::now();
        let ip = v4(10, 0, 0, 1);
        let guards: Vec<_> = (0..5)
            .map(|_| shield.admit(ip, t0, 0).expect("within the burst"))
            .collect();
        assert_eq!(shield.admit(ip, t0, 0).err(), Some(Refusal::AddressRate));
        // 10/s: one token back after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        let g = shield.admit(ip, t1, 0).expect("refilled");
        assert_eq!(shield.admit(ip, t1, 0).err(), Some(Refusal::AddressRate));
        drop((guards, g));

        let shield = Shield::new(limits());
        let held: Vec<_> = (0..3)
            .map(|_| shield.admit(ip, t0, 0).expect("under the cap"))
            .collect();
        assert_eq!(shield.admit(ip, t0, 0).err(), Some(Refusal::Concurrent));
        drop(held);
        assert!(
            shield.admit(ip, t0, 0).is_ok(),
            "the guards freed the slots"
        );
    }

    #[test]
    fn network_rate_groups_addresses() {
        let shield = Shield::new(limits());
        let t0 = Instant::now();
        // 8 tokens for 10.0.0.0/24, whichever addresses spend them.
        for i in 0..8 {
            let _g = shield.admit(v4(10, 0, 0, i), t0, 0).expect("within burst");
        }
        assert_eq!(
            shield.admit(v4(10, 0, 0, 200), t0, 0).err(),
            Some(Refusal::NetworkRate)
        );
        assert!(shield.admit(v4(10, 0, 1, 1), t0, 0).is_ok(), "other /24");
        let shield = Shield::new(limits());
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        for i in 0..8 {
            let _g = shield.admit(v6(i), t0, 0).expect("within burst");
        }
        assert_eq!(
            shield.admit(v6(99), t0, 0).err(),
            Some(Refusal::NetworkRate)
        );
    }

    #[test]
    fn exempt_networks_skip_limits_and_address_auto_bans_but_not_bans() {
        let shield = Shield::new(ShieldLimits {
            exempt: vec!["127.0.0.0/8".parse().expect("net")],
            ..limits()
        });
        let t0 = Instant::now();
        let lo = v4(127, 0, 0, 1);
        let held: Vec<_> = (0..100)
            .map(|_| shield.admit(lo, t0, 0).expect("exempt"))
            .collect();
        assert_eq!(shield.tracked().0, 0);
        for _ in 0..100 {
            assert!(shield.note_failure(Offender::Address(lo), t0, 0).is_none());
        }
        shield.add_ban(BanTarget::Address(lo), None);
        assert_eq!(shield.admit(lo, t0, 0).err(), Some(Refusal::Banned));
        drop(held);
    }

    #[test]
    fn auto_bans_escalate_and_are_forgotten() {
        let a = AutoBanLimits {
            failures: 3,
            window: Duration::from_secs(60),
            base: Duration::from_secs(10),
            max: Duration::from_secs(35),
            forget_after: Duration::from_secs(3600),
        };
        let shield = Shield::new(ShieldLimits {
            auto_ban: a,
            ..limits()
        });
        let t0 = Instant::now();
        let ip = v4(10, 0, 0, 9);
        let off = Offender::Address(ip);
        let fail = |at: Instant| shield.note_failure(off.clone(), at, 1_000);
        assert!(fail(t0).is_none());
        assert!(fail(t0).is_none());
        let first = fail(t0).expect("third failure bans");
        assert_eq!(first.duration, Duration::from_secs(10));
        assert_eq!(first.offence, 1);
        assert!(first.reason().contains("3 authentication failures"));
        assert_eq!(
            shield.admit(ip, t0, 1_000).err(),
            Some(Refusal::Banned),
            "applied at once"
        );
        assert!(shield.admit(ip, t0, 11_000).is_ok(), "expired by itself");
        // Failures spread beyond the window do not add up.
        let t1 = t0 + Duration::from_secs(100);
        assert!(fail(t1).is_none());
        assert!(fail(t1).is_none());
        assert!(fail(t1 + Duration::from_secs(61)).is_none());
        assert!(fail(t1 + Duration::from_secs(61)).is_none());
        let second = fail(t1 + Duration::from_secs(61)).expect("bans");
        assert_eq!(second.duration, Duration::from_secs(20), "doubled");
        let t2 = t1 + Duration::from_secs(62);
        let third = (0..3).find_map(|_| fail(t2)).expect("bans");
        assert_eq!(third.duration, Duration::from_secs(35), "capped");
        // Quiet for forget_after: a first offence again.
        let t3 = t2 + Duration::from_secs(3600);
        let again = (0..3).find_map(|_| fail(t3)).expect("bans");
        assert_eq!(again.offence, 1);
        assert_eq!(again.duration, Duration::from_secs(10));
        // Identities count on their own.
        let dev = Offender::Device("dev1".into());
        let ban = (0..3)
            .find_map(|_| shield.note_failure(dev.clone(), t0, 0))
            .expect("device ban");
        assert_eq!(ban.target(), BanTarget::Device("dev1".into()));
        assert!(shield.bans().identity_banned(Some("dev1"), "dev1", 0));
    }

    #[test]
    fn open_connections_survive_eviction() {
        let shield = Shield::new(ShieldLimits {
            tracked: 4,
            max_concurrent_per_address: 1,
            address_burst: 100,
            network_burst: 100_000,
            ..limits()
        });
        let t0 = Instant::now();
        let held = shield.admit(v4(10, 0, 0, 1), t0, 0).expect("first");
        for i in 0..1_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            let _g = shield
                .admit(ip, t0 + Duration::from_millis(u64::from(i)), 0)
                .expect("churn");
        }
        assert_eq!(
            shield.admit(v4(10, 0, 0, 1), t0, 0).err(),
            Some(Refusal::Concurrent),
            "the held slot was not forgotten"
        );
        drop(held);
        assert!(shield.admit(v4(10, 0, 0, 1), t0, 0).is_ok());
    }

    proptest! {
        /// Under any churn of addresses and identities, no table holds more than its
        /// capacity plus the connections still open.
        #[test]
        fn memory_stays_bounded_under_churn(
            ops in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u8..4), 1..2_000),
            capacity in 1usize..64,
        ) {
            let shield = Shield::new(ShieldLimits {
                tracked: capacity,
                auto_ban: AutoBanLimits { failures: 1_000_000, ..AutoBanLimits::default() },
                ..limits()
            });
            let t0 = Instant::now();
            let mut held = Vec::new();
            for (i, (addr, hi, op)) in ops.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                let ip = if op % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::from(addr))
                } else {
                    IpAddr::V6(Ipv6Addr::from((u128::from(hi) << 112) | u128::from(addr)))
                };
                match op {
                    0 | 1 => {
                        if let Ok(g) = shield.admit(ip, now, 0) {
                            // Keep one in eight open, drop the rest at once.
                            if addr % 8 == 0 { held.push(g); }
                        }
                    }
                    2 => { let _ = shield.note_failure(Offender::Address(ip), now, 0); }
                    _ => { let _ = shield.note_failure(Offender::Device(format!("d{addr}")), now, 0); }
                }
                let (a, n, o) = shield.tracked();
                prop_assert!(a <= capacity + held.len(), "addresses {a} > {capacity} + {}", held.len());
                prop_assert!(n <= capacity, "networks {n} > {capacity}");
                prop_assert!(o <= capacity, "offenders {o} > {capacity}");
            }
            drop(held);
        }
    }

    #[test]
    fn a_million_addresses_fit_in_the_table() {
        let shield = Shield::new(ShieldLimits {
            tracked: 1_024,
            network_burst: u32::MAX,
            ..limits()
        });
        let t0 = Instant::now();
        for i in 0..1_000_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
            let now = t0 + Duration::from_micros(u64::from(i));
            drop(shield.admit(ip, now, 0));
            let _ = shield.note_failure(Offender::Address(ip), now, 0);
        }
        let (a, n, o) = shield.tracked();
        assert!(a <= 1_024 && n <= 1_024 && o <= 1_024, "{a} {n} {o}");
    }
}
