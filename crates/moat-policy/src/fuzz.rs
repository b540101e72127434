//! Entry point for the cargo-fuzz target in `/fuzz` (feature `fuzzing`), kept in the crate
//! so that the target is a three-line shim and regression tests can call the same code.
//! Panics only when an invariant of the engine is broken.

use crate::{Action, Effect, PolicyDocument, PolicySet, Subject};
use moat_types::{TopicFilter, TopicName};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Fixed topics decided for every document, besides the document's own patterns.
const TOPICS: &[&str] = &[
    "devices/d1/telemetry/t",
    "devices/d1/state",
    "devices/d2/cmd/x",
    "devices/d1",
    "$SYS/broker/load",
    "gateways/d1/child/up",
    "a/b/c",
    "/",
];

/// Fixed filters decided for every document, besides the document's own patterns.
const FILTERS: &[&str] = &[
    "#",
    "+/#",
    "devices/d1/#",
    "devices/+/cmd/#",
    "$SYS/#",
    "a/+",
];

/// How many of the document's own patterns are also tried as topics and filters (bounds
/// the work per input).
const OWN_PATTERNS: usize = 16;

/// Parses `data` as a policy; if it parses, checks the canonical form round-trips, binds
/// it to a device subject and to the anonymous subject, and decides every action on a set
/// of topics, filters and client ids, checking that the fast and the full answers agree and
/// that every decision names a statement of the right effect.
pub fn parse_and_decide(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(document) = PolicyDocument::parse("fuzz", text) else {
        return;
    };
    let again = PolicyDocument::from_json("fuzz", &document.to_json());
    assert_eq!(
        again.as_ref(),
        Ok(&document),
        "canonical form does not round-trip"
    );

    let own: Vec<&str> = document
        .statements()
        .iter()
        .flat_map(|s| s.topics())
        .map(|p| p.as_str())
        .take(OWN_PATTERNS)
        .collect();
    let topics: Vec<TopicName> = TOPICS
        .iter()
        .chain(&own)
        .filter_map(|t| TopicName::parse(t).ok())
        .collect();
    let filters: Vec<TopicFilter> = FILTERS
        .iter()
        .chain(&own)
        .filter_map(|f| TopicFilter::parse(f).ok())
        .collect();

    let attrs = BTreeMap::from([
        ("zone".to_owned(), "z1".to_owned()),
        ("evil".to_owned(), "a/+/#".to_owned()),
    ]);
    let device = Subject {
        device_id: Some("d1"),
        group: Some("g1"),
        attrs: &attrs,
        cert_cn: Some("d1"),
        client_id: Some("$SYS"),
    };
    let set = PolicySet::new([Arc::new(document)]);
    for policy in [set.bind(&device), set.bind(&Subject::anonymous())] {
        for topic in &topics {
            for action in Action::ALL {
                let decision = policy.decide_topic(action, topic);
                assert_eq!(decision.allowed, policy.allows_topic(action, topic));
                check_named(decision.allowed, decision.by.as_ref().map(|b| b.effect));
            }
        }
        for filter in &filters {
            let decision = policy.decide_subscribe(filter);
            check_named(decision.allowed, decision.by.as_ref().map(|b| b.effect));
            if let Ok(topic) = TopicName::parse(filter.as_str()) {
                assert_eq!(
                    decision,
                    policy.decide_topic(Action::Subscribe, &topic),
                    "a filter without wildcards is decided like a topic"
                );
            }
        }
        for id in ["d1", "d2", "$SYS", "a/b", "", "d1\0"] {
            let decision = policy.decide_connect(id);
            check_named(decision.allowed, decision.by.as_ref().map(|b| b.effect));
        }
    }
}

fn check_named(allowed: bool, effect: Option<Effect>) {
    match effect {
        Some(Effect::Allow) => assert!(allowed, "an allow statement denied"),
        Some(Effect::Deny) => assert!(!allowed, "a deny statement allowed"),
        None => assert!(!allowed, "allowed without a statement"),
    }
}

/// Hand-written seeds beside the templates: every variable, unbound denies, `$`-topics,
/// connect patterns, and a few near misses that fail late in validation.
pub const SEEDS: &[(&str, &str)] = &[
    (
        "variables.toml",
        r##"version = 1
[[statement]]
id = "vars"
effect = "allow"
actions = ["publish", "subscribe", "receive", "retain"]
topics = ["id/${device.id}", "g/${device.group}/+", "z/${device.attr.zone}/#",
  "cn/x-${cert.subject.cn}-y", "c/${client.id}", "e/${device.attr.evil}/#", "$${device.id}/a"]
[[statement]]
id = "deny-unbound"
effect = "deny"
actions = ["publish", "subscribe"]
topics = ["${client.id}/private/#", "z/${device.attr.missing}/secret"]
[[statement]]
id = "connect"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}", "tool/#", "+"]
"##,
    ),
    (
        "dollar.json",
        r##"{"version":1,"statement":[
{"id":"sys","effect":"allow","actions":["subscribe","receive"],"topics":["$SYS/#","#","+/+"]},
{"id":"no-clients","effect":"deny","actions":["subscribe"],"topics":["$SYS/broker/clients/#","a/+/b"]},
{"id":"pub","effect":"allow","actions":["publish","publish"],"topics":["/","//","a//b/#"]}]}"##,
    ),
    (
        "duplicate-id.toml",
        r#"version = 1
[[statement]]
id = "a"
effect = "allow"
actions = ["publish"]
topics = ["a"]
[[statement]]
id = "a"
effect = "deny"
actions = ["publish"]
topics = ["b"]
"#,
    ),
    (
        "bad-pattern.json",
        r#"{"version":1,"statement":[{"id":"a","effect":"allow","actions":["publish"],"topics":["a/${device.attr.x}+/#"]}]}"#,
    ),
    ("empty.toml", "version = 1\n"),
];

#[cfg(test)]
mod tests {
    use super::SEEDS;

    /// Regenerates `fuzz/seeds/policy/`:
    /// `cargo test -p moat-policy write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/policy");
        std::fs::create_dir_all(&dir).expect("seed directory");
        for name in crate::TEMPLATES {
            let text = crate::template_text(name).expect("built-in");
            std::fs::write(dir.join(format!("template-{name}.toml")), text).expect("write");
            let json = crate::template(name).expect("built-in").to_json();
            std::fs::write(dir.join(format!("template-{name}.json")), json).expect("write");
        }
        for (name, text) in SEEDS {
            std::fs::write(dir.join(name), text).expect("write");
        }
    }

    #[test]
    fn seeds_run_clean() {
        for (name, text) in SEEDS {
            let near_miss = name.starts_with("bad-") || name.starts_with("duplicate-");
            assert_eq!(
                crate::PolicyDocument::parse("seed", text).is_ok(),
                !near_miss,
                "{name}"
            );
            super::parse_and_decide(text.as_bytes());
        }
        for template in crate::TEMPLATES {
            let text = crate::template_text(template).expect("built-in");
            super::parse_and_decide(text.as_bytes());
            let json = crate::template(template).expect("built-in").to_json();
            super::parse_and_decide(json.as_bytes());
        }
        super::parse_and_decide(b"\xff");
        super::parse_and_decide(b"version = 2");
    }
}
