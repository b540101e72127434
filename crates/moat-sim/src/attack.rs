//! Attack scenarios (issue 4, point 4) at three intensities, each run by one attacker with
//! a ground-truth label: who (a device identity, an address), from when to when.
//!
//! Attacks from outside use their own addresses (`127.0.0.10` and up, as the live mode
//! will on loopback). Attacks by a compromised device ride the victim's own connection
//! (malware on the device), so the hub sees them from the victim's identity and address.

use std::net::{IpAddr, Ipv4Addr};

use moat_detect::{DisconnectCause, TlsFailure};
use moat_types::DeviceId;
use serde::Serialize;

use crate::fleet::{Device, HOUR_MS};
use crate::hub::{Hub, Stall};
use crate::rng::Rng;

/// An attack scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// CONNECTs without a certificate from one address (password or token guessing).
    CredentialBruteForce,
    /// TLS handshakes with untrusted or forged client certificates from one address.
    CertificateBruteForce,
    /// A stolen identity used from another address while the real device is online: the
    /// same client id, so the two take the session from each other.
    CloneConcurrent,
    /// A stolen identity used from another address while the real device is offline,
    /// behaving differently (rate, sizes, topics).
    CloneDiverging,
    /// A compromised device probing topics outside its namespace.
    TopicReconnaissance,
    /// A compromised device flooding publishes.
    PublishFlood,
    /// Connections that stall in the TLS handshake or the WebSocket upgrade.
    SlowLoris,
    /// A compromised device sending malformed packets (the hub closes each connection).
    MalformedStream,
    /// A compromised device uploading a lot at once.
    ExfiltrationLoud,
    /// A compromised device adding a little extra upload for hours.
    ExfiltrationLowAndSlow,
    /// A compromised sensor publishing to actuators' command topics.
    CommandInjection,
    /// A compromised device subscribing and publishing in other devices' namespaces.
    LateralMovement,
    /// A compromised identity reconnecting over and over, rotating client ids.
    ReconnectStorm,
    /// A compromised device touching honey topics.
    HoneyTopic,
    /// An attacker using a canary identity (a decoy certificate).
    CanaryIdentity,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 15] = [
        Self::CredentialBruteForce,
        Self::CertificateBruteForce,
        Self::CloneConcurrent,
        Self::CloneDiverging,
        Self::TopicReconnaissance,
        Self::PublishFlood,
        Self::SlowLoris,
        Self::MalformedStream,
        Self::ExfiltrationLoud,
        Self::ExfiltrationLowAndSlow,
        Self::CommandInjection,
        Self::LateralMovement,
        Self::ReconnectStorm,
        Self::HoneyTopic,
        Self::CanaryIdentity,
    ];

    /// Stable name (the `--scenario` value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialBruteForce => "credential_brute_force",
            Self::CertificateBruteForce => "certificate_brute_force",
            Self::CloneConcurrent => "clone_concurrent",
            Self::CloneDiverging => "clone_diverging",
            Self::TopicReconnaissance => "topic_reconnaissance",
            Self::PublishFlood => "publish_flood",
            Self::SlowLoris => "slow_loris",
            Self::MalformedStream => "malformed_stream",
            Self::ExfiltrationLoud => "exfiltration_loud",
            Self::ExfiltrationLowAndSlow => "exfiltration_low_and_slow",
            Self::CommandInjection => "command_injection",
            Self::LateralMovement => "lateral_movement",
            Self::ReconnectStorm => "reconnect_storm",
            Self::HoneyTopic => "honey_topic",
            Self::CanaryIdentity => "canary_identity",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The scenarios that are loud at some intensity, and the clones (the set the issue's
    /// "loud attacks and clones" names). See [`Scenario::is_loud_at`] for the intensities
    /// the 1 s target applies to.
    pub fn is_loud(self) -> bool {
        matches!(
            self,
            Self::CredentialBruteForce
                | Self::CertificateBruteForce
                | Self::CloneConcurrent
                | Self::CloneDiverging
                | Self::PublishFlood
                | Self::SlowLoris
                | Self::MalformedStream
                | Self::ExfiltrationLoud
                | Self::ReconnectStorm
        )
    }

    /// Whether the "loud attacks and clones detected within 1 s" target applies to
    /// this scenario at `intensity`. An attack is loud at an intensity where it produces at
    /// least about one attack event per second: the high intensity of the loud scenarios
    /// (600 refused CONNECTs or bad certificates/min, 2,000 msgs/s, 100 stalled
    /// connections, 60 malformed packets/min, 8 MiB/s, 120 connects/min). At medium they send
    /// one event every 2–10 s, so a detection within 1 s of the first packet would need an
    /// alert on a single event. Clones are named by the issue on their own, so they count at
    /// medium and high.
    pub fn is_loud_at(self, intensity: Intensity) -> bool {
        match self {
            Self::CloneConcurrent | Self::CloneDiverging => intensity != Intensity::Low,
            s => s.is_loud() && intensity == Intensity::High,
        }
    }

    /// Whether a benign device is compromised (or its identity stolen).
    pub fn needs_victim(self) -> bool {
        !matches!(
            self,
            Self::CredentialBruteForce
                | Self::CertificateBruteForce
                | Self::SlowLoris
                | Self::CanaryIdentity
        )
    }

    /// Whether the attacker has an address of its own.
    pub fn own_address(self) -> bool {
        matches!(
            self,
            Self::CredentialBruteForce
                | Self::CertificateBruteForce
                | Self::SlowLoris
                | Self::CanaryIdentity
                | Self::CloneConcurrent
                | Self::CloneDiverging
        )
    }

    /// How long the attack lasts.
    pub fn duration_ms(self) -> u64 {
        match self {
            Self::ExfiltrationLoud => 120_000,
            Self::PublishFlood => 300_000,
            Self::CloneConcurrent | Self::CloneDiverging => 1_200_000,
            Self::ExfiltrationLowAndSlow => 3 * HOUR_MS,
            _ => 600_000,
        }
    }

    /// What the attacker does at this intensity (also written to `report.md`).
    pub fn describe(self, i: Intensity) -> String {
        let p = self.params(i);
        match self {
            Self::CredentialBruteForce => format!("{p} refused CONNECTs/min"),
            Self::CertificateBruteForce => format!("{p} bad-certificate handshakes/min"),
            Self::CloneConcurrent => match i {
                Intensity::Low => "30 s sessions every 5 min, 1 msg each".to_owned(),
                Intensity::Medium => {
                    "stays on, retakes the session 20–40 s after losing it, device's rate"
                        .to_owned()
                }
                Intensity::High => "retakes the session within 1–2 s, 5 msgs/s".to_owned(),
            },
            Self::CloneDiverging => format!(
                "device dark since 1 min; clone from another address at ×{p} rate and ×{p} payload{}",
                if p > 1 { ", new topics" } else { "" }
            ),
            Self::TopicReconnaissance => format!("{p} distinct denied topics/min"),
            Self::PublishFlood => format!("{p} msgs/s"),
            Self::SlowLoris => format!(
                "{p} stalled connections at a time (10 s deadline), half TLS, half WebSocket"
            ),
            Self::MalformedStream => format!("{p} malformed packets/min"),
            Self::ExfiltrationLoud => format!("{} KiB/s", p / 1024),
            Self::ExfiltrationLowAndSlow => format!("+{} KiB/h in 4 KiB messages", p / 1024),
            Self::CommandInjection => format!("{p} denied actuator commands/10 min"),
            Self::LateralMovement => format!("{p} foreign namespaces/10 min"),
            Self::ReconnectStorm => format!("{p} connects/min, half with rotated client ids"),
            Self::HoneyTopic => format!("{p} honey-topic touches"),
            Self::CanaryIdentity => format!("{p} connections with the canary identity"),
        }
    }

    /// The intensity parameter (unit per scenario, see [`Scenario::describe`]).
    fn params(self, i: Intensity) -> u64 {
        let [low, medium, high] = match self {
            Self::CredentialBruteForce | Self::CertificateBruteForce => [4, 30, 600],
            Self::CloneConcurrent => [1, 2, 3],
            Self::CloneDiverging => [1, 5, 20],
            Self::TopicReconnaissance => [1, 10, 100],
            Self::PublishFlood => [10, 100, 2_000],
            Self::SlowLoris => [1, 10, 100],
            Self::MalformedStream => [1, 6, 60],
            Self::ExfiltrationLoud => [32 << 10, 512 << 10, 8 << 20],
            Self::ExfiltrationLowAndSlow => [128 << 10, 2 << 20, 16 << 20],
            Self::CommandInjection => [1, 10, 3_000],
            Self::LateralMovement => [1, 30, 300],
            Self::ReconnectStorm => [3, 15, 120],
            Self::HoneyTopic => [1, 3, 20],
            Self::CanaryIdentity => [1, 3, 20],
        };
        match i {
            Intensity::Low => low,
            Intensity::Medium => medium,
            Intensity::High => high,
        }
    }
}

