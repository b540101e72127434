//! What the engine tells the hub: alerts that carry their explanation and the response to
//! execute, and releases that end a response.

use std::net::IpAddr;

use moat_types::DeviceId;
use serde::{Deserialize, Serialize};

/// Every detector, with its stable snake_case name (the `detector` field of an alert and the
/// key of `[responses.<name>]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Repeated refused CONNECTs (bad credentials, unknown identity) from one address or
    /// against one identity.
    CredentialBruteForce,
    /// Repeated TLS handshakes with bad, unknown or missing client certificates.
    CertificateBruteForce,
    /// One identity used from two places: concurrently active sessions from two addresses,
    /// session take-over ping-pong, or diverging behaviour from a new address.
    ClonedIdentity,
    /// Authorization denials over many distinct topics, broad wildcard subscriptions, bursts
    /// of first-seen topics.
    TopicReconnaissance,
    /// Published messages per second far above the device's learned peak.
    PublishFlood,
    /// Handshakes or CONNECTs that never complete, from one address.
    SlowLoris,
    /// A stream of protocol errors.
    MalformedStream,
    /// Published bytes per second far above the device's learned peak.
    ExfiltrationBurst,
    /// Published bytes over the last hour persistently above the device's daily norm.
    ExfiltrationLowAndSlow,
    /// Publishing into actuator topics the device never published to, or being denied there.
    CommandInjection,
    /// Touching other devices' namespaces.
    LateralMovement,
    /// Connecting over and over, especially with rotating client ids.
    ReconnectStorm,
    /// A honey topic was touched.
    HoneyTopic,
    /// A canary identity was used.
    CanaryIdentity,
    /// The per-group streaming model and the device's baselines agree that its windows are
    /// unlike anything seen, for a sustained period.
    BehaviourAnomaly,
}

impl Detector {
    /// Every detector.
    pub const ALL: [Detector; 15] = [
        Self::CredentialBruteForce,
        Self::CertificateBruteForce,
        Self::ClonedIdentity,
        Self::TopicReconnaissance,
        Self::PublishFlood,
        Self::SlowLoris,
        Self::MalformedStream,
        Self::ExfiltrationBurst,
        Self::ExfiltrationLowAndSlow,
        Self::CommandInjection,
        Self::LateralMovement,
        Self::ReconnectStorm,
        Self::HoneyTopic,
        Self::CanaryIdentity,
        Self::BehaviourAnomaly,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialBruteForce => "credential_brute_force",
            Self::CertificateBruteForce => "certificate_brute_force",
            Self::ClonedIdentity => "cloned_identity",
            Self::TopicReconnaissance => "topic_reconnaissance",
            Self::PublishFlood => "publish_flood",
            Self::SlowLoris => "slow_loris",
            Self::MalformedStream => "malformed_stream",
            Self::ExfiltrationBurst => "exfiltration_burst",
            Self::ExfiltrationLowAndSlow => "exfiltration_low_and_slow",
            Self::CommandInjection => "command_injection",
            Self::LateralMovement => "lateral_movement",
            Self::ReconnectStorm => "reconnect_storm",
            Self::HoneyTopic => "honey_topic",
            Self::CanaryIdentity => "canary_identity",
            Self::BehaviourAnomaly => "behaviour_anomaly",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Probably an attack or a broken device.
    Medium,
    /// An attack.
    High,
    /// An attack in progress with a compromised identity or at scale.
    Critical,
}

impl Severity {
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A rung of the response ladder, as written in the configuration. Ordered from mildest to
/// harshest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// Tell the operator only.
    Alert,
    /// Rate-limit the device (or, for an address-scoped alert, new connections from the
    /// address) to [`crate::ResponseConfig::throttle_factor`] of its baseline.
    Throttle,
    /// Refuse the device's publishes; it may still receive.
    ReadOnly,
    /// Let the device talk only to its quarantine topics.
    Quarantine,
    /// Close the device's connections.
    Disconnect,
    /// Revoke the device's certificate (needs re-enrollment).
    RevokeCertificate,
    /// Refuse connections from the address.
    BanAddress,
}

impl Rung {
    /// Whether the rung acts on the device alone (not on the address).
    pub fn is_device_scoped(self) -> bool {
        !matches!(self, Self::BanAddress)
    }
}

/// The response the hub executes. `Alert` means "nothing to execute".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Response {
    /// Nothing to execute.
    Alert,
    /// Limit the rate to `factor` times the learned baseline (or the configured floor).
    Throttle {
        /// Fraction of the baseline rate allowed, in (0, 1].
        factor: f32,
    },
    /// Refuse the device's publishes.
    ReadOnly,
    /// Restrict the device to its quarantine topics.
    Quarantine,
    /// Close the device's connections.
    Disconnect,
    /// Revoke the device's certificate.
    RevokeCertificate,
    /// Refuse connections from the alert's address.
    BanAddress,
}

