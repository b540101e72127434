//! # moat-audit: the tamper-evident audit trail
//!
//! **Owns:** what an audit entry is ([`Entry`]), how entries are chained ([`Chain`]: each
//! [`Record`] carries the SHA-256 of its own content and of its predecessor's hash), the
//! keyed head [`Anchor`] that pins the chain's length and last hash, and [`verify`], which
//! finds an edited, inserted, reordered or deleted entry.
//!
//! **Does not own:** where records are kept (`moat-store` appends them to SQLite) or who
//! writes them (`moat-hub` records every operator action and device security event). It does
//! no I/O and reads no clock: callers pass the time in [`Entry::at_ms`].
//!
//! **Trust boundary:** records read back for verification are untrusted: anything may have
//! been changed on disk. [`verify`] recomputes every hash and reports the first entry where
//! the chain breaks, never panicking on any content. What the chain proves: nobody changed,
//! inserted or removed an entry *without also recomputing every later hash*. The [`Anchor`]
//! (an HMAC-SHA256 over the head, keyed with a secret kept outside the records) closes that
//! gap for someone who can write the records but not read the key: a recomputed chain, or one
//! cut short, no longer matches the anchor. Someone holding both the records and the key can
//! rewrite history; against that, export the trail (JSON lines) to a system they cannot reach.
//!
//! The hash input is a length-prefixed binary encoding ([`Record::content_hash`]), not JSON,
//! so that no two different entries hash the same way and the format does not depend on a
//! serializer's choices. Version 1 of it is frozen: change the domain string to change it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::{digest, hmac};
use serde::{Deserialize, Serialize};

/// Longest actor, action or subject, in bytes. Longer values are cut (at a character
/// boundary) when the entry is made, so that a device-controlled string (a client id, a
/// certificate subject) cannot grow the trail without bound.
pub const MAX_FIELD_LEN: usize = 512;
/// Most detail pairs per entry; further pairs are dropped (and `detail_truncated` is set).
pub const MAX_DETAIL_PAIRS: usize = 32;
/// Longest detail key or value, in bytes; longer ones are cut like [`MAX_FIELD_LEN`].
pub const MAX_DETAIL_VALUE_LEN: usize = 1024;

/// SHA-256 output.
pub type Hash = [u8; 32];

/// The hash a chain's first record points back to.
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"moat-audit-v1\0";
const ANCHOR_DOMAIN: &[u8] = b"moat-audit-anchor-v1\0";

/// How an audited action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused (an authentication failure, a policy denial, a bad request).
    Denied,
    /// It failed for another reason.
    Error,
}

impl Outcome {
    fn tag(self) -> u8 {
        match self {
            Self::Success => 1,
            Self::Denied => 2,
            Self::Error => 3,
        }
    }

    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Self::Success),
            "denied" => Some(Self::Denied),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// One audited fact, before it is chained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who acted: `operator:NAME`, `token:ID`, `device:ID`, `hub` (an automatic action), or
    /// `peer:ADDR` for an unauthenticated party.
    pub actor: String,
    /// What happened, dotted: `device.revoke`, `auth.failure`, `policy.put`, ...
    pub action: String,
    /// What it happened to: `device:ID`, `policy:NAME`, `token:ID`, ...
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts (reason, address, serial, ...). Never secrets.
    pub detail: BTreeMap<String, String>,
}

impl Entry {
    /// An entry with the sizes capped (see [`MAX_FIELD_LEN`], [`MAX_DETAIL_PAIRS`]).
    pub fn new(
        at_ms: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            at_ms,
            actor: capped(actor.into(), MAX_FIELD_LEN),
            action: capped(action.into(), MAX_FIELD_LEN),
            subject: capped(subject.into(), MAX_FIELD_LEN),
            outcome,
            detail: BTreeMap::new(),
        }
    }

    /// Adds a detail pair (capped; dropped beyond [`MAX_DETAIL_PAIRS`]).
    pub fn with(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        let key = capped(key.into(), MAX_DETAIL_VALUE_LEN);
        if self.detail.len() >= MAX_DETAIL_PAIRS && !self.detail.contains_key(&key) {
            self.detail
                .insert("detail_truncated".to_owned(), "true".to_owned());
            return self;
        }
        self.detail
            .insert(key, capped(value.to_string(), MAX_DETAIL_VALUE_LEN));
        self
    }
}

fn capped(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An entry in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position, from 1, without gaps.
    pub seq: u64,
    /// The audited fact.
    pub entry: Entry,
    /// The previous record's `hash` ([`GENESIS`] for the first).
    pub prev: Hash,
    /// [`Record::content_hash`] of this record.
    pub hash: Hash,
}

