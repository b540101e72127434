//! Property tests against a reference evaluator written separately from the engine:
//! string substitution and a recursive matcher, no compiled filters.
//!
//! 1. `decide_topic` (and `allows_topic`, and `decide_connect`) agree with the reference
//!    on random documents, subjects and topics, deciding statement included.
//! 2. Cover soundness: when `decide_subscribe` allows a filter, every topic the filter
//!    matches is allowed by some allow statement and hit by no deny statement.
//! 3. The canonical form round-trips: `from_json(to_json(doc)) == doc`, and a document
//!    written as TOML or JSON parses to the same thing.

use moat_policy::{Action, Decision, Effect, PolicyDocument, PolicySet, StatementRef, Subject};
use moat_types::{TopicFilter, TopicName};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A statement as generated, before it is written out.
#[derive(Clone, Debug)]
struct Spec {
    effect: Effect,
    actions: Vec<Action>,
    topics: Vec<String>,
}

#[derive(Clone, Debug)]
struct SubjectSpec {
    device_id: Option<&'static str>,
    group: Option<&'static str>,
    attr: Option<&'static str>,
    cert_cn: Option<&'static str>,
    client_id: Option<&'static str>,
}

impl SubjectSpec {
    fn attrs(&self) -> BTreeMap<String, String> {
        self.attr
            .map(|v| BTreeMap::from([("k".to_owned(), v.to_owned())]))
            .unwrap_or_default()
    }

    fn value(&self, variable: &str) -> Option<&'static str> {
        match variable {
            "device.id" => self.device_id,
            "device.group" => self.group,
            "device.attr.k" => self.attr,
            "cert.subject.cn" => self.cert_cn,
            "client.id" => self.client_id,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The reference evaluator.

const VARIABLES: [&str; 5] = [
    "device.id",
    "device.group",
    "device.attr.k",
    "cert.subject.cn",
    "client.id",
];

/// The marker for a level that matches anything (an unbound level of a deny pattern).
/// Generated topics never contain `*`.
const ANY: &str = "*";

/// Substitutes one level; `None` if a variable is unbound.
fn substitute_level(level: &str, first: bool, subject: &SubjectSpec) -> Option<String> {
    let mut out = level.to_owned();
    for variable in VARIABLES {
        let placeholder = format!("${{{variable}}}");
        if out.contains(&placeholder) {
            let value = subject.value(variable)?;
            let usable = !value.is_empty()
                && value.len() <= 256
                && !value.contains(['/', '+', '#', '\0'])
                && !value.chars().any(char::is_control);
            if !usable {
                return None;
            }
            out = out.replace(&placeholder, value);
        }
    }
    // Whether the pattern's own text (not a variable) starts the level with `$`.
    let literal_dollar = level.starts_with('$') && !level.starts_with("${");
    if first && out.starts_with('$') && !literal_dollar {
        return None;
    }
    Some(out)
}

/// The pattern's levels after substitution, or `None` if an allow pattern has an unbound
/// variable; a deny pattern gets [`ANY`] for the level instead.
fn reference_bind(pattern: &str, effect: Effect, subject: &SubjectSpec) -> Option<Vec<String>> {
    let mut levels = Vec::new();
    for (i, level) in pattern.split('/').enumerate() {
        match substitute_level(level, i == 0, subject) {
            Some(l) => levels.push(l),
            None if effect == Effect::Deny => levels.push(ANY.to_owned()),
            None => return None,
        }
    }
    Some(levels)
}

fn reference_matches(filter: &[String], topic: &[&str]) -> bool {
    fn walk(f: &[String], t: &[&str]) -> bool {
        match (f.split_first(), t.split_first()) {
            (Some((fl, _)), _) if fl == "#" => true,
            (None, None) => true,
            (Some((fl, f_rest)), Some((tl, t_rest))) => {
                (fl == "+" || fl == ANY || fl == tl) && walk(f_rest, t_rest)
            }
            _ => false,
        }
    }
    let dollar = topic.first().is_some_and(|l| l.starts_with('$'));
    if dollar && filter.first().is_some_and(|l| l == "+" || l == "#") {
        return false;
    }
    walk(filter, topic)
}

/// How the reference sees a question: the levels of the thing asked about.
fn reference_decide(
    specs: &[Spec],
    subject: &SubjectSpec,
    action: Action,
    levels: &[&str],
) -> Decision {
    let receive_rules = specs.iter().any(|s| s.actions.contains(&Action::Receive));
    let action = if action == Action::Receive && !receive_rules {
        Action::Subscribe
    } else {
        action
    };
    let statement_ref = |i: usize, effect| StatementRef {
        policy: "prop".into(),
        statement: format!("s{i}"),
        effect,
    };
    for wanted in [Effect::Deny, Effect::Allow] {
        for (i, spec) in specs.iter().enumerate() {
            if spec.effect != wanted || !spec.actions.contains(&action) {
                continue;
            }
            let hit = spec.topics.iter().any(|pattern| {
                reference_bind(pattern, spec.effect, subject)
                    .is_some_and(|filter| reference_matches(&filter, levels))
            });
            if hit {
                return Decision {
                    allowed: wanted == Effect::Allow,
                    by: Some(statement_ref(i, wanted)),
                };
            }
        }
    }
    Decision::implicit_deny()
}

// ---------------------------------------------------------------------------------------
// Generators.

const PATTERN_LEVELS: &[&str] = &[
    "a",
    "b",
    "$s",
    "",
    "+",
    "${device.id}",
    "x${device.attr.k}",
    "${client.id}",
    "${device.group}-${cert.subject.cn}",
    "$${device.id}",
];

const TOPIC_LEVELS: &[&str] = &["a", "b", "$s", "", "d1", "xb", "x$s", "g-cn", "$a", "zz"];

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(PATTERN_LEVELS), 0..4),
        prop::sample::select([PATTERN_LEVELS, &["#"]].concat()),
    )
        .prop_map(|(mut levels, last)| {
            levels.push(last);
            levels.join("/")
        })
        .prop_filter("not empty", |p| !p.is_empty())
}

