//! The writer thread: drains submitted batches, applies them in order in one transaction per
//! group, and publishes the commit progress.

use std::path::Path;
use std::sync::mpsc;

use moat_broker::persist::{OutboundState, StoreOp, StoredMessage};
use moat_types::Timestamp;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::watch;

use crate::CommitProgress;

/// Most operations gathered into one transaction. Bounds the latency of the first batch in a
/// group and the size of the WAL a single commit writes. A single batch larger than this is
/// still committed whole: a batch is atomic.
pub const MAX_OPS_PER_TRANSACTION: usize = 10_000;

/// One submission.
pub(crate) struct Batch {
    pub(crate) seq: u64,
    pub(crate) ops: Vec<StoreOp>,
}

// By hand: the operations hold message payloads, which are never logged.
impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("seq", &self.seq)
            .field("ops", &self.ops.len())
            .finish()
    }
}

/// Runs until every sender is gone and the channel is drained; returns the final progress.
pub(crate) fn run(
    mut conn: Connection,
    batches: mpsc::Receiver<Batch>,
    progress: watch::Sender<CommitProgress>,
    path: &Path,
) -> CommitProgress {
    let mut state = CommitProgress::default();
    let mut group = Vec::new();
    while let Ok(first) = batches.recv() {
        let mut op_count = first.ops.len();
        group.push(first);
        while op_count < MAX_OPS_PER_TRANSACTION {
            match batches.try_recv() {
                Ok(batch) => {
                    op_count += batch.ops.len();
                    group.push(batch);
                }
                Err(_) => break,
            }
        }
        // Fail-stop: after a failure nothing is written, and these batches already read as
        // failed (their seq is above the first failed one).
        if state.failed.is_none() {
            commit_group(&mut conn, &group, op_count, &mut state, path);
            progress.send_replace(state);
        }
        group.clear();
    }
    state
}

/// Commits `group` in one transaction. If that fails and the group has several batches,
/// retries them one by one, so that the batches before a failing one are still committed
/// and the failure is pinned to the first batch that cannot be.
fn commit_group(
    conn: &mut Connection,
    group: &[Batch],
    op_count: usize,
    state: &mut CommitProgress,
    path: &Path,
) {
    let (Some(first), Some(last)) = (group.first(), group.last()) else {
        return;
    };
    if op_count == 0 {
        // Barriers only: everything before them is already committed.
        state.committed = last.seq;
        return;
    }
    let error = match apply(conn, group) {
        Ok(()) => {
            state.committed = last.seq;
            state.transactions += 1;
            return;
        }
        Err(e) => e,
    };
    if group.len() == 1 {
        fail(state, first.seq, &error, path);
        return;
    }
    tracing::warn!(
        path = %path.display(), first_seq = first.seq, last_seq = last.seq, error = %error,
        "store group commit failed; retrying its batches one by one"
    );
    for batch in group {
        match apply(conn, std::slice::from_ref(batch)) {
            Ok(()) => {
                state.committed = batch.seq;
                state.transactions += 1;
            }
            Err(e) => {
                fail(state, batch.seq, &e, path);
                return;
            }
        }
    }
}

fn fail(state: &mut CommitProgress, seq: u64, error: &rusqlite::Error, path: &Path) {
    tracing::error!(
        path = %path.display(), first_failed_seq = seq, error = %error,
        "store transaction failed; the store stops writing and later commits fail"
    );
    state.failed = Some(seq);
}

fn apply(conn: &mut Connection, group: &[Batch]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for batch in group {
        for op in &batch.ops {
            apply_op(&tx, op)?;
        }
    }
    // With synchronous=FULL the WAL is fsynced before this returns.
    tx.commit()
}

