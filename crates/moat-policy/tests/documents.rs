//! Parsing policy documents: both syntaxes, every error with its position, the limits,
//! the canonical form and the built-in templates.

use moat_policy::limits::{
    MAX_DOCUMENT_BYTES, MAX_NAME_LEN, MAX_PATTERN_LEN, MAX_STATEMENTS, MAX_TOPICS_PER_STATEMENT,
};
use moat_policy::{
    Action, Effect, Format, Location, PolicyDocument, PolicyError, TEMPLATES, template,
    template_text,
};

const SENSOR_TOML: &str = r#"
# policy "sensor"
version = 1
[[statement]]
id = "own-telemetry"
effect = "allow"
actions = ["publish", "retain"]
topics = ["devices/${device.id}/telemetry/#", "devices/${device.id}/state"]
[[statement]]
id = "no-commands-out"
effect = "deny"
actions = ["publish"]
topics = ["devices/+/cmd/#"]
"#;

const SENSOR_JSON: &str = r#"{"version": 1, "statement": [
  {"id": "own-telemetry", "effect": "allow", "actions": ["retain", "publish"],
   "topics": ["devices/${device.id}/telemetry/#", "devices/${device.id}/state"]},
  {"id": "no-commands-out", "effect": "deny", "actions": ["publish"],
   "topics": ["devices/+/cmd/#"]}
]}"#;

/// The error of parsing `text`, which must fail with [`PolicyError::Invalid`].
fn invalid(text: &str) -> (Format, Location, String) {
    match PolicyDocument::parse("p", text) {
        Err(PolicyError::Invalid {
            format,
            location,
            message,
            ..
        }) => (format, location, message),
        other => panic!("expected an invalid document, got {other:?}"),
    }
}

fn at(line: usize, column: usize) -> Location {
    Location { line, column }
}

/// A TOML statement with the given fields.
fn statement(id: &str, effect: &str, actions: &str, topics: &str) -> String {
    format!(
        "[[statement]]\nid = \"{id}\"\neffect = \"{effect}\"\nactions = {actions}\ntopics = {topics}\n"
    )
}

#[test]
fn toml_and_json_read_the_same_schema() {
    let toml = PolicyDocument::from_toml("sensor", SENSOR_TOML).expect("valid TOML");
    let json = PolicyDocument::from_json("sensor", SENSOR_JSON).expect("valid JSON");
    assert_eq!(toml, json, "action order does not matter");
    assert_eq!(
        PolicyDocument::parse("sensor", SENSOR_TOML),
        Ok(toml.clone())
    );
    assert_eq!(
        PolicyDocument::parse("sensor", SENSOR_JSON),
        Ok(toml.clone())
    );
    assert_eq!(toml.name(), "sensor");
    let first = &toml.statements()[0];
    assert_eq!(first.id(), "own-telemetry");
    assert_eq!(first.effect(), Effect::Allow);
    assert_eq!(
        first.actions().collect::<Vec<_>>(),
        [Action::Publish, Action::Retain]
    );
    assert!(first.names(Action::Retain) && !first.names(Action::Receive));
    assert_eq!(first.topics()[1].as_str(), "devices/${device.id}/state");
    assert_eq!(toml.statements()[1].effect(), Effect::Deny);
}

#[test]
fn canonical_json_is_compact_sorted_and_round_trips() {
    let doc = PolicyDocument::from_toml("sensor", SENSOR_TOML).expect("valid");
    let json = doc.to_json();
    assert_eq!(
        json,
        r#"{"statement":[{"actions":["publish","retain"],"effect":"allow","id":"own-telemetry","topics":["devices/${device.id}/telemetry/#","devices/${device.id}/state"]},{"actions":["publish"],"effect":"deny","id":"no-commands-out","topics":["devices/+/cmd/#"]}],"version":1}"#
    );
    let again = PolicyDocument::from_json("sensor", &json).expect("canonical form parses");
    assert_eq!(again, doc);
    assert_eq!(again.to_json(), json);
}

