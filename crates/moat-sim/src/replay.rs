//! Accelerated replay: the fleet, the hard negatives and the attacks run in virtual time
//! against a [`ReplayHub`]; one discrete-event loop, one engine, deterministic per seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;

use moat_detect::{DetectConfig, DisconnectCause, GroupName, Output};
use moat_types::DeviceId;
use serde_json::json;

use crate::attack::{Attacker, CANARY, Intensity, Scenario};
use crate::eval::{AlertRecord, HardNegative, Incident};
use crate::fleet::{DAY_MS, Fleet, HOUR_MS, Model};
use crate::hub::{GroupMode, Hub, ReplayHub};
use crate::rng::Rng;

/// Virtual time of the start: 2026-01-01T00:00:00Z, so the diurnal rhythm starts at
/// midnight.
pub const START_MS: u64 = 1_767_225_600_000;
/// Pause after each attack before the next one starts.
pub const COOLDOWN_MS: u64 = 20 * 60_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Benign devices of the initial fleet.
    pub devices: usize,
    /// Simulated days.
    pub days: f64,
    /// Seed.
    pub seed: u64,
    /// Attack scenarios (each at every intensity in `intensities`).
    pub scenarios: Vec<Scenario>,
    /// Intensities.
    pub intensities: Vec<Intensity>,
    /// Whether to inject the hard negatives.
    pub hard_negatives: bool,
    /// Whether events name groups.
    pub groups: GroupMode,
    /// The engine's configuration before the simulation's additions (see [`sim_config`]).
    pub detect: DetectConfig,
}

/// A finished run.
#[derive(Debug)]
pub struct ReplayRun {
    /// `ground_truth.jsonl` lines.
    pub ground_truth: Vec<String>,
    /// `alerts.jsonl` lines (the engine's outputs, alerts and releases, as the hub logs them).
    pub output_lines: Vec<String>,
    /// The alerts, for the evaluator.
    pub alerts: Vec<AlertRecord>,
    /// Incidents.
    pub incidents: Vec<Incident>,
    /// Hard negatives.
    pub hard_negatives: Vec<HardNegative>,
    /// Benign device-days.
    pub device_days: f64,
    /// Device id → model name.
    pub models: HashMap<String, String>,
    /// Benign devices (initial + onboarded).
    pub devices: usize,
    /// Benign device-days per device model.
    pub model_days: BTreeMap<String, f64>,
    /// Engine events fed.
    pub events: u64,
    /// Wall clock.
    pub wall_secs: f64,
}

/// The simulation's additions to the engine configuration, as an operator of this fleet
/// would configure them: the canary identity, and gateways and mobile apps exempt from
/// lateral-movement detection (their policies grant them other devices' topics).
pub fn sim_config(mut cfg: DetectConfig) -> Result<DetectConfig, String> {
    let canary = DeviceId::parse(CANARY).map_err(|e| e.to_string())?;
    if !cfg.deception.canary_devices.contains(&canary) {
        cfg.deception.canary_devices.push(canary);
    }
    for g in ["gateways", "mobile"] {
        let g = GroupName::parse(g).map_err(|e| e.to_string())?;
        if !cfg.topics.lateral_exempt_groups.contains(&g) {
            cfg.topics.lateral_exempt_groups.push(g);
        }
    }
    Ok(cfg)
}

#[derive(Debug, Clone, Copy)]
enum Negative {
    Rotation,
    Restart,
    Update,
    Doubling,
    Outage,
}

