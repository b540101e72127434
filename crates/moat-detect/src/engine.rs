//! The engine: the entity tables, address-scoped detectors, the response ladder with its
//! time boxes and releases, and the dispatch of events to the per-device detectors.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use moat_types::DeviceId;

use crate::alert::{Alert, Detector, Explanation, Output, Release, Response, Rung, Severity};
use crate::config::{ConfigError, DetectConfig, Mode};
use crate::device::{self, Consensus, Ctx, Finding};
use crate::event::{
    Action, Event, EventKind, GroupName, RefusedReason, SIZE_BUCKETS, Side, Source,
};
use crate::hst::{self, Forest};
use crate::state::*;
use crate::stats::{Effective, MINUTE_DECAY, decay, fingerprint};
use crate::table::Table;
use crate::window::close_window;

#[derive(Debug, Clone)]
struct Held {
    due_ms: u64,
    group: GroupRef,
    consensus: Consensus,
    finding: Finding,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IncidentKey {
    detector: Detector,
    device: Option<DeviceId>,
    address: Option<IpAddr>,
}

#[derive(Debug, Clone)]
struct Incident {
    first_alert_id: u64,
    /// An operator confirmed it ([`Engine::confirm`]): its episode is never learned.
    confirmed: bool,
    alert_id: u64,
    severity: Severity,
    rung: Rung,
    until_ms: u64,
    last_evidence_ms: u64,
    evidence_count: u32,
    /// Summaries that held the incident open because its device was held back.
    held_count: u32,
}

/// A read-only view of an active incident.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentView {
    /// The detector.
    pub detector: Detector,
    /// The device, if device-scoped.
    pub device: Option<DeviceId>,
    /// The address, if address-scoped.
    pub address: Option<IpAddr>,
    /// The latest alert's id.
    pub alert_id: u64,
    /// Its severity.
    pub severity: Severity,
    /// The rung in force.
    pub rung: Rung,
    /// Time box end.
    pub until_ms: u64,
    /// Last time the detector fired again.
    pub last_evidence_ms: u64,
}

/// A read-only view of a device's baseline of one feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineView {
    /// Windows learned by the device itself.
    pub device_windows: u32,
    /// Typical value of the effective (shrunk) baseline, in the feature's unit.
    pub typical: f64,
    /// Upper bound used by rules (`learning.upper_z` deviations above), in the unit.
    pub upper: f64,
    /// Weight of the group prior.
    pub group_weight: f32,
}

/// Counters about the engine itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Events observed.
    pub events: u64,
    /// Alerts emitted (including escalations).
    pub alerts: u64,
    /// Releases emitted.
    pub releases: u64,
    /// Repeated firings folded into an active incident.
    pub deduplicated: u64,
    /// Held alerts dropped because the group did the same (consensus).
    pub suppressed_by_consensus: u64,
    /// Device windows learned.
    pub windows_learned: u64,
    /// Device windows not learned because they alerted (or were in a known burst mode).
    pub windows_skipped: u64,
    /// Released, unconfirmed volume episodes learned into envelopes.
    pub episodes_learned: u64,
    /// Device entries evicted.
    pub device_evictions: u64,
    /// Address entries evicted.
    pub address_evictions: u64,
    /// Group entries evicted.
    pub group_evictions: u64,
}

/// The detection engine. Feed it [`Event`]s in time order with [`Engine::observe`] and call
/// [`Engine::tick`] about once a second; both append [`Output`]s.
#[derive(Debug)]
pub struct Engine {
    cfg: DetectConfig,
    rungs: [[Rung; 4]; Detector::ALL.len()],
    namespace_prefix: Option<Vec<String>>,
    canaries: HashSet<DeviceId>,
    devices: Table<DeviceId, DeviceState>,
    addresses: Table<IpAddr, AddressState>,
    groups: Table<GroupName, GroupState>,
    ungrouped: GroupState,
    forest: Forest,
    incidents: HashMap<IncidentKey, Incident>,
    held: VecDeque<Held>,
    fleet_connects: f32,
    window: u64,
    next_alert_id: u64,
    stats: EngineStats,
}

fn group_of<'a>(
    groups: &'a mut Table<GroupName, GroupState>,
    ungrouped: &'a mut GroupState,
    r: GroupRef,
) -> &'a mut GroupState {
    match groups.get_mut(r.slot, r.generation) {
        Some(s) => &mut s.value,
        None => ungrouped,
    }
}

fn group_name(groups: &Table<GroupName, GroupState>, r: GroupRef) -> Option<GroupName> {
    groups.get(r.slot, r.generation).map(|s| s.key.clone())
}