#[test]
fn a_document_without_statements_grants_nothing() {
    let doc = PolicyDocument::parse("empty", "version = 1\n").expect("valid");
    assert!(doc.statements().is_empty());
    assert_eq!(doc.to_json(), r#"{"statement":[],"version":1}"#);
    assert_eq!(PolicyDocument::parse("empty", "{\"version\": 1}"), Ok(doc));
}

#[test]
fn toml_errors_carry_line_and_column() {
    let head = "version = 1\n";
    let cases = [
        // Unknown key.
        (
            format!("{head}[[statement]]\nid = \"a\"\nefect = \"allow\"\n"),
            at(4, 1),
            "unknown field `efect`",
        ),
        (
            format!("{head}colour = \"red\"\n"),
            at(2, 1),
            "unknown field `colour`",
        ),
        // Bad values.
        (
            format!(
                "{head}{}",
                statement("a", "permit", "[\"publish\"]", "[\"a\"]")
            ),
            at(4, 10),
            "unknown variant `permit`, expected `allow` or `deny`",
        ),
        (
            format!(
                "{head}{}",
                statement("a", "allow", "[\"publsh\"]", "[\"a\"]")
            ),
            at(5, 12),
            "unknown variant `publsh`",
        ),
        (
            format!("{head}{}", statement("a", "allow", "[]", "[\"a\"]")),
            at(5, 11),
            "`actions` is empty",
        ),
        (
            format!("{head}{}", statement("a", "allow", "[\"publish\"]", "[]")),
            at(6, 10),
            "`topics` is empty",
        ),
        (
            format!(
                "{head}{}",
                statement("a", "allow", "[\"publish\"]", "[\"ok\", \"a/#/b\"]")
            ),
            // toml points at the array holding the bad pattern; the message names it.
            at(6, 10),
            "topic pattern \"a/#/b\": level \"#\": `+` and `#` must be alone in their level",
        ),
        (
            format!(
                "{head}{}",
                statement("a", "allow", "[\"publish\"]", "[\"a/${device.name}\"]")
            ),
            at(6, 10),
            "unknown variable `${device.name}`",
        ),
        (
            format!(
                "{head}{}",
                statement("a b", "allow", "[\"publish\"]", "[\"a\"]")
            ),
            at(3, 6),
            "statement id \"a b\" is not 1 to 64 characters",
        ),
        (
            "version = 2\n".to_owned(),
            at(1, 11),
            "unsupported policy version 2, expected 1",
        ),
        (
            "\n\nversion = \"1\"\n".to_owned(),
            at(3, 11),
            "invalid type: string \"1\"",
        ),
        // Missing keys.
        ("".to_owned(), at(1, 1), "missing field `version`"),
        (
            format!("{head}[[statement]]\nid = \"a\"\neffect = \"allow\"\ntopics = [\"a\"]\n"),
            at(2, 1),
            "missing field `actions`",
        ),
        // Syntax.
        (
            format!("{head}[[statement]\n"),
            at(2, 13),
            "unclosed array table",
        ),
        // Duplicate ids.
        (
            format!(
                "{head}{}{}",
                statement("a", "allow", "[\"publish\"]", "[\"a\"]"),
                statement("a", "deny", "[\"publish\"]", "[\"b\"]")
            ),
            at(2, 1),
            "statement id `a` is used twice",
        ),
    ];
    for (text, location, message) in cases {
        let (format, got_location, got_message) = invalid(&text);
        assert_eq!(format, Format::Toml, "{text}");
        assert!(
            got_message.contains(message),
            "{text}\n{got_message:?} lacks {message:?}"
        );
        assert_eq!(got_location, location, "{text}\n{got_message}");
    }
}

#[test]
fn json_errors_carry_line_and_column() {
    // serde_json reports the position just after the offending token.
    let cases = [
        (
            "{\"version\": 1,\n \"statement\": [{\"id\": \"a\", \"effect\": \"allow\", \"extra\": 1}]}",
            at(2, 53),
            "unknown field `extra`",
        ),
        (
            "{\"version\": 1,\n \"statement\": [{\"id\": \"a\", \"effect\": \"allow\",\n  \"actions\": [\"publish\"], \"topics\": [\"a+\"]}]}",
            at(3, 42),
            "topic pattern \"a+\": level \"a+\"",
        ),
        ("{\"version\": 1", at(1, 13), "EOF while parsing an object"),
        (
            "  {\"version\": 1, \"version\": 1}",
            at(1, 26),
            "duplicate field `version`",
        ),
        (
            "{\"version\": 1.0}",
            at(1, 15),
            "invalid type: floating point",
        ),
    ];
    for (text, location, message) in cases {
        let (format, got_location, got_message) = invalid(text);
        assert_eq!(format, Format::Json, "{text}");
        assert!(
            got_message.contains(message),
            "{text}\n{got_message:?} lacks {message:?}"
        );
        assert_eq!(got_location, location, "{text}\n{got_message}");
    }
}

#[test]
fn errors_display_policy_format_and_position() {
    let err = PolicyDocument::parse("sensor", "version = 1\nextra = 1\n").expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "policy `sensor` (TOML) line 2, column 1: unknown field `extra`, expected one of `version`, `statement`, `quota`"
    );
}

