//! Live mode: the replay's fleet and attackers drive a real hub over mutual-TLS MQTT on
//! loopback, in wall-clock time; the hub's own detection decides, and the simulator scores
//! what it decided and what the clients felt.
//!
//! Steps: provision the fleet on the hub with the `moat` CLI ([`provision`]); open an alert
//! reader on `$moat/alerts/#`; run the device models ([`crate::fleet`]) and the attackers
//! ([`crate::attack`]) through [`hub::LiveHub`] (attackers from `127.0.0.10 + k`, benign
//! sites from `127.a.b.c`); after a tail, read the alerts (the MQTT sink, reconciled with
//! `moat alerts list --json`), match them to the ground truth with the replay's evaluator
//! ([`crate::eval`]), and measure how long each mitigation took to reach the attacker's
//! live session from the effects the clients recorded ([`client::Effect`]).
//!
//! Trust boundary: the hub's answers and alert messages are parsed defensively (a field
//! that does not parse drops that alert, counted); everything the simulator keeps is
//! bounded (see the limits in [`client`]).

pub mod client;
pub mod hub;
pub mod provision;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_detect::{DetectConfig, Detector, Rung, Severity};
use moat_types::DeviceId;
use serde_json::{Value, json};

use crate::attack::{Attacker, CANARY, Intensity, Scenario};
use crate::eval::{AlertRecord, HardNegative, Incident, Report, percentile};
use crate::fleet::{DAY_MS, Fleet, Model};
use crate::hub::Hub as _;
use crate::rng::Rng;
use client::{Effect, EffectKind, Shared, now_ms};
use hub::{LiveHub, loopback};
use provision::{ALERT_READER_POLICY, Cli, grant_policy, run_parallel};

/// The identity that reads `$moat/alerts/#`.
pub const ALERT_READER: &str = "moat-sim-alerts";
/// The policy granting it.
pub const ALERT_READER_POLICY_NAME: &str = "moat-sim-alert-reader";
/// Longest wait for the alert reader's subscription to be granted.
pub const READER_DEADLINE: Duration = Duration::from_secs(15);
/// How often the driver checks for sessions the hub closed (clients notice at once).
pub const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// A stalled connection the hub closes faster than this was refused at once (a ban), not
/// cut at its handshake deadline.
pub const STALL_REFUSED_MS: u64 = 1_000;
/// An effect counts as a mitigation reaching the session only this soon after the alert
/// (the probes run for 1.3 s after it arrives).
pub const EFFECT_WINDOW: Duration = Duration::from_secs(5);
/// Most devices a live run provisions.
pub const MAX_LIVE_DEVICES: usize = 5_000;
/// Alerts read back with `moat alerts list --json` (the API's page limit).
pub const LIST_LIMIT: usize = 1_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The hub's MQTT over mutual TLS listener.
    pub hub: SocketAddr,
    /// The hub's data directory (for the `moat` CLI on this machine).
    pub data_dir: PathBuf,
    /// The `moat` executable.
    pub moat: PathBuf,
    /// Benign devices.
    pub devices: usize,
    /// Seed.
    pub seed: u64,
    /// Attack scenarios (each at every intensity in `intensities`).
    pub scenarios: Vec<Scenario>,
    /// Intensities.
    pub intensities: Vec<Intensity>,
    /// Benign traffic before the first attack.
    pub warmup: Duration,
    /// Devices join over this long from the start (the rest at once).
    pub ramp: Duration,
    /// Length of each attack (the replay's durations are minutes to hours; live runs
    /// shorten them all to this).
    pub attack: Duration,
    /// Calm between attacks; with `concurrent`, the time between their starts.
    pub gap: Duration,
    /// Attacks overlap: each starts `gap` after the previous one started (they have
    /// different victims and addresses, so alerts still match one incident each).
    pub concurrent: bool,
    /// Benign traffic after the last attack, and the wait for late alerts.
    pub tail: Duration,
    /// How long after an incident's end an alert still counts for it.
    pub grace: Duration,
    /// Output directory (certificates go to `certs/` under it).
    pub out: PathBuf,
}

/// A finished live run.
#[derive(Debug)]
pub struct LiveRun {
    /// `ground_truth.jsonl` lines.
    pub ground_truth: Vec<String>,
    /// `alerts.jsonl` lines: the hub's alerts as received.
    pub alert_lines: Vec<String>,
    /// The alerts, for the evaluator.
    pub alerts: Vec<AlertRecord>,
    /// Incidents.
    pub incidents: Vec<Incident>,
    /// Hard negatives (the shared address, for the whole run).
    pub hard_negatives: Vec<HardNegative>,
    /// Benign device-days (wall time).
    pub device_days: f64,
    /// Device id → model.
    pub models: HashMap<String, String>,
    /// Benign devices.
    pub devices: usize,
    /// Benign device-days per model.
    pub model_days: BTreeMap<String, f64>,
    /// What the clients saw.
    pub effects: Vec<Effect>,
    /// Messages published and received by the simulated clients.
    pub published: u64,
    /// Messages received.
    pub received: u64,
    /// Sessions opened.
    pub sessions: u64,
    /// Alerts that arrived on the MQTT sink, and how many only the API listed.
    pub sink_alerts: usize,
    /// Alerts only `moat alerts list` returned (the sink is QoS 0).
    pub api_only_alerts: usize,
    /// Commands dropped by full connection queues.
    pub dropped_commands: u64,
    /// Wall-clock seconds of the run (provisioning excluded).
    pub wall_secs: f64,
    /// Wall-clock seconds of provisioning.
    pub provision_secs: f64,
    /// The benign devices' identities.
    pub benign: HashSet<String>,
    /// The incidents' grace, ms.
    pub grace_ms: u64,
}

