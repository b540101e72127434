//! The hub's TUF image repository: checks what the operator signed offline, keeps the current
//! metadata, and re-signs snapshot and timestamp with the online keys.
//!
//! Pure state: methods take bytes and `now` and return the [`MetadataFile`]s the caller must
//! store (under `DATA/ota/image/metadata/`, served at `/tuf/metadata/`). Files are never
//! rewritten except `timestamp.json` and the convenience copy `root.json`, so a client that
//! holds one version's file names always gets the same bytes (consistent snapshots).
//!
//! What the hub can and cannot do: with the online keys it can only re-sign freshness
//! (snapshot, timestamp). New targets, new delegations and new roots must arrive signed by the
//! offline keys and are checked here (threshold, version increases, not expired) before they
//! are accepted.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, Metafile, Role, RoleType, Root, Signed, Snapshot, Targets, Timestamp};

use crate::Error;
use crate::keys::{OnlineKeys, hex, key_id};
use crate::meta::{
    self, ImageCustom, SNAPSHOT_LIFETIME, SPEC_VERSION, TIMESTAMP_LIFETIME, consistent_target_path,
    moat_custom, nz,
};

/// Largest metadata document accepted from an operator (root, targets or `hw-*`): 4 MiB.
pub const MAX_UPLOAD_METADATA_BYTES: usize = 4 * 1024 * 1024;
/// Most delegated roles (hardware classes) in the image repository: 256.
pub const MAX_DELEGATED_ROLES: usize = 256;
/// Most targets across all roles: 10 000.
pub const MAX_TARGETS: usize = 10_000;

/// A metadata file to store (and serve) under `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataFile {
    /// File name, e.g. `3.snapshot.json` or `timestamp.json`.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// One image target as the repository lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Target name, `{class}/{name}-{version}` or `{name}-{version}`.
    pub name: String,
    /// Image name without version or class.
    pub image: String,
    /// Version.
    pub version: String,
    /// Hardware class, `None` for any.
    pub hardware: Option<String>,
    /// Whether the offline role allowed installing it over a higher version.
    pub downgrade: bool,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Path under `/tuf/targets/` (`{dir}/{sha256}.{basename}`).
    pub path: String,
    /// Role that signed it: `targets` or `hw-{class}`.
    pub role: String,
}

/// Operator-signed metadata that accompanies a new target (the body the CLI uploads):
/// a new top-level targets version (needed when the target is top-level or a new hardware
/// class is delegated) and/or new versions of delegated roles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedUpdate {
    /// New top-level targets metadata, if it changes.
    #[serde(default)]
    pub targets: Option<Signed<Targets>>,
    /// New delegated role metadata by role name (`hw-{class}`).
    #[serde(default)]
    pub roles: BTreeMap<String, Signed<Targets>>,
}

/// The image repository's current state.
#[derive(Debug, Clone)]
pub struct ImageRepository {
    root: Signed<Root>,
    targets: Signed<Targets>,
    roles: BTreeMap<String, Signed<Targets>>,
    snapshot: Signed<Snapshot>,
    timestamp: Signed<Timestamp>,
}

