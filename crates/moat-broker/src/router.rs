//! The subscription trie: topic filter levels → subscribers.
//!
//! Literal levels are children (a short list, a hash map past [`LISTED_CHILDREN`]); `+` and
//! `#` have their own slots. Matching a topic
//! walks at most one literal child and one `+` child per level and collects `#` subscribers
//! on the way, so its cost depends on the topic's depth and the wildcard fan-out, not on the
//! number of subscriptions. Shared subscriptions (`$share/group/filter`) hang off the same
//! node as a group whose members take turns (MQTT-4.8.2).
//! The oracle in tests is [`moat_types::naive_matches`].

use bytes::Bytes;
use moat_mqtt::SubscriptionOptions;
use moat_types::{ShareGroup, TopicFilter, TopicName};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::session::SessionCell;

/// One subscription as routed.
#[derive(Clone, Debug)]
pub(crate) struct Subscriber {
    pub session: Arc<SessionCell>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    name: Option<ShareGroup>,
    members: Vec<Subscriber>,
    cursor: AtomicUsize,
}

#[derive(Debug, Default)]
struct Leaf {
    direct: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Leaf {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    /// Returns whether the subscription is new (not a replacement).
    fn insert(&mut self, share: Option<&ShareGroup>, sub: Subscriber) -> bool {
        let id = sub.session.id;
        let list = match share {
            None => &mut self.direct,
            Some(group) => {
                let pos = match self
                    .shared
                    .iter()
                    .position(|g| g.name.as_ref() == Some(group))
                {
                    Some(pos) => pos,
                    None => {
                        self.shared.push(SharedGroup {
                            name: Some(group.clone()),
                            ..SharedGroup::default()
                        });
                        self.shared.len() - 1
                    }
                };
                &mut self.shared[pos].members
            }
        };
        match list.iter_mut().find(|s| s.session.id == id) {
            Some(existing) => {
                *existing = sub;
                false
            }
            None => {
                list.push(sub);
                true
            }
        }
    }

    fn remove(&mut self, share: Option<&ShareGroup>, session_id: u64) -> bool {
        match share {
            None => {
                let before = self.direct.len();
                self.direct.retain(|s| s.session.id != session_id);
                before != self.direct.len()
            }
            Some(group) => {
                let Some(pos) = self
                    .shared
                    .iter()
                    .position(|g| g.name.as_ref() == Some(group))
                else {
                    return false;
                };
                let members = &mut self.shared[pos].members;
                let before = members.len();
                members.retain(|s| s.session.id != session_id);
                let removed = before != members.len();
                if members.is_empty() {
                    self.shared.swap_remove(pos);
                }
                removed
            }
        }
    }

    fn collect(&self, out: &mut Vec<Subscriber>) {
        out.extend(self.direct.iter().cloned());
        for group in &self.shared {
            if let Some(member) = group.pick() {
                out.push(member.clone());
            }
        }
    }
}

impl SharedGroup {
    /// Round robin over the members, preferring one whose session is online.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_online())
            .or_else(|| self.members.get(start % n))
    }
}

/// Most nodes have a few literal children (a fleet's `devices/{id}` node is the exception):
/// up to this many are kept in a list and compared byte by byte, which costs less per
/// lookup than hashing the level; past it they move to a hash map (SipHash, keyed per
/// process, so that a client choosing topic levels cannot force collisions).
const LISTED_CHILDREN: usize = 8;

/// The literal children of a node.
#[derive(Debug)]
enum Children {
    Listed(Vec<(Bytes, Node)>),
    Hashed(HashMap<Bytes, Node>),
}

impl Default for Children {
    fn default() -> Self {
        Self::Listed(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Self::Listed(list) => list.is_empty(),
            Self::Hashed(map) => map.is_empty(),
        }
    }

