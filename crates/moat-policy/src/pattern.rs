//! Topic patterns: MQTT topic filters whose levels may contain `${...}` variables, and their
//! binding to one [`Subject`] into a concrete [`Filter`].

use crate::filter::{Filter, Level};
use crate::limits::{
    MAX_ATTRIBUTE_NAME_LEN, MAX_PATTERN_LEN, MAX_PATTERN_LEVELS, MAX_VARIABLE_VALUE_LEN,
    MAX_VARIABLES_PER_PATTERN,
};
use crate::policy::Subject;
use std::fmt;

/// Why a topic pattern was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The empty string (MQTT-4.7.3-1).
    #[error("topic pattern is empty")]
    Empty,
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error("topic pattern is {len} bytes, longer than the limit of {MAX_PATTERN_LEN}")]
    TooLong {
        /// Actual length.
        len: usize,
    },
    /// More levels than [`MAX_PATTERN_LEVELS`].
    #[error("topic pattern has {count} levels, more than the limit of {MAX_PATTERN_LEVELS}")]
    TooManyLevels {
        /// Actual number of levels.
        count: usize,
    },
    /// More variables than [`MAX_VARIABLES_PER_PATTERN`].
    #[error("topic pattern has more than {MAX_VARIABLES_PER_PATTERN} variables")]
    TooManyVariables,
    /// A control character (U+0000 is forbidden by MQTT-1.5.4-2, the others are
    /// discouraged by MQTT-1.5.4 and have no place in a policy).
    #[error("topic pattern contains the control character {0:?}")]
    ControlCharacter(char),
    /// `+` not alone in its level, or `#` not alone in the last level (MQTT-4.7.1-1, -2).
    #[error("level {0:?}: `+` and `#` must be alone in their level, and `#` must be last")]
    MisplacedWildcard(String),
    /// `${` without a closing `}`.
    #[error("variable is not closed: `${{` without `}}`")]
    UnclosedVariable,
    /// `${name}` with a name that is not a supported variable.
    #[error(
        "unknown variable `${{{0}}}`, expected device.id, device.group, device.attr.NAME, \
         cert.subject.cn or client.id"
    )]
    UnknownVariable(String),
    /// `${device.attr.NAME}` whose NAME is not 1 to [`MAX_ATTRIBUTE_NAME_LEN`] bytes of
    /// `[A-Za-z0-9_-]`.
    #[error(
        "attribute name {0:?} is not 1 to {MAX_ATTRIBUTE_NAME_LEN} characters of [A-Za-z0-9_-]"
    )]
    BadAttributeName(String),
}

/// A value a pattern can refer to, filled from the [`Subject`] at bind time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Variable {
    /// `${device.id}`
    DeviceId,
    /// `${device.group}`
    DeviceGroup,
    /// `${device.attr.NAME}`
    DeviceAttr(String),
    /// `${cert.subject.cn}`
    CertSubjectCn,
    /// `${client.id}`
    ClientId,
}

impl Variable {
    fn parse(name: &str) -> Result<Self, PatternError> {
        match name {
            "device.id" => Ok(Variable::DeviceId),
            "device.group" => Ok(Variable::DeviceGroup),
            "cert.subject.cn" => Ok(Variable::CertSubjectCn),
            "client.id" => Ok(Variable::ClientId),
            _ => match name.strip_prefix("device.attr.") {
                Some(attr) if is_attribute_name(attr) => Ok(Variable::DeviceAttr(attr.to_owned())),
                Some(attr) => Err(PatternError::BadAttributeName(attr.to_owned())),
                None => Err(PatternError::UnknownVariable(name.to_owned())),
            },
        }
    }

    fn value<'a>(&self, subject: &Subject<'a>) -> Option<&'a str> {
        match self {
            Variable::DeviceId => subject.device_id,
            Variable::DeviceGroup => subject.group,
            Variable::DeviceAttr(name) => subject.attrs.get(name).map(String::as_str),
            Variable::CertSubjectCn => subject.cert_cn,
            Variable::ClientId => subject.client_id,
        }
    }
}

fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ATTRIBUTE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `value` may be substituted: a value is always one literal piece of one level, so
/// anything that could add a level, a wildcard or a forbidden character makes the variable
/// unbound instead.
fn is_substitutable(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VARIABLE_VALUE_LEN
        && !value.contains(['/', '+', '#'])
        && !value.chars().any(char::is_control)
}

/// A piece of a level: literal text or a variable.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Text(String),
    Variable(Variable),
}

/// One level of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternLevel {
    /// `+`
    SingleWildcard,
    /// `#`, always the last level.
    MultiWildcard,
    /// Literal text and variables; no pieces at all is the empty level.
    Pieces(Vec<Segment>),
}

/// What binding does with a level whose variable has no usable value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unbound {
    /// The whole pattern is left out (allow statements: grant nothing rather than guess).
    DropPattern,
    /// The level matches any single level, `$`-levels included (deny statements: deny
    /// everything the pattern could have meant).
    AnyLevel,
}