fn statement() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec![Effect::Allow, Effect::Allow, Effect::Deny]),
        prop::sample::subsequence(Action::ALL.to_vec(), 1..=3),
        prop::collection::vec(pattern(), 1..4),
    )
        .prop_map(|(effect, actions, topics)| Spec {
            effect,
            actions,
            topics,
        })
}

fn subject() -> impl Strategy<Value = SubjectSpec> {
    (
        prop::sample::select(vec![Some("a"), Some("d1"), None]),
        prop::sample::select(vec![Some("g"), None]),
        prop::sample::select(vec![
            Some("b"),
            Some("a/b"),
            Some("+"),
            Some(""),
            Some("$s"),
            None,
        ]),
        prop::sample::select(vec![Some("cn"), Some("#"), None]),
        prop::sample::select(vec![Some("a"), Some("$s"), Some("#"), Some("d1"), None]),
    )
        .prop_map(|(device_id, group, attr, cert_cn, client_id)| SubjectSpec {
            device_id,
            group,
            attr,
            cert_cn,
            client_id,
        })
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select([TOPIC_LEVELS, &["+"]].concat()), 0..4),
        prop::sample::select([TOPIC_LEVELS, &["+", "#"]].concat()),
    )
        .prop_map(|(mut levels, last)| {
            levels.push(last);
            levels.join("/")
        })
        .prop_filter("a filter is not empty", |f| !f.is_empty())
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn to_toml(specs: &[Spec]) -> String {
    let mut text = String::from("version = 1\n");
    for (i, spec) in specs.iter().enumerate() {
        let actions: Vec<String> = spec
            .actions
            .iter()
            .map(|a| toml_string(a.as_str()))
            .collect();
        let topics: Vec<String> = spec.topics.iter().map(|t| toml_string(t)).collect();
        text.push_str(&format!(
            "\n[[statement]]\nid = \"s{i}\"\neffect = \"{}\"\nactions = [{}]\ntopics = [{}]\n",
            spec.effect,
            actions.join(", "),
            topics.join(", ")
        ));
    }
    text
}

fn to_json(specs: &[Spec]) -> String {
    let statements: Vec<serde_json::Value> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            serde_json::json!({
                "id": format!("s{i}"),
                "effect": spec.effect.as_str(),
                "actions": spec.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "topics": spec.topics,
            })
        })
        .collect();
    serde_json::json!({"version": 1, "statement": statements}).to_string()
}

