//! Campaigns: waves, gates, maintenance windows and consent as a pure state machine.
//!
//! A campaign rolls one image target (`spec.target`) out to the devices of one group, in
//! waves. Nothing here does I/O or reads a clock: the hub passes `now` (ms since the epoch)
//! and the devices' reports and security signals, and carries out the [`Action`]s returned
//! (set or clear a device's director target, audit a transition).
//!
//! ```text
//!            start                 last wave finished
//!   Draft ──────────▶ Running ─────────────────────────▶ Completed
//!     │               │  ▲  │                                │
//!     │   pause / gate│  │  │abort / gate(abort)             │
//!     │     (pause)   ▼  │  ▼                                │
//!     │            Paused ──abort──▶ Aborted                 │
//!     │              resume            │                     │
//!     └──abort──▶ Aborted              │rollback             │rollback
//!                  Running, Paused ────┴──────▶ RollingBack ◀┘
//!                                                  │ every re-targeted device finished
//!                                                  ▼
//!                                              RolledBack
//! ```
//!
//! Invariants (property-tested below):
//! - a device is assigned only while the campaign runs, only when its wave is active (its
//!   wave index ≤ the current wave) and only inside a maintenance window (if any are set);
//! - a wave is left only when every device of it has finished (installed, failed, timed
//!   out, declined consent) and no gate tripped; a tripped gate never advances;
//! - per wave, the counts by stage add up to the wave's size.
//!
//! Devices are ordered deterministically (FNV-1a of campaign id and device id), so that the
//! same fleet gets the same waves after a restart and canaries are spread over the id space.
//! Wave `i` holds the devices at positions `[ceil(p[i-1]·n/100), ceil(p[i]·n/100))` for
//! cumulative percentages `p`; the first wave is the canary.
//!
//! Gates (checked at every tick while the campaign runs, before the wave may advance):
//! - **install failures**: failed or timed-out devices of the current wave, as a share of the
//!   wave's devices that did not decline consent, above `max_failure_percent` (checked as
//!   soon as the bound is certain, not only at the wave's end);
//! - **security regression**: devices updated by this campaign that showed new security
//!   signals (alerts, authorization failures, new topics) since they updated, as a share of
//!   the updated devices, against the same share among devices not yet updated since the
//!   campaign started (the control group). Trips when the difference exceeds
//!   `max_excess_percent` points, once at least `min_sample` devices updated. A control group
//!   smaller than `min_sample` counts as clean (so the comparison is absolute).
//!
//! A gate pauses or aborts, as configured. Resuming after a gate acknowledges what tripped
//! it: the failure gate no longer counts that wave, and the security gate trips again only
//! when more updated devices show signals than when it was acknowledged.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use moat_types::DeviceId;
use serde::{Deserialize, Serialize};

/// Most devices one campaign targets (the group's devices when it is created).
pub const MAX_DEVICES_PER_CAMPAIGN: usize = 10_000;
/// Most waves in a campaign (the canary included).
pub const MAX_WAVES: usize = 10;
/// Most maintenance windows in a campaign.
pub const MAX_WINDOWS: usize = 14;
/// Longest campaign name, in bytes (`[A-Za-z0-9._-]`).
pub const MAX_CAMPAIGN_NAME_LEN: usize = 64;
/// Longest target name, in bytes (TUF target paths of this repository are short).
pub const MAX_TARGET_NAME_LEN: usize = 255;
/// Longest device error text kept; longer ones are cut.
pub const MAX_ERROR_LEN: usize = 512;
/// Default time a device has from assignment to a final report: 1 hour.
pub const DEFAULT_DEVICE_TIMEOUT_SECS: u64 = 3600;
/// Shortest configurable device timeout: 10 seconds.
pub const MIN_DEVICE_TIMEOUT_SECS: u64 = 10;
/// Longest configurable device timeout: 7 days.
pub const MAX_DEVICE_TIMEOUT_SECS: u64 = 7 * 86_400;

const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;

/// Why a campaign could not be created or an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CampaignError {
    /// The specification is invalid (the message says which field and why).
    #[error("invalid campaign: {0}")]
    Invalid(String),
    /// Over a named limit.
    #[error("{what}: {found} is more than the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many there were.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The operation does not apply in the campaign's current status.
    #[error("cannot {operation} a campaign that is {status}")]
    NotAllowed {
        /// What was asked.
        operation: &'static str,
        /// Where the campaign stands.
        status: Status,
    },
    /// Rollback was asked of a campaign without a rollback image.
    #[error(
        "this campaign has no rollback image; create campaigns with `rollback_target` (a target published with --allow-downgrade) to be able to roll back"
    )]
    NoRollbackTarget,
    /// Stored state does not fit together.
    #[error("stored campaign is inconsistent: {0}")]
    Corrupt(String),
}

// ---- specification --------------------------------------------------------------------

/// A day of the week (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Self::Mon,
        Self::Tue,
        Self::Wed,
        Self::Thu,
        Self::Fri,
        Self::Sat,
        Self::Sun,
    ];

    /// The UTC day of week of `day` days since the epoch (1970-01-01 was a Thursday).
    pub fn of_epoch_day(day: u64) -> Self {
        Self::ALL[((day + 3) % 7) as usize]
    }

    fn previous(self) -> Self {
        Self::ALL[(self as usize + 6) % 7]
    }
}

