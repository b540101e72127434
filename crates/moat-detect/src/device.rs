//! Per-device detectors: what each event means for one device's state, and the findings it
//! raises. Findings go through the response ladder in `engine.rs`.

use std::net::IpAddr;

use moat_types::{DeviceId, TopicFilter, TopicName};

use crate::alert::{Detector, Explanation, LearnedBaseline, Severity};
use crate::config::DetectConfig;
use crate::event::{
    Action, DisconnectCause, GroupName, ProtocolFault, Side, Source, TrafficSummary,
};
use crate::state::*;
use crate::stats::{Effective, fingerprint};
use crate::topics;

/// A detector's verdict before the response ladder.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub(crate) detector: Detector,
    pub(crate) severity: Severity,
    pub(crate) device: Option<DeviceId>,
    pub(crate) address: Option<IpAddr>,
    pub(crate) group: Option<GroupName>,
    pub(crate) explanation: Explanation,
    /// Key the incident by address (address-scoped detectors).
    pub(crate) by_address: bool,
    /// The threshold crossed was learned (not an absolute rule): no automatic mitigation
    /// while the device is younger than `learning.mature_secs`.
    pub(crate) learned: bool,
    /// Only evidence for an active incident (a response held while behaviour has not
    /// returned to normal): dropped when no incident of its key is active.
    pub(crate) extend_only: bool,
}

/// Which group counter a held finding is checked against: if enough of the group did the
/// same within the last minute, it is a fleet change (policy change, update), not an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consensus {
    /// Devices with authorization denials.
    Denied,
    /// Devices with first-seen or denied actuator publishes.
    Actuator,
    /// Devices with protocol errors.
    Malformed,
    /// Devices with first-seen topics after onboarding.
    Novel,
}

/// Closes over what every per-device detector needs to describe a finding.
pub(crate) struct Ctx<'c> {
    pub cfg: &'c DetectConfig,
    pub device: &'c DeviceId,
    pub src: &'c Source<'c>,
    pub now: u64,
    pub surge: bool,
    pub onboarded: bool,
    pub exempt_lateral: bool,
    pub exempt_honey: bool,
}

impl Ctx<'_> {
    pub fn finding(
        &self,
        detector: Detector,
        severity: Severity,
        feature: &'static str,
        observed: f64,
        threshold: f64,
        evidence: Vec<String>,
    ) -> Finding {
        Finding {
            detector,
            severity,
            device: Some(self.device.clone()),
            address: Some(self.src.address),
            group: self.src.group.cloned(),
            explanation: Explanation {
                feature,
                observed,
                threshold,
                baseline: None,
                evidence,
            },
            by_address: false,
            learned: false,
            extend_only: false,
        }
    }
}

/// Notes a CONNECT attempt of the identity (`rotated`: refused for a client id it never
/// used). Returns the gap to the previous attempt when the two are within
/// [`ROTATION_BURST_MS`] and one of them was rotated: a reconnect storm rotating client ids,
/// seen at its second CONNECT.
pub(crate) fn rotation_burst(d: &mut DeviceState, now: u64, rotated: bool) -> Option<u64> {
    let recent = |t: u64| t > 0 && now.saturating_sub(t) <= ROTATION_BURST_MS;
    let gap = now.saturating_sub(d.last_attempt_ms);
    let burst = recent(d.last_attempt_ms) && (rotated || recent(d.last_rotated_ms));
    d.last_attempt_ms = now;
    if rotated {
        d.last_rotated_ms = now;
    }
    burst.then_some(gap)
}