impl Engine {
    /// Builds an engine; fails on out-of-range configuration values (all reported).
    pub fn new(cfg: DetectConfig) -> Result<Self, Vec<ConfigError>> {
        cfg.validate()?;
        let namespace_prefix = cfg
            .namespace_level()
            .map_err(|()| vec![ConfigError::Namespace(cfg.topics.device_namespace.clone())])?;
        Ok(Self {
            rungs: cfg.responses.table(),
            namespace_prefix,
            canaries: cfg.deception.canary_devices.iter().cloned().collect(),
            devices: Table::new(cfg.limits.max_devices),
            addresses: Table::new(cfg.limits.max_addresses),
            groups: Table::new(cfg.limits.max_groups),
            ungrouped: GroupState::default(),
            forest: Forest::new(cfg.learning.hst_seed),
            incidents: HashMap::new(),
            held: VecDeque::new(),
            fleet_connects: 0.0,
            window: 0,
            next_alert_id: 1,
            stats: EngineStats::default(),
            cfg,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Puts `cfg` in force (configuration reload) and keeps what was learned: baselines,
    /// open incidents and responses in force stay. The table capacities (`[detect.limits]`)
    /// and the Half-Space Trees' seed are fixed at construction and keep their values; the
    /// names of the settings that therefore wait for a restart are returned. On an invalid
    /// `cfg` nothing changes.
    pub fn reconfigure(
        &mut self,
        mut cfg: DetectConfig,
    ) -> Result<Vec<&'static str>, Vec<ConfigError>> {
        cfg.validate()?;
        let namespace_prefix = cfg
            .namespace_level()
            .map_err(|()| vec![ConfigError::Namespace(cfg.topics.device_namespace.clone())])?;
        let mut waiting = Vec::new();
        if cfg.limits != self.cfg.limits {
            waiting.push("detect.limits");
            cfg.limits = self.cfg.limits.clone();
        }
        if cfg.learning.hst_seed != self.cfg.learning.hst_seed {
            waiting.push("detect.learning.hst-seed");
            cfg.learning.hst_seed = self.cfg.learning.hst_seed;
        }
        self.rungs = cfg.responses.table();
        self.namespace_prefix = namespace_prefix;
        self.canaries = cfg.deception.canary_devices.iter().cloned().collect();
        self.cfg = cfg;
        Ok(waiting)
    }

    /// Counters about the engine itself.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            device_evictions: self.devices.evictions(),
            address_evictions: self.addresses.evictions(),
            group_evictions: self.groups.evictions(),
            ..self.stats
        }
    }

    /// Devices tracked.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Addresses tracked.
    pub fn address_count(&self) -> usize {
        self.addresses.len()
    }

    /// Groups tracked.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Active incidents.
    pub fn incidents(&self) -> Vec<IncidentView> {
        let mut v: Vec<IncidentView> = self
            .incidents
            .iter()
            .map(|(k, i)| IncidentView {
                detector: k.detector,
                device: k.device.clone(),
                address: k.address,
                alert_id: i.alert_id,
                severity: i.severity,
                rung: i.rung,
                until_ms: i.until_ms,
                last_evidence_ms: i.last_evidence_ms,
            })
            .collect();
        v.sort_by_key(|i| i.alert_id);
        v
    }

    /// A device's effective baseline of `feature`.
    pub fn baseline(&self, device: &DeviceId, feature: Feature) -> Option<BaselineView> {
        let i = self.devices.find(device)?;
        let d = &self.devices.slot(i).value;
        let base = d.base[feature as usize];
        let prior = match self.groups.get(d.group.slot, d.group.generation) {
            Some(s) => s.value.prior[feature as usize],
            None => self.ungrouped.prior[feature as usize],
        };
        let e = Effective::shrink(
            &base,
            &prior,
            self.cfg.learning.prior_windows,
            self.cfg.learning.min_log_sd,
        );
        Some(BaselineView {
            device_windows: base.n,
            typical: e.typical(),
            upper: e.upper(self.cfg.learning.upper_z),
            group_weight: e.group_weight,
        })
    }

    /// An honest estimate of the bytes of all state (inline and heap, by capacity): tables,
    /// keys, per-group models, incidents and held alerts. Divide by
    /// [`Engine::device_count`] for the per-device figure.
    pub fn state_bytes(&self) -> usize {
        let string_heap = |len: usize| if len == 0 { 0 } else { len.div_ceil(8) * 8 };
        let mut total = std::mem::size_of::<Self>();
        total += self.devices.table_bytes();
        // The key is stored twice (index and slot).
        total += self
            .devices
            .slots()
            .map(|s| 2 * string_heap(s.key.as_str().len()))
            .sum::<usize>();
        total += self.addresses.table_bytes();
        total += self.groups.table_bytes();
        // Group names are shared (`Arc<str>`): one heap block, 16 bytes of counts.
        total += self
            .groups
            .slots()
            .map(|s| 16 + string_heap(s.key.as_str().len()) + hst::MASS_BYTES)
            .sum::<usize>();
        total += hst::MASS_BYTES;
        total += self.forest_bytes();
        total += self.incidents.capacity() * (std::mem::size_of::<(IncidentKey, Incident)>() + 1)
            + self
                .incidents
                .keys()
                .map(|k| {
                    k.device
                        .as_ref()
                        .map_or(0, |d| string_heap(d.as_str().len()))
                })
                .sum::<usize>();
        total += self.held.capacity() * std::mem::size_of::<Held>();
        total += self.canaries.capacity() * (std::mem::size_of::<DeviceId>() + 1 + 16);
        total
    }

    fn forest_bytes(&self) -> usize {
        // Split dimension (1 byte) and value (4 bytes) per internal node.
        hst::TREES * ((1 << hst::DEPTH) - 1) * 5
    }