#[test]
fn names_are_checked() {
    for bad in ["", "a/b", "a b", "ü", &"a".repeat(MAX_NAME_LEN + 1)] {
        assert_eq!(
            PolicyDocument::parse(bad, "version = 1"),
            Err(PolicyError::InvalidName {
                name: bad.to_owned()
            })
        );
    }
    assert!(PolicyDocument::parse(&"a".repeat(MAX_NAME_LEN), "version = 1").is_ok());
    assert!(PolicyDocument::parse("backend-service_2.x", "version = 1").is_ok());
}

#[test]
fn limits_are_enforced() {
    // Document size, checked before parsing.
    let padding = format!("version = 1\n#{}\n", "x".repeat(MAX_DOCUMENT_BYTES));
    assert_eq!(
        PolicyDocument::parse("p", &padding),
        Err(PolicyError::TooLarge {
            policy: "p".into(),
            len: padding.len()
        })
    );

    // Statements per document.
    let many = |n: usize| {
        let mut text = String::from("version = 1\n");
        for i in 0..n {
            text.push_str(&statement(
                &format!("s{i}"),
                "allow",
                "[\"publish\"]",
                "[\"a\"]",
            ));
        }
        text
    };
    assert!(PolicyDocument::parse("p", &many(MAX_STATEMENTS)).is_ok());
    let (_, _, message) = invalid(&many(MAX_STATEMENTS + 1));
    assert!(
        message.contains("257 statements, more than the limit of 256"),
        "{message}"
    );

    // Topics per statement.
    let topics = |n: usize| {
        let list: Vec<String> = (0..n).map(|i| format!("\"t{i}\"")).collect();
        format!(
            "version = 1\n{}",
            statement(
                "s",
                "allow",
                "[\"publish\"]",
                &format!("[{}]", list.join(", "))
            )
        )
    };
    assert!(PolicyDocument::parse("p", &topics(MAX_TOPICS_PER_STATEMENT)).is_ok());
    let (_, _, message) = invalid(&topics(MAX_TOPICS_PER_STATEMENT + 1));
    assert!(
        message.contains("65 topic patterns, more than the limit of 64"),
        "{message}"
    );

    // Pattern length; the message quotes only the start of the pattern.
    let long = |n: usize| {
        format!(
            "version = 1\n{}",
            statement(
                "s",
                "allow",
                "[\"publish\"]",
                &format!("[\"{}\"]", "a".repeat(n))
            )
        )
    };
    assert!(PolicyDocument::parse("p", &long(MAX_PATTERN_LEN)).is_ok());
    let (_, _, message) = invalid(&long(MAX_PATTERN_LEN + 1));
    assert!(
        message.contains("1025 bytes, longer than the limit of 1024"),
        "{message}"
    );
    assert!(message.len() < 300, "{message}");
}

