//! `DetectConfig`: thresholds, learning rates, the response ladder, deception and limits.
//! Every field has a default, so an empty TOML table arms every detector.

use std::collections::BTreeMap;

use moat_types::{DeviceId, TopicFilter};
use serde::Deserialize;

use crate::alert::{Detector, Rung, Severity};
use crate::event::GroupName;

/// Whether responses are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Alerts carry the configured response.
    #[default]
    Enforce,
    /// Alerts carry `Response::Alert`; the configured response is in `intended`.
    DryRun,
    /// No detection at all: the hub runs no engine (an engine given this mode behaves as
    /// in `DryRun`).
    Off,
}

/// The engine's configuration (the `[detect]` section of the hub's file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// `enforce` (default), `dry_run` or `off`.
    pub mode: Mode,
    /// Rule thresholds.
    pub thresholds: Thresholds,
    /// Baselines and the streaming model.
    pub learning: Learning,
    /// The response ladder.
    pub responses: ResponseConfig,
    /// Honey topics and canary identities.
    pub deception: Deception,
    /// Topic layout: device namespaces and actuator topics.
    pub topics: TopicLayout,
    /// Table sizes.
    pub limits: Limits,
}

/// Rule thresholds. Counts "per minute" are exponentially decayed counts with a time
/// constant of 60 s, updated at every event and decayed every 10 s window, so a burst of
/// `n` events within a few seconds counts close to `n`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Refused CONNECTs per minute from one address, or against one known identity.
    pub credential_failures_per_min: f32,
    /// Failed TLS handshakes per minute from one address (an expired or revoked certificate
    /// counts 1/4, a negotiation failure 1/2).
    pub certificate_failures_per_min: f32,
    /// Handshake and CONNECT timeouts per minute from one address.
    pub timeouts_per_min: f32,
    /// Connections from one address open at the same time that have neither finished
    /// their TLS handshake and CONNECT nor failed (slow-loris, seen before any deadline).
    pub pending_connections_per_address: f32,
    /// Protocol errors per minute of one device.
    pub protocol_errors_per_min: f32,
    /// Protocol errors per minute from one address without an identity.
    pub address_protocol_errors_per_min: f32,
    /// Distinct denied topics per minute of one device.
    pub denied_topics_per_min: f32,
    /// First-seen topics per minute of one device older than the onboarding period.
    pub novel_topics_per_min: f32,
    /// Accepted CONNECTs per minute of one device.
    pub reconnects_per_min: f32,
    /// Distinct client ids per minute of one device that make a reconnect storm "rotating".
    pub client_ids_per_min: f32,
    /// Other devices' namespaces touched per minute.
    pub foreign_namespaces_per_min: f32,
    /// Session take-overs between different addresses per minute.
    pub takeovers_per_min: f32,
    /// A previous session counts as active (for clone detection) if it had traffic within
    /// this many milliseconds.
    pub clone_active_ms: u64,
    /// Flood: messages per second above this multiple of the learned peak upper bound.
    pub flood_ratio: f32,
    /// Flood: never below this many messages per second once a baseline exists.
    pub flood_floor_msgs_per_s: f32,
    /// Flood: the threshold while neither the device nor its group has a baseline.
    pub flood_cold_msgs_per_s: f32,
    /// Exfiltration burst: bytes per second above this multiple of the learned peak bound.
    pub burst_ratio: f32,
    /// Exfiltration burst: never below this many bytes per second once a baseline exists.
    pub burst_floor_bytes_per_s: f32,
    /// Exfiltration burst: the threshold without any baseline.
    pub burst_cold_bytes_per_s: f32,
    /// Low-and-slow: bytes published over the last hour above this multiple of the
    /// device's daily norm (after removing the group's common drift).
    pub low_slow_ratio: f32,
    /// Low-and-slow: consecutive 10 s windows above the ratio before alerting.
    pub low_slow_windows: u16,
    /// Behaviour anomaly: smallest |z| of the most deviating feature.
    pub anomaly_z: f32,
    /// Behaviour anomaly: consecutive anomalous windows before alerting.
    pub anomaly_windows: u16,
    /// Behaviour anomaly: a window is unlike the group's when at least this fraction of the
    /// group's Half-Space Trees isolate it (no reference point in its leaf cell).
    pub hst_isolated_trees: f32,
    /// Fleet surge (mass reconnect after an outage): connects per minute across the fleet
    /// above this fraction of known devices multiply the connection thresholds.
    pub surge_fraction: f32,
    /// Multiplier of connection thresholds during a surge.
    pub surge_multiplier: f32,
    /// Group consensus (policy change, fleet update): a held alert is dropped when at least
    /// this fraction of the group, and at least `consensus_min_devices`, did the same.
    pub consensus_fraction: f32,
    /// See `consensus_fraction`.
    pub consensus_min_devices: u32,
    /// How long consensus-checked alerts (command injection, denials) are held, in seconds.
    pub consensus_hold_secs: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            credential_failures_per_min: 10.0,
            certificate_failures_per_min: 10.0,
            timeouts_per_min: 5.0,
            pending_connections_per_address: 8.0,
            protocol_errors_per_min: 3.0,
            address_protocol_errors_per_min: 10.0,
            denied_topics_per_min: 5.0,
            novel_topics_per_min: 30.0,
            reconnects_per_min: 10.0,
            client_ids_per_min: 3.0,
            foreign_namespaces_per_min: 2.0,
            takeovers_per_min: 3.0,
            clone_active_ms: 3_000,
            flood_ratio: 4.0,
            flood_floor_msgs_per_s: 20.0,
            flood_cold_msgs_per_s: 200.0,
            burst_ratio: 4.0,
            burst_floor_bytes_per_s: 64.0 * 1024.0,
            burst_cold_bytes_per_s: 1024.0 * 1024.0,
            low_slow_ratio: 3.0,
            low_slow_windows: 30,
            anomaly_z: 6.0,
            anomaly_windows: 6,
            hst_isolated_trees: 0.375,
            surge_fraction: 0.1,
            surge_multiplier: 3.0,
            consensus_fraction: 0.2,
            consensus_min_devices: 3,
            consensus_hold_secs: 5,
        }
    }
}