    fn get(&self, level: &[u8]) -> Option<&Node> {
        match self {
            Self::Listed(list) => list.iter().find(|(l, _)| l[..] == *level).map(|(_, n)| n),
            Self::Hashed(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &[u8]) -> Option<&mut Node> {
        match self {
            Self::Listed(list) => list
                .iter_mut()
                .find(|(l, _)| l[..] == *level)
                .map(|(_, n)| n),
            Self::Hashed(map) => map.get_mut(level),
        }
    }

    /// The child for `level`, created empty if there is none.
    fn entry(&mut self, level: Bytes) -> &mut Node {
        if let Self::Listed(list) = self
            && list.len() >= LISTED_CHILDREN
            && !list.iter().any(|(l, _)| *l == level)
        {
            *self = Self::Hashed(std::mem::take(list).into_iter().collect());
        }
        match self {
            Self::Listed(list) => {
                let pos = match list.iter().position(|(l, _)| *l == level) {
                    Some(pos) => pos,
                    None => {
                        list.push((level, Node::default()));
                        list.len() - 1
                    }
                };
                &mut list[pos].1
            }
            Self::Hashed(map) => map.entry(level).or_default(),
        }
    }

    fn remove(&mut self, level: &[u8]) {
        match self {
            Self::Listed(list) => list.retain(|(l, _)| l[..] != *level),
            Self::Hashed(map) => {
                map.remove(level);
                // Back to a list once it fits again, with room so that a node at the bound
                // does not switch on every subscribe and unsubscribe.
                if map.len() <= LISTED_CHILDREN / 2 {
                    *self = Self::Listed(std::mem::take(map).into_iter().collect());
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    plus: Option<Box<Node>>,
    hash: Option<Box<Leaf>>,
    leaf: Leaf,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.leaf.is_empty()
    }
}

/// The subscription index.
#[derive(Debug, Default)]
pub(crate) struct Router {
    root: Node,
    count: usize,
}

fn split_levels(filter: &TopicFilter) -> Vec<Bytes> {
    let bytes = Bytes::copy_from_slice(filter.as_bytes());
    let mut levels = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            levels.push(bytes.slice(start..i));
            start = i + 1;
        }
    }
    levels.push(bytes.slice(start..));
    levels
}

impl Router {
    /// Adds or replaces the subscription of `sub.session` for this filter and group.
    pub fn insert(&mut self, filter: &TopicFilter, share: Option<&ShareGroup>, sub: Subscriber) {
        let mut node = &mut self.root;
        let levels = split_levels(filter);
        let last = levels.len() - 1;
        for (i, level) in levels.into_iter().enumerate() {
            match &level[..] {
                b"#" if i == last => {
                    if node
                        .hash
                        .get_or_insert_with(Box::default)
                        .insert(share, sub)
                    {
                        self.count += 1;
                    }
                    return;
                }
                b"+" => node = node.plus.get_or_insert_with(Box::default),
                _ => node = node.children.entry(level),
            }
        }
        if node.leaf.insert(share, sub) {
            self.count += 1;
        }
    }

    /// Removes the subscription of `session_id` for this filter and group; prunes empty
    /// nodes. Returns whether one existed.
    pub fn remove(
        &mut self,
        filter: &TopicFilter,
        share: Option<&ShareGroup>,
        session_id: u64,
    ) -> bool {
        let levels = split_levels(filter);
        let removed = Self::remove_at(&mut self.root, &levels, share, session_id);
        if removed {
            self.count = self.count.saturating_sub(1);
        }
        removed
    }

    fn remove_at(
        node: &mut Node,
        levels: &[Bytes],
        share: Option<&ShareGroup>,
        session_id: u64,
    ) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            return node.leaf.remove(share, session_id);
        };
        match &level[..] {
            b"#" if rest.is_empty() => {
                let Some(hash) = node.hash.as_mut() else {
                    return false;
                };
                let removed = hash.remove(share, session_id);
                if hash.is_empty() {
                    node.hash = None;
                }
                removed
            }
            b"+" => {
                let Some(plus) = node.plus.as_mut() else {
                    return false;
                };
                let removed = Self::remove_at(plus, rest, share, session_id);
                if plus.is_empty() {
                    node.plus = None;
                }
                removed
            }
            _ => {
                let Some(child) = node.children.get_mut(&level[..]) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, share, session_id);
                if child.is_empty() {
                    node.children.remove(&level[..]);
                }
                removed
            }
        }
    }