fn load(specs: &[Spec], as_json: bool) -> PolicyDocument {
    let text = if as_json {
        to_json(specs)
    } else {
        to_toml(specs)
    };
    PolicyDocument::parse("prop", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Instantiates `filter` into a topic it matches, using `choices` for wildcard levels.
fn instantiate(filter: &str, choices: &[&str]) -> String {
    let mut next = choices.iter().cycle();
    let mut levels: Vec<&str> = Vec::new();
    for level in filter.split('/') {
        match level {
            "+" => levels.push(next.next().copied().unwrap_or("a")),
            "#" => {
                let extra = choices.len() % 3;
                levels.extend(next.by_ref().take(extra).copied());
            }
            _ => levels.push(level),
        }
    }
    levels.join("/")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decisions_agree_with_the_reference(
        specs in prop::collection::vec(statement(), 0..6),
        who in subject(),
        as_json in any::<bool>(),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let attrs = who.attrs();
        let subject = Subject {
            device_id: who.device_id,
            group: who.group,
            attrs: &attrs,
            cert_cn: who.cert_cn,
            client_id: who.client_id,
        };
        let policy = PolicySet::new([Arc::new(load(&specs, as_json))]).bind(&subject);
        for name in &topics {
            let topic_name = TopicName::parse(name).expect("generated topic");
            let levels: Vec<&str> = name.split('/').collect();
            for action in [Action::Publish, Action::Retain, Action::Receive, Action::Subscribe] {
                let expected = reference_decide(&specs, &who, action, &levels);
                prop_assert_eq!(&policy.decide_topic(action, &topic_name), &expected,
                    "{} {}", action, name);
                prop_assert_eq!(policy.allows_topic(action, &topic_name), expected.allowed);
            }
            // Connect: the whole string is one level.
            let expected = reference_decide(&specs, &who, Action::Connect, &[name.as_str()]);
            prop_assert_eq!(policy.decide_connect(name), expected, "connect {}", name);
        }
    }

    #[test]
    fn an_allowed_subscription_only_reaches_allowed_topics(
        specs in prop::collection::vec(statement(), 1..6),
        who in subject(),
        filters in prop::collection::vec(filter(), 1..8),
        choices in prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..6),
    ) {
        let attrs = who.attrs();
        let subject = Subject {
            device_id: who.device_id,
            group: who.group,
            attrs: &attrs,
            cert_cn: who.cert_cn,
            client_id: who.client_id,
        };
        let policy = PolicySet::new([Arc::new(load(&specs, false))]).bind(&subject);
        // Random filters are rarely allowed; narrowings of the allow patterns often are.
        let mut candidates = filters.clone();
        for spec in specs.iter().filter(|s| s.effect == Effect::Allow) {
            for pattern in &spec.topics {
                let Some(levels) = reference_bind(pattern, Effect::Allow, &who) else { continue };
                candidates.push(levels.join("/"));
                for (i, level) in levels.iter().enumerate() {
                    let narrower: &[&str] = match level.as_str() {
                        "#" => &["+/#", "a/#", "+", "a", "$s/#", "+/+"],
                        "+" => &["a", "$s", ""],
                        _ => &[],
                    };
                    for replacement in narrower {
                        let mut variant = levels.clone();
                        variant[i] = (*replacement).to_owned();
                        candidates.push(variant.join("/"));
                    }
                }
            }
        }
        for text in &candidates {
            let Ok(requested) = TopicFilter::parse(text) else { continue };
            if !policy.decide_subscribe(&requested).allowed {
                continue;
            }
            // Every rotation of the choices gives another topic the filter matches.
            for start in 0..choices.len() {
                let mut rotated = choices.clone();
                rotated.rotate_left(start);
                let name = instantiate(text, &rotated);
                let Ok(topic_name) = TopicName::parse(&name) else { continue };
                if !requested.matches(&topic_name) {
                    continue; // the `$` rule ruled this instance out
                }
                let levels: Vec<&str> = name.split('/').collect();
                let reference = reference_decide(&specs, &who, Action::Subscribe, &levels);
                prop_assert!(reference.allowed,
                    "subscribe {} allowed, but {} is {:?}", text, name, reference);
            }
        }
    }

    #[test]
    fn canonical_form_round_trips(
        specs in prop::collection::vec(statement(), 0..6),
        odd in prop::collection::vec(prop::sample::select(vec![
            "quote\"d", "back\\slash", "ünï©ødé", "sp ace", "tab\u{a0}nbsp", "{}", "$", "}"
        ]), 0..4),
        as_json in any::<bool>(),
    ) {
        let mut specs = specs;
        if let Some(first) = specs.first_mut() {
            first.topics.extend(odd.iter().map(|s| s.to_string()));
        }
        let document = load(&specs, as_json);
        let other = load(&specs, !as_json);
        prop_assert_eq!(&document, &other, "TOML and JSON read the same");
        let json = document.to_json();
        let again = PolicyDocument::from_json("prop", &json).expect("canonical form parses");
        prop_assert_eq!(&again, &document);
        prop_assert_eq!(again.to_json(), json);
        prop_assert_eq!(PolicyDocument::parse("prop", &document.to_json()), Ok(document));
    }
}
