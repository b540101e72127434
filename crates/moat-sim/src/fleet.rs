//! Benign device models and the fleet: who exists, where, in which group, and how each
//! model behaves on the wire (through [`Hub`]).
//!
//! Every device is a small state machine woken at the time it asked for. While connected
//! it does its model's next action; when its connection is gone (network loss, a session
//! take-over, an outage, a reboot) it reconnects with jittered backoff and, for models that
//! store and forward, flushes what it could not send.

use std::net::{IpAddr, Ipv4Addr};

use moat_detect::{DisconnectCause, GroupName, TlsFailure};
use moat_types::DeviceId;
use serde::Serialize;

use crate::hub::{Hub, Stall};
use crate::rng::Rng;

/// Milliseconds per day.
pub const DAY_MS: u64 = 86_400_000;
/// Milliseconds per hour.
pub const HOUR_MS: u64 = 3_600_000;
/// Most messages a store-and-forward device keeps while offline.
pub const BACKLOG_CAP: u32 = 600;
/// Messages per second a device flushes its backlog at after reconnecting.
pub const FLUSH_PER_S: u32 = 20;
/// Share of periodic sensors, event sensors and flaky devices with quirky firmware: now and
/// then (every 2–24 h, per device) it sends a packet the protocol forbids, the hub closes
/// the session and the client library reconnects. The fleet's only benign protocol errors.
pub const QUIRKY_SHARE: f64 = 0.03;
/// The PRNG stream of the firmware quirk, apart from the device's own, so that a quirk
/// changes nothing else about the fleet.
const QUIRK_STREAM: u64 = 0x0bad_f1a3;

/// A benign device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Publishes telemetry on a fixed period with jitter (some with a diurnal rhythm).
    PeriodicSensor,
    /// Publishes short bursts at Poisson times whose rate follows the day.
    EventSensor,
    /// Subscribes to its command topics, receives commands, publishes its state.
    Actuator,
    /// Subscribes to `devices/+/telemetry` (its policy grants it) and publishes aggregates.
    Gateway,
    /// Heartbeats, and every few hours uploads a large batch of 16–64 KiB chunks.
    BulkUploader,
    /// A periodic sensor on a bad link: frequent drops, keep-alive timeouts, handshakes that
    /// time out, store-and-forward flushes.
    FlakyDevice,
    /// A phone app: daytime sessions from a home or a cellular address, commands to its
    /// paired actuators.
    MobileClient,
}

impl Model {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeriodicSensor => "periodic_sensor",
            Self::EventSensor => "event_sensor",
            Self::Actuator => "actuator",
            Self::Gateway => "gateway",
            Self::BulkUploader => "bulk_uploader",
            Self::FlakyDevice => "flaky_device",
            Self::MobileClient => "mobile_client",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::PeriodicSensor => "ps",
            Self::EventSensor => "es",
            Self::Actuator => "act",
            Self::Gateway => "gw",
            Self::BulkUploader => "up",
            Self::FlakyDevice => "fl",
            Self::MobileClient => "mob",
        }
    }
}

/// One benign device.
#[derive(Debug)]
pub struct Device {
    /// Identity (certificate and client id).
    pub id: DeviceId,
    /// Model.
    pub model: Model,
    /// Group (cohort).
    pub group: GroupName,
    /// The address of its site (shared NAT for several devices).
    pub home: IpAddr,
    /// When it joins the fleet (0 offset for the initial fleet; later for onboarding).
    pub created_ms: u64,
    /// Paired actuators (mobile clients).
    pub paired: Vec<DeviceId>,
    /// The live connection, if any.
    pub conn: Option<u64>,
    /// When the heap should wake it (`u64::MAX`: not queued).
    pub wake_at: u64,
    /// Suspended (taken offline by a scenario) until then.
    pub suspended_until: u64,
    /// A certificate-rotation straggler: handshakes fail with an expired certificate until
    /// then.
    pub expired_until: u64,
    /// Scheduled reconnect for a certificate rotation.
    pub rotate_at: Option<u64>,
    /// Scheduled firmware update (reboot, then a new topic and larger payloads).
    pub update_at: Option<u64>,
    /// Rate multiplier (a configuration change).
    pub rate_mult: f64,
    /// Mean gap between the malformed packets of quirky firmware, in ms (0: none).
    pub quirk_every_ms: f64,
    rng: Rng,
    quirk_rng: Rng,
    next_quirk: u64,
    period_ms: f64,
    size: f64,
    diurnal: f64,
    phase: f64,
    updated: bool,
    next_msg: u64,
    next_drop: u64,
    reconnect_at: u64,
    offline_since: u64,
    backlog: u32,
    upload_left: u32,
    next_upload: u64,
    session_end: u64,
    commands_left: u32,
    first_session: bool,
}