    /// Bytes of one device entry, without its key's heap (for the documentation).
    pub fn device_entry_bytes() -> usize {
        std::mem::size_of::<DeviceState>()
    }

    fn surge(&self) -> bool {
        self.fleet_connects
            >= SURGE_MIN_CONNECTS
                .max(self.cfg.thresholds.surge_fraction * self.devices.len() as f32)
    }

    /// Feeds one event. Alerts that need no group consensus are appended at once.
    pub fn observe(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        self.stats.events += 1;
        let now = ev.time_ms;
        let src = &ev.source;
        let mut found: Vec<Finding> = Vec::new();
        let mut held: Vec<(Consensus, Finding)> = Vec::new();

        if let Some(d) = src.device
            && self.canaries.contains(d)
        {
            found.push(Finding {
                detector: Detector::CanaryIdentity,
                severity: Severity::Critical,
                device: Some(d.clone()),
                address: Some(src.address),
                group: src.group.cloned(),
                explanation: Explanation {
                    feature: "canary_identity_used",
                    observed: 1.0,
                    threshold: 1.0,
                    baseline: None,
                    evidence: vec![format!(
                        "canary identity {d} seen from {} ({})",
                        src.address,
                        kind_name(&ev.kind)
                    )],
                },
                by_address: false,
                learned: false,
                extend_only: false,
            });
        }

        self.observe_address(ev, &mut found);

        let device_event = matches!(
            ev.kind,
            EventKind::ConnectAccepted
                | EventKind::Disconnected { .. }
                | EventKind::ProtocolError { .. }
                | EventKind::AuthorizationDenied { .. }
                | EventKind::Subscribed { .. }
                | EventKind::FirstTopic { .. }
                | EventKind::HoneyTouch { .. }
                | EventKind::Traffic(_)
        );
        if let Some(device) = src.device {
            if device_event {
                self.observe_device(ev, device, now, &mut found, &mut held);
                if let EventKind::Traffic(s) = ev.kind
                    && s.held_ms > 0
                {
                    self.hold_throttles(device, now);
                }
            } else if let EventKind::ConnectRefused { reason } = ev.kind {
                self.observe_refused_identity(src, device, reason, now, &mut found);
            }
        }

        for f in found {
            self.emit(f, now, out);
        }
        for (consensus, f) in held {
            // One held alert per detector and device: keep the highest severity.
            if let Some(h) = self
                .held
                .iter_mut()
                .find(|h| h.finding.detector == f.detector && h.finding.device == f.device)
            {
                if f.severity > h.finding.severity {
                    h.finding = f;
                }
                continue;
            }
            let group = src
                .device
                .and_then(|d| self.devices.find(d))
                .map_or(GroupRef::NONE, |i| self.devices.slot(i).value.group);
            if self.held.len() < self.cfg.limits.max_held {
                self.held.push_back(Held {
                    due_ms: now + 1000 * self.cfg.thresholds.consensus_hold_secs,
                    group,
                    consensus,
                    finding: f,
                });
            } else {
                self.emit(f, now, out);
            }
        }
    }

