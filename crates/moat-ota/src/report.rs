//! Device update reports as the contract (`README.md`, "Device reports") defines them:
//! `devices/{id}/ota/status` and `devices/{id}/ota/inventory`, parsed strictly (unknown
//! fields, unknown states, out-of-range progress, over-long strings and too many packages are
//! refused with a [`ReportError`] that says which) and bounded by named limits. Pure: the hub
//! checks who published and the payload size before it calls these.

use serde::{Deserialize, Serialize};

use crate::campaign::{MAX_ERROR_LEN, MAX_TARGET_NAME_LEN, ReportState};

/// Largest status report accepted: 4 KiB.
pub const MAX_STATUS_BYTES: usize = 4 * 1024;
/// Largest inventory accepted: 256 KiB.
pub const MAX_INVENTORY_BYTES: usize = 256 * 1024;
/// Most packages in one inventory.
pub const MAX_INVENTORY_PACKAGES: usize = 4096;
/// Longest version, hardware class, package name, version or purl, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

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
pub struct StatusReport {
    /// The campaign id, if the update came from one.
    #[serde(deserialize_with = "campaign_id")]
    pub campaign: Option<u64>,
    /// The target name; `null` when the device refused the metadata before it learned
    /// which target it names (a bad signature, expired or rolled-back metadata).
    pub target: Option<String>,
    /// The version being installed (`null` as `target`).
    pub version: Option<String>,
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
pub struct Package {
    pub name: String,
    pub version: String,
    pub purl: String,
}

/// A parsed inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub hardware: String,
    pub installed: String,
    pub packages: Vec<Package>,
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportError {
    /// Not JSON, an unknown field or state, a value of the wrong type.
    #[error("not valid JSON for this report: {0}")]
    Json(String),
    /// A string over its limit.
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
    /// A required string is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Progress above 100.
    #[error("progress {0} is above 100")]
    Progress(u8),
    /// More packages than [`MAX_INVENTORY_PACKAGES`].
    #[error("{0} packages, more than the limit of {MAX_INVENTORY_PACKAGES}")]
    TooManyPackages(usize),
    /// A package URL that is not one (`pkg:...`).
    #[error("purl {0:?} does not start with pkg:")]
    Purl(String),
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ReportError> {
    if s.len() > max {
        return Err(ReportError::TooLong { field, max });
    }
    if s.is_empty() && field != "error" {
        return Err(ReportError::Empty(field));
    }
    Ok(())
}

/// Parses and checks a status report.
pub fn parse_status(payload: &[u8]) -> Result<StatusReport, ReportError> {
    let r: StatusReport =
        serde_json::from_slice(payload).map_err(|e| ReportError::Json(e.to_string()))?;
    if let Some(t) = &r.target {
        check_len("target", t, MAX_TARGET_NAME_LEN)?;
    }
    if let Some(v) = &r.version {
        check_len("version", v, MAX_FIELD_LEN)?;
    }
    if let Some(e) = &r.error {
        check_len("error", e, MAX_ERROR_LEN)?;
    }
    if r.progress > 100 {
        return Err(ReportError::Progress(r.progress));
    }
    Ok(r)
}

/// Parses and checks an inventory.
pub fn parse_inventory(payload: &[u8]) -> Result<Inventory, ReportError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        // Metadata refused before the device learned the target: no target, no version.
        let refused = parse_status(
            br#"{"campaign":null,"target":null,"version":null,"state":"refused","progress":0,"error":"director: timestamp expired"}"#,
        )
        .expect("valid");
        assert_eq!((refused.target, refused.version), (None, None));
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

    const VALID: &str = r#"{"campaign":"12","target":"x86/fw-2.0.0","version":"2.0.0","state":"installing","progress":70,"error":"slow disk"}"#;

    proptest! {
        /// Arbitrary bytes never panic either parser.
        #[test]
        fn arbitrary_bytes_are_refused_or_parsed_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_status(&bytes);
            let _ = parse_inventory(&bytes);
        }

        /// A valid report with one byte changed either still parses into something within
        /// the limits, or is refused; what parses re-serialises to a report that parses the same.
        #[test]
        fn mutated_reports_stay_within_limits(at in 0..VALID.len(), byte in any::<u8>()) {
            let mut bytes = VALID.as_bytes().to_vec();
            bytes[at] = byte;
            if let Ok(r) = parse_status(&bytes) {
                prop_assert!(r.progress <= 100);
                prop_assert!(r.target.as_ref().is_none_or(|t| t.len() <= MAX_TARGET_NAME_LEN));
                let again = serde_json::to_vec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(parse_status(&again), Ok(r));
            }
        }
    }
}