impl Device {
    fn new(
        model: Model,
        n: usize,
        group: &str,
        home: IpAddr,
        created_ms: u64,
        rng: Rng,
    ) -> Result<Self, String> {
        let id =
            DeviceId::parse(&format!("{}-{n:04}", model.prefix())).map_err(|e| e.to_string())?;
        let group = GroupName::parse(group).map_err(|e| e.to_string())?;
        let quirk_rng = rng.fork(QUIRK_STREAM);
        let mut d = Self {
            id,
            model,
            group,
            home,
            created_ms,
            paired: Vec::new(),
            conn: None,
            wake_at: created_ms,
            suspended_until: 0,
            expired_until: 0,
            rotate_at: None,
            update_at: None,
            rate_mult: 1.0,
            quirk_every_ms: 0.0,
            rng,
            quirk_rng,
            next_quirk: u64::MAX,
            period_ms: 0.0,
            size: 0.0,
            diurnal: 0.0,
            phase: 0.0,
            updated: false,
            next_msg: created_ms,
            next_drop: u64::MAX,
            reconnect_at: created_ms,
            offline_since: created_ms,
            backlog: 0,
            upload_left: 0,
            next_upload: u64::MAX,
            session_end: 0,
            commands_left: 0,
            first_session: true,
        };
        let r = &mut d.rng;
        d.phase = r.unit();
        match model {
            Model::PeriodicSensor | Model::FlakyDevice => {
                d.period_ms = *r.pick(&[5_000.0, 10_000.0, 15_000.0, 30_000.0, 60_000.0]);
                d.size = r.log_normal(120.0, 0.6).clamp(8.0, 2_000.0);
                d.diurnal = if r.chance(0.3) {
                    r.range(0.1, 0.5)
                } else {
                    0.0
                };
            }
            Model::EventSensor => {
                d.period_ms = r.range(30_000.0, 600_000.0);
                d.size = r.range(20.0, 120.0);
                d.diurnal = r.range(0.5, 0.9);
            }
            Model::Actuator => {
                d.period_ms = r.range(120_000.0, 600_000.0);
                d.size = r.range(30.0, 200.0);
            }
            Model::Gateway => {
                d.period_ms = 60_000.0;
                d.size = r.range(1_024.0, 4_096.0);
                d.diurnal = 0.3;
            }
            Model::BulkUploader => {
                d.period_ms = 60_000.0;
                d.size = r.range(16.0, 64.0) * 1_024.0;
                d.diurnal = 0.0;
            }
            Model::MobileClient => {
                d.period_ms = r.range(2.0, 6.0) * HOUR_MS as f64;
                d.size = r.range(30.0, 80.0);
                d.diurnal = 0.9;
            }
        }
        if matches!(
            model,
            Model::PeriodicSensor | Model::EventSensor | Model::FlakyDevice
        ) && d.quirk_rng.chance(QUIRKY_SHARE)
        {
            d.quirk_every_ms = d.quirk_rng.range(2.0, 24.0) * HOUR_MS as f64;
            d.next_quirk = created_ms + d.quirk_rng.exp(d.quirk_every_ms) as u64;
        }
        Ok(d)
    }

    /// Diurnal factor at `now`: 1 ± amplitude, peaking mid-afternoon (± the device's phase).
    fn day_factor(&self, now: u64) -> f64 {
        let day = (now % DAY_MS) as f64 / DAY_MS as f64;
        let x = std::f64::consts::TAU * (day - 0.375 + 0.1 * (self.phase - 0.5));
        (1.0 + self.diurnal * (-x.cos())).max(0.05)
    }