/// Accepted CONNECT: reconnects, client-id rotation, address set, concurrent sessions.
pub(crate) fn on_connect(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &GroupState,
    found: &mut Vec<Finding>,
) {
    let t = &cx.cfg.thresholds;
    if let Some(gap) = rotation_burst(d, cx.now, false) {
        found.push(cx.finding(
            Detector::ReconnectStorm,
            Severity::Medium,
            "client_id_rotation_burst",
            2.0,
            2.0,
            vec![format!(
                "accepted CONNECT {gap} ms after a CONNECT of this identity refused for a client id it never used"
            )],
        ));
    }
    d.acc.connects += 1;
    d.counters.connects += 1.0;
    if let Some(c) = cx.src.client
        && d.clients.insert(fingerprint(c.as_str()))
        && d.last_connect_ms != 0
    {
        d.counters.client_ids += 1.0;
    }
    let afp = fingerprint(&cx.src.address);
    let known_before = d.addresses.len() > 0;
    if d.addresses.insert(afp) && known_before {
        d.last_new_address_ms = cx.now;
    }
    // Cloned identity: another session of this identity, from another address,
    // still active.
    for l in d.live.iter().flatten() {
        if l.address != cx.src.address
            && l.last_active_ms > l.since_ms
            && cx.now.saturating_sub(l.last_active_ms) <= t.clone_active_ms
        {
            found.push(cx.finding(
                Detector::ClonedIdentity,
                Severity::High,
                "concurrent_active_sessions",
                2.0,
                1.0,
                vec![
                    format!(
                        "connection {} from {} had traffic {} ms before this connect",
                        l.connection,
                        l.address,
                        cx.now.saturating_sub(l.last_active_ms)
                    ),
                    format!(
                            "new connection {} from {}{}",
                            cx.src.connection,
                            cx.src.address,
                            cx.src.client
                                .map(|c| format!(" client id {c:?}"))
                                .unwrap_or_default()
                        ),
                ],
            ));
            break;
        }
    }
    let new = Live {
        connection: cx.src.connection,
        since_ms: cx.now,
        last_active_ms: cx.now,
        address: cx.src.address,
    };
    let slot = d
        .live
        .iter()
        .position(Option::is_none)
        .or_else(|| {
            d.live
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.map_or(0, |l| l.last_active_ms))
                .map(|(i, _)| i)
        })
        .unwrap_or(0);
    d.live[slot] = Some(new);
    // Reconnect storm.
    let mult = if cx.surge { t.surge_multiplier } else { 1.0 };
    let thr = t.reconnects_per_min * mult;
    let rotating = d.counters.client_ids >= t.client_ids_per_min;
    if d.counters.connects >= thr || (rotating && d.counters.connects >= thr / 2.0) {
        let gap = if d.last_disconnect_ms > 0 {
            cx.now.saturating_sub(d.last_disconnect_ms)
        } else {
            0
        };
        let mut evidence = vec![
            format!(
                "{:.1} accepted connects in the last minute (threshold {thr:.1}{})",
                d.counters.connects,
                if cx.surge {
                    ", raised during a fleet cx.surge"
                } else {
                    ""
                }
            ),
            format!("last downtime {gap} ms"),
        ];
        if rotating {
            evidence.push(format!(
                "{:.1} new client ids in the last minute",
                d.counters.client_ids
            ));
        }
        found.push(cx.finding(
            Detector::ReconnectStorm,
            if rotating {
                Severity::High
            } else {
                Severity::Medium
            },
            "connects_per_min",
            f64::from(d.counters.connects),
            f64::from(thr),
            evidence,
        ));
    }
    d.last_connect_ms = cx.now;
    if d.last_disconnect_ms > 0 {
        let away = cx
            .now
            .saturating_sub(d.last_disconnect_ms)
            .min(MAX_BACKLOG_MS) as f64
            / 1000.0;
        let l = &cx.cfg.learning;
        let upper = |f: Feature| {
            let e = Effective::shrink(
                &d.base[f as usize],
                &g.prior[f as usize],
                l.prior_windows,
                l.min_log_sd,
            );
            if e.known { e.upper(l.upper_z) } else { 0.0 }
        };
        d.backlog_msgs = (away * upper(Feature::PeakMsgsPublished)) as f32;
        d.backlog_bytes = (away * upper(Feature::PeakBytesPublished)) as f32;
    }
}