    fn observe_address(&mut self, ev: &Event<'_>, found: &mut Vec<Finding>) {
        let src = &ev.source;
        let now = ev.time_ms;
        let surge = self.surge();
        let t = &self.cfg.thresholds;
        let relevant = matches!(
            ev.kind,
            EventKind::ConnectAttempt
                | EventKind::ClosedBeforeConnect
                | EventKind::TlsHandshakeFailed { .. }
                | EventKind::HandshakeTimeout
                | EventKind::ConnectTimeout
                | EventKind::ConnectRefused { .. }
                | EventKind::ConnectAccepted
        ) || (matches!(ev.kind, EventKind::ProtocolError { .. })
            && (src.device.is_none() || src.connection == 0));
        if !relevant {
            return;
        }
        let (i, _) = self
            .addresses
            .upsert(&src.address, || (src.address, AddressState::default()));
        let a = &mut self.addresses.slot_mut(i).value;
        a.roll(now / WINDOW_MS);
        let mult = if surge { t.surge_multiplier } else { 1.0 };
        let address_finding =
            |detector, severity, feature, observed: f32, threshold: f32, evidence: String| {
                Finding {
                    detector,
                    severity,
                    device: None,
                    address: Some(src.address),
                    group: None,
                    explanation: Explanation {
                        feature,
                        observed: f64::from(observed),
                        threshold: f64::from(threshold),
                        baseline: None,
                        evidence: vec![evidence],
                    },
                    by_address: true,
                    learned: false,
                    extend_only: false,
                }
            };
        if !matches!(ev.kind, EventKind::ConnectAttempt) {
            // Every other relevant event ends a connection's pre-MQTT phase.
            a.pending = (a.pending - 1.0).max(0.0);
        }
        match ev.kind {
            EventKind::ConnectAttempt => {
                a.attempts += 1.0;
                a.pending += 1.0;
                // Slow-loris seen at once: many connections from one address opened and
                // none of them finished (a benign handshake takes milliseconds), instead of
                // at their deadlines ten seconds later. Low (alert only): a reverse proxy or
                // a large NAT reconnecting its devices at once after a restart looks the
                // same for a moment, before the engine knows the devices behind it; the
                // timeouts confirm a slow-loris and escalate to a mitigation.
                let thr = t.pending_connections_per_address * mult;
                if a.pending >= thr {
                    found.push(address_finding(
                        Detector::SlowLoris,
                        Severity::Low,
                        "pending_connections",
                        a.pending,
                        thr,
                        format!(
                            "{:.1} connections from {} opened and not past their TLS handshake and CONNECT ({:.1} connection attempts in the last minute){}",
                            a.pending,
                            src.address,
                            a.attempts,
                            if surge { "; fleet surge: threshold raised" } else { "" }
                        ),
                    ));
                }
            }
            EventKind::TlsHandshakeFailed { reason } => {
                a.tls_failures += reason.weight();
                let thr = t.certificate_failures_per_min * mult;
                if a.tls_failures >= thr {
                    let sev = if a.tls_failures >= 5.0 * thr {
                        Severity::Critical
                    } else {
                        Severity::High
                    };
                    found.push(address_finding(
                        Detector::CertificateBruteForce,
                        sev,
                        "tls_failures_per_min",
                        a.tls_failures,
                        thr,
                        format!(
                            "{:.1} weighted failed TLS handshakes in the last minute from {}, latest {reason:?}{}",
                            a.tls_failures,
                            src.address,
                            src.device.map(|d| format!(" claiming {d}")).unwrap_or_default()
                        ),
                    ));
                }
            }
            EventKind::HandshakeTimeout | EventKind::ConnectTimeout => {
                a.timeouts += 1.0;
                let thr = t.timeouts_per_min * mult;
                if a.timeouts >= thr {
                    let sev = if a.timeouts >= 4.0 * thr {
                        Severity::High
                    } else {
                        Severity::Medium
                    };
                    found.push(address_finding(
                        Detector::SlowLoris,
                        sev,
                        "timeouts_per_min",
                        a.timeouts,
                        thr,
                        format!(
                            "{:.1} handshake/CONNECT timeouts in the last minute from {} ({:.1} connection attempts){}",
                            a.timeouts,
                            src.address,
                            a.attempts,
                            if surge { "; fleet surge: threshold raised" } else { "" }
                        ),
                    ));
                }
            }
            EventKind::ConnectRefused { reason } if reason != RefusedReason::ServerUnavailable => {
                a.refused += 1.0;
                let thr = t.credential_failures_per_min * mult;
                if a.refused >= thr {
                    let sev = if a.refused >= 5.0 * thr {
                        Severity::Critical
                    } else {
                        Severity::High
                    };
                    found.push(address_finding(
                        Detector::CredentialBruteForce,
                        sev,
                        "refused_connects_per_min",
                        a.refused,
                        thr,
                        format!(
                            "{:.1} refused CONNECTs in the last minute from {}, latest {reason:?}{}",
                            a.refused,
                            src.address,
                            src.device.map(|d| format!(" as {d}")).unwrap_or_default()
                        ),
                    ));
                }
            }
            EventKind::ConnectAccepted => {
                if let Some(d) = src.device {
                    a.devices.insert(fingerprint(d.as_str()));
                }
                a.last_accept_ms = now;
            }
            // Before CONNECT (connection 0) it also ends a pending connection (above); an
            // identity proven by TLS is judged as the device (`on_protocol_error`).
            EventKind::ProtocolError { fault } if src.device.is_none() => {
                a.protocol_errors += 1.0;
                let thr = t.address_protocol_errors_per_min;
                if a.protocol_errors >= thr {
                    found.push(address_finding(
                        Detector::MalformedStream,
                        Severity::Medium,
                        "protocol_errors_per_min",
                        a.protocol_errors,
                        thr,
                        format!(
                            "{:.1} protocol errors in the last minute from unauthenticated connections at {}, latest {}",
                            a.protocol_errors,
                            src.address,
                            fault.as_str()
                        ),
                    ));
                }
            }
            _ => {}
        }
    }

