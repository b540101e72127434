//! Connection settings, the schema, and the migration steps between its versions.
//!
//! The file records its version in `schema_version` (one row). Opening applies every step from
//! that version to [`SCHEMA_VERSION`] in one transaction, so a crash mid-migration leaves the
//! old version intact. To change the schema, append a step to `MIGRATIONS`; never edit a
//! released step, since files in the field have already run it.
//!
//! No foreign keys: every operation must be idempotent and must not fail because of another
//! row (a failed statement fails the whole group commit). `DeleteSession` deletes a session's
//! rows from every table itself, and rows whose session does not exist are purged at open.

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::StoreError;

/// Step `i` takes the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 1. `STRICT` makes SQLite enforce column types, which keeps what the loader has to
/// verify small. Tables whose rows carry message bodies keep their rowid (`WITHOUT ROWID`
/// suits small rows only).
const V1: &str = "
CREATE TABLE sessions (
    client_id       TEXT    NOT NULL PRIMARY KEY,
    expiry_interval INTEGER NOT NULL,
    protocol_level  INTEGER NOT NULL,
    disconnected_at INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE subscriptions (
    client_id  TEXT    NOT NULL,
    filter     TEXT    NOT NULL,
    options    INTEGER NOT NULL,
    identifier INTEGER,
    PRIMARY KEY (client_id, filter)
) STRICT, WITHOUT ROWID;

-- state_kind: 0 queued (packet_id NULL), 1 sent, 2 released (PUBREL sent).
CREATE TABLE outbound (
    client_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    state_kind INTEGER NOT NULL,
    packet_id  INTEGER,
    encoded    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (client_id, seq)
) STRICT;

CREATE TABLE inbound_qos2 (
    client_id TEXT    NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE retained (
    topic      TEXT    NOT NULL PRIMARY KEY,
    encoded    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    expires_at INTEGER
) STRICT;
";

/// Applies the connection settings the durability contract rests on. This is the first
/// statement to read the file, so a non-SQLite file fails here.
pub(crate) fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    apply_settings(conn)
        .map_err(|e| StoreError::from_sqlite(path, e))?
        .map_err(|detail| StoreError::Settings {
            path: path.to_owned(),
            detail,
        })
}

/// The outer error is SQLite's; the inner one says which setting SQLite did not take.
fn apply_settings(conn: &Connection) -> rusqlite::Result<Result<(), String>> {
    // The file is verified, not trusted: no schema-embedded functions with side effects,
    // no writes that could corrupt it on purpose.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    // A second hub on the same file must fail at once rather than wait.
    conn.busy_timeout(std::time::Duration::ZERO)?;
    // Exclusive before WAL: the lock is held for the connection's life (one hub per file)
    // and the WAL index lives in memory, so no `-shm` file is created.
    let locking: String =
        conn.pragma_update_and_check(None, "locking_mode", "EXCLUSIVE", |row| row.get(0))?;
    let journal: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !locking.eq_ignore_ascii_case("exclusive") || !journal.eq_ignore_ascii_case("wal") {
        return Ok(Err(format!(
            "asked for locking_mode=EXCLUSIVE and journal_mode=WAL, got {locking} and {journal}"
        )));
    }
    // FULL: the WAL is fsynced at every commit, so a commit is durable when it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // No foreign keys in the schema today; on so that a later step adding one is enforced.
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Cheap extra checks that turn some corruption into errors instead of wrong reads.
    conn.pragma_update(None, "cell_size_check", "ON")?;
    Ok(Ok(()))
}

/// Brings the schema to [`SCHEMA_VERSION`] and purges rows whose session does not exist.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql_error = |e| StoreError::from_sqlite(path, e);
    // IMMEDIATE takes the write lock now: a second hub fails here with `Locked`.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error)?;
    let has_version_table = tx
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(sql_error)?
        > 0;
    let found = if has_version_table {
        tx.query_row(
            "SELECT version FROM schema_version WHERE id = 1",
            [],
            |row| row.get::<_, i64>(0),
        )
        .optional()
        .map_err(sql_error)?
        .ok_or_else(|| StoreError::ForeignDatabase {
            path: path.to_owned(),
            reason: "its schema_version table is empty",
        })?
    } else {
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                [],
                |row| row.get(0),
            )
            .map_err(sql_error)?;
        if tables > 0 {
            return Err(StoreError::ForeignDatabase {
                path: path.to_owned(),
                reason: "it holds tables but no schema_version",
            });
        }
        tx.execute_batch(
            "CREATE TABLE schema_version (
                 id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             ) STRICT;
             INSERT INTO schema_version (id, version) VALUES (1, 0);",
        )
        .map_err(sql_error)?;
        0
    };
    let from = usize::try_from(found).map_err(|_| StoreError::ForeignDatabase {
        path: path.to_owned(),
        reason: "its schema version is negative",
    })?;
    if from > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(sql).map_err(sql_error)?;
        tracing::info!(path = %path.display(), version = step + 1, "store schema migrated");
    }
    tx.execute(
        "UPDATE schema_version SET version = ?1 WHERE id = 1",
        [SCHEMA_VERSION],
    )
    .map_err(sql_error)?;
    let orphans = purge_orphans(&tx).map_err(sql_error)?;
    if orphans > 0 {
        tracing::warn!(path = %path.display(), rows = orphans, "purged store rows of sessions that do not exist");
    }
    tx.commit().map_err(sql_error)
}

/// Rows of a session that is not stored can only come from operations submitted outside a
/// session's lifetime; left in place they would reappear in a later session with that id.
fn purge_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    let mut purged = 0;
    for table in ["subscriptions", "outbound", "inbound_qos2"] {
        purged += conn.execute(
            &format!("DELETE FROM {table} WHERE client_id NOT IN (SELECT client_id FROM sessions)"),
            [],
        )?;
    }
    Ok(purged)
}
