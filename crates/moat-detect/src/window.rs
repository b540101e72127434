//! Closing a device's 10 s window: low-and-slow exfiltration, behaviour anomalies against
//! the group's Half-Space Trees, and learning (skipped for windows that alerted).

use moat_types::DeviceId;

use crate::alert::{Detector, Explanation, LearnedBaseline, Severity};
use crate::config::DetectConfig;
use crate::device::{Finding, learned};
use crate::engine::EngineStats;
use crate::event::SIZE_BUCKETS;
use crate::hst::{self, Forest};
use crate::state::*;
use crate::stats::{Effective, HOUR_DECAY, HOUR_WINDOWS, MINUTE_DECAY, decay, fingerprint, log1p};

/// Closes a device's window: scores it (low-and-slow, behaviour anomaly), learns it unless
/// it alerted, and decays the per-minute counters over the elapsed windows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn close_window(
    cfg: &DetectConfig,
    forest: &Forest,
    stats: &mut EngineStats,
    id: &DeviceId,
    d: &mut DeviceState,
    g: &mut GroupState,
    to: u64,
    now: u64,
    found: &mut Vec<Finding>,
) {
    let steps = to.saturating_sub(d.window);
    let found_before = found.len();
    let acc = std::mem::take(&mut d.acc);
    let t = &cfg.thresholds;
    let l = &cfg.learning;
    d.hour_bytes = d.hour_bytes * HOUR_DECAY + acc.bytes_pub as f32;
    d.recent_bytes = d.recent_bytes * TEN_MINUTE_DECAY + acc.bytes_pub as f32;
    // Low-and-slow exfiltration: the last hour against the daily norm, or against the
    // learned envelope of the hour's volume for a bursty device. Judged in every window, busy
    // or silent, so that a held response is not released between two sparse summaries.
    let established = d.daily_n >= l.device_windows;
    if established && d.daily_bytes > 0.0 {
        let expected = d.daily_bytes * HOUR_WINDOWS;
        let ratio = d.hour_bytes / expected;
        let drift = g.slow_drift.0.exp();
        let corrected = ratio / drift;
        let excess = d.hour_bytes - expected * drift;
        let envelope = d.envelope(g, 2, t);
        let limit = (t.low_slow_ratio * expected * drift).max(t.low_slow_ratio * envelope);
        // The group's view (cohort changes) counts busy windows only, as its drift learns.
        let busy = acc.summaries > 0;
        if busy && corrected >= t.low_slow_ratio / 2.0 {
            g.slow_elevated_now += 1;
        }
        // The pace of the last ten minutes, per hour: a leak still going on.
        let pace = d.recent_bytes * (HOUR_WINDOWS / TEN_MINUTE_WINDOWS);
        let leaking = pace >= limit / 2.0;
        let over = d.hour_bytes >= limit && excess >= 256.0 * 1024.0 && leaking;
        // Hysteresis: a streak that reached its length holds while the recent pace stays
        // above half the limit, so that one window's dip does not release the response and
        // re-raise it minutes later; it ends when the pace returns towards normal (not when
        // the lagging hour's sum does).
        let holding = d.slow_streak >= t.low_slow_windows && leaking;
        if over || holding {
            d.slow_streak = d.slow_streak.saturating_add(1);
            // Several devices of the group rising together is a staged roll-out or a
            // cohort's change, not one device leaking. Decided once per streak.
            if d.slow_streak == t.low_slow_windows {
                d.slow_cohort = g.slow_elevated > t.consensus_min_devices;
                if d.slow_cohort {
                    stats.suppressed_by_consensus += 1;
                }
            }
            if d.slow_streak >= t.low_slow_windows && !d.slow_cohort {
                let mut evidence = vec![
                    format!(
                        "{:.0} bytes published over the last hour, {ratio:.2} × the daily norm of {expected:.0}",
                        d.hour_bytes
                    ),
                    format!(
                        "group common drift × {drift:.2} removed: {corrected:.2} × (threshold {})",
                        t.low_slow_ratio
                    ),
                    format!("{} consecutive windows above", d.slow_streak),
                ];
                if envelope > 0.0 {
                    evidence.push(format!(
                        "learned hourly envelope {envelope:.0} bytes (× {} allowed)",
                        t.low_slow_ratio
                    ));
                }
                if !over {
                    evidence.push(format!(
                        "held: the pace of the last 10 min ({pace:.0} bytes/h) is still above half the limit of {limit:.0}"
                    ));
                }
                found.push(Finding {
                    detector: Detector::ExfiltrationLowAndSlow,
                    severity: if d.hour_bytes >= 3.0 * limit {
                        Severity::High
                    } else {
                        Severity::Medium
                    },
                    device: Some(id.clone()),
                    address: d.live.iter().flatten().next().map(|l| l.address),
                    group: None,
                    explanation: Explanation {
                        feature: "bytes_published_last_hour",
                        observed: f64::from(d.hour_bytes),
                        threshold: f64::from(limit),
                        baseline: Some(LearnedBaseline {
                            typical: f64::from(expected),
                            spread: 0.0,
                            device_windows: d.daily_n,
                            group_weight: 0.0,
                        }),
                        evidence,
                    },
                    by_address: false,
                    learned: true,
                    extend_only: !over,
                });
            }
        } else {
            d.slow_streak = 0;
            d.slow_cohort = false;
        }
        if busy && d.base[0].n >= ESTABLISHED_WINDOWS && !acc.alerted && ratio > 0.0 {
            g.slow_drift.learn(ratio.ln(), DRIFT_STEP);
        }
    }

    if acc.summaries > 0 {
        let x: [Option<f64>; NF] = [
            Some(f64::from(acc.msgs_pub)),
            Some(acc.bytes_pub as f64),
            Some(f64::from(acc.msgs_del)),
            Some(acc.bytes_del as f64),
            Some(f64::from(acc.peak_msgs)),
            Some(f64::from(acc.peak_bytes)),
            (acc.msgs_pub > 0).then(|| acc.bytes_pub as f64 / f64::from(acc.msgs_pub)),
            (acc.msgs_pub > 0).then_some(f64::from(acc.max_payload)),
        ];
        let mut z = [0f32; NF];
        let mut y = [0f32; NF];
        let mut eff = [None; NF];
        for k in 0..NF {
            if let Some(v) = x[k] {
                let e = Effective::shrink(&d.base[k], &g.prior[k], l.prior_windows, l.min_log_sd);
                y[k] = log1p(v);
                if e.known {
                    z[k] = (y[k] - e.mean - g.drift[k].0) / e.sd;
                }
                eff[k] = Some(e);
            }
        }

        // Behaviour anomaly: the group's Half-Space Trees and the device's own baselines.
        let divergence = size_divergence(&d.size_profile, &acc.sizes);
        let point = hst_point(&z, divergence, acc.connects, acc.novel_edges);
        let isolation = g.hst.isolation(forest, &point);
        let (kmax, zmax) = z
            .iter()
            .enumerate()
            .map(|(k, v)| (k, *v))
            .fold((0, 0f32), |a, b| if b.1.abs() > a.1.abs() { b } else { a });
        // A window in the device's known burst mode (peak rates above its normal bound but
        // within the envelope it learned, such as a bulk upload) is neither an anomaly nor
        // learned into the normal mode's baselines: the device has two modes.
        let in_envelope = |k: usize, f: Feature, v: f32, ratio: f32| {
            let env = d.envelope(g, k, t);
            env > 0.0
                && v <= ratio * env
                && eff[f as usize]
                    .is_some_and(|e: Effective| e.known && f64::from(v) > e.upper(l.upper_z))
        };
        let burst_mode = in_envelope(0, Feature::PeakMsgsPublished, acc.peak_msgs, t.flood_ratio)
            || in_envelope(
                1,
                Feature::PeakBytesPublished,
                acc.peak_bytes,
                t.burst_ratio,
            );
        let recent_new_address = d.last_new_address_ms > 0
            && now.saturating_sub(d.last_new_address_ms) <= NEW_ADDRESS_CLONE_MS;
        // A new address corroborates a deviation: fewer windows in a row are needed.
        let needed = if recent_new_address {
            (t.anomaly_windows / 3).max(1)
        } else {
            t.anomaly_windows
        };
        let anomalous = d.base[0].n >= ANOMALY_MIN_WINDOWS
            && !burst_mode
            && isolation >= t.hst_isolated_trees
            && zmax.abs() >= t.anomaly_z;
        g.closed_now += 1;
        if anomalous {
            g.anomalous_now += 1;
            // Signature: which features deviate, which way. A device starting a streak
            // counts under every feature at least half-way to the threshold, so devices of
            // one cohort share a signature even when their most deviating feature differs.
            if d.anomaly_streak == 0 {
                for (k, zk) in z.iter().enumerate() {
                    if zk.abs() >= t.anomaly_z / 2.0 {
                        g.signatures[2 * k + usize::from(*zk > 0.0)] += 1.0;
                    }
                }
            }
            d.anomaly_streak = d.anomaly_streak.saturating_add(1);
            if d.anomaly_streak == needed {
                let sig = 2 * kmax + usize::from(zmax > 0.0);
                // A device that just moved to a new address is not explained by its
                // cohort: a fleet change does not move each device to a new address.
                d.anomaly_cohort = !recent_new_address
                    && (g.anomalous_fraction >= t.consensus_fraction
                        || g.signatures[sig] >= (t.consensus_min_devices as f32).max(1.0));
                if d.anomaly_cohort {
                    stats.suppressed_by_consensus += 1;
                }
            }
            if d.anomaly_streak >= needed && !d.anomaly_cohort {
                let f = Feature::ALL[kmax];
                let mut evidence = vec![
                    format!(
                        "{} windows in a row unlike the group: {:.0} % of the group's trees isolate this window",
                        d.anomaly_streak,
                        100.0 * isolation
                    ),
                    format!(
                        "most deviating feature {} with z = {zmax:.1} after removing the group's drift",
                        f.as_str()
                    ),
                    format!(
                        "payload-size distribution {:.0} % away from the learned profile; {} connects, {} first-seen topics in the window",
                        100.0 * divergence,
                        acc.connects,
                        acc.novel_edges
                    ),
                ];
                let detector = if recent_new_address {
                    evidence.push(format!(
                        "the identity connected from a new address {} s ago",
                        now.saturating_sub(d.last_new_address_ms) / 1000
                    ));
                    Detector::ClonedIdentity
                } else {
                    Detector::BehaviourAnomaly
                };
                found.push(Finding {
                    detector,
                    severity: if recent_new_address {
                        Severity::Medium
                    } else {
                        Severity::Low
                    },
                    device: Some(id.clone()),
                    address: d.live.iter().flatten().next().map(|l| l.address),
                    group: None,
                    explanation: Explanation {
                        feature: f.as_str(),
                        observed: x[kmax].unwrap_or(0.0),
                        threshold: f64::from(t.anomaly_z),
                        baseline: eff[kmax].as_ref().map(learned),
                        evidence,
                    },
                    by_address: false,
                    learned: true,
                    extend_only: false,
                });
            }
        } else {
            d.anomaly_streak = 0;
            d.anomaly_cohort = false;
        }

        // Learning, unless the window alerted (no poisoning). An alerted window's largest
        // values wait in `pending` until the episode is released (see `Engine::tick`).
        if acc.alerted || found.len() > found_before {
            stats.windows_skipped += 1;
            for (p, v) in d
                .pending
                .iter_mut()
                .zip([acc.peak_msgs, acc.peak_bytes, d.hour_bytes])
            {
                *p = p.max(v);
            }
        } else if burst_mode {
            stats.windows_skipped += 1;
            // The burst mode's envelope follows what the device shows within it, at most
            // ×ENVELOPE_GROWTH_PER_DAY per day.
            let days = now.saturating_sub(d.env_grown_ms) as f32 / 86_400_000.0;
            let growth = ENVELOPE_GROWTH_PER_DAY.powf(days.min(1.0));
            let mut grown = false;
            for (k, v) in [(0, acc.peak_msgs), (1, acc.peak_bytes)] {
                let env = d.envelope(g, k, t);
                if v > env && env > 0.0 {
                    d.env[k] = d.env[k].max(v.min(env * growth));
                    g.note_env(k, fingerprint(id.as_str()), d.env[k]);
                    grown = true;
                }
            }
            if grown {
                d.env_grown_ms = now;
            }
        } else {
            stats.windows_learned += 1;
            let established = d.base[0].n >= ESTABLISHED_WINDOWS;
            for k in 0..NF {
                if x[k].is_some() {
                    if established && let Some(e) = &eff[k] {
                        g.drift[k].learn(y[k] - e.mean, DRIFT_STEP);
                    }
                    d.base[k].learn(y[k], l.device_windows, l.min_log_sd);
                    g.prior[k].learn(y[k], l.device_windows, l.min_log_sd);
                }
            }
            // Warm up over the first `device_windows` (a running mean), then learn slowly and
            // winsorized at twice the norm, so an hour of low-and-slow exfiltration cannot
            // drag the norm up with it.
            learn_sizes(d, &acc.sizes, l.device_windows);
            d.daily_n = d.daily_n.saturating_add(1);
            let (alpha, x) = if d.daily_n <= l.device_windows {
                (1.0 / d.daily_n as f32, acc.bytes_pub as f32)
            } else {
                (
                    1.0 / l.daily_windows as f32,
                    (acc.bytes_pub as f32).min(2.0 * d.daily_bytes.max(1.0)),
                )
            };
            d.daily_bytes += alpha * (x - d.daily_bytes);
            // The shared model learns only windows it does not find unusual, so one device's
            // sustained deviation cannot become the group's normal.
            if established && isolation < t.hst_isolated_trees && zmax.abs() < t.anomaly_z {
                g.hst.learn(forest, &point, l.hst_window);
            }
        }
    }
    let f = decay(MINUTE_DECAY, steps);
    d.counters.decay(f);
    let fe = envelope_decay(steps);
    for e in &mut d.env {
        *e *= fe;
    }
    if steps > 1 {
        d.hour_bytes *= decay(HOUR_DECAY, steps - 1);
        d.recent_bytes *= decay(TEN_MINUTE_DECAY, steps - 1);
    }
    d.window = to;
}

