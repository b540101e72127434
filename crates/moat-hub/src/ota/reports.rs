//! Device update reports over MQTT: `devices/{id}/ota/status` and
//! `devices/{id}/ota/inventory` (the contract in `crates/moat-ota/README.md`).
//!
//! The broker hands the hub a copy of every allowed publish to a topic of that shape through
//! its [`PublishTap`] (the publish is routed as usual too, so operators may subscribe). The
//! tap runs on the packet path, so it only checks the topic's shape (byte comparisons), the
//! publisher (the principal must be the device named in the topic: a device cannot report for
//! another, whatever the policies allow) and the payload size, then queues the report
//! ([`REPORT_QUEUE`]; when full, reports are dropped and counted, never waited for). A task
//! parses each queued report strictly with `moat_ota::report` (unknown fields, bad states,
//! out-of-range progress and over-long strings are refused with a logged reason), stores it in the registry
//! (`ota_reports`, `ota_inventory`) and hands status reports to the campaigns.
//!
//! Trust boundary: everything in a report is the device's claim. It moves only that device's
//! campaign state; the security gates use what the hub observed, not what devices say.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use moat_broker::{Principal, PublishTap};
use moat_ota::report::{MAX_INVENTORY_BYTES, MAX_STATUS_BYTES, parse_inventory, parse_status};
use moat_store::registry::{DeviceDocument, Registry};
use moat_types::{DeviceId, TopicName};
use tokio::sync::{mpsc, watch};

use crate::identity::now_ms;

/// Reports waiting to be parsed: 4,096. When full, new ones are dropped and counted
/// (`moat_ota_reports_total{result="dropped"}`); devices publish with QoS 1 and report again.
pub const REPORT_QUEUE: usize = 4096;

/// Which report a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportKind {
    Status,
    Inventory,
}

/// `devices/{id}/ota/status` or `devices/{id}/ota/inventory` → (id, kind). Byte
/// comparisons only: it runs for every allowed publish.
pub(crate) fn parse_topic(topic: &str) -> Option<(&str, ReportKind)> {
    let rest = topic.strip_prefix("devices/")?;
    let slash = rest.find('/')?;
    let (id, tail) = (&rest[..slash], &rest[slash..]);
    let kind = match tail {
        "/ota/status" => ReportKind::Status,
        "/ota/inventory" => ReportKind::Inventory,
        _ => return None,
    };
    (!id.is_empty()).then_some((id, kind))
}

/// Counters of the report path (rendered in `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct ReportStats {
    pub accepted: AtomicU64,
    /// The publisher was not the device in the topic.
    pub wrong_device: AtomicU64,
    pub too_large: AtomicU64,
    pub invalid: AtomicU64,
    pub dropped: AtomicU64,
}

impl ReportStats {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP moat_ota_reports_total Device update reports (status and inventory), by result.\n# TYPE moat_ota_reports_total counter"
        );
        for (result, v) in [
            ("accepted", &self.accepted),
            ("wrong_device", &self.wrong_device),
            ("too_large", &self.too_large),
            ("invalid", &self.invalid),
            ("dropped", &self.dropped),
        ] {
            let _ = writeln!(
                out,
                "moat_ota_reports_total{{result=\"{result}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// A report that passed the tap's checks, waiting to be parsed.
#[derive(Debug)]
pub(crate) struct RawReport {
    device: DeviceId,
    kind: ReportKind,
    payload: Bytes,
    at_ms: u64,
}

/// The broker's tap for report topics.
#[derive(Debug)]
pub(crate) struct ReportTap {
    tx: mpsc::Sender<RawReport>,
    pub stats: Arc<ReportStats>,
}

impl ReportTap {
    /// The tap and the receiving end for [`run`].
    pub(crate) fn new(stats: Arc<ReportStats>) -> (Arc<Self>, mpsc::Receiver<RawReport>) {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        (Arc::new(Self { tx, stats }), rx)
    }
}

impl PublishTap for ReportTap {
    fn wants(&self, topic: &TopicName) -> bool {
        // Called for every message: most topics fail the cheap byte test.
        topic.as_bytes().starts_with(b"devices/") && parse_topic(topic.as_str()).is_some()
    }

    fn publish(&self, principal: &Principal, topic: &TopicName, payload: Bytes) {
        let Some((id, kind)) = parse_topic(topic.as_str()) else {
            return;
        };
        // Only the device itself reports about itself: a policy that lets one device
        // publish into another's namespace does not make it that device.
        let device = match principal {
            Principal::Device(d) if d.as_str() == id => d.clone(),
            _ => {
                self.stats.wrong_device.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%principal, topic = %topic, "update report from another identity ignored");
                return;
            }
        };
        let max = match kind {
            ReportKind::Status => MAX_STATUS_BYTES,
            ReportKind::Inventory => MAX_INVENTORY_BYTES,
        };
        if payload.len() > max {
            self.stats.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%device, size = payload.len(), max, "update report too large");
            return;
        }
        let report = RawReport {
            device,
            kind,
            payload,
            at_ms: now_ms(),
        };
        if self.tx.try_send(report).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Parses, stores and forwards queued reports until `stop` turns true.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<RawReport>,
    stats: Arc<ReportStats>,
    registry: Arc<Registry>,
    campaigns: Arc<super::campaigns::Campaigns>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(report) = received else { return };
        let body = match report.kind {
            ReportKind::Status => parse_status(&report.payload).map(|r| {
                let body = serde_json::to_string(&r).unwrap_or_default();
                (Some(r), body)
            }),
            ReportKind::Inventory => parse_inventory(&report.payload)
                .map(|i| (None, serde_json::to_string(&i).unwrap_or_default())),
        };
        let (status, body) = match body {
            Ok(b) => b,
            Err(e) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %report.device, kind = ?report.kind, error = %e, "update report refused");
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let doc = DeviceDocument {
            device: report.device.as_str().to_owned(),
            body,
            at_ms: report.at_ms,
        };
        let reg = registry.clone();
        let kind = report.kind;
        let stored = tokio::task::spawn_blocking(move || match kind {
            ReportKind::Status => reg.put_ota_report(&doc),
            ReportKind::Inventory => reg.put_ota_inventory(&doc),
        })
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!(device = %report.device, "could not store an update report");
        }
        if let Some(status) = status {
            campaigns
                .report(&report.device, &status, report.at_ms)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_of_reports_are_recognised_by_shape() {
        assert_eq!(
            parse_topic("devices/d1/ota/status"),
            Some(("d1", ReportKind::Status))
        );
        assert_eq!(
            parse_topic("devices/d-2/ota/inventory"),
            Some(("d-2", ReportKind::Inventory))
        );
        for t in [
            "devices/d1/ota/status/x",
            "devices/d1/ota",
            "devices//ota/status",
            "devices/d1/telemetry",
            "other/d1/ota/status",
            "devices/d1/ota/statusx",
        ] {
            assert_eq!(parse_topic(t), None, "{t}");
        }
    }
}