/// A time of day in minutes since midnight UTC, written `"HH:MM"` (`"24:00"` is the end of
/// the day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// Parses `HH:MM`.
    pub fn parse(s: &str) -> Result<Self, CampaignError> {
        let bad =
            || CampaignError::Invalid(format!("time {s:?}: expected HH:MM (UTC), 00:00 to 24:00"));
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(Self(h * 60 + m))
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A maintenance window: on `days`, from `start` to `end` (UTC). A window whose end is not
/// after its start runs over midnight into the next day (the day named is the day it opens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days it opens on.
    pub days: Vec<Weekday>,
    /// Opening time, UTC.
    pub start: TimeOfDay,
    /// Closing time, UTC (exclusive).
    pub end: TimeOfDay,
}

impl Window {
    /// Whether `now_ms` (ms since the epoch) is inside the window.
    pub fn contains(&self, now_ms: u64) -> bool {
        let day = Weekday::of_epoch_day(now_ms / DAY_MS);
        let minute = ((now_ms % DAY_MS) / MINUTE_MS) as u16;
        let (start, end) = (self.start.0, self.end.0);
        if start < end {
            self.days.contains(&day) && (start..end).contains(&minute)
        } else {
            // Over midnight: the evening part belongs to today, the morning to yesterday's
            // window.
            (self.days.contains(&day) && minute >= start)
                || (self.days.contains(&day.previous()) && minute < end)
        }
    }
}

/// What a tripped gate does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    /// Pause: no new devices are assigned until an operator resumes (or aborts).
    Pause,
    /// Abort: devices not yet updating are released; only rollback remains.
    Abort,
}

/// The security-regression gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGate {
    /// Updated devices needed before the gate judges (default 5).
    #[serde(default = "default_min_sample")]
    pub min_sample: u32,
    /// Largest allowed excess, in percentage points, of the share of updated devices with
    /// new security signals over the share in the control group (default 20).
    #[serde(default = "default_max_excess")]
    pub max_excess_percent: u8,
    /// What a trip does (default pause).
    #[serde(default = "default_gate_action")]
    pub action: GateAction,
}

fn default_min_sample() -> u32 {
    5
}
fn default_max_excess() -> u8 {
    20
}
fn default_gate_action() -> GateAction {
    GateAction::Pause
}
fn default_max_failure() -> u8 {
    10
}

impl Default for SecurityGate {
    fn default() -> Self {
        Self {
            min_sample: default_min_sample(),
            max_excess_percent: default_max_excess(),
            action: default_gate_action(),
        }
    }
}

/// A campaign's gates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Largest share of a wave's devices that may fail or time out, in percent (default 10).
    #[serde(default = "default_max_failure")]
    pub max_failure_percent: u8,
    /// What the failure gate does when tripped (default pause).
    #[serde(default = "default_gate_action")]
    pub on_failure: GateAction,
    /// The security-regression gate (on by default; `null` turns it off).
    #[serde(default = "default_security_gate")]
    pub security: Option<SecurityGate>,
}

fn default_security_gate() -> Option<SecurityGate> {
    Some(SecurityGate::default())
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_failure_percent: default_max_failure(),
            on_failure: default_gate_action(),
            security: default_security_gate(),
        }
    }
}

/// Whether devices are asked for consent before they install.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// Devices install when targeted.
    #[default]
    NotRequired,
    /// The director target carries a consent flag; the device (its user) may decline, which
    /// it reports as `consent_declined`: not a failure, the device is left out.
    Required,
}

/// What an operator asks for when creating a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// A name for people (`[A-Za-z0-9._-]`, at most [`MAX_CAMPAIGN_NAME_LEN`] bytes).
    pub name: String,
    /// The group whose devices are targeted.
    pub group: String,
    /// The image target to install (a target name of the image repository).
    pub target: String,
    /// The image to roll back to: a target published with `downgrade: true`.
    #[serde(default)]
    pub rollback_target: Option<String>,
    /// Cumulative percentages of the group per wave, strictly increasing, ending at 100;
    /// the first is the canary (default `[5, 25, 100]`).
    #[serde(default = "default_waves")]
    pub waves: Vec<u8>,
    /// Maintenance windows; none means any time.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Device consent.
    #[serde(default)]
    pub consent: Consent,
    /// Time a device has from assignment to a final report, in seconds (default 3600).
    #[serde(default = "default_timeout")]
    pub device_timeout_secs: u64,
    /// Gates.
    #[serde(default)]
    pub gates: Gates,
}

fn default_waves() -> Vec<u8> {
    vec![5, 25, 100]
}
fn default_timeout() -> u64 {
    DEFAULT_DEVICE_TIMEOUT_SECS
}

fn valid_name(s: &str, max: usize, allow_slash: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && !s.contains("..")
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (allow_slash && c == '/')
        })
}