impl Record {
    /// SHA-256 over the domain string, `seq`, `prev` and the entry, every variable-length
    /// field prefixed with its length.
    pub fn content_hash(seq: u64, prev: &Hash, entry: &Entry) -> Hash {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(DOMAIN);
        ctx.update(&seq.to_be_bytes());
        ctx.update(prev);
        ctx.update(&entry.at_ms.to_be_bytes());
        for field in [&entry.actor, &entry.action, &entry.subject] {
            field_into(&mut ctx, field.as_bytes());
        }
        ctx.update(&[entry.outcome.tag()]);
        ctx.update(&(entry.detail.len() as u64).to_be_bytes());
        for (k, v) in &entry.detail {
            field_into(&mut ctx, k.as_bytes());
            field_into(&mut ctx, v.as_bytes());
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// One line of the JSON-lines export (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let line = ExportLine {
            seq: self.seq,
            at_ms: self.entry.at_ms,
            actor: &self.entry.actor,
            action: &self.entry.action,
            subject: &self.entry.subject,
            outcome: self.entry.outcome,
            detail: &self.entry.detail,
            prev: hex(&self.prev),
            hash: hex(&self.hash),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct ExportLine<'a> {
    seq: u64,
    at_ms: u64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    outcome: Outcome,
    detail: &'a BTreeMap<String, String>,
    prev: String,
    hash: String,
}

fn field_into(ctx: &mut digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_be_bytes());
    ctx.update(bytes);
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex digits into a [`Hash`].
pub fn parse_hash(s: &str) -> Option<Hash> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The writer's end of the chain: the next sequence number and the head hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    head: Hash,
}

impl Chain {
    /// An empty chain.
    pub fn genesis() -> Self {
        Self {
            next_seq: 1,
            head: GENESIS,
        }
    }

    /// Continues after `last` (the stored record with the highest `seq`), or from genesis.
    pub fn resume(last: Option<&Record>) -> Self {
        match last {
            None => Self::genesis(),
            Some(r) => Self {
                next_seq: r.seq.saturating_add(1),
                head: r.hash,
            },
        }
    }

    /// Chains `entry` after the head.
    pub fn seal(&mut self, entry: Entry) -> Record {
        let seq = self.next_seq;
        let prev = self.head;
        let hash = Record::content_hash(seq, &prev, &entry);
        self.next_seq = seq.saturating_add(1);
        self.head = hash;
        Record {
            seq,
            entry,
            prev,
            hash,
        }
    }

    /// Records chained so far.
    pub fn len(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether nothing was chained yet.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 1
    }

    /// The last record's hash.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// The keyed anchor of the current head.
    pub fn anchor(&self, key: &AnchorKey) -> Anchor {
        Anchor::new(key, self.len(), self.head)
    }
}

/// The secret that keys [`Anchor`]s. Kept outside the records (a 0600 file).
pub struct AnchorKey(hmac::Key);

impl AnchorKey {
    /// Smallest accepted key, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from secret bytes, or `None` if shorter than [`MIN_LEN`](Self::MIN_LEN).
    pub fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= Self::MIN_LEN).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
}

impl fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnchorKey(..)")
    }
}

/// The chain's length and head, authenticated with the [`AnchorKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Records in the chain.
    pub count: u64,
    /// Hash of the last record ([`GENESIS`] when empty).
    pub head: Hash,
    /// HMAC-SHA256 over the domain string, `count` and `head`.
    pub mac: Hash,
}

impl Anchor {
    fn new(key: &AnchorKey, count: u64, head: Hash) -> Self {
        let tag = hmac::sign(&key.0, &Self::message(count, &head));
        let mut mac = [0; 32];
        mac.copy_from_slice(tag.as_ref());
        Self { count, head, mac }
    }

    fn message(count: u64, head: &Hash) -> Vec<u8> {
        let mut m = Vec::with_capacity(ANCHOR_DOMAIN.len() + 40);
        m.extend_from_slice(ANCHOR_DOMAIN);
        m.extend_from_slice(&count.to_be_bytes());
        m.extend_from_slice(head);
        m
    }

    /// Whether the MAC is right for `key` (constant time).
    pub fn is_authentic(&self, key: &AnchorKey) -> bool {
        hmac::verify(&key.0, &Self::message(self.count, &self.head), &self.mac).is_ok()
    }
}

