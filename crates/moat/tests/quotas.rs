//! Policy quotas (issue 4, point 2) with paho-mqtt as the devices and the `moat` CLI as the
//! operator: `tests/interop/quotas.py` does the protocol work; this checks what the hub's
//! metrics say afterwards.

mod support;

use support::*;

#[test]
fn quotas_from_policies_are_enforced_visible_and_lose_nothing() {
    let hub = Hub::start(HubOptions::new());
    for id in ["q1", "q2"] {
        hub.add_device(id);
    }
    let data_dir = hub.data_dir();
    run_script(
        &hub,
        "quotas.py",
        &[
            "--moat",
            moat_bin(),
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
        ],
    );
    // Every limit the script hit is counted under its own label.
    for limit in [
        "messages_per_second",
        "max_subscriptions",
        "max_payload_bytes",
        "connections_per_minute",
    ] {
        let sample = format!("moat_quota_exceeded_total{{limit=\"{limit}\"}}");
        let value = hub.metric(&sample);
        assert!(value.is_some_and(|v| v >= 1.0), "{sample} = {value:?}");
    }
    // The one limit the script did not touch stays at zero.
    assert_eq!(
        hub.metric("moat_quota_exceeded_total{limit=\"bytes_per_second\"}"),
        Some(0.0)
    );
    // The throttled flood was held back with packets waiting: the time the detection engine
    // reads as offered load it cannot count (`TrafficSummary::held_ms`).
    let held = hub.metric("moat_quota_held_seconds_total");
    assert!(held.is_some_and(|s| s > 0.0), "held = {held:?}");
}
