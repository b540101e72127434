//! Decisions of bound policies: every action, every variable, injection through values,
//! deny over allow, subscribe cover and overlap with the `$` rule, connect patterns,
//! receive, and the behaviour of the built-in templates.

use moat_policy::{
    Action, BoundPolicy, Decision, Effect, PolicyDocument, PolicySet, StatementRef, Subject,
    template,
};
use moat_types::{TopicFilter, TopicName};
use std::collections::BTreeMap;
use std::sync::Arc;

fn doc(name: &str, toml: &str) -> Arc<PolicyDocument> {
    Arc::new(PolicyDocument::from_toml(name, toml).expect("valid policy"))
}

fn bind(docs: &[Arc<PolicyDocument>], subject: &Subject<'_>) -> BoundPolicy {
    PolicySet::new(docs.iter().cloned()).bind(subject)
}

fn t(s: &str) -> TopicName {
    TopicName::parse(s).expect("topic name")
}

fn f(s: &str) -> TopicFilter {
    TopicFilter::parse(s).expect("topic filter")
}

fn by(policy: &str, statement: &str, effect: Effect) -> Option<StatementRef> {
    Some(StatementRef {
        policy: policy.into(),
        statement: statement.into(),
        effect,
    })
}

/// Asserts `decide_topic` and `allows_topic` agree, and returns the decision.
fn topic(policy: &BoundPolicy, action: Action, name: &str) -> Decision {
    let decision = policy.decide_topic(action, &t(name));
    assert_eq!(
        policy.allows_topic(action, &t(name)),
        decision.allowed,
        "{action} {name}"
    );
    decision
}

fn allows(policy: &BoundPolicy, action: Action, name: &str) -> bool {
    topic(policy, action, name).allowed
}

fn may_subscribe(policy: &BoundPolicy, filter: &str) -> bool {
    policy.decide_subscribe(&f(filter)).allowed
}

/// One statement per action, each on its own subtree.
const PER_ACTION: &str = r##"
version = 1
[[statement]]
id = "c"
effect = "allow"
actions = ["connect"]
topics = ["client-1"]
[[statement]]
id = "p"
effect = "allow"
actions = ["publish"]
topics = ["pub/#"]
[[statement]]
id = "s"
effect = "allow"
actions = ["subscribe"]
topics = ["sub/#"]
[[statement]]
id = "r"
effect = "allow"
actions = ["receive"]
topics = ["recv/#"]
[[statement]]
id = "k"
effect = "allow"
actions = ["retain"]
topics = ["ret/#"]
"##;

#[test]
fn each_action_is_decided_by_its_own_statements() {
    let policy = bind(&[doc("acts", PER_ACTION)], &Subject::anonymous());
    let cases = [
        (Action::Publish, "pub/x", "p"),
        (Action::Subscribe, "sub/x", "s"),
        (Action::Receive, "recv/x", "r"),
        (Action::Retain, "ret/x", "k"),
        (Action::Connect, "client-1", "c"),
    ];
    for (action, name, statement) in cases {
        assert_eq!(
            topic(&policy, action, name),
            Decision {
                allowed: true,
                by: by("acts", statement, Effect::Allow)
            }
        );
        for (other, other_name, _) in cases {
            if other != action {
                assert_eq!(
                    topic(&policy, other, name),
                    Decision::implicit_deny(),
                    "{other} {name} (allowed only for {action} via {other_name})"
                );
            }
        }
    }
    assert!(may_subscribe(&policy, "sub/+/x"));
    assert!(!may_subscribe(&policy, "pub/x"));
    assert!(policy.decide_connect("client-1").allowed);
    assert!(!policy.decide_connect("client-2").allowed);
    assert!(policy.has_receive_rules());
}