/// Every operation is idempotent and touches only its own rows: replaying it, or running it
/// for a session that is not stored, never fails.
fn apply_op(tx: &Transaction<'_>, op: &StoreOp) -> rusqlite::Result<()> {
    match op {
        StoreOp::PutSession {
            client_id,
            expiry_interval,
            protocol_level,
            disconnected_at,
        } => {
            // An upsert rather than INSERT OR REPLACE: the row is updated in place.
            tx.prepare_cached(
                "INSERT INTO sessions (client_id, expiry_interval, protocol_level, disconnected_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (client_id) DO UPDATE SET expiry_interval = excluded.expiry_interval, \
                 protocol_level = excluded.protocol_level, disconnected_at = excluded.disconnected_at",
            )?
            .execute(params![
                client_id.as_str(),
                expiry_interval,
                protocol_level,
                disconnected_at.map(millis)
            ])?;
        }
        StoreOp::DeleteSession { client_id } => {
            for sql in [
                "DELETE FROM subscriptions WHERE client_id = ?1",
                "DELETE FROM outbound WHERE client_id = ?1",
                "DELETE FROM inbound_qos2 WHERE client_id = ?1",
                "DELETE FROM sessions WHERE client_id = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([client_id.as_str()])?;
            }
        }
        StoreOp::PutSubscription {
            client_id,
            subscription,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO subscriptions (client_id, filter, options, identifier) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                client_id.as_str(),
                subscription.filter,
                subscription.options,
                subscription.identifier
            ])?;
        }
        StoreOp::DeleteSubscription { client_id, filter } => {
            tx.prepare_cached("DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2")?
                .execute(params![client_id.as_str(), filter])?;
        }
        StoreOp::PutOutbound {
            client_id,
            seq,
            state,
            message,
        } => {
            let (kind, packet_id) = outbound_state(*state);
            let StoredMessage {
                encoded,
                qos,
                retain,
                expires_at,
            } = message;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO outbound \
                 (client_id, seq, state_kind, packet_id, encoded, qos, retain, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                client_id.as_str(),
                seq.cast_signed(),
                kind,
                packet_id,
                &encoded[..],
                qos,
                retain,
                expires_at.map(millis)
            ])?;
        }
        StoreOp::SetOutboundState {
            client_id,
            seq,
            state,
        } => {
            let (kind, packet_id) = outbound_state(*state);
            tx.prepare_cached(
                "UPDATE outbound SET state_kind = ?3, packet_id = ?4 \
                 WHERE client_id = ?1 AND seq = ?2",
            )?
            .execute(params![
                client_id.as_str(),
                seq.cast_signed(),
                kind,
                packet_id
            ])?;
        }
        StoreOp::DeleteOutbound { client_id, seq } => {
            tx.prepare_cached("DELETE FROM outbound WHERE client_id = ?1 AND seq = ?2")?
                .execute(params![client_id.as_str(), seq.cast_signed()])?;
        }
        StoreOp::PutInboundQos2 {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO inbound_qos2 (client_id, packet_id) VALUES (?1, ?2)",
            )?
            .execute(params![client_id.as_str(), packet_id])?;
        }
        StoreOp::DeleteInboundQos2 {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached("DELETE FROM inbound_qos2 WHERE client_id = ?1 AND packet_id = ?2")?
                .execute(params![client_id.as_str(), packet_id])?;
        }
        StoreOp::PutRetained { topic, message } => {
            let StoredMessage {
                encoded,
                qos,
                retain,
                expires_at,
            } = message;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO retained (topic, encoded, qos, retain, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                topic,
                &encoded[..],
                qos,
                retain,
                expires_at.map(millis)
            ])?;
        }
        StoreOp::DeleteRetained { topic } => {
            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute([topic])?;
        }
    }
    Ok(())
}

/// `(state_kind, packet_id)` as in the `outbound` table.
fn outbound_state(state: OutboundState) -> (i64, Option<u16>) {
    match state {
        OutboundState::Queued => (0, None),
        OutboundState::Sent(id) => (1, Some(id)),
        OutboundState::Released(id) => (2, Some(id)),
    }
}

/// Stored as the bits of the u64: exact for every value, including the `u64::MAX` a
/// saturating expiry computation produces; readable as-is below `i64::MAX`.
fn millis(t: Timestamp) -> i64 {
    t.as_millis().cast_signed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn retained(topic: &str) -> Batch {
        Batch {
            seq: 0,
            ops: vec![StoreOp::PutRetained {
                topic: topic.to_owned(),
                message: StoredMessage {
                    encoded: Bytes::from_static(b"m"),
                    qos: 0,
                    retain: true,
                    expires_at: None,
                },
            }],
        }
    }

    fn topics(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT topic FROM retained ORDER BY topic")
            .expect("prepare");
        stmt.query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// A failing batch inside a group: the batches before it commit, it and everything after
    /// it fail, and nothing after it is written.
    #[test]
    fn a_failed_group_is_retried_batch_by_batch_and_stops_at_the_failure() {
        let path = Path::new(":memory:");
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        crate::schema::migrate(&mut conn, path).expect("schema");
        conn.execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON retained WHEN NEW.topic = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .expect("trigger");
        let group: Vec<Batch> = ["a", "poison", "c"]
            .into_iter()
            .zip(1..)
            .map(|(topic, seq)| Batch {
                seq,
                ..retained(topic)
            })
            .collect();

        let mut state = CommitProgress::default();
        commit_group(&mut conn, &group, 3, &mut state, path);

        assert_eq!(
            state,
            CommitProgress {
                committed: 1,
                failed: Some(2),
                transactions: 1
            }
        );
        assert_eq!(topics(&conn), ["a"]);
    }

    #[test]
    fn barriers_commit_without_a_transaction() {
        let path = Path::new(":memory:");
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        crate::schema::migrate(&mut conn, path).expect("schema");
        let group = vec![
            Batch {
                seq: 1,
                ops: Vec::new(),
            },
            Batch {
                seq: 2,
                ops: Vec::new(),
            },
        ];
        let mut state = CommitProgress::default();
        commit_group(&mut conn, &group, 0, &mut state, path);
        assert_eq!(state.committed, 2);
        assert_eq!(state.transactions, 0);
    }
}