/// An MQTT topic filter in which `${...}` variables may appear anywhere inside a level.
///
/// Parsing checks the MQTT filter rules on the literal text (`+` and `#` alone in their
/// level, `#` last), the variable names, and the limits in [`crate::limits`]. A variable's
/// value never adds a level or a wildcard: see [`PolicySet::bind`](crate::PolicySet::bind).
#[derive(Clone)]
pub struct TopicPattern {
    text: String,
    levels: Vec<PatternLevel>,
}

impl TopicPattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong { len: text.len() });
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(PatternError::ControlCharacter(c));
        }
        let count = text.split('/').count();
        if count > MAX_PATTERN_LEVELS {
            return Err(PatternError::TooManyLevels { count });
        }
        let mut variables = 0;
        let mut levels = Vec::with_capacity(count);
        for (i, level) in text.split('/').enumerate() {
            levels.push(match level {
                "+" => PatternLevel::SingleWildcard,
                "#" if i + 1 == count => PatternLevel::MultiWildcard,
                _ => PatternLevel::Pieces(parse_pieces(level, &mut variables)?),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Substitutes the subject's values and compiles the result. `None` only with
    /// [`Unbound::DropPattern`] and a variable without a usable value.
    pub(crate) fn bind(&self, subject: &Subject<'_>, unbound: Unbound) -> Option<Filter> {
        // A value may not turn the first level into a `$`-level when the pattern's literal
        // text does not start with `$` itself: `${client.id}/#` must not become `$SYS/#`.
        let dollar_from_value_allowed = matches!(
            self.levels.first(),
            Some(PatternLevel::Pieces(pieces))
                if matches!(pieces.first(), Some(Segment::Text(t)) if t.starts_with('$'))
        );
        let mut levels = Vec::with_capacity(self.levels.len());
        for (i, level) in self.levels.iter().enumerate() {
            levels.push(match level {
                PatternLevel::SingleWildcard => Level::Plus,
                PatternLevel::MultiWildcard => Level::Hash,
                PatternLevel::Pieces(pieces) => {
                    let first = i == 0 && !dollar_from_value_allowed;
                    match substitute(pieces, subject, first) {
                        Some(text) => Level::Literal(text.into_bytes().into_boxed_slice()),
                        None => match unbound {
                            Unbound::DropPattern => return None,
                            Unbound::AnyLevel => Level::Any,
                        },
                    }
                }
            });
        }
        Some(Filter::new(levels))
    }
}

fn parse_pieces(level: &str, variables: &mut usize) -> Result<Vec<Segment>, PatternError> {
    let mut pieces = Vec::new();
    let mut rest = level;
    while let Some((before, after)) = rest.split_once("${") {
        push_text(&mut pieces, before, level)?;
        let (name, tail) = after
            .split_once('}')
            .ok_or(PatternError::UnclosedVariable)?;
        *variables += 1;
        if *variables > MAX_VARIABLES_PER_PATTERN {
            return Err(PatternError::TooManyVariables);
        }
        pieces.push(Segment::Variable(Variable::parse(name)?));
        rest = tail;
    }
    push_text(&mut pieces, rest, level)?;
    Ok(pieces)
}

fn push_text(pieces: &mut Vec<Segment>, text: &str, level: &str) -> Result<(), PatternError> {
    if text.contains(['+', '#']) {
        return Err(PatternError::MisplacedWildcard(level.to_owned()));
    }
    if !text.is_empty() {
        pieces.push(Segment::Text(text.to_owned()));
    }
    Ok(())
}

/// The level's text with every variable replaced, or `None` if one has no usable value.
fn substitute(pieces: &[Segment], subject: &Subject<'_>, first_level: bool) -> Option<String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Segment::Text(text) => out.push_str(text),
            Segment::Variable(variable) => {
                let value = variable.value(subject).filter(|v| is_substitutable(v))?;
                out.push_str(value);
            }
        }
    }
    if first_level && out.starts_with('$') {
        return None;
    }
    Some(out)
}

impl PartialEq for TopicPattern {
    fn eq(&self, other: &Self) -> bool {
        // The levels are a function of the text.
        self.text == other.text
    }
}

impl Eq for TopicPattern {}

impl std::hash::Hash for TopicPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.text)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for TopicPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!("topic pattern {:?}: {e}", excerpt(&text)))
        })
    }
}