#[test]
fn every_variable_binds() {
    let policy_text = r##"
version = 1
[[statement]]
id = "vars"
effect = "allow"
actions = ["publish"]
topics = [
  "id/${device.id}",
  "group/${device.group}",
  "zone/${device.attr.zone}",
  "cn/${cert.subject.cn}",
  "client/${client.id}",
  "mixed/pre-${device.id}.${device.attr.floor_2}-post/${device.group}${client.id}/#",
]
"##;
    let attrs = BTreeMap::from([
        ("zone".to_owned(), "north".to_owned()),
        ("floor_2".to_owned(), "f2".to_owned()),
    ]);
    let subject = Subject {
        device_id: Some("d1"),
        group: Some("g1"),
        attrs: &attrs,
        cert_cn: Some("cn-1"),
        client_id: Some("c1"),
    };
    let policy = bind(&[doc("vars", policy_text)], &subject);
    for ok in [
        "id/d1",
        "group/g1",
        "zone/north",
        "cn/cn-1",
        "client/c1",
        "mixed/pre-d1.f2-post/g1c1",
        "mixed/pre-d1.f2-post/g1c1/deeper",
    ] {
        assert!(allows(&policy, Action::Publish, ok), "{ok}");
    }
    for denied in [
        "id/d2",
        "id/d1/x",
        "group/g2",
        "zone/south",
        "cn/d1",
        "client/c2",
        "mixed/pre-d1.f2-post/g1",
        "zone/${device.attr.zone}",
    ] {
        assert!(!allows(&policy, Action::Publish, denied), "{denied}");
    }

    // The same policy for a subject with nothing bound grants nothing.
    let nobody = bind(&[doc("vars", policy_text)], &Subject::anonymous());
    for topic_name in ["id/d1", "group/", "zone/north", "cn/cn-1", "client/c1"] {
        assert!(
            !allows(&nobody, Action::Publish, topic_name),
            "{topic_name}"
        );
    }
}

#[test]
fn values_never_inject_levels_or_wildcards() {
    let policy_text = r##"
version = 1
[[statement]]
id = "own-zone"
effect = "allow"
actions = ["publish", "subscribe"]
topics = ["zones/${device.attr.zone}/data", "clients/${client.id}/#"]
"##;
    for hostile in ["+", "#", "a/b", "north/#", "", "a\0b", "+/+", "x#", "y+"] {
        let attrs = BTreeMap::from([("zone".to_owned(), hostile.to_owned())]);
        let subject = Subject {
            device_id: Some("d1"),
            attrs: &attrs,
            client_id: Some(hostile),
            ..Subject::anonymous()
        };
        let policy = bind(&[doc("p", policy_text)], &subject);
        for name in [
            "zones/north/data",
            "zones/a/b/data",
            "zones/a/data",
            "clients/x",
            "clients/a/b",
            "clients/north/x",
        ] {
            assert!(
                !allows(&policy, Action::Publish, name),
                "{hostile:?} granted {name}"
            );
        }
        for filter in ["zones/+/data", "zones/#", "#", "clients/#", "clients/+/#"] {
            assert!(
                !may_subscribe(&policy, filter),
                "{hostile:?} granted subscribe {filter}"
            );
        }
    }

    // Too long: unbound too.
    let long = "z".repeat(moat_policy::limits::MAX_VARIABLE_VALUE_LEN + 1);
    let attrs = BTreeMap::from([("zone".to_owned(), long.clone())]);
    let subject = Subject {
        attrs: &attrs,
        ..Subject::device("d1")
    };
    let policy = bind(&[doc("p", policy_text)], &subject);
    assert!(!allows(
        &policy,
        Action::Publish,
        &format!("zones/{long}/data")
    ));

    // A device-chosen client id cannot move a pattern into `$`-topics.
    let subject = Subject {
        client_id: Some("$SYS"),
        ..Subject::device("d1")
    };
    let dollar = bind(
        &[doc(
            "p",
            "version = 1\n[[statement]]\nid = \"own\"\neffect = \"allow\"\nactions = [\"publish\"]\ntopics = [\"${client.id}/#\", \"x/${client.id}\"]\n",
        )],
        &subject,
    );
    assert!(!allows(&dollar, Action::Publish, "$SYS/broker/load"));
    assert!(
        allows(&dollar, Action::Publish, "x/$SYS"),
        "literal below the root"
    );
}

