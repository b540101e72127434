//! The registry: devices, groups, certificates, policies, enrollment tokens, operators and
//! API tokens, and the audit trail, in their own SQLite file (`registry.db`).
//!
//! A separate file from the broker's message store because its access pattern differs: few,
//! small, synchronous writes (an operator action, an enrollment, a security event) that must
//! not queue behind message traffic, and readers besides the hub (`moat audit verify` reads it
//! while the hub runs; so it uses normal WAL locking, not the message store's exclusive lock).
//!
//! Every method is synchronous and short; async callers run them on a blocking thread. Rows are
//! verified on read like the message store's: a malformed row is an error naming the table and
//! key, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use moat_audit::{Anchor, AnchorKey, Chain, Entry, Outcome, Record};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::StoreError;

mod alerts;
mod bans;
mod campaigns;
pub use alerts::{AlertRecord, AlertState, NewAlert};
pub use bans::{BanKind, BanRecord, BanUpdate};
pub use campaigns::{CampaignDeviceRow, CampaignRow, DeviceDocument};

/// Most rows one list call returns.
pub const MAX_PAGE: usize = 1000;

const REGISTRY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registry_version (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS devices (
    id         TEXT    NOT NULL PRIMARY KEY,
    grp        TEXT,
    status     TEXT    NOT NULL,
    attrs      TEXT    NOT NULL,
    policies   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS groups (
    name       TEXT    NOT NULL PRIMARY KEY,
    policies   TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS certificates (
    serial     TEXT    NOT NULL PRIMARY KEY,
    device_id  TEXT    NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    revoked_at INTEGER,
    reason     TEXT
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS certificates_by_device ON certificates (device_id);

CREATE TABLE IF NOT EXISTS policies (
    name       TEXT    NOT NULL PRIMARY KEY,
    document   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    hash       BLOB    NOT NULL,
    grp        TEXT,
    uses_left  INTEGER NOT NULL,
    max_uses   INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS operators (
    name          TEXT    NOT NULL PRIMARY KEY,
    role          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS api_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    mac        BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER NOT NULL PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    outcome TEXT    NOT NULL,
    detail  TEXT    NOT NULL,
    prev    BLOB    NOT NULL,
    hash    BLOB    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS manufacturers (
    name             TEXT    NOT NULL PRIMARY KEY,
    ca_pem           TEXT    NOT NULL,
    subject_dn       TEXT    NOT NULL,
    grp              TEXT,
    require_approval INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT, WITHOUT ROWID;
";

const REGISTRY_VERSION: i64 = 1;

/// Every device's standing, from [`Registry::device_standings`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStandings {
    /// (device id, standing), in id order.
    pub standings: Vec<(String, DeviceStatus)>,
    /// The distinct policy names that devices attach, sorted.
    pub policies: Vec<String>,
}

/// A device's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// May connect.
    Active,
    /// Temporarily refused; `enable` restores it. Certificates stay valid.
    Disabled,
    /// Permanently refused; its certificates are revoked.
    Revoked,
    /// Enrolled just in time and waiting for an operator's approval.
    Pending,
}

impl DeviceStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
            Self::Pending => "pending",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            "revoked" => Some(Self::Revoked),
            "pending" => Some(Self::Pending),
            _ => None,
        }
    }
}

/// A device in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id (the certificate's identity).
    pub id: String,
    /// Group, whose policies it gets.
    pub group: Option<String>,
    /// Standing.
    pub status: DeviceStatus,
    /// Attributes, usable in policies as `${device.attr.NAME}`.
    pub attrs: BTreeMap<String, String>,
    /// Policies attached to the device itself (in addition to its group's).
    pub policies: Vec<String>,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_at_ms: u64,
}

/// A group of devices sharing policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Name.
    pub name: String,
    /// Attached policies, in order.
    pub policies: Vec<String>,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// The device it identifies.
    pub device_id: String,
    /// Milliseconds since the epoch.
    pub not_before_ms: u64,
    /// Milliseconds since the epoch.
    pub not_after_ms: u64,
    /// Milliseconds since the epoch.
    pub issued_at_ms: u64,
    /// How it was issued: `cli`, `est`, `reenroll`, `jit`.
    pub source: String,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
    /// Why (RFC 5280 reason name), if revoked.
    pub reason: Option<String>,
}

/// An enrollment token; only a hash of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenRecord {
    /// Public id (the first part of the token).
    pub id: String,
    /// SHA-256 of the secret part.
    #[serde(skip)]
    pub hash: Vec<u8>,
    /// Group enrolled devices join.
    pub group: Option<String>,
    /// Uses left.
    pub uses_left: u32,
    /// Uses it was created with.
    pub max_uses: u32,
    /// Milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// Revoked by an operator.
    pub revoked: bool,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Actor that created it.
    pub created_by: String,
}