/// Baselines and the streaming model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Learning {
    /// Strength of the group prior, in device windows: a device with `n` learned windows
    /// weighs its own history `n / (n + prior_windows)`.
    pub prior_windows: u32,
    /// Time constant of the per-device baselines, in 10 s windows (360: one hour).
    pub device_windows: u32,
    /// Time constant of the daily norm used by low-and-slow, in windows (8640: one day).
    pub daily_windows: u32,
    /// A device younger than this (seconds since first seen) is onboarding: first-seen
    /// topics are learned, not alerted on.
    pub onboarding_secs: u64,
    /// A device observed for less than this (seconds since first seen) is not mitigated
    /// automatically on a *learned* threshold (rate, volume, behaviour): such alerts carry
    /// `Response::Alert` until the device's history covers a daily cycle. Absolute rules
    /// (the cold-start rates, brute force, deception, clones by take-over…) are not affected.
    /// It is also how long a device must have used a single address before a take-over or
    /// a new topic from an address it never used suggests a clone.
    pub mature_secs: u64,
    /// Robust z of the upper bound of a learned peak.
    pub upper_z: f32,
    /// Smallest standard deviation of a log-scale baseline (0.2: ±22 %).
    pub min_log_sd: f32,
    /// Points per reference window of the Half-Space Trees.
    pub hst_window: u32,
    /// Seed of the Half-Space Trees' random structure.
    pub hst_seed: u64,
}

impl Default for Learning {
    fn default() -> Self {
        Self {
            prior_windows: 18,
            device_windows: 360,
            daily_windows: 8_640,
            onboarding_secs: 600,
            mature_secs: 86_400,
            upper_z: 4.0,
            min_log_sd: 0.2,
            hst_window: 256,
            hst_seed: 0x6d6f_6174_6465_7465,
        }
    }
}

/// Rungs per severity for one detector; missing severities keep their defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityRungs {
    /// Rung for low severity.
    pub low: Option<Rung>,
    /// Rung for medium severity.
    pub medium: Option<Rung>,
    /// Rung for high severity.
    pub high: Option<Rung>,
    /// Rung for critical severity.
    pub critical: Option<Rung>,
}