/// What [`verify`] found wrong, at the first record where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Tampered {
    /// A record's content no longer matches its hash: it was edited.
    #[error("record {seq} was edited: its content does not match its hash")]
    Edited {
        /// The record.
        seq: u64,
    },
    /// A record does not point at its predecessor's hash: something before it was edited,
    /// inserted or removed.
    #[error("record {seq} does not follow record {}: an entry was inserted, removed or replaced", seq.saturating_sub(1))]
    Broken {
        /// The record.
        seq: u64,
    },
    /// Sequence numbers skip or repeat.
    #[error(
        "record {found} found where record {expected} should be: entries were removed or inserted"
    )]
    Sequence {
        /// The number that should come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The trail has entries but no anchor: the anchor was deleted.
    #[error("the trail has entries but no anchor: the anchor was deleted")]
    AnchorMissing,
    /// The anchor's MAC is wrong: the anchor (or the key) was replaced.
    #[error("the audit anchor is not authentic: it was edited or the key changed")]
    AnchorForged,
    /// The chain is shorter than the anchor says: records at the end were deleted.
    #[error(
        "the trail ends at record {found} but the anchor records {anchored}: entries at the end were deleted"
    )]
    Truncated {
        /// Records found.
        found: u64,
        /// Records the anchor counts.
        anchored: u64,
    },
    /// The chain's head differs from the anchored head: the chain was recomputed.
    #[error("record {seq} differs from the anchored head: the trail was rewritten")]
    Rewritten {
        /// The anchored record.
        seq: u64,
    },
}

/// A verified trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub count: u64,
    /// The last record's hash.
    pub head: Hash,
    /// Records after the anchor (appended since it was last written), if an anchor was given.
    pub unanchored: u64,
}

