//! moat-sim's live mode end to end (issue 4, point 7): a real hub with detection in
//! enforce mode, a small fleet provisioned with the `moat` CLI, real MQTT 5 clients over
//! mutual TLS (attackers from their own 127.0.0.x addresses), two loud attacks, and the
//! report: both attacks detected and mitigated on the live session, no benign device
//! mitigated.
//!
//! Bounded: every phase of the run has a fixed length (about 25 s in all); waits inside
//! the simulator are deadlines on events (the alert reader's SUBACK, CLI calls).

mod support;

use std::time::Duration;

use moat_sim::attack::{Intensity, Scenario};
use moat_sim::live::{LiveOptions, live, score_and_write};
use support::*;

/// What an operator of the simulated fleet configures: enforce mode, the canary identity,
/// and the groups whose policies grant other devices' topics.
const LIVE_CONFIG: &str = "
[detect]
mode = \"enforce\"

[detect.deception]
canary_devices = [\"canary-0001\"]

[detect.topics]
lateral_exempt_groups = [\"gateways\", \"mobile\"]
";

#[test]
fn live_run_detects_and_mitigates_loud_attacks_without_touching_benign_devices() {
    let hub = Hub::start(HubOptions::new().config(LIVE_CONFIG));
    let out = hub.scratch("sim");
    let opts = LiveOptions {
        hub: hub.tls_addr(),
        data_dir: hub.data_dir(),
        moat: moat_bin().into(),
        devices: 10,
        seed: 7,
        scenarios: vec![Scenario::HoneyTopic, Scenario::PublishFlood],
        intensities: vec![Intensity::High],
        warmup: Duration::from_secs(3),
        ramp: Duration::from_secs(1),
        attack: Duration::from_secs(6),
        gap: Duration::from_secs(2),
        concurrent: false,
        tail: Duration::from_secs(4),
        grace: Duration::from_secs(10),
        out: out.clone(),
    };
    let run = live(&opts).unwrap_or_else(|e| panic!("live run failed: {e}"));
    let summary = score_and_write(&run, &out, "live_sim test".to_owned(), opts.seed)
        .unwrap_or_else(|e| panic!("scoring failed: {e}"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    let show = || format!("{summary:#?}\n--- report.md\n{report}");

    // Ground truth and alerts were written, one line per incident.
    let truth = std::fs::read_to_string(out.join("ground_truth.jsonl")).expect("ground truth");
    assert_eq!(
        truth
            .lines()
            .filter(|l| l.contains("\"kind\":\"incident\""))
            .count(),
        2,
        "{truth}"
    );
    assert_eq!(summary.incidents.len(), 2, "{}", show());
    for inc in &summary.incidents {
        assert!(
            inc.detected,
            "{} at {} intensity not detected\n{}",
            inc.scenario.as_str(),
            inc.intensity.as_str(),
            show()
        );
        assert!(
            inc.ttm_ms.is_some(),
            "{} detected but not mitigated\n{}",
            inc.scenario.as_str(),
            show()
        );
    }
    // The honey-topic quarantine reached the compromised device's live session: a probe on
    // its own telemetry topic was refused.
    let honey = summary
        .incidents
        .iter()
        .find(|i| i.scenario == Scenario::HoneyTopic)
        .expect("honey incident");
    assert!(
        honey.effect_ms.is_some(),
        "the quarantine never reached the session\n{}",
        show()
    );
    assert!(
        honey.detectors.iter().any(|d| d == "honey_topic"),
        "{}",
        show()
    );
    // No benign device was mitigated, throttled, refused or cut off.
    assert_eq!(summary.benign_mitigations, 0, "{}", show());
    assert_eq!(summary.collateral_devices, 0, "{}", show());
    assert_eq!(summary.benign_devices_affected, 0, "{}", show());
    // The alerts came from the hub: the MQTT sink and `moat alerts list` agree.
    let listed = cli_ok(&hub, &["alerts", "list", "--json"]);
    assert!(
        listed.lines().count() >= summary.alerts,
        "the hub lists fewer alerts than the simulator scored\n{listed}\n{}",
        show()
    );
    assert!(report.starts_with("# moat-sim live report"), "{report}");
}