/// How long each rung holds at least, in seconds. A response is released when its time box
/// has passed *and* its detector has been quiet for `quiet_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeBoxes {
    /// Alert-only incidents (they deduplicate repeated firings).
    pub alert_secs: u64,
    /// Throttle.
    pub throttle_secs: u64,
    /// Read-only.
    pub read_only_secs: u64,
    /// Quarantine.
    pub quarantine_secs: u64,
    /// Disconnect (the hub refuses reconnection until released).
    pub disconnect_secs: u64,
    /// Revoke certificate (release: the hub may accept a re-enrollment).
    pub revoke_certificate_secs: u64,
    /// Ban address.
    pub ban_address_secs: u64,
    /// Quiet period after the last evidence before a release.
    pub quiet_secs: u64,
}

impl Default for TimeBoxes {
    fn default() -> Self {
        Self {
            alert_secs: 300,
            throttle_secs: 300,
            read_only_secs: 600,
            quarantine_secs: 900,
            disconnect_secs: 300,
            revoke_certificate_secs: 3_600,
            ban_address_secs: 900,
            quiet_secs: 60,
        }
    }
}

impl TimeBoxes {
    pub(crate) fn millis(&self, rung: Rung) -> u64 {
        1000 * match rung {
            Rung::Alert => self.alert_secs,
            Rung::Throttle => self.throttle_secs,
            Rung::ReadOnly => self.read_only_secs,
            Rung::Quarantine => self.quarantine_secs,
            Rung::Disconnect => self.disconnect_secs,
            Rung::RevokeCertificate => self.revoke_certificate_secs,
            Rung::BanAddress => self.ban_address_secs,
        }
    }
}

/// The response ladder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Per-detector overrides of the default rungs (see [`default_rungs`]), as
    /// `[responses.rungs.<detector>]` tables.
    pub rungs: BTreeMap<Detector, SeverityRungs>,
    /// Throttle factor, in (0, 1].
    pub throttle_factor: f32,
    /// Time boxes.
    pub time_box: TimeBoxes,
    /// Collateral guard: an address ban becomes this device-scoped rung when benign devices
    /// were seen at the address within `collateral_window_secs`.
    pub collateral_fallback: Rung,
    /// See `collateral_fallback`.
    pub collateral_window_secs: u64,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            rungs: BTreeMap::new(),
            throttle_factor: 0.1,
            time_box: TimeBoxes::default(),
            collateral_fallback: Rung::Quarantine,
            collateral_window_secs: 3_600,
        }
    }
}

/// The default rungs of a detector, for low, medium, high and critical severity.
pub fn default_rungs(detector: Detector) -> [Rung; 4] {
    use Rung::*;
    match detector {
        Detector::CredentialBruteForce | Detector::CertificateBruteForce => {
            [Alert, Throttle, BanAddress, BanAddress]
        }
        Detector::ClonedIdentity => [Alert, Alert, Quarantine, RevokeCertificate],
        Detector::TopicReconnaissance => [Alert, Alert, Quarantine, Quarantine],
        Detector::PublishFlood => [Alert, Throttle, Throttle, Disconnect],
        Detector::SlowLoris => [Alert, Throttle, BanAddress, BanAddress],
        Detector::MalformedStream => [Alert, Alert, Disconnect, BanAddress],
        Detector::ExfiltrationBurst => [Alert, Throttle, Throttle, Quarantine],
        Detector::ExfiltrationLowAndSlow => [Alert, Alert, Throttle, Quarantine],
        Detector::CommandInjection => [Alert, ReadOnly, ReadOnly, Quarantine],
        Detector::LateralMovement => [Alert, Alert, Quarantine, Quarantine],
        Detector::ReconnectStorm => [Alert, Throttle, Disconnect, BanAddress],
        Detector::HoneyTopic => [Alert, Quarantine, Quarantine, Quarantine],
        Detector::CanaryIdentity => [Alert, BanAddress, BanAddress, BanAddress],
        Detector::BehaviourAnomaly => [Alert, Alert, Alert, Throttle],
    }
}

