//! What a statement is about ([`Action`]) and what it says about it ([`Effect`]).

use std::fmt;
use std::str::FromStr;

/// Something a device asks to do. Each is decided separately; see the crate docs for what
/// a statement's `topics` mean for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Open a session; `topics` are client-id patterns.
    Connect,
    /// Publish to a topic name.
    Publish,
    /// Subscribe with a topic filter.
    Subscribe,
    /// Have a message on a topic name delivered to the device.
    Receive,
    /// Publish with the retain flag, setting (or clearing) a retained message.
    Retain,
}

impl Action {
    /// Every action, in canonical order (the order of [`PolicyDocument::to_json`]).
    ///
    /// [`PolicyDocument::to_json`]: crate::PolicyDocument::to_json
    pub const ALL: [Action; 5] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::Retain,
    ];

    /// The lowercase name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
            Action::Retain => "retain",
        }
    }

    /// Position in [`Action::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`Action`] or an [`Effect`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}, expected one of {expected}")]
pub struct UnknownName {
    kind: &'static str,
    name: String,
    expected: &'static str,
}

impl FromStr for Action {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "action",
                name: s.to_owned(),
                expected: "connect, publish, subscribe, receive, retain",
            })
    }
}

/// Whether a statement grants or forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grants, unless a deny statement also matches.
    Allow,
    /// Forbids, whatever any allow statement says.
    Deny,
}

impl Effect {
    /// The lowercase name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Effect {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Effect::Allow),
            "deny" => Ok(Effect::Deny),
            _ => Err(UnknownName {
                kind: "effect",
                name: s.to_owned(),
                expected: "allow, deny",
            }),
        }
    }
}

/// The set of actions a statement names; duplicates in a document collapse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct ActionSet(u8);

impl ActionSet {
    pub(crate) fn insert(&mut self, action: Action) {
        self.0 |= 1 << action.index();
    }

    pub(crate) fn contains(self, action: Action) -> bool {
        self.0 & (1 << action.index()) != 0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions in canonical order.
    pub(crate) fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |&a| self.contains(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.to_string().parse::<Action>(), Ok(a));
            assert_eq!(Action::ALL[a.index()], a);
        }
        for e in [Effect::Allow, Effect::Deny] {
            assert_eq!(e.to_string().parse::<Effect>(), Ok(e));
        }
        let err = "Publish".parse::<Action>().expect_err("case matters");
        assert_eq!(
            err.to_string(),
            "unknown action \"Publish\", expected one of connect, publish, subscribe, receive, retain"
        );
        assert!("permit".parse::<Effect>().is_err());
    }

    #[test]
    fn action_sets_are_canonical() {
        let mut set = ActionSet::default();
        assert!(set.is_empty());
        set.insert(Action::Retain);
        set.insert(Action::Connect);
        set.insert(Action::Retain);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Action::Connect, Action::Retain]
        );
        assert!(!set.contains(Action::Publish));
    }
}