    fn observe_refused_identity(
        &mut self,
        src: &Source<'_>,
        device: &DeviceId,
        reason: RefusedReason,
        now: u64,
        found: &mut Vec<Finding>,
    ) {
        // Only identities already known: refused random names must not churn the table.
        let Some(i) = self.devices.find(device) else {
            return;
        };
        if reason == RefusedReason::ServerUnavailable {
            return;
        }
        let thr = self.cfg.thresholds.credential_failures_per_min;
        let d = &mut self.devices.slot_mut(i).value;
        d.counters.refused += 1.0;
        // Client-id rotation: refused for a client id this identity never used.
        let rotated = matches!(
            reason,
            RefusedReason::NotAuthorized | RefusedReason::ClientIdRejected
        ) && src.client.is_some_and(|c| {
            c.as_str() != device.as_str() && !d.clients.contains(fingerprint(c.as_str()))
        });
        if let Some(gap) = device::rotation_burst(d, now, rotated) {
            found.push(Finding {
                detector: Detector::ReconnectStorm,
                severity: Severity::Medium,
                device: Some(device.clone()),
                address: Some(src.address),
                group: group_name(&self.groups, d.group),
                explanation: Explanation {
                    feature: "client_id_rotation_burst",
                    observed: 2.0,
                    threshold: 2.0,
                    baseline: None,
                    evidence: vec![format!(
                        "CONNECT as {device} from {} refused ({reason:?}) {gap} ms after another CONNECT of this identity; {}",
                        src.address,
                        match src.client {
                            Some(c) if rotated => format!("client id {c:?} never used by it"),
                            _ => "the other was refused for a client id it never used".to_owned(),
                        }
                    )],
                },
                by_address: false,
                learned: false,
                extend_only: false,
            });
        }
        if d.counters.refused >= thr {
            found.push(Finding {
                detector: Detector::CredentialBruteForce,
                severity: Severity::High,
                device: Some(device.clone()),
                address: Some(src.address),
                group: group_name(&self.groups, d.group),
                explanation: Explanation {
                    feature: "refused_connects_per_identity_per_min",
                    observed: f64::from(d.counters.refused),
                    threshold: f64::from(thr),
                    baseline: None,
                    evidence: vec![format!(
                        "{:.1} refused CONNECTs as {device} in the last minute, latest from {} ({reason:?})",
                        d.counters.refused, src.address
                    )],
                },
                by_address: false,
                learned: false,
                extend_only: false,
            });
        }
    }

    fn resolve_group(&mut self, name: Option<&GroupName>) -> GroupRef {
        let Some(name) = name else {
            return GroupRef::NONE;
        };
        let (slot, evicted) = self
            .groups
            .upsert(name, || (name.clone(), GroupState::default()));
        let _ = evicted; // Devices of an evicted group fall back to ungrouped (generation check).
        GroupRef {
            slot,
            generation: self.groups.slot(slot).generation,
        }
    }

    fn observe_device(
        &mut self,
        ev: &Event<'_>,
        device: &DeviceId,
        now: u64,
        found: &mut Vec<Finding>,
        held: &mut Vec<(Consensus, Finding)>,
    ) {
        let src = &ev.source;
        let (i, evicted) = match self.devices.find(device) {
            Some(i) => {
                self.devices.touch(i);
                (i, None)
            }
            None => {
                let g = self.resolve_group(src.group);
                let r = self
                    .devices
                    .upsert(device, || (device.clone(), DeviceState::new(now, g)));
                group_of(&mut self.groups, &mut self.ungrouped, g).members += 1;
                r
            }
        };
        if let Some((_, old)) = evicted {
            let g = group_of(&mut self.groups, &mut self.ungrouped, old.group);
            g.members = g.members.saturating_sub(1);
        }
        if matches!(ev.kind, EventKind::ConnectAccepted) && src.group.is_some() {
            let g = self.resolve_group(src.group);
            let old = self.devices.slot(i).value.group;
            if g != old {
                let og = group_of(&mut self.groups, &mut self.ungrouped, old);
                og.members = og.members.saturating_sub(1);
                group_of(&mut self.groups, &mut self.ungrouped, g).members += 1;
                self.devices.slot_mut(i).value.group = g;
            }
        }
        let w = now / WINDOW_MS;
        if w > self.devices.slot(i).value.window {
            self.close_device_window(i, w, now, found);
        }
        let surge = self.surge();
        let Self {
            cfg,
            devices,
            groups,
            ungrouped,
            namespace_prefix,
            fleet_connects,
            ..
        } = self;
        let d = &mut devices.slot_mut(i).value;
        let g = group_of(groups, ungrouped, d.group);
        let cx = Ctx {
            cfg,
            device,
            src,
            now,
            surge,
            onboarded: now.saturating_sub(d.first_seen_ms) >= 1000 * cfg.learning.onboarding_secs,
            exempt_lateral: src
                .group
                .is_some_and(|gn| cfg.topics.lateral_exempt_groups.contains(gn)),
            exempt_honey: src
                .group
                .is_some_and(|gn| cfg.deception.exempt_groups.contains(gn)),
        };
        // The topic or filter this event touches (honey and namespace checks are shared),
        // and whether it is a publish.
        let mut touched: Option<(&str, bool, bool)> = None;
        match ev.kind {
            EventKind::ConnectAccepted => {
                *fleet_connects += 1.0;
                device::on_connect(&cx, d, g, found);
            }
            EventKind::Disconnected { cause, .. } => device::on_disconnect(&cx, d, cause, found),
            EventKind::ProtocolError { fault } => {
                device::on_protocol_error(&cx, d, g, fault, found, held);
            }
            // A denied delivery is the policy filtering what a subscription matched, not the
            // device probing; the subscription itself was checked when it was made.
            EventKind::AuthorizationDenied { action, topic } if action != Action::Receive => {
                touched = Some((topic, action == Action::Publish, true));
                device::on_denied(&cx, d, g, action, topic, held);
            }
            EventKind::Subscribed { filter } => {
                touched = Some((filter.as_str(), false, false));
                device::on_subscribed(&cx, d, g, filter);
            }
            // Deliveries were checked through the subscription that matched them.
            EventKind::FirstTopic {
                topic,
                side: Side::Publish,
            } => {
                touched = Some((topic.as_str(), true, false));
                device::on_first_publish(&cx, d, g, topic, found, held);
            }
            EventKind::HoneyTouch { topic } if !cx.exempt_honey => {
                found.push(cx.finding(
                    Detector::HoneyTopic,
                    Severity::High,
                    "honey_topic_touched",
                    1.0,
                    1.0,
                    vec![format!("the hub reported a touch of honey topic {topic:?}")],
                ));
            }
            EventKind::Traffic(s) => device::on_traffic(&cx, d, g, &s, found),
            _ => {}
        }
        if let Some((topic, publish, denied)) = touched {
            let prefix = namespace_prefix.as_deref();
            device::on_touch(
                &cx,
                d,
                prefix,
                kind_name(&ev.kind),
                topic,
                (publish, denied),
                found,
            );
        }
    }