#[test]
fn an_unbound_deny_still_denies_every_value() {
    let policy_text = r##"
version = 1
[[statement]]
id = "zones"
effect = "allow"
actions = ["publish", "subscribe"]
topics = ["zones/#", "#", "$SYS/#"]
[[statement]]
id = "not-other-secrets"
effect = "deny"
actions = ["publish", "subscribe"]
topics = ["zones/${device.attr.zone}/secret"]
[[statement]]
id = "not-as-client"
effect = "deny"
actions = ["publish", "subscribe"]
topics = ["${client.id}/private/#"]
"##;
    // No zone attribute, a hostile client id.
    let subject = Subject {
        client_id: Some("a/+"),
        ..Subject::device("d1")
    };
    let policy = bind(&[doc("p", policy_text)], &subject);
    for name in ["zones/north/secret", "zones/$x/secret", "zones//secret"] {
        assert_eq!(
            topic(&policy, Action::Publish, name).by,
            by("p", "not-other-secrets", Effect::Deny),
            "{name}"
        );
    }
    assert!(allows(&policy, Action::Publish, "zones/north/open"));
    assert!(!may_subscribe(&policy, "zones/+/secret"));
    assert!(!may_subscribe(&policy, "zones/#"));
    assert!(may_subscribe(&policy, "zones/north/open"));
    assert!(
        !may_subscribe(&policy, "zones/north/+"),
        "could match zones/north/secret"
    );
    assert!(
        !may_subscribe(&policy, "zones/+/open"),
        "could match zones/private/open, which the unbound `${{client.id}}/private/#` denies"
    );
    // The unbound first level matches `$`-levels too.
    for name in ["anything/private/x", "$SYS/private", "a/private"] {
        assert_eq!(
            topic(&policy, Action::Publish, name).by,
            by("p", "not-as-client", Effect::Deny),
            "{name}"
        );
    }
    assert!(!may_subscribe(&policy, "$SYS/#"), "overlaps `*/private/#`");
    assert!(may_subscribe(&policy, "$SYS/broker/+"));

    // Bound, the deny is as narrow as written.
    let attrs = BTreeMap::from([("zone".to_owned(), "north".to_owned())]);
    let subject = Subject {
        attrs: &attrs,
        client_id: Some("c1"),
        ..Subject::device("d1")
    };
    let policy = bind(&[doc("p", policy_text)], &subject);
    assert!(!allows(&policy, Action::Publish, "zones/north/secret"));
    assert!(allows(&policy, Action::Publish, "zones/south/secret"));
    assert!(allows(&policy, Action::Publish, "c2/private/x"));
    assert!(!allows(&policy, Action::Publish, "c1/private/x"));
}

#[test]
fn explicit_deny_wins_whatever_the_order() {
    let allow = doc(
        "allow-all",
        "version = 1\n[[statement]]\nid = \"everything\"\neffect = \"allow\"\nactions = [\"publish\", \"subscribe\"]\ntopics = [\"#\"]\n",
    );
    let deny = doc(
        "no-cmd",
        "version = 1\n[[statement]]\nid = \"cmd\"\neffect = \"deny\"\nactions = [\"publish\"]\ntopics = [\"devices/+/cmd/#\"]\n",
    );
    let subject = Subject::device("d1");
    for order in [[allow.clone(), deny.clone()], [deny.clone(), allow.clone()]] {
        let policy = bind(&order, &subject);
        assert_eq!(
            topic(&policy, Action::Publish, "devices/d2/cmd/reboot"),
            Decision {
                allowed: false,
                by: by("no-cmd", "cmd", Effect::Deny)
            }
        );
        assert_eq!(
            topic(&policy, Action::Publish, "devices/d2/telemetry"),
            Decision {
                allowed: true,
                by: by("allow-all", "everything", Effect::Allow)
            }
        );
        // The deny names publish only.
        assert!(may_subscribe(&policy, "devices/+/cmd/#"));
    }
}

#[test]
fn nothing_matching_is_an_implicit_deny() {
    let policy = bind(
        &[template("sensor").expect("built-in").into()],
        &Subject::device("d1"),
    );
    let decision = topic(&policy, Action::Publish, "elsewhere");
    assert_eq!(decision, Decision::implicit_deny());
    assert_eq!(decision.by, None);
}

