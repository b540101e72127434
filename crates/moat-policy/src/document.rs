//! Policy documents: parsing (TOML or JSON, one schema), validation and the canonical JSON
//! form.

use crate::action::{Action, ActionSet, Effect};
use crate::error::{Format, PolicyError};
use crate::limits::{MAX_DOCUMENT_BYTES, MAX_NAME_LEN, MAX_STATEMENTS, MAX_TOPICS_PER_STATEMENT};
use crate::pattern::TopicPattern;
use moat_types::{Quota, QuotaLimit};
use serde::Deserialize;
use std::collections::BTreeSet;

/// The only schema version this crate reads.
pub const POLICY_VERSION: i64 = 1;

/// Whether `s` is 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`: the rule for policy
/// names and statement ids, so that `policy/statement` in a [`StatementRef`] is
/// unambiguous and safe in logs.
///
/// [`StatementRef`]: crate::StatementRef
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A parsed and validated policy document: a name and an ordered list of statements.
///
/// Equality compares the name and the canonical content (actions are a set; topics and
/// statements keep their order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDocument {
    name: String,
    statements: Vec<Statement>,
    quota: Quota,
}

/// One allow or deny statement.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    id: StatementId,
    effect: Effect,
    #[serde(deserialize_with = "action_set")]
    actions: ActionSet,
    #[serde(deserialize_with = "topic_list")]
    topics: Vec<TopicPattern>,
}

impl Statement {
    /// The statement's id, unique within its document.
    pub fn id(&self) -> &str {
        &self.id.0
    }

    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The actions it names, in canonical order, without duplicates.
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        self.actions.iter()
    }

    /// Whether it names `action`.
    pub fn names(&self, action: Action) -> bool {
        self.actions.contains(action)
    }

    /// Its topic patterns, in document order.
    pub fn topics(&self) -> &[TopicPattern] {
        &self.topics
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StatementId(String);

impl<'de> Deserialize<'de> for StatementId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        if !is_name(&id) {
            return Err(serde::de::Error::custom(format!(
                "statement id {id:?} is not 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9._-]"
            )));
        }
        Ok(Self(id))
    }
}

fn action_set<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ActionSet, D::Error> {
    let mut set = ActionSet::default();
    for action in Vec::<Action>::deserialize(d)? {
        set.insert(action);
    }
    if set.is_empty() {
        return Err(serde::de::Error::custom(
            "`actions` is empty: a statement must name at least one action",
        ));
    }
    Ok(set)
}

fn topic_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<TopicPattern>, D::Error> {
    let topics = Vec::<TopicPattern>::deserialize(d)?;
    if topics.is_empty() {
        return Err(serde::de::Error::custom(
            "`topics` is empty: a statement must name at least one topic pattern",
        ));
    }
    if topics.len() > MAX_TOPICS_PER_STATEMENT {
        return Err(serde::de::Error::custom(format!(
            "statement has {} topic patterns, more than the limit of {MAX_TOPICS_PER_STATEMENT}",
            topics.len()
        )));
    }
    Ok(topics)
}

fn statement_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Statement>, D::Error> {
    let statements = Vec::<Statement>::deserialize(d)?;
    if statements.len() > MAX_STATEMENTS {
        return Err(serde::de::Error::custom(format!(
            "document has {} statements, more than the limit of {MAX_STATEMENTS}",
            statements.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for statement in &statements {
        if !seen.insert(statement.id()) {
            return Err(serde::de::Error::custom(format!(
                "statement id `{}` is used twice",
                statement.id()
            )));
        }
    }
    Ok(statements)
}

/// The document as written: a version and the statements.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Schema {
    // Checked while deserializing; there is only one version to remember.
    #[serde(rename = "version")]
    _version: Version,
    #[serde(default, deserialize_with = "statement_list")]
    statement: Vec<Statement>,
    #[serde(default, deserialize_with = "quota_table")]
    quota: Quota,
}

fn quota_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Quota, D::Error> {
    QuotaSchema::deserialize(d)?
        .into_quota()
        .map_err(serde::de::Error::custom)
}

/// The optional `[quota]` table: usage limits for every identity the document is attached
/// to (see [`Quota`] for how each is enforced).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaSchema {
    messages_per_second: Option<u32>,
    bytes_per_second: Option<u32>,
    max_subscriptions: Option<u32>,
    max_payload_bytes: Option<u32>,
    connections_per_minute: Option<u32>,
}

impl QuotaSchema {
    fn into_quota(self) -> Result<Quota, String> {
        let quota = Quota {
            messages_per_second: self.messages_per_second,
            bytes_per_second: self.bytes_per_second,
            max_subscriptions: self.max_subscriptions,
            max_payload_bytes: self.max_payload_bytes,
            connections_per_minute: self.connections_per_minute,
        };
        // A rate of zero would stall a connection for ever; forbidding an action is what
        // deny statements are for.
        for limit in [
            QuotaLimit::MessagesPerSecond,
            QuotaLimit::BytesPerSecond,
            QuotaLimit::ConnectionsPerMinute,
        ] {
            if quota.get(limit) == Some(0) {
                return Err(format!(
                    "quota `{limit}` is 0: a rate must be at least 1 (deny the action instead)"
                ));
            }
        }
        Ok(quota)
    }
}

struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let version = i64::deserialize(d)?;
        if version != POLICY_VERSION {
            return Err(serde::de::Error::custom(format!(
                "unsupported policy version {version}, expected {POLICY_VERSION}"
            )));
        }
        Ok(Version)
    }
}