/// Disconnect: live sessions; a session taken over from another address (the identity in
/// use from two places at once), and taken back (ping-pong between two addresses).
pub(crate) fn on_disconnect(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    cause: DisconnectCause,
    found: &mut Vec<Finding>,
) {
    let t = &cx.cfg.thresholds;
    // The taker is the most recent other live session.
    let mut taker: Option<Live> = None;
    let mut displaced: Option<Live> = None;
    for l in d.live.iter_mut() {
        match l {
            Some(x) if x.connection == cx.src.connection => {
                displaced = Some(*x);
                *l = None;
            }
            Some(x) if taker.is_none_or(|t| x.since_ms >= t.since_ms) => taker = Some(*x),
            _ => {}
        }
    }
    d.last_disconnect_ms = cx.now;
    let Some(taker) =
        taker.filter(|x| cause == DisconnectCause::TakenOver && x.address != cx.src.address)
    else {
        return;
    };
    d.counters.takeovers += 1.0;
    let (from, to) = (fingerprint(&cx.src.address), fingerprint(&taker.address));
    let ping_pong = d.last_takeover_ms > 0
        && cx.now.saturating_sub(d.last_takeover_ms) <= TAKEOVER_PING_PONG_MS
        && d.takeover_from == to
        && d.takeover_to == from;
    let previous_ms = d.last_takeover_ms;
    d.last_takeover_ms = cx.now;
    d.takeover_from = from;
    d.takeover_to = to;
    let lasted = cx.now.saturating_sub(taker.since_ms);
    if d.counters.takeovers >= t.takeovers_per_min {
        found.push(cx.finding(
            Detector::ClonedIdentity,
            Severity::Critical,
            "takeovers_between_addresses_per_min",
            f64::from(d.counters.takeovers),
            f64::from(t.takeovers_per_min),
            vec![format!(
                "session taken over {:.1} times in the last minute; latest {} → {}",
                d.counters.takeovers, cx.src.address, taker.address
            )],
        ));
    } else if ping_pong {
        found.push(cx.finding(
            Detector::ClonedIdentity,
            Severity::High,
            "session_taken_back_between_addresses",
            2.0,
            2.0,
            vec![
                format!(
                    "connection {} from {} took the session back from {} (connection {}), which had taken it {} s earlier",
                    taker.connection,
                    taker.address,
                    cx.src.address,
                    cx.src.connection,
                    cx.now.saturating_sub(previous_ms) / 1000
                ),
                "two endpoints hold this identity at the same time".to_owned(),
            ],
        ));
    } else if let Some(x) = displaced.filter(|x| {
        // Still in its rhythm: the displaced session carried traffic, and its silence
        // before the take-over is within twice the device's usual gap. A device that
        // moved (roaming) lost its old link, so its old session had gone silent.
        let rhythm = u64::from(d.usual_gap_ms).max(t.clone_active_ms);
        d.usual_gap_ms > 0
            && x.last_active_ms > x.since_ms
            && cx.now.saturating_sub(x.last_active_ms) <= 2 * rhythm
    }) {
        // One take-over, from another address, of a session still keeping its rhythm: a
        // second endpoint of this identity. Alert (medium); taken back, it is high.
        found.push(cx.finding(
            Detector::ClonedIdentity,
            Severity::Medium,
            "session_taken_over_from_another_address",
            1.0,
            1.0,
            vec![
                format!(
                    "open session {} from {} taken over by connection {} from {} ({} ms after it connected)",
                    cx.src.connection, cx.src.address, taker.connection, taker.address, lasted
                ),
                format!(
                    "the displaced session carried traffic {} ms before; the device's usual gap is {} ms",
                    cx.now.saturating_sub(x.last_active_ms),
                    d.usual_gap_ms
                ),
            ],
        ));
    } else if fixed_until(d, taker.since_ms, cx.cfg.learning.mature_secs) {
        // A device that has used one address for a day (a sensor at its site; a phone shows
        // its home and cellular networks within a day), whose open session is taken over
        // from an address it never used: a second endpoint of its identity, whatever the
        // displaced session's rhythm (a sparse device's silence says nothing). Alert
        // (medium); taken back, it is high.
        found.push(cx.finding(
            Detector::ClonedIdentity,
            Severity::Medium,
            "session_taken_over_from_a_new_address",
            1.0,
            1.0,
            vec![
                format!(
                    "open session {} from {} taken over by connection {} from {}, an address this identity never used before ({} ms after it connected)",
                    cx.src.connection, cx.src.address, taker.connection, taker.address, lasted
                ),
                "until then the identity had used a single address".to_owned(),
            ],
        ));
    }
}

/// Whether the device had used a single address, over at least `secs` since it was first
/// seen, until the connection that started at `since_ms` brought a new one: that connect is
/// the latest to add an address, and the device knows two.
fn fixed_until(d: &DeviceState, since_ms: u64, secs: u64) -> bool {
    d.last_new_address_ms == since_ms
        && d.addresses.len() == 2
        && since_ms.saturating_sub(d.first_seen_ms) >= 1000 * secs
}