    /// Closes device `i`'s open window and moves it to window `to`.
    fn close_device_window(&mut self, i: u32, to: u64, now: u64, found: &mut Vec<Finding>) {
        let Self {
            cfg,
            devices,
            groups,
            ungrouped,
            forest,
            stats,
            ..
        } = self;
        let slot = devices.slot_mut(i);
        let gref = slot.value.group;
        let group = group_of(groups, ungrouped, gref);
        let before = found.len();
        close_window(
            cfg,
            forest,
            stats,
            &slot.key,
            &mut slot.value,
            group,
            to,
            now,
            found,
        );
        let name = group_name(groups, gref);
        for f in &mut found[before..] {
            f.group.clone_from(&name);
        }
    }

    /// A summary showed `device` held back by a rate limit (for [`HELD_STREAK`] seconds in a
    /// row): it offers more than its throttle lets through, which the published counts
    /// cannot show, so its throttle and volume incidents are not released (their quiet
    /// period starts again), for at most [`HELD_MAX_TIME_BOXES`] more time boxes. Once it
    /// is no longer held back, the incident is released as usual: time box over and its
    /// detector quiet (the rate back under its threshold) for `quiet_secs`.
    fn hold_throttles(&mut self, device: &DeviceId, now: u64) {
        let Some(i) = self.devices.find(device) else {
            return;
        };
        if self.devices.slot(i).value.held_streak < HELD_STREAK {
            return;
        }
        let boxes = &self.cfg.responses.time_box;
        let mut key = IncidentKey {
            detector: Detector::PublishFlood,
            device: Some(device.clone()),
            address: None,
        };
        for detector in Detector::ALL {
            key.detector = detector;
            if let Some(inc) = self.incidents.get_mut(&key)
                && (inc.rung == Rung::Throttle || is_volume(detector))
                && now < inc.until_ms + HELD_MAX_TIME_BOXES * boxes.millis(inc.rung)
            {
                inc.last_evidence_ms = now;
                inc.held_count = inc.held_count.saturating_add(1);
            }
        }
    }

    /// Advances time: closes windows, decides held alerts, releases responses whose time box
    /// has passed and whose detector has been quiet.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let w = now / WINDOW_MS;
        if w > self.window {
            let steps = w - self.window;
            let mut found = Vec::new();
            {
                let Self {
                    cfg,
                    devices,
                    groups,
                    ungrouped,
                    forest,
                    stats,
                    ..
                } = self;
                // Each device's window closes here even when it was silent, so counters decay.
                let mut names: Vec<GroupRef> = Vec::new();
                for slot in devices.slots_mut() {
                    if slot.value.window < w {
                        let gref = slot.value.group;
                        let group = match groups.get_mut(gref.slot, gref.generation) {
                            Some(s) => &mut s.value,
                            None => &mut *ungrouped,
                        };
                        let before = found.len();
                        close_window(
                            cfg,
                            forest,
                            stats,
                            &slot.key,
                            &mut slot.value,
                            group,
                            w,
                            now,
                            &mut found,
                        );
                        names.extend(std::iter::repeat_n(gref, found.len() - before));
                    }
                }
                // Group names of the findings raised above (rare).
                for (f, r) in found.iter_mut().zip(&names) {
                    f.group = group_name(groups, *r);
                }
                let f = decay(MINUTE_DECAY, steps);
                let f10 = decay(TEN_MINUTE_DECAY, steps);
                let fe = crate::window::envelope_decay(steps);
                for g in groups
                    .slots_mut()
                    .map(|s| &mut s.value)
                    .chain(std::iter::once(&mut *ungrouped))
                {
                    g.denied_devices *= f;
                    g.actuator_devices *= f;
                    g.malformed_devices *= f;
                    g.records_ended *= f10;
                    g.novel_devices *= f;
                    g.decay_env(fe);
                    g.slow_elevated = g.slow_elevated_now;
                    g.slow_elevated_now = 0;
                    for s in &mut g.signatures {
                        *s *= f10;
                    }
                    g.anomalous_fraction = if g.closed_now > 0 {
                        g.anomalous_now as f32 / g.closed_now as f32
                    } else {
                        0.0
                    };
                    g.anomalous_now = 0;
                    g.closed_now = 0;
                }
            }
            self.fleet_connects *= decay(MINUTE_DECAY, steps);
            self.window = w;
            for f in found {
                self.emit(f, now, out);
            }
        }