impl CampaignSpec {
    /// Checks every field against its rule and limit.
    pub fn validate(&self) -> Result<(), CampaignError> {
        let invalid = |m: String| Err(CampaignError::Invalid(m));
        if !valid_name(&self.name, MAX_CAMPAIGN_NAME_LEN, false) {
            return invalid(format!(
                "name {:?}: 1 to {MAX_CAMPAIGN_NAME_LEN} characters of [A-Za-z0-9._-]",
                self.name
            ));
        }
        if !valid_name(&self.group, MAX_CAMPAIGN_NAME_LEN, false) {
            return invalid(format!("group {:?} is not a valid group name", self.group));
        }
        for t in std::iter::once(&self.target).chain(self.rollback_target.as_ref()) {
            if !valid_name(t, MAX_TARGET_NAME_LEN, true) {
                return invalid(format!(
                    "target {t:?}: expected a target name such as `NAME-VERSION` or `CLASS/NAME-VERSION`"
                ));
            }
        }
        if self.rollback_target.as_deref() == Some(self.target.as_str()) {
            return invalid("rollback_target must differ from target".into());
        }
        if self.waves.is_empty() {
            return invalid("waves: at least one wave (the last is 100)".into());
        }
        if self.waves.len() > MAX_WAVES {
            return Err(CampaignError::TooMany {
                what: "waves",
                found: self.waves.len(),
                max: MAX_WAVES,
            });
        }
        let mut previous = 0u8;
        for &p in &self.waves {
            if p <= previous || p > 100 {
                return invalid(format!(
                    "waves {:?}: cumulative percentages, strictly increasing, from 1 to 100",
                    self.waves
                ));
            }
            previous = p;
        }
        if previous != 100 {
            return invalid(format!(
                "waves {:?}: the last wave must be 100 (the whole group)",
                self.waves
            ));
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(CampaignError::TooMany {
                what: "maintenance windows",
                found: self.windows.len(),
                max: MAX_WINDOWS,
            });
        }
        for w in &self.windows {
            if w.days.is_empty() {
                return invalid("a maintenance window needs at least one day".into());
            }
            if w.start == w.end {
                return invalid(format!(
                    "maintenance window {}-{}: start and end are equal; leave windows out to allow any time",
                    w.start, w.end
                ));
            }
        }
        if !(MIN_DEVICE_TIMEOUT_SECS..=MAX_DEVICE_TIMEOUT_SECS).contains(&self.device_timeout_secs)
        {
            return invalid(format!(
                "device_timeout_secs {}: from {MIN_DEVICE_TIMEOUT_SECS} to {MAX_DEVICE_TIMEOUT_SECS}",
                self.device_timeout_secs
            ));
        }
        if self.gates.max_failure_percent > 100 {
            return invalid("gates.max_failure_percent: 0 to 100".into());
        }
        if let Some(s) = &self.gates.security {
            if s.max_excess_percent > 100 {
                return invalid("gates.security.max_excess_percent: 0 to 100".into());
            }
            if s.min_sample == 0 || s.min_sample as usize > MAX_DEVICES_PER_CAMPAIGN {
                return invalid(format!(
                    "gates.security.min_sample: 1 to {MAX_DEVICES_PER_CAMPAIGN}"
                ));
            }
        }
        Ok(())
    }

    /// Whether devices may be assigned at `now_ms`.
    pub fn in_window(&self, now_ms: u64) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(now_ms))
    }
}

// ---- state ----------------------------------------------------------------------------

/// Where a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Draft,
    /// Assigning devices wave by wave.
    Running,
    /// No new assignments (an operator or a gate); devices already updating finish.
    Paused,
    /// Every wave finished.
    Completed,
    /// Stopped for good (an operator or a gate); only rollback remains.
    Aborted,
    /// Updated devices are re-targeted to the rollback image.
    RollingBack,
    /// Every re-targeted device finished.
    RolledBack,
}

impl Status {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Whether the campaign still has work (its task ticks it).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::RollingBack)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one device of a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Not assigned yet.
    Pending,
    /// Its director target names the image; no report yet.
    Assigned,
    /// Reported progress (checking, downloading, installing, rebooting).
    Updating,
    /// Reported the image installed.
    Installed,
    /// Reported a failure (failed, refused, or rolled back by itself).
    Failed,
    /// No final report within the device timeout.
    TimedOut,
    /// Declined consent.
    Declined,
    /// Assigned, then released by an abort before it reported anything.
    Cancelled,
    /// Re-targeted to the rollback image.
    RollingBack,
    /// Reported the rollback image installed.
    RolledBack,
    /// Failed or timed out rolling back.
    RollbackFailed,
}

impl Stage {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Updating => "updating",
            Self::Installed => "installed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Declined => "declined",
            Self::Cancelled => "cancelled",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::RollbackFailed => "rollback_failed",
        }
    }

    /// Whether the device is done with the campaign's image (for wave advancement).
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Assigned | Self::Updating)
    }

    /// Whether the device counts as a failure for the failure gate.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }

    /// Whether the device's director target currently names an image of this campaign.
    pub fn is_targeted(self) -> bool {
        matches!(self, Self::Assigned | Self::Updating | Self::RollingBack)
    }
}

/// One device of a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device.
    #[serde(with = "device_id_serde")]
    pub device: DeviceId,
    /// Its wave (index into `spec.waves`).
    pub wave: u8,
    /// Where it stands.
    pub stage: Stage,
    /// When it was (last) assigned, ms since the epoch.
    pub assigned_at_ms: Option<u64>,
    /// When it reached its current finished stage, ms since the epoch.
    pub finished_at_ms: Option<u64>,
    /// Last reported progress, 0 to 100.
    pub progress: u8,
    /// Last reported device state (the contract's names), if any.
    pub reported: Option<ReportState>,
    /// Last reported error, cut to [`MAX_ERROR_LEN`].
    pub error: Option<String>,
}

mod device_id_serde {
    use moat_types::DeviceId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DeviceId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceId, D::Error> {
        DeviceId::deserialize(d)
    }
}

/// Which gate tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Install failures of a wave.
    InstallFailures,
    /// Security signals of updated devices against the control group.
    SecurityRegression,
}

impl GateKind {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InstallFailures => "install_failures",
            Self::SecurityRegression => "security_regression",
        }
    }
}

/// A gate that tripped, with why in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateTrip {
    /// Which gate.
    pub gate: GateKind,
    /// The wave that was active.
    pub wave: u8,
    /// What it did.
    pub action: GateAction,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Why, for people: the numbers compared and the threshold.
    pub explanation: String,
}

