//! The `detect` scenario: moat-detect alone, no broker. A synthetic fleet's event stream (the
//! per-connection traffic summaries and connection events the hub would feed) runs through
//! one `Engine` on one thread in virtual time, with the hard negatives of issue 4 mixed in
//! (mass reconnect after an outage, a fleet update, a cohort doubling its rate, onboarding,
//! certificate rotation, devices sharing NAT addresses) and a handful of loud attacks near
//! the end. Prints events per second, state bytes per device, alerts per device-day on the
//! benign devices, and detection latency of the attacks.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use moat_detect::{
    DetectConfig, DisconnectCause, Engine, Event, EventKind, GroupName, Output, Side, Source,
    TlsFailure, TrafficSummary,
};
use moat_types::{ClientId, DeviceId, TopicName};

/// Sizes of the detect scenario.
#[derive(Clone, Debug)]
pub struct DetectSettings {
    /// Devices in the fleet.
    pub devices: usize,
    /// Virtual seconds to simulate.
    pub seconds: u64,
}

struct Device {
    id: DeviceId,
    client: ClientId,
    group: usize,
    address: IpAddr,
    connection: u64,
    telemetry: TopicName,
    period: u64,
    msgs: u32,
    size: u32,
    phase: u64,
    rate_factor: u32,
    burst_until: u64,
    attacker: bool,
}

/// xorshift64*: deterministic, cheap.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Run {
    engine: Engine,
    out: Vec<Output>,
    events: u64,
    engine_time: Duration,
    next_connection: u64,
}

impl Run {
    fn feed(&mut self, time_ms: u64, d: &Device, groups: &[GroupName], kind: EventKind<'_>) {
        let ev = Event {
            time_ms,
            source: Source {
                connection: d.connection,
                address: d.address,
                device: Some(&d.id),
                client: Some(&d.client),
                group: Some(&groups[d.group]),
            },
            kind,
        };
        self.events += 1;
        self.engine.observe(&ev, &mut self.out);
    }

    fn connect(&mut self, now: u64, d: &mut Device, groups: &[GroupName]) {
        d.connection = self.next_connection;
        self.next_connection += 1;
        self.feed(now, d, groups, EventKind::ConnectAccepted);
        self.feed(
            now,
            d,
            groups,
            EventKind::FirstTopic {
                topic: &d.telemetry,
                side: Side::Publish,
            },
        );
    }

    fn disconnect(&mut self, now: u64, d: &Device, groups: &[GroupName], cause: DisconnectCause) {
        self.feed(
            now,
            d,
            groups,
            EventKind::Disconnected {
                cause,
                connected_ms: 60_000,
            },
        );
    }
}