        while self.held.front().is_some_and(|h| h.due_ms <= now) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let t = &self.cfg.thresholds;
            let g = group_of(&mut self.groups, &mut self.ungrouped, h.group);
            let devices = match h.consensus {
                Consensus::Denied => g.denied_devices,
                Consensus::Actuator => g.actuator_devices,
                Consensus::Malformed => g.malformed_devices,
                Consensus::Novel => g.novel_devices,
            };
            let need =
                (t.consensus_min_devices as f32).max(t.consensus_fraction * g.members as f32);
            if devices >= need {
                self.stats.suppressed_by_consensus += 1;
            } else {
                let mut f = h.finding;
                f.explanation.evidence.push(format!(
                    "group consensus checked: {devices:.1} devices of {} did the same (needs {need:.1} to be a fleet change)",
                    g.members
                ));
                self.emit(f, now, out);
            }
        }

        let quiet = 1000 * self.cfg.responses.time_box.quiet_secs;
        let mut released: Vec<(IncidentKey, Incident)> = Vec::new();
        self.incidents.retain(|k, inc| {
            if now >= inc.until_ms && now.saturating_sub(inc.last_evidence_ms) >= quiet {
                released.push((k.clone(), inc.clone()));
                false
            } else {
                true
            }
        });
        released.sort_by_key(|(_, i)| i.alert_id);
        for (k, inc) in released {
            self.stats.releases += 1;
            if let Some(device) = &k.device
                && is_volume(k.detector)
            {
                self.learn_episode(device, inc.confirmed);
            }
            out.push(Output::Release(Release {
                alert_id: inc.alert_id,
                time_ms: now,
                detector: k.detector,
                device: k.device,
                address: k.address,
                why: format!(
                    "time box of {:?} ended at {} and no evidence for {} s ({} firings in total; held open by {} summaries showing the device held back by a rate limit)",
                    inc.rung,
                    inc.until_ms,
                    now.saturating_sub(inc.last_evidence_ms) / 1000,
                    inc.evidence_count,
                    inc.held_count
                ),
            }));
        }
    }

    /// An operator confirmed the alert `alert_id` (any alert of an active incident): the
    /// incident's episode will not be learned as the device's normal when it is released.
    /// False when no active incident has that alert.
    pub fn confirm(&mut self, alert_id: u64) -> bool {
        let mut hit = None;
        for (k, inc) in &mut self.incidents {
            if (inc.first_alert_id..=inc.alert_id).contains(&alert_id) {
                inc.confirmed = true;
                hit = k.device.clone();
            }
        }
        let Some(device) = hit else {
            return false;
        };
        if let Some(i) = self.devices.find(&device) {
            self.devices.slot_mut(i).value.pending = [0.0; ENV_FEATURES];
        }
        true
    }

    /// A volume incident of `device` was released: unless confirmed, what its episode did
    /// (the pending peaks) becomes the device's learned envelope, and its group's.
    fn learn_episode(&mut self, device: &DeviceId, confirmed: bool) {
        let Some(i) = self.devices.find(device) else {
            return;
        };
        let slot = self.devices.slot_mut(i);
        let fp = fingerprint(slot.key.as_str());
        let d = &mut slot.value;
        let pending = std::mem::take(&mut d.pending);
        if confirmed || pending.iter().all(|&p| p <= 0.0) {
            return;
        }
        let first = d.env.iter().all(|&e| e <= 0.0);
        for (e, p) in d.env.iter_mut().zip(pending) {
            *e = e.max(p);
        }
        let (env, gref) = (d.env, d.group);
        let g = group_of(&mut self.groups, &mut self.ungrouped, gref);
        if first {
            g.env_members = g.env_members.saturating_add(1);
        }
        for (k, v) in env.into_iter().enumerate() {
            if v > 0.0 {
                g.note_env(k, fp, v);
            }
        }
        self.stats.episodes_learned += 1;
    }

    /// Applies the response ladder, deduplicates against active incidents, emits.
    fn emit(&mut self, f: Finding, now: u64, out: &mut Vec<Output>) {
        // Learning skips windows that alerted. An episode that any detector other than the
        // volume ones joins is never learned as the device's normal.
        let mut young = false;
        if let Some(d) = &f.device
            && let Some(i) = self.devices.find(d)
        {
            let d = &mut self.devices.slot_mut(i).value;
            d.acc.alerted = true;
            if !is_volume(f.detector) {
                d.pending = [0.0; ENV_FEATURES];
            }
            young = now.saturating_sub(d.first_seen_ms) < 1000 * self.cfg.learning.mature_secs;
        }
        let key = IncidentKey {
            detector: f.detector,
            device: if f.by_address { None } else { f.device.clone() },
            address: if f.by_address { f.address } else { None },
        };
        let mut escalates = None;
        if f.extend_only && !self.incidents.contains_key(&key) {
            return;
        }
        if let Some(inc) = self.incidents.get_mut(&key) {
            inc.last_evidence_ms = now;
            inc.evidence_count += 1;
            if f.severity <= inc.severity {
                self.stats.deduplicated += 1;
                return;
            }
            escalates = Some(inc.alert_id);
        }
        let mut explanation = f.explanation;
        let mut rung = DetectConfig::rung_for(&self.rungs, f.detector, f.severity);
        let intended_rung = rung;
        if f.learned && young && rung > Rung::Alert {
            // A learned threshold of a device observed for less than a daily cycle: not
            // trusted for an automatic response yet.
            explanation.evidence.push(format!(
                "device observed for less than {} s: {rung:?} on a learned threshold not executed (alert only)",
                self.cfg.learning.mature_secs
            ));
            rung = Rung::Alert;
        }
        if rung == Rung::BanAddress
            && let Some(addr) = f.address
        {
            let window = 1000 * self.cfg.responses.collateral_window_secs;
            let subject = f.device.as_ref().map(|d| fingerprint(d.as_str()));
            let benign = self.addresses.find(&addr).map_or(0, |i| {
                let a = &self.addresses.slot(i).value;
                if now.saturating_sub(a.last_accept_ms) <= window && a.last_accept_ms > 0 {
                    a.devices.iter().filter(|&fp| Some(fp) != subject).count()
                } else {
                    0
                }
            });
            if benign > 0 {
                // A device-scoped rung acts on the offender alone. Without an offending
                // identity, anything aimed at the address (even a throttle) would reach the
                // benign devices behind it: alert only, and let the shield's per-address
                // limits hold the attacker back.
                rung = if f.device.is_some() {
                    self.cfg.responses.collateral_fallback
                } else {
                    Rung::Alert
                };
                explanation.evidence.push(format!(
                    "collateral guard: {benign}{} other device(s) connected from {addr} within {} s; ban downgraded to {rung:?}",
                    if benign == DEVICES_PER_ADDRESS { "+" } else { "" },
                    window / 1000
                ));
            }
        }
        let factor = self.cfg.responses.throttle_factor;
        let to_response = |r: Rung| match r {
            Rung::Alert => Response::Alert,
            Rung::Throttle => Response::Throttle { factor },
            Rung::ReadOnly => Response::ReadOnly,
            Rung::Quarantine => Response::Quarantine,
            Rung::Disconnect => Response::Disconnect,
            Rung::RevokeCertificate => Response::RevokeCertificate,
            Rung::BanAddress => Response::BanAddress,
        };
        let intended = to_response(intended_rung);
        let mut response = to_response(rung);
        if self.cfg.mode != Mode::Enforce {
            if response != Response::Alert {
                explanation
                    .evidence
                    .push(format!("dry run: {rung:?} not executed"));
            }
            response = Response::Alert;
        }
        let until_ms = now + self.cfg.responses.time_box.millis(rung);
        let id = self.next_alert_id;
        self.next_alert_id += 1;
        if escalates.is_some() || self.incidents.len() < self.cfg.limits.max_incidents {
            let inc = self.incidents.entry(key).or_insert(Incident {
                first_alert_id: id,
                confirmed: false,
                alert_id: id,
                severity: f.severity,
                rung,
                until_ms,
                last_evidence_ms: now,
                evidence_count: 1,
                held_count: 0,
            });
            inc.alert_id = id;
            inc.severity = f.severity;
            inc.rung = inc.rung.max(rung);
            inc.until_ms = inc.until_ms.max(until_ms);
        } else {
            explanation
                .evidence
                .push("incident table full: response not time-boxed, alert only".to_owned());
            response = Response::Alert;
        }
        self.stats.alerts += 1;
        out.push(Output::Alert(Alert {
            id,
            time_ms: now,
            detector: f.detector,
            severity: f.severity,
            device: f.device,
            address: f.address,
            group: f.group.map(|g| g.as_str().to_owned()),
            explanation,
            response,
            intended,
            until_ms,
            escalates,
        }));
    }
}