impl Response {
    /// The rung of this response.
    pub fn rung(&self) -> Rung {
        match self {
            Self::Alert => Rung::Alert,
            Self::Throttle { .. } => Rung::Throttle,
            Self::ReadOnly => Rung::ReadOnly,
            Self::Quarantine => Rung::Quarantine,
            Self::Disconnect => Rung::Disconnect,
            Self::RevokeCertificate => Rung::RevokeCertificate,
            Self::BanAddress => Rung::BanAddress,
        }
    }
}

/// A learned baseline, as shown in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LearnedBaseline {
    /// Typical value (the geometric centre of the learned distribution, in the feature's
    /// unit).
    pub typical: f64,
    /// Spread: the value one robust standard deviation above `typical`, minus `typical`.
    pub spread: f64,
    /// Windows the device itself contributed.
    pub device_windows: u32,
    /// Weight of the group prior in this baseline, in [0, 1] (1: no device history yet).
    pub group_weight: f64,
}

/// Why an alert was raised. Every alert has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The feature that crossed its threshold (stable snake_case name).
    pub feature: &'static str,
    /// The value observed.
    pub observed: f64,
    /// The threshold it crossed (a configured rule or derived from the baseline).
    pub threshold: f64,
    /// The learned baseline, when the threshold derives from one.
    pub baseline: Option<LearnedBaseline>,
    /// Human-readable facts behind the decision.
    pub evidence: Vec<String>,
}

/// An alert: what, who, why, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Unique within one engine, increasing.
    pub id: u64,
    /// When it was raised, in milliseconds (the time of the triggering event or tick).
    #[serde(rename = "time")]
    pub time_ms: u64,
    /// Which detector.
    pub detector: Detector,
    /// How bad.
    pub severity: Severity,
    /// The device, if the alert is about one.
    #[serde(serialize_with = "serialize_device")]
    pub device: Option<DeviceId>,
    /// The address involved.
    pub address: Option<IpAddr>,
    /// The device's group.
    pub group: Option<String>,
    /// Why.
    pub explanation: Explanation,
    /// What the hub must execute (`Alert` in dry-run mode).
    pub response: Response,
    /// What the configuration asked for; differs from `response` in dry-run mode or when the
    /// collateral guard downgraded a ban.
    pub intended: Response,
    /// When the engine will consider releasing the response (time box end), in milliseconds;
    /// the release itself also waits for behaviour to return to baseline.
    pub until_ms: u64,
    /// The alert this one escalates (same detector and entity, higher severity).
    pub escalates: Option<u64>,
}

fn serialize_device<S: serde::Serializer>(d: &Option<DeviceId>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(d.as_str()),
        None => s.serialize_none(),
    }
}

/// The end of a response: the hub undoes what it executed for `alert_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Release {
    /// The alert (the latest escalation) whose response ends.
    pub alert_id: u64,
    /// When, in milliseconds.
    #[serde(rename = "time")]
    pub time_ms: u64,
    /// The detector of that alert.
    pub detector: Detector,
    /// The device, if any.
    #[serde(serialize_with = "serialize_device")]
    pub device: Option<DeviceId>,
    /// The address, if any.
    pub address: Option<IpAddr>,
    /// Why now.
    pub why: String,
}

/// Everything the engine emits. Serialized as one JSON object with `"kind": "alert"` or
/// `"kind": "release"` next to the fields of the variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// A new alert (or an escalation).
    Alert(Alert),
    /// A response ends.
    Release(Release),
}

impl Output {
    /// The alert, if this is one.
    pub fn as_alert(&self) -> Option<&Alert> {
        match self {
            Self::Alert(a) => Some(a),
            Self::Release(_) => None,
        }
    }

    /// The release, if this is one.
    pub fn as_release(&self) -> Option<&Release> {
        match self {
            Self::Release(r) => Some(r),
            Self::Alert(_) => None,
        }
    }
}
