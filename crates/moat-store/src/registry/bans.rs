//! The ban list (`bans` table): who is refused before TLS (addresses, networks) or at
//! CONNECT (devices, client ids), until when, why and on whose word. What a ban means and how
//! it is enforced is moat-net's and moat-hub's business; this module keeps the rows.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Registry, Result, to_i64, to_u64};

/// The `bans` table, created with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bans (
    id         TEXT    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    created_by TEXT    NOT NULL,
    UNIQUE (kind, value)
) STRICT;
";

/// What a ban applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BanKind {
    /// One IP address.
    Address,
    /// An IP network (CIDR).
    Cidr,
    /// A device id.
    Device,
    /// An MQTT client id.
    ClientId,
}

impl BanKind {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Cidr => "cidr",
            Self::Device => "device",
            Self::ClientId => "client-id",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "address" => Some(Self::Address),
            "cidr" => Some(Self::Cidr),
            "device" => Some(Self::Device),
            "client-id" => Some(Self::ClientId),
            _ => None,
        }
    }
}

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// Public id (for `moat ban remove`).
    pub id: String,
    /// What it applies to.
    pub kind: BanKind,
    /// The address, network, device id or client id (canonical text).
    pub value: String,
    /// Why (for an automatic ban: the evidence).
    pub reason: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the epoch; `None`: permanent.
    pub expires_at_ms: Option<u64>,
    /// The actor that added it, or `auto` for an automatic ban.
    pub created_by: String,
}

/// What [`Registry::put_ban`] does when the target is banned already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanUpdate {
    /// The new ban replaces the old one (an operator's decision, even a shorter ban).
    Replace,
    /// The new ban replaces the old one only if it lasts longer (automatic bans never shorten
    /// an operator's).
    ExtendOnly,
}

fn ban_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BanRecord> {
    let kind: String = r.get(1)?;
    let kind = BanKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("bans: unknown kind {kind:?}").into(),
        )
    })?;
    Ok(BanRecord {
        id: r.get(0)?,
        kind,
        value: r.get(2)?,
        reason: r.get(3)?,
        created_at_ms: to_u64(r.get(4)?),
        expires_at_ms: r.get::<_, Option<i64>>(5)?.map(to_u64),
        created_by: r.get(6)?,
    })
}

const COLUMNS: &str = "id, kind, value, reason, created_at, expires_at, created_by";

impl Registry {
    /// Adds `ban`, or updates the ban on the same target as `update` says; returns the ban now
    /// stored for that target (whose id is the earlier one's if it was updated).
    pub fn put_ban(&self, ban: &BanRecord, update: BanUpdate) -> Result<BanRecord> {
        let condition = match update {
            BanUpdate::Replace => "",
            BanUpdate::ExtendOnly => {
                "WHERE bans.expires_at IS NOT NULL
                   AND (excluded.expires_at IS NULL OR excluded.expires_at > bans.expires_at)"
            }
        };
        self.with(|i| {
            let tx = i.conn.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO bans ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason,
                       created_at = excluded.created_at, expires_at = excluded.expires_at,
                       created_by = excluded.created_by {condition}"
                ),
                params![
                    ban.id,
                    ban.kind.as_str(),
                    ban.value,
                    ban.reason,
                    to_i64(ban.created_at_ms),
                    ban.expires_at_ms.map(to_i64),
                    ban.created_by
                ],
            )?;
            let stored = tx.query_row(
                &format!("SELECT {COLUMNS} FROM bans WHERE kind = ?1 AND value = ?2"),
                params![ban.kind.as_str(), ban.value],
                ban_row,
            )?;
            tx.commit()?;
            Ok(stored)
        })
    }

    /// Every ban, expired ones included until [`delete_expired_bans`](Self::delete_expired_bans),
    /// oldest first.
    pub fn bans(&self) -> Result<Vec<BanRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM bans ORDER BY created_at, id"
            ))?;
            st.query_map([], ban_row)?.collect()
        })
    }

    /// Deletes a ban by id; the ban, if it existed.
    pub fn delete_ban(&self, id: &str) -> Result<Option<BanRecord>> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            let found = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM bans WHERE id = ?1"),
                    [id],
                    ban_row,
                )
                .optional()?;
            tx.execute("DELETE FROM bans WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(found)
        })
    }

    /// Deletes the bans that expired at or before `now_ms` (the audit trail keeps their
    /// history); how many.
    pub fn delete_expired_bans(&self, now_ms: u64) -> Result<usize> {
        self.with(|i| {
            i.conn.execute(
                "DELETE FROM bans WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [to_i64(now_ms)],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(label: &str) -> (Registry, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("moat-bans-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let key = moat_audit::AnchorKey::new(&[7u8; 32]).expect("key");
        (
            Registry::open(&dir.join("registry.db"), key).expect("open"),
            dir,
        )
    }

    fn ban(id: &str, kind: BanKind, value: &str, expires: Option<u64>, by: &str) -> BanRecord {
        BanRecord {
            id: id.into(),
            kind,
            value: value.into(),
            reason: format!("reason {id}"),
            created_at_ms: 1,
            expires_at_ms: expires,
            created_by: by.into(),
        }
    }

    #[test]
    fn bans_round_trip_update_and_expire() {
        let (r, dir) = registry("round-trip");
        let a = r
            .put_ban(
                &ban("a", BanKind::Address, "10.0.0.1", Some(100), "op"),
                BanUpdate::Replace,
            )
            .expect("put");
        assert_eq!(a.id, "a");
        r.put_ban(
            &ban("b", BanKind::Device, "dev1", None, "op"),
            BanUpdate::Replace,
        )
        .expect("put");
        // An automatic ban never shortens an operator's permanent one...
        let kept = r
            .put_ban(
                &ban("c", BanKind::Device, "dev1", Some(50), "auto"),
                BanUpdate::ExtendOnly,
            )
            .expect("put");
        assert_eq!(
            (
                kept.id.as_str(),
                kept.expires_at_ms,
                kept.created_by.as_str()
            ),
            ("b", None, "op")
        );
        // ...but extends a shorter one, keeping its id.
        let longer = r
            .put_ban(
                &ban("d", BanKind::Address, "10.0.0.1", Some(500), "auto"),
                BanUpdate::ExtendOnly,
            )
            .expect("put");
        assert_eq!((longer.id.as_str(), longer.expires_at_ms), ("a", Some(500)));
        // An operator may shorten.
        let shorter = r
            .put_ban(
                &ban("e", BanKind::Address, "10.0.0.1", Some(10), "op"),
                BanUpdate::Replace,
            )
            .expect("put");
        assert_eq!(shorter.expires_at_ms, Some(10));
        assert_eq!(r.bans().expect("list").len(), 2);
        assert_eq!(r.delete_expired_bans(10).expect("purge"), 1);
        let left = r.bans().expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kind, BanKind::Device);
        assert_eq!(
            r.delete_ban("b").expect("delete").map(|b| b.value),
            Some("dev1".into())
        );
        assert_eq!(r.delete_ban("b").expect("delete"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
