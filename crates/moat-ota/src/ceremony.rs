//! The operator's side: build and sign roots for both repositories, targets and `hw-{class}`
//! metadata, with offline keys. Pure functions; the CLI (`moat ota init|root rotate|publish`)
//! reads and writes the key directory and talks to the hub.

use std::collections::HashMap;

use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{
    DelegatedRole, Delegations, Hashes, PathPattern, PathSet, RoleKeys, RoleType, Root, Signed,
    Target, Targets,
};

use crate::image::SignedUpdate;
use crate::keys::{OnlinePublicKeys, SigningKey, key_id};
use crate::meta::{self, ImageCustom, SPEC_VERSION, nz, unhex};
use crate::{Error, Version};

/// Most root keys in one role.
pub const MAX_ROOT_KEYS: usize = 16;

/// What goes into a root besides the online keys.
#[derive(Debug, Clone)]
pub struct RootSpec {
    /// Root version (1 for the ceremony, previous + 1 for a rotation).
    pub version: u64,
    /// Expiry (whole seconds).
    pub expires: jiff::Timestamp,
    /// Public root keys.
    pub root_keys: Vec<Key>,
    /// Signatures a root needs.
    pub threshold: u64,
}

fn role_keys(
    keys: &mut HashMap<Decoded<Hex>, Key>,
    list: &[&Key],
    threshold: u64,
) -> Result<RoleKeys, Error> {
    let mut keyids = Vec::new();
    for k in list {
        let id: Decoded<Hex> = unhex(&key_id(k)?)?.into();
        keys.insert(id.clone(), (*k).clone());
        if !keyids.contains(&id) {
            keyids.push(id);
        }
    }
    if threshold == 0 || threshold > keyids.len() as u64 {
        return Err(Error::Invalid(format!(
            "threshold {threshold} with {} keys",
            keyids.len()
        )));
    }
    Ok(RoleKeys {
        keyids,
        threshold: nz(threshold),
        _extra: HashMap::new(),
    })
}

fn root(
    spec: &RootSpec,
    consistent_snapshot: bool,
    targets: &[&Key],
    snapshot: &Key,
    timestamp: &Key,
) -> Result<Root, Error> {
    if spec.root_keys.is_empty() || spec.root_keys.len() > MAX_ROOT_KEYS {
        return Err(Error::Invalid(format!(
            "a root needs 1 to {MAX_ROOT_KEYS} root keys"
        )));
    }
    let mut keys = HashMap::new();
    let rk: Vec<&Key> = spec.root_keys.iter().collect();
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role_keys(&mut keys, &rk, spec.threshold)?);
    roles.insert(RoleType::Targets, role_keys(&mut keys, targets, 1)?);
    roles.insert(RoleType::Snapshot, role_keys(&mut keys, &[snapshot], 1)?);
    roles.insert(RoleType::Timestamp, role_keys(&mut keys, &[timestamp], 1)?);
    Ok(Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot,
        version: nz(spec.version),
        expires: spec.expires,
        keys,
        roles,
        _extra: HashMap::new(),
    })
}

/// The image repository's root: offline root keys and targets key, online snapshot and
/// timestamp keys, consistent snapshots.
pub fn image_root(
    spec: &RootSpec,
    targets_key: &Key,
    online: &OnlinePublicKeys,
) -> Result<Root, Error> {
    root(
        spec,
        true,
        &[targets_key],
        &online.image_snapshot,
        &online.image_timestamp,
    )
}

/// The director's root: offline root keys, online targets, snapshot and timestamp keys, no
/// consistent snapshots (metadata is per device).
pub fn director_root(spec: &RootSpec, online: &OnlinePublicKeys) -> Result<Root, Error> {
    root(
        spec,
        false,
        &[&online.director_targets],
        &online.director_snapshot,
        &online.director_timestamp,
    )
}

/// Signs a root with `signers` (for a rotation: the old root's keys and the new ones).
pub fn sign_root(root: Root, signers: &[&SigningKey]) -> Result<Signed<Root>, Error> {
    meta::sign(root, signers)
}

/// The first targets metadata: no targets, no delegations.
pub fn initial_targets(
    expires: jiff::Timestamp,
    targets_key: &SigningKey,
) -> Result<Signed<Targets>, Error> {
    let mut t = Targets::new(SPEC_VERSION.into(), nz(1), expires);
    t.delegations = None;
    meta::sign(t, &[targets_key])
}

/// `current` with the next version and new expiry, signed by `targets_key` (after the
/// targets key was replaced in a root rotation).
pub fn resign_targets(
    current: &Signed<Targets>,
    expires: jiff::Timestamp,
    targets_key: &SigningKey,
) -> Result<Signed<Targets>, Error> {
    let mut t = current.signed.clone();
    t.version = nz(t.version.get() + 1);
    t.expires = expires;
    meta::sign(t, &[targets_key])
}