#[test]
fn subscribe_needs_cover_and_no_overlap() {
    let policy_text = r##"
version = 1
[[statement]]
id = "own"
effect = "allow"
actions = ["subscribe"]
topics = ["devices/d1/#", "a/+", "$SYS/broker/#"]
[[statement]]
id = "fleet"
effect = "allow"
actions = ["subscribe"]
topics = ["#"]
[[statement]]
id = "no-secrets"
effect = "deny"
actions = ["subscribe"]
topics = ["devices/d1/secret/#", "$SYS/broker/clients"]
"##;
    let policy = bind(&[doc("p", policy_text)], &Subject::device("d1"));
    let named = |filter: &str| policy.decide_subscribe(&f(filter));
    assert_eq!(
        named("devices/d1/status/+").by,
        by("p", "own", Effect::Allow)
    );
    assert_eq!(
        named("devices/d1/+/x").by,
        by("p", "no-secrets", Effect::Deny),
        "could match devices/d1/secret/x"
    );
    assert_eq!(named("a/b").by, by("p", "own", Effect::Allow));
    assert_eq!(
        named("a/#").by,
        by("p", "fleet", Effect::Allow),
        "`a/+` does not cover `a/#`"
    );
    assert_eq!(
        named("devices/d1/#").by,
        by("p", "no-secrets", Effect::Deny),
        "overlaps the deny"
    );
    assert_eq!(
        named("devices/+/secret").by,
        by("p", "no-secrets", Effect::Deny)
    );
    assert_eq!(named("#").by, by("p", "no-secrets", Effect::Deny));
    // `$` rule: `#` neither covers nor overlaps `$`-topics.
    assert_eq!(named("$SYS/broker/load").by, by("p", "own", Effect::Allow));
    assert_eq!(
        named("$SYS/broker/+").by,
        by("p", "no-secrets", Effect::Deny)
    );
    assert_eq!(
        named("$SYS/other"),
        Decision::implicit_deny(),
        "`#` does not cover it"
    );
    assert_eq!(
        named("+/broker/clients").by,
        by("p", "fleet", Effect::Allow),
        "`+/...` matches no `$SYS` topic, so it overlaps no `$SYS` deny"
    );
}

#[test]
fn connect_matches_the_whole_client_id_as_one_level() {
    let policy_text = r##"
version = 1
[[statement]]
id = "self"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}", "${device.id}-${device.attr.slot}"]
[[statement]]
id = "tools"
effect = "allow"
actions = ["connect"]
topics = ["tool/#"]
[[statement]]
id = "no-debug"
effect = "deny"
actions = ["connect"]
topics = ["debug"]
"##;
    let attrs = BTreeMap::from([("slot".to_owned(), "2".to_owned())]);
    let subject = Subject {
        attrs: &attrs,
        ..Subject::device("d1")
    };
    let policy = bind(&[doc("p", policy_text)], &subject);
    assert_eq!(
        policy.decide_connect("d1").by,
        by("p", "self", Effect::Allow)
    );
    assert!(policy.decide_connect("d1-2").allowed);
    assert!(!policy.decide_connect("d1-3").allowed);
    assert!(!policy.decide_connect("d10").allowed);
    assert!(
        !policy.decide_connect("d1/x").allowed,
        "a `/` is part of the id"
    );
    assert!(
        policy.decide_connect("tool").allowed,
        "`tool/#` matches its parent"
    );
    assert!(
        !policy.decide_connect("tool/x").allowed,
        "the id is one level"
    );
    assert!(!policy.decide_connect("").allowed);
    assert!(!policy.decide_connect("d1\0").allowed);
    assert_eq!(
        policy.decide_connect("debug").by,
        by("p", "no-debug", Effect::Deny)
    );
    // decide_topic(Connect) and allows_topic(Connect) answer the same.
    assert!(allows(&policy, Action::Connect, "d1"));
    assert!(!allows(&policy, Action::Connect, "tool/x"));

    let any = doc(
        "any",
        "version = 1\n[[statement]]\nid = \"any\"\neffect = \"allow\"\nactions = [\"connect\"]\ntopics = [\"+\"]\n",
    );
    let policy = bind(&[any], &Subject::anonymous());
    assert!(policy.decide_connect("whatever/with/slashes").allowed);
    assert!(
        !policy.decide_connect("$internal").allowed,
        "`+` skips `$` ids"
    );
}