/// How hard the attacker pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    /// Slow and careful.
    Low,
    /// A tool's moderate settings.
    Medium,
    /// Full speed.
    High,
}

impl Intensity {
    /// Every intensity.
    pub const ALL: [Intensity; 3] = [Self::Low, Self::Medium, Self::High];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The canary identity the simulation configures (`deception.canary_devices`).
pub const CANARY: &str = "canary-0001";

/// One running attack.
#[derive(Debug)]
pub struct Attacker {
    /// Scenario.
    pub scenario: Scenario,
    /// Intensity.
    pub intensity: Intensity,
    /// Start, in ms.
    pub start_ms: u64,
    /// End, in ms.
    pub end_ms: u64,
    /// The victim's index in the fleet, if a device is compromised or cloned.
    pub victim: Option<usize>,
    /// The attacker's own address, if it has one.
    pub address: Option<IpAddr>,
    /// When the heap should wake it.
    pub wake_at: u64,
    rng: Rng,
    conn: Option<u64>,
    session_start: u64,
    n: u64,
    /// Topics of other devices (actuators for command injection, any for lateral movement).
    targets: Vec<DeviceId>,
}

impl Attacker {
    /// An attack; `address_index` picks `127.0.0.{10 + index}` for attackers with an address.
    pub fn new(
        scenario: Scenario,
        intensity: Intensity,
        start_ms: u64,
        victim: Option<usize>,
        address_index: u8,
        targets: Vec<DeviceId>,
        rng: Rng,
    ) -> Self {
        let address = scenario
            .own_address()
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10u8.saturating_add(address_index))));
        // A diverging clone needs the real device out of the way first: it goes dark a
        // minute before the clone's first CONNECT (the incident's start).
        let wake_at = if scenario == Scenario::CloneDiverging {
            start_ms - 60_000
        } else {
            start_ms
        };
        Self {
            scenario,
            intensity,
            start_ms,
            end_ms: start_ms + scenario.duration_ms(),
            victim,
            address,
            wake_at,
            rng,
            conn: None,
            session_start: 0,
            n: 0,
            targets,
        }
    }

    fn every(&mut self, per_ms: f64) -> u64 {
        (per_ms * self.rng.range(0.8, 1.2)).max(1.0) as u64
    }

    /// Does what is due at `now`; returns when to wake next, or `None` when finished.
    pub fn wake(&mut self, now: u64, hub: &mut impl Hub, fleet: &mut [Device]) -> Option<u64> {
        if now >= self.end_ms {
            if let Some(c) = self.conn.take() {
                hub.disconnect(now, c, DisconnectCause::Client);
            }
            return None;
        }
        let p = self.scenario.params(self.intensity) as f64;
        let addr = self.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        self.n += 1;
        let n = self.n;
        // The victim's live connection (compromised-device scenarios ride it).
        let victim_conn = self
            .victim
            .and_then(|v| fleet[v].conn)
            .filter(|c| hub.is_live(*c));
        let victim_id = self.victim.map(|v| fleet[v].id.clone());
        let next = match self.scenario {
            Scenario::CredentialBruteForce => {
                hub.connect_unauthenticated(now, addr, &format!("admin{}", self.rng.int(0, 9_999)));
                now + self.every(60_000.0 / p)
            }
            Scenario::CertificateBruteForce => {
                let reason = if n.is_multiple_of(3) {
                    TlsFailure::BadCertificate
                } else {
                    TlsFailure::UnknownIssuer
                };
                hub.fail_handshake(now, addr, reason);
                now + self.every(60_000.0 / p)
            }
            Scenario::SlowLoris => {
                let stage = if n.is_multiple_of(2) {
                    Stall::Tls
                } else {
                    Stall::WebSocketUpgrade
                };
                hub.stall(now, addr, stage);
                now + self.every(10_000.0 / p)
            }
            Scenario::CanaryIdentity => {
                let canary = DeviceId::parse(CANARY).ok()?;
                if let Some(c) = hub.connect(now, addr, &canary, CANARY) {
                    if self.intensity == Intensity::High {
                        hub.subscribe(now, c, "#");
                    }
                    hub.disconnect(now, c, DisconnectCause::Client);
                }
                now + self.scenario.duration_ms() / (p as u64 + 1)
            }
            Scenario::CloneConcurrent => self.clone_concurrent(now, hub, fleet, &victim_id?),
            Scenario::CloneDiverging => self.clone_diverging(now, hub, fleet, &victim_id?),
            Scenario::ReconnectStorm => {
                let v = &fleet[self.victim?];
                let (id, home) = (v.id.clone(), v.home);
                if n.is_multiple_of(2) {
                    let rotated = format!("{id}-{}", self.rng.int(0, 99_999));
                    hub.connect(now, home, &id, &rotated);
                } else if let Some(c) = hub.connect(now, home, &id, id.as_str()) {
                    hub.disconnect(now, c, DisconnectCause::Client);
                }
                now + self.every(60_000.0 / p)
            }
            _ => {
                let Some(conn) = victim_conn else {
                    // The device is reconnecting: the malware waits for it.
                    return Some(now + 1_000);
                };
                let id = victim_id?;
                self.compromised(now, conn, &id, p, hub)
            }
        };
        Some(next.min(self.end_ms).max(now + 1))
    }

    /// Scenarios run by malware on the victim, on its connection.
    fn compromised(
        &mut self,
        now: u64,
        conn: u64,
        id: &DeviceId,
        p: f64,
        hub: &mut impl Hub,
    ) -> u64 {
        let n = self.n;
        match self.scenario {
            Scenario::TopicReconnaissance => {
                const PROBES: [&str; 6] =
                    ["admin", "config", "fw", "users", "$SYS/broker", "backend"];
                let t = format!("{}/{}", PROBES[(n % 6) as usize], n);
                if n.is_multiple_of(2) {
                    hub.subscribe(now, conn, &format!("{t}/#"));
                } else {
                    hub.publish(now, conn, &t, 16, 1);
                }
                now + self.every(60_000.0 / p)
            }
            Scenario::PublishFlood => {
                hub.publish(now, conn, &format!("devices/{id}/telemetry"), 64, p as u32);
                now + 1_000
            }
            Scenario::MalformedStream => {
                hub.send_malformed(now, conn);
                now + self.every(60_000.0 / p)
            }
            Scenario::ExfiltrationLoud => {
                let size = (p as u32).min(64 << 10);
                let count = (p as u32 / size).max(1);
                hub.publish(now, conn, &format!("devices/{id}/telemetry"), size, count);
                now + 1_000
            }
            Scenario::ExfiltrationLowAndSlow => {
                hub.publish(now, conn, &format!("devices/{id}/telemetry"), 4_096, 1);
                now + self.every(HOUR_MS as f64 * 4_096.0 / p)
            }
            Scenario::CommandInjection => {
                if !self.targets.is_empty() {
                    let k = (n as usize) % self.targets.len().min(1 + (p as usize) / 3);
                    let t = format!("devices/{}/cmd/set", self.targets[k]);
                    hub.publish(now, conn, &t, 40, 1);
                }
                now + self.every(600_000.0 / p)
            }
            Scenario::LateralMovement => {
                if !self.targets.is_empty() {
                    let t = &self.targets[(n as usize) % self.targets.len()];
                    if n.is_multiple_of(2) {
                        hub.subscribe(now, conn, &format!("devices/{t}/#"));
                    } else {
                        hub.publish(now, conn, &format!("devices/{t}/telemetry"), 100, 1);
                    }
                }
                now + self.every(600_000.0 / p)
            }
            Scenario::HoneyTopic => {
                if n.is_multiple_of(2) {
                    hub.subscribe(now, conn, &format!("_moat/honey/admin/{n}"));
                } else {
                    hub.publish(now, conn, &format!("_moat/honey/keys/{n}"), 32, 1);
                }
                now + self.scenario.duration_ms() / (p as u64 + 1)
            }
            _ => now + 1_000,
        }
    }

    fn clone_concurrent(
        &mut self,
        now: u64,
        hub: &mut impl Hub,
        fleet: &mut [Device],
        id: &DeviceId,
    ) -> u64 {
        let addr = self.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let Some(conn) = self.conn.filter(|c| hub.is_live(*c)) else {
            if self.conn.take().is_some() {
                // Lost the session (the real device took it back, or a low-intensity clone
                // ended its visit): come back later.
                return now
                    + match self.intensity {
                        Intensity::Low => 300_000,
                        Intensity::Medium => self.rng.int(20_000, 40_000),
                        Intensity::High => self.rng.int(1_000, 2_000),
                    };
            }
            self.conn = hub.connect(now, addr, id, id.as_str());
            self.session_start = now;
            if let Some(v) = self.victim {
                // The real device's client library notices the take-over at once.
                fleet[v].wake_at = fleet[v].wake_at.min(now + 1);
            }
            return now + 500;
        };
        if self.intensity == Intensity::Low && now >= self.session_start + 30_000 {
            hub.disconnect(now, conn, DisconnectCause::Client);
            return now + 1;
        }
        hub.publish(now, conn, &format!("devices/{id}/telemetry"), 100, 1);
        match self.intensity {
            Intensity::Low => now + 10_000,
            Intensity::Medium => now + 15_000,
            Intensity::High => now + 200,
        }
    }

    fn clone_diverging(
        &mut self,
        now: u64,
        hub: &mut impl Hub,
        fleet: &mut [Device],
        id: &DeviceId,
    ) -> u64 {
        let addr = self.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let p = self.scenario.params(self.intensity) as f64;
        if self.n == 1 {
            // The real device goes dark (stolen, or its link cut) for the whole attack.
            if let Some(v) = self.victim {
                let d = &mut fleet[v];
                if let Some(c) = d.conn.take() {
                    hub.disconnect(now, c, DisconnectCause::ConnectionLost);
                }
                d.suspended_until = self.end_ms;
                d.knock_offline(now, self.end_ms - now);
            }
            return self.start_ms;
        }
        let Some(conn) = self.conn.filter(|c| hub.is_live(*c)) else {
            self.conn = hub.connect(now, addr, id, id.as_str());
            return now + 1_000;
        };
        let base = 120.0 * p;
        let topic = if p > 1.0 {
            format!("devices/{id}/x/{}", self.n % 8)
        } else {
            format!("devices/{id}/telemetry")
        };
        hub.publish(
            now,
            conn,
            &topic,
            (base * self.rng.range(0.8, 1.2)) as u32,
            1,
        );
        now + self.every(15_000.0 / p)
    }
}