    fn telemetry_topic(&self) -> String {
        format!("devices/{}/telemetry", self.id)
    }

    fn offline(&mut self, now: u64, delay_ms: u64) {
        self.conn = None;
        self.offline_since = now;
        self.reconnect_at = now + delay_ms;
    }

    /// Takes the device offline now (a scenario or an outage ended its connection).
    pub fn knock_offline(&mut self, now: u64, delay_ms: u64) {
        self.offline(now, delay_ms);
        self.wake_at = self.wake_at.min(self.reconnect_at);
    }

    /// Does what is due at `now`; returns when to wake next.
    pub fn wake(&mut self, now: u64, hub: &mut impl Hub) -> u64 {
        if now < self.created_ms {
            return self.created_ms;
        }
        if now < self.suspended_until {
            return self.suspended_until;
        }
        if let Some(c) = self.conn
            && !hub.is_live(c)
        {
            // Kicked (take-over, server close, outage): the client library retries soon.
            let backoff = self.rng.int(1_000, 5_000);
            self.offline(now, backoff);
        }
        if let Some(at) = self.rotate_at
            && now >= at
        {
            self.rotate_at = None;
            if let Some(c) = self.conn.take() {
                hub.disconnect(now, c, DisconnectCause::Client);
            }
            let delay = self.rng.int(2_000, 10_000);
            self.offline(now, delay);
        }
        if let Some(at) = self.update_at
            && now >= at
        {
            self.update_at = None;
            if let Some(c) = self.conn.take() {
                hub.disconnect(now, c, DisconnectCause::Client);
            }
            self.updated = true;
            self.size *= 1.3;
            let reboot = self.rng.int(30_000, 120_000);
            self.offline(now, reboot);
        }
        if self.model == Model::MobileClient {
            return self.wake_mobile(now, hub);
        }
        let Some(conn) = self.conn else {
            if now < self.reconnect_at {
                return self.reconnect_at;
            }
            self.try_connect(now, hub);
            return if self.conn.is_some() {
                now + 1
            } else {
                self.reconnect_at
            };
        };
        if now >= self.next_quirk {
            // Quirky firmware: a packet the protocol forbids; the hub closes the session
            // and the client library reconnects after its backoff.
            hub.send_malformed(now, conn);
            self.next_quirk = now + self.quirk_rng.exp(self.quirk_every_ms) as u64;
            let backoff = self.quirk_rng.int(1_000, 5_000);
            self.offline(now, backoff);
            return self.reconnect_at;
        }
        if now >= self.next_drop {
            let cause = if self.model == Model::FlakyDevice && self.rng.chance(0.5) {
                DisconnectCause::KeepAliveTimeout
            } else {
                DisconnectCause::ConnectionLost
            };
            hub.disconnect(now, conn, cause);
            let away = if self.model == Model::FlakyDevice {
                self.rng
                    .log_normal(60_000.0, 1.2)
                    .clamp(5_000.0, 1_800_000.0)
            } else {
                self.rng.range(5_000.0, 60_000.0)
            };
            self.offline(now, away as u64);
            return self.reconnect_at;
        }
        if self.backlog > 0 {
            let n = self.backlog.min(FLUSH_PER_S);
            self.backlog -= n;
            let topic = self.telemetry_topic();
            let size = self.size.round() as u32;
            hub.publish(now, conn, &topic, size, n);
            if self.backlog > 0 {
                return (now + 1_000).min(self.next_drop);
            }
        }
        if now >= self.next_msg {
            self.act(now, conn, hub);
        }
        if self.model == Model::BulkUploader && now >= self.next_upload && self.upload_left == 0 {
            self.upload_left = self.rng.log_normal(60.0, 0.6).clamp(5.0, 600.0) as u32;
            let every = self.rng.range(1.0, 6.0) * HOUR_MS as f64;
            self.next_upload = now + every as u64;
        }
        if self.upload_left > 0 {
            let rate = self.rng.int(2, 8) as u32;
            let n = rate.min(self.upload_left);
            self.upload_left -= n;
            let size = (self.size * self.rng.range(0.9, 1.1)) as u32;
            hub.publish(now, conn, &format!("devices/{}/upload", self.id), size, n);
            return (now + 1_000).min(self.next_drop).min(self.next_msg);
        }
        self.next_msg
            .min(self.next_drop)
            .min(self.next_upload)
            .min(self.next_quirk)
    }

