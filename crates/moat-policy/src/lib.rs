//! Moat's policy engine: least-privilege documents compiled into per-device decisions,
//! deny by default.
//!
//! Owns: the policy document format ([`PolicyDocument`], TOML or JSON, one schema), its
//! validation and [limits], the built-in [`template`]s, binding a [`PolicySet`] to one
//! [`Subject`] ([`PolicySet::bind`]) and the decisions of the resulting [`BoundPolicy`]
//! for connect, publish, retain, subscribe and receive, each naming the statement it rests
//! on.
//!
//! Does not own: where documents are stored or which ones are attached to whom (the hub),
//! who the subject is (the hub fills [`Subject`] from its registry and the verified
//! certificate), the broker's `Authorized` token (the broker's authorizer calls this
//! engine), I/O and clocks (none here).
//!
//! Trust boundary: documents come from operators and are parsed as untrusted text: size,
//! counts, lengths and nesting are bounded ([`limits`]), unknown keys are rejected and
//! errors carry line and column. Subject values come from the registry, the CA and, for
//! `${client.id}`, from the device itself; a substituted value is always literal text
//! inside one level and never adds a level or a wildcard. Decisions take packets'
//! topics, which the device controls; they never panic and [`BoundPolicy::allows_topic`]
//! allocates nothing.
//!
//! # Documents
//!
//! ```toml
//! version = 1
//!
//! [[statement]]
//! id = "own-telemetry"                # required, unique in the document, [A-Za-z0-9._-]{1,64}
//! effect = "allow"                    # allow | deny
//! actions = ["publish", "retain"]     # connect | publish | subscribe | receive | retain
//! topics = ["devices/${device.id}/telemetry/#", "devices/${device.id}/state"]
//!
//! [[statement]]
//! id = "no-commands-out"
//! effect = "deny"
//! actions = ["publish"]
//! topics = ["devices/+/cmd/#"]
//! ```
//!
//! The JSON form is `{"version":1,"statement":[{"id":..,"effect":..,"actions":[..],
//! "topics":[..]}]}`; [`PolicyDocument::parse`] reads JSON when the first non-blank
//! character is `{`. [`PolicyDocument::to_json`] writes the canonical form, which parses
//! back to an equal document. A document without statements is valid and grants nothing.
//! Policy names follow the statement-id rule.
//!
//! # Topic patterns
//!
//! Each entry of `topics` is an MQTT topic filter (`+` alone in a level, `#` alone in the
//! last level, no control characters) in which variables may appear anywhere inside a
//! level: `${device.id}`, `${device.group}`, `${device.attr.NAME}` (NAME is
//! `[A-Za-z0-9_-]{1,64}`), `${cert.subject.cn}`, `${client.id}`. Any other `${...}` is a
//! parse error; there is no escape for a literal `${`.
//!
//! Binding substitutes values once per connection ([`PolicySet::bind`]). A value is
//! *unbound* if it is missing, empty, longer than [`limits::MAX_VARIABLE_VALUE_LEN`],
//! contains `/`, `+`, `#` or a control character, or would make the first level of a
//! pattern that does not itself start with `$` start with `$`. An unbound variable makes
//! an **allow** pattern grant nothing, and makes its level in a **deny** pattern match any
//! single level (`$`-levels included): a deny never shrinks because a value is missing or
//! hostile.
//!
//! # Actions and decisions
//!
//! | Action      | Asked with                  | A statement's filter applies when |
//! |-------------|-----------------------------|-----------------------------------|
//! | `publish`   | topic name                  | it matches the topic |
//! | `retain`    | topic name                  | it matches the topic (ask in addition to `publish` for a PUBLISH with the retain flag) |
//! | `receive`   | topic name                  | it matches the topic (delivery to the device) |
//! | `subscribe` | topic filter                | allow: it **covers** the filter (matches every topic the filter can match); deny: it **overlaps** the filter (matches some topic the filter can match) |
//! | `connect`   | client id                   | it matches the client id taken whole as a one-level topic name: `${device.id}` matches exactly the id, `+` and `#` any id not starting with `$`, a `/` in the id is not a separator |
//!
//! Matching, cover and overlap all follow the `$` rule of MQTT-4.7.2-1: a filter starting
//! with `+` or `#` matches no topic starting with `$`. So `#` does not cover or overlap
//! `$SYS/#`.
//!
//! The decision: an explicit deny wins over any allow; otherwise the first allow that
//! applies allows; otherwise the action is denied implicitly ([`Decision::by`] is `None`).
//! The order of documents and statements only decides which statement is named.
//!
//! Receive: if no statement in the set names `receive`
//! ([`BoundPolicy::has_receive_rules`] is false), receive is implied by subscribe: a topic
//! may be delivered exactly when the device may subscribe to it (decided with the
//! subscribe statements), so the hub may skip per-delivery checks. If any statement names
//! `receive`, receive is decided by the statements naming it, deny by default.
//!
//! # Quotas
//!
//! A document may also set usage limits in an optional `[quota]` table; every field is
//! optional:
//!
//! ```toml
//! [quota]
//! messages_per_second = 50        # PUBLISH packets per second (at least 1)
//! bytes_per_second = 65536        # PUBLISH payload bytes per second (at least 1)
//! max_subscriptions = 20          # subscriptions held at once
//! max_payload_bytes = 4096        # largest PUBLISH payload
//! connections_per_minute = 6      # accepted CONNECTs per minute (at least 1)
//! ```
//!
//! Quotas of the documents in a set combine field by field, the tightest value winning
//! ([`BoundPolicy::quota`]): attaching a policy to a device or to its group can only lower
//! what it may use. How the broker enforces each field is in [`moat_types::Quota`].
//!
//! # Built-in templates
//!
//! All are scoped with `${device.id}` and grant nothing to a subject without one
//! (`namespace` is the foundation's fixed rule, which the hub attaches by default; unlike
//! that rule it gives an anonymous subject nothing). `quarantine` only allows, so it takes
//! nothing away from other attached policies: the hub attaches it **alone** to a
//! quarantined device.
//!
//! ## `sensor`
//! ```toml
#![doc = include_str!("templates/sensor.toml")]
//! ```
//! ## `actuator`
//! ```toml
#![doc = include_str!("templates/actuator.toml")]
//! ```
//! ## `gateway`
//! ```toml
#![doc = include_str!("templates/gateway.toml")]
//! ```
//! ## `backend-service`
//! ```toml
#![doc = include_str!("templates/backend-service.toml")]
//! ```
//! ## `quarantine`
//! ```toml
#![doc = include_str!("templates/quarantine.toml")]
//! ```
//! ## `namespace`
//! ```toml
#![doc = include_str!("templates/namespace.toml")]
//! ```
//!
//! # Example
//!
//! ```
//! use moat_policy::{Action, PolicySet, Subject, template};
//! use moat_types::{TopicFilter, TopicName};
//! use std::sync::Arc;
//!
//! let sensor = Arc::new(template("sensor").expect("built-in"));
//! let policy = PolicySet::new([sensor]).bind(&Subject::device("d1"));
//! let topic = TopicName::parse("devices/d1/telemetry/temp").expect("topic");
//! assert!(policy.allows_topic(Action::Publish, &topic));
//! let other = TopicFilter::parse("devices/+/cmd/#").expect("filter");
//! assert!(!policy.decide_subscribe(&other).allowed);
//! assert_eq!(
//!     policy.decide_topic(Action::Publish, &topic).by.expect("named").to_string(),
//!     "sensor/own-telemetry (allow)"
//! );
//! ```
//!
//! Module map: `document` (schema, parsing, canonical form), `pattern` (topic patterns and
//! binding), `filter` (compiled filters: match, cover, overlap), `policy` (sets, bound
//! policies, decisions), `templates`, `limits`, and `fuzz` (feature `fuzzing`: the body of
//! the cargo-fuzz target in `/fuzz`).

#![forbid(unsafe_code)]

mod action;
mod document;
mod error;
mod filter;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod limits;
mod pattern;
mod policy;
mod templates;

pub use action::{Action, Effect, UnknownName};
pub use document::{POLICY_VERSION, PolicyDocument, Statement};
pub use error::{Format, Location, PolicyError};
pub use pattern::{PatternError, TopicPattern};
pub use policy::{BoundPolicy, Decision, PolicySet, StatementRef, Subject};
pub use templates::{TEMPLATES, template, template_text};