/// Gates an operator acknowledged by resuming after them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledged {
    /// Waves whose failures no longer trip the failure gate.
    pub failure_waves: Vec<u8>,
    /// Updated devices with signals when the security gate was acknowledged; it trips
    /// again only above this.
    pub security_affected: Option<u32>,
}

/// Everything about a campaign except its devices (stored as one row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignMeta {
    /// The hub's id (also in director targets and device reports).
    pub id: u64,
    /// What the operator asked for.
    pub spec: CampaignSpec,
    /// Where it stands.
    pub status: Status,
    /// The active wave (index into `spec.waves`).
    pub current_wave: u8,
    /// When it was created, ms since the epoch.
    pub created_at_ms: u64,
    /// When it was started.
    pub started_at_ms: Option<u64>,
    /// When the current wave became active.
    pub wave_started_at_ms: Option<u64>,
    /// When it reached a final status (completed, aborted, rolled back).
    pub finished_at_ms: Option<u64>,
    /// Why it is paused or aborted, in words (an operator's reason or a gate's explanation).
    pub reason: Option<String>,
    /// The last gate that tripped.
    pub last_trip: Option<GateTrip>,
    /// What resuming acknowledged.
    #[serde(default)]
    pub acknowledged: Acknowledged,
    /// Whether the current pause is a gate's (resuming then acknowledges `last_trip`; an
    /// operator's pause acknowledges nothing).
    #[serde(default)]
    pub paused_by_gate: bool,
}

/// A campaign: its meta row and its devices, in wave order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    meta: CampaignMeta,
    devices: Vec<DeviceEntry>,
    index: BTreeMap<DeviceId, usize>,
    /// Devices changed since [`take_changed`](Self::take_changed) (for storage).
    changed: Vec<usize>,
}

/// What the hub must do after a transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Set the device's director target to `target` (with the consent flag if `consent`).
    Assign {
        /// The device.
        #[serde(with = "device_id_serde")]
        device: DeviceId,
        /// The image target.
        target: String,
        /// Whether the device must ask for consent.
        consent: bool,
    },
    /// Clear the device's director target.
    Unassign {
        /// The device.
        #[serde(with = "device_id_serde")]
        device: DeviceId,
    },
    /// The campaign's status changed.
    Transition {
        /// From.
        from: Status,
        /// To.
        to: Status,
        /// Why.
        reason: String,
    },
    /// A wave became active.
    WaveStarted {
        /// Its index.
        wave: u8,
        /// Its devices.
        devices: u32,
    },
    /// A gate tripped.
    GateTripped(GateTrip),
    /// A device did not report in time.
    DeviceTimedOut {
        /// The device.
        #[serde(with = "device_id_serde")]
        device: DeviceId,
    },
}

/// Security signals of one device over its reference period (for updated devices: since
/// they installed; for the control group: since the campaign started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Alerts raised about it.
    pub alerts: u32,
    /// Publishes or subscriptions the policy refused.
    pub authorization_failures: u32,
    /// Topics it published to that it had not published to before.
    pub new_topics: u32,
}

impl Signals {
    /// Whether anything showed.
    pub fn any(&self) -> bool {
        self.alerts > 0 || self.authorization_failures > 0 || self.new_topics > 0
    }

    fn add(&mut self, o: &Signals) {
        self.alerts = self.alerts.saturating_add(o.alerts);
        self.authorization_failures = self
            .authorization_failures
            .saturating_add(o.authorization_failures);
        self.new_topics = self.new_topics.saturating_add(o.new_topics);
    }
}

/// A device's report state (the contract's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// Fetching metadata.
    Checking,
    /// Downloading the image.
    Downloading,
    /// Downloaded and verified.
    Downloaded,
    /// Installing.
    Installing,
    /// Rebooting into the new image.
    Rebooting,
    /// Installed and confirmed.
    Installed,
    /// Failed.
    Failed,
    /// The install failed and the device went back to its previous image by itself.
    RolledBack,
    /// Verification refused the update.
    Refused,
    /// The device (its user) declined.
    ConsentDeclined,
}

impl ReportState {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Downloading => "downloading",
            Self::Downloaded => "downloaded",
            Self::Installing => "installing",
            Self::Rebooting => "rebooting",
            Self::Installed => "installed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Refused => "refused",
            Self::ConsentDeclined => "consent_declined",
        }
    }

    fn is_progress(self) -> bool {
        matches!(
            self,
            Self::Checking
                | Self::Downloading
                | Self::Downloaded
                | Self::Installing
                | Self::Rebooting
        )
    }

    fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack | Self::Refused)
    }
}

/// What a device reported, as the campaign needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// The campaign it names.
    pub campaign: Option<u64>,
    /// The target it is working on.
    pub target: String,
    /// Its state.
    pub state: ReportState,
    /// Progress, 0 to 100.
    pub progress: u8,
    /// Error text.
    pub error: Option<String>,
}

/// Counts of one wave's devices by stage; they add up to `total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Index.
    pub wave: u8,
    /// Cumulative percentage of the group.
    pub percent: u8,
    /// Devices in the wave.
    pub total: u32,
    /// Not assigned yet.
    pub pending: u32,
    /// Assigned, no report yet.
    pub assigned: u32,
    /// Reported progress.
    pub updating: u32,
    /// Installed.
    pub installed: u32,
    /// Failed.
    pub failed: u32,
    /// Timed out.
    pub timed_out: u32,
    /// Declined consent.
    pub declined: u32,
    /// Released by an abort.
    pub cancelled: u32,
    /// Being rolled back.
    pub rolling_back: u32,
    /// Rolled back.
    pub rolled_back: u32,
    /// Failed rolling back.
    pub rollback_failed: u32,
}