/// An operator (a person) who logs in with a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRecord {
    /// Login name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
}

/// An API token (for scripts and the CLI); only an HMAC of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Public id.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Role name.
    pub role: String,
    /// HMAC-SHA256 of the secret under the hub's token key.
    #[serde(skip)]
    pub mac: Vec<u8>,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the epoch, if it expires.
    pub expires_at_ms: Option<u64>,
    /// Revoked.
    pub revoked: bool,
}

/// A manufacturer CA whose factory certificates may enroll just in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManufacturerRecord {
    /// Name.
    pub name: String,
    /// The CA certificate that issues factory certificates, PEM.
    pub ca_pem: String,
    /// That CA's subject (RFC 4514), which is the issuer of its factory certificates.
    pub subject_dn: String,
    /// Group devices enrolled this way join.
    pub group: Option<String>,
    /// Whether an operator must approve each device before it gets a certificate.
    pub require_approval: bool,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
}

/// The registry file.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    anchor_key: AnchorKey,
    /// A second copy of the anchor outside the database (in the hub's secrets directory):
    /// emptying the trail and its anchor in the database is then still detected.
    anchor_copy: Option<PathBuf>,
}

type Result<T> = std::result::Result<T, StoreError>;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Registry {
    /// Opens (creating, mode 0600) the registry at `path`. `anchor_key` authenticates the
    /// audit trail's head (see `moat_audit::Anchor`).
    pub fn open(path: &Path, anchor_key: AnchorKey) -> Result<Self> {
        crate::create_private_file(path)?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::from_sqlite(path, e))?;
        let e = |e| StoreError::from_sqlite(path, e);
        configure(&conn).map_err(e)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        tx.execute_batch(REGISTRY_SCHEMA).map_err(e)?;
        tx.execute_batch(bans::SCHEMA).map_err(e)?;
        tx.execute_batch(alerts::SCHEMA).map_err(e)?;
        tx.execute_batch(campaigns::SCHEMA).map_err(e)?;
        let version: Option<i64> = tx
            .query_row(
                "SELECT version FROM registry_version WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        match version {
            None => {
                tx.execute(
                    "INSERT INTO registry_version (id, version) VALUES (1, ?1)",
                    [REGISTRY_VERSION],
                )
                .map_err(e)?;
            }
            Some(v) if v > REGISTRY_VERSION => {
                return Err(StoreError::TooNew {
                    path: path.to_owned(),
                    found: v,
                    supported: REGISTRY_VERSION as u32,
                });
            }
            Some(_) => {}
        }
        tx.commit().map_err(e)?;
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                conn,
                anchor_key,
                anchor_copy: None,
            }),
        })
    }

    /// Opens an existing registry read-only (for `moat audit verify` beside a running hub).
    pub fn open_read_only(path: &Path, anchor_key: AnchorKey) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::from_sqlite(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| StoreError::from_sqlite(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                conn,
                anchor_key,
                anchor_copy: None,
            }),
        })
    }

    /// Keeps a copy of the audit anchor in `path` too (written after every append, checked
    /// by [`verify_audit`](Self::verify_audit)).
    pub fn with_anchor_copy(self, path: PathBuf) -> Self {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .anchor_copy = Some(path);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one statement; whether it changed a row.
    fn changes(&self, sql: &str, params: impl rusqlite::Params) -> Result<bool> {
        self.with(|i| Ok(i.conn.execute(sql, params)? > 0))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> rusqlite::Result<T>) -> Result<T> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner).map_err(|e| StoreError::from_sqlite(&self.path, e))
    }

    // ---- devices -------------------------------------------------------------------------

    /// Inserts or replaces a device.
    pub fn put_device(&self, d: &DeviceRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT INTO devices (id, grp, status, attrs, policies, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, status = excluded.status,
                   attrs = excluded.attrs, policies = excluded.policies,
                   updated_at = excluded.updated_at",
                params![
                    d.id,
                    d.group,
                    d.status.as_str(),
                    json(&d.attrs),
                    json(&d.policies),
                    to_i64(d.created_at_ms),
                    to_i64(d.updated_at_ms)
                ],
            )?;
            Ok(())
        })
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.with(|i| {
            i.conn
                .query_row(
                    "SELECT id, grp, status, attrs, policies, created_at, updated_at
                     FROM devices WHERE id = ?1",
                    [id],
                    device_row,
                )
                .optional()
        })
    }

    /// Devices with id greater than `after`, in id order, at most `limit` (≤ [`MAX_PAGE`]).
    pub fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>> {
        let limit = limit.min(MAX_PAGE);
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT id, grp, status, attrs, policies, created_at, updated_at
                 FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            st.query_map(params![after.unwrap_or(""), limit as i64], device_row)?
                .collect()
        })
    }

    /// Every device (for building the in-memory directory at start).
    pub fn all_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare(
                "SELECT id, grp, status, attrs, policies, created_at, updated_at
                 FROM devices ORDER BY id",
            )?;
            st.query_map([], device_row)?.collect()
        })
    }

    // ---- groups --------------------------------------------------------------------------

    /// Inserts or replaces a group.
    pub fn put_group(&self, g: &GroupRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT INTO groups (name, policies, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET policies = excluded.policies",
                params![g.name, json(&g.policies), to_i64(g.created_at_ms)],
            )?;
            Ok(())
        })
    }

    /// Every group.
    pub fn groups(&self) -> Result<Vec<GroupRecord>> {
        self.with(|i| {
            let mut st = i
                .conn
                .prepare("SELECT name, policies, created_at FROM groups ORDER BY name")?;
            st.query_map([], |r| {
                Ok(GroupRecord {
                    name: r.get(0)?,
                    policies: from_json(r, 1)?,
                    created_at_ms: to_u64(r.get(2)?),
                })
            })?
            .collect()
        })
    }

    /// Deletes a group; whether it existed.
    pub fn delete_group(&self, name: &str) -> Result<bool> {
        self.changes("DELETE FROM groups WHERE name = ?1", [name])
    }

    // ---- certificates --------------------------------------------------------------------

    /// Records an issued certificate.
    pub fn add_certificate(&self, c: &CertificateRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT OR REPLACE INTO certificates
                 (serial, device_id, not_before, not_after, issued_at, source, revoked_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.serial,
                    c.device_id,
                    to_i64(c.not_before_ms),
                    to_i64(c.not_after_ms),
                    to_i64(c.issued_at_ms),
                    c.source,
                    c.revoked_at_ms.map(to_i64),
                    c.reason
                ],
            )?;
            Ok(())
        })
    }

    /// A device's certificates, newest first.
    pub fn certificates_of(&self, device_id: &str) -> Result<Vec<CertificateRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT serial, device_id, not_before, not_after, issued_at, source, revoked_at, reason
                 FROM certificates WHERE device_id = ?1 ORDER BY issued_at DESC",
            )?;
            st.query_map([device_id], cert_row)?.collect()
        })
    }

    /// One certificate by serial (lowercase hex).
    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        self.with(|i| {
            i.conn
                .query_row(
                    "SELECT serial, device_id, not_before, not_after, issued_at, source, revoked_at, reason
                     FROM certificates WHERE serial = ?1",
                    [serial],
                    cert_row,
                )
                .optional()
        })
    }

    /// Revokes every unrevoked certificate of `device_id`; returns the serials revoked now.
    pub fn revoke_certificates_of(
        &self,
        device_id: &str,
        at_ms: u64,
        reason: &str,
    ) -> Result<Vec<String>> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            let serials: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT serial FROM certificates WHERE device_id = ?1 AND revoked_at IS NULL",
                )?;
                st.query_map([device_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            tx.execute(
                "UPDATE certificates SET revoked_at = ?2, reason = ?3
                 WHERE device_id = ?1 AND revoked_at IS NULL",
                params![device_id, to_i64(at_ms), reason],
            )?;
            tx.commit()?;
            Ok(serials)
        })
    }

    /// Revokes one certificate; whether it was unrevoked.
    pub fn revoke_certificate(&self, serial: &str, at_ms: u64, reason: &str) -> Result<bool> {
        self.changes(
            "UPDATE certificates SET revoked_at = ?2, reason = ?3
             WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, to_i64(at_ms), reason],
        )
    }

    /// Every revoked certificate that has not expired before `now_ms` (what a CRL lists).
    pub fn revoked_certificates(&self, now_ms: u64) -> Result<Vec<CertificateRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare(
                "SELECT serial, device_id, not_before, not_after, issued_at, source, revoked_at, reason
                 FROM certificates WHERE revoked_at IS NOT NULL AND not_after >= ?1
                 ORDER BY revoked_at",
            )?;
            st.query_map([to_i64(now_ms)], cert_row)?.collect()
        })
    }

    // ---- policies ------------------------------------------------------------------------

    /// Stores a policy document (canonical JSON).
    pub fn put_policy(&self, name: &str, document: &str, at_ms: u64) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT INTO policies (name, document, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET document = excluded.document,
                   updated_at = excluded.updated_at",
                params![name, document, to_i64(at_ms)],
            )?;
            Ok(())
        })
    }

    /// Every stored policy: (name, document).
    pub fn policies(&self) -> Result<Vec<(String, String)>> {
        self.with(|i| {
            let mut st = i
                .conn
                .prepare("SELECT name, document FROM policies ORDER BY name")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// Deletes a policy; whether it existed.
    pub fn delete_policy(&self, name: &str) -> Result<bool> {
        self.changes("DELETE FROM policies WHERE name = ?1", [name])
    }

    // ---- enrollment tokens ---------------------------------------------------------------

    /// Stores a new enrollment token.
    pub fn put_enrollment_token(&self, t: &EnrollmentTokenRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT INTO enrollment_tokens
                 (id, hash, grp, uses_left, max_uses, expires_at, revoked, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    t.id,
                    t.hash,
                    t.group,
                    t.uses_left,
                    t.max_uses,
                    to_i64(t.expires_at_ms),
                    t.revoked,
                    to_i64(t.created_at_ms),
                    t.created_by
                ],
            )?;
            Ok(())
        })
    }

    /// One enrollment token.
    pub fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentTokenRecord>> {
        self.with(|i| {
            i.conn
                .query_row(
                    "SELECT id, hash, grp, uses_left, max_uses, expires_at, revoked, created_at, created_by
                     FROM enrollment_tokens WHERE id = ?1",
                    [id],
                    token_row,
                )
                .optional()
        })
    }

    /// Every enrollment token, newest first.
    pub fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare(
                "SELECT id, hash, grp, uses_left, max_uses, expires_at, revoked, created_at, created_by
                 FROM enrollment_tokens ORDER BY created_at DESC",
            )?;
            st.query_map([], token_row)?.collect()
        })
    }

    /// Takes one use of a token that is unrevoked, unexpired at `now_ms` and has uses left;
    /// whether it could. Atomic: two enrollments racing for the last use get one each at most.
    pub fn take_enrollment_token_use(&self, id: &str, now_ms: u64) -> Result<bool> {
        self.changes(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1
             WHERE id = ?1 AND revoked = 0 AND uses_left > 0 AND expires_at > ?2",
            params![id, to_i64(now_ms)],
        )
    }

    /// Revokes an enrollment token; whether it existed.
    pub fn revoke_enrollment_token(&self, id: &str) -> Result<bool> {
        self.changes(
            "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1",
            [id],
        )
    }

    // ---- operators and API tokens --------------------------------------------------------

    /// Inserts or replaces an operator.
    pub fn put_operator(&self, o: &OperatorRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT OR REPLACE INTO operators (name, role, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![o.name, o.role, o.password_hash, to_i64(o.created_at_ms)],
            )?;
            Ok(())
        })
    }

    /// One operator.
    pub fn operator(&self, name: &str) -> Result<Option<OperatorRecord>> {
        self.with(|i| {
            i.conn
                .query_row(
                    "SELECT name, role, password_hash, created_at FROM operators WHERE name = ?1",
                    [name],
                    |r| {
                        Ok(OperatorRecord {
                            name: r.get(0)?,
                            role: r.get(1)?,
                            password_hash: r.get(2)?,
                            created_at_ms: to_u64(r.get(3)?),
                        })
                    },
                )
                .optional()
        })
    }

    /// Number of operators (zero before the first start's bootstrap).
    pub fn operator_count(&self) -> Result<u64> {
        self.with(|i| {
            i.conn
                .query_row("SELECT count(*) FROM operators", [], |r| r.get::<_, i64>(0))
                .map(to_u64)
        })
    }

    /// Stores an API token.
    pub fn put_api_token(&self, t: &ApiTokenRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT OR REPLACE INTO api_tokens
                 (id, name, role, mac, created_at, expires_at, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.id,
                    t.name,
                    t.role,
                    t.mac,
                    to_i64(t.created_at_ms),
                    t.expires_at_ms.map(to_i64),
                    t.revoked
                ],
            )?;
            Ok(())
        })
    }

    /// Every API token.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare(
                "SELECT id, name, role, mac, created_at, expires_at, revoked
                 FROM api_tokens ORDER BY created_at",
            )?;
            st.query_map([], api_token_row)?.collect()
        })
    }

    /// Revokes an API token; whether it existed.
    pub fn revoke_api_token(&self, id: &str) -> Result<bool> {
        self.changes("UPDATE api_tokens SET revoked = 1 WHERE id = ?1", [id])
    }

    // ---- manufacturers -------------------------------------------------------------------

    /// Inserts or replaces a manufacturer.
    pub fn put_manufacturer(&self, m: &ManufacturerRecord) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                "INSERT OR REPLACE INTO manufacturers
                 (name, ca_pem, subject_dn, grp, require_approval, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    m.name,
                    m.ca_pem,
                    m.subject_dn,
                    m.group,
                    m.require_approval,
                    to_i64(m.created_at_ms)
                ],
            )?;
            Ok(())
        })
    }

    /// Every manufacturer.
    pub fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>> {
        self.with(|i| {
            let mut st = i.conn.prepare(
                "SELECT name, ca_pem, subject_dn, grp, require_approval, created_at
                 FROM manufacturers ORDER BY name",
            )?;
            st.query_map([], |r| {
                Ok(ManufacturerRecord {
                    name: r.get(0)?,
                    ca_pem: r.get(1)?,
                    subject_dn: r.get(2)?,
                    group: r.get(3)?,
                    require_approval: r.get(4)?,
                    created_at_ms: to_u64(r.get(5)?),
                })
            })?
            .collect()
        })
    }

    /// Deletes a manufacturer; whether it existed.
    pub fn delete_manufacturer(&self, name: &str) -> Result<bool> {
        self.changes("DELETE FROM manufacturers WHERE name = ?1", [name])
    }

    // ---- meta ----------------------------------------------------------------------------

    /// Increments and returns a named counter (CRL numbers).
    pub fn next_counter(&self, name: &str) -> Result<u64> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            let current: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            let next = current
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes)
                .saturating_add(1);
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![name, next.to_be_bytes().to_vec()],
            )?;
            tx.commit()?;
            Ok(next)
        })
    }

    // ---- audit trail ---------------------------------------------------------------------

    /// Chains and appends `entries` in one transaction, with the new anchor.
    pub fn append_audit(&self, entries: Vec<Entry>) -> Result<Vec<Record>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|i| {
            // The head is read inside the write transaction: another process (the CLI
            // beside a running hub) may have appended since this one last did.
            let tx = i
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let last = last_audit_record(&tx)?;
            let stored_anchor: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM meta WHERE key = 'audit_anchor'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            // The anchor moves forward only from a head it vouches for: re-signing over a
            // trail someone cut or rewrote would launder the change. Appends go on (events
            // are not lost), and verification keeps reporting the break.
            let anchored = match (&last, stored_anchor.as_deref().map(decode_anchor)) {
                (None, None) => true,
                (Some(_), None) | (_, Some(None)) => false,
                (last, Some(Some(a))) => {
                    a.is_authentic(&i.anchor_key)
                        && a.count == last.as_ref().map_or(0, |r| r.seq)
                        && a.head == last.as_ref().map_or(moat_audit::GENESIS, |r| r.hash)
                }
            };
            if !anchored {
                tracing::error!(
                    path = %self.path.display(),
                    "the audit trail does not match its anchor (entries edited or removed); the anchor is not moved: run `moat audit verify`"
                );
            }
            let mut chain = Chain::resume(last.as_ref());
            let records: Vec<Record> = entries.into_iter().map(|e| chain.seal(e)).collect();
            let anchor = chain.anchor(&i.anchor_key);
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO audit (seq, at, actor, action, subject, outcome, detail, prev, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for r in &records {
                    st.execute(params![
                        to_i64(r.seq),
                        to_i64(r.entry.at_ms),
                        r.entry.actor,
                        r.entry.action,
                        r.entry.subject,
                        r.entry.outcome.as_str(),
                        json(&r.entry.detail),
                        r.prev.to_vec(),
                        r.hash.to_vec()
                    ])?;
                }
            }
            if anchored {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_anchor', ?1)",
                    [encode_anchor(&anchor)],
                )?;
            }
            tx.commit()?;
            if anchored && let Some(copy) = &i.anchor_copy {
                // After the commit: a crash in between leaves the copy one append behind,
                // which verification accepts (the database may be ahead of its copy).
                if let Err(e) = write_anchor_copy(copy, &encode_anchor(&anchor)) {
                    tracing::error!(path = %copy.display(), error = %e, "cannot write the audit anchor copy");
                }
            }
            Ok(records)
        })
    }

    /// Records with `seq > after` in order, at most `limit` (≤ [`MAX_PAGE`]).
    pub fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<Record>> {
        let limit = limit.min(MAX_PAGE);
        let path = self.path.clone();
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        read_audit(&inner.conn, after, limit).map_err(|e| row_error(&path, e))
    }

    /// Records with `seq < before` (every record if `None`) whose actor, action, subject or
    /// detail contains `needle` (ASCII case-insensitive; every record if empty), newest first,
    /// at most `limit` (≤ [`MAX_PAGE`]). A needle that matches nothing reads the whole trail.
    pub fn search_audit(
        &self,
        before: Option<u64>,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<Record>> {
        let limit = limit.min(MAX_PAGE);
        let path = self.path.clone();
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let needle = needle.to_ascii_lowercase();
        let read = || -> rusqlite::Result<Vec<Record>> {
            let mut st = inner.conn.prepare_cached(
                "SELECT seq, at, actor, action, subject, outcome, detail, prev, hash
                 FROM audit WHERE seq < ?1 AND (?2 = ''
                   OR instr(lower(actor), ?2) > 0 OR instr(lower(action), ?2) > 0
                   OR instr(lower(subject), ?2) > 0 OR instr(lower(detail), ?2) > 0)
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let before = before.map_or(i64::MAX, to_i64);
            st.query_map(params![before, needle, limit as i64], audit_row)?
                .collect()
        };
        read().map_err(|e| row_error(&path, e))
    }

    /// Every device's id and standing, and the policies devices attach: what a fleet
    /// summary needs, without decoding every device's attributes.
    pub fn device_standings(&self) -> Result<DeviceStandings> {
        self.with(|i| {
            let mut st = i
                .conn
                .prepare_cached("SELECT id, status FROM devices ORDER BY id")?;
            let standings = st
                .query_map([], |r| {
                    let status: String = r.get(1)?;
                    Ok((
                        r.get(0)?,
                        DeviceStatus::parse(&status)
                            .ok_or_else(|| bad_column(1, "unknown status"))?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = i
                .conn
                .prepare_cached("SELECT DISTINCT policies FROM devices WHERE policies != '[]'")?;
            let mut names = std::collections::BTreeSet::new();
            for row in st.query_map([], |r| from_json::<Vec<String>>(r, 0))? {
                names.extend(row?);
            }
            Ok(DeviceStandings {
                standings,
                policies: names.into_iter().collect(),
            })
        })
    }

    /// For each device with an unrevoked certificate, when the last of them expires
    /// (device id, not-after in ms), in device id order.
    pub fn certificate_expiry_by_device(&self) -> Result<Vec<(String, u64)>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT device_id, MAX(not_after) FROM certificates
                 WHERE revoked_at IS NULL GROUP BY device_id ORDER BY device_id",
            )?;
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?
            .collect()
        })
    }

    /// Inserts or replaces many devices and certificates in one transaction (bulk imports and
    /// fleet-sized tests; one commit instead of one per row).
    pub fn import(
        &self,
        devices: &[DeviceRecord],
        certificates: &[CertificateRecord],
    ) -> Result<()> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT OR REPLACE INTO devices
                     (id, grp, status, attrs, policies, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for d in devices {
                    put.execute(params![
                        d.id,
                        d.group,
                        d.status.as_str(),
                        json(&d.attrs),
                        json(&d.policies),
                        to_i64(d.created_at_ms),
                        to_i64(d.updated_at_ms)
                    ])?;
                }
                let mut add = tx.prepare_cached(
                    "INSERT OR REPLACE INTO certificates
                     (serial, device_id, not_before, not_after, issued_at, source, revoked_at, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for c in certificates {
                    add.execute(params![
                        c.serial,
                        c.device_id,
                        to_i64(c.not_before_ms),
                        to_i64(c.not_after_ms),
                        to_i64(c.issued_at_ms),
                        c.source,
                        c.revoked_at_ms.map(to_i64),
                        c.reason
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// Verifies the whole trail against its anchor, reading it in pages.
    pub fn verify_audit(
        &self,
    ) -> Result<std::result::Result<moat_audit::Verified, moat_audit::Tampered>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // One read transaction: the anchor and the records come from the same snapshot even
        // while the hub appends.
        let tx = inner
            .conn
            .unchecked_transaction()
            .map_err(|e| StoreError::from_sqlite(&self.path, e))?;
        let anchor: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'audit_anchor'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| StoreError::from_sqlite(&self.path, e))?;
        // The copy outside the database must not be ahead of it: a trail cut (or emptied,
        // anchor and all) in the database alone is found by it.
        let copy = inner
            .anchor_copy
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| decode_anchor(&b))
            .filter(|a| a.is_authentic(&inner.anchor_key));
        if let Some(copy) = &copy {
            let in_db = anchor.as_deref().and_then(decode_anchor);
            match in_db {
                None => return Ok(Err(moat_audit::Tampered::AnchorMissing)),
                Some(a) if a.count < copy.count => {
                    return Ok(Err(moat_audit::Tampered::Truncated {
                        found: a.count,
                        anchored: copy.count,
                    }));
                }
                Some(_) => {}
            }
        }
        let anchor = match anchor {
            None if !read_audit(&tx, 0, 1)
                .map_err(|e| row_error(&self.path, e))?
                .is_empty() =>
            {
                return Ok(Err(moat_audit::Tampered::AnchorMissing));
            }
            None => None,
            Some(bytes) => match decode_anchor(&bytes) {
                Some(a) => Some(a),
                None => return Ok(Err(moat_audit::Tampered::AnchorForged)),
            },
        };
        // Streamed in pages so that a long trail is not held in memory at once.
        let mut after = 0;
        let mut failure = None;
        let pages = std::iter::from_fn(|| {
            if failure.is_some() {
                return None;
            }
            match read_audit(&tx, after, MAX_PAGE) {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    after = page.last().map_or(after, |r| r.seq);
                    Some(page)
                }
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        });
        let result = moat_audit::verify(
            pages.flatten(),
            anchor.as_ref().map(|a| (a, &inner.anchor_key)),
        );
        if let Some(e) = failure {
            return Err(row_error(&self.path, e));
        }
        Ok(result)
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::config::DbConfig;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn row_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::from_sqlite(path, e)
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn bad_column(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        what.to_owned().into(),
    )
}

fn from_json<T: for<'de> Deserialize<'de>>(
    r: &rusqlite::Row<'_>,
    col: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(col)?;
    serde_json::from_str(&text).map_err(|e| bad_column(col, &format!("malformed JSON: {e}")))
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let status: String = r.get(2)?;
    Ok(DeviceRecord {
        id: r.get(0)?,
        group: r.get(1)?,
        status: DeviceStatus::parse(&status).ok_or_else(|| bad_column(2, "unknown status"))?,
        attrs: from_json(r, 3)?,
        policies: from_json(r, 4)?,
        created_at_ms: to_u64(r.get(5)?),
        updated_at_ms: to_u64(r.get(6)?),
    })
}

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        serial: r.get(0)?,
        device_id: r.get(1)?,
        not_before_ms: to_u64(r.get(2)?),
        not_after_ms: to_u64(r.get(3)?),
        issued_at_ms: to_u64(r.get(4)?),
        source: r.get(5)?,
        revoked_at_ms: r.get::<_, Option<i64>>(6)?.map(to_u64),
        reason: r.get(7)?,
    })
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        group: r.get(2)?,
        uses_left: r.get(3)?,
        max_uses: r.get(4)?,
        expires_at_ms: to_u64(r.get(5)?),
        revoked: r.get(6)?,
        created_at_ms: to_u64(r.get(7)?),
        created_by: r.get(8)?,
    })
}

