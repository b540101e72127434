//! Device update reports over MQTT: `devices/{id}/ota/status` and
//! `devices/{id}/ota/inventory` (the contract in `crates/moat-ota/README.md`).
//!
//! The broker hands the hub a copy of every allowed publish to a topic of that shape through
//! its [`PublishTap`] (the publish is routed as usual too, so operators may subscribe). The
//! tap runs on the packet path, so it only checks the topic's shape (byte comparisons), the
//! publisher (the principal must be the device named in the topic: a device cannot report for
//! another, whatever the policies allow) and the payload size, then queues the report
//! ([`REPORT_QUEUE`]; when full, reports are dropped and counted, never waited for). A task
//! parses each queued report strictly (unknown fields, bad states, out-of-range progress and
//! over-long strings are refused with a logged reason), stores it in the registry
//! (`ota_reports`, `ota_inventory`) and hands status reports to the campaigns.
//!
//! Trust boundary: everything in a report is the device's claim. It moves only that device's
//! campaign state; the security gates use what the hub observed, not what devices say.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use moat_broker::{Principal, PublishTap};
use moat_ota::campaign::{MAX_ERROR_LEN, MAX_TARGET_NAME_LEN, ReportState};
use moat_store::registry::{DeviceDocument, Registry};
use moat_types::{DeviceId, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::identity::now_ms;

/// Reports waiting to be parsed: 4,096. When full, new ones are dropped and counted
/// (`moat_ota_reports_total{result="dropped"}`); devices publish with QoS 1 and report again.
pub const REPORT_QUEUE: usize = 4096;
/// Largest status report accepted: 4 KiB.
pub const MAX_STATUS_BYTES: usize = 4 * 1024;
/// Largest inventory accepted: 256 KiB.
pub const MAX_INVENTORY_BYTES: usize = 256 * 1024;
/// Most packages in one inventory.
pub const MAX_INVENTORY_PACKAGES: usize = 4096;
/// Longest version, hardware class, package name, version or purl, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

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

/// A campaign id as devices echo it from their director target (a string), or a number.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum CampaignRef {
    Number(u64),
    Text(String),
}

/// A parsed status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusReport {
    /// The campaign id, if the update came from one.
    #[serde(deserialize_with = "campaign_id")]
    pub campaign: Option<u64>,
    /// The target name.
    pub target: String,
    /// The version being installed.
    pub version: String,
    /// Where the device stands.
    pub state: ReportState,
    /// 0 to 100.
    pub progress: u8,
    /// What went wrong.
    pub error: Option<String>,
}

fn campaign_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<CampaignRef>::deserialize(d)? {
        None => Ok(None),
        Some(CampaignRef::Number(n)) => Ok(Some(n)),
        Some(CampaignRef::Text(t)) => t
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("campaign {t:?} is not a campaign id"))),
    }
}

/// One package of an inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
    pub purl: String,
}

/// A parsed inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Inventory {
    pub hardware: String,
    pub installed: String,
    pub packages: Vec<Package>,
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ReportError {
    #[error("not valid JSON for this report: {0}")]
    Json(String),
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("progress {0} is above 100")]
    Progress(u8),
    #[error("{0} packages, more than the limit of {MAX_INVENTORY_PACKAGES}")]
    TooManyPackages(usize),
    #[error("purl {0:?} does not start with pkg:")]
    Purl(String),
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ReportError> {
    if s.len() > max || s.is_empty() && field != "error" {
        return Err(ReportError::TooLong { field, max });
    }
    Ok(())
}

/// Parses and checks a status report.
pub(crate) fn parse_status(payload: &[u8]) -> Result<StatusReport, ReportError> {
    let r: StatusReport =
        serde_json::from_slice(payload).map_err(|e| ReportError::Json(e.to_string()))?;
    check_len("target", &r.target, MAX_TARGET_NAME_LEN)?;
    check_len("version", &r.version, MAX_FIELD_LEN)?;
    if let Some(e) = &r.error {
        check_len("error", e, MAX_ERROR_LEN)?;
    }
    if r.progress > 100 {
        return Err(ReportError::Progress(r.progress));
    }
    Ok(r)
}

/// Parses and checks an inventory.
pub(crate) fn parse_inventory(payload: &[u8]) -> Result<Inventory, ReportError> {
    let i: Inventory =
        serde_json::from_slice(payload).map_err(|e| ReportError::Json(e.to_string()))?;
    check_len("hardware", &i.hardware, MAX_FIELD_LEN)?;
    check_len("installed", &i.installed, MAX_FIELD_LEN)?;
    if i.packages.len() > MAX_INVENTORY_PACKAGES {
        return Err(ReportError::TooManyPackages(i.packages.len()));
    }
    for p in &i.packages {
        check_len("package name", &p.name, MAX_FIELD_LEN)?;
        check_len("package version", &p.version, MAX_FIELD_LEN)?;
        check_len("package purl", &p.purl, MAX_FIELD_LEN)?;
        if !p.purl.starts_with("pkg:") {
            return Err(ReportError::Purl(p.purl.clone()));
        }
    }
    Ok(i)
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
        parse_topic(topic.as_str()).is_some()
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

    #[test]
    fn status_reports_are_parsed_strictly() {
        let ok = parse_status(
            br#"{"campaign":"7","target":"fw-2.0.0","version":"2.0.0","state":"downloading","progress":40,"error":null}"#,
        )
        .expect("valid");
        assert_eq!(ok.campaign, Some(7));
        assert_eq!(ok.state, ReportState::Downloading);
        let ok = parse_status(
            br#"{"campaign":null,"target":"t","version":"1","state":"consent_declined","progress":0,"error":null}"#,
        )
        .expect("valid");
        assert_eq!(ok.campaign, None);
        assert_eq!(
            parse_status(br#"{"campaign":7,"target":"fw","version":"2","state":"installed","progress":101,"error":null}"#),
            Err(ReportError::Progress(101))
        );
        for bad in [
            &br#"{"campaign":7,"target":"fw","version":"2","state":"exploded","progress":1,"error":null}"#[..],
            br#"{"campaign":7,"target":"fw","version":"2","state":"installed","progress":1,"error":null,"extra":1}"#,
            br#"{"campaign":"x","target":"fw","version":"2","state":"installed","progress":1,"error":null}"#,
            br#"{"campaign":7,"target":"","version":"2","state":"installed","progress":1,"error":null}"#,
            b"not json",
        ] {
            assert!(parse_status(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn inventories_are_bounded_and_need_package_urls() {
        let ok = parse_inventory(
            br#"{"hardware":"rpi4","installed":"2.0.0","packages":[{"name":"openssl","version":"3.0.13","purl":"pkg:deb/debian/openssl@3.0.13"}]}"#,
        )
        .expect("valid");
        assert_eq!(ok.packages.len(), 1);
        assert!(matches!(
            parse_inventory(
                br#"{"hardware":"rpi4","installed":"2","packages":[{"name":"a","version":"1","purl":"http://x"}]}"#
            ),
            Err(ReportError::Purl(_))
        ));
        let many = format!(
            r#"{{"hardware":"h","installed":"1","packages":[{}]}}"#,
            vec![r#"{"name":"a","version":"1","purl":"pkg:a"}"#; MAX_INVENTORY_PACKAGES + 1]
                .join(",")
        );
        assert!(matches!(
            parse_inventory(many.as_bytes()),
            Err(ReportError::TooManyPackages(_))
        ));
    }
}
