//! Reads the whole store back as a [`Snapshot`], skipping rows that do not verify.

use std::collections::BTreeMap;

use bytes::Bytes;
use moat_broker::persist::{
    LoadedSession, OutboundState, Snapshot, StoredMessage, StoredSubscription,
};
use moat_types::{ClientId, IdError, SubscriptionFilter, Timestamp, TopicError, TopicName};
use rusqlite::{Connection, Row};

/// Why a row was skipped. Never carries a payload.
#[derive(Debug, thiserror::Error)]
enum RowDefect {
    #[error("unreadable column: {0}")]
    Column(#[from] rusqlite::Error),
    #[error("bad client id: {0}")]
    ClientId(#[from] IdError),
    #[error("bad topic or filter: {0}")]
    Topic(#[from] TopicError),
    #[error("unknown outbound state (kind {kind}, packet id present: {has_packet_id})")]
    OutboundState { kind: i64, has_packet_id: bool },
    #[error("QoS {0} is not 0, 1 or 2")]
    Qos(u8),
}

/// Counts the rows skipped in one table and keeps the first reason, so that a badly damaged
/// file gives one warning per table rather than one per row.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Option<RowDefect>,
}

impl Skipped {
    fn note(&mut self, defect: RowDefect) {
        self.count += 1;
        self.first.get_or_insert(defect);
    }

    fn report(self, table: &str) {
        if let Some(first) = self.first {
            tracing::warn!(table, rows = self.count, first_reason = %first, "skipped malformed store rows");
        }
    }
}

/// Loads everything. Errors are SQLite failures (I/O, corruption); malformed rows are skipped.
pub(crate) fn snapshot(conn: &Connection) -> rusqlite::Result<Snapshot> {
    // Keyed by the stored text, so that child rows find their session without re-parsing.
    let mut sessions = BTreeMap::<String, LoadedSession>::new();

    let mut skipped = Skipped::default();
    let mut stmt = conn.prepare(
        "SELECT client_id, expiry_interval, protocol_level, disconnected_at FROM sessions",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        match session(row) {
            Ok(s) => {
                sessions.insert(s.client_id.as_str().to_owned(), s);
            }
            Err(defect) => skipped.note(defect),
        }
    }
    skipped.report("sessions");

    // Children of a skipped session are dropped with it; they are not counted again.
    let mut skipped = Skipped::default();
    let mut stmt = conn.prepare(
        "SELECT client_id, filter, options, identifier FROM subscriptions \
         ORDER BY client_id, filter",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let Some(session) = owner(row, &mut sessions) else {
            continue;
        };
        match subscription(row) {
            Ok(sub) => session.subscriptions.push(sub),
            Err(defect) => skipped.note(defect),
        }
    }
    skipped.report("subscriptions");

    let mut skipped = Skipped::default();
    let mut stmt = conn.prepare(
        "SELECT client_id, seq, state_kind, packet_id, encoded, qos, retain, expires_at \
         FROM outbound",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let Some(session) = owner(row, &mut sessions) else {
            continue;
        };
        match outbound(row) {
            Ok(entry) => session.outbound.push(entry),
            Err(defect) => skipped.note(defect),
        }
    }
    skipped.report("outbound");
    // Sorted here rather than in SQL: sequence numbers are stored as the bits of a u64, so
    // SQL order differs above i64::MAX.
    for session in sessions.values_mut() {
        session.outbound.sort_by_key(|(seq, _, _)| *seq);
    }

    let mut skipped = Skipped::default();
    let mut stmt = conn
        .prepare("SELECT client_id, packet_id FROM inbound_qos2 ORDER BY client_id, packet_id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let Some(session) = owner(row, &mut sessions) else {
            continue;
        };
        match row.get::<_, u16>(1) {
            Ok(packet_id) => session.inbound_qos2.push(packet_id),
            Err(e) => skipped.note(e.into()),
        }
    }
    skipped.report("inbound_qos2");

    let mut skipped = Skipped::default();
    let mut retained = Vec::new();
    let mut stmt = conn
        .prepare("SELECT topic, encoded, qos, retain, expires_at FROM retained ORDER BY topic")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        match retained_row(row) {
            Ok(entry) => retained.push(entry),
            Err(defect) => skipped.note(defect),
        }
    }
    skipped.report("retained");

    Ok(Snapshot {
        sessions: sessions.into_values().collect(),
        retained,
    })
}

/// The loaded session a child row (client id in column 0) belongs to, if it was loaded.
fn owner<'a>(
    row: &Row<'_>,
    sessions: &'a mut BTreeMap<String, LoadedSession>,
) -> Option<&'a mut LoadedSession> {
    let client_id = row.get_ref(0).ok()?.as_str().ok()?;
    sessions.get_mut(client_id)
}

fn session(row: &Row<'_>) -> Result<LoadedSession, RowDefect> {
    Ok(LoadedSession {
        client_id: ClientId::parse(&row.get::<_, String>(0)?)?,
        expiry_interval: row.get(1)?,
        protocol_level: row.get(2)?,
        disconnected_at: row.get::<_, Option<i64>>(3)?.map(timestamp),
        subscriptions: Vec::new(),
        outbound: Vec::new(),
        inbound_qos2: Vec::new(),
    })
}

fn subscription(row: &Row<'_>) -> Result<StoredSubscription, RowDefect> {
    let filter: String = row.get(1)?;
    SubscriptionFilter::parse(&filter)?;
    Ok(StoredSubscription {
        filter,
        options: row.get(2)?,
        identifier: row.get(3)?,
    })
}

fn outbound(row: &Row<'_>) -> Result<(u64, OutboundState, StoredMessage), RowDefect> {
    let seq = row.get::<_, i64>(1)?.cast_unsigned();
    let kind: i64 = row.get(2)?;
    let packet_id: Option<u16> = row.get(3)?;
    let state = match (kind, packet_id) {
        (0, None) => OutboundState::Queued,
        (1, Some(id)) => OutboundState::Sent(id),
        (2, Some(id)) => OutboundState::Released(id),
        (kind, packet_id) => {
            return Err(RowDefect::OutboundState {
                kind,
                has_packet_id: packet_id.is_some(),
            });
        }
    };
    Ok((seq, state, message(row, 4)?))
}

fn retained_row(row: &Row<'_>) -> Result<(String, StoredMessage), RowDefect> {
    let topic: String = row.get(0)?;
    TopicName::parse(&topic)?;
    Ok((topic, message(row, 1)?))
}

/// A message stored in columns `first..first + 4`: encoded, qos, retain, expires_at.
fn message(row: &Row<'_>, first: usize) -> Result<StoredMessage, RowDefect> {
    let qos: u8 = row.get(first + 1)?;
    if qos > 2 {
        return Err(RowDefect::Qos(qos));
    }
    Ok(StoredMessage {
        encoded: Bytes::from(row.get::<_, Vec<u8>>(first)?),
        qos,
        retain: row.get(first + 2)?,
        expires_at: row.get::<_, Option<i64>>(first + 3)?.map(timestamp),
    })
}

/// Timestamps are stored as the bits of their u64 milliseconds (see `writer::millis`).
fn timestamp(stored: i64) -> Timestamp {
    Timestamp::from_millis(stored.cast_unsigned())
}