/// Protocol error of an authenticated device: the first after a clean record alerts at once
/// (low, alert only); a stream is judged per minute (held for group consensus).
pub(crate) fn on_protocol_error(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &mut GroupState,
    fault: ProtocolFault,
    found: &mut Vec<Finding>,
    held: &mut Vec<(Consensus, Finding)>,
) {
    let t = &cx.cfg.thresholds;
    first_protocol_error(cx, d, g, fault, found);
    d.counters.protocol_errors += 1.0;
    if !d.acc.malformed {
        d.acc.malformed = true;
        g.malformed_devices += 1.0;
    }
    let thr = t.protocol_errors_per_min;
    if d.counters.protocol_errors >= thr {
        let sev = if d.counters.protocol_errors >= 5.0 * thr {
            Severity::High
        } else {
            Severity::Medium
        };
        held.push((
            Consensus::Malformed,
            cx.finding(
                Detector::MalformedStream,
                sev,
                "protocol_errors_per_min",
                f64::from(d.counters.protocol_errors),
                f64::from(thr),
                vec![format!(
                    "{:.1} protocol errors in the last minute on connection {}",
                    d.counters.protocol_errors, cx.src.connection
                )],
            ),
        ));
    }
}

/// A device that passed mutual TLS and then broke the protocol is buggy or compromised, and
/// operators want to know at its first packet, not after a minute's stream. The record is
/// clean when the device sent no protocol error for [`PROTOCOL_ERROR_MEMORY_MS`] (its decayed
/// per-minute counter is then 0 and no earlier error alert is open): that first error alerts
/// at once, low and alert only (the per-minute rule escalates to a mitigation). A device with
/// a firmware bug that keeps sending them alerts once and is then known for as long as its
/// errors keep coming within the memory. A firmware roll-out that makes a group's devices
/// send bad packets ends many records at once: once `consensus_min_devices` members' records
/// ended within about ten minutes (this one included), the rest do not alert.
fn first_protocol_error(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &mut GroupState,
    fault: ProtocolFault,
    found: &mut Vec<Finding>,
) {
    let now_s = u32::try_from(cx.now / 1000).unwrap_or(u32::MAX).max(1);
    let previous_s = std::mem::replace(&mut d.last_protocol_error_s, now_s);
    let gap_ms = 1000 * u64::from(now_s.saturating_sub(previous_s));
    if previous_s != 0 && gap_ms < PROTOCOL_ERROR_MEMORY_MS {
        return;
    }
    g.records_ended += 1.0;
    let need = cx.cfg.thresholds.consensus_min_devices.max(2) as f32;
    if g.records_ended >= need {
        return;
    }
    let observed_ms = cx.now.saturating_sub(d.first_seen_ms);
    let at = if cx.src.connection == 0 {
        format!("before CONNECT from {}", cx.src.address)
    } else {
        format!(
            "on connection {} from {}",
            cx.src.connection, cx.src.address
        )
    };
    let mut f = cx.finding(
        Detector::MalformedStream,
        Severity::Low,
        "first_protocol_error",
        1.0,
        1.0,
        vec![
            format!(
                "{} {at}{} after mutual TLS as {}",
                fault.as_str(),
                cx.src
                    .client
                    .map(|c| format!(" (client id {c:?})"))
                    .unwrap_or_default(),
                cx.device
            ),
            if previous_s == 0 {
                format!(
                    "no protocol error from this identity since it was first seen {} s ago",
                    observed_ms / 1000
                )
            } else {
                format!(
                    "its previous protocol error was {} days ago",
                    gap_ms / 86_400_000
                )
            },
            format!(
                "{:.1} devices of the group began sending protocol errors in the last ~10 min (a roll-out needs {need:.0})",
                g.records_ended
            ),
        ],
    );
    // The baseline is the device's clean record: its decayed protocol errors per minute
    // before this one, over the windows it has been observed.
    f.explanation.baseline = Some(LearnedBaseline {
        typical: f64::from(d.counters.protocol_errors),
        spread: 0.0,
        device_windows: u32::try_from(observed_ms / WINDOW_MS).unwrap_or(u32::MAX),
        group_weight: 0.0,
    });
    found.push(f);
}

