//! Update campaigns and what devices report about updates (`ota_campaigns`,
//! `ota_campaign_devices`, `ota_reports`, `ota_inventory`).
//!
//! What a campaign means is `moat_ota::campaign`'s business and running it is moat-hub's;
//! this module keeps the rows: a campaign's meta row and one row per device (both as the
//! engine's JSON, with the few columns the hub filters on beside them), the latest update
//! report of each device and its latest software inventory.

use rusqlite::{OptionalExtension, params};

use super::{MAX_PAGE, Registry, Result, to_i64, to_u64};

/// The tables, created with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ota_campaigns (
    id         INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    meta       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS ota_campaign_devices (
    campaign INTEGER NOT NULL,
    device   TEXT    NOT NULL,
    stage    TEXT    NOT NULL,
    entry    TEXT    NOT NULL,
    PRIMARY KEY (campaign, device)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ota_campaign_devices_by_device ON ota_campaign_devices (device);

CREATE TABLE IF NOT EXISTS ota_reports (
    device TEXT    NOT NULL PRIMARY KEY,
    body   TEXT    NOT NULL,
    at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ota_inventory (
    device TEXT    NOT NULL PRIMARY KEY,
    body   TEXT    NOT NULL,
    at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// A campaign's meta row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignRow {
    /// Id.
    pub id: u64,
    /// Name (for lists).
    pub name: String,
    /// Status name (for lists).
    pub status: String,
    /// The engine's meta JSON.
    pub meta: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_at_ms: u64,
}

/// One device of a campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignDeviceRow {
    /// The device.
    pub device: String,
    /// Its stage name.
    pub stage: String,
    /// The engine's entry JSON.
    pub entry: String,
}

/// A JSON document a device reported (update status or inventory), as the hub parsed and
/// re-serialised it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDocument {
    /// The device.
    pub device: String,
    /// The document.
    pub body: String,
    /// When it was received, ms since the epoch.
    pub at_ms: u64,
}

fn campaign_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignRow> {
    Ok(CampaignRow {
        id: to_u64(r.get(0)?),
        name: r.get(1)?,
        status: r.get(2)?,
        meta: r.get(3)?,
        created_at_ms: to_u64(r.get(4)?),
        updated_at_ms: to_u64(r.get(5)?),
    })
}

fn document_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceDocument> {
    Ok(DeviceDocument {
        device: r.get(0)?,
        body: r.get(1)?,
        at_ms: to_u64(r.get(2)?),
    })
}

impl Registry {
    /// A new campaign id (ids are never reused).
    pub fn next_campaign_id(&self) -> Result<u64> {
        self.next_counter("ota_campaign")
    }