impl PolicyDocument {
    /// Parses a TOML document named `name`.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, PolicyError> {
        Self::load(name, text, Format::Toml)
    }

    /// Parses a JSON document named `name` (same schema as TOML).
    pub fn from_json(name: &str, text: &str) -> Result<Self, PolicyError> {
        Self::load(name, text, Format::Json)
    }

    /// Parses JSON if the first non-whitespace character is `{` (which no TOML document
    /// starts with), TOML otherwise.
    pub fn parse(name: &str, text: &str) -> Result<Self, PolicyError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(name, text)
        } else {
            Self::from_toml(name, text)
        }
    }

    fn load(name: &str, text: &str, format: Format) -> Result<Self, PolicyError> {
        if !is_name(name) {
            return Err(PolicyError::InvalidName {
                name: name.to_owned(),
            });
        }
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(PolicyError::TooLarge {
                policy: name.to_owned(),
                len: text.len(),
            });
        }
        let schema: Schema = match format {
            Format::Toml => {
                toml::from_str(text).map_err(|e| PolicyError::from_toml(name, text, &e))?
            }
            Format::Json => {
                serde_json::from_str(text).map_err(|e| PolicyError::from_json(name, &e))?
            }
        };
        let document = Self {
            name: name.to_owned(),
            statements: schema.statement,
            quota: schema.quota,
        };
        let canonical = document.to_json().len();
        if canonical > MAX_DOCUMENT_BYTES {
            return Err(PolicyError::CanonicalFormTooLarge {
                policy: name.to_owned(),
                len: canonical,
            });
        }
        Ok(document)
    }

    /// The policy's name, as given when it was parsed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The statements, in document order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// The usage limits the document sets ([`Quota::UNLIMITED`] without a `[quota]` table).
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The canonical JSON form: compact, keys sorted, actions in [`Action::ALL`] order
    /// without duplicates. `from_json(name, &doc.to_json())` gives back an equal document.
    pub fn to_json(&self) -> String {
        let statements: Vec<serde_json::Value> = self
            .statements
            .iter()
            .map(|s| {
                // Keys are inserted in sorted order, so the output is the same whether or not
                // serde_json's `preserve_order` feature is on somewhere in the build.
                let mut fields = serde_json::Map::new();
                fields.insert(
                    "actions".into(),
                    s.actions().map(Action::as_str).collect::<Vec<_>>().into(),
                );
                fields.insert("effect".into(), s.effect.as_str().into());
                fields.insert("id".into(), s.id().into());
                fields.insert(
                    "topics".into(),
                    s.topics
                        .iter()
                        .map(TopicPattern::as_str)
                        .collect::<Vec<_>>()
                        .into(),
                );
                serde_json::Value::Object(fields)
            })
            .collect();
        let mut document = serde_json::Map::new();
        if !self.quota.is_unlimited() {
            let mut quota = serde_json::Map::new();
            let mut set: Vec<(&str, u32)> = QuotaLimit::ALL
                .iter()
                .filter_map(|l| self.quota.get(*l).map(|v| (l.as_str(), v)))
                .collect();
            set.sort_unstable();
            for (key, value) in set {
                quota.insert(key.into(), value.into());
            }
            document.insert("quota".into(), quota.into());
        }
        document.insert("statement".into(), statements.into());
        document.insert("version".into(), POLICY_VERSION.into());
        // `Value`'s Display writes compact JSON and cannot fail.
        serde_json::Value::Object(document).to_string()
    }
}