#[test]
fn the_canonical_form_must_fit_the_limit_too() {
    // TOML literal strings need no escaping; JSON doubles every backslash. 60 statements of
    // 1000 backslashes fit in 64 KiB as TOML and not as JSON.
    let mut text = String::from("version = 1\n");
    for i in 0..60 {
        text.push_str(&format!(
            "[[statement]]\nid = \"s{i}\"\neffect = \"allow\"\nactions = [\"publish\"]\ntopics = ['{}']\n",
            "\\".repeat(1000)
        ));
    }
    assert!(text.len() <= MAX_DOCUMENT_BYTES);
    match PolicyDocument::parse("p", &text) {
        Err(PolicyError::CanonicalFormTooLarge { len, .. }) => assert!(len > MAX_DOCUMENT_BYTES),
        other => panic!("expected CanonicalFormTooLarge, got {other:?}"),
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(PolicyDocument::parse("p", &format!("{{\"version\": {json}}}")).is_err());
    let toml = format!("version = {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(PolicyDocument::parse("p", &toml).is_err());
    let toml = format!("version = {}1{}", "{a=".repeat(5_000), "}".repeat(5_000));
    assert!(PolicyDocument::parse("p", &toml).is_err());
}

#[test]
fn templates_parse_and_round_trip() {
    assert_eq!(
        TEMPLATES,
        [
            "sensor",
            "actuator",
            "gateway",
            "backend-service",
            "quarantine",
            "namespace"
        ]
    );
    for name in TEMPLATES {
        let doc = template(name).unwrap_or_else(|| panic!("template {name} parses"));
        assert_eq!(doc.name(), *name);
        assert!(!doc.statements().is_empty());
        assert_eq!(
            PolicyDocument::from_json(name, &doc.to_json()),
            Ok(doc.clone())
        );
        assert_eq!(
            PolicyDocument::from_toml(name, template_text(name).expect("text")),
            Ok(doc)
        );
    }
    assert_eq!(template("admin"), None);
    assert_eq!(template_text("admin"), None);
}

#[test]
fn quotas_parse_validate_and_survive_the_canonical_form() {
    use moat_policy::{PolicySet, Subject};
    use std::sync::Arc;
    let text = "version = 1\n[quota]\nmessages_per_second = 50\nmax_payload_bytes = 4096\n";
    let doc = PolicyDocument::parse("limits", text).expect("valid quota");
    assert_eq!(doc.quota().messages_per_second, Some(50));
    assert_eq!(doc.quota().max_payload_bytes, Some(4096));
    assert_eq!(doc.quota().bytes_per_second, None);
    let json = doc.to_json();
    assert_eq!(
        json,
        r#"{"quota":{"max_payload_bytes":4096,"messages_per_second":50},"statement":[],"version":1}"#
    );
    assert_eq!(
        PolicyDocument::from_json("limits", &json).expect("canonical"),
        doc
    );
    // No table, or an empty one: no quota, and the canonical form says nothing.
    let plain = PolicyDocument::parse("p", "version = 1\n[quota]\n").expect("empty table");
    assert!(plain.quota().is_unlimited());
    assert!(!plain.to_json().contains("quota"));

    // Unknown keys, zero rates and values out of range are refused with their position.
    let (_, location, message) = invalid("version = 1\n[quota]\nmessages_per_minute = 5\n");
    assert!(message.contains("messages_per_minute"), "{message}");
    assert_eq!(location.line, 3, "{message}");
    let (_, _, message) = invalid("version = 1\n[quota]\nbytes_per_second = 0\n");
    assert!(
        message.contains("bytes_per_second") && message.contains("at least 1"),
        "{message}"
    );
    let (_, _, message) = invalid("version = 1\n[quota]\nmax_subscriptions = -1\n");
    assert!(!message.is_empty());
    let (_, _, message) = invalid(r#"{"version":1,"quota":{"max_payload_bytes":5000000000}}"#);
    assert!(!message.is_empty());
    // Zero subscriptions and empty payloads only are legitimate limits.
    let none = PolicyDocument::parse("p", "version = 1\n[quota]\nmax_subscriptions = 0\n")
        .expect("zero subscriptions");
    assert_eq!(none.quota().max_subscriptions, Some(0));

    // Several documents: the tightest value of each field wins.
    let other = PolicyDocument::parse(
        "group",
        "version = 1\n[quota]\nmessages_per_second = 10\nmax_subscriptions = 3\n",
    )
    .expect("valid");
    let bound = PolicySet::new([Arc::new(doc), Arc::new(other)]).bind(&Subject::device("d1"));
    let q = bound.quota();
    assert_eq!(q.messages_per_second, Some(10));
    assert_eq!(q.max_payload_bytes, Some(4096));
    assert_eq!(q.max_subscriptions, Some(3));
    assert_eq!(q.connections_per_minute, None);
    assert!(
        PolicySet::new([Arc::new(template("sensor").expect("built-in"))])
            .bind(&Subject::device("d1"))
            .quota()
            .is_unlimited()
    );
}