    fn try_connect(&mut self, now: u64, hub: &mut impl Hub) {
        if now < self.expired_until {
            hub.fail_handshake(now, self.home, TlsFailure::Expired);
            self.reconnect_at = now + self.rng.int(60_000, 120_000);
            return;
        }
        if self.model == Model::FlakyDevice && self.rng.chance(0.1) {
            // The link dies mid-handshake: the hub times the handshake out.
            hub.stall(now, self.home, Stall::Tls);
            self.reconnect_at = now + 10_000 + self.rng.int(2_000, 20_000);
            return;
        }
        let Some(conn) = hub.connect(now, self.home, &self.id, self.id.as_str()) else {
            self.reconnect_at = now + 30_000;
            return;
        };
        self.conn = Some(conn);
        if self.next_quirk <= now {
            // Due while it was away: the quirk strikes during a session, not at its start.
            self.next_quirk = now + self.quirk_rng.exp(self.quirk_every_ms) as u64;
        }
        match self.model {
            Model::Actuator => hub.subscribe(now, conn, &format!("devices/{}/cmd/#", self.id)),
            Model::Gateway => hub.subscribe(now, conn, "devices/+/telemetry"),
            _ => {}
        }
        if matches!(self.model, Model::PeriodicSensor | Model::FlakyDevice) {
            let missed = now.saturating_sub(self.offline_since) as f64 / self.period_ms;
            self.backlog = (self.backlog + missed as u32).min(BACKLOG_CAP);
        }
        let mean_drop = if self.model == Model::FlakyDevice {
            self.rng.range(20.0, 60.0) * 60_000.0
        } else {
            DAY_MS as f64
        };
        self.next_drop = now + self.rng.exp(mean_drop) as u64;
        if self.model == Model::BulkUploader && self.next_upload == u64::MAX {
            self.next_upload = now + self.rng.int(0, 3 * HOUR_MS);
        }
        self.next_msg = self.next_msg.max(now + self.rng.int(100, 2_000));
    }

    fn act(&mut self, now: u64, conn: u64, hub: &mut impl Hub) {
        let f = self.day_factor(now) * self.rate_mult;
        let jitter = |r: &mut Rng, x: f64| x * r.range(0.95, 1.05);
        match self.model {
            Model::PeriodicSensor | Model::FlakyDevice => {
                let mut size = self.size * self.rng.range(0.85, 1.15);
                if self.rng.chance(0.01) {
                    size *= 5.0;
                }
                hub.publish(now, conn, &self.telemetry_topic(), size as u32, 1);
                if self.updated && self.rng.chance(0.1) {
                    hub.publish(now, conn, &format!("devices/{}/diag", self.id), 200, 1);
                }
                self.next_msg = now + jitter(&mut self.rng, self.period_ms / f) as u64;
            }
            Model::EventSensor => {
                let n = self.rng.int(1, 4) as u32;
                let size = self.size * self.rng.range(0.8, 1.2);
                hub.publish(
                    now,
                    conn,
                    &format!("devices/{}/events", self.id),
                    size as u32,
                    n,
                );
                self.next_msg = now + self.rng.exp(self.period_ms / f).max(200.0) as u64;
            }
            Model::Actuator => {
                hub.publish(
                    now,
                    conn,
                    &format!("devices/{}/state", self.id),
                    self.size as u32,
                    1,
                );
                self.next_msg = now + jitter(&mut self.rng, self.period_ms) as u64;
            }
            Model::Gateway => {
                let size = self.size * self.day_factor(now) * self.rng.range(0.8, 1.2);
                hub.publish(
                    now,
                    conn,
                    &format!("devices/{}/aggregate", self.id),
                    size as u32,
                    1,
                );
                self.next_msg = now + jitter(&mut self.rng, self.period_ms) as u64;
            }
            Model::BulkUploader => {
                hub.publish(now, conn, &format!("devices/{}/status", self.id), 48, 1);
                self.next_msg = now + jitter(&mut self.rng, self.period_ms) as u64;
            }
            Model::MobileClient => {}
        }
    }