    /// Appends every subscription matching `topic` to `out` (one member per shared group).
    pub fn collect(&self, topic: &TopicName, out: &mut Vec<Subscriber>) {
        Self::collect_at(&self.root, Some(topic.as_bytes()), topic.is_dollar(), out);
    }

    /// `rest` is the unmatched tail of the topic (`None` once every level is consumed).
    /// Splits lazily so that matching allocates nothing.
    fn collect_at(
        node: &Node,
        rest: Option<&[u8]>,
        at_dollar_root: bool,
        out: &mut Vec<Subscriber>,
    ) {
        // MQTT-4.7.2-1: wildcards in the first level do not match `$` topics.
        if !at_dollar_root && let Some(hash) = &node.hash {
            hash.collect(out);
        }
        let Some(rest) = rest else {
            node.leaf.collect(out);
            return;
        };
        let (level, next) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if let Some(child) = node.children.get(level) {
            Self::collect_at(child, next, false, out);
        }
        if !at_dollar_root && let Some(plus) = &node.plus {
            Self::collect_at(plus, next, false, out);
        }
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionState;
    use moat_mqtt::ProtocolVersion;
    use moat_types::{ClientId, naive_matches};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn cell(id: u64) -> Arc<SessionCell> {
        let client = ClientId::parse(&format!("c{id}")).expect("client id");
        SessionCell::new(id, client, SessionState::new(ProtocolVersion::V5, 0))
    }

    fn sub(cell: &Arc<SessionCell>) -> Subscriber {
        Subscriber {
            session: cell.clone(),
            options: SubscriptionOptions::default(),
            identifier: None,
        }
    }

    /// Topic levels: a few, so that filters and topics overlap often, or (`wide`) more than
    /// a node keeps in a list, so that children also live in hash maps.
    fn level(wide: bool) -> BoxedStrategy<&'static str> {
        if wide {
            prop::sample::select(vec![
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "", "$s",
            ])
            .boxed()
        } else {
            prop_oneof![Just("a"), Just("b"), Just(""), Just("$s"), Just("c")].boxed()
        }
    }

    fn topic(wide: bool) -> impl Strategy<Value = String> {
        prop::collection::vec(level(wide), 1..5)
            .prop_map(|l| l.join("/"))
            .prop_filter("non-empty", |t| !t.is_empty())
    }