/// Runs the scenario and prints its figures.
pub fn run(settings: &DetectSettings) -> Result<(), String> {
    let n = settings.devices.max(10);
    let seconds = settings.seconds.max(60);
    let group_count = (n / 1000).clamp(5, 1000);
    let groups: Vec<GroupName> = (0..group_count)
        .map(|g| GroupName::parse(&format!("g{g}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut devices: Vec<Device> = Vec::with_capacity(n + n / 100);
    let make = |i: usize, rng: &mut Rng| -> Result<Device, String> {
        let id = DeviceId::parse(&format!("dev-{i:07}")).map_err(|e| e.to_string())?;
        // One device in five sits behind a NAT address shared by eight.
        let address = if i.is_multiple_of(5) {
            IpAddr::V4(Ipv4Addr::from(0x6400_0000 + (i / 40) as u32))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32))
        };
        Ok(Device {
            client: ClientId::parse(&format!("c-{i}")).map_err(|e| e.to_string())?,
            telemetry: TopicName::parse(&format!("devices/{id}/telemetry"))
                .map_err(|e| e.to_string())?,
            id,
            group: i % group_count,
            address,
            connection: 0,
            period: [1, 1, 5, 10, 30][rng.below(5) as usize],
            msgs: 1 + rng.below(3) as u32,
            size: 32 + rng.below(1500) as u32,
            phase: rng.below(30),
            rate_factor: 1,
            burst_until: 0,
            attacker: false,
        })
    };
    for i in 0..n {
        devices.push(make(i, &mut rng)?);
    }

    let mut run = Run {
        engine: Engine::new(DetectConfig::default()).map_err(|e| format!("{e:?}"))?,
        out: Vec::new(),
        events: 0,
        engine_time: Duration::ZERO,
        next_connection: 1,
    };
    let t0: u64 = 1_700_000_000_000;
    let started = Instant::now();
    let cpu_started = crate::procfs::own_cpu_time()?;
    for d in devices.iter_mut() {
        run.connect(t0, d, &groups);
    }

    let outage_at = seconds / 4;
    let update_at = seconds * 2 / 5;
    let doubling_at = seconds / 2;
    let onboarding_at = seconds * 3 / 5;
    let rotation_at = seconds * 7 / 10;
    let attack_at = seconds * 9 / 10;
    let attackers = 10.min(n / 10);
    let mut offline: Vec<usize> = Vec::new();
    let mut returning: Vec<(u64, usize)> = Vec::new();
    let mut attack_latency_ms: Vec<u64> = Vec::new();
    let mut detected = vec![false; attackers];
    let mut attack_ids: Vec<usize> = Vec::with_capacity(attackers);

    for s in 1..=seconds {
        let now = t0 + s * 1000;
        // Hard negative: group 0 loses connectivity for 20 s, then reconnects with backoff.
        if s == outage_at {
            for (i, d) in devices.iter_mut().enumerate() {
                if d.group == 0 && d.connection != 0 {
                    run.disconnect(now, d, &groups, DisconnectCause::ConnectionLost);
                    d.connection = 0;
                    offline.push(i);
                }
            }
        }
        if s > outage_at + 20 && s <= outage_at + 50 && !offline.is_empty() {
            let batch = offline.len().div_ceil((outage_at + 51 - s) as usize);
            for i in offline.drain(..batch) {
                let d = &mut devices[i];
                if i.is_multiple_of(3) {
                    // The first try times out while everyone reconnects.
                    run.feed(now, d, &groups, EventKind::HandshakeTimeout);
                }
                run.connect(now, d, &groups);
                // Store-and-forward flush of what was buffered while away.
                let backlog = (30 * d.msgs as u64 / d.period) as u32;
                let summary = summary(backlog.max(1), d.size, 0);
                run.feed(now, d, &groups, EventKind::Traffic(summary));
            }
        }
        // Hard negative: group 1 takes a firmware update (download, reboot, a new topic).
        if s == update_at {
            for d in devices
                .iter_mut()
                .filter(|d| d.group == 1 && d.connection != 0)
            {
                let mut s = summary(0, 0, 0);
                s.msgs_delivered = 50;
                s.bytes_delivered = 50 * 4096;
                run.feed(now, d, &groups, EventKind::Traffic(s));
                run.disconnect(now, d, &groups, DisconnectCause::Client);
                run.connect(now + 500, d, &groups);
                if let Ok(t) = TopicName::parse(&format!("devices/{}/fw/status", d.id)) {
                    run.feed(
                        now + 500,
                        d,
                        &groups,
                        EventKind::FirstTopic {
                            topic: &t,
                            side: Side::Publish,
                        },
                    );
                }
            }
        }
        // Hard negative: a configuration change doubles group 2's rate.
        if s == doubling_at {
            for d in devices.iter_mut().filter(|d| d.group == 2) {
                d.rate_factor = 2;
            }
        }
        // Hard negative: 1 % more devices are onboarded into group 3.
        if s == onboarding_at {
            for k in 0..n / 100 {
                let mut d = make(n + k, &mut rng)?;
                d.group = 3;
                run.connect(now, &mut d, &groups);
                devices.push(d);
            }
        }
        // Hard negative: group 4 rotates certificates (some try the old one first).
        if s == rotation_at {
            for (i, d) in devices
                .iter_mut()
                .enumerate()
                .filter(|(_, d)| d.group == 4 && d.connection != 0)
            {
                run.disconnect(now, d, &groups, DisconnectCause::Client);
                if i.is_multiple_of(20) {
                    run.feed(
                        now,
                        d,
                        &groups,
                        EventKind::TlsHandshakeFailed {
                            reason: TlsFailure::Expired,
                        },
                    );
                }
                run.connect(now + 200, d, &groups);
            }
        }
        // Loud attacks: half flood, half are cloned from another address.
        if s == attack_at {
            for k in 0..attackers {
                // A connected device, so that the attack starts now.
                let mut i = 7 + k * (n / attackers.max(1));
                while devices[i].connection == 0 {
                    i = (i + 1) % devices.len();
                }
                attack_ids.push(i);
                devices[i].attacker = true;
                if k % 2 == 1 {
                    let mut clone = make(i, &mut rng)?;
                    clone.address = IpAddr::V4(Ipv4Addr::new(203, 0, 113, k as u8));
                    // The original must have been active within the last seconds.
                    let d = &devices[i];
                    let s = summary(d.msgs, d.size, 0);
                    run.feed(now - 500, d, &groups, EventKind::Traffic(s));
                    run.connect(now, &mut clone, &groups);
                }
            }
        }

        // Background churn: about one device in 20,000 per second loses its connection and
        // comes back 5 to 60 s later (from a new address one time in ten: roaming).
        for _ in 0..(devices.len() / 20_000).max(1) {
            let i = rng.below(devices.len() as u64) as usize;
            let d = &mut devices[i];
            if d.connection != 0 && !d.attacker && d.group != 0 {
                run.disconnect(now, d, &groups, DisconnectCause::KeepAliveTimeout);
                d.connection = 0;
                returning.push((now + 5_000 + rng.below(55_000), i));
            }
        }
        let mut k = 0;
        while k < returning.len() {
            if returning[k].0 <= now {
                let (_, i) = returning.swap_remove(k);
                let d = &mut devices[i];
                if rng.below(10) == 0 && !i.is_multiple_of(5) {
                    d.address = IpAddr::V4(Ipv4Addr::from(0xac10_0000 + rng.below(1 << 20) as u32));
                }
                run.connect(now, d, &groups);
            } else {
                k += 1;
            }
        }

        let tick_started = Instant::now();
        for d in devices.iter_mut() {
            if d.connection == 0 {
                continue;
            }
            // Event-driven bursts: about once an hour a device sends 5× for a few seconds.
            if d.burst_until < s && rng.below(3_600) == 0 {
                d.burst_until = s + 1 + rng.below(5);
            }
            let burst = if d.burst_until >= s { 5 } else { 1 };
            let sends = (s + d.phase).is_multiple_of(d.period) || burst > 1;
            let flooding = d.attacker && s >= attack_at;
            let msgs = if flooding {
                2_000
            } else if sends {
                d.msgs * d.rate_factor * burst + (rng.below(4) == 0) as u32
            } else {
                0
            };
            // Idle seconds are not reported (the hub skips empty summaries), but a
            // keep-alive summary goes out every 10 s.
            if msgs == 0 && !(s + d.phase).is_multiple_of(10) {
                continue;
            }
            let size = d.size + rng.below(16) as u32;
            let d = &*d;
            run.feed(now, d, &groups, EventKind::Traffic(summary(msgs, size, 1)));
        }
        run.engine.tick(now, &mut run.out);
        run.engine_time += tick_started.elapsed();

        if s >= attack_at {
            for a in run.out.iter().filter_map(Output::as_alert) {
                for (seen, &i) in detected.iter_mut().zip(&attack_ids) {
                    if !*seen && a.device.as_ref() == Some(&devices[i].id) {
                        *seen = true;
                        attack_latency_ms.push(a.time_ms.saturating_sub(t0 + attack_at * 1000));
                    }
                }
            }
        }
        // Keep only what the report needs.
        run.out.retain(|o| o.as_alert().is_some());
    }
    let wall = started.elapsed();
    let cpu = crate::procfs::own_cpu_time()?.saturating_sub(cpu_started);

    let benign_alerts: Vec<_> = run
        .out
        .iter()
        .filter_map(Output::as_alert)
        .filter(|a| {
            !a.device
                .as_ref()
                .is_some_and(|id| devices.iter().any(|d| d.attacker && &d.id == id))
                && a.time_ms < t0 + attack_at * 1000
                || a.device.is_none()
        })
        .collect();
    let mitigations = benign_alerts
        .iter()
        .filter(|a| a.response != moat_detect::Response::Alert)
        .count();
    let device_days = devices.len() as f64 * seconds as f64 / 86_400.0;
    let state = run.engine.state_bytes();
    attack_latency_ms.sort_unstable();
    let p95 = attack_latency_ms
        .get(
            (attack_latency_ms.len() * 95)
                .div_ceil(100)
                .saturating_sub(1),
        )
        .copied();

    println!(
        "detect: {} devices, {seconds} virtual seconds ({device_days:.1} device-days), one thread",
        devices.len()
    );
    println!("  events fed                  {}", run.events);
    println!(
        "  events/s in the main loop   {:.0} (observe + tick + generating traffic summaries, {:.2} s)",
        run.events as f64 / run.engine_time.as_secs_f64(),
        run.engine_time.as_secs_f64()
    );
    println!(
        "  end-to-end events/s         {:.0} (including event generation, {:.2} s)",
        run.events as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "  events per CPU-second       {:.0} (process CPU time {:.2} s; immune to a shared machine)",
        run.events as f64 / cpu.as_secs_f64(),
        cpu.as_secs_f64()
    );
    println!(
        "  state                       {} bytes, {:.0} bytes per device ({} devices tracked; device entry {} bytes)",
        state,
        state as f64 / run.engine.device_count().max(1) as f64,
        run.engine.device_count(),
        Engine::device_entry_bytes()
    );
    println!(
        "  benign alerts               {} ({:.4} per device-day), automatic mitigations {}",
        benign_alerts.len(),
        benign_alerts.len() as f64 / device_days,
        mitigations
    );
    for a in benign_alerts.iter().take(5) {
        println!(
            "    {} {:?} {:?} {:?}: {:?}",
            a.detector.as_str(),
            a.severity,
            a.device,
            a.address,
            a.explanation.evidence
        );
    }
    println!(
        "  attacks detected            {}/{attackers}, latency p95 {} ms, max {} ms (from the first event showing the attack; add the hub's 1 s summary period)",
        attack_latency_ms.len(),
        p95.map_or("-".to_owned(), |v| v.to_string()),
        attack_latency_ms
            .last()
            .map_or("-".to_owned(), |v| v.to_string())
    );
    println!("  engine stats                {:?}", run.engine.stats());
    Ok(())
}

fn summary(msgs: u32, size: u32, delivered: u32) -> TrafficSummary {
    let mut h = [0u32; moat_detect::SIZE_BUCKETS];
    h[TrafficSummary::bucket(size as usize)] = msgs;
    TrafficSummary {
        interval_ms: 1000,
        msgs_published: msgs,
        bytes_published: u64::from(msgs) * u64::from(size),
        msgs_delivered: delivered,
        bytes_delivered: u64::from(delivered) * 64,
        held_ms: 0,
        size_histogram: h,
        max_payload: if msgs > 0 { size } else { 0 },
    }
}