impl WaveCounts {
    fn add(&mut self, stage: Stage) {
        let slot = match stage {
            Stage::Pending => &mut self.pending,
            Stage::Assigned => &mut self.assigned,
            Stage::Updating => &mut self.updating,
            Stage::Installed => &mut self.installed,
            Stage::Failed => &mut self.failed,
            Stage::TimedOut => &mut self.timed_out,
            Stage::Declined => &mut self.declined,
            Stage::Cancelled => &mut self.cancelled,
            Stage::RollingBack => &mut self.rolling_back,
            Stage::RolledBack => &mut self.rolled_back,
            Stage::RollbackFailed => &mut self.rollback_failed,
        };
        *slot += 1;
        self.total += 1;
    }

    /// The sum of every stage's count (equals `total`).
    pub fn sum(&self) -> u32 {
        self.pending
            + self.assigned
            + self.updating
            + self.installed
            + self.failed
            + self.timed_out
            + self.declined
            + self.cancelled
            + self.rolling_back
            + self.rolled_back
            + self.rollback_failed
    }

    /// Devices done with the image (installed, failed, timed out, declined, cancelled, or
    /// anywhere in rollback).
    pub fn finished(&self) -> u32 {
        self.total - self.pending - self.assigned - self.updating
    }
}

/// The deterministic position key of a device in a campaign (FNV-1a 64).
fn order_key(campaign: u64, device: &DeviceId) -> u64 {
    campaign
        .to_le_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(device.as_str().as_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Wave end positions (exclusive) for `n` devices.
fn wave_ends(waves: &[u8], n: usize) -> Vec<usize> {
    waves
        .iter()
        .map(|&p| (usize::from(p) * n).div_ceil(100))
        .collect()
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Campaign {
    /// A new draft campaign over `devices` (the group's devices; duplicates are ignored).
    pub fn new(
        id: u64,
        spec: CampaignSpec,
        devices: Vec<DeviceId>,
        now_ms: u64,
    ) -> Result<Self, CampaignError> {
        spec.validate()?;
        let mut devices = devices;
        devices.sort();
        devices.dedup();
        if devices.is_empty() {
            return Err(CampaignError::Invalid(format!(
                "group {:?} has no devices; add devices to it first",
                spec.group
            )));
        }
        if devices.len() > MAX_DEVICES_PER_CAMPAIGN {
            return Err(CampaignError::TooMany {
                what: "devices in the group",
                found: devices.len(),
                max: MAX_DEVICES_PER_CAMPAIGN,
            });
        }
        let mut keyed: Vec<(u64, DeviceId)> = devices
            .into_iter()
            .map(|d| (order_key(id, &d), d))
            .collect();
        keyed.sort();
        let ends = wave_ends(&spec.waves, keyed.len());
        let entries = keyed
            .into_iter()
            .enumerate()
            .map(|(pos, (_, device))| DeviceEntry {
                device,
                wave: ends.iter().position(|&e| pos < e).unwrap_or(0) as u8,
                stage: Stage::Pending,
                assigned_at_ms: None,
                finished_at_ms: None,
                progress: 0,
                reported: None,
                error: None,
            })
            .collect();
        let meta = CampaignMeta {
            id,
            spec,
            status: Status::Draft,
            current_wave: 0,
            created_at_ms: now_ms,
            started_at_ms: None,
            wave_started_at_ms: None,
            finished_at_ms: None,
            reason: None,
            last_trip: None,
            acknowledged: Acknowledged::default(),
            paused_by_gate: false,
        };
        Self::from_parts(meta, entries)
    }

    /// Rebuilds a campaign from storage, checking that the parts fit together.
    pub fn from_parts(
        meta: CampaignMeta,
        devices: Vec<DeviceEntry>,
    ) -> Result<Self, CampaignError> {
        let corrupt = |m: String| Err(CampaignError::Corrupt(m));
        meta.spec
            .validate()
            .map_err(|e| CampaignError::Corrupt(e.to_string()))?;
        if devices.len() > MAX_DEVICES_PER_CAMPAIGN {
            return corrupt(format!("{} devices", devices.len()));
        }
        let waves = meta.spec.waves.len();
        if usize::from(meta.current_wave) >= waves {
            return corrupt(format!("current wave {} of {waves}", meta.current_wave));
        }
        let mut index = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            if usize::from(d.wave) >= waves {
                return corrupt(format!("device {} in wave {} of {waves}", d.device, d.wave));
            }
            if index.insert(d.device.clone(), i).is_some() {
                return corrupt(format!("device {} listed twice", d.device));
            }
        }
        Ok(Self {
            meta,
            devices,
            index,
            changed: Vec::new(),
        })
    }

    /// The meta row.
    pub fn meta(&self) -> &CampaignMeta {
        &self.meta
    }

    /// The id.
    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.meta.status
    }

    /// The specification.
    pub fn spec(&self) -> &CampaignSpec {
        &self.meta.spec
    }

    /// Every device, in wave order.
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.devices
    }

    /// One device's entry.
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceEntry> {
        self.index.get(id).map(|&i| &self.devices[i])
    }

    /// Devices changed since the last call (for storage), each once.
    pub fn take_changed(&mut self) -> Vec<DeviceEntry> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed
            .into_iter()
            .map(|i| self.devices[i].clone())
            .collect()
    }

    /// Counts per wave.
    pub fn wave_counts(&self) -> Vec<WaveCounts> {
        let mut counts: Vec<WaveCounts> = self
            .meta
            .spec
            .waves
            .iter()
            .enumerate()
            .map(|(i, &p)| WaveCounts {
                wave: i as u8,
                percent: p,
                ..WaveCounts::default()
            })
            .collect();
        for d in &self.devices {
            if let Some(c) = counts.get_mut(usize::from(d.wave)) {
                c.add(d.stage);
            }
        }
        counts
    }

    /// Which device's signals the security gate needs, and since when (ms): updated
    /// devices since they installed, devices not yet assigned since the campaign started.
    /// Empty unless the campaign runs with a security gate.
    pub fn signal_requests(&self) -> Vec<(DeviceId, u64)> {
        let (Some(_), Some(started), Status::Running) = (
            &self.meta.spec.gates.security,
            self.meta.started_at_ms,
            self.meta.status,
        ) else {
            return Vec::new();
        };
        self.devices
            .iter()
            .filter_map(|d| match d.stage {
                Stage::Installed => Some((d.device.clone(), d.finished_at_ms.unwrap_or(started))),
                Stage::Pending => Some((d.device.clone(), started)),
                _ => None,
            })
            .collect()
    }

    fn set_status(&mut self, to: Status, reason: String, now_ms: u64, out: &mut Vec<Action>) {
        let from = self.meta.status;
        self.meta.status = to;
        if matches!(to, Status::Completed | Status::Aborted | Status::RolledBack) {
            self.meta.finished_at_ms = Some(now_ms);
        }
        self.meta.reason = match to {
            Status::Paused | Status::Aborted => Some(reason.clone()),
            _ => None,
        };
        out.push(Action::Transition { from, to, reason });
    }

    fn set_stage(&mut self, i: usize, stage: Stage, now_ms: u64) {
        let d = &mut self.devices[i];
        d.stage = stage;
        if stage.is_finished() {
            d.finished_at_ms = Some(now_ms);
        }
        self.changed.push(i);
    }

    fn not_allowed(&self, operation: &'static str) -> CampaignError {
        CampaignError::NotAllowed {
            operation,
            status: self.meta.status,
        }
    }

    /// Starts a draft campaign; devices of the first wave are assigned at once if `now_ms`
    /// is inside a window.
    pub fn start(&mut self, now_ms: u64) -> Result<Vec<Action>, CampaignError> {
        if self.meta.status != Status::Draft {
            return Err(self.not_allowed("start"));
        }
        let mut out = Vec::new();
        self.meta.started_at_ms = Some(now_ms);
        self.meta.wave_started_at_ms = Some(now_ms);
        self.set_status(Status::Running, "started".into(), now_ms, &mut out);
        out.push(Action::WaveStarted {
            wave: 0,
            devices: self.wave_counts().first().map_or(0, |c| c.total),
        });
        out.extend(self.tick(now_ms, &BTreeMap::new()));
        Ok(out)
    }

    /// Pauses a running campaign (an operator's `reason`).
    pub fn pause(&mut self, now_ms: u64, reason: &str) -> Result<Vec<Action>, CampaignError> {
        if self.meta.status != Status::Running {
            return Err(self.not_allowed("pause"));
        }
        let mut out = Vec::new();
        self.set_status(Status::Paused, cut(reason), now_ms, &mut out);
        Ok(out)
    }

    /// Resumes a paused campaign, acknowledging the gate that paused it (if one did).
    pub fn resume(
        &mut self,
        now_ms: u64,
        signals: &BTreeMap<DeviceId, Signals>,
    ) -> Result<Vec<Action>, CampaignError> {
        if self.meta.status != Status::Paused {
            return Err(self.not_allowed("resume"));
        }
        if let Some(trip) = &self.meta.last_trip
            && self.meta.paused_by_gate
        {
            match trip.gate {
                GateKind::InstallFailures => {
                    if !self.meta.acknowledged.failure_waves.contains(&trip.wave) {
                        self.meta.acknowledged.failure_waves.push(trip.wave);
                    }
                }
                GateKind::SecurityRegression => {
                    let affected = self
                        .devices
                        .iter()
                        .filter(|d| d.stage == Stage::Installed)
                        .filter(|d| signals.get(&d.device).is_some_and(Signals::any))
                        .count() as u32;
                    self.meta.acknowledged.security_affected = Some(affected);
                }
            }
        }
        self.meta.paused_by_gate = false;
        let mut out = Vec::new();
        self.set_status(Status::Running, "resumed".into(), now_ms, &mut out);
        out.extend(self.tick(now_ms, signals));
        Ok(out)
    }

    /// Aborts: devices assigned that have not reported are released (their director target
    /// cleared); devices updating are released too and finish on their own.
    pub fn abort(&mut self, now_ms: u64, reason: &str) -> Result<Vec<Action>, CampaignError> {
        if !matches!(
            self.meta.status,
            Status::Draft | Status::Running | Status::Paused
        ) {
            return Err(self.not_allowed("abort"));
        }
        let mut out = Vec::new();
        self.abort_inner(now_ms, cut(reason), &mut out);
        Ok(out)
    }

    fn abort_inner(&mut self, now_ms: u64, reason: String, out: &mut Vec<Action>) {
        for i in 0..self.devices.len() {
            match self.devices[i].stage {
                Stage::Assigned => {
                    out.push(Action::Unassign {
                        device: self.devices[i].device.clone(),
                    });
                    self.set_stage(i, Stage::Cancelled, now_ms);
                }
                Stage::Updating => out.push(Action::Unassign {
                    device: self.devices[i].device.clone(),
                }),
                _ => {}
            }
        }
        self.set_status(Status::Aborted, reason, now_ms, out);
    }

    /// Rolls back: every device that installed (or may be installing, or timed out) is
    /// re-targeted to the rollback image at once, regardless of waves and windows (a
    /// rollback is a remedy); devices never assigned stay as they are.
    pub fn rollback(&mut self, now_ms: u64) -> Result<Vec<Action>, CampaignError> {
        if !matches!(
            self.meta.status,
            Status::Running | Status::Paused | Status::Aborted | Status::Completed
        ) {
            return Err(self.not_allowed("roll back"));
        }
        let Some(target) = self.meta.spec.rollback_target.clone() else {
            return Err(CampaignError::NoRollbackTarget);
        };
        let mut out = Vec::new();
        for i in 0..self.devices.len() {
            if matches!(
                self.devices[i].stage,
                Stage::Assigned | Stage::Updating | Stage::Installed | Stage::TimedOut
            ) {
                out.push(Action::Assign {
                    device: self.devices[i].device.clone(),
                    target: target.clone(),
                    consent: false,
                });
                let d = &mut self.devices[i];
                d.assigned_at_ms = Some(now_ms);
                d.finished_at_ms = None;
                d.progress = 0;
                d.error = None;
                self.set_stage(i, Stage::RollingBack, now_ms);
            }
        }
        self.set_status(
            Status::RollingBack,
            format!("rolling back to {target}"),
            now_ms,
            &mut out,
        );
        out.extend(self.tick(now_ms, &BTreeMap::new()));
        Ok(out)
    }

    /// Applies a device's report. Reports that do not concern this campaign (another
    /// campaign, a device not in it, a target other than the one it was given) change
    /// nothing.
    pub fn report(&mut self, device: &DeviceId, r: &DeviceReport, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if r.campaign != Some(self.meta.id) {
            return out;
        }
        let Some(&i) = self.index.get(device) else {
            return out;
        };
        let stage = self.devices[i].stage;
        let rollback = self.meta.spec.rollback_target.as_deref();
        let next = match stage {
            Stage::Assigned | Stage::Updating | Stage::TimedOut | Stage::Cancelled
                if r.target == self.meta.spec.target =>
            {
                match r.state {
                    s if s.is_progress() => {
                        if stage == Stage::Cancelled {
                            // Released by an abort before it started: stays released.
                            return out;
                        }
                        Stage::Updating
                    }
                    ReportState::Installed => Stage::Installed,
                    s if s.is_failure() => Stage::Failed,
                    ReportState::ConsentDeclined => {
                        if stage.is_targeted() {
                            out.push(Action::Unassign {
                                device: device.clone(),
                            });
                        }
                        Stage::Declined
                    }
                    _ => return out,
                }
            }
            // Installed, then back on its previous image by itself (its confirmation after
            // the reboot failed): a failure after all.
            Stage::Installed
                if r.target == self.meta.spec.target && r.state == ReportState::RolledBack =>
            {
                Stage::Failed
            }
            Stage::RollingBack | Stage::RollbackFailed if Some(r.target.as_str()) == rollback => {
                match r.state {
                    s if s.is_progress() => Stage::RollingBack,
                    ReportState::Installed => Stage::RolledBack,
                    _ => Stage::RollbackFailed,
                }
            }
            _ => return out,
        };
        let d = &mut self.devices[i];
        d.progress = r.progress.min(100);
        d.reported = Some(r.state);
        if let Some(e) = &r.error {
            d.error = Some(cut(e));
        }
        if next != stage || !next.is_finished() {
            self.set_stage(i, next, now_ms);
        }
        out
    }

    /// Advances the campaign at `now_ms`: device timeouts, gates, wave advancement and
    /// assignments. `signals` holds the security signals of the devices
    /// [`signal_requests`](Self::signal_requests) named (missing ones count as none).
    pub fn tick(&mut self, now_ms: u64, signals: &BTreeMap<DeviceId, Signals>) -> Vec<Action> {
        let mut out = Vec::new();
        match self.meta.status {
            Status::Running => {
                self.expire(now_ms, &mut out);
                if let Some(trip) = self.check_gates(now_ms, signals) {
                    self.trip(trip, now_ms, &mut out);
                    return out;
                }
                self.advance(now_ms, &mut out);
                if self.meta.status == Status::Running && self.meta.spec.in_window(now_ms) {
                    self.assign(now_ms, &mut out);
                }
            }
            Status::Paused | Status::Aborted => self.expire(now_ms, &mut out),
            Status::RollingBack => {
                self.expire(now_ms, &mut out);
                if !self.devices.iter().any(|d| d.stage == Stage::RollingBack) {
                    self.set_status(
                        Status::RolledBack,
                        "every re-targeted device finished".into(),
                        now_ms,
                        &mut out,
                    );
                }
            }
            Status::Draft | Status::Completed | Status::RolledBack => {}
        }
        out
    }

    fn expire(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let timeout_ms = self.meta.spec.device_timeout_secs.saturating_mul(1000);
        for i in 0..self.devices.len() {
            let d = &self.devices[i];
            let Some(at) = d.assigned_at_ms else { continue };
            if !d.stage.is_targeted() || now_ms < at.saturating_add(timeout_ms) {
                continue;
            }
            let next = if d.stage == Stage::RollingBack {
                Stage::RollbackFailed
            } else {
                Stage::TimedOut
            };
            let device = d.device.clone();
            out.push(Action::DeviceTimedOut {
                device: device.clone(),
            });
            // Its target stays: a device that was offline may still install and report
            // (a late report moves it on).
            self.set_stage(i, next, now_ms);
        }
    }

    fn check_gates(&self, now_ms: u64, signals: &BTreeMap<DeviceId, Signals>) -> Option<GateTrip> {
        let wave = self.meta.current_wave;
        let gates = &self.meta.spec.gates;
        if !self.meta.acknowledged.failure_waves.contains(&wave) {
            let counts = self.wave_counts();
            let c = counts.get(usize::from(wave))?;
            let failures = c.failed + c.timed_out;
            let eligible = c.total - c.declined;
            // Trips once the share is certain to exceed the limit, even if every device
            // still updating succeeds.
            if eligible > 0
                && u64::from(failures) * 100
                    > u64::from(gates.max_failure_percent) * u64::from(eligible)
            {
                return Some(GateTrip {
                    gate: GateKind::InstallFailures,
                    wave,
                    action: gates.on_failure,
                    at_ms: now_ms,
                    explanation: format!(
                        "wave {} ({}%): {} of {} devices failed ({} failed, {} timed out), {}%, above the limit of {}%",
                        wave + 1,
                        c.percent,
                        failures,
                        eligible,
                        c.failed,
                        c.timed_out,
                        u64::from(failures) * 100 / u64::from(eligible),
                        gates.max_failure_percent
                    ),
                });
            }
        }
        let gate = gates.security.as_ref()?;
        let (mut updated, mut affected_u, mut sum_u) = (0u64, 0u64, Signals::default());
        let (mut control, mut affected_c, mut sum_c) = (0u64, 0u64, Signals::default());
        for d in &self.devices {
            let s = signals.get(&d.device).copied().unwrap_or_default();
            match d.stage {
                Stage::Installed => {
                    updated += 1;
                    if s.any() {
                        affected_u += 1;
                        sum_u.add(&s);
                    }
                }
                Stage::Pending => {
                    control += 1;
                    if s.any() {
                        affected_c += 1;
                        sum_c.add(&s);
                    }
                }
                _ => {}
            }
        }
        let min = u64::from(gate.min_sample);
        if updated < min {
            return None;
        }
        if let Some(ack) = self.meta.acknowledged.security_affected
            && affected_u <= u64::from(ack)
        {
            return None;
        }
        let control_counts = control >= min;
        let excess = u64::from(gate.max_excess_percent);
        // Integer form of affected_u/updated - affected_c/control > excess/100.
        let tripped = if control_counts {
            (affected_u * 100 * control) > (affected_c * 100 * updated) + excess * updated * control
        } else {
            affected_u * 100 > excess * updated
        };
        if !tripped {
            return None;
        }
        let mut why = format!(
            "{affected_u} of {updated} updated devices ({}%) showed new security signals since updating ({} alerts, {} authorization failures, {} new topics)",
            affected_u * 100 / updated,
            sum_u.alerts,
            sum_u.authorization_failures,
            sum_u.new_topics
        );
        if control_counts {
            let _ = write!(
                why,
                " against {affected_c} of {control} devices not yet updated ({}%) since the campaign started ({} alerts, {} authorization failures, {} new topics)",
                affected_c * 100 / control,
                sum_c.alerts,
                sum_c.authorization_failures,
                sum_c.new_topics
            );
        } else {
            let _ = write!(
                why,
                "; the control group ({control} devices not yet updated) is smaller than the minimum sample of {min}, so it counts as clean"
            );
        }
        let _ = write!(why, "; allowed excess {excess} points");
        Some(GateTrip {
            gate: GateKind::SecurityRegression,
            wave: self.meta.current_wave,
            action: gate.action,
            at_ms: now_ms,
            explanation: why,
        })
    }

    fn trip(&mut self, trip: GateTrip, now_ms: u64, out: &mut Vec<Action>) {
        let reason = format!("gate {} tripped: {}", trip.gate.as_str(), trip.explanation);
        self.meta.last_trip = Some(trip.clone());
        out.push(Action::GateTripped(trip.clone()));
        match trip.action {
            GateAction::Pause => {
                self.meta.paused_by_gate = true;
                self.set_status(Status::Paused, reason, now_ms, out);
            }
            GateAction::Abort => self.abort_inner(now_ms, reason, out),
        }
    }

    fn advance(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        loop {
            let counts = self.wave_counts();
            let wave = usize::from(self.meta.current_wave);
            let Some(c) = counts.get(wave) else { return };
            if c.finished() < c.total {
                return;
            }
            if wave + 1 >= counts.len() {
                self.set_status(Status::Completed, "every wave finished".into(), now_ms, out);
                return;
            }
            self.meta.current_wave += 1;
            self.meta.wave_started_at_ms = Some(now_ms);
            out.push(Action::WaveStarted {
                wave: self.meta.current_wave,
                devices: counts[wave + 1].total,
            });
        }
    }

    fn assign(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let consent = self.meta.spec.consent == Consent::Required;
        for i in 0..self.devices.len() {
            let d = &self.devices[i];
            if d.stage != Stage::Pending || d.wave > self.meta.current_wave {
                continue;
            }
            out.push(Action::Assign {
                device: d.device.clone(),
                target: self.meta.spec.target.clone(),
                consent,
            });
            self.devices[i].assigned_at_ms = Some(now_ms);
            self.set_stage(i, Stage::Assigned, now_ms);
        }
    }
}

#[cfg(test)]
mod tests;