    fn filter(wide: bool) -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(wide), Just("+")], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                let f = levels.join("/");
                (!f.is_empty()).then_some(f)
            })
    }

    /// Subscribes each filter, removes some, then checks every topic against the naive
    /// matcher; a trie whose subscriptions are all removed is pruned to an empty root.
    fn agrees_with_naive_matcher(
        filters: &[String],
        removals: &[prop::sample::Index],
        topics: &[String],
    ) -> Result<(), TestCaseError> {
        let mut router = Router::default();
        let cells: Vec<_> = (0..filters.len() as u64).map(cell).collect();
        let mut live: Vec<(u64, String)> = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let tf = TopicFilter::parse(f).expect("generated filters are valid");
            router.insert(&tf, None, sub(&cells[i]));
            live.push((i as u64, f.clone()));
        }
        for r in removals {
            if live.is_empty() {
                break;
            }
            let (id, f) = live.remove(r.index(live.len()));
            let tf = TopicFilter::parse(&f).expect("valid");
            prop_assert!(router.remove(&tf, None, id));
        }
        prop_assert_eq!(router.len(), live.len());
        if live.is_empty() {
            prop_assert!(router.root.is_empty(), "emptied nodes are pruned");
        }
        for t in topics {
            let tn = TopicName::parse(t).expect("generated topics are valid");
            let mut out = Vec::new();
            router.collect(&tn, &mut out);
            let got: BTreeSet<u64> = out.iter().map(|s| s.session.id).collect();
            let want: BTreeSet<u64> = live
                .iter()
                .filter(|(_, f)| naive_matches(f.as_bytes(), t.as_bytes()))
                .map(|(id, _)| *id)
                .collect();
            prop_assert_eq!(got.len(), out.len(), "one entry per matching subscription");
            prop_assert_eq!(got, want, "topic {}", t);
        }
        Ok(())
    }

    proptest! {
        /// The trie agrees with the naive matcher on every topic, after inserts and removes.
        #[test]
        fn trie_agrees_with_naive_matcher(
            filters in prop::collection::vec(filter(false), 1..24),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            topics in prop::collection::vec(topic(false), 1..16),
        ) {
            agrees_with_naive_matcher(&filters, &removals, &topics)?;
        }

        /// The same with more distinct levels than a node lists, so that children switch
        /// to hash maps (and back, when removals thin them out).
        #[test]
        fn trie_agrees_with_naive_matcher_past_the_list_bound(
            filters in prop::collection::vec(filter(true), 8..64),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
            topics in prop::collection::vec(topic(true), 1..32),
        ) {
            agrees_with_naive_matcher(&filters, &removals, &topics)?;
        }
    }

    /// Children move from the list to the hash map past the bound and back when they fit
    /// again, and matching agrees with the naive matcher on both sides of each switch.
    #[test]
    fn children_switch_between_list_and_map_without_losing_subscriptions() {
        let mut router = Router::default();
        let width = LISTED_CHILDREN as u64 * 3;
        let cells: Vec<_> = (0..=width).map(cell).collect();
        let wildcard = TopicFilter::parse("x/+/y").expect("valid");
        router.insert(&wildcard, None, sub(&cells[width as usize]));
        // Every topic x/{j}/y matches the wildcard and, while it is subscribed, its own filter.
        let check = |router: &Router, subscribed: &dyn Fn(u64) -> bool, after: &str| {
            for j in 0..width {
                let topic = TopicName::parse(&format!("x/{j}/y")).expect("valid");
                let mut out = Vec::new();
                router.collect(&topic, &mut out);
                let got: BTreeSet<u64> = out.iter().map(|s| s.session.id).collect();
                let want: BTreeSet<u64> = if subscribed(j) {
                    [j, width].into()
                } else {
                    [width].into()
                };
                assert_eq!(got, want, "after {after}, topic x/{j}/y");
            }
        };
        let filter = |i: u64| TopicFilter::parse(&format!("x/{i}/y")).expect("valid");
        let hashed = |router: &Router| {
            matches!(
                router.root.children.get(b"x").map(|n| &n.children),
                Some(Children::Hashed(_))
            )
        };
        for i in 0..width {
            router.insert(&filter(i), None, sub(&cells[i as usize]));
            check(&router, &|j| j <= i, &format!("inserting {i}"));
        }
        assert!(hashed(&router), "past the bound: a hash map");
        for i in 0..width {
            assert!(router.remove(&filter(i), None, i));
            check(&router, &|j| j > i, &format!("removing {i}"));
        }
        assert!(!hashed(&router), "back to a list");
        assert_eq!(router.len(), 1);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut router = Router::default();
        let group = moat_types::SubscriptionFilter::parse("$share/g/a/+").expect("valid");
        let (c1, c2) = (cell(1), cell(2));
        c1.set_online(true);
        c2.set_online(true);
        router.insert(&group.filter, group.share.as_ref(), sub(&c1));
        router.insert(&group.filter, group.share.as_ref(), sub(&c2));
        let topic = TopicName::parse("a/x").expect("topic");
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            router.collect(&topic, &mut out);
            assert_eq!(out.len(), 1, "one member per group");
            picks.push(out[0].session.id);
        }
        assert_eq!(picks.iter().filter(|&&id| id == 1).count(), 2);
        assert_eq!(picks.iter().filter(|&&id| id == 2).count(), 2);
        // An offline member is skipped while another is online.
        c1.set_online(false);
        for _ in 0..3 {
            let mut out = Vec::new();
            router.collect(&topic, &mut out);
            assert_eq!(out[0].session.id, 2);
        }
        // Re-subscribing replaces, it does not add.
        router.insert(&group.filter, group.share.as_ref(), sub(&c1));
        assert_eq!(router.len(), 2);
        assert!(router.remove(&group.filter, group.share.as_ref(), 1));
        assert!(router.remove(&group.filter, group.share.as_ref(), 2));
        assert_eq!(router.len(), 0);
    }
}