impl ResponseConfig {
    pub(crate) fn table(&self) -> [[Rung; 4]; Detector::ALL.len()] {
        let mut table = [[Rung::Alert; 4]; Detector::ALL.len()];
        for d in Detector::ALL {
            let mut rungs = default_rungs(d);
            if let Some(o) = self.rungs.get(&d) {
                let set = [o.low, o.medium, o.high, o.critical];
                for (slot, over) in rungs.iter_mut().zip(set) {
                    if let Some(r) = over {
                        *slot = r;
                    }
                }
            }
            table[d.index()] = rungs;
        }
        table
    }
}

/// Deception.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deception {
    /// Topic filters no legitimate device publishes to, subscribes to or is denied on. A
    /// subscription whose filter overlaps one (for example `#`) touches it too.
    #[serde(deserialize_with = "filters")]
    pub honey_topics: Vec<TopicFilter>,
    /// Identities no legitimate device uses; any attempt with one is critical.
    pub canary_devices: Vec<DeviceId>,
    /// Groups whose devices may touch honey topics (monitoring back-ends).
    pub exempt_groups: Vec<GroupName>,
}

impl Default for Deception {
    fn default() -> Self {
        Self {
            honey_topics: vec![default_filter("_moat/honey/#")],
            canary_devices: Vec::new(),
            exempt_groups: Vec::new(),
        }
    }
}

/// Topic layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicLayout {
    /// Where each device's namespace lives: the level `{device}` stands for the device id
    /// (default `devices/{device}/#`). Touching another device's namespace is lateral
    /// movement. Empty disables lateral-movement detection.
    pub device_namespace: String,
    /// Actuator (command) topics: first-seen publishes there after onboarding, and denials
    /// there, are command injection.
    #[serde(deserialize_with = "filters")]
    pub actuator_topics: Vec<TopicFilter>,
    /// Groups allowed to touch other devices' namespaces (gateways, back-ends).
    pub lateral_exempt_groups: Vec<GroupName>,
}

impl Default for TopicLayout {
    fn default() -> Self {
        Self {
            device_namespace: "devices/{device}/#".to_owned(),
            actuator_topics: vec![
                default_filter("devices/+/cmd/#"),
                default_filter("devices/+/commands/#"),
            ],
            lateral_exempt_groups: Vec::new(),
        }
    }
}

/// Table sizes. Every table evicts its least recently seen entry when full.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Devices tracked (default 250,000).
    pub max_devices: usize,
    /// Addresses tracked (default 250,000).
    pub max_addresses: usize,
    /// Groups tracked, each with its priors and streaming model (default 1,024).
    pub max_groups: usize,
    /// Incidents (active responses) at once (default 65,536); when full, new alerts are
    /// still emitted but carry `Response::Alert`.
    pub max_incidents: usize,
    /// Alerts held for a group-consensus check (default 4,096); when full, new ones are
    /// decided without waiting.
    pub max_held: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_devices: 250_000,
            max_addresses: 250_000,
            max_groups: 1_024,
            max_incidents: 65_536,
            max_held: 4_096,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number outside its allowed range.
    #[error("detect.{field} is {value}, outside {range}")]
    OutOfRange {
        /// Dotted field name.
        field: &'static str,
        /// The value.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
    /// `topics.device_namespace` is not a filter with exactly one `{device}` level.
    #[error("detect.topics.device_namespace {0:?} needs exactly one `{{device}}` level")]
    Namespace(String),
}