#[test]
fn receive_is_implied_by_subscribe_unless_a_statement_names_it() {
    let subscribe_only = doc(
        "sub",
        "version = 1\n[[statement]]\nid = \"s\"\neffect = \"allow\"\nactions = [\"subscribe\"]\ntopics = [\"a/#\"]\n[[statement]]\nid = \"d\"\neffect = \"deny\"\nactions = [\"subscribe\"]\ntopics = [\"a/hidden\"]\n",
    );
    let policy = bind(
        std::slice::from_ref(&subscribe_only),
        &Subject::device("d1"),
    );
    assert!(!policy.has_receive_rules());
    assert_eq!(
        topic(&policy, Action::Receive, "a/x").by,
        by("sub", "s", Effect::Allow)
    );
    assert_eq!(
        topic(&policy, Action::Receive, "a/hidden").by,
        by("sub", "d", Effect::Deny)
    );
    assert!(!allows(&policy, Action::Receive, "b"));

    // Once any statement names receive, receive follows its own statements only.
    let receive = doc(
        "recv",
        "version = 1\n[[statement]]\nid = \"r\"\neffect = \"allow\"\nactions = [\"receive\"]\ntopics = [\"a/only\"]\n",
    );
    let policy = bind(&[subscribe_only, receive], &Subject::device("d1"));
    assert!(policy.has_receive_rules());
    assert!(allows(&policy, Action::Receive, "a/only"));
    assert!(!allows(&policy, Action::Receive, "a/x"));

    // Even a receive statement whose patterns are all unbound counts.
    let unbound = doc(
        "u",
        "version = 1\n[[statement]]\nid = \"r\"\neffect = \"allow\"\nactions = [\"receive\", \"subscribe\"]\ntopics = [\"x/${device.group}\"]\n",
    );
    let policy = bind(&[unbound], &Subject::device("d1"));
    assert!(policy.has_receive_rules());
}

#[test]
fn decide_topic_for_subscribe_is_the_literal_filter_case() {
    let policy = bind(
        &[template("gateway").expect("built-in").into()],
        &Subject::device("g1"),
    );
    for name in ["devices/g1/x", "gateways/g1/child/up", "devices/g2/x"] {
        assert_eq!(
            policy.decide_topic(Action::Subscribe, &t(name)),
            policy.decide_subscribe(&f(name)),
            "{name}"
        );
    }
}

/// A bound template for device `id`.
fn templated(name: &str, id: &str) -> BoundPolicy {
    bind(
        &[template(name).expect("built-in").into()],
        &Subject::device(id),
    )
}

#[test]
fn sensor_template() {
    let p = templated("sensor", "d1");
    assert!(p.decide_connect("d1").allowed);
    assert!(!p.decide_connect("d2").allowed);
    for a in [Action::Publish, Action::Retain] {
        assert!(allows(&p, a, "devices/d1/telemetry/temp"));
        assert!(allows(&p, a, "devices/d1/telemetry"));
        assert!(allows(&p, a, "devices/d1/state"));
        assert!(!allows(&p, a, "devices/d1/state/x"));
        assert!(!allows(&p, a, "devices/d2/telemetry/temp"));
        assert!(!allows(&p, a, "devices/d1/cmd/reboot"));
    }
    assert!(may_subscribe(&p, "devices/d1/cmd/#"));
    assert!(may_subscribe(&p, "devices/d1/config/+"));
    assert!(!may_subscribe(&p, "devices/d1/#"));
    assert!(!may_subscribe(&p, "devices/+/cmd/#"));
    assert!(allows(&p, Action::Receive, "devices/d1/cmd/reboot"));
    assert!(!allows(&p, Action::Receive, "devices/d1/telemetry/temp"));
    assert!(!allows(&p, Action::Publish, "devices/d1/ack/1"));
}

#[test]
fn actuator_template() {
    let p = templated("actuator", "a1");
    assert!(p.decide_connect("a1").allowed);
    assert!(allows(&p, Action::Publish, "devices/a1/ack/42"));
    assert!(!allows(&p, Action::Retain, "devices/a1/ack/42"));
    assert!(allows(&p, Action::Publish, "devices/a1/telemetry/x"));
    assert!(may_subscribe(&p, "devices/a1/cmd/#"));
    assert!(allows(&p, Action::Receive, "devices/a1/cmd/open"));
    assert!(!allows(&p, Action::Publish, "devices/a2/ack/42"));
}