    fn wake_mobile(&mut self, now: u64, hub: &mut impl Hub) -> u64 {
        match self.conn {
            None => {
                if now < self.reconnect_at {
                    return self.reconnect_at;
                }
                // A session starts: from home (the site's NAT) or a cellular address.
                let address = if self.rng.chance(0.6) {
                    self.home
                } else {
                    IpAddr::V4(Ipv4Addr::new(
                        100,
                        64 + self.rng.int(0, 63) as u8,
                        self.rng.int(0, 255) as u8,
                        self.rng.int(1, 254) as u8,
                    ))
                };
                let Some(conn) = hub.connect(now, address, &self.id, self.id.as_str()) else {
                    self.reconnect_at = now + 60_000;
                    return self.reconnect_at;
                };
                self.conn = Some(conn);
                hub.subscribe(now, conn, &format!("devices/{}/#", self.id));
                for a in &self.paired {
                    hub.subscribe(now, conn, &format!("devices/{a}/state"));
                }
                let len = self
                    .rng
                    .log_normal(120_000.0, 1.0)
                    .clamp(15_000.0, 1_200_000.0);
                self.session_end = now + len as u64;
                self.commands_left = if self.first_session {
                    // Pairing: the app tries every actuator once.
                    self.paired.len() as u32
                } else {
                    self.rng.int(0, 3) as u32
                };
                self.next_msg = now + self.rng.int(2_000, 20_000);
                self.next_msg.min(self.session_end)
            }
            Some(conn) => {
                if now >= self.session_end {
                    let cause = if self.rng.chance(0.8) {
                        DisconnectCause::Client
                    } else {
                        DisconnectCause::ConnectionLost
                    };
                    hub.disconnect(now, conn, cause);
                    let gap = self
                        .rng
                        .exp(self.period_ms / self.day_factor(now))
                        .max(60_000.0);
                    self.offline(now, gap as u64);
                    return self.reconnect_at;
                }
                if now >= self.next_msg && self.commands_left > 0 && !self.paired.is_empty() {
                    let target = if self.first_session {
                        self.paired[self.commands_left as usize - 1].clone()
                    } else {
                        self.rng.pick(&self.paired).clone()
                    };
                    self.commands_left -= 1;
                    let size = self.size as u32;
                    hub.publish(now, conn, &format!("devices/{target}/cmd/set"), size, 1);
                    self.next_msg = now + self.rng.int(5_000, 60_000);
                }
                if self.commands_left == 0 {
                    self.first_session = false;
                    return self.session_end;
                }
                self.next_msg.min(self.session_end)
            }
        }
    }

    /// Whether it stores and forwards (eligible victims of scenarios that ride a sensor's
    /// connection).
    pub fn is_sensor(&self) -> bool {
        matches!(
            self.model,
            Model::PeriodicSensor | Model::EventSensor | Model::FlakyDevice
        )
    }
}

/// Shares of the base fleet per model.
const MIX: [(Model, f64); 7] = [
    (Model::PeriodicSensor, 0.35),
    (Model::EventSensor, 0.15),
    (Model::Actuator, 0.12),
    (Model::Gateway, 0.03),
    (Model::BulkUploader, 0.05),
    (Model::FlakyDevice, 0.12),
    (Model::MobileClient, 0.18),
];

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Every device, including those that join later (onboarding).
    pub devices: Vec<Device>,
    /// The address most devices share (a large site behind one NAT address).
    pub big_site: IpAddr,
}

