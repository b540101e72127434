//! The Uptane-style director: per-device signed instructions ("device D installs target T")
//! under a separate root whose targets, snapshot and timestamp keys are online.
//!
//! A device installs only what both the director (for this device id) and the image
//! repository (offline targets role) list with the same length and hash: a stolen hub cannot
//! install unsigned images, and the offline keys alone cannot address a device.
//!
//! Pure state like [`crate::image`]: the hub stores one [`DeviceRecord`] per device
//! (`DATA/ota/director/devices/`) and the roots (`DATA/ota/director/metadata/{N}.root.json`);
//! versions of a device's timestamp, snapshot and targets only ever increase.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, Metafile, RoleType, Root, Signed, Snapshot, Target, Targets, Timestamp,
};

use crate::image::{
    MAX_UPLOAD_METADATA_BYTES, MetadataFile, TargetInfo, check_initial_root, check_root_update,
    next_version,
};
use crate::keys::{OnlineKeys, hex};
use crate::meta::{
    self, DirectorCustom, SNAPSHOT_LIFETIME, SPEC_VERSION, TARGETS_LIFETIME, TIMESTAMP_LIFETIME, nz,
};
use crate::{Error, meta::unhex};

/// Longest device id the director signs for, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// What a device is told to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Image target name.
    pub target: String,
    /// Campaign that assigned it.
    pub campaign: Option<String>,
    /// Hardware class the director vouches for (the device checks it against its own).
    pub hardware: Option<String>,
    /// Whether the device must ask its owner before installing (absent in records stored
    /// before the flag existed: `false`).
    #[serde(default)]
    pub consent: bool,
}

/// What [`Director::assign`] tells one device: install `target` (an image target), for
/// `campaign`, asking its owner first when `consent`.
#[derive(Debug, Clone, Copy)]
pub struct Instruction<'a> {
    /// The image target.
    pub target: &'a TargetInfo,
    /// The campaign that assigns it, if any.
    pub campaign: Option<&'a str>,
    /// Whether the device must ask for consent before it installs.
    pub consent: bool,
}

impl<'a> Instruction<'a> {
    /// Install `target`, outside any campaign, without asking.
    pub fn new(target: &'a TargetInfo) -> Self {
        Instruction {
            target,
            campaign: None,
            consent: false,
        }
    }

    /// For `campaign`.
    #[must_use]
    pub fn campaign(mut self, campaign: &'a str) -> Self {
        self.campaign = Some(campaign);
        self
    }

    /// Asking for consent first (`true`) or not.
    #[must_use]
    pub fn consent(mut self, consent: bool) -> Self {
        self.consent = consent;
        self
    }
}

/// One device's director metadata, as the hub stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id.
    pub device: String,
    /// Current instruction, if any.
    pub assignment: Option<Assignment>,
    /// Signed targets (zero or one target).
    pub targets: Signed<Targets>,
    /// Signed snapshot.
    pub snapshot: Signed<Snapshot>,
    /// Signed timestamp.
    pub timestamp: Signed<Timestamp>,
}

impl DeviceRecord {
    /// The bytes served for `file` (`targets.json`, `snapshot.json` or `timestamp.json`).
    pub fn file(&self, file: &str) -> Option<Vec<u8>> {
        match file {
            "targets.json" => meta::to_bytes(&self.targets).ok(),
            "snapshot.json" => meta::to_bytes(&self.snapshot).ok(),
            "timestamp.json" => meta::to_bytes(&self.timestamp).ok(),
            _ => None,
        }
    }

    /// When this record's snapshot or timestamp passes half its lifetime, or targets gets
    /// within a week of expiry (re-sign then).
    pub fn refresh_due(&self) -> jiff::Timestamp {
        let at = |lifetime: i64, expires: jiff::Timestamp| {
            jiff::Timestamp::from_second(expires.as_second() - lifetime / 2)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        };
        at(TIMESTAMP_LIFETIME, self.timestamp.signed.expires)
            .min(at(SNAPSHOT_LIFETIME, self.snapshot.signed.expires))
            .min(at(TARGETS_LIFETIME, self.targets.signed.expires))
    }
}

