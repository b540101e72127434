//! Bound (variable-free) filters compiled to level vectors, and the three questions the
//! engine asks of them: does a topic match, does one filter cover another, do two filters
//! overlap. All three follow MQTT-4.7, including the `$` rule (MQTT-4.7.2-1): a filter
//! whose first level is `+` or `#` matches no topic that starts with `$`.

use moat_types::TopicFilter;

/// One compiled filter level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Exactly this text.
    Literal(Box<[u8]>),
    /// `+`: any one level, except a leading `$`-level.
    Plus,
    /// `#`: the parent and any number of levels below, except under a leading `$`-level.
    /// Only ever last.
    Hash,
    /// Any one level, `$`-levels included: a deny statement's level whose variable could not
    /// be bound. Broader than `+` so that the deny stays conservative.
    Any,
}

impl Level {
    fn is_mqtt_wildcard(&self) -> bool {
        matches!(self, Level::Plus | Level::Hash)
    }
}

/// A level of a filter the device sent (already validated by [`TopicFilter`]).
#[derive(Clone, Copy)]
enum Requested<'a> {
    Literal(&'a [u8]),
    Plus,
    Hash,
}

impl<'a> Requested<'a> {
    fn classify(level: &'a [u8]) -> Self {
        match level {
            b"+" => Requested::Plus,
            b"#" => Requested::Hash,
            _ => Requested::Literal(level),
        }
    }

    fn is_dollar(self) -> bool {
        matches!(self, Requested::Literal(l) if l.first() == Some(&b'$'))
    }
}

fn is_dollar_literal(level: Option<&Level>) -> bool {
    matches!(level, Some(Level::Literal(l)) if l.first() == Some(&b'$'))
}

/// A variable-free topic filter as a vector of levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Box<[Level]>,
}

impl Filter {
    /// `levels` must be non-empty with `Hash` only last; [`TopicPattern`] guarantees both.
    ///
    /// [`TopicPattern`]: crate::TopicPattern
    pub(crate) fn new(levels: Vec<Level>) -> Self {
        Self {
            levels: levels.into_boxed_slice(),
        }
    }

    fn starts_with_wildcard(&self) -> bool {
        self.levels.first().is_some_and(Level::is_mqtt_wildcard)
    }

