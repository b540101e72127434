//! Alerts of the detection engine (`alerts` table): what was raised, about whom, why (the
//! engine's JSON, kept whole), what response was executed, and its standing (open,
//! released, confirmed, false positive). What an alert means is moat-detect's business and
//! executing responses is moat-hub's; this module keeps the rows.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{MAX_PAGE, Registry, Result, to_i64, to_u64};

/// The `alerts` table, created with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    time        INTEGER NOT NULL,
    detector    TEXT    NOT NULL,
    severity    TEXT    NOT NULL,
    device      TEXT,
    address     TEXT,
    response    TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    state_at    INTEGER NOT NULL,
    state_by    TEXT    NOT NULL,
    body        TEXT    NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time);
";

/// Where an alert stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised; its response (if any) is in force.
    Open,
    /// An operator confirmed it; its response stays until released.
    Confirmed,
    /// Its response ended (by the engine when behaviour returned to baseline and the time
    /// box expired, or by an operator).
    Released,
    /// An operator marked it a false positive; its response ended.
    FalsePositive,
}

impl AlertState {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::FalsePositive => "false_positive",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "confirmed" => Some(Self::Confirmed),
            "released" => Some(Self::Released),
            "false_positive" => Some(Self::FalsePositive),
            _ => None,
        }
    }

    /// Whether the alert's response is (still) in force.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Open | Self::Confirmed)
    }
}

/// One stored alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The registry's id (stable across restarts; the engine's own ids are not).
    pub id: u64,
    /// When it was raised, ms since the epoch.
    pub time_ms: u64,
    /// The detector's stable name.
    pub detector: String,
    /// low, medium, high or critical.
    pub severity: String,
    /// The device, if any.
    pub device: Option<String>,
    /// The address, if any.
    pub address: Option<String>,
    /// The rung executed (`alert` when nothing was).
    pub response: String,
    /// Where it stands.
    pub state: AlertState,
    /// When it got there, ms since the epoch.
    pub state_at_ms: u64,
    /// Who put it there (`detect` for the engine).
    pub state_by: String,
    /// The engine's alert as JSON (explanation, intended response, time box).
    pub body: String,
}

/// A new alert, before it has an id.
#[derive(Clone, Debug)]
pub struct NewAlert<'a> {
    /// When, ms since the epoch.
    pub time_ms: u64,
    /// The detector's stable name.
    pub detector: &'a str,
    /// The severity's name.
    pub severity: &'a str,
    /// The device, if any.
    pub device: Option<&'a str>,
    /// The address, if any.
    pub address: Option<&'a str>,
    /// The rung executed.
    pub response: &'a str,
    /// The engine's JSON.
    pub body: &'a str,
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    let state: String = r.get(7)?;
    Ok(AlertRecord {
        id: to_u64(r.get(0)?),
        time_ms: to_u64(r.get(1)?),
        detector: r.get(2)?,
        severity: r.get(3)?,
        device: r.get(4)?,
        address: r.get(5)?,
        response: r.get(6)?,
        // A state this version does not know reads as open: the safe reading (its
        // response is shown as in force).
        state: AlertState::parse(&state).unwrap_or(AlertState::Open),
        state_at_ms: to_u64(r.get(8)?),
        state_by: r.get(9)?,
        body: r.get(10)?,
    })
}

const COLUMNS: &str =
    "id, time, detector, severity, device, address, response, state, state_at, state_by, body";

impl Registry {
    /// Stores a new open alert; returns its id.
    pub fn add_alert(&self, a: &NewAlert<'_>) -> Result<u64> {
        self.with(|i| {
            i.conn.execute(
                "INSERT INTO alerts (time, detector, severity, device, address, response, state,
                                     state_at, state_by, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?1, 'detect', ?7)",
                params![
                    to_i64(a.time_ms),
                    a.detector,
                    a.severity,
                    a.device,
                    a.address,
                    a.response,
                    a.body
                ],
            )?;
            Ok(to_u64(i.conn.last_insert_rowid()))
        })
    }

    /// One alert.
    pub fn alert(&self, id: u64) -> Result<Option<AlertRecord>> {
        self.with(|i| {
            i.conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"),
                    params![to_i64(id)],
                    alert_row,
                )
                .optional()
        })
    }

    /// Alerts raised at or after `since_ms`, newest first, at most `limit` (≤ [`MAX_PAGE`]),
    /// only those whose state is in `states` (every state if empty).
    pub fn alerts(
        &self,
        since_ms: u64,
        states: &[AlertState],
        limit: usize,
    ) -> Result<Vec<AlertRecord>> {
        let limit = limit.min(MAX_PAGE);
        self.with(|i| {
            let mut st = i.conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM alerts WHERE time >= ?1 ORDER BY id DESC"
            ))?;
            let mut out = Vec::new();
            for row in st.query_map(params![to_i64(since_ms)], alert_row)? {
                let row = row?;
                if states.is_empty() || states.contains(&row.state) {
                    out.push(row);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Moves an alert to `state` (by `actor`, at `at_ms`); returns the record as it was
    /// before, or `None` if there is no such alert.
    pub fn set_alert_state(
        &self,
        id: u64,
        state: AlertState,
        actor: &str,
        at_ms: u64,
    ) -> Result<Option<AlertRecord>> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            let before = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"),
                    params![to_i64(id)],
                    alert_row,
                )
                .optional()?;
            if before.is_some() {
                tx.execute(
                    "UPDATE alerts SET state = ?2, state_at = ?3, state_by = ?4 WHERE id = ?1",
                    params![to_i64(id), state.as_str(), to_i64(at_ms), actor],
                )?;
            }
            tx.commit()?;
            Ok(before)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_stored_listed_and_change_state() {
        let dir = std::env::temp_dir().join(format!("moat-alerts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let key = moat_audit::AnchorKey::new(&[7u8; 32]).expect("key");
        let registry = Registry::open(&dir.join("registry.db"), key).expect("open");
        let new = |t, d| NewAlert {
            time_ms: t,
            detector: d,
            severity: "high",
            device: Some("d1"),
            address: Some("127.0.0.2"),
            response: "quarantine",
            body: "{}",
        };
        let a = registry
            .add_alert(&new(1_000, "publish_flood"))
            .expect("add");
        let b = registry.add_alert(&new(2_000, "honey_topic")).expect("add");
        assert!(b > a);
        let all = registry.alerts(0, &[], 10).expect("list");
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(all[0].state, AlertState::Open);
        assert_eq!(registry.alerts(1_500, &[], 10).expect("since").len(), 1);
        let before = registry
            .set_alert_state(a, AlertState::FalsePositive, "operator:admin", 3_000)
            .expect("set")
            .expect("exists");
        assert_eq!(before.state, AlertState::Open);
        let now = registry.alert(a).expect("get").expect("exists");
        assert_eq!(now.state, AlertState::FalsePositive);
        assert_eq!(now.state_by, "operator:admin");
        assert_eq!(
            registry
                .alerts(0, &[AlertState::Open], 10)
                .expect("open")
                .len(),
            1
        );
        assert!(
            registry
                .set_alert_state(999, AlertState::Released, "x", 1)
                .expect("set")
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
