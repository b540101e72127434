//! Policy sets, binding to a subject, and decisions.

use crate::action::{Action, Effect};
use crate::document::PolicyDocument;
use crate::filter::Filter;
use crate::pattern::Unbound;
use moat_types::{Quota, TopicFilter, TopicName};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The empty attribute map, for subjects without attributes.
static NO_ATTRIBUTES: BTreeMap<String, String> = BTreeMap::new();

/// Who is asking: the values variables are bound to. The hub fills it from its device
/// registry and the verified certificate; `client_id` is the only field the device itself
/// chooses.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// `${device.id}`. `None` for the anonymous identity of a plaintext listener.
    pub device_id: Option<&'a str>,
    /// `${device.group}`.
    pub group: Option<&'a str>,
    /// `${device.attr.NAME}`: operator-set attributes.
    pub attrs: &'a BTreeMap<String, String>,
    /// `${cert.subject.cn}`: the common name of the verified client certificate.
    pub cert_cn: Option<&'a str>,
    /// `${client.id}`: the MQTT client identifier the device sent.
    pub client_id: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// A device with an id and nothing else; set the other fields with struct update
    /// syntax.
    pub fn device(device_id: &'a str) -> Self {
        Self {
            device_id: Some(device_id),
            ..Subject::anonymous()
        }
    }

    /// No identity at all: every variable is unbound.
    pub fn anonymous() -> Self {
        Self {
            device_id: None,
            group: None,
            attrs: &NO_ATTRIBUTES,
            cert_cn: None,
            client_id: None,
        }
    }
}

/// The statement a decision rests on. Displays as `policy/statement (effect)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatementRef {
    /// The document's name.
    pub policy: String,
    /// The statement's id within it.
    pub statement: String,
    /// Whether the statement allows or denies.
    pub effect: Effect,
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.policy, self.statement, self.effect)
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action may go ahead.
    pub allowed: bool,
    /// The deciding statement: a deny statement that matched, else the first allow
    /// statement that matched; `None` for the implicit deny when nothing matched.
    pub by: Option<StatementRef>,
}

impl Decision {
    /// Denied because no statement allows it.
    pub fn implicit_deny() -> Self {
        Self {
            allowed: false,
            by: None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.by, self.allowed) {
            (Some(by), true) => write!(f, "allowed by {by}"),
            (Some(by), false) => write!(f, "denied by {by}"),
            (None, _) => f.write_str("denied: no statement allows it"),
        }
    }
}

/// The documents attached to one identity, in order. Cheap to clone; bind it once per
/// connection.
#[derive(Clone, Debug)]
pub struct PolicySet {
    documents: Vec<Arc<PolicyDocument>>,
    receive_rules: bool,
}

impl PolicySet {
    /// A set of `docs`, in the given order (which decides only which statement a decision
    /// names, never the outcome).
    pub fn new(docs: impl IntoIterator<Item = Arc<PolicyDocument>>) -> Self {
        let documents: Vec<_> = docs.into_iter().collect();
        let receive_rules = documents
            .iter()
            .flat_map(|d| d.statements())
            .any(|s| s.names(Action::Receive));
        Self {
            documents,
            receive_rules,
        }
    }

    /// The documents, in order.
    pub fn documents(&self) -> &[Arc<PolicyDocument>] {
        &self.documents
    }