impl DetectConfig {
    /// Checks ranges; returns every problem at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut positive = |field: &'static str, value: f64| {
            if !(value > 0.0 && value.is_finite()) {
                errors.push(ConfigError::OutOfRange {
                    field,
                    value,
                    range: "(0, ∞)",
                });
            }
        };
        let t = &self.thresholds;
        for (field, v) in [
            (
                "thresholds.credential_failures_per_min",
                t.credential_failures_per_min,
            ),
            (
                "thresholds.certificate_failures_per_min",
                t.certificate_failures_per_min,
            ),
            ("thresholds.timeouts_per_min", t.timeouts_per_min),
            (
                "thresholds.pending_connections_per_address",
                t.pending_connections_per_address,
            ),
            (
                "thresholds.protocol_errors_per_min",
                t.protocol_errors_per_min,
            ),
            (
                "thresholds.address_protocol_errors_per_min",
                t.address_protocol_errors_per_min,
            ),
            ("thresholds.denied_topics_per_min", t.denied_topics_per_min),
            ("thresholds.novel_topics_per_min", t.novel_topics_per_min),
            ("thresholds.reconnects_per_min", t.reconnects_per_min),
            ("thresholds.client_ids_per_min", t.client_ids_per_min),
            (
                "thresholds.foreign_namespaces_per_min",
                t.foreign_namespaces_per_min,
            ),
            ("thresholds.takeovers_per_min", t.takeovers_per_min),
            ("thresholds.flood_ratio", t.flood_ratio),
            (
                "thresholds.flood_floor_msgs_per_s",
                t.flood_floor_msgs_per_s,
            ),
            ("thresholds.flood_cold_msgs_per_s", t.flood_cold_msgs_per_s),
            ("thresholds.burst_ratio", t.burst_ratio),
            (
                "thresholds.burst_floor_bytes_per_s",
                t.burst_floor_bytes_per_s,
            ),
            (
                "thresholds.burst_cold_bytes_per_s",
                t.burst_cold_bytes_per_s,
            ),
            ("thresholds.low_slow_ratio", t.low_slow_ratio),
            ("thresholds.anomaly_z", t.anomaly_z),
            ("thresholds.hst_isolated_trees", t.hst_isolated_trees),
            ("thresholds.surge_fraction", t.surge_fraction),
            ("thresholds.surge_multiplier", t.surge_multiplier),
            ("thresholds.consensus_fraction", t.consensus_fraction),
            ("learning.upper_z", self.learning.upper_z),
            ("learning.min_log_sd", self.learning.min_log_sd),
        ] {
            positive(field, f64::from(v));
        }
        for (field, v) in [
            ("learning.device_windows", self.learning.device_windows),
            ("learning.daily_windows", self.learning.daily_windows),
            ("learning.hst_window", self.learning.hst_window),
        ] {
            positive(field, f64::from(v));
        }
        for (field, v) in [
            ("limits.max_devices", self.limits.max_devices),
            ("limits.max_addresses", self.limits.max_addresses),
            ("limits.max_groups", self.limits.max_groups),
            ("limits.max_incidents", self.limits.max_incidents),
        ] {
            positive(field, v as f64);
        }
        let f = self.responses.throttle_factor;
        if !(f > 0.0 && f <= 1.0) {
            errors.push(ConfigError::OutOfRange {
                field: "responses.throttle_factor",
                value: f64::from(f),
                range: "(0, 1]",
            });
        }
        if !self.responses.collateral_fallback.is_device_scoped() {
            errors.push(ConfigError::OutOfRange {
                field: "responses.collateral_fallback",
                value: 6.0,
                range: "device-scoped rungs (alert … revoke_certificate)",
            });
        }
        if self.namespace_level().is_err() {
            errors.push(ConfigError::Namespace(self.topics.device_namespace.clone()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The literal levels before `{device}`, or `None` when lateral detection is off.
    pub(crate) fn namespace_level(&self) -> Result<Option<Vec<String>>, ()> {
        let ns = &self.topics.device_namespace;
        if ns.is_empty() {
            return Ok(None);
        }
        let levels: Vec<&str> = ns.split('/').collect();
        let at: Vec<usize> = levels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == "{device}")
            .map(|(i, _)| i)
            .collect();
        match at.as_slice() {
            [i] if levels[..*i].iter().all(|l| !l.contains(['+', '#', '{'])) => {
                Ok(Some(levels[..*i].iter().map(|l| (*l).to_owned()).collect()))
            }
            _ => Err(()),
        }
    }

    pub(crate) fn rung_for(
        table: &[[Rung; 4]; Detector::ALL.len()],
        d: Detector,
        s: Severity,
    ) -> Rung {
        table[d.index()][s.index()]
    }
}

fn default_filter(s: &str) -> TopicFilter {
    // The defaults above are valid filters; a failure here is a bug caught by the tests.
    TopicFilter::parse(s).unwrap_or_else(|_| panic!("default filter {s:?} is valid"))
}

fn filters<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<TopicFilter>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            TopicFilter::parse(s)
                .map_err(|e| serde::de::Error::custom(format!("topic filter {s:?}: {e}")))
        })
        .collect()
}
