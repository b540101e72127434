//! The per-entity state: devices, groups and addresses, and the features and limits that
//! size them.

use std::net::IpAddr;

use crate::config::Thresholds;
use crate::event::SIZE_BUCKETS;
use crate::hst::Masses;
use crate::stats::{Baseline, EwMedian, FpRing, MINUTE_DECAY, decay};

/// The base window: features are accumulated per device over this many milliseconds, then
/// learned; per-minute counters decay once per window.
pub const WINDOW_MS: u64 = 10_000;
/// Live connections tracked per device (clone detection); more are counted, not tracked.
pub const LIVE_CONNECTIONS_PER_DEVICE: usize = 3;
/// Recent addresses remembered per device.
pub const ADDRESSES_PER_DEVICE: usize = 4;
/// Recent client ids remembered per device.
pub const CLIENT_IDS_PER_DEVICE: usize = 4;
/// Topic edges (device → topic fingerprints) remembered per device; a device using more
/// topics stops being checked for novel topics.
pub const EDGES_PER_DEVICE: usize = 16;
/// Actuator edges remembered per device.
pub const ACTUATOR_EDGES_PER_DEVICE: usize = 4;
/// Device fingerprints remembered per address (collateral guard).
pub const DEVICES_PER_ADDRESS: usize = 4;

/// A baselined feature of a device's 10 s window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Messages published per window.
    MsgsPublished,
    /// Payload bytes published per window.
    BytesPublished,
    /// Messages delivered to the device per window.
    MsgsDelivered,
    /// Payload bytes delivered per window.
    BytesDelivered,
    /// Highest per-second publish rate within the window (messages/s).
    PeakMsgsPublished,
    /// Highest per-second publish volume within the window (bytes/s).
    PeakBytesPublished,
    /// Mean published payload size (bytes).
    MeanPayload,
    /// Largest published payload (bytes).
    MaxPayload,
}

pub(crate) const NF: usize = 8;

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; NF] = [
        Self::MsgsPublished,
        Self::BytesPublished,
        Self::MsgsDelivered,
        Self::BytesDelivered,
        Self::PeakMsgsPublished,
        Self::PeakBytesPublished,
        Self::MeanPayload,
        Self::MaxPayload,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MsgsPublished => "msgs_published_per_window",
            Self::BytesPublished => "bytes_published_per_window",
            Self::MsgsDelivered => "msgs_delivered_per_window",
            Self::BytesDelivered => "bytes_delivered_per_window",
            Self::PeakMsgsPublished => "peak_msgs_published_per_s",
            Self::PeakBytesPublished => "peak_bytes_published_per_s",
            Self::MeanPayload => "mean_payload_bytes",
            Self::MaxPayload => "max_payload_bytes",
        }
    }
}