impl Fleet {
    /// A fleet of about `n` devices starting at `start_ms`, plus `onboard` devices that join
    /// at `onboard_at` (staggered over an hour).
    pub fn build(
        n: usize,
        start_ms: u64,
        onboard: usize,
        onboard_at: u64,
        rng: &Rng,
    ) -> Result<Self, String> {
        let mut r = rng.fork(0xf1ee7);
        let mut counts: Vec<(Model, usize)> = MIX
            .iter()
            .map(|(m, share)| (*m, ((n as f64) * share).round().max(1.0) as usize))
            .collect();
        let total: usize = counts.iter().map(|(_, c)| c).sum();
        if total > n && counts[0].1 > total - n {
            counts[0].1 -= total - n;
        } else if total < n {
            counts[0].1 += n - total;
        }
        // Onboarded devices: periodic sensors, event sensors and actuators.
        let onboard_mix = [Model::PeriodicSensor, Model::EventSensor, Model::Actuator];
        let mut devices = Vec::new();
        let mut serial = 0usize;
        let mut add = |model: Model, created: u64, r: &mut Rng| -> Result<Device, String> {
            serial += 1;
            let group = match model {
                Model::PeriodicSensor if serial.is_multiple_of(2) => "sensors-a",
                Model::PeriodicSensor => "sensors-b",
                Model::EventSensor => "event-sensors",
                Model::Actuator => "actuators",
                Model::Gateway => "gateways",
                Model::BulkUploader => "uploaders",
                Model::FlakyDevice => "flaky",
                Model::MobileClient => "mobile",
            };
            Device::new(
                model,
                serial,
                group,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                created,
                r.fork(serial as u64),
            )
        };
        for (model, count) in &counts {
            for _ in 0..*count {
                let created = start_ms + r.int(0, 60_000);
                devices.push(add(*model, created, &mut r)?);
            }
        }
        for i in 0..onboard {
            let model = onboard_mix[i % onboard_mix.len()];
            let created = onboard_at + r.int(0, HOUR_MS);
            devices.push(add(model, created, &mut r)?);
        }
        // Sites: one large site behind a single NAT address (a tenth of the fleet, at most
        // 25 devices), the rest in sites of 1 to 6 devices.
        let big_site = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
        let big = (devices.len() / 10).clamp(2, 25);
        let mut order: Vec<usize> = (0..devices.len()).collect();
        for i in (1..order.len()).rev() {
            let j = r.int(0, i as u64) as usize;
            order.swap(i, j);
        }
        let mut site = 1u32;
        let mut left_in_site = 0u64;
        for (k, &i) in order.iter().enumerate() {
            devices[i].home = if k < big {
                big_site
            } else {
                if left_in_site == 0 {
                    site += 1;
                    left_in_site = r.int(1, 6);
                }
                left_in_site -= 1;
                IpAddr::V4(Ipv4Addr::new(
                    10,
                    1 + (site >> 16) as u8,
                    (site >> 8) as u8,
                    site as u8,
                ))
            };
        }
        // Mobile apps pair with one to three actuators of the initial fleet.
        let actuators: Vec<DeviceId> = devices
            .iter()
            .filter(|d| d.model == Model::Actuator && d.created_ms < start_ms + 60_001)
            .map(|d| d.id.clone())
            .collect();
        if !actuators.is_empty() {
            for d in devices
                .iter_mut()
                .filter(|d| d.model == Model::MobileClient)
            {
                let k = r.int(1, 3.min(actuators.len() as u64));
                for _ in 0..k {
                    let a = r.pick(&actuators).clone();
                    if !d.paired.contains(&a) {
                        d.paired.push(a);
                    }
                }
            }
        }
        Ok(Self { devices, big_site })
    }

    /// The policy grants the hub needs for this fleet: gateways read all telemetry, mobile
    /// apps command their paired actuators and read their state.
    pub fn grants(&self) -> Vec<(DeviceId, String)> {
        let mut g = Vec::new();
        for d in &self.devices {
            match d.model {
                Model::Gateway => g.push((d.id.clone(), "devices/+/telemetry".to_owned())),
                Model::MobileClient => {
                    for a in &d.paired {
                        g.push((d.id.clone(), format!("devices/{a}/cmd/#")));
                        g.push((d.id.clone(), format!("devices/{a}/state")));
                    }
                }
                _ => {}
            }
        }
        g
    }
}