fn api_token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        mac: r.get(3)?,
        created_at_ms: to_u64(r.get(4)?),
        expires_at_ms: r.get::<_, Option<i64>>(5)?.map(to_u64),
        revoked: r.get(6)?,
    })
}

fn hash_column(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<moat_audit::Hash> {
    let v: Vec<u8> = r.get(col)?;
    // A damaged hash column is a tampered record: it decodes to a hash that fails
    // verification rather than an error that hides where the trail broke.
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(&v);
    } else {
        out[0] = 0xff;
    }
    Ok(out)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let outcome: String = r.get(5)?;
    let detail: String = r.get(6)?;
    Ok(Record {
        seq: to_u64(r.get(0)?),
        entry: Entry {
            at_ms: to_u64(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            subject: r.get(4)?,
            // Unknown outcomes or detail JSON come from an edit: keep them distinguishable
            // (they fail verification) instead of refusing to read the trail.
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Error),
            detail: serde_json::from_str(&detail).unwrap_or_else(|_| {
                BTreeMap::from([("unreadable_detail".to_owned(), detail.clone())])
            }),
        },
        prev: hash_column(r, 7)?,
        hash: hash_column(r, 8)?,
    })
}

fn read_audit(conn: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<Record>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, at, actor, action, subject, outcome, detail, prev, hash
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![to_i64(after), limit as i64], audit_row)?;
    rows.collect()
}