/// Detectors of rate and volume, whose released, unconfirmed episodes are learned.
fn is_volume(d: Detector) -> bool {
    matches!(
        d,
        Detector::PublishFlood | Detector::ExfiltrationBurst | Detector::ExfiltrationLowAndSlow
    )
}

fn kind_name(k: &EventKind<'_>) -> &'static str {
    match k {
        EventKind::ConnectAttempt => "connect attempt",
        EventKind::ClosedBeforeConnect => "closed before CONNECT",
        EventKind::TlsHandshakeFailed { .. } => "failed TLS handshake",
        EventKind::HandshakeTimeout => "handshake timeout",
        EventKind::ConnectTimeout => "CONNECT timeout",
        EventKind::ConnectRefused { .. } => "refused CONNECT",
        EventKind::ConnectAccepted => "accepted CONNECT",
        EventKind::Disconnected { .. } => "disconnect",
        EventKind::ProtocolError { .. } => "protocol error",
        EventKind::AuthorizationDenied { .. } => "denied",
        EventKind::Subscribed { .. } => "subscribe",
        EventKind::FirstTopic {
            side: Side::Publish,
            ..
        } => "publish",
        EventKind::FirstTopic { .. } => "receive",
        EventKind::HoneyTouch { .. } => "honey touch",
        EventKind::Traffic(_) => "traffic",
    }
}

// Keeps the histogram width and the engine's payload features in step.
const _: () = assert!(SIZE_BUCKETS == 8);