/// Decay of the per-signature anomaly counters of a group over one window: `exp(-10/600)`.
pub(crate) const TEN_MINUTE_DECAY: f32 = 0.983_471_5;
/// Steady-state sum of a ten-minute accumulator fed 1 per window: `1 / (1 - TEN_MINUTE_DECAY)`.
pub(crate) const TEN_MINUTE_WINDOWS: f32 = 60.5;
/// Step of the group drift medians, in log units per device window.
pub(crate) const DRIFT_STEP: f32 = 0.01;
/// Devices need this many learned windows before they feed group drift and the group model.
pub(crate) const ESTABLISHED_WINDOWS: u32 = 6;
/// Devices need this many learned windows before behaviour anomalies are judged.
pub(crate) const ANOMALY_MIN_WINDOWS: u32 = 30;
/// After a connect, a returning device may flush its backlog, and during a fleet surge
/// flood thresholds are relaxed, for this long.
pub(crate) const FLUSH_ALLOWANCE_MS: u64 = 30_000;
/// The longest absence whose backlog a returning device may flush above its thresholds.
pub const MAX_BACKLOG_MS: u64 = 3_600_000;
/// A new address within this period turns a behaviour anomaly into a suspected clone.
pub(crate) const NEW_ADDRESS_CLONE_MS: u64 = 600_000;
/// Least fleet-wide connects per minute that can count as a surge.
pub(crate) const SURGE_MIN_CONNECTS: f32 = 20.0;
/// A session taken back by the address it was taken from within this period is a
/// take-over ping-pong: two endpoints hold one identity (a displaced client library
/// reconnects within seconds; a phone moving back and forth between two networks rarely
/// does so within a minute with its old sessions still open).
pub const TAKEOVER_PING_PONG_MS: u64 = 60_000;
/// A CONNECT of an identity refused for a client id the identity never used, within this
/// long of another CONNECT of that identity (accepted or refused), is a reconnect storm
/// rotating client ids: a device's client id is bound to its certificate, and a client
/// library that lost its session retries with its own id after a backoff of a second or
/// more.
pub const ROTATION_BURST_MS: u64 = 2_000;
/// Summaries in a row (seconds) a device must be held back by a rate limit, for at least half
/// of each, before its throttle is held: a flood under a throttle is held back without a
/// break, a benign burst for a second or two.
pub const HELD_STREAK: u8 = 3;
/// Held back, a throttle is kept for at most this many more of its time boxes: the engine
/// cannot see what a held-back device offers, and a device whose normal rate is above its
/// throttle's (10 % of its typical peak) would otherwise never be released. Released, a
/// flood that resumes is detected again within a second.
pub const HELD_MAX_TIME_BOXES: u64 = 3;
/// How long a device's protocol errors are remembered: a device that sent one within this
/// period (30 days) is known to send them (a firmware bug) and is judged by the per-minute
/// `malformed_stream` rule alone; the first error after a clean record alerts at once.
pub const PROTOCOL_ERROR_MEMORY_MS: u64 = 30 * 86_400_000;
/// Longest rhythm (usual gap between busy seconds) a taken-over session is judged by.
pub(crate) const MAX_RHYTHM_MS: u64 = 600_000;
/// Envelope features: peak messages/s, peak bytes/s, bytes of the last hour.
pub(crate) const ENV_FEATURES: usize = 3;
/// A window in a device's known burst mode may raise its rate envelopes towards what it
/// shows, by at most this factor per day (and once per day at most ×this), so that the
/// envelope follows a bursty device's variability while an attacker staying within it
/// cannot ratchet it up faster.
pub(crate) const ENVELOPE_GROWTH_PER_DAY: f32 = 2.0;
/// Decay of a learned envelope over one window: `exp(-10 s / 30 days)`.
pub(crate) const ENVELOPE_DECAY: f32 = 0.999_996_1;
/// Devices whose envelopes a group remembers, per feature (its prior is the
/// `consensus_min_devices`-th largest of them, once enough members have one).
pub const GROUP_ENVELOPES: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WindowAcc {
    pub(crate) msgs_pub: u32,
    pub(crate) msgs_del: u32,
    pub(crate) bytes_pub: u64,
    pub(crate) bytes_del: u64,
    pub(crate) peak_msgs: f32,
    pub(crate) peak_bytes: f32,
    pub(crate) max_payload: u32,
    pub(crate) summaries: u16,
    pub(crate) connects: u16,
    pub(crate) novel_edges: u16,
    pub(crate) sizes: [u32; SIZE_BUCKETS],
    pub(crate) alerted: bool,
    pub(crate) denied: bool,
    pub(crate) actuator: bool,
    pub(crate) malformed: bool,
    pub(crate) novel_burst: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) refused: f32,
    pub(crate) protocol_errors: f32,
    pub(crate) denied_topics: f32,
    pub(crate) novel_topics: f32,
    pub(crate) connects: f32,
    pub(crate) client_ids: f32,
    pub(crate) foreign: f32,
    pub(crate) takeovers: f32,
}

