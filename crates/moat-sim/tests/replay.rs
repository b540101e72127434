//! End-to-end replay tests: determinism, every attack detected at high intensity, and the
//! evaluator's arithmetic on a benign run.

use moat_detect::{DetectConfig, Detector, Severity};
use moat_sim::attack::{Intensity, Scenario};
use moat_sim::eval::{GRACE_MS, evaluate};
use moat_sim::hub::GroupMode;
use moat_sim::replay::{ReplayOptions, replay};

fn options(devices: usize, days: f64, seed: u64, scenarios: Vec<Scenario>) -> ReplayOptions {
    ReplayOptions {
        devices,
        days,
        seed,
        scenarios,
        intensities: vec![Intensity::High],
        hard_negatives: true,
        groups: GroupMode::Assigned,
        detect: DetectConfig::default(),
    }
}

#[test]
fn same_seed_same_run() {
    let opts = options(
        40,
        0.25,
        42,
        vec![Scenario::PublishFlood, Scenario::CloneConcurrent],
    );
    let a = replay(&opts).expect("run");
    let b = replay(&opts).expect("run");
    assert_eq!(a.ground_truth, b.ground_truth);
    assert_eq!(a.output_lines, b.output_lines);
    assert_eq!(a.events, b.events);
    let ra = evaluate(
        &a.incidents,
        &a.hard_negatives,
        a.alerts.clone(),
        a.device_days,
        &a.models,
        GRACE_MS,
    );
    let rb = evaluate(
        &b.incidents,
        &b.hard_negatives,
        b.alerts.clone(),
        b.device_days,
        &b.models,
        GRACE_MS,
    );
    assert_eq!(ra.false_positive_count(), rb.false_positive_count());
    let ttd = |r: &moat_sim::eval::Report| r.incidents.iter().map(|i| i.ttd_ms).collect::<Vec<_>>();
    assert_eq!(ttd(&ra), ttd(&rb));
    let other = replay(&options(40, 0.25, 43, vec![Scenario::PublishFlood])).expect("run");
    assert_ne!(
        a.ground_truth, other.ground_truth,
        "another seed, another fleet"
    );
}

#[test]
fn every_attack_at_high_intensity_is_detected() {
    let opts = options(30, 0.6, 7, Scenario::ALL.to_vec());
    let run = replay(&opts).expect("run");
    let report = evaluate(
        &run.incidents,
        &run.hard_negatives,
        run.alerts.clone(),
        run.device_days,
        &run.models,
        GRACE_MS,
    );
    assert_eq!(report.incidents.len(), Scenario::ALL.len());
    let missed: Vec<&str> = report
        .incidents
        .iter()
        .filter(|i| !i.detected)
        .map(|i| i.scenario.as_str())
        .collect();
    assert!(missed.is_empty(), "no alert for {missed:?}");
}

#[test]
fn benign_run_false_positive_arithmetic() {
    let mut opts = options(25, 0.5, 3, Vec::new());
    opts.hard_negatives = false;
    let run = replay(&opts).expect("run");
    assert!(run.incidents.is_empty());
    // Every device exists from its first minute to the end.
    assert!(
        run.device_days <= 25.0 * 0.5 && run.device_days > 25.0 * 0.5 - 0.1,
        "{}",
        run.device_days
    );
    let report = evaluate(
        &run.incidents,
        &run.hard_negatives,
        run.alerts.clone(),
        run.device_days,
        &run.models,
        GRACE_MS,
    );
    // With no incident, every alert is a false positive.
    assert_eq!(report.false_positive_count(), run.alerts.len());
    let expected = run.alerts.len() as f64 / run.device_days;
    assert!((report.fp_per_device_day() - expected).abs() < 1e-12);
    let mitigating = run.alerts.iter().filter(|a| a.mitigates()).count();
    assert_eq!(report.benign_mitigations(), mitigating);
    assert!(run.events > 0);
}

#[test]
fn quirky_firmware_costs_one_low_alert_per_device() {
    let mut opts = options(120, 1.0, 11, Vec::new());
    opts.hard_negatives = false;
    let run = replay(&opts).expect("run");
    let quirky: Vec<String> = run
        .ground_truth
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["quirky_firmware"] == serde_json::Value::Bool(true))
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!quirky.is_empty(), "the fleet has quirky firmware");
    let malformed: Vec<_> = run
        .alerts
        .iter()
        .filter(|a| a.detector == Detector::MalformedStream)
        .collect();
    assert!(
        !malformed.is_empty(),
        "quirky firmware sent protocol errors"
    );
    for a in &malformed {
        // The first error after a clean record: news, alert only; the next ones are known.
        assert_eq!(a.severity, Severity::Low, "{a:?}");
        assert!(!a.mitigates(), "{a:?}");
        let device = a.device.clone().expect("device");
        assert!(quirky.contains(&device), "{device} is not quirky");
        assert_eq!(
            malformed
                .iter()
                .filter(|b| b.device.as_ref() == Some(&device))
                .count(),
            1,
            "{device} alerted more than once"
        );
    }
}

#[test]
fn too_short_a_run_is_refused() {
    let err = replay(&options(30, 0.1, 1, Scenario::ALL.to_vec())).expect_err("too short");
    assert!(err.contains("run at least"), "{err}");
}