/// Denied publish or subscribe: reconnaissance and command injection (held).
pub(crate) fn on_denied(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &mut GroupState,
    action: Action,
    topic: &str,
    held: &mut Vec<(Consensus, Finding)>,
) {
    let t = &cx.cfg.thresholds;
    if !d.acc.denied {
        d.acc.denied = true;
        g.denied_devices += 1.0;
    }
    if d.denied.insert(fingerprint(topic)) {
        d.counters.denied_topics += 1.0;
    }
    let thr = t.denied_topics_per_min;
    if d.counters.denied_topics >= thr {
        held.push((
            Consensus::Denied,
            cx.finding(
                Detector::TopicReconnaissance,
                if d.counters.denied_topics >= 3.0 * thr {
                    Severity::High
                } else {
                    Severity::Medium
                },
                "denied_topics_per_min",
                f64::from(d.counters.denied_topics),
                f64::from(thr),
                vec![format!(
                    "{:.1} distinct topics denied in the last minute; latest {action:?} {topic:?}",
                    d.counters.denied_topics
                )],
            ),
        ));
    }
    if action == Action::Publish
        && cx
            .cfg
            .topics
            .actuator_topics
            .iter()
            .any(|f| topics::overlaps(f.as_str(), topic))
    {
        if !d.acc.actuator {
            d.acc.actuator = true;
            g.actuator_devices += 1.0;
        }
        held.push((
            Consensus::Denied,
            cx.finding(
                Detector::CommandInjection,
                Severity::High,
                "denied_actuator_publish",
                1.0,
                1.0,
                vec![format!("publish to actuator topic {topic:?} denied")],
            ),
        ));
    }
}

/// Accepted subscription: broad wildcards, topic edges.
pub(crate) fn on_subscribed(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &mut GroupState,
    filter: &TopicFilter,
) {
    let first = filter.as_str().split('/').next().unwrap_or("");
    if (first == "#" || first == "+") && !cx.exempt_lateral {
        d.counters.denied_topics += 1.0;
    }
    note_edge(d, g, fingerprint(filter.as_str()), cx.onboarded);
}

/// First publish to a topic on this connection: a novel topic from a new address (a
/// diverging clone), novel topics and actuator edges (held).
pub(crate) fn on_first_publish(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &mut GroupState,
    topic: &TopicName,
    found: &mut Vec<Finding>,
    held: &mut Vec<(Consensus, Finding)>,
) {
    let t = &cx.cfg.thresholds;
    let novel = note_edge(
        d,
        g,
        fingerprint(topic.as_str()) ^ Side::Publish as u32,
        cx.onboarded,
    );
    let actuator = || {
        cx.cfg
            .topics
            .actuator_topics
            .iter()
            .any(|f| f.matches(topic))
    };
    if novel
        && cx.now.saturating_sub(d.last_new_address_ms) <= NEW_ADDRESS_CLONE_MS
        && d.live.iter().flatten().any(|l| {
            l.connection == cx.src.connection
                && l.address == cx.src.address
                && fixed_until(d, l.since_ms, cx.cfg.learning.onboarding_secs)
        })
        && !actuator()
    {
        // Diverging clone: a device that had used one address since its onboarding publishes
        // to a topic it never used, on a session from an address it never used. Either alone
        // is benign (a site's new address, a firmware update's new topic); both at once are
        // a second endpoint behaving differently. Alert (medium). Actuator commands are
        // left to `command_injection` (its group prior knows apps that command actuators,
        // and an app on a phone meets both a new network and a new actuator).
        found.push(cx.finding(
            Detector::ClonedIdentity,
            Severity::Medium,
            "novel_topic_from_a_new_address",
            1.0,
            1.0,
            vec![
                format!(
                    "first publish to {topic} on connection {} from {}, an address this identity never used before ({} ms after it connected)",
                    cx.src.connection,
                    cx.src.address,
                    cx.now.saturating_sub(d.last_new_address_ms)
                ),
                "until then the identity had used a single address".to_owned(),
            ],
        ));
    }
    if novel && cx.onboarded && d.counters.novel_topics >= t.novel_topics_per_min {
        held.push((
            Consensus::Novel,
            cx.finding(
                Detector::TopicReconnaissance,
                Severity::Medium,
                "novel_topics_per_min",
                f64::from(d.counters.novel_topics),
                f64::from(t.novel_topics_per_min),
                vec![format!(
                    "{:.1} first-seen topics in the last minute; latest {topic}",
                    d.counters.novel_topics
                )],
            ),
        ));
    }
    if actuator() {
        let fp = fingerprint(topic.as_str());
        if !d.actuator_edges.contains(fp) {
            // Other members command actuators: a group prior of the actuator edge (apps
            // pairing with new actuators), not an injection.
            let commanding_group = g.commanders >= cx.cfg.thresholds.consensus_min_devices.max(1);
            if d.actuator_edges.len() == 0 {
                g.commanders = g.commanders.saturating_add(1);
            }
            if cx.onboarded && !commanding_group {
                if !d.acc.actuator {
                    d.acc.actuator = true;
                    g.actuator_devices += 1.0;
                }
                held.push((
                        Consensus::Actuator,
                        cx.finding(
                            Detector::CommandInjection,
                            Severity::High,
                            "novel_actuator_publish",
                            1.0,
                            1.0,
                            vec![format!(
                                "first publish to actuator topic {topic} after onboarding; known actuator topics: {}",
                                d.actuator_edges.len()
                            )],
                        ),
                    ));
            }
            d.actuator_edges.insert(fp);
        }
    }
}