    /// Substitutes the subject's values into every pattern and compiles the result.
    ///
    /// A value is always literal text inside one level. A value that is missing, empty,
    /// longer than [`MAX_VARIABLE_VALUE_LEN`](crate::limits::MAX_VARIABLE_VALUE_LEN), or
    /// contains `/`, `+`, `#` or a control character, or that would make the first level of
    /// a pattern not starting with `$` start with `$`, leaves its variable *unbound*:
    ///
    /// * in an allow statement, the pattern is left out (that pattern grants nothing; the
    ///   statement's other patterns still apply);
    /// * in a deny statement, the level holding the variable matches any single level,
    ///   `$`-levels included, so the deny covers everything the pattern could have meant.
    pub fn bind(&self, subject: &Subject<'_>) -> BoundPolicy {
        let mut compiled = Compiled {
            receive_rules: self.receive_rules,
            quota: self
                .documents
                .iter()
                .fold(Quota::UNLIMITED, |q, d| q.tighten(d.quota())),
            ..Compiled::default()
        };
        for document in &self.documents {
            for statement in document.statements() {
                let index = compiled.statements.len();
                compiled.statements.push(StatementRef {
                    policy: document.name().to_owned(),
                    statement: statement.id().to_owned(),
                    effect: statement.effect(),
                });
                let unbound = match statement.effect() {
                    Effect::Allow => Unbound::DropPattern,
                    Effect::Deny => Unbound::AnyLevel,
                };
                let filters: Vec<Filter> = statement
                    .topics()
                    .iter()
                    .filter_map(|pattern| pattern.bind(subject, unbound))
                    .collect();
                for action in statement.actions() {
                    let rules = &mut compiled.by_action[action.index()];
                    let list = match statement.effect() {
                        Effect::Allow => &mut rules.allow,
                        Effect::Deny => &mut rules.deny,
                    };
                    list.extend(filters.iter().map(|filter| Rule {
                        filter: filter.clone(),
                        statement: index,
                    }));
                }
            }
        }
        BoundPolicy {
            compiled: Arc::new(compiled),
        }
    }
}

#[derive(Debug)]
struct Rule {
    filter: Filter,
    /// Index into [`Compiled::statements`].
    statement: usize,
}

#[derive(Debug, Default)]
struct Rules {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

#[derive(Debug, Default)]
struct Compiled {
    by_action: [Rules; Action::ALL.len()],
    statements: Vec<StatementRef>,
    receive_rules: bool,
    quota: Quota,
}

enum Verdict {
    Denied(usize),
    Allowed(usize),
    NothingMatched,
}

/// A [`PolicySet`] bound to one subject: filters compiled to level vectors, grouped by
/// action. Cheap to clone and to evaluate.
#[derive(Clone, Debug)]
pub struct BoundPolicy {
    compiled: Arc<Compiled>,
}

impl BoundPolicy {
    /// A policy with no statements: everything is denied (implicitly).
    pub fn deny_all() -> Self {
        Self {
            compiled: Arc::new(Compiled::default()),
        }
    }

    /// The usage limits of the subject: the tightest value of each field over every
    /// document of the set.
    pub fn quota(&self) -> Quota {
        self.compiled.quota
    }

    /// Decides a `Publish`, `Retain` or `Receive` of `topic`.
    ///
    /// Also answers the two other actions consistently: `Subscribe` decides `topic` as a
    /// filter without wildcards (as [`decide_subscribe`](Self::decide_subscribe) would),
    /// `Connect` decides `topic`'s text as a client id (as
    /// [`decide_connect`](Self::decide_connect) would).
    pub fn decide_topic(&self, action: Action, topic: &TopicName) -> Decision {
        if action == Action::Connect {
            return self.decide_connect(topic.as_str());
        }
        let bytes = topic.as_bytes();
        self.decision(self.evaluate(action, |f| f.matches(bytes), |f| f.matches(bytes)))
    }

    /// [`decide_topic`](Self::decide_topic)'s answer without the deciding statement.
    /// Allocates nothing: this is the per-packet path.
    pub fn allows_topic(&self, action: Action, topic: &TopicName) -> bool {
        if action == Action::Connect {
            return self.allows_connect(topic.as_str());
        }
        let bytes = topic.as_bytes();
        matches!(
            self.evaluate(action, |f| f.matches(bytes), |f| f.matches(bytes)),
            Verdict::Allowed(_)
        )
    }

    /// Decides a subscription with `filter`: allowed if some allow statement's filter
    /// covers it (matches every topic it can match) and no deny statement's filter overlaps
    /// it (matches some topic it can match). For `$share/{group}/{filter}` pass the inner
    /// filter.
    pub fn decide_subscribe(&self, filter: &TopicFilter) -> Decision {
        self.decision(self.evaluate(
            Action::Subscribe,
            |f| f.overlaps(filter),
            |f| f.covers(filter),
        ))
    }

    /// Whether `action` is allowed on every topic `filter` can match: some allow statement's
    /// filter covers it and no deny statement's filter overlaps it (the rule subscribe uses).
    /// The hub asks it for `receive` once per subscription, so that deliveries through a
    /// subscription the receive rules fully grant need no check each.
    pub fn allows_filter(&self, action: Action, filter: &TopicFilter) -> bool {
        matches!(
            self.evaluate(action, |f| f.overlaps(filter), |f| f.covers(filter)),
            Verdict::Allowed(_)
        )
    }

