//! A rough figure for the per-packet cost, not a benchmark with statistics: run with
//! `cargo test --release -p moat-policy --test timing -- --ignored --nocapture`.
//! Nothing is asserted about time.

use moat_policy::{Action, PolicyDocument, PolicySet, Subject, template};
use moat_types::{TopicFilter, TopicName};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const EXTRA: &str = r##"
version = 1
[[statement]]
id = "zone-broadcast"
effect = "allow"
actions = ["subscribe", "receive"]
topics = ["zones/${device.attr.zone}/broadcast/#"]
[[statement]]
id = "group-events"
effect = "allow"
actions = ["publish"]
topics = ["groups/${device.group}/events/+", "groups/${device.group}/status"]
[[statement]]
id = "no-commands-out"
effect = "deny"
actions = ["publish"]
topics = ["devices/+/cmd/#"]
[[statement]]
id = "no-system"
effect = "deny"
actions = ["publish", "subscribe"]
topics = ["$SYS/#"]
"##;

fn per_op(iterations: u32, mut f: impl FnMut() -> bool) -> f64 {
    let mut allowed = 0u32;
    for _ in 0..iterations / 10 {
        allowed += u32::from(f());
    }
    let start = Instant::now();
    for _ in 0..iterations {
        allowed += u32::from(f());
    }
    let elapsed = start.elapsed();
    black_box(allowed);
    elapsed.as_nanos() as f64 / f64::from(iterations)
}

#[test]
#[ignore = "timing; run by hand in release mode"]
fn decision_cost() {
    let docs = [
        Arc::new(template("sensor").expect("built-in")),
        Arc::new(template("namespace").expect("built-in")),
        Arc::new(PolicyDocument::from_toml("extra", EXTRA).expect("valid")),
    ];
    let statements: usize = docs.iter().map(|d| d.statements().len()).sum();
    let attrs = BTreeMap::from([("zone".to_owned(), "north".to_owned())]);
    let subject = Subject {
        device_id: Some("sensor-0042"),
        group: Some("greenhouse-3"),
        attrs: &attrs,
        cert_cn: Some("sensor-0042"),
        client_id: Some("sensor-0042"),
    };
    let policy = PolicySet::new(docs).bind(&subject);
    let n = 2_000_000;
    println!("{statements} statements in 3 documents; ns per call:");
    for (what, name) in [
        (
            "publish, allowed by the first statement",
            "devices/sensor-0042/telemetry/temp",
        ),
        (
            "publish, allowed by the last document",
            "groups/greenhouse-3/status",
        ),
        ("publish, denied explicitly", "devices/other/cmd/reboot"),
        (
            "publish, denied implicitly",
            "somewhere/else/entirely/deep/down",
        ),
    ] {
        let topic = TopicName::parse(name).expect("topic");
        let fast = per_op(n, || {
            policy.allows_topic(black_box(Action::Publish), black_box(&topic))
        });
        let full = per_op(n, || {
            policy
                .decide_topic(black_box(Action::Publish), black_box(&topic))
                .allowed
        });
        println!("  allows_topic {fast:6.1}   decide_topic {full:6.1}   {what}");
    }
    for name in ["devices/sensor-0042/cmd/#", "zones/north/broadcast/+", "#"] {
        let filter = TopicFilter::parse(name).expect("filter");
        let t = per_op(n, || policy.decide_subscribe(black_box(&filter)).allowed);
        println!("  decide_subscribe {t:6.1}   {name}");
    }
    let bind = per_op(200_000, || {
        PolicySet::new([Arc::new(template("sensor").expect("built-in"))])
            .bind(black_box(&subject))
            .has_receive_rules()
    });
    println!("  parse sensor template + bind: {bind:.0}");
    let set = PolicySet::new([
        Arc::new(template("sensor").expect("built-in")),
        Arc::new(template("namespace").expect("built-in")),
        Arc::new(PolicyDocument::from_toml("extra", EXTRA).expect("valid")),
    ]);
    let bind = per_op(200_000, || {
        set.bind(black_box(&subject)).has_receive_rules()
    });
    println!("  bind of the set: {bind:.0}");
}