/// A topic or filter the device touched: honey topics and other devices' namespaces.
pub(crate) fn on_touch(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    prefix: Option<&[String]>,
    kind: &str,
    topic: &str,
    (publish, denied): (bool, bool),
    found: &mut Vec<Finding>,
) {
    let t = &cx.cfg.thresholds;
    // What a device did reach (a subscription, a publish) touches a honey topic when it
    // overlaps one (`#` included); what it was refused touches one only when it aimed
    // inside it, so that a broad refused wildcard is reconnaissance, not a honey touch.
    if !cx.exempt_honey
        && let Some(h) = cx.cfg.deception.honey_topics.iter().find(|h| {
            if denied {
                topics::within(topic, h.as_str())
            } else {
                topics::overlaps(h.as_str(), topic)
            }
        })
    {
        found.push(cx.finding(
            Detector::HoneyTopic,
            Severity::High,
            "honey_topic_touched",
            1.0,
            1.0,
            vec![format!("{} {topic:?} touches honey filter {h}", kind)],
        ));
    }
    if !cx.exempt_lateral
        && let Some(prefix) = prefix
        && let Some(foreign) = topics::foreign_namespace(prefix, cx.device.as_str(), topic)
    {
        let fp = fingerprint(foreign.unwrap_or("+"));
        if d.foreign.insert(fp) || foreign.is_none() {
            d.counters.foreign += 1.0;
        }
        let thr = t.foreign_namespaces_per_min;
        if d.counters.foreign >= thr {
            found.push(cx.finding(
                Detector::LateralMovement,
                if publish || d.counters.foreign >= 3.0 * thr {
                    Severity::Critical
                } else {
                    Severity::High
                },
                "foreign_namespaces_per_min",
                f64::from(d.counters.foreign),
                f64::from(thr),
                vec![format!(
                    "{:.1} other namespaces touched in the last minute; latest {} {topic:?}{}",
                    d.counters.foreign,
                    kind,
                    if foreign.is_none() {
                        " (wildcard across namespaces)"
                    } else {
                        ""
                    }
                )],
            ));
        }
    }
}

/// Records a topic edge; true if novel (and counts it once onboarded).
pub(crate) fn note_edge(d: &mut DeviceState, g: &mut GroupState, fp: u32, onboarded: bool) -> bool {
    if d.edges_saturated {
        return false;
    }
    let was_full = d.edges.is_full();
    let novel = d.edges.insert(fp);
    if novel {
        if was_full {
            // More topics than we remember: novelty is no longer meaningful for this device.
            d.edges_saturated = true;
            return false;
        }
        d.acc.novel_edges += 1;
        if onboarded {
            d.counters.novel_topics += 1.0;
            if !d.acc.novel_burst {
                d.acc.novel_burst = true;
                g.novel_devices += 1.0;
            }
        }
    }
    novel
}