impl Counters {
    pub(crate) fn decay(&mut self, f: f32) {
        for c in [
            &mut self.refused,
            &mut self.protocol_errors,
            &mut self.denied_topics,
            &mut self.novel_topics,
            &mut self.connects,
            &mut self.client_ids,
            &mut self.foreign,
            &mut self.takeovers,
        ] {
            *c *= f;
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    pub(crate) connection: u64,
    pub(crate) since_ms: u64,
    pub(crate) last_active_ms: u64,
    pub(crate) address: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupRef {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl GroupRef {
    pub(crate) const NONE: Self = Self {
        slot: u32::MAX,
        generation: 0,
    };
}

#[derive(Debug, Clone)]
pub(crate) struct DeviceState {
    pub(crate) group: GroupRef,
    pub(crate) first_seen_ms: u64,
    pub(crate) last_connect_ms: u64,
    pub(crate) last_disconnect_ms: u64,
    pub(crate) last_new_address_ms: u64,
    /// Last CONNECT of this identity, accepted or refused.
    pub(crate) last_attempt_ms: u64,
    /// Last CONNECT of this identity refused for a client id it never used.
    pub(crate) last_rotated_ms: u64,
    pub(crate) window: u64,
    pub(crate) acc: WindowAcc,
    pub(crate) base: [Baseline; NF],
    pub(crate) daily_bytes: f32,
    pub(crate) daily_n: u32,
    pub(crate) hour_bytes: f32,
    /// Decayed sum of published bytes with τ = 10 min: the recent pace, which says when a
    /// leak has stopped long before the hour's sum has come down.
    pub(crate) recent_bytes: f32,
    /// Learned shares of the payload-size buckets, in 1/65535.
    pub(crate) size_profile: [u16; SIZE_BUCKETS],
    pub(crate) size_windows: u32,
    /// Messages and bytes a returning device may send above its thresholds right after a
    /// reconnect (what it would have sent while away, up to [`MAX_BACKLOG_MS`]).
    pub(crate) backlog_msgs: f32,
    pub(crate) backlog_bytes: f32,
    pub(crate) counters: Counters,
    pub(crate) live: [Option<Live>; LIVE_CONNECTIONS_PER_DEVICE],
    pub(crate) addresses: FpRing<ADDRESSES_PER_DEVICE>,
    pub(crate) clients: FpRing<CLIENT_IDS_PER_DEVICE>,
    pub(crate) edges: FpRing<EDGES_PER_DEVICE>,
    pub(crate) actuator_edges: FpRing<ACTUATOR_EDGES_PER_DEVICE>,
    pub(crate) denied: FpRing<4>,
    pub(crate) foreign: FpRing<4>,
    pub(crate) edges_saturated: bool,
    pub(crate) flood_streak: u8,
    pub(crate) burst_streak: u8,
    /// Summaries in a row that showed the device held back by a rate limit for at least
    /// half their interval.
    pub(crate) held_streak: u8,
    pub(crate) slow_streak: u16,
    pub(crate) anomaly_streak: u16,
    /// Whether the current low-and-slow streak was judged a cohort change (decided once,
    /// when the streak reaches its length).
    pub(crate) slow_cohort: bool,
    /// The same for the current anomaly streak.
    pub(crate) anomaly_cohort: bool,
    /// Learned envelopes of the rates and of the hour's volume ([`ENV_FEATURES`]): what the
    /// device did in alerted episodes that were released without an operator confirming
    /// them (a bursty device's normal, such as a bulk upload). 0: none. Detectors allow
    /// their own ratio (`flood_ratio`, `burst_ratio`, `low_slow_ratio`) times the envelope,
    /// as they allow that ratio times the learned normal bound.
    pub(crate) env: [f32; ENV_FEATURES],
    /// The largest values of the current alerted episode, learned into `env` when its
    /// volume incident is released unconfirmed; dropped when any other detector fires.
    pub(crate) pending: [f32; ENV_FEATURES],
    /// Last take-over between two addresses: when, and fingerprints of the displaced and
    /// the taking address.
    pub(crate) last_takeover_ms: u64,
    pub(crate) takeover_from: u32,
    pub(crate) takeover_to: u32,
    /// When a burst-mode window last raised the rate envelopes.
    pub(crate) env_grown_ms: u64,
    /// Usual gap between two busy seconds of one session (exponentially weighted, ms;
    /// 0 until known): the device's rhythm.
    pub(crate) usual_gap_ms: u32,
    /// When the device last sent a packet the protocol forbids, in seconds of the event
    /// time base (0: never): its record for [`PROTOCOL_ERROR_MEMORY_MS`].
    pub(crate) last_protocol_error_s: u32,
}

impl DeviceState {
    pub(crate) fn new(now: u64, group: GroupRef) -> Self {
        Self {
            group,
            first_seen_ms: now,
            last_connect_ms: 0,
            last_disconnect_ms: 0,
            last_new_address_ms: 0,
            last_attempt_ms: 0,
            last_rotated_ms: 0,
            window: now / WINDOW_MS,
            acc: WindowAcc::default(),
            base: [Baseline::default(); NF],
            daily_bytes: 0.0,
            daily_n: 0,
            hour_bytes: 0.0,
            recent_bytes: 0.0,
            size_profile: [0; SIZE_BUCKETS],
            size_windows: 0,
            backlog_msgs: 0.0,
            backlog_bytes: 0.0,
            counters: Counters::default(),
            live: [None; LIVE_CONNECTIONS_PER_DEVICE],
            addresses: FpRing::default(),
            clients: FpRing::default(),
            edges: FpRing::default(),
            actuator_edges: FpRing::default(),
            denied: FpRing::default(),
            foreign: FpRing::default(),
            edges_saturated: false,
            flood_streak: 0,
            burst_streak: 0,
            held_streak: 0,
            slow_streak: 0,
            anomaly_streak: 0,
            slow_cohort: false,
            anomaly_cohort: false,
            env: [0.0; ENV_FEATURES],
            pending: [0.0; ENV_FEATURES],
            last_takeover_ms: 0,
            takeover_from: 0,
            takeover_to: 0,
            usual_gap_ms: 0,
            env_grown_ms: 0,
            last_protocol_error_s: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct GroupState {
    pub(crate) prior: [Baseline; NF],
    pub(crate) drift: [EwMedian; NF],
    pub(crate) slow_drift: EwMedian,
    pub(crate) hst: Masses,
    pub(crate) members: u32,
    pub(crate) denied_devices: f32,
    pub(crate) actuator_devices: f32,
    pub(crate) malformed_devices: f32,
    /// Members whose clean protocol record ended (their first protocol error in
    /// [`PROTOCOL_ERROR_MEMORY_MS`]), decayed with τ = 10 min: a firmware roll-out that makes
    /// devices send bad packets ends many records at once.
    pub(crate) records_ended: f32,
    pub(crate) novel_devices: f32,
    pub(crate) signatures: [f32; 2 * NF],
    /// Devices whose last hour is at least half-way to the low-and-slow threshold, counted
    /// in the current window and as of the last complete window.
    pub(crate) slow_elevated_now: u32,
    pub(crate) slow_elevated: u32,
    pub(crate) anomalous_now: u32,
    pub(crate) closed_now: u32,
    pub(crate) anomalous_fraction: f32,
    /// Members that publish to actuator topics (learned edges): the group commands
    /// actuators, so a member's first command to another actuator is not an injection.
    pub(crate) commanders: u32,
    /// Largest learned envelopes of distinct members (fingerprint, value) per feature.
    pub(crate) env_top: [[(u32, f32); GROUP_ENVELOPES]; ENV_FEATURES],
    /// Members that learned an envelope (counted once each, at their first episode).
    pub(crate) env_members: u32,
}

impl GroupState {
    /// The group's envelope prior of feature `k`: the `consensus_min_devices`-th largest
    /// envelope among its members, once at least `consensus_fraction` of the members (and
    /// `consensus_min_devices`) learned one, so that a few devices (a few compromised ones,
    /// whose episodes nobody confirmed) cannot make bursts the group's normal. 0 otherwise.
    pub(crate) fn env_prior(&self, k: usize, t: &Thresholds) -> f32 {
        let need = t.consensus_min_devices.max(1);
        if (self.env_members as f32) < (t.consensus_fraction * self.members as f32).max(need as f32)
        {
            return 0.0;
        }
        let need = (need as usize).min(GROUP_ENVELOPES);
        let mut v: [f32; GROUP_ENVELOPES] = [0.0; GROUP_ENVELOPES];
        for (slot, (_, x)) in v.iter_mut().zip(&self.env_top[k]) {
            *slot = *x;
        }
        v.sort_by(|a, b| b.total_cmp(a));
        v[need - 1]
    }

    /// Records member `fp`'s envelope of feature `k`.
    pub(crate) fn note_env(&mut self, k: usize, fp: u32, value: f32) {
        let top = &mut self.env_top[k];
        if let Some(e) = top.iter_mut().find(|e| e.0 == fp) {
            e.1 = value;
            return;
        }
        if let Some(e) = top
            .iter_mut()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|e| e.1 < value)
        {
            *e = (fp, value);
        }
    }

    /// Multiplies the remembered envelopes by `f` (their decay over the elapsed windows).
    pub(crate) fn decay_env(&mut self, f: f32) {
        for top in &mut self.env_top {
            for e in top.iter_mut() {
                e.1 *= f;
            }
        }
    }
}

impl DeviceState {
    /// The envelope of feature `k` in force: the device's own, or its group's prior.
    pub(crate) fn envelope(&self, g: &GroupState, k: usize, t: &Thresholds) -> f32 {
        self.env[k].max(g.env_prior(k, t))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AddressState {
    pub(crate) window: u64,
    pub(crate) attempts: f32,
    pub(crate) tls_failures: f32,
    pub(crate) refused: f32,
    pub(crate) timeouts: f32,
    pub(crate) protocol_errors: f32,
    /// Connections accepted (`ConnectAttempt`) and not yet finished (accepted, refused,
    /// failed, timed out); decayed like the counters, so that a connection whose end the
    /// hub did not report is forgotten.
    pub(crate) pending: f32,
    pub(crate) devices: FpRing<DEVICES_PER_ADDRESS>,
    pub(crate) last_accept_ms: u64,
}

impl AddressState {
    pub(crate) fn roll(&mut self, window: u64) {
        if window > self.window {
            let f = decay(MINUTE_DECAY, window - self.window);
            self.attempts *= f;
            self.tls_failures *= f;
            self.refused *= f;
            self.timeouts *= f;
            self.protocol_errors *= f;
            self.pending *= f;
            self.window = window;
        }
    }
}