/// Runs the replay.
pub fn replay(opts: &ReplayOptions) -> Result<ReplayRun, String> {
    let wall = Instant::now();
    let rng = Rng::new(opts.seed);
    let start = START_MS;
    let total = (opts.days * DAY_MS as f64) as u64;
    let end = start + total;
    let warmup = (total / 5).clamp(90 * 60_000, DAY_MS);
    let onboard = if opts.hard_negatives {
        (opts.devices / 20).max(1)
    } else {
        0
    };
    let frac = |f: f64| start + (total as f64 * f) as u64;
    let mut fleet = Fleet::build(opts.devices, start, onboard, frac(0.55), &rng)?;
    let mut hub = ReplayHub::new(sim_config(opts.detect.clone())?, opts.groups)?;
    for d in &fleet.devices {
        hub.set_group(&d.id, &d.group);
    }
    for (d, f) in fleet.grants() {
        hub.grant(&d, f);
    }

    // Hard negatives.
    let mut negatives: Vec<(u64, Negative)> = Vec::new();
    let mut hard = Vec::new();
    let count =
        |m: &dyn Fn(&crate::fleet::Device) -> bool| fleet.devices.iter().filter(|d| m(d)).count();
    hard.push(HardNegative {
        name: "shared_address".to_owned(),
        start_ms: start,
        end_ms: end,
        devices: count(&|d| d.home == fleet.big_site),
        whole_run: true,
        description: format!(
            "{} devices of all models behind one NAT address for the whole run",
            count(&|d| d.home == fleet.big_site)
        ),
    });
    if opts.hard_negatives {
        let mut add =
            |at: u64, len: u64, kind: Negative, name: &str, devices: usize, what: &str| {
                negatives.push((at, kind));
                hard.push(HardNegative {
                    name: name.to_owned(),
                    start_ms: at,
                    end_ms: at + len,
                    devices,
                    whole_run: false,
                    description: what.to_owned(),
                });
            };
        let all = fleet
            .devices
            .iter()
            .filter(|d| d.created_ms <= start + 60_000)
            .count();
        add(
            frac(0.15),
            3 * HOUR_MS,
            Negative::Rotation,
            "certificate_rotation",
            all,
            "every device reconnects with a new certificate within 30 min; 3 % of them retry with the expired one every 1–2 min for 20–90 min first",
        );
        add(
            frac(0.25),
            HOUR_MS,
            Negative::Restart,
            "mass_reconnect_restart",
            all,
            "hub restart: every session ends (Shutdown); devices reconnect 20 s–2 min later and flush their backlog",
        );
        add(
            frac(0.35),
            2 * HOUR_MS,
            Negative::Update,
            "fleet_update",
            count(&|d| d.group.as_str() == "sensors-b"),
            "firmware update of cohort sensors-b, staged over 1 h: reboot, then a new diag topic and 30 % larger payloads",
        );
        add(
            frac(0.45),
            2 * HOUR_MS,
            Negative::Doubling,
            "rate_doubling",
            count(&|d| d.group.as_str() == "sensors-a"),
            "configuration change: cohort sensors-a publishes twice as often from now on",
        );
        add(
            frac(0.7),
            HOUR_MS,
            Negative::Outage,
            "mass_reconnect_outage",
            all,
            "network outage of 5 min: every session is lost; devices reconnect within 2 min of the link's return and flush up to 5 min of backlog",
        );
        hard.push(HardNegative {
            name: "onboarding".to_owned(),
            start_ms: frac(0.55),
            end_ms: frac(0.55) + 2 * HOUR_MS,
            devices: onboard,
            whole_run: false,
            description: "new periodic sensors, event sensors and actuators join over 1 h"
                .to_owned(),
        });
        negatives.sort_by_key(|n| n.0);
    }

    // Attacks.
    let mut plan: Vec<(Scenario, Intensity)> = Vec::new();
    for s in &opts.scenarios {
        for i in &opts.intensities {
            plan.push((*s, *i));
        }
    }
    let mut r = rng.fork(0xa77a);
    for i in (1..plan.len()).rev() {
        let j = r.int(0, i as u64) as usize;
        plan.swap(i, j);
    }
    let available = total.saturating_sub(warmup + GRACE_TAIL_MS);
    let required: u64 = plan
        .iter()
        .map(|(s, _)| s.duration_ms() + COOLDOWN_MS)
        .sum();
    if required > available {
        return Err(format!(
            "{} attacks need {:.2} days after a warm-up of {:.1} h; run at least {:.2} days or fewer scenarios",
            plan.len(),
            required as f64 / DAY_MS as f64,
            warmup as f64 / HOUR_MS as f64,
            (required + warmup + GRACE_TAIL_MS) as f64 / DAY_MS as f64
        ));
    }
    let spare = if plan.is_empty() {
        0
    } else {
        (available - required) / plan.len() as u64
    };
    let mut victims_pool: Vec<usize> = fleet
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_sensor() && d.created_ms <= start + 60_000)
        .map(|(i, _)| i)
        .collect();
    for i in (1..victims_pool.len()).rev() {
        let j = r.int(0, i as u64) as usize;
        victims_pool.swap(i, j);
    }
    let actuators: Vec<DeviceId> = fleet
        .devices
        .iter()
        .filter(|d| d.model == Model::Actuator && d.created_ms <= start + 60_000)
        .map(|d| d.id.clone())
        .collect();
    let mut attackers = Vec::new();
    let mut incidents = Vec::new();
    let mut t = start + warmup;
    for (k, (scenario, intensity)) in plan.iter().enumerate() {
        let victim = if scenario.needs_victim() {
            Some(
                victims_pool
                    .pop()
                    .ok_or("not enough devices for one victim per attack; use more --devices")?,
            )
        } else {
            None
        };
        let targets: Vec<DeviceId> = match scenario {
            Scenario::CommandInjection => actuators.clone(),
            Scenario::LateralMovement => fleet
                .devices
                .iter()
                .enumerate()
                .filter(|(i, d)| Some(*i) != victim && d.is_sensor())
                .take(40)
                .map(|(_, d)| d.id.clone())
                .collect(),
            _ => Vec::new(),
        };
        let a = Attacker::new(
            *scenario,
            *intensity,
            t,
            victim,
            k as u8,
            targets,
            r.fork(k as u64),
        );
        let mut devices: Vec<String> = victim
            .map(|v| fleet.devices[v].id.to_string())
            .into_iter()
            .collect();
        if *scenario == Scenario::CanaryIdentity {
            devices.push(CANARY.to_owned());
        }
        incidents.push(Incident {
            id: k,
            scenario: *scenario,
            intensity: *intensity,
            start_ms: a.start_ms,
            end_ms: a.end_ms,
            devices,
            // Address-scoped alerts (refused CONNECTs of a compromised identity) name the
            // victim's site address; device alerts still match by device only.
            addresses: a
                .address
                .into_iter()
                .chain(victim.map(|v| fleet.devices[v].home))
                .collect(),
            description: scenario.describe(*intensity),
        });
        t += scenario.duration_ms() + COOLDOWN_MS + spare;
        attackers.push(a);
    }

    // The loop.
    let n_dev = fleet.devices.len();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for (i, d) in fleet.devices.iter().enumerate() {
        heap.push(Reverse((d.wake_at, i)));
    }
    for (k, a) in attackers.iter().enumerate() {
        heap.push(Reverse((a.wake_at, n_dev + k)));
    }
    let mut output_lines = Vec::new();
    let mut alerts = Vec::new();
    let collateral_ms = opts.detect.responses.collateral_window_secs * 1000;
    let mut drain = |hub: &mut ReplayHub| {
        for s in hub.take_outputs() {
            output_lines.push(serde_json::to_string(&s.output).unwrap_or_default());
            if let Output::Alert(a) = &s.output {
                let hits = a
                    .address
                    .map(|x| hub.devices_at(x, a.time_ms.saturating_sub(collateral_ms)))
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                alerts.push(AlertRecord::from_alert(a, s.decision_ns, hits));
            }
        }
    };
    let mut boundary = start + 1_000;
    let mut next_negative = 0;
    let mut nr = rng.fork(0x4e47);
    loop {
        let t_heap = heap.peek().map_or(u64::MAX, |r| r.0.0);
        let t_neg = negatives.get(next_negative).map_or(u64::MAX, |n| n.0);
        let t = t_heap.min(t_neg);
        while boundary <= t.min(end) {
            hub.second(boundary);
            drain(&mut hub);
            boundary += 1_000;
        }
        if t > end {
            break;
        }
        hub.advance(t);
        if t_neg <= t_heap {
            let kind = negatives[next_negative].1;
            next_negative += 1;
            apply_negative(kind, t, &mut fleet, &mut hub, &mut nr);
            for (i, d) in fleet.devices.iter().enumerate() {
                heap.push(Reverse((d.wake_at, i)));
            }
            drain(&mut hub);
            continue;
        }
        let Some(Reverse((t, idx))) = heap.pop() else {
            break;
        };
        if idx < n_dev {
            let d = &mut fleet.devices[idx];
            if d.wake_at != t {
                continue;
            }
            d.wake_at = u64::MAX;
            let next = d.wake(t, &mut hub).max(t + 1);
            d.wake_at = next;
            heap.push(Reverse((next, idx)));
        } else {
            let a = &mut attackers[idx - n_dev];
            if a.wake_at != t {
                continue;
            }
            a.wake_at = u64::MAX;
            if let Some(next) = a.wake(t, &mut hub, &mut fleet.devices) {
                a.wake_at = next;
                heap.push(Reverse((next, idx)));
            }
            if let Some(v) = a.victim {
                let d = &mut fleet.devices[v];
                // A session the hub closed (take-over, protocol error) is noticed at once
                // by the device's client library.
                if d.conn.is_some_and(|c| !hub.is_live(c)) && d.wake_at > t + 1 {
                    d.wake_at = t + 1;
                }
                if d.wake_at != u64::MAX {
                    heap.push(Reverse((d.wake_at, v)));
                }
            }
        }
        drain(&mut hub);
    }
    drain(&mut hub);

    let mut device_days = 0.0;
    let mut model_days: BTreeMap<String, f64> = BTreeMap::new();
    let mut models = HashMap::new();
    let mut ground_truth = vec![json!({
        "kind": "run", "seed": opts.seed, "devices": opts.devices, "days": opts.days,
        "start_ms": start, "end_ms": end, "warmup_ms": warmup,
        "groups": match opts.groups { GroupMode::Assigned => "assigned", GroupMode::None => "none" },
        "hard_negatives": opts.hard_negatives,
    })
    .to_string()];
    for d in &fleet.devices {
        if d.created_ms < end {
            let days = (end - d.created_ms.max(start)) as f64 / DAY_MS as f64;
            device_days += days;
            *model_days.entry(d.model.as_str().to_owned()).or_default() += days;
        }
        models.insert(d.id.to_string(), d.model.as_str().to_owned());
        ground_truth.push(
            json!({
                "kind": "device", "id": d.id.as_str(), "model": d.model, "group": d.group.as_str(),
                "home": d.home, "created_ms": d.created_ms,
                "quirky_firmware": d.quirk_every_ms > 0.0,
                "paired": d.paired.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    for h in &hard {
        ground_truth.push(json!({"kind": "hard_negative", "negative": h}).to_string());
    }
    for i in &incidents {
        ground_truth.push(json!({"kind": "incident", "incident": i}).to_string());
    }
    Ok(ReplayRun {
        ground_truth,
        output_lines,
        alerts,
        incidents,
        hard_negatives: hard,
        device_days,
        models,
        devices: fleet.devices.len(),
        model_days,
        events: hub.events_fed(),
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

/// Time kept free at the end of a run so the last attack's late alerts are seen.
const GRACE_TAIL_MS: u64 = 30 * 60_000;

fn apply_negative(kind: Negative, now: u64, fleet: &mut Fleet, hub: &mut ReplayHub, r: &mut Rng) {
    match kind {
        Negative::Rotation => {
            for d in fleet.devices.iter_mut().filter(|d| d.created_ms <= now) {
                let at = now + r.int(0, 30 * 60_000);
                d.rotate_at = Some(at);
                if d.model != Model::MobileClient && r.chance(0.03) {
                    d.expired_until = at + r.int(20 * 60_000, 90 * 60_000);
                }
                d.wake_at = d.wake_at.min(at);
            }
        }
        Negative::Restart | Negative::Outage => {
            let (cause, away) = match kind {
                Negative::Restart => (DisconnectCause::Shutdown, 20_000),
                _ => (DisconnectCause::ConnectionLost, 300_000),
            };
            hub.drop_all(now, cause);
            for d in fleet.devices.iter_mut().filter(|d| d.conn.is_some()) {
                let delay = away + r.int(0, 120_000);
                d.knock_offline(now, delay);
            }
        }
        Negative::Update => {
            for d in fleet
                .devices
                .iter_mut()
                .filter(|d| d.group.as_str() == "sensors-b" && d.created_ms <= now)
            {
                let at = now + r.int(0, HOUR_MS);
                d.update_at = Some(at);
                d.wake_at = d.wake_at.min(at);
            }
        }
        Negative::Doubling => {
            for d in fleet
                .devices
                .iter_mut()
                .filter(|d| d.group.as_str() == "sensors-a")
            {
                d.rate_mult = 2.0;
            }
        }
    }
}