/// A traffic summary: accumulates the window, judges floods and exfiltration bursts at once,
/// and notices two sessions of one identity active from two addresses.
pub(crate) fn on_traffic(
    cx: &Ctx<'_>,
    d: &mut DeviceState,
    g: &GroupState,
    s: &TrafficSummary,
    found: &mut Vec<Finding>,
) {
    let (cfg, src, now, surge) = (cx.cfg, cx.src, cx.now, cx.surge);
    let t = &cfg.thresholds;
    let l = &cfg.learning;
    let secs = f64::from(if s.interval_ms == 0 {
        1000
    } else {
        s.interval_ms
    }) / 1000.0;
    let a = &mut d.acc;
    a.summaries = a.summaries.saturating_add(1);
    a.msgs_pub = a.msgs_pub.saturating_add(s.msgs_published);
    a.msgs_del = a.msgs_del.saturating_add(s.msgs_delivered);
    a.bytes_pub = a.bytes_pub.saturating_add(s.bytes_published);
    a.bytes_del = a.bytes_del.saturating_add(s.bytes_delivered);
    let rate = f64::from(s.msgs_published) / secs;
    let brate = s.bytes_published as f64 / secs;
    a.peak_msgs = a.peak_msgs.max(rate as f32);
    a.peak_bytes = a.peak_bytes.max(brate as f32);
    a.max_payload = a.max_payload.max(s.max_payload);
    for (acc, n) in a.sizes.iter_mut().zip(s.size_histogram) {
        *acc = acc.saturating_add(n);
    }
    if s.msgs_published > 0 || s.msgs_delivered > 0 {
        let mut this_since = None;
        for x in d.live.iter_mut().flatten() {
            if x.connection == src.connection {
                if x.last_active_ms > x.since_ms {
                    // The device's rhythm: gaps between busy seconds of one session.
                    let gap = now.saturating_sub(x.last_active_ms).min(MAX_RHYTHM_MS) as f32;
                    let g0 = d.usual_gap_ms as f32;
                    d.usual_gap_ms = if d.usual_gap_ms == 0 {
                        gap as u32
                    } else {
                        (g0 + (gap - g0) / 16.0) as u32
                    };
                }
                x.last_active_ms = now;
                this_since = Some(x.since_ms);
            }
        }
        // Cloned identity: two sessions of this identity from two addresses, both carrying
        // traffic since the later one started.
        if let Some(since) = this_since
            && let Some(other) = d.live.iter().flatten().find(|x| {
                x.connection != src.connection
                    && x.address != src.address
                    && x.last_active_ms > x.since_ms.max(since)
                    && now.saturating_sub(x.last_active_ms) <= t.clone_active_ms
            })
        {
            found.push(cx.finding(
                Detector::ClonedIdentity,
                Severity::High,
                "concurrent_active_sessions",
                2.0,
                1.0,
                vec![
                    format!(
                        "connection {} from {} and connection {} from {} both carry traffic",
                        other.connection, other.address, src.connection, src.address
                    ),
                    format!(
                        "the other session was active {} ms ago",
                        now.saturating_sub(other.last_active_ms)
                    ),
                ],
            ));
        }
    }
    // Held back by a rate limit for at least half of the interval: the device offers more
    // than it is let through (a throttle's release waits while this lasts, see
    // `Engine::hold_throttles`).
    d.held_streak = if 2 * u64::from(s.held_ms) >= (secs * 1000.0) as u64 {
        d.held_streak.saturating_add(1)
    } else {
        0
    };
    let offered = f64::from(s.msgs_published) / secs;
    let flushing = now.saturating_sub(d.last_connect_ms) <= FLUSH_ALLOWANCE_MS;
    let allowance = if surge && flushing {
        f64::from(t.surge_multiplier)
    } else {
        1.0
    };
    let rate_over = |thr: f64, observed: f64, backlog: &mut f32| -> bool {
        if observed <= thr {
            return false;
        }
        // A device that was away may catch up on what it would have sent meanwhile, right
        // after it reconnects (not later: an unused backlog is no credit for a flood).
        if !flushing {
            *backlog = 0.0;
            return true;
        }
        let extra = ((observed - thr) * secs) as f32;
        if *backlog >= extra {
            *backlog -= extra;
            return false;
        }
        *backlog = 0.0;
        true
    };
    let (flood_thr, flood_base) = rate_threshold(
        cfg,
        d,
        g,
        Feature::PeakMsgsPublished,
        t.flood_ratio,
        t.flood_floor_msgs_per_s,
        t.flood_cold_msgs_per_s,
    );
    let flood_thr = flood_thr * allowance;
    if rate_over(flood_thr, offered, &mut d.backlog_msgs) {
        d.flood_streak = d.flood_streak.saturating_add(1);
        let sev = streak_severity(d.flood_streak);
        let mut f = cx.finding(
            Detector::PublishFlood,
            sev,
            Feature::PeakMsgsPublished.as_str(),
            offered,
            flood_thr,
            vec![
                format!(
                    "{offered:.0} msgs/s published over {secs:.1} s on connection {} (held back by a rate limit for {} ms), {} s in a row",
                    src.connection, s.held_ms, d.flood_streak
                ),
                threshold_text(t.flood_ratio, l.upper_z, &flood_base, allowance),
            ],
        );
        f.learned = flood_base.is_some() && offered < f64::from(t.flood_cold_msgs_per_s);
        f.explanation.baseline = flood_base;
        found.push(f);
    } else {
        d.flood_streak = 0;
        let (burst_thr, burst_base) = rate_threshold(
            cfg,
            d,
            g,
            Feature::PeakBytesPublished,
            t.burst_ratio,
            t.burst_floor_bytes_per_s,
            t.burst_cold_bytes_per_s,
        );
        let burst_thr = burst_thr * allowance;
        if rate_over(burst_thr, brate, &mut d.backlog_bytes) {
            d.burst_streak = d.burst_streak.saturating_add(1);
            let sev = streak_severity(d.burst_streak);
            let mut f = cx.finding(
                Detector::ExfiltrationBurst,
                sev,
                Feature::PeakBytesPublished.as_str(),
                brate,
                burst_thr,
                vec![
                    format!(
                        "{brate:.0} bytes/s published in {} msgs (largest {} bytes) on connection {}",
                        s.msgs_published, s.max_payload, src.connection
                    ),
                    threshold_text(t.burst_ratio, l.upper_z, &burst_base, allowance),
                ],
            );
            f.learned = burst_base.is_some() && brate < f64::from(t.burst_cold_bytes_per_s);
            f.explanation.baseline = burst_base;
            found.push(f);
        } else {
            d.burst_streak = 0;
        }
    }
}