/// An image to publish.
#[derive(Debug, Clone)]
pub struct NewTarget {
    /// Image name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Version.
    pub version: String,
    /// Hardware class, `None` for any hardware.
    pub hardware: Option<String>,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
    /// Whether devices may install it over a higher version.
    pub downgrade: bool,
}

/// Offline keys available to [`publish`].
#[derive(Debug, Clone, Copy)]
pub struct PublishKeys<'a> {
    /// The targets key; needed for top-level targets and for a new or re-keyed `hw-{class}`
    /// delegation.
    pub targets: Option<&'a SigningKey>,
    /// The `hw-{class}` key, for hardware-specific targets.
    pub hardware: Option<&'a SigningKey>,
}

/// Signs the metadata that adds `target`: returns the target name and what to upload.
/// `current_targets` and `current_role` are the latest versions (from the hub, checked against
/// the operator's root, or the operator's own copies).
pub fn publish(
    current_targets: &Signed<Targets>,
    current_role: Option<&Signed<Targets>>,
    target: &NewTarget,
    keys: PublishKeys<'_>,
    expires: jiff::Timestamp,
) -> Result<(String, SignedUpdate), Error> {
    Version::parse(&target.version).map_err(|e| Error::Invalid(e.to_string()))?;
    let name = meta::target_name(&target.name, &target.version, target.hardware.as_deref())?;
    let tname =
        TargetName::new(name.clone()).map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
    let entry = Target {
        length: target.length,
        hashes: Hashes {
            sha256: Decoded::<Hex>::from(target.sha256.to_vec()),
            _extra: HashMap::new(),
        },
        custom: meta::custom_map(&ImageCustom {
            name: target.name.clone(),
            version: target.version.clone(),
            hardware: target.hardware.clone(),
            downgrade: target.downgrade,
        })?,
        _extra: HashMap::new(),
    };
    let mut update = SignedUpdate::default();
    match &target.hardware {
        None => {
            let key = keys.targets.ok_or_else(|| {
                Error::Key("publishing for any hardware needs the targets key".into())
            })?;
            let mut t = current_targets.signed.clone();
            t.version = nz(t.version.get() + 1);
            t.expires = expires;
            t.targets.insert(tname, entry);
            update.targets = Some(meta::sign(t, &[key])?);
        }
        Some(class) => {
            let hw_key = keys.hardware.ok_or_else(|| {
                Error::Key(format!("publishing for {class} needs the hw-{class} key"))
            })?;
            let role = meta::hw_role(class);
            let delegated = current_targets
                .signed
                .delegations
                .as_ref()
                .and_then(|d| d.roles.iter().find(|r| r.name == role))
                .is_some_and(|r| {
                    r.keyids.len() == 1
                        && r.keyids
                            .first()
                            .is_some_and(|k| crate::keys::hex(k) == hw_key.id())
                });
            if !delegated {
                let key = keys.targets.ok_or_else(|| {
                    Error::Key(format!(
                        "delegating {role} to a new key needs the targets key"
                    ))
                })?;
                let mut t = current_targets.signed.clone();
                t.version = nz(t.version.get() + 1);
                t.expires = expires;
                let d = t.delegations.get_or_insert_with(Delegations::new);
                d.roles.retain(|r| r.name != role);
                let id: Decoded<Hex> = unhex(hw_key.id())?.into();
                d.keys.insert(id.clone(), hw_key.public().clone());
                let pattern = PathPattern::new(format!("{class}/*"))
                    .map_err(|e| Error::Invalid(format!("path pattern: {e}")))?;
                d.roles.push(DelegatedRole {
                    name: role.clone(),
                    keyids: vec![id],
                    threshold: nz(1),
                    paths: PathSet::Paths(vec![pattern]),
                    terminating: true,
                    targets: None,
                });
                // Keys no role uses any more (a replaced hw key) are dropped.
                let used: Vec<Decoded<Hex>> =
                    d.roles.iter().flat_map(|r| r.keyids.clone()).collect();
                d.keys.retain(|k, _| used.contains(k));
                update.targets = Some(meta::sign(t, &[key])?);
            }
            let mut r = match current_role {
                Some(cur) => {
                    let mut r = cur.signed.clone();
                    r.version = nz(r.version.get() + 1);
                    r
                }
                None => Targets::new(SPEC_VERSION.into(), nz(1), expires),
            };
            r.delegations = None;
            r.expires = expires;
            r.targets.insert(tname, entry);
            update.roles.insert(role, meta::sign(r, &[hw_key])?);
        }
    }
    Ok((name, update))
}