fn parse_limited<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    if bytes.len() > MAX_UPLOAD_METADATA_BYTES {
        return Err(Error::Invalid(format!(
            "{what} larger than {MAX_UPLOAD_METADATA_BYTES} bytes"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Checks that `root` is a valid first root (self-signed to threshold, every role present).
pub fn check_initial_root(root: &Signed<Root>, now: jiff::Timestamp) -> Result<(), Error> {
    for role in [
        RoleType::Root,
        RoleType::Targets,
        RoleType::Snapshot,
        RoleType::Timestamp,
    ] {
        if !root.signed.roles.contains_key(&role) {
            return Err(Error::Invalid(format!("root lacks the {role} role")));
        }
    }
    root.signed
        .verify_role(root)
        .map_err(|e| Error::Signature(format!("root: {e}")))?;
    if root.signed.expires <= now {
        return Err(Error::Expired(format!(
            "root version {} expired at {}",
            root.signed.version, root.signed.expires
        )));
    }
    Ok(())
}

/// Checks that `new` may follow `old`: version + 1, signed to threshold by the old root's and
/// the new root's root keys (TUF 5.3.4-5.3.5).
pub fn check_root_update(
    old: &Signed<Root>,
    new: &Signed<Root>,
    now: jiff::Timestamp,
) -> Result<(), Error> {
    if new.signed.version.get() != old.signed.version.get() + 1 {
        return Err(Error::Version(format!(
            "root version {} must follow {} directly",
            new.signed.version, old.signed.version
        )));
    }
    if new.signed.consistent_snapshot != old.signed.consistent_snapshot {
        return Err(Error::Invalid("consistent_snapshot must not change".into()));
    }
    old.signed
        .verify_role(new)
        .map_err(|e| Error::Signature(format!("new root by the old root keys: {e}")))?;
    check_initial_root(new, now)
}

fn check_fresh<T: Role>(role: &T, what: &str, now: jiff::Timestamp) -> Result<(), Error> {
    if role.expires() <= now {
        return Err(Error::Expired(format!(
            "{what} version {} expired at {}",
            role.version(),
            role.expires()
        )));
    }
    Ok(())
}

fn check_targets_entries(role_name: &str, targets: &Targets) -> Result<(), Error> {
    if targets.targets.len() > MAX_TARGETS {
        return Err(Error::Invalid(format!(
            "{role_name} lists more than {MAX_TARGETS} targets"
        )));
    }
    for (name, t) in &targets.targets {
        let c: ImageCustom = moat_custom(&t.custom).ok_or_else(|| {
            Error::Invalid(format!("{role_name}: {} lacks custom.moat", name.raw()))
        })?;
        let expect = meta::target_name(&c.name, &c.version, c.hardware.as_deref())?;
        if expect != name.raw() {
            return Err(Error::Invalid(format!(
                "{role_name}: target {} should be named {expect} by its custom.moat",
                name.raw()
            )));
        }
        let in_role = match &c.hardware {
            Some(class) => role_name == meta::hw_role(class),
            None => role_name == "targets",
        };
        if !in_role {
            return Err(Error::Invalid(format!(
                "{role_name}: target {} belongs in {}",
                name.raw(),
                c.hardware
                    .as_deref()
                    .map_or("targets".to_owned(), meta::hw_role)
            )));
        }
        if t.hashes.sha256.len() != 32 {
            return Err(Error::Invalid(format!("{}: sha256 missing", name.raw())));
        }
    }
    if let Some(d) = &targets.delegations
        && d.roles.len() > MAX_DELEGATED_ROLES
    {
        return Err(Error::Invalid(format!(
            "more than {MAX_DELEGATED_ROLES} delegated roles"
        )));
    }
    Ok(())
}

fn target_info(role: &str, name: &str, t: &tough::schema::Target) -> Option<TargetInfo> {
    let c: ImageCustom = moat_custom(&t.custom)?;
    let sha = hex(&t.hashes.sha256);
    Some(TargetInfo {
        path: consistent_target_path(name, &sha),
        name: name.to_owned(),
        image: c.name,
        version: c.version,
        hardware: c.hardware,
        downgrade: c.downgrade,
        length: t.length,
        sha256: sha,
        role: role.to_owned(),
    })
}

fn metafile(version: u64, bytes: Option<&[u8]>) -> Metafile {
    Metafile {
        length: bytes.map(|b| b.len() as u64),
        hashes: bytes.map(|b| Hashes {
            sha256: Decoded::<Hex>::from(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
                    .as_ref()
                    .to_vec(),
            ),
            _extra: HashMap::new(),
        }),
        version: nz(version),
        _extra: HashMap::new(),
    }
}

impl ImageRepository {
    /// Loads the state stored by earlier calls; `read(name)` returns a stored metadata file.
    /// `Ok(None)`: nothing stored yet (run the ceremony).
    pub fn load(read: impl Fn(&str) -> Option<Vec<u8>>) -> Result<Option<Self>, Error> {
        let Some(root) = read("root.json") else {
            return Ok(None);
        };
        let root: Signed<Root> = meta::parse(&root, "root.json")?;
        let Some(ts) = read("timestamp.json") else {
            return Err(Error::NotInitialised(
                "root.json without timestamp.json".into(),
            ));
        };
        let timestamp: Signed<Timestamp> = meta::parse(&ts, "timestamp.json")?;
        let sv = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .ok_or_else(|| Error::Invalid("timestamp lacks snapshot.json".into()))?
            .version;
        let name = format!("{sv}.snapshot.json");
        let snapshot: Signed<Snapshot> = meta::parse(
            &read(&name).ok_or_else(|| Error::Invalid(format!("{name} missing")))?,
            &name,
        )?;
        let mut targets: Option<Signed<Targets>> = None;
        let mut roles = BTreeMap::new();
        for (file, m) in &snapshot.signed.meta {
            let Some(role) = file.strip_suffix(".json") else {
                continue;
            };
            let name = format!("{}.{file}", m.version);
            let bytes = read(&name).ok_or_else(|| Error::Invalid(format!("{name} missing")))?;
            let t: Signed<Targets> = meta::parse(&bytes, &name)?;
            if role == "targets" {
                targets = Some(t);
            } else {
                roles.insert(role.to_owned(), t);
            }
        }
        let targets = targets.ok_or_else(|| Error::Invalid("snapshot lacks targets".into()))?;
        Ok(Some(Self {
            root,
            targets,
            roles,
            snapshot,
            timestamp,
        }))
    }

    /// Starts a repository from the ceremony's first root and first (usually empty) targets,
    /// then signs snapshot and timestamp. Returns the files to store.
    pub fn create(
        root: &[u8],
        targets: &[u8],
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<(Self, Vec<MetadataFile>), Error> {
        let root: Signed<Root> = parse_limited(root, "image root")?;
        check_initial_root(&root, now)?;
        if !root.signed.consistent_snapshot {
            return Err(Error::Invalid(
                "the image repository uses consistent snapshots".into(),
            ));
        }
        let targets: Signed<Targets> = parse_limited(targets, "image targets")?;
        Self::check_online_keys(&root, online)?;
        root.signed
            .verify_role(&targets)
            .map_err(|e| Error::Signature(format!("targets: {e}")))?;
        check_fresh(&targets.signed, "targets", now)?;
        check_targets_entries("targets", &targets.signed)?;
        let mut files = vec![
            MetadataFile {
                name: format!("{}.root.json", root.signed.version),
                bytes: meta::to_bytes(&root)?,
            },
            MetadataFile {
                name: "root.json".into(),
                bytes: meta::to_bytes(&root)?,
            },
            MetadataFile {
                name: format!("{}.targets.json", targets.signed.version),
                bytes: meta::to_bytes(&targets)?,
            },
        ];
        // Unsigned placeholders: sign_fresh numbers the first real ones 1.
        let mut repo = Self {
            root,
            targets,
            roles: BTreeMap::new(),
            snapshot: Signed {
                signed: Snapshot::new(SPEC_VERSION.into(), nz(1), now),
                signatures: Vec::new(),
            },
            timestamp: Signed {
                signed: Timestamp::new(SPEC_VERSION.into(), nz(1), now),
                signatures: Vec::new(),
            },
        };
        files.extend(repo.sign_fresh(online, now, true)?);
        Ok((repo, files))
    }

    fn check_online_keys(root: &Signed<Root>, online: &OnlineKeys) -> Result<(), Error> {
        for (role, key) in [
            (RoleType::Snapshot, &online.image_snapshot),
            (RoleType::Timestamp, &online.image_timestamp),
        ] {
            let ok = root
                .signed
                .roles
                .get(&role)
                .is_some_and(|r| r.keyids.iter().any(|k| hex(k) == key.id()));
            if !ok {
                return Err(Error::Invalid(format!(
                    "the root's {role} role does not list this hub's online {role} key {}: \
                     sign the root with the keys from `moat ota online-keys`",
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

    /// The current top-level targets.
    pub fn targets_role(&self) -> &Signed<Targets> {
        &self.targets
    }

    /// When each offline-signed role expires: `root`, `targets` and every delegated
    /// `hw-{class}` (at most [`MAX_DELEGATED_ROLES`] of them). The hub re-signs snapshot and
    /// timestamp itself; these only an operator with the offline keys can renew, and
    /// devices refuse every update once one of them has expired.
    pub fn offline_expiries(&self) -> Vec<(String, jiff::Timestamp)> {
        let mut out = vec![
            ("root".to_owned(), self.root.signed.expires),
            ("targets".to_owned(), self.targets.signed.expires),
        ];
        out.extend(
            self.roles
                .iter()
                .map(|(name, role)| (name.clone(), role.signed.expires)),
        );
        out
    }

    /// The current delegated role `name`, if any.
    pub fn delegated_role(&self, name: &str) -> Option<&Signed<Targets>> {
        self.roles.get(name)
    }

    /// The current timestamp.
    pub fn timestamp(&self) -> &Signed<Timestamp> {
        &self.timestamp
    }

    /// Installs the next root (rotation), with a re-signed targets role when the targets key
    /// changed. Returns the files to store.
    pub fn rotate_root(
        &mut self,
        new_root: &[u8],
        targets: Option<&[u8]>,
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<Vec<MetadataFile>, Error> {
        let root: Signed<Root> = parse_limited(new_root, "image root")?;
        check_root_update(&self.root, &root, now)?;
        Self::check_online_keys(&root, online)?;
        let new_targets = match targets {
            Some(b) => {
                let t: Signed<Targets> = parse_limited(b, "image targets")?;
                if t.signed.version <= self.targets.signed.version {
                    return Err(Error::Version(format!(
                        "targets version {} must be above {}",
                        t.signed.version, self.targets.signed.version
                    )));
                }
                check_fresh(&t.signed, "targets", now)?;
                check_targets_entries("targets", &t.signed)?;
                Some(t)
            }
            None => None,
        };
        root.signed
            .verify_role(new_targets.as_ref().unwrap_or(&self.targets))
            .map_err(|e| {
                Error::Signature(format!(
                    "targets under the new root: {e}; a new targets key needs targets metadata \
                     re-signed with it (moat ota root rotate does this)"
                ))
            })?;
        let mut files = vec![
            MetadataFile {
                name: format!("{}.root.json", root.signed.version),
                bytes: meta::to_bytes(&root)?,
            },
            MetadataFile {
                name: "root.json".into(),
                bytes: meta::to_bytes(&root)?,
            },
        ];
        if let Some(t) = &new_targets {
            files.push(MetadataFile {
                name: format!("{}.targets.json", t.signed.version),
                bytes: meta::to_bytes(t)?,
            });
        }
        let mut next = self.clone();
        next.root = root;
        if let Some(t) = new_targets {
            next.targets = t;
            next.roles.retain(|name, _| {
                next.targets
                    .signed
                    .delegations
                    .as_ref()
                    .is_some_and(|d| d.roles.iter().any(|r| &r.name == name))
            });
        }
        files.extend(next.sign_fresh(online, now, true)?);
        *self = next;
        Ok(files)
    }

    /// Checks operator-signed metadata for a new target `name` whose file has `length` bytes
    /// and `sha256`, and accepts it. Returns the target and the files to store; the caller
    /// then stores the image at `/tuf/targets/{TargetInfo::path}`.
    pub fn add_target(
        &mut self,
        name: &str,
        length: u64,
        sha256: &[u8; 32],
        update: SignedUpdate,
        online: &OnlineKeys,
        now: jiff::Timestamp,
    ) -> Result<(TargetInfo, Vec<MetadataFile>), Error> {
        if self.target(name).is_some() {
            return Err(Error::Conflict(format!(
                "{name} is already published; targets are immutable: publish a new version"
            )));
        }
        let mut next = self.clone();
        let mut files = Vec::new();
        if let Some(t) = update.targets {
            if t.signed.version <= self.targets.signed.version {
                return Err(Error::Version(format!(
                    "targets version {} must be above the current {} (rollback refused)",
                    t.signed.version, self.targets.signed.version
                )));
            }
            self.root
                .signed
                .verify_role(&t)
                .map_err(|e| Error::Signature(format!("targets: {e}")))?;
            check_fresh(&t.signed, "targets", now)?;
            check_targets_entries("targets", &t.signed)?;
            files.push(MetadataFile {
                name: format!("{}.targets.json", t.signed.version),
                bytes: meta::to_bytes(&t)?,
            });
            next.targets = t;
        }
        let delegations = next.targets.signed.delegations.clone().unwrap_or_default();
        for (role, signed) in update.roles {
            if !delegations.roles.iter().any(|r| r.name == role) {
                return Err(Error::Conflict(format!(
                    "role {role} is not delegated by targets: publish with the targets key so \
                     the delegation is added"
                )));
            }
            if let Some(cur) = next.roles.get(&role)
                && signed.signed.version <= cur.signed.version
            {
                return Err(Error::Version(format!(
                    "{role} version {} must be above the current {} (rollback refused)",
                    signed.signed.version, cur.signed.version
                )));
            }
            delegations
                .verify_role(&signed, &role)
                .map_err(|e| Error::Signature(format!("{role}: {e}")))?;
            check_fresh(&signed.signed, &role, now)?;
            check_targets_entries(&role, &signed.signed)?;
            if signed
                .signed
                .delegations
                .as_ref()
                .is_some_and(|d| !d.roles.is_empty())
            {
                return Err(Error::Invalid(format!("{role} must not delegate further")));
            }
            files.push(MetadataFile {
                name: format!("{}.{role}.json", signed.signed.version),
                bytes: meta::to_bytes(&signed)?,
            });
            next.roles.insert(role, signed);
        }
        // Roles no longer delegated drop out of the snapshot.
        next.roles
            .retain(|name, _| delegations.roles.iter().any(|r| &r.name == name));
        let info = next
            .target(name)
            .ok_or_else(|| Error::Conflict(format!("the signed metadata does not list {name}")))?;
        if info.length != length || info.sha256 != hex(sha256) {
            return Err(Error::Conflict(format!(
                "the signed metadata lists {name} with {} bytes, sha256 {}; the uploaded image \
                 has {length} bytes, sha256 {}",
                info.length,
                info.sha256,
                hex(sha256)
            )));
        }
        files.extend(next.sign_fresh(online, now, true)?);
        *self = next;
        Ok((info, files))
    }

    /// All targets, top-level first, then by role and name.
    pub fn targets(&self) -> Vec<TargetInfo> {
        let mut out: Vec<TargetInfo> = Vec::new();
        let mut top: Vec<_> = self.targets.signed.targets.iter().collect();
        top.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
        out.extend(
            top.into_iter()
                .filter_map(|(n, t)| target_info("targets", n.raw(), t)),
        );
        for (role, signed) in &self.roles {
            let mut ts: Vec<_> = signed.signed.targets.iter().collect();
            ts.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
            out.extend(
                ts.into_iter()
                    .filter_map(|(n, t)| target_info(role, n.raw(), t)),
            );
        }
        out
    }

    /// Looks a target up by name, where a device would find it.
    pub fn target(&self, name: &str) -> Option<TargetInfo> {
        match name.split_once('/') {
            None => self
                .targets
                .signed
                .targets
                .iter()
                .find(|(n, _)| n.raw() == name)
                .and_then(|(n, t)| target_info("targets", n.raw(), t)),
            Some((class, _)) => {
                let role = meta::hw_role(class);
                self.roles
                    .get(&role)?
                    .signed
                    .targets
                    .iter()
                    .find(|(n, _)| n.raw() == name)
                    .and_then(|(n, t)| target_info(&role, n.raw(), t))
            }
        }
    }

    /// When snapshot or timestamp next pass half their lifetime (re-sign then).
    pub fn refresh_due(&self) -> jiff::Timestamp {
        let half = |issued_for: i64, expires: jiff::Timestamp| {
            jiff::Timestamp::from_second(expires.as_second() - issued_for / 2)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        };
        half(TIMESTAMP_LIFETIME, self.timestamp.signed.expires)
            .min(half(SNAPSHOT_LIFETIME, self.snapshot.signed.expires))
    }

    /// Re-signs timestamp (and snapshot when it passed half its lifetime) if due or `force`.
    /// Returns the files to store (empty when nothing was due).
    pub fn refresh(
        &mut self,
        online: &OnlineKeys,
        now: jiff::Timestamp,
        force: bool,
    ) -> Result<Vec<MetadataFile>, Error> {
        if !force && now < self.refresh_due() {
            return Ok(Vec::new());
        }
        let snapshot_due = force
            || now.as_second() >= self.snapshot.signed.expires.as_second() - SNAPSHOT_LIFETIME / 2;
        self.sign_fresh(online, now, snapshot_due)
    }

    fn sign_fresh(
        &mut self,
        online: &OnlineKeys,
        now: jiff::Timestamp,
        new_snapshot: bool,
    ) -> Result<Vec<MetadataFile>, Error> {
        let mut files = Vec::new();
        if new_snapshot {
            let mut s = Snapshot::new(
                SPEC_VERSION.into(),
                nz(next_version(&self.snapshot)),
                meta::expires_at(now, SNAPSHOT_LIFETIME)?,
            );
            s.meta.insert(
                "targets.json".into(),
                metafile(self.targets.signed.version.get(), None),
            );
            for (role, signed) in &self.roles {
                s.meta.insert(
                    format!("{role}.json"),
                    metafile(signed.signed.version.get(), None),
                );
            }
            self.snapshot = meta::sign(s, &[&online.image_snapshot])?;
            files.push(MetadataFile {
                name: format!("{}.snapshot.json", self.snapshot.signed.version),
                bytes: meta::to_bytes(&self.snapshot)?,
            });
        }
        let snap_name = format!("{}.snapshot.json", self.snapshot.signed.version);
        let snap_bytes = match files.iter().find(|f| f.name == snap_name) {
            Some(f) => f.bytes.clone(),
            None => meta::to_bytes(&self.snapshot)?,
        };
        let mut t = Timestamp::new(
            SPEC_VERSION.into(),
            nz(next_version(&self.timestamp)),
            meta::expires_at(now, TIMESTAMP_LIFETIME)?,
        );
        t.meta.insert(
            "snapshot.json".into(),
            metafile(self.snapshot.signed.version.get(), Some(&snap_bytes)),
        );
        self.timestamp = meta::sign(t, &[&online.image_timestamp])?;
        let ts = meta::to_bytes(&self.timestamp)?;
        files.push(MetadataFile {
            name: "timestamp.json".into(),
            bytes: ts,
        });
        Ok(files)
    }
}

/// The version after `s`'s, or 1 for an unsigned placeholder.
pub(crate) fn next_version<T: Role>(s: &Signed<T>) -> u64 {
    if s.signatures.is_empty() {
        1
    } else {
        s.signed.version().get() + 1
    }
}

/// The key id of every key the root lists for `role`, for display.
pub fn role_key_ids(root: &Root, role: RoleType) -> Vec<String> {
    root.keys(role).filter_map(|k| key_id(k).ok()).collect()
}