/// At most the first 80 characters of `text`, to keep error messages readable.
fn excerpt(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(s: &str) -> Result<TopicPattern, PatternError> {
        TopicPattern::parse(s)
    }

    #[test]
    fn accepts_filters_and_variables() {
        for ok in [
            "#",
            "+",
            "a//b",
            "/",
            "$SYS/#",
            "devices/${device.id}/telemetry/#",
            "x-${device.group}_${device.attr.zone-1}/+/${client.id}${cert.subject.cn}",
            "a/$/b}",
            "${device.id}",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(parse("").err(), Some(PatternError::Empty));
        assert_eq!(
            parse("a/#/b").err(),
            Some(PatternError::MisplacedWildcard("#".into()))
        );
        assert_eq!(
            parse("a+/b").err(),
            Some(PatternError::MisplacedWildcard("a+".into()))
        );
        assert_eq!(
            parse("a/${device.id}+").err(),
            Some(PatternError::MisplacedWildcard("${device.id}+".into()))
        );
        assert_eq!(
            parse("a/${device.id").err(),
            Some(PatternError::UnclosedVariable)
        );
        assert_eq!(
            parse("${device.name}").err(),
            Some(PatternError::UnknownVariable("device.name".into()))
        );
        assert_eq!(
            parse("${}").err(),
            Some(PatternError::UnknownVariable(String::new()))
        );
        assert_eq!(
            parse("${device.attr.}").err(),
            Some(PatternError::BadAttributeName(String::new()))
        );
        assert_eq!(
            parse("${device.attr.a.b}").err(),
            Some(PatternError::BadAttributeName("a.b".into()))
        );
        assert_eq!(
            parse("a\0b").err(),
            Some(PatternError::ControlCharacter('\0'))
        );
        assert_eq!(
            parse("a\nb").err(),
            Some(PatternError::ControlCharacter('\n'))
        );
    }

    #[test]
    fn limits() {
        assert!(parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        assert_eq!(
            parse(&"a".repeat(MAX_PATTERN_LEN + 1)).err(),
            Some(PatternError::TooLong {
                len: MAX_PATTERN_LEN + 1
            })
        );
        assert!(parse(&vec!["a"; MAX_PATTERN_LEVELS].join("/")).is_ok());
        assert_eq!(
            parse(&vec!["a"; MAX_PATTERN_LEVELS + 1].join("/")).err(),
            Some(PatternError::TooManyLevels {
                count: MAX_PATTERN_LEVELS + 1
            })
        );
        let vars = |n| vec!["${device.id}"; n].join("/");
        assert!(parse(&vars(MAX_VARIABLES_PER_PATTERN)).is_ok());
        assert_eq!(
            parse(&vars(MAX_VARIABLES_PER_PATTERN + 1)).err(),
            Some(PatternError::TooManyVariables)
        );
        let long_attr = "a".repeat(MAX_ATTRIBUTE_NAME_LEN + 1);
        assert!(parse(&format!("${{device.attr.{}}}", &long_attr[1..])).is_ok());
        assert!(parse(&format!("${{device.attr.{long_attr}}}")).is_err());
    }

    #[test]
    fn binding_never_injects() {
        let attrs = BTreeMap::from([
            ("slash".to_owned(), "a/b".to_owned()),
            ("plus".to_owned(), "+".to_owned()),
            ("hash".to_owned(), "#".to_owned()),
            ("nul".to_owned(), "a\0".to_owned()),
            ("empty".to_owned(), String::new()),
            ("long".to_owned(), "a".repeat(MAX_VARIABLE_VALUE_LEN + 1)),
            ("dollar".to_owned(), "$SYS".to_owned()),
            ("ok".to_owned(), "zone1".to_owned()),
        ]);
        let subject = Subject {
            device_id: Some("d1"),
            group: None,
            attrs: &attrs,
            cert_cn: None,
            client_id: None,
        };
        let bind = |p: &str, u| {
            TopicPattern::parse(p)
                .expect("valid pattern")
                .bind(&subject, u)
        };
        let literal = |s: &str| Level::Literal(s.as_bytes().into());
        for attr in ["slash", "plus", "hash", "nul", "empty", "long", "missing"] {
            let p = format!("x/${{device.attr.{attr}}}/y");
            assert_eq!(bind(&p, Unbound::DropPattern), None, "{attr}");
            assert_eq!(
                bind(&p, Unbound::AnyLevel),
                Some(Filter::new(vec![literal("x"), Level::Any, literal("y")])),
                "{attr}"
            );
        }
        // `$` from a value is literal in later levels, refused in the first.
        assert_eq!(
            bind("x/${device.attr.dollar}", Unbound::DropPattern),
            Some(Filter::new(vec![literal("x"), literal("$SYS")]))
        );
        assert_eq!(bind("${device.attr.dollar}/#", Unbound::DropPattern), None);
        assert_eq!(
            bind("$${device.attr.ok}/#", Unbound::DropPattern),
            Some(Filter::new(vec![literal("$zone1"), Level::Hash]))
        );
        assert_eq!(
            bind("${device.group}", Unbound::DropPattern),
            None,
            "no group"
        );
        assert_eq!(
            bind(
                "pre-${device.id}-${device.attr.ok}/+/#",
                Unbound::DropPattern
            ),
            Some(Filter::new(vec![
                literal("pre-d1-zone1"),
                Level::Plus,
                Level::Hash
            ]))
        );
    }
}