#[test]
fn gateway_template() {
    let p = templated("gateway", "g1");
    for a in [Action::Publish, Action::Retain, Action::Receive] {
        assert!(allows(&p, a, "devices/g1/x"));
        assert!(allows(&p, a, "gateways/g1/child-7/telemetry"));
        assert!(!allows(&p, a, "gateways/g2/child-7/telemetry"));
        assert!(!allows(&p, a, "devices/child-7/telemetry"));
    }
    assert!(may_subscribe(&p, "gateways/g1/#"));
    assert!(!may_subscribe(&p, "gateways/#"));
}

#[test]
fn backend_service_template() {
    let p = templated("backend-service", "svc");
    assert!(p.decide_connect("svc").allowed);
    assert!(may_subscribe(&p, "devices/+/telemetry/#"));
    assert!(may_subscribe(&p, "devices/d1/state"));
    assert!(!may_subscribe(&p, "devices/#"));
    assert!(allows(&p, Action::Receive, "devices/d1/telemetry/temp"));
    assert!(allows(&p, Action::Publish, "devices/d1/cmd/reboot"));
    assert_eq!(
        topic(&p, Action::Publish, "devices/d1/telemetry/temp").by,
        by("backend-service", "no-spoofed-telemetry", Effect::Deny)
    );
    assert!(!allows(&p, Action::Retain, "devices/d1/state"));
}

#[test]
fn quarantine_template() {
    let p = templated("quarantine", "d1");
    assert!(p.decide_connect("d1").allowed);
    assert!(allows(&p, Action::Publish, "devices/d1/quarantine/status"));
    for a in [
        Action::Publish,
        Action::Retain,
        Action::Receive,
        Action::Subscribe,
    ] {
        assert!(!allows(&p, a, "devices/d1/telemetry/x"), "{a}");
    }
    assert!(!allows(&p, Action::Retain, "devices/d1/quarantine/status"));
    assert!(!may_subscribe(&p, "devices/d1/#"));
}

#[test]
fn namespace_template_is_the_foundation_rule() {
    // The cases of moat-broker's NamespaceAuthorizer test.
    let p = templated("namespace", "d1");
    assert!(allows(&p, Action::Publish, "devices/d1/temp"));
    assert!(allows(&p, Action::Publish, "devices/d1"));
    assert!(!allows(&p, Action::Publish, "devices/d2/temp"));
    assert!(!allows(&p, Action::Publish, "devices/d10/temp"));
    assert!(!allows(&p, Action::Publish, "other/d1"));
    assert!(may_subscribe(&p, "devices/d1/#"));
    assert!(may_subscribe(&p, "devices/d1/+/x"));
    assert!(!may_subscribe(&p, "devices/+/temp"));
    assert!(!may_subscribe(&p, "devices/#"));
    assert!(!may_subscribe(&p, "#"));
    assert!(p.decide_connect("d1").allowed);
    assert!(!p.decide_connect("d2").allowed);
    assert!(allows(&p, Action::Retain, "devices/d1/state"));
    assert!(allows(&p, Action::Receive, "devices/d1/cmd"));

    // Unlike the fixed rule, an anonymous subject gets nothing from it.
    let anonymous = bind(
        &[template("namespace").expect("built-in").into()],
        &Subject::anonymous(),
    );
    assert!(!may_subscribe(&anonymous, "#"));
    assert!(!anonymous.decide_connect("d1").allowed);
}

#[test]
fn allows_filter_is_the_cover_rule_for_any_action() {
    let doc = PolicyDocument::from_toml(
        "r",
        r#"
version = 1
[[statement]]
id = "wide"
effect = "allow"
actions = ["receive"]
topics = ["devices/${device.id}/#"]
[[statement]]
id = "secret"
effect = "deny"
actions = ["receive"]
topics = ["devices/+/secret/#"]
"#,
    )
    .expect("policy");
    let bound = PolicySet::new([std::sync::Arc::new(doc)]).bind(&Subject::device("d1"));
    let f = |s: &str| moat_types::TopicFilter::parse(s).expect("filter");
    assert!(bound.allows_filter(Action::Receive, &f("devices/d1/temp/#")));
    assert!(
        !bound.allows_filter(Action::Receive, &f("devices/d1/#")),
        "overlaps the deny"
    );
    assert!(
        !bound.allows_filter(Action::Receive, &f("devices/d2/temp")),
        "not covered"
    );
    assert!(
        !bound.allows_filter(Action::Publish, &f("devices/d1/temp")),
        "no publish rule"
    );
}