    /// Decides a CONNECT with `client_id`, matched as a topic name of one level: a `/` in
    /// it is an ordinary character, a pattern `${device.id}` matches exactly the device id,
    /// `+` or `#` any client id not starting with `$`. An empty client id or one with a
    /// NUL is denied.
    pub fn decide_connect(&self, client_id: &str) -> Decision {
        if !is_usable_client_id(client_id) {
            return Decision::implicit_deny();
        }
        let id = client_id.as_bytes();
        self.decision(self.evaluate(
            Action::Connect,
            |f| f.matches_single_level(id),
            |f| f.matches_single_level(id),
        ))
    }

    fn allows_connect(&self, client_id: &str) -> bool {
        if !is_usable_client_id(client_id) {
            return false;
        }
        let id = client_id.as_bytes();
        matches!(
            self.evaluate(
                Action::Connect,
                |f| f.matches_single_level(id),
                |f| f.matches_single_level(id),
            ),
            Verdict::Allowed(_)
        )
    }

    /// Whether any statement in the set names `receive`. If not, receive is implied by
    /// subscribe: a topic may be delivered exactly when the device may subscribe to it, so
    /// a hub that only delivers through allowed subscriptions can skip the per-delivery
    /// check. If so, receive is decided by the statements that name it, deny by default.
    pub fn has_receive_rules(&self) -> bool {
        self.compiled.receive_rules
    }

    fn rules(&self, action: Action) -> &Rules {
        let action = if action == Action::Receive && !self.compiled.receive_rules {
            Action::Subscribe
        } else {
            action
        };
        &self.compiled.by_action[action.index()]
    }

    /// Deny statements first (an explicit deny wins), then allow statements, each in set
    /// and document order.
    fn evaluate(
        &self,
        action: Action,
        deny_hits: impl Fn(&Filter) -> bool,
        allow_hits: impl Fn(&Filter) -> bool,
    ) -> Verdict {
        let rules = self.rules(action);
        if let Some(rule) = rules.deny.iter().find(|r| deny_hits(&r.filter)) {
            return Verdict::Denied(rule.statement);
        }
        if let Some(rule) = rules.allow.iter().find(|r| allow_hits(&r.filter)) {
            return Verdict::Allowed(rule.statement);
        }
        Verdict::NothingMatched
    }

    fn decision(&self, verdict: Verdict) -> Decision {
        let (allowed, index) = match verdict {
            Verdict::Denied(i) => (false, i),
            Verdict::Allowed(i) => (true, i),
            Verdict::NothingMatched => return Decision::implicit_deny(),
        };
        match self.compiled.statements.get(index) {
            Some(by) => Decision {
                allowed,
                by: Some(by.clone()),
            },
            // Unreachable: rules only hold indices of statements pushed beside them.
            None => Decision::implicit_deny(),
        }
    }
}

fn is_usable_client_id(client_id: &str) -> bool {
    !client_id.is_empty() && !client_id.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_policies_are_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<BoundPolicy>();
        assert_send_sync::<PolicySet>();
    }

    #[test]
    fn deny_all_denies_everything() {
        let p = BoundPolicy::deny_all();
        let t = TopicName::parse("a").expect("topic");
        for action in Action::ALL {
            assert_eq!(p.decide_topic(action, &t), Decision::implicit_deny());
            assert!(!p.allows_topic(action, &t));
        }
        let f = TopicFilter::parse("#").expect("filter");
        assert!(!p.decide_subscribe(&f).allowed);
        assert!(!p.decide_connect("a").allowed);
        assert!(!p.has_receive_rules());
    }

    #[test]
    fn displays() {
        let by = StatementRef {
            policy: "sensor".into(),
            statement: "no-cmd".into(),
            effect: Effect::Deny,
        };
        assert_eq!(by.to_string(), "sensor/no-cmd (deny)");
        let d = Decision {
            allowed: false,
            by: Some(by),
        };
        assert_eq!(d.to_string(), "denied by sensor/no-cmd (deny)");
        assert_eq!(
            Decision::implicit_deny().to_string(),
            "denied: no statement allows it"
        );
    }
}