    /// Stores a campaign's meta row and the given device rows, in one transaction.
    pub fn save_campaign(&self, c: &CampaignRow, devices: &[CampaignDeviceRow]) -> Result<()> {
        self.with(|i| {
            let tx = i.conn.transaction()?;
            tx.execute(
                "INSERT INTO ota_campaigns (id, name, status, meta, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, meta = excluded.meta,
                   updated_at = excluded.updated_at",
                params![
                    to_i64(c.id),
                    c.name,
                    c.status,
                    c.meta,
                    to_i64(c.created_at_ms),
                    to_i64(c.updated_at_ms)
                ],
            )?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR REPLACE INTO ota_campaign_devices (campaign, device, stage, entry)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for d in devices {
                    st.execute(params![to_i64(c.id), d.device, d.stage, d.entry])?;
                }
            }
            tx.commit()
        })
    }

    /// One campaign's meta row.
    pub fn campaign(&self, id: u64) -> Result<Option<CampaignRow>> {
        self.with(|i| {
            i.conn
                .query_row(
                    "SELECT id, name, status, meta, created_at, updated_at
                     FROM ota_campaigns WHERE id = ?1",
                    params![to_i64(id)],
                    campaign_row,
                )
                .optional()
        })
    }

    /// Campaigns, newest first, at most `limit` (≤ [`MAX_PAGE`]).
    pub fn campaigns(&self, limit: usize) -> Result<Vec<CampaignRow>> {
        let limit = limit.min(MAX_PAGE);
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT id, name, status, meta, created_at, updated_at
                 FROM ota_campaigns ORDER BY id DESC LIMIT ?1",
            )?;
            st.query_map(params![limit as i64], campaign_row)?.collect()
        })
    }

    /// Campaigns whose status is one of `statuses` (for the hub's task at start).
    pub fn campaigns_with_status(&self, statuses: &[&str]) -> Result<Vec<CampaignRow>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT id, name, status, meta, created_at, updated_at
                 FROM ota_campaigns ORDER BY id",
            )?;
            st.query_map([], campaign_row)?
                .filter(|r| {
                    r.as_ref()
                        .map_or(true, |r| statuses.contains(&r.status.as_str()))
                })
                .collect()
        })
    }

    /// Every device row of a campaign.
    pub fn campaign_devices(&self, id: u64) -> Result<Vec<CampaignDeviceRow>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT device, stage, entry FROM ota_campaign_devices
                 WHERE campaign = ?1 ORDER BY device",
            )?;
            st.query_map(params![to_i64(id)], |r| {
                Ok(CampaignDeviceRow {
                    device: r.get(0)?,
                    stage: r.get(1)?,
                    entry: r.get(2)?,
                })
            })?
            .collect()
        })
    }

    /// The campaigns a device is part of, newest first, with its row in each.
    pub fn campaigns_of_device(&self, device: &str) -> Result<Vec<(u64, CampaignDeviceRow)>> {
        self.with(|i| {
            let mut st = i.conn.prepare_cached(
                "SELECT campaign, device, stage, entry FROM ota_campaign_devices
                 WHERE device = ?1 ORDER BY campaign DESC LIMIT ?2",
            )?;
            st.query_map(params![device, MAX_PAGE as i64], |r| {
                Ok((
                    to_u64(r.get(0)?),
                    CampaignDeviceRow {
                        device: r.get(1)?,
                        stage: r.get(2)?,
                        entry: r.get(3)?,
                    },
                ))
            })?
            .collect()
        })
    }

    /// Stores a device's latest update report.
    pub fn put_ota_report(&self, d: &DeviceDocument) -> Result<()> {
        self.put_document("ota_reports", d)
    }

    /// A device's latest update report.
    pub fn ota_report(&self, device: &str) -> Result<Option<DeviceDocument>> {
        self.document("ota_reports", device)
    }

    /// Stores a device's latest software inventory.
    pub fn put_ota_inventory(&self, d: &DeviceDocument) -> Result<()> {
        self.put_document("ota_inventory", d)
    }

    /// A device's latest software inventory.
    pub fn ota_inventory(&self, device: &str) -> Result<Option<DeviceDocument>> {
        self.document("ota_inventory", device)
    }

    /// Up to `limit` devices' latest software inventories (the fleet overview's "outdated
    /// software"), in device order.
    pub fn ota_inventories(&self, limit: usize) -> Result<Vec<DeviceDocument>> {
        self.with(|i| {
            i.conn
                .prepare("SELECT device, body, at FROM ota_inventory ORDER BY device LIMIT ?1")?
                .query_map([to_i64(limit as u64)], document_row)?
                .collect()
        })
    }

    fn put_document(&self, table: &'static str, d: &DeviceDocument) -> Result<()> {
        self.with(|i| {
            i.conn.execute(
                &format!("INSERT OR REPLACE INTO {table} (device, body, at) VALUES (?1, ?2, ?3)"),
                params![d.device, d.body, to_i64(d.at_ms)],
            )?;
            Ok(())
        })
    }

    fn document(&self, table: &'static str, device: &str) -> Result<Option<DeviceDocument>> {
        self.with(|i| {
            i.conn
                .query_row(
                    &format!("SELECT device, body, at FROM {table} WHERE device = ?1"),
                    [device],
                    document_row,
                )
                .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaigns_devices_reports_and_inventory_are_stored() {
        let dir = std::env::temp_dir().join(format!("moat-campaigns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let key = moat_audit::AnchorKey::new(&[7u8; 32]).expect("key");
        let registry = Registry::open(&dir.join("registry.db"), key).expect("open");
        let id = registry.next_campaign_id().expect("id");
        assert_eq!(registry.next_campaign_id().expect("id"), id + 1);
        let mut row = CampaignRow {
            id,
            name: "fw".into(),
            status: "draft".into(),
            meta: "{}".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        let dev = |d: &str, s: &str| CampaignDeviceRow {
            device: d.into(),
            stage: s.into(),
            entry: format!("{{\"{d}\":1}}"),
        };
        registry
            .save_campaign(&row, &[dev("a", "pending"), dev("b", "pending")])
            .expect("save");
        row.status = "running".into();
        row.updated_at_ms = 2;
        registry
            .save_campaign(&row, &[dev("a", "assigned")])
            .expect("save");
        assert_eq!(registry.campaign(id).expect("get"), Some(row.clone()));
        assert_eq!(registry.campaigns(10).expect("list"), vec![row.clone()]);
        assert_eq!(
            registry
                .campaigns_with_status(&["running"])
                .expect("live")
                .len(),
            1
        );
        assert!(
            registry
                .campaigns_with_status(&["paused"])
                .expect("live")
                .is_empty()
        );
        let devices = registry.campaign_devices(id).expect("devices");
        assert_eq!(devices, vec![dev("a", "assigned"), dev("b", "pending")]);
        assert_eq!(
            registry.campaigns_of_device("a").expect("of"),
            vec![(id, dev("a", "assigned"))]
        );
        let doc = DeviceDocument {
            device: "a".into(),
            body: "{\"state\":\"installed\"}".into(),
            at_ms: 5,
        };
        registry.put_ota_report(&doc).expect("report");
        registry.put_ota_inventory(&doc).expect("inventory");
        assert_eq!(registry.ota_report("a").expect("get"), Some(doc.clone()));
        assert_eq!(registry.ota_inventory("a").expect("get"), Some(doc.clone()));
        assert_eq!(registry.ota_report("b").expect("get"), None);
        let other = DeviceDocument {
            device: "0".into(),
            ..doc.clone()
        };
        registry.put_ota_inventory(&other).expect("inventory");
        assert_eq!(
            registry.ota_inventories(10).expect("all"),
            vec![other.clone(), doc]
        );
        assert_eq!(registry.ota_inventories(1).expect("one"), vec![other]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