/// Checks `records` (in `seq` order, from 1) and, if given, that they agree with `anchor`.
///
/// Records written after the anchor are accepted (the anchor may lag the last append by one
/// crash); the chain up to the anchored count must end exactly at the anchored head.
pub fn verify(
    records: impl IntoIterator<Item = Record>,
    anchor: Option<(&Anchor, &AnchorKey)>,
) -> Result<Verified, Tampered> {
    if let Some((a, key)) = anchor
        && !a.is_authentic(key)
    {
        return Err(Tampered::AnchorForged);
    }
    let mut expected = 1u64;
    let mut prev = GENESIS;
    for r in records {
        if r.seq != expected {
            return Err(Tampered::Sequence {
                expected,
                found: r.seq,
            });
        }
        if Record::content_hash(r.seq, &r.prev, &r.entry) != r.hash {
            return Err(Tampered::Edited { seq: r.seq });
        }
        if r.prev != prev {
            return Err(Tampered::Broken { seq: r.seq });
        }
        if let Some((a, _)) = anchor
            && a.count == r.seq
            && a.head != r.hash
        {
            return Err(Tampered::Rewritten { seq: r.seq });
        }
        prev = r.hash;
        expected += 1;
    }
    let count = expected - 1;
    let mut unanchored = 0;
    if let Some((a, _)) = anchor {
        if count < a.count {
            return Err(Tampered::Truncated {
                found: count,
                anchored: a.count,
            });
        }
        if a.count == 0 && a.head != GENESIS {
            return Err(Tampered::AnchorForged);
        }
        unanchored = count - a.count;
    }
    Ok(Verified {
        count,
        head: prev,
        unanchored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: u64) -> Entry {
        Entry::new(
            1_700_000_000_000 + i,
            "operator:admin",
            "device.revoke",
            format!("device:d{i}"),
            Outcome::Success,
        )
        .with("reason", "key compromise")
    }

    fn chain(n: u64) -> (Vec<Record>, Chain) {
        let mut c = Chain::genesis();
        let records = (1..=n).map(|i| c.seal(entry(i))).collect();
        (records, c)
    }

    fn key() -> AnchorKey {
        AnchorKey::new(&[7; 32]).expect("key")
    }

    #[test]
    fn intact_chain_verifies_with_its_anchor() {
        let (records, c) = chain(5);
        let k = key();
        let a = c.anchor(&k);
        let v = verify(records, Some((&a, &k))).expect("intact");
        assert_eq!(v.count, 5);
        assert_eq!(v.head, c.head());
        assert_eq!(v.unanchored, 0);
        assert_eq!(verify(Vec::new(), None).expect("empty").count, 0);
    }

    #[test]
    fn edit_is_found() {
        let (mut records, _) = chain(5);
        records[2].entry.subject = "device:other".into();
        assert_eq!(verify(records, None), Err(Tampered::Edited { seq: 3 }));
    }

    #[test]
    fn edit_with_recomputed_hash_breaks_the_next_link() {
        let (mut records, _) = chain(5);
        records[2].entry.outcome = Outcome::Denied;
        records[2].hash = Record::content_hash(3, &records[2].prev, &records[2].entry);
        assert_eq!(verify(records, None), Err(Tampered::Broken { seq: 4 }));
    }

    #[test]
    fn deletion_and_insertion_are_found() {
        let (mut records, _) = chain(5);
        records.remove(1);
        assert_eq!(
            verify(records.clone(), None),
            Err(Tampered::Sequence {
                expected: 2,
                found: 3
            })
        );
        let (mut records, _) = chain(5);
        let extra = records[1].clone();
        records.insert(2, extra);
        assert!(matches!(
            verify(records, None),
            Err(Tampered::Sequence { .. })
        ));
    }

    #[test]
    fn truncation_and_rewrite_are_found_by_the_anchor() {
        let (records, c) = chain(5);
        let k = key();
        let a = c.anchor(&k);
        assert_eq!(
            verify(records[..3].to_vec(), Some((&a, &k))),
            Err(Tampered::Truncated {
                found: 3,
                anchored: 5
            })
        );
        // A whole chain recomputed with a changed entry matches itself but not the anchor.
        let mut c2 = Chain::genesis();
        let rewritten: Vec<Record> = (1..=5)
            .map(|i| {
                let mut e = entry(i);
                if i == 2 {
                    e.action = "device.enable".into();
                }
                c2.seal(e)
            })
            .collect();
        assert_eq!(
            verify(rewritten, Some((&a, &k))),
            Err(Tampered::Rewritten { seq: 5 })
        );
        let mut forged = a.clone();
        forged.count = 3;
        assert_eq!(
            verify(records, Some((&forged, &k))),
            Err(Tampered::AnchorForged)
        );
    }

    #[test]
    fn records_after_the_anchor_are_accepted_and_counted() {
        let (records, _) = chain(5);
        let mut c = Chain::resume(records.get(2));
        let k = key();
        let a = c.anchor(&k);
        assert_eq!(c.len(), 3);
        let mut more = records.clone();
        more.truncate(3);
        more.push(c.seal(entry(4)));
        let v = verify(more, Some((&a, &k))).expect("ok");
        assert_eq!((v.count, v.unanchored), (4, 1));
    }

    #[test]
    fn sizes_are_capped() {
        let e = Entry::new(0, "é".repeat(MAX_FIELD_LEN), "a", "s", Outcome::Error);
        assert!(e.actor.len() <= MAX_FIELD_LEN);
        let mut e = Entry::new(0, "a", "b", "c", Outcome::Success);
        for i in 0..100 {
            e = e.with(format!("k{i:03}"), "v".repeat(5000));
        }
        assert!(e.detail.len() <= MAX_DETAIL_PAIRS + 1);
        assert!(e.detail.values().all(|v| v.len() <= MAX_DETAIL_VALUE_LEN));
        assert_eq!(
            e.detail.get("detail_truncated").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn export_line_is_json_with_hex_hashes() {
        let (records, _) = chain(1);
        let line = records[0].to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["action"], "device.revoke");
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["prev"], hex(&GENESIS));
        assert_eq!(
            parse_hash(v["hash"].as_str().expect("str")),
            Some(records[0].hash)
        );
    }

    proptest! {
        /// Changing any single byte of any field of any record is detected.
        #[test]
        fn any_single_edit_is_detected(n in 1u64..8, victim in 0usize..8, field in 0u8..5, byte in any::<u8>()) {
            let (mut records, _) = chain(n);
            let i = victim % records.len();
            let e = &mut records[i].entry;
            let before = e.clone();
            match field {
                0 => e.at_ms ^= u64::from(byte) | 1,
                1 => e.actor.push(char::from(byte.max(1))),
                2 => e.action.push(char::from(byte.max(1))),
                3 => { e.detail.insert("x".into(), byte.to_string()); }
                _ => e.outcome = if e.outcome == Outcome::Success { Outcome::Denied } else { Outcome::Success },
            }
            prop_assume!(*e != before);
            prop_assert!(verify(records, None).is_err());
        }

        /// Field boundaries are part of the hash: moving bytes between fields changes it.
        #[test]
        fn field_boundaries_are_hashed(a in "[a-z]{0,6}", b in "[a-z]{0,6}", split in 0usize..12) {
            let joined = format!("{a}{b}");
            let split = split.min(joined.len());
            let e1 = Entry::new(1, a.clone(), b.clone(), "s", Outcome::Success);
            let e2 = Entry::new(1, &joined[..split], &joined[split..], "s", Outcome::Success);
            prop_assume!(e1 != e2);
            prop_assert_ne!(Record::content_hash(1, &GENESIS, &e1), Record::content_hash(1, &GENESIS, &e2));
        }
    }
}