/// High, critical once over the limit for 3 summaries in a row.
fn streak_severity(streak: u8) -> Severity {
    if streak >= 3 {
        Severity::Critical
    } else {
        Severity::High
    }
}

fn threshold_text(ratio: f32, z: f32, base: &Option<LearnedBaseline>, allowance: f64) -> String {
    let mut s = match base {
        Some(_) => format!(
            "threshold: {ratio} × the learned peak's upper bound (z = {z}) or × the learned burst envelope"
        ),
        None => "threshold: the cold-start rule (no baseline yet)".to_owned(),
    };
    if allowance > 1.0 {
        s.push_str(&format!(
            ", × {allowance} right after a connect during a fleet surge"
        ));
    }
    s
}

/// Threshold of a per-second rate: `ratio` × the upper bound of the learned peak (raised by
/// the group's common drift), at least `floor`; `cold` without any baseline.
fn rate_threshold(
    cfg: &DetectConfig,
    d: &DeviceState,
    g: &GroupState,
    f: Feature,
    ratio: f32,
    floor: f32,
    cold: f32,
) -> (f64, Option<LearnedBaseline>) {
    let l = &cfg.learning;
    let e = Effective::shrink(
        &d.base[f as usize],
        &g.prior[f as usize],
        l.prior_windows,
        l.min_log_sd,
    );
    if !e.known {
        return (f64::from(cold), None);
    }
    let drift = f64::from(g.drift[f as usize].0.max(0.0)).exp();
    let upper = e.upper(l.upper_z);
    let k = if f == Feature::PeakMsgsPublished {
        0
    } else {
        1
    };
    let envelope = f64::from(ratio * d.envelope(g, k, &cfg.thresholds));
    let thr = (f64::from(ratio) * upper * drift)
        .max(f64::from(floor))
        .max(envelope);
    (thr, Some(learned(&e)))
}

pub(crate) fn learned(e: &Effective) -> LearnedBaseline {
    LearnedBaseline {
        typical: e.typical(),
        spread: f64::from(e.mean + e.sd).exp_m1() - e.typical(),
        device_windows: e.device_n,
        group_weight: f64::from(e.group_weight),
    }
}