/// Runs the live simulation (its own tokio runtime).
pub fn live(opts: &LiveOptions) -> Result<LiveRun, String> {
    if opts.devices == 0 || opts.devices > MAX_LIVE_DEVICES {
        return Err(format!("--devices must be 1 to {MAX_LIVE_DEVICES}"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run(opts))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn run(opts: &LiveOptions) -> Result<LiveRun, String> {
    let rng = Rng::new(opts.seed);
    let ramp = ms(opts.ramp).min(60_000);
    let t_build = now_ms();
    // Fleet::build spreads joins over 60 s from its start: starting it in the past makes
    // all but `ramp` of them join at once.
    let mut fleet = Fleet::build(opts.devices, t_build + ramp - 60_000, 0, u64::MAX / 2, &rng)?;
    for d in &mut fleet.devices {
        d.home = loopback(d.home);
    }
    fleet.big_site = loopback(fleet.big_site);

    // Provisioning.
    let t_prov = Instant::now();
    let certs = opts.out.join("certs");
    std::fs::create_dir_all(&certs).map_err(|e| format!("{}: {e}", certs.display()))?;
    let cli = Cli {
        moat: opts.moat.clone(),
        data_dir: opts.data_dir.clone(),
    };
    let scratch = opts.out.join("policies");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let certs_s = certs.display().to_string();
    let fleet_grants = fleet.grants();
    let mut by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (d, f) in &fleet_grants {
        by_device.entry(d.to_string()).or_default().push(f.clone());
    }
    let provision = {
        let cli = cli.clone();
        let fleet_devs: Vec<(String, String, Model)> = fleet
            .devices
            .iter()
            .map(|d| (d.id.to_string(), d.group.to_string(), d.model))
            .collect();
        let by_device = by_device.clone();
        let scratch = scratch.clone();
        let certs_s = certs_s.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            cli.put_policy(ALERT_READER_POLICY_NAME, ALERT_READER_POLICY, &scratch)?;
            let mut groups: Vec<&str> = fleet_devs.iter().map(|d| d.1.as_str()).collect();
            groups.sort_unstable();
            groups.dedup();
            for g in groups {
                cli.run(&["group", "put", g, "--policy", "namespace"])?;
            }
            let mut calls = Vec::new();
            for (id, group, _) in &fleet_devs {
                let mut set = vec![
                    "device".to_owned(),
                    "set".to_owned(),
                    id.clone(),
                    "--reset".to_owned(),
                    "--group".to_owned(),
                    group.clone(),
                ];
                if let Some(grants) = by_device.get(id) {
                    let name = format!("moat-sim-{id}");
                    cli.put_policy(&name, &grant_policy(grants), &scratch)?;
                    set.extend(["--policy".to_owned(), name]);
                }
                calls.push(vec![add_args(id, &certs_s), set]);
            }
            calls.push(vec![add_args(CANARY, &certs_s)]);
            calls.push(vec![
                add_args(ALERT_READER, &certs_s),
                vec![
                    "device".to_owned(),
                    "set".to_owned(),
                    ALERT_READER.to_owned(),
                    "--reset".to_owned(),
                    "--policy".to_owned(),
                    ALERT_READER_POLICY_NAME.to_owned(),
                ],
            ]);
            run_parallel(&cli, calls)
        })
    };
    provision
        .await
        .map_err(|e| format!("provisioning task: {e}"))??;
    let provision_secs = t_prov.elapsed().as_secs_f64();

    // TLS configurations.
    let ca = certs.join("ca.crt");
    let mut creds = HashMap::new();
    let identities: Vec<String> = fleet
        .devices
        .iter()
        .map(|d| d.id.to_string())
        .chain([CANARY.to_owned(), ALERT_READER.to_owned()])
        .collect();
    for id in &identities {
        let cfg = client::tls_config(
            &ca,
            Some((
                &certs.join(format!("{id}.crt")),
                &certs.join(format!("{id}.key")),
            )),
        )?;
        creds.insert(id.clone(), cfg);
    }
    let anonymous = client::tls_config(&ca, None)?;
    let self_signed =
        client::tls_config_der(&ca, Some(client::untrusted_identity("intruder", false)?))?;
    let forged_cn = fleet
        .devices
        .first()
        .map_or("device".to_owned(), |d| d.id.to_string());
    let forged = client::tls_config_der(&ca, Some(client::untrusted_identity(&forged_cn, true)?))?;
    let shared = Arc::new(Shared::default());
    let mut hub = LiveHub::new(
        opts.hub,
        Arc::clone(&shared),
        creds,
        anonymous,
        self_signed,
        forged,
    );
    for (d, f) in fleet_grants {
        hub.grant(&d, f);
    }

    // The alert reader, subscribed before anything else happens.
    let reader_addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let reader = hub
        .open(reader_addr, ALERT_READER, ALERT_READER, true)
        .ok_or("no credentials for the alert reader")?;
    hub.subscribe_raw(reader, "$moat/alerts/#");
    let deadline = Instant::now() + READER_DEADLINE;
    loop {
        let effects = shared.effects();
        let mine = effects.iter().filter(|e| e.conn == reader);
        let mut done = false;
        for e in mine {
            match &e.kind {
                EffectKind::Subscribed { .. } => done = true,
                EffectKind::Accepted => {}
                other => {
                    return Err(format!(
                        "the alert reader {ALERT_READER} could not subscribe to $moat/alerts/#: {other:?} (does its policy {ALERT_READER_POLICY_NAME} grant it?)"
                    ));
                }
            }
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the alert reader got no SUBACK within {READER_DEADLINE:?}; is the hub at {} up?",
                opts.hub
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The plan: attacks one after another after the warm-up.
    let t0 = now_ms();
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
    let mut victims_pool: Vec<usize> = fleet
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_sensor())
        .map(|(i, _)| i)
        .collect();
    for i in (1..victims_pool.len()).rev() {
        let j = r.int(0, i as u64) as usize;
        victims_pool.swap(i, j);
    }
    let actuators: Vec<DeviceId> = fleet
        .devices
        .iter()
        .filter(|d| d.model == Model::Actuator)
        .map(|d| d.id.clone())
        .collect();
    let mut attackers = Vec::new();
    let mut incidents = Vec::new();
    let attack_ms = ms(opts.attack).max(1_000);
    let mut t = t0 + ms(opts.warmup);
    let mut last_end = t;
    for (k, (scenario, intensity)) in plan.iter().enumerate() {
        let victim = if scenario.needs_victim() {
            Some(victims_pool.pop().ok_or(
                "not enough sensors for one victim per attack; use more --devices or fewer scenarios",
            )?)
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
        let index = u8::try_from(k).map_err(|_| "at most 245 attacks in one live run")?;
        let mut a = Attacker::new(
            *scenario,
            *intensity,
            t,
            victim,
            index,
            targets,
            r.fork(k as u64),
        );
        a.end_ms = a.start_ms + attack_ms;
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
            addresses: a
                .address
                .into_iter()
                .chain(victim.map(|v| fleet.devices[v].home))
                .collect(),
            description: scenario.describe(*intensity),
        });
        t = if opts.concurrent {
            a.start_ms + ms(opts.gap)
        } else {
            a.end_ms + ms(opts.gap)
        };
        last_end = last_end.max(a.end_ms);
        attackers.push(a);
    }
    let end = last_end.max(t0 + ms(opts.warmup)) + ms(opts.tail);

    // The loop, in wall-clock time.
    let wall = Instant::now();
    let n_dev = fleet.devices.len();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    for (i, d) in fleet.devices.iter().enumerate() {
        heap.push(Reverse((d.wake_at, i)));
    }
    for (k, a) in attackers.iter().enumerate() {
        heap.push(Reverse((a.wake_at, n_dev + k)));
    }
    let mut next_housekeeping = now_ms();
    let mut sink_seen = 0;
    loop {
        let now = now_ms();
        if now >= end {
            break;
        }
        // Mitigating alerts as they arrive: probe the sessions they act on, so that the
        // time the mitigation takes to reach them is measured, not the attacker's next move.
        let fresh = shared.alerts_from(sink_seen);
        sink_seen += fresh.len();
        for (_, payload) in fresh {
            let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                continue;
            };
            let a = &v["alert"];
            let action = a["response"]["action"].as_str().unwrap_or("alert");
            if action == "alert" {
                continue;
            }
            if let Some(d) = a["device"].as_str() {
                hub.probe_device(d);
            }
            if action == "ban_address"
                && let Some(ip) = a["address"].as_str().and_then(|x| x.parse().ok())
            {
                hub.probe_address(ip);
            }
        }
        if now >= next_housekeeping {
            next_housekeeping = now + ms(HOUSEKEEPING);
            // A session the hub closed (take-over, protocol error, refusal, mitigation) is
            // noticed at once by the device's client library.
            for (i, d) in fleet.devices.iter_mut().enumerate() {
                if d.conn.is_some_and(|c| !hub.is_live(c)) && d.wake_at > now + 1 {
                    d.wake_at = now + 1;
                    heap.push(Reverse((d.wake_at, i)));
                }
            }
        }
        while let Some(Reverse((t, idx))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            if idx < n_dev {
                let d = &mut fleet.devices[idx];
                if d.wake_at != t {
                    continue;
                }
                d.wake_at = u64::MAX;
                let next = d.wake(now, &mut hub).max(now + 1);
                d.wake_at = next;
                heap.push(Reverse((next, idx)));
            } else {
                let a = &mut attackers[idx - n_dev];
                if a.wake_at != t {
                    continue;
                }
                a.wake_at = u64::MAX;
                if let Some(next) = a.wake(now, &mut hub, &mut fleet.devices) {
                    a.wake_at = next;
                    heap.push(Reverse((next, idx)));
                }
                if let Some(v) = a.victim {
                    let d = &fleet.devices[v];
                    if d.wake_at != u64::MAX {
                        heap.push(Reverse((d.wake_at, v)));
                    }
                }
            }
        }
        let next = heap
            .peek()
            .map_or(u64::MAX, |r| r.0.0)
            .min(next_housekeeping)
            .min(end);
        let wait = next.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                () = shared.alert_arrived.notified() => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
    hub.close_all();
    let wall_secs = wall.elapsed().as_secs_f64();

    // The hub's alerts: the MQTT sink, reconciled with the API.
    let listed = {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || {
            cli.run(&[
                "alerts",
                "list",
                "--json",
                "--limit",
                &LIST_LIMIT.to_string(),
            ])
        })
        .await
        .map_err(|e| format!("alerts task: {e}"))??
    };
    let effects = shared.effects();
    let sink = shared.alerts();
    let mut by_registry: BTreeMap<u64, Value> = BTreeMap::new();
    let mut sink_alerts = 0;
    for (_, payload) in &sink {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        let Some(id) = v["id"].as_u64() else { continue };
        let mut alert = v["alert"].clone();
        alert["registry_id"] = json!(id);
        alert["source"] = json!("mqtt");
        by_registry.insert(id, alert);
        sink_alerts += 1;
    }
    let mut api_only_alerts = 0;
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(id) = v["id"].as_u64() else { continue };
        if by_registry.contains_key(&id) {
            continue;
        }
        let t = v["time"].as_u64().unwrap_or(0);
        if t < t0 || t > end + ms(opts.grace) {
            continue;
        }
        let mut alert = v.clone();
        alert["registry_id"] = json!(id);
        alert["source"] = json!("api");
        by_registry.insert(id, alert);
        api_only_alerts += 1;
    }
    let collateral_ms = DetectConfig::default().responses.collateral_window_secs * 1000;
    let mut alerts = Vec::new();
    let mut alert_lines = Vec::new();
    for (rid, a) in &by_registry {
        let Some(rec) = record(*rid, a, &effects, collateral_ms) else {
            continue;
        };
        if rec.time_ms < t0 {
            continue;
        }
        alert_lines.push(a.to_string());
        alerts.push(rec);
    }
    alerts.sort_by_key(|a| (a.time_ms, a.id));

    // Ground truth.
    let mut device_days = 0.0;
    let mut model_days: BTreeMap<String, f64> = BTreeMap::new();
    let mut models = HashMap::new();
    let mut benign = HashSet::new();
    let mut ground_truth = vec![
        json!({
            "kind": "run", "mode": "live", "seed": opts.seed, "devices": opts.devices,
            "hub": opts.hub.to_string(), "start_ms": t0, "end_ms": end,
            "warmup_ms": ms(opts.warmup), "attack_ms": attack_ms, "gap_ms": ms(opts.gap),
            "tail_ms": ms(opts.tail), "grace_ms": ms(opts.grace), "concurrent": opts.concurrent,
        })
        .to_string(),
    ];
    for d in &fleet.devices {
        let from = d.created_ms.max(t0);
        if from < end {
            let days = (end - from) as f64 / DAY_MS as f64;
            device_days += days;
            *model_days.entry(d.model.as_str().to_owned()).or_default() += days;
        }
        models.insert(d.id.to_string(), d.model.as_str().to_owned());
        benign.insert(d.id.to_string());
        ground_truth.push(
            json!({
                "kind": "device", "id": d.id.as_str(), "model": d.model, "group": d.group.as_str(),
                "home": d.home, "created_ms": d.created_ms,
                "paired": d.paired.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    let hard = vec![HardNegative {
        name: "shared_address".to_owned(),
        start_ms: t0,
        end_ms: end,
        devices: fleet
            .devices
            .iter()
            .filter(|d| d.home == fleet.big_site)
            .count(),
        whole_run: true,
        description: format!(
            "devices of all models behind one address ({}) for the whole run",
            fleet.big_site
        ),
    }];
    for h in &hard {
        ground_truth.push(json!({"kind": "hard_negative", "negative": h}).to_string());
    }
    for i in &incidents {
        ground_truth.push(json!({"kind": "incident", "incident": i}).to_string());
    }
    Ok(LiveRun {
        ground_truth,
        alert_lines,
        alerts,
        incidents,
        hard_negatives: hard,
        device_days,
        models,
        devices: fleet.devices.len(),
        model_days,
        effects,
        published: shared.published.load(std::sync::atomic::Ordering::Relaxed),
        received: shared.received.load(std::sync::atomic::Ordering::Relaxed),
        sessions: hub.opened,
        sink_alerts,
        api_only_alerts,
        dropped_commands: shared
            .dropped_commands
            .load(std::sync::atomic::Ordering::Relaxed),
        wall_secs,
        provision_secs,
        benign,
        grace_ms: ms(opts.grace),
    })
}

fn add_args(id: &str, certs: &str) -> Vec<String> {
    ["device", "add", id, "--out", certs]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// An alert as the evaluator needs it, from the sink's JSON (the engine's alert) or the
/// API's (`moat alerts list --json`); `None` when a field does not parse.
fn record(
    registry_id: u64,
    a: &Value,
    effects: &[Effect],
    collateral_ms: u64,
) -> Option<AlertRecord> {
    let detector = a["detector"]
        .as_str()
        .and_then(|s| Detector::ALL.into_iter().find(|d| d.as_str() == s))?;
    let severity: Severity = serde_json::from_value(a["severity"].clone()).ok()?;
    // The sink carries the engine's response object; the API its rung name.
    let rung = match &a["response"] {
        Value::String(s) => serde_json::from_value::<Rung>(json!(s)).ok()?,
        Value::Object(o) => serde_json::from_value::<Rung>(o.get("action")?.clone()).ok()?,
        _ => return None,
    };
    let time_ms = a["time"].as_u64()?;
    let device = a["device"].as_str().map(str::to_owned);
    let address: Option<IpAddr> = a["address"].as_str().and_then(|s| s.parse().ok());
    let e = &a["explanation"];
    let ban_hits = if rung == Rung::BanAddress || (device.is_none() && rung > Rung::Alert) {
        address
            .map(|addr| {
                let mut v: Vec<String> = effects
                    .iter()
                    .filter(|x| {
                        x.address == addr
                            && x.kind == EffectKind::Accepted
                            && x.time_ms + collateral_ms >= time_ms
                            && x.time_ms <= time_ms
                    })
                    .filter_map(|x| x.identity.clone())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Some(AlertRecord {
        // The engine's id when the sink delivered it (escalations refer to it); otherwise
        // the registry's, out of the engine's range.
        id: a["id"]
            .as_u64()
            .filter(|_| a["source"] == "mqtt")
            .unwrap_or((1 << 40) + registry_id),
        time_ms,
        detector,
        severity,
        device,
        address,
        rung,
        escalates: a["escalates"].as_u64(),
        feature: e["feature"].as_str().unwrap_or("").to_owned(),
        observed: e["observed"].as_f64().unwrap_or(0.0),
        threshold: e["threshold"].as_f64().unwrap_or(0.0),
        decision_ns: 0,
        ban_hits,
    })
}

/// Whether an effect shows a mitigation (or the shield) acting on a session or an
/// attempt that would otherwise have gone through.
pub fn is_mitigation(e: &Effect) -> bool {
    let own_client = e.identity.is_some() && e.identity == e.client;
    match &e.kind {
        EffectKind::PublishRefused { allowed, .. } => *allowed,
        // 0x8E: the session was taken over by the same client id (a clone's tug of war,
        // not a response).
        EffectKind::ServerDisconnect { code } => *code != 0x8E,
        EffectKind::ConnectRefused { .. } => own_client,
        EffectKind::ClosedBeforeTls => true,
        EffectKind::StallClosed { after_ms } => *after_ms < STALL_REFUSED_MS,
        EffectKind::ClosedByServer { provoked } => !provoked && e.identity.is_some(),
        EffectKind::TlsFailed { .. } => own_client,
        EffectKind::Accepted
        | EffectKind::Probe
        | EffectKind::AcksStalled { .. }
        | EffectKind::ConnectFailed { .. }
        | EffectKind::Subscribed { .. }
        | EffectKind::SubscribeRefused { .. } => false,
    }
}

/// How one incident's mitigation reached the live session.
#[derive(Debug, Clone)]
pub struct MitigationEffect {
    /// Incident id.
    pub incident: usize,
    /// The mitigating alert the effect followed (the latest one before it; the first one
    /// when no effect was seen): its time.
    pub alert_ms: u64,
    /// Its rung.
    pub rung: Rung,
    /// The first effect on the attacker at or after it.
    pub effect: Option<Effect>,
}

impl MitigationEffect {
    /// Alert → effect, ms.
    pub fn latency_ms(&self) -> Option<u64> {
        self.effect
            .as_ref()
            .map(|e| e.time_ms.saturating_sub(self.alert_ms))
    }
}

/// For each incident with a mitigating alert, the first mitigation effect the attacker (its
/// identities, or its own address) felt at or after that alert.
pub fn mitigation_effects(
    report: &Report,
    incidents: &[Incident],
    effects: &[Effect],
    grace_ms: u64,
) -> Vec<MitigationEffect> {
    let mut out = Vec::new();
    for inc in incidents {
        let mitigating: Vec<&AlertRecord> = report
            .alerts
            .iter()
            .filter(|a| a.mitigates())
            .filter(|a| crate::eval::match_alert(a, incidents, grace_ms) == Some(inc.id))
            .collect();
        let Some(first) = mitigating.iter().map(|a| a.time_ms).min() else {
            continue;
        };
        let effect = effects
            .iter()
            .filter(|e| e.time_ms >= first && e.time_ms <= inc.end_ms + grace_ms)
            .filter(|e| is_mitigation(e) || matches!(e.kind, EffectKind::AcksStalled { .. }))
            .filter(|e| match &e.identity {
                Some(id) => inc.devices.contains(id),
                None => inc.addresses.contains(&e.address),
            })
            .min_by_key(|e| e.time_ms)
            .cloned();
        // The effect belongs to the latest mitigation decided before it (an escalation
        // whose rung acts where the first one did not, such as a ban after a throttle).
        let cause = match &effect {
            Some(e) => mitigating
                .iter()
                .filter(|a| a.time_ms <= e.time_ms)
                .max_by_key(|a| a.time_ms),
            None => mitigating.iter().min_by_key(|a| a.time_ms),
        }
        .copied();
        // An effect long after its alert is the attacker's (or the victim's) own later
        // move meeting a response (a throttle shows only above the allowed rate), not the
        // response reaching the session: not attributed.
        let effect = effect.filter(|e| {
            cause.is_some_and(|c| e.time_ms.saturating_sub(c.time_ms) <= ms(EFFECT_WINDOW))
        });
        let Some(cause) = cause else { continue };
        out.push(MitigationEffect {
            incident: inc.id,
            alert_ms: cause.time_ms,
            rung: cause.rung,
            effect,
        });
    }
    out
}

/// Mitigation effects felt by benign devices, by device: `(never attacked, after an
/// attack on them)`. Effects on a device during an incident it is part of (from a minute
/// before its start, when a diverging clone takes the device offline, to its end and
/// grace) belong to the incident; later ones are the after-effects of a response still in
/// force on a compromised device (a quarantine's time box), reported apart.
pub fn benign_effects(run: &LiveRun, grace_ms: u64) -> (EffectsByDevice, EffectsByDevice) {
    let mut never: EffectsByDevice = BTreeMap::new();
    let mut after: EffectsByDevice = BTreeMap::new();
    for e in run.effects.iter().filter(|e| is_mitigation(e)) {
        let Some(id) = &e.identity else { continue };
        if !run.benign.contains(id) {
            continue;
        }
        let mut during = false;
        let mut later = false;
        for i in run.incidents.iter().filter(|i| i.devices.contains(id)) {
            if e.time_ms >= i.start_ms.saturating_sub(60_000) {
                if e.time_ms <= i.end_ms + grace_ms {
                    during = true;
                } else {
                    later = true;
                }
            }
        }
        if during {
            continue;
        }
        let map = if later { &mut after } else { &mut never };
        map.entry(id.clone()).or_default().push(e.clone());
    }
    (never, after)
}

/// Effects per device identity.
pub type EffectsByDevice = BTreeMap<String, Vec<Effect>>;

/// The live sections of `report.md`.
pub fn render_live(
    run: &LiveRun,
    report: &Report,
    mitigations: &[MitigationEffect],
    (benign, after): (&EffectsByDevice, &EffectsByDevice),
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Live run\n\n{} sessions opened, {} messages published, {} received, {} commands dropped by full client queues; {} alerts from the `$moat/alerts/#` sink, {} more only from `moat alerts list`. Provisioning took {:.1} s; the run {:.1} s.\n",
        run.sessions,
        run.published,
        run.received,
        run.dropped_commands,
        run.sink_alerts,
        run.api_only_alerts,
        run.provision_secs,
        run.wall_secs
    );
    let _ = writeln!(
        s,
        "### Time to mitigate on the live session\n\nFrom the first alert whose response is above `alert` to the first effect the attacker's client saw (a refused publish on an allowed topic, a DISCONNECT from the hub, a refused CONNECT of its own client id, a socket closed before TLS, a stalled connection closed at once).\n\n| scenario | intensity | response | alert → effect | effect |\n|---|---|---|---|---|"
    );
    let mut lat = Vec::new();
    for m in mitigations {
        let Some(inc) = run.incidents.iter().find(|i| i.id == m.incident) else {
            continue;
        };
        if let Some(l) = m.latency_ms() {
            lat.push(l);
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {} | {} |",
            inc.scenario.as_str(),
            inc.intensity.as_str(),
            m.rung,
            m.latency_ms().map_or("—".to_owned(), |l| format!("{l} ms")),
            m.effect.as_ref().map_or("—".to_owned(), |e| {
                serde_json::to_value(&e.kind)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
        );
    }
    let n = lat.len();
    let p50 = percentile(&mut lat, 50.0);
    let p99 = percentile(&mut lat, 99.0);
    let _ = writeln!(
        s,
        "\n{n} of {} mitigated incidents had an observable effect within {} s of the alert; alert → effect p50 {}, p99 {}. A throttle shows only when the client exceeds the allowed rate after it; `—` means no effect was seen within that window.\n",
        mitigations.len(),
        EFFECT_WINDOW.as_secs(),
        p50.map_or("—".to_owned(), |v| format!("{v} ms")),
        p99.map_or("—".to_owned(), |v| format!("{v} ms")),
    );
    let felt: usize = benign.values().map(Vec::len).sum();
    let _ = writeln!(
        s,
        "### What benign devices felt\n\n{} benign devices never attacked saw {felt} refusals or closures (mitigations, quotas or the shield); {} alerts with a response above `alert` matched no incident. {} devices saw {} more after an attack on them had ended (a response still in force on a compromised device).\n",
        benign.len(),
        report.benign_mitigations(),
        after.len(),
        after.values().map(Vec::len).sum::<usize>()
    );
    if !benign.is_empty() {
        let _ = writeln!(s, "| device | model | effects | first |\n|---|---|---|---|");
        for (id, v) in benign.iter().take(40) {
            let _ = writeln!(
                s,
                "| {id} | {} | {} | {} |",
                run.models.get(id).map_or("—", String::as_str),
                v.len(),
                v.first()
                    .and_then(|e| serde_json::to_value(&e.kind).ok())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## What live measures and what it does not\n\n{LIVE_LIMITS}"
    );
    s
}

/// What a live run can and cannot measure (also printed in `report.md`).
pub const LIVE_LIMITS: &str = "\
* Everything runs on one machine: the hub, the `moat` CLI and every simulated client share \
the CPU, so times include the simulator's own scheduling.
* Attacks are shortened to `--attack-secs` each (replay runs them for minutes to hours): \
low-and-slow exfiltration and other slow scenarios cannot reach their thresholds in a few \
minutes, and low intensities send only a handful of attempts.
* False positives per device-day are scaled from minutes of wall time: one false alert in a \
five-minute run of 50 devices is 5.8 per device-day. Use replay for the ≥ 3,000 device-day \
figure; live shows that the hub, its sinks and its responses behave as the engine decided.
* Hard negatives other than the shared address (restarts, outages, rotations, fleet \
updates) are not run live. Slow-loris connections stall on the MQTT over TLS listener for \
both stages (no WebSocket upgrade).
* A mitigation's effect is seen only if the attacker tries again after the alert; `—` \
means it did not within the incident's window and grace.";

/// The figures of a live run, also written to `summary.json` (for scripts and tests).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Per incident.
    pub incidents: Vec<IncidentSummary>,
    /// Alerts that matched no incident.
    pub false_alerts: usize,
    /// Of them, with a response above `alert`.
    pub benign_mitigations: usize,
    /// Benign devices behind addresses banned or throttled for an incident.
    pub collateral_devices: usize,
    /// Benign devices never attacked that felt a refusal or closure.
    pub benign_devices_affected: usize,
    /// Devices that felt one after an attack on them had ended.
    pub after_attack_devices_affected: usize,
    /// Benign device-days (wall time).
    pub device_days: f64,
    /// False alerts per device-day.
    pub fp_per_device_day: f64,
    /// Alerts received.
    pub alerts: usize,
    /// Wall-clock seconds of the run.
    pub wall_secs: f64,
}

/// One incident's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentSummary {
    /// Scenario.
    pub scenario: Scenario,
    /// Intensity.
    pub intensity: Intensity,
    /// Detected.
    pub detected: bool,
    /// Attack start → first alert, ms.
    pub ttd_ms: Option<u64>,
    /// Attack start → first mitigating alert, ms.
    pub ttm_ms: Option<u64>,
    /// Mitigating alert → effect on the live session, ms.
    pub effect_ms: Option<u64>,
    /// Detectors that fired.
    pub detectors: Vec<String>,
}

/// Scores a live run and writes `ground_truth.jsonl`, `alerts.jsonl`, `effects.jsonl`,
/// `report.md` and `summary.json` to `out`.
pub fn score_and_write(
    run: &LiveRun,
    out: &std::path::Path,
    command: String,
    seed: u64,
) -> Result<Summary, String> {
    let mut report = crate::eval::evaluate(
        &run.incidents,
        &run.hard_negatives,
        run.alerts.clone(),
        run.device_days,
        &run.models,
        run.grace_ms,
    );
    let mitigations = mitigation_effects(&report, &run.incidents, &run.effects, run.grace_ms);
    // In the report's "decision latency" column and the 100 ms target: alert → effect on
    // the live session.
    for r in &mut report.incidents {
        r.decision_ns = mitigations
            .iter()
            .find(|m| m.incident == r.id)
            .and_then(MitigationEffect::latency_ms)
            .map(|l| l.saturating_mul(1_000_000));
    }
    let (benign, after) = benign_effects(run, run.grace_ms);
    let facts = crate::eval::RunFacts {
        command,
        devices: run.devices,
        days: run.wall_secs / 86_400.0,
        seed,
        groups: "assigned (the hub's groups)".to_owned(),
        events: run.published,
        wall_secs: run.wall_secs,
        model_days: run.model_days.clone(),
    };
    let md = crate::eval::render(&report, &facts, &run.incidents, &run.hard_negatives);
    let md = md
        .replacen("# moat-sim replay report", "# moat-sim live report", 1)
        .replace(
            "Accelerated replay: virtual time, responses decided but not executed.",
            "Live: a real hub on loopback, wall-clock time, responses executed by the hub. \"Events\" are messages published by the simulated clients.",
        )
        .replace(
            "(replay: engine decision latency)",
            "(live: alert → effect on the attacker's session)",
        )
        .replace("| decision latency |", "| alert → effect |");
    // Replay's own limits do not apply; the live ones are appended.
    let md = match md.find("\n## What replay measures and what it does not") {
        Some(at) => md[..at].to_owned(),
        None => md,
    };
    let md = md + &render_live(run, &report, &mitigations, (&benign, &after));
    let summary = Summary {
        incidents: report
            .incidents
            .iter()
            .map(|r| IncidentSummary {
                scenario: r.scenario,
                intensity: r.intensity,
                detected: r.detected,
                ttd_ms: r.ttd_ms,
                ttm_ms: r.ttm_ms,
                effect_ms: r.decision_ns.map(|n| n / 1_000_000),
                detectors: r.detectors.iter().map(|d| d.as_str().to_owned()).collect(),
            })
            .collect(),
        false_alerts: report.false_positive_count(),
        benign_mitigations: report.benign_mitigations(),
        collateral_devices: report.collateral.iter().map(|c| c.devices.len()).sum(),
        benign_devices_affected: benign.len(),
        after_attack_devices_affected: after.len(),
        device_days: run.device_days,
        fp_per_device_day: report.fp_per_device_day(),
        alerts: report.alerts.len(),
        wall_secs: run.wall_secs,
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, body: String| {
        let p = out.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    let lines = |v: &[String]| {
        let mut s = v.join("\n");
        s.push('\n');
        s
    };
    write("ground_truth.jsonl", lines(&run.ground_truth))?;
    write("alerts.jsonl", lines(&run.alert_lines))?;
    let effects: Vec<String> = run
        .effects
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .collect();
    write("effects.jsonl", lines(&effects))?;
    write("report.md", md)?;
    write(
        "summary.json",
        serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?,
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(t: u64, identity: Option<&str>, client: Option<&str>, kind: EffectKind) -> Effect {
        Effect {
            time_ms: t,
            conn: 1,
            identity: identity.map(str::to_owned),
            client: client.map(str::to_owned),
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)),
            kind,
        }
    }

    #[test]
    fn loopback_mapping_keeps_attackers_apart_from_sites() {
        let site = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(loopback(site), IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1)));
        let cell = IpAddr::V4(Ipv4Addr::new(100, 70, 3, 4));
        assert_eq!(loopback(cell), IpAddr::V4(Ipv4Addr::new(127, 70, 3, 4)));
        let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12));
        assert_eq!(loopback(attacker), attacker);
    }

    #[test]
    fn which_effects_are_mitigations() {
        let d = Some("ps-0001");
        let refused = |allowed| EffectKind::PublishRefused {
            code: 0x87,
            topic: "t".to_owned(),
            allowed,
        };
        assert!(is_mitigation(&effect(0, d, d, refused(true))));
        assert!(
            !is_mitigation(&effect(0, d, d, refused(false))),
            "the policy's own refusal"
        );
        assert!(is_mitigation(&effect(
            0,
            d,
            d,
            EffectKind::ServerDisconnect { code: 0x98 }
        )));
        assert!(
            !is_mitigation(&effect(
                0,
                d,
                d,
                EffectKind::ServerDisconnect { code: 0x8E }
            )),
            "a take-over is not a response"
        );
        assert!(is_mitigation(&effect(
            0,
            d,
            d,
            EffectKind::ConnectRefused { code: 0x8A }
        )));
        assert!(
            !is_mitigation(&effect(
                0,
                d,
                Some("ps-0001-77"),
                EffectKind::ConnectRefused { code: 0x85 }
            )),
            "a rotated client id is refused by the binding, not a response"
        );
        assert!(!is_mitigation(&effect(
            0,
            d,
            d,
            EffectKind::ClosedByServer { provoked: true }
        )));
        assert!(is_mitigation(&effect(
            0,
            None,
            None,
            EffectKind::StallClosed { after_ms: 5 }
        )));
        assert!(!is_mitigation(&effect(
            0,
            None,
            None,
            EffectKind::StallClosed { after_ms: 10_000 }
        )));
    }

    #[test]
    fn sink_and_api_alerts_parse() {
        let sink = json!({
            "id": 7, "time": 1_000, "detector": "honey_topic", "severity": "high",
            "device": "ps-0001", "address": "127.1.0.3",
            "explanation": {"feature": "honey_topic_touched", "observed": 1.0, "threshold": 1.0},
            "response": {"action": "quarantine"}, "escalates": null, "source": "mqtt",
        });
        let a = record(3, &sink, &[], 3_600_000).expect("parses");
        assert_eq!(
            (a.id, a.rung, a.detector),
            (7, Rung::Quarantine, Detector::HoneyTopic)
        );
        assert_eq!(a.device.as_deref(), Some("ps-0001"));
        let api = json!({
            "id": 4, "time": 2_000, "detector": "certificate_brute_force", "severity": "high",
            "device": null, "address": "127.0.0.10", "explanation": {"feature": "f"},
            "response": "ban_address", "source": "api",
        });
        let accepted = Effect {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)),
            ..effect(
                1_500,
                Some("es-0002"),
                Some("es-0002"),
                EffectKind::Accepted,
            )
        };
        let b = record(4, &api, &[accepted], 3_600_000).expect("parses");
        assert_eq!(b.rung, Rung::BanAddress);
        assert_eq!(
            b.id,
            (1 << 40) + 4,
            "API alerts get ids outside the engine's"
        );
        assert_eq!(
            b.ban_hits,
            vec!["es-0002".to_owned()],
            "collateral from accepted sessions"
        );
        assert!(record(5, &json!({"detector": "nope"}), &[], 0).is_none());
    }
}