/// The director's root and signing logic.
#[derive(Debug, Clone)]
pub struct Director {
    root: Signed<Root>,
}

fn check_device_id(device: &str) -> Result<(), Error> {
    if device.is_empty()
        || device.len() > MAX_DEVICE_ID_LEN
        || device.chars().any(|c| c.is_control())
    {
        return Err(Error::Invalid(format!("device id {device:?}")));
    }
    Ok(())
}

impl Director {
    /// Starts the director from the ceremony's first director root; checks it lists this hub's
    /// online director keys. Returns the root file to store.
    pub fn create(
        root: &[u8],
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<(Self, MetadataFile), Error> {
        let root = Self::parse(root)?;
        check_initial_root(&root, now)?;
        if root.signed.consistent_snapshot {
            return Err(Error::Invalid(
                "the director root must have consistent_snapshot false".into(),
            ));
        }
        Self::check_online_keys(&root, online)?;
        let file = MetadataFile {
            name: format!("{}.root.json", root.signed.version),
            bytes: meta::to_bytes(&root)?,
        };
        Ok((Self { root }, file))
    }

    /// Loads a root stored earlier (already checked when it was installed).
    pub fn load(root: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            root: Self::parse(root)?,
        })
    }

    fn parse(root: &[u8]) -> Result<Signed<Root>, Error> {
        if root.len() > MAX_UPLOAD_METADATA_BYTES {
            return Err(Error::Invalid("director root too large".into()));
        }
        meta::parse(root, "director root")
    }

    fn check_online_keys(root: &Signed<Root>, online: &OnlineKeys) -> Result<(), Error> {
        for (role, key) in [
            (RoleType::Targets, &online.director_targets),
            (RoleType::Snapshot, &online.director_snapshot),
            (RoleType::Timestamp, &online.director_timestamp),
        ] {
            let ok = root
                .signed
                .roles
                .get(&role)
                .is_some_and(|r| r.keyids.iter().any(|k| hex(k) == key.id()));
            if !ok {
                return Err(Error::Invalid(format!(
                    "the director root's {role} role does not list this hub's online director \
                     {role} key {}: sign the root with the keys from `moat ota online-keys`",
                    key.id()
                )));
            }
        }
        Ok(())
    }

    /// The current root.
    pub fn root(&self) -> &Signed<Root> {
        &self.root
    }

    /// Installs the next director root. Returns the file to store. Existing device records
    /// are re-signed by the caller with [`Director::refresh`] (`force`) when online keys
    /// changed.
    pub fn rotate_root(
        &mut self,
        new_root: &[u8],
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<MetadataFile, Error> {
        let root = Self::parse(new_root)?;
        check_root_update(&self.root, &root, now)?;
        Self::check_online_keys(&root, online)?;
        let file = MetadataFile {
            name: format!("{}.root.json", root.signed.version),
            bytes: meta::to_bytes(&root)?,
        };
        self.root = root;
        Ok(file)
    }

    /// Signs a new instruction for `device`: install the [`Instruction`]'s target (from the
    /// image repository) for its campaign, asking for consent if it says so, or nothing
    /// (`None`). `previous` is the device's current record, whose versions the new one
    /// exceeds. `hardware` defaults to the target's class.
    pub fn assign(
        &self,
        previous: Option<&DeviceRecord>,
        device: &str,
        target: Option<Instruction<'_>>,
        hardware: Option<&str>,
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<DeviceRecord, Error> {
        check_device_id(device)?;
        let assignment = target.map(|i| Assignment {
            target: i.target.name.clone(),
            campaign: i.campaign.map(str::to_owned),
            hardware: hardware
                .map(str::to_owned)
                .or_else(|| i.target.hardware.clone()),
            consent: i.consent,
        });
        let targets_version = previous.map_or(1, |p| next_version(&p.targets));
        let mut targets = Targets::new(
            SPEC_VERSION.into(),
            nz(targets_version),
            meta::expires_at(now, TARGETS_LIFETIME)?,
        );
        targets.delegations = None;
        if let (Some(Instruction { target: t, .. }), Some(a)) = (target, &assignment) {
            let name = TargetName::new(t.name.clone())
                .map_err(|e| Error::Invalid(format!("target name {}: {e}", t.name)))?;
            let custom = meta::custom_map(&DirectorCustom {
                device: device.to_owned(),
                hardware: a.hardware.clone(),
                version: t.version.clone(),
                campaign: a.campaign.clone(),
                consent: a.consent,
            })?;
            targets.targets.insert(
                name,
                Target {
                    length: t.length,
                    hashes: Hashes {
                        sha256: Decoded::<Hex>::from(unhex(&t.sha256)?),
                        _extra: HashMap::new(),
                    },
                    custom,
                    _extra: HashMap::new(),
                },
            );
        }
        let targets = meta::sign(targets, &[&online.director_targets])?;
        let mut record = DeviceRecord {
            device: device.to_owned(),
            assignment,
            targets,
            snapshot: previous.map_or_else(
                || Signed {
                    signed: Snapshot::new(SPEC_VERSION.into(), nz(1), now),
                    signatures: Vec::new(),
                },
                |p| p.snapshot.clone(),
            ),
            timestamp: previous.map_or_else(
                || Signed {
                    signed: Timestamp::new(SPEC_VERSION.into(), nz(1), now),
                    signatures: Vec::new(),
                },
                |p| p.timestamp.clone(),
            ),
        };
        Self::sign_fresh(&mut record, online, now)?;
        Ok(record)
    }

    /// Re-signs `record` when due (see [`DeviceRecord::refresh_due`]) or when `force`;
    /// returns whether it changed.
    pub fn refresh(
        &self,
        record: &mut DeviceRecord,
        online: &OnlineKeys,
        now: jiff::Timestamp,
        force: bool,
    ) -> Result<bool, Error> {
        if !force && now < record.refresh_due() {
            return Ok(false);
        }
        let targets_due = force
            || now.as_second() >= record.targets.signed.expires.as_second() - TARGETS_LIFETIME / 2;
        if targets_due {
            let mut t = record.targets.signed.clone();
            t.version = nz(next_version(&record.targets));
            t.expires = meta::expires_at(now, TARGETS_LIFETIME)?;
            record.targets = meta::sign(t, &[&online.director_targets])?;
        }
        Self::sign_fresh(record, online, now)?;
        Ok(true)
    }

    fn sign_fresh(
        record: &mut DeviceRecord,
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<(), Error> {
        let mut s = Snapshot::new(
            SPEC_VERSION.into(),
            nz(next_version(&record.snapshot)),
            meta::expires_at(now, SNAPSHOT_LIFETIME)?,
        );
        s.meta.insert(
            "targets.json".into(),
            Metafile {
                length: None,
                hashes: None,
                version: record.targets.signed.version,
                _extra: HashMap::new(),
            },
        );
        record.snapshot = meta::sign(s, &[&online.director_snapshot])?;
        let snap = meta::to_bytes(&record.snapshot)?;
        let mut t = Timestamp::new(
            SPEC_VERSION.into(),
            nz(next_version(&record.timestamp)),
            meta::expires_at(now, TIMESTAMP_LIFETIME)?,
        );
        t.meta.insert(
            "snapshot.json".into(),
            Metafile {
                length: Some(snap.len() as u64),
                hashes: Some(Hashes {
                    sha256: Decoded::<Hex>::from(
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &snap)
                            .as_ref()
                            .to_vec(),
                    ),
                    _extra: HashMap::new(),
                }),
                version: record.snapshot.signed.version,
                _extra: HashMap::new(),
            },
        );
        record.timestamp = meta::sign(t, &[&online.director_timestamp])?;
        Ok(())
    }
}