/// Decay of an envelope over `windows` (exact for any gap, unlike [`decay`]).
pub(crate) fn envelope_decay(windows: u64) -> f32 {
    match windows {
        0 => 1.0,
        1 => ENVELOPE_DECAY,
        w => ENVELOPE_DECAY.powf(w as f32),
    }
}

/// The streaming model's view of a window: clipped z-scores of five features mapped to
/// [0, 1], the payload-size distribution's divergence from the learned profile, connects
/// and first-seen topics on a log scale.
fn hst_point(z: &[f32; NF], divergence: f32, connects: u16, novel: u16) -> [f32; hst::DIMS] {
    let c = |v: f32| (v.clamp(-4.0, 4.0) + 4.0) / 8.0;
    [
        c(z[0]),
        c(z[1]),
        c(z[2]),
        c(z[3]),
        c(z[6]),
        divergence,
        (f32::from(connects).ln_1p() / 4.0).min(1.0),
        (f32::from(novel).ln_1p() / 4.0).min(1.0),
    ]
}

/// Total-variation distance between a window's payload-size histogram and the learned
/// profile, in [0, 1] (0 while either is empty).
fn size_divergence(profile: &[u16; SIZE_BUCKETS], window: &[u32; SIZE_BUCKETS]) -> f32 {
    let total: u64 = window.iter().map(|&n| u64::from(n)).sum();
    let known: u32 = profile.iter().map(|&q| u32::from(q)).sum();
    if total == 0 || known == 0 {
        return 0.0;
    }
    let tv: f32 = profile
        .iter()
        .zip(window)
        .map(|(&q, &n)| (n as f32 / total as f32 - f32::from(q) / known as f32).abs())
        .sum();
    (tv / 2.0).clamp(0.0, 1.0)
}

/// Learns a window's payload-size histogram into the profile.
fn learn_sizes(d: &mut DeviceState, window: &[u32; SIZE_BUCKETS], tau: u32) {
    let total: u64 = window.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return;
    }
    d.size_windows = d.size_windows.saturating_add(1);
    let alpha = 1.0 / d.size_windows.min(tau.max(1)) as f32;
    for (q, &n) in d.size_profile.iter_mut().zip(window) {
        let p = n as f32 / total as f32;
        let v = f32::from(*q) / 65535.0;
        *q = ((v + alpha * (p - v)).clamp(0.0, 1.0) * 65535.0).round() as u16;
    }
}