    /// Whether the topic name `topic` (raw bytes, `/`-separated) matches. Allocates nothing.
    pub(crate) fn matches(&self, topic: &[u8]) -> bool {
        if topic.first() == Some(&b'$') && self.starts_with_wildcard() {
            return false;
        }
        let mut topic_levels = topic.split(|&b| b == b'/');
        for level in self.levels.iter() {
            let Some(topic_level) = topic_levels.next() else {
                // The topic ran out: only a `#` (which matches its parent) may remain.
                return matches!(level, Level::Hash);
            };
            match level {
                Level::Hash => return true,
                Level::Plus | Level::Any => {}
                Level::Literal(text) => {
                    if **text != *topic_level {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// Whether `id`, taken whole as one topic level (a `/` in it is not a separator),
    /// matches: only filters of the form `L` or `L/#` can, for a level `L` that matches.
    pub(crate) fn matches_single_level(&self, id: &[u8]) -> bool {
        if id.first() == Some(&b'$') && self.starts_with_wildcard() {
            return false;
        }
        let mut levels = self.levels.iter();
        let first_matches = match levels.next() {
            Some(Level::Hash) => return true,
            Some(Level::Plus | Level::Any) => true,
            Some(Level::Literal(text)) => **text == *id,
            None => false,
        };
        first_matches && matches!(levels.next(), None | Some(Level::Hash))
    }

    /// Whether every topic `requested` can match is matched by `self`.
    pub(crate) fn covers(&self, requested: &TopicFilter) -> bool {
        let mut theirs = requested.levels().map(Requested::classify).peekable();
        // A requested filter that starts with a `$`-level asks for `$`-topics, which a filter
        // starting with a wildcard cannot grant. One that starts with a wildcard matches no
        // `$`-topic, so nothing more is needed for it.
        if self.starts_with_wildcard() && theirs.peek().is_some_and(|l| l.is_dollar()) {
            return false;
        }
        let their_first_is_empty = matches!(theirs.peek(), Some(Requested::Literal(b"")));
        for (i, ours) in self.levels.iter().enumerate() {
            match (ours, theirs.next()) {
                (Level::Hash, _) => return true,
                // Their topics end here; ours need another level.
                (_, None) => return false,
                (Level::Plus | Level::Any, Some(Requested::Hash)) => {
                    // Their `#` matches its parent and everything below; ours needs this
                    // level, so only `+/#` can cover it, and only where the parent is no
                    // topic at all: the empty string is not a topic name (MQTT-4.7.3-1).
                    let parent_is_empty = i == 0 || (i == 1 && their_first_is_empty);
                    return parent_is_empty && matches!(self.levels.get(i + 1), Some(Level::Hash));
                }
                // Their topics vary at this level; ours do not.
                (Level::Literal(_), Some(Requested::Hash | Requested::Plus)) => return false,
                (Level::Plus | Level::Any, Some(_)) => {}
                (Level::Literal(text), Some(Requested::Literal(level))) => {
                    if **text != *level {
                        return false;
                    }
                }
            }
        }
        theirs.next().is_none()
    }

    /// Whether some topic matches both `self` and `requested`.
    pub(crate) fn overlaps(&self, requested: &TopicFilter) -> bool {
        let mut theirs = requested.levels().map(Requested::classify).peekable();
        // The `$` rule can only rule a topic out when one side insists on a `$`-level
        // (a literal) and the other starts with `+` or `#`; otherwise the wildcard side can
        // pick a level without `$`.
        let their_first = theirs.peek().copied();
        if self.starts_with_wildcard() && their_first.is_some_and(Requested::is_dollar) {
            return false;
        }
        if matches!(their_first, Some(Requested::Plus | Requested::Hash))
            && is_dollar_literal(self.levels.first())
        {
            return false;
        }
        // A common topic of a single level must not be the empty string, which is not a
        // topic name (MQTT-4.7.3-1); longer common topics are never empty.
        let ours_first_is_empty =
            matches!(self.levels.first(), Some(Level::Literal(l)) if l.is_empty());
        let their_first_is_empty = matches!(their_first, Some(Requested::Literal(b"")));
        let one_level_topic_possible = !ours_first_is_empty && !their_first_is_empty;
        for (i, ours) in self.levels.iter().enumerate() {
            match (ours, theirs.next()) {
                // Our `#` matches their topics of exactly this length through its parent.
                (Level::Hash, None) => return i != 1 || one_level_topic_possible,
                // Either `#` absorbs whatever the other still requires (which makes the
                // common topic longer than one level, or it is ours alone at the root).
                (Level::Hash, _) | (_, Some(Requested::Hash)) => return true,
                (_, None) => return false,
                (Level::Plus | Level::Any, Some(_))
                | (Level::Literal(_), Some(Requested::Plus)) => {}
                (Level::Literal(text), Some(Requested::Literal(level))) => {
                    if **text != *level {
                        return false;
                    }
                }
            }
        }
        // Ours ended: theirs must end too, or go on with a `#` that matches its parent, the
        // topic ours ends with.
        match theirs.next() {
            None | Some(Requested::Hash) => self.levels.len() != 1 || one_level_topic_possible,
            Some(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_types::{TopicName, naive_matches};
    use proptest::prelude::*;

    /// Compiles a plain MQTT filter; `*` stands for [`Level::Any`].
    fn compile(s: &str) -> Filter {
        Filter::new(
            s.split('/')
                .map(|l| match l {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    "*" => Level::Any,
                    _ => Level::Literal(l.as_bytes().into()),
                })
                .collect(),
        )
    }

    fn req(s: &str) -> TopicFilter {
        TopicFilter::parse(s).expect("valid filter")
    }

    fn covers(a: &str, f: &str) -> bool {
        compile(a).covers(&req(f))
    }

    fn overlaps(d: &str, f: &str) -> bool {
        compile(d).overlaps(&req(f))
    }

    #[test]
    fn matching() {
        let m = |f: &str, t: &str| compile(f).matches(t.as_bytes());
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("a/+", "a/"));
        assert!(!m("a/+", "a"));
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/x"));
        assert!(
            m("*/x", "$SYS/x"),
            "an unbound deny level reaches `$`-topics"
        );
        assert!(m("*/x", "d/x"));
        assert!(!m("*/x", "d/y"));
    }

    #[test]
    fn single_level_matching() {
        let m = |f: &str, id: &str| compile(f).matches_single_level(id.as_bytes());
        assert!(m("d1", "d1"));
        assert!(!m("d1", "d10"));
        assert!(m("+", "any/thing"));
        assert!(m("#", "x"));
        assert!(m("d1/#", "d1"));
        assert!(!m("a/b", "a/b"), "a client id is one level");
        assert!(!m("+", "$x"));
        assert!(!m("#", "$x"));
        assert!(m("*", "$x"));
        assert!(m("$x", "$x"));
    }

    #[test]
    fn cover_cases() {
        assert!(covers("devices/d1/#", "devices/d1/+/x"));
        assert!(covers("devices/d1/#", "devices/d1"));
        assert!(covers("devices/d1/#", "devices/d1/#"));
        assert!(!covers("devices/d1/#", "devices/+/x"));
        assert!(!covers("devices/d1/#", "devices/#"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("a/+", "a/+"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "a/#"));
        assert!(covers("#", "+/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/+"));
        assert!(
            covers("+/#", "#"),
            "`#` matches no $-topic and no empty topic"
        );
        assert!(
            covers("/+/#", "/#"),
            "`/#` does not match the empty topic either"
        );
        assert!(!covers("+/+/#", "+/#"));
        assert!(!covers("+/+", "#"));
    }

    #[test]
    fn overlap_cases() {
        assert!(overlaps("devices/+/cmd/#", "devices/d1/#"));
        assert!(overlaps("devices/+/cmd/#", "#"));
        assert!(overlaps("a/b", "a/+"));
        assert!(overlaps("a/#", "a"));
        assert!(overlaps("a", "a/#"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b/c", "a/+"));
        assert!(!overlaps("a/+", "a/b/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(!overlaps("$SYS/#", "#"));
        assert!(!overlaps("$SYS/#", "+/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
        assert!(overlaps("+/x", "+/+"));
        assert!(overlaps("*/x", "$SYS/x"));
        assert!(overlaps("*/x", "#"));
        assert!(
            !overlaps("+", "/#"),
            "their only one-level topic would be empty"
        );
        assert!(overlaps("+", "+/#"));
        assert!(
            !overlaps("/#", "+"),
            "our only one-level topic would be empty"
        );
        assert!(overlaps("/#", "+/+"));
    }

    // Exhaustive oracle over a finite universe. Filters have at most `MAX` levels drawn from
    // `a`, `$a`, `+`, `#`; topics range over every sequence of up to `MAX + 1` levels of
    // `a`, `$a`, `z` and the empty level (but not the empty topic). `z` stands for "a level no filter names", so any
    // counterexample to cover has a representative here, and any common topic of two
    // overlapping filters does too.
    const MAX: usize = 3;
    const TOPIC_LEVELS: [&str; 4] = ["a", "$a", "z", ""];

    fn universe() -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = TOPIC_LEVELS.iter().map(|s| s.to_string()).collect();
        for _ in 0..=MAX {
            all.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .flat_map(|t| TOPIC_LEVELS.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        // The empty string is not a topic name (MQTT-4.7.3-1).
        all.retain(|t| !t.is_empty());
        all
    }

    /// Matches like [`naive_matches`], and `*` ([`Level::Any`]) matches any one level.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn walk(f: &[&str], t: &[&str]) -> bool {
            match (f.split_first(), t.split_first()) {
                (Some((&"#", _)), _) | (None, None) => true,
                (Some((fl, f_rest)), Some((tl, t_rest))) => {
                    (*fl == "+" || *fl == "*" || fl == tl) && walk(f_rest, t_rest)
                }
                _ => false,
            }
        }
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        walk(&f, &t)
    }

    /// A requested filter (`any_level` false) or one of ours, which may hold `*`.
    fn filter_strategy(any_level: bool) -> impl Strategy<Value = String> {
        let mut inner = vec!["a", "$a", "+", ""];
        if any_level {
            inner.push("*");
        }
        let mut last = inner.clone();
        last.push("#");
        (
            prop::collection::vec(prop::sample::select(inner), 0..MAX),
            prop::sample::select(last),
        )
            .prop_map(|(mut levels, last)| {
                levels.push(last);
                levels.join("/")
            })
            .prop_filter("a filter is not empty", |f| !f.is_empty())
    }

    proptest! {
        #[test]
        fn cover_and_overlap_agree_with_brute_force(
            a in filter_strategy(true),
            f in filter_strategy(false),
        ) {
            let topics = universe();
            let matched_by_f: Vec<&String> =
                topics.iter().filter(|t| naive_matches(f.as_bytes(), t.as_bytes())).collect();
            let expect_cover = matched_by_f.iter().all(|t| reference_matches(&a, t));
            let expect_overlap = matched_by_f.iter().any(|t| reference_matches(&a, t));
            prop_assert_eq!(covers(&a, &f), expect_cover, "covers({}, {})", a, f);
            prop_assert_eq!(overlaps(&a, &f), expect_overlap, "overlaps({}, {})", a, f);
            for t in &topics {
                let name = TopicName::parse(t).expect("the universe holds topic names");
                prop_assert_eq!(
                    compile(&a).matches(name.as_bytes()),
                    reference_matches(&a, t),
                    "matches({}, {})", a, t
                );
            }
        }
    }
}