fn last_audit_record(conn: &Connection) -> rusqlite::Result<Option<Record>> {
    let mut st = conn.prepare(
        "SELECT seq, at, actor, action, subject, outcome, detail, prev, hash
         FROM audit ORDER BY seq DESC LIMIT 1",
    )?;
    st.query_row([], audit_row).optional()
}

fn write_anchor_copy(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn encode_anchor(a: &Anchor) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&a.count.to_be_bytes());
    v.extend_from_slice(&a.head);
    v.extend_from_slice(&a.mac);
    v
}

fn decode_anchor(v: &[u8]) -> Option<Anchor> {
    if v.len() != 72 {
        return None;
    }
    let count = u64::from_be_bytes(v[..8].try_into().ok()?);
    let head = v[8..40].try_into().ok()?;
    let mac = v[40..72].try_into().ok()?;
    Some(Anchor { count, head, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AnchorKey {
        AnchorKey::new(&[9; 32]).expect("key")
    }

    fn open(dir: &Path) -> Registry {
        Registry::open(&dir.join("registry.db"), key()).expect("open")
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "moat-registry-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn devices_certificates_and_tokens_round_trip() {
        let dir = tempdir();
        let r = open(&dir);
        let d = DeviceRecord {
            id: "d1".into(),
            group: Some("sensors".into()),
            status: DeviceStatus::Active,
            attrs: BTreeMap::from([("site".into(), "plant-7".into())]),
            policies: vec!["extra".into()],
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        r.put_device(&d).expect("put");
        assert_eq!(r.device("d1").expect("get"), Some(d.clone()));
        assert_eq!(r.devices(None, 10).expect("list").len(), 1);
        assert!(r.devices(Some("d1"), 10).expect("list").is_empty());
        let c = CertificateRecord {
            serial: "0a0b".into(),
            device_id: "d1".into(),
            not_before_ms: 0,
            not_after_ms: 10_000,
            issued_at_ms: 5,
            source: "cli".into(),
            revoked_at_ms: None,
            reason: None,
        };
        r.add_certificate(&c).expect("cert");
        assert_eq!(
            r.revoke_certificates_of("d1", 7, "keyCompromise")
                .expect("revoke"),
            vec!["0a0b".to_owned()]
        );
        assert!(
            r.revoke_certificates_of("d1", 8, "x")
                .expect("again")
                .is_empty()
        );
        assert_eq!(r.revoked_certificates(9).expect("crl").len(), 1);
        assert!(r.revoked_certificates(10_001).expect("expired").is_empty());

        let t = EnrollmentTokenRecord {
            id: "t1".into(),
            hash: vec![1; 32],
            group: None,
            uses_left: 1,
            max_uses: 1,
            expires_at_ms: 100,
            revoked: false,
            created_at_ms: 0,
            created_by: "operator:admin".into(),
        };
        r.put_enrollment_token(&t).expect("token");
        assert!(!r.take_enrollment_token_use("t1", 100).expect("expired"));
        assert!(r.take_enrollment_token_use("t1", 50).expect("use"));
        assert!(!r.take_enrollment_token_use("t1", 50).expect("used up"));
        assert_eq!(r.next_counter("crl").expect("n"), 1);
        assert_eq!(r.next_counter("crl").expect("n"), 2);
        drop(r);
        // Survives reopening.
        let r = open(&dir);
        assert_eq!(r.device("d1").expect("get"), Some(d));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn audit_trail_survives_reopen_and_edits_are_found() {
        let dir = tempdir();
        let r = open(&dir);
        let e = |i: u64| {
            Entry::new(
                i,
                "operator:admin",
                "device.revoke",
                format!("device:d{i}"),
                Outcome::Success,
            )
        };
        r.append_audit(vec![e(1), e(2)]).expect("append");
        drop(r);
        let r = open(&dir);
        r.append_audit(vec![e(3)]).expect("append after reopen");
        let v = r.verify_audit().expect("read").expect("intact");
        assert_eq!(v.count, 3);
        assert_eq!(r.audit_records(1, 10).expect("page").len(), 2);
        // Edit a row behind the registry's back.
        let conn = Connection::open(dir.join("registry.db")).expect("raw");
        conn.execute(
            "UPDATE audit SET actor = 'operator:mallory' WHERE seq = 2",
            [],
        )
        .expect("edit");
        assert_eq!(
            r.verify_audit().expect("read"),
            Err(moat_audit::Tampered::Edited { seq: 2 })
        );
        conn.execute(
            "UPDATE audit SET actor = 'operator:admin' WHERE seq = 2",
            [],
        )
        .expect("undo");
        conn.execute("DELETE FROM audit WHERE seq = 3", [])
            .expect("truncate");
        assert!(matches!(
            r.verify_audit().expect("read"),
            Err(moat_audit::Tampered::Truncated { .. })
        ));
        // A later append does not launder the cut by re-signing the anchor.
        r.append_audit(vec![e(4)]).expect("append after the cut");
        assert!(
            r.verify_audit().expect("read").is_err(),
            "the cut was laundered"
        );
        // Nor does deleting the anchor.
        conn.execute("DELETE FROM meta WHERE key = 'audit_anchor'", [])
            .expect("drop anchor");
        assert_eq!(
            r.verify_audit().expect("read"),
            Err(moat_audit::Tampered::AnchorMissing)
        );
        r.append_audit(vec![e(5)]).expect("append without anchor");
        assert_eq!(
            r.verify_audit().expect("read"),
            Err(moat_audit::Tampered::AnchorMissing)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn emptying_the_trail_and_its_anchor_is_found_by_the_copy() {
        let dir = tempdir();
        let r = open(&dir).with_anchor_copy(dir.join("audit.anchor"));
        let e = |i: u64| Entry::new(i, "hub", "hub.start", "hub", Outcome::Success);
        r.append_audit(vec![e(1), e(2)]).expect("append");
        assert!(r.verify_audit().expect("read").is_ok());
        let conn = Connection::open(dir.join("registry.db")).expect("raw");
        conn.execute("DELETE FROM audit", []).expect("empty");
        conn.execute("DELETE FROM meta WHERE key = 'audit_anchor'", [])
            .expect("drop anchor");
        assert_eq!(
            r.verify_audit().expect("read"),
            Err(moat_audit::Tampered::AnchorMissing)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
