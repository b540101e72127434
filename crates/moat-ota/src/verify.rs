//! The device side: verify the director and image repositories, decide on one update, and check
//! the downloaded bytes.
//!
//! ```text
//! pinned director root ──► director chain (root rotation, timestamp, snapshot, targets)
//!                              │ the one target for this device id (or none: Ok(None))
//! pinned image root ─────► image chain (…, targets, hw-{class} delegation)
//!                              │ same name; length and sha256 agree; hardware; version
//!                              ▼
//!                       ApprovedUpdate ──► TargetCheck (stream bytes) ──► VerifiedImage
//! ```
//!
//! Only [`verify`] makes an [`ApprovedUpdate`] and only [`TargetCheck::finish`] makes a
//! [`VerifiedImage`]: an installer that takes a `VerifiedImage` cannot skip a check.
//!
//! Rollback protection across runs comes from the datastore directory: tough keeps the last
//! timestamp, snapshot and targets it trusted there, and this module starts the root chain from
//! the newest root stored there (never older than the pinned one), so withholding a new root
//! does not bring back revoked keys.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use tough::schema::{Signed, Target, Targets};
use tough::{ExpirationEnforcement, Limits, RepositoryLoader, TargetName, Transport};
use url::Url;

use crate::meta::{DirectorCustom, ImageCustom, hw_role, moat_custom};
use crate::{Version, keys::hex};

/// Largest root metadata file a device fetches: 512 KiB.
pub const MAX_ROOT_BYTES: u64 = 512 * 1024;
/// Largest timestamp metadata file: 64 KiB.
pub const MAX_TIMESTAMP_BYTES: u64 = 64 * 1024;
/// Largest snapshot metadata file: 1 MiB.
pub const MAX_SNAPSHOT_BYTES: u64 = 1024 * 1024;
/// Largest targets (or delegated targets) file when snapshot gives no length: 8 MiB.
pub const MAX_TARGETS_BYTES: u64 = 8 * 1024 * 1024;
/// Most root versions walked in one check: 64.
pub const MAX_ROOT_UPDATES: u64 = 64;
/// Largest image a device accepts, whatever the metadata says: 4 GiB.
pub const MAX_IMAGE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The limits every metadata fetch runs under.
pub fn limits() -> Limits {
    Limits {
        max_root_size: MAX_ROOT_BYTES,
        max_targets_size: MAX_TARGETS_BYTES,
        max_timestamp_size: MAX_TIMESTAMP_BYTES,
        max_snapshot_size: MAX_SNAPSHOT_BYTES,
        max_root_updates: MAX_ROOT_UPDATES,
    }
}

/// Which of the two repositories a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repo {
    /// The TUF image repository (offline targets role).
    Image,
    /// The Uptane-style director (online, per device).
    Director,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Repo::Image => "image repository",
            Repo::Director => "director",
        })
    }
}

/// Why an update was refused. Every variant except `Transport`, `Datastore` and `Config`
/// names an attack or a fault of the repository; the device keeps its current image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No valid signature by a key of the role (arbitrary metadata or image).
    #[error("{repo}: {role} metadata has no valid signature from its keys")]
    Signature {
        /// Repository.
        repo: Repo,
        /// Role name.
        role: String,
    },
    /// Some but not enough valid signatures.
    #[error("{repo}: {role} metadata has {valid} valid signatures, needs {threshold}")]
    Threshold {
        /// Repository.
        repo: Repo,
        /// Role name.
        role: String,
        /// Valid signatures found.
        valid: u64,
        /// Signatures required.
        threshold: u64,
    },
    /// Metadata past its expiry (freeze attack, or the hub stopped re-signing).
    #[error("{repo}: {role} metadata has expired (freeze attack or hub not re-signing)")]
    Expired {
        /// Repository.
        repo: Repo,
        /// Role name.
        role: String,
    },
    /// A version lower than one already trusted (rollback attack).
    #[error("{repo}: {detail} (rollback attack)")]
    MetadataRollback {
        /// Repository.
        repo: Repo,
        /// What went back.
        detail: String,
    },
    /// Metadata not the version or hash snapshot/timestamp promise (mix-and-match).
    #[error("{repo}: {detail} (mix-and-match)")]
    SnapshotMismatch {
        /// Repository.
        repo: Repo,
        /// Which file and how.
        detail: String,
    },
    /// Metadata larger than its limit or than snapshot says (endless data attack).
    #[error("{repo}: {detail} (endless data)")]
    Oversize {
        /// Repository.
        repo: Repo,
        /// Which limit.
        detail: String,
    },
    /// The director's instruction is for another device, or names several targets.
    #[error("director: {0}")]
    DirectorInvalid(String),
    /// The assigned target is for another hardware class.
    #[error("target {target} is for hardware {target_hw:?}, this device is {device_hw:?}")]
    HardwareMismatch {
        /// Target name.
        target: String,
        /// Hardware class named by the target.
        target_hw: Option<String>,
        /// This device's class.
        device_hw: String,
    },
    /// The offered version is not higher than the installed one and the offline targets role did
    /// not allow a downgrade.
    #[error("target {target} has version {offered}, installed is {installed}: downgrade refused")]
    Downgrade {
        /// Target name.
        target: String,
        /// Version installed.
        installed: String,
        /// Version offered.
        offered: String,
    },
    /// The assigned version is the one installed: nothing to do (report it as installed).
    #[error("target {target} (version {version}) is already installed")]
    AlreadyInstalled {
        /// Target name.
        target: String,
        /// The version.
        version: String,
    },
    /// The director names a target the image repository does not list (compromised director).
    #[error("director assigns {0}, which the image repository's targets roles do not list")]
    UnknownTarget(String),
    /// Director and image repository disagree on length or hash (compromised director or
    /// mix-and-match).
    #[error("director and image repository disagree on {target}: {detail}")]
    Disagreement {
        /// Target name.
        target: String,
        /// What differs.
        detail: String,
    },
    /// Image metadata is malformed (missing `custom.moat`, bad version, oversize length).
    #[error("image repository: {0}")]
    ImageInvalid(String),
    /// The pinned root, a URL or the datastore is unusable: fix the device's configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Fetching failed (network, 404, server error); try again later.
    #[error("{repo}: fetch failed: {detail}")]
    Transport {
        /// Repository.
        repo: Repo,
        /// The transport's message.
        detail: String,
    },
    /// The datastore could not be read or written, or the clock went back.
    #[error("{repo}: datastore: {detail}")]
    Datastore {
        /// Repository.
        repo: Repo,
        /// What failed.
        detail: String,
    },
    /// Any other metadata failure reported by the TUF client.
    #[error("{repo}: {detail}")]
    Metadata {
        /// Repository.
        repo: Repo,
        /// tough's message.
        detail: String,
    },
}

/// What the device knows about itself.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    /// The device id (the hub's name for it, the CN of its certificate).
    pub device_id: String,
    /// Hardware class, e.g. `rpi4`.
    pub hardware: String,
    /// Version installed now.
    pub installed: String,
}

/// Trust anchors and where the repositories are.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Pinned image root (a `N.root.json`, shipped with the device).
    pub image_root: Vec<u8>,
    /// Pinned director root.
    pub director_root: Vec<u8>,
    /// Image metadata base, e.g. `https://hub:8443/tuf/metadata/` (trailing slash).
    pub image_metadata_url: Url,
    /// Image targets base, e.g. `https://hub:8443/tuf/targets/`.
    pub image_targets_url: Url,
    /// Director metadata base, e.g. `https://hub:8443/tuf/director/metadata/`.
    pub director_metadata_url: Url,
    /// Persistent directory for trusted metadata (created if missing; subdirectories
    /// `image/` and `director/`). Deleting it resets rollback protection to the pinned roots.
    pub datastore: PathBuf,
}

/// An update both repositories agree on. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedUpdate {
    target: String,
    url_path: String,
    url: Url,
    length: u64,
    sha256: [u8; 32],
    version: String,
    hardware: Option<String>,
    campaign: Option<String>,
    consent: bool,
}

impl ApprovedUpdate {
    /// Target name, e.g. `rpi4/firmware-1.2.0`.
    pub fn target(&self) -> &str {
        &self.target
    }
    /// Path below the targets base URL (`{dir}/{sha256}.{basename}`).
    pub fn url_path(&self) -> &str {
        &self.url_path
    }
    /// Full URL of the image (targets base joined with [`Self::url_path`]).
    pub fn url(&self) -> &Url {
        &self.url
    }
    /// Exact length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }
    /// SHA-256 of the image.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
    /// SHA-256 as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
    /// Version of the image.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// Hardware class the image is for (`None`: any).
    pub fn hardware(&self) -> Option<&str> {
        self.hardware.as_deref()
    }
    /// Campaign named by the director, if any.
    pub fn campaign(&self) -> Option<&str> {
        self.campaign.as_deref()
    }
    /// Whether the director says the device must ask its owner before installing (the
    /// campaign requires consent). Signed by the online director key: it can withhold an
    /// update or make the device ask, never make an unsigned image installable.
    pub fn consent_required(&self) -> bool {
        self.consent
    }
}

fn role_name(role: impl std::fmt::Display) -> String {
    role.to_string()
}

/// Maps tough's errors onto the attack they indicate.
fn classify(repo: Repo, err: tough::error::Error) -> VerifyError {
    use tough::error::Error as E;
    use tough::schema::Error as S;
    let detail = err.to_string();
    let sig = |role: String, source: &S| match source {
        S::SignatureThreshold {
            threshold, valid, ..
        } => {
            if *valid == 0 {
                VerifyError::Signature { repo, role }
            } else {
                VerifyError::Threshold {
                    repo,
                    role,
                    valid: *valid,
                    threshold: *threshold,
                }
            }
        }
        other => VerifyError::Metadata {
            repo,
            detail: format!("{role}: {other}"),
        },
    };
    match &err {
        E::VerifyMetadata { role, source, .. } => sig(role_name(role), source),
        E::VerifyRoleMetadata { role, source, .. } => sig(role.clone(), source),
        E::VerifyTrustedMetadata { .. } | E::ParseTrustedMetadata { .. } => {
            VerifyError::Config(format!("pinned {repo} root: {detail}"))
        }
        E::ExpiredMetadata { role, .. } => VerifyError::Expired {
            repo,
            role: role_name(role),
        },
        E::OlderMetadata { .. }
        | E::OlderSnapshotInTimestamp { .. }
        | E::SnapshotRoleRollback { .. }
        | E::SnapshotRoleMissing { .. } => VerifyError::MetadataRollback { repo, detail },
        E::VersionMismatch { .. } | E::HashMismatch { .. } | E::MetaMissing { .. } => {
            VerifyError::SnapshotMismatch { repo, detail }
        }
        E::MaxSizeExceeded { .. } | E::MaxUpdatesExceeded { .. } => {
            VerifyError::Oversize { repo, detail }
        }
        E::Transport { .. } if exceeded_limit(&err) => VerifyError::Oversize { repo, detail },
        E::Transport { .. } => VerifyError::Transport { repo, detail },
        E::DatastoreCreate { .. }
        | E::DatastoreOpen { .. }
        | E::DatastoreRemove { .. }
        | E::DatastoreSerialize { .. }
        | E::DatastoreInit { .. }
        | E::SystemTimeSteppedBackward { .. } => VerifyError::Datastore { repo, detail },
        _ => VerifyError::Metadata { repo, detail },
    }
}

/// Whether a size limit fired somewhere in the error's chain (tough reports it through the
/// transport error of the stream it cut off).
fn exceeded_limit(err: &tough::error::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if matches!(
            e.downcast_ref::<tough::error::Error>(),
            Some(tough::error::Error::MaxSizeExceeded { .. })
        ) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Picks the root to start from: the pinned one, or the newer one tough stored in `dir`
/// after a verified update (a stored root that does not parse is ignored: the chain from the
/// pinned root re-establishes it).
fn trusted_root(pinned: &[u8], dir: &Path) -> Vec<u8> {
    let version = |b: &[u8]| {
        serde_json::from_slice::<Signed<tough::schema::Root>>(b)
            .ok()
            .map(|r| r.signed.version.get())
    };
    let stored = std::fs::read(dir.join("root.json")).ok();
    match (version(pinned), stored) {
        (Some(p), Some(s)) if version(&s).is_some_and(|v| v > p) => s,
        _ => pinned.to_vec(),
    }
}

async fn load<T: Transport + Clone + 'static>(
    repo: Repo,
    root: &[u8],
    metadata: &Url,
    targets: &Url,
    datastore: &Path,
    transport: &T,
) -> Result<tough::Repository, VerifyError> {
    std::fs::create_dir_all(datastore).map_err(|e| VerifyError::Datastore {
        repo,
        detail: format!("create {}: {e}", datastore.display()),
    })?;
    let root = trusted_root(root, datastore);
    RepositoryLoader::new(&root, metadata.clone(), targets.clone())
        .transport(transport.clone())
        .limits(limits())
        .datastore(datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| classify(repo, e))
}

fn sha256_of(target: &Target) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(target.hashes.sha256.as_ref()).ok()
}

/// Finds `name` where Moat publishes it: `{class}/...` only in the delegated role
/// `hw-{class}` (whose paths must cover it), anything else only in the top-level targets role.
fn find_image_target<'a>(targets: &'a Signed<Targets>, name: &TargetName) -> Option<&'a Target> {
    match name.raw().split_once('/') {
        None => targets.signed.targets.get(name),
        Some((class, _)) => {
            let delegations = targets.signed.delegations.as_ref()?;
            let role = delegations
                .roles
                .iter()
                .find(|r| r.name == hw_role(class))?;
            // Moat delegates exactly `{class}/*` to `hw-{class}`; anything else is not ours.
            let covered = match &role.paths {
                tough::schema::PathSet::Paths(p) => {
                    p.iter().any(|p| p.value() == format!("{class}/*"))
                }
                tough::schema::PathSet::PathHashPrefixes(_) => false,
            };
            if !covered {
                return None;
            }
            role.targets.as_ref()?.signed.targets.get(name)
        }
    }
}

/// Checks both repositories and returns the update this device should install, if any.
///
/// `Ok(None)`: the director assigns nothing to this device (the image repository is then not
/// fetched). Every `Err` means: keep the current image, report the error.
pub async fn verify<T: Transport + Clone + 'static>(
    config: &VerifyConfig,
    device: &DeviceFacts,
    transport: T,
) -> Result<Option<ApprovedUpdate>, VerifyError> {
    let installed = Version::parse(&device.installed)
        .map_err(|e| VerifyError::Config(format!("installed version: {e}")))?;

    // 1. Director: what this device should run.
    let director = load(
        Repo::Director,
        &config.director_root,
        &config.director_metadata_url,
        &config.image_targets_url,
        &config.datastore.join("director"),
        &transport,
    )
    .await?;
    let dtargets = &director.targets().signed;
    if dtargets
        .delegations
        .as_ref()
        .is_some_and(|d| !d.roles.is_empty())
    {
        return Err(VerifyError::DirectorInvalid(
            "director metadata must not delegate".into(),
        ));
    }
    let mut entries = dtargets.targets.iter();
    let Some((name, dtarget)) = entries.next() else {
        return Ok(None);
    };
    if entries.next().is_some() {
        return Err(VerifyError::DirectorInvalid(
            "more than one target assigned to this device".into(),
        ));
    }
    let dcustom: DirectorCustom = moat_custom(&dtarget.custom).ok_or_else(|| {
        VerifyError::DirectorInvalid(format!("target {} lacks custom.moat", name.raw()))
    })?;
    if dcustom.device != device.device_id {
        return Err(VerifyError::DirectorInvalid(format!(
            "instruction is for device {:?}, this is {:?}",
            dcustom.device, device.device_id
        )));
    }
    if dcustom
        .hardware
        .as_deref()
        .is_some_and(|h| h != device.hardware)
    {
        return Err(VerifyError::HardwareMismatch {
            target: name.raw().to_owned(),
            target_hw: dcustom.hardware.clone(),
            device_hw: device.hardware.clone(),
        });
    }

    // 2. Image repository: what the offline targets roles signed.
    let image = load(
        Repo::Image,
        &config.image_root,
        &config.image_metadata_url,
        &config.image_targets_url,
        &config.datastore.join("image"),
        &transport,
    )
    .await?;
    let itarget = find_image_target(image.targets(), name)
        .ok_or_else(|| VerifyError::UnknownTarget(name.raw().to_owned()))?;

    // 3. Director and image agree.
    let isha = sha256_of(itarget)
        .ok_or_else(|| VerifyError::ImageInvalid(format!("{}: no sha256", name.raw())))?;
    if dtarget.length != itarget.length {
        return Err(VerifyError::Disagreement {
            target: name.raw().to_owned(),
            detail: format!(
                "length {} (director) vs {} (image)",
                dtarget.length, itarget.length
            ),
        });
    }
    if sha256_of(dtarget) != Some(isha) {
        return Err(VerifyError::Disagreement {
            target: name.raw().to_owned(),
            detail: "sha256".into(),
        });
    }
    if itarget.length > MAX_IMAGE_BYTES {
        return Err(VerifyError::ImageInvalid(format!(
            "{}: length {} above the device limit {MAX_IMAGE_BYTES}",
            name.raw(),
            itarget.length
        )));
    }

    // 4. Hardware and version, as signed offline.
    let icustom: ImageCustom = moat_custom(&itarget.custom)
        .ok_or_else(|| VerifyError::ImageInvalid(format!("{}: lacks custom.moat", name.raw())))?;
    let class_in_name = name.raw().split_once('/').map(|(c, _)| c);
    if icustom.hardware.as_deref() != class_in_name
        || icustom
            .hardware
            .as_deref()
            .is_some_and(|h| h != device.hardware)
    {
        return Err(VerifyError::HardwareMismatch {
            target: name.raw().to_owned(),
            target_hw: icustom.hardware.clone(),
            device_hw: device.hardware.clone(),
        });
    }
    let offered = Version::parse(&icustom.version)
        .map_err(|e| VerifyError::ImageInvalid(format!("{}: {e}", name.raw())))?;
    if offered == installed {
        return Err(VerifyError::AlreadyInstalled {
            target: name.raw().to_owned(),
            version: icustom.version.clone(),
        });
    }
    if offered < installed && !icustom.downgrade {
        return Err(VerifyError::Downgrade {
            target: name.raw().to_owned(),
            installed: device.installed.clone(),
            offered: icustom.version.clone(),
        });
    }

    let url_path = crate::meta::consistent_target_path(name.raw(), &hex(&isha));
    let url = config
        .image_targets_url
        .join(&url_path)
        .map_err(|e| VerifyError::Config(format!("targets URL: {e}")))?;
    Ok(Some(ApprovedUpdate {
        target: name.raw().to_owned(),
        url_path,
        url,
        length: itarget.length,
        sha256: isha,
        version: icustom.version,
        hardware: icustom.hardware,
        campaign: dcustom.campaign,
        consent: dcustom.consent,
    }))
}

/// Why downloaded bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// More bytes than the signed length (endless data attack): stop reading.
    #[error("image longer than its signed length {length} (endless data)")]
    TooLong {
        /// Signed length.
        length: u64,
    },
    /// The stream ended early.
    #[error("image ended after {received} of {length} bytes")]
    TooShort {
        /// Bytes received.
        received: u64,
        /// Signed length.
        length: u64,
    },
    /// The bytes are not the signed image (arbitrary image attack): delete them.
    #[error("image sha256 {actual} differs from the signed {expected}")]
    HashMismatch {
        /// Signed hash.
        expected: String,
        /// Hash of what arrived.
        actual: String,
    },
}

/// Streams an image through length and SHA-256 checks. For a resumed download, feed the bytes
/// already on disk first, then the rest (HTTP `Range: bytes={received}-`).
#[derive(Clone)]
pub struct TargetCheck {
    update: ApprovedUpdate,
    ctx: digest::Context,
    received: u64,
}

impl std::fmt::Debug for TargetCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetCheck")
            .field("target", &self.update.target)
            .field("received", &self.received)
            .finish()
    }
}

impl TargetCheck {
    /// Starts checking bytes of `update`.
    pub fn new(update: &ApprovedUpdate) -> Self {
        Self {
            update: update.clone(),
            ctx: digest::Context::new(&digest::SHA256),
            received: 0,
        }
    }

    /// Bytes accepted so far (the offset to resume from).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.update.length.saturating_sub(self.received)
    }

    /// Accepts the next chunk; refuses (and accepts nothing of) a chunk that would exceed the
    /// signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), TargetError> {
        let n = chunk.len() as u64;
        if n > self.remaining() {
            return Err(TargetError::TooLong {
                length: self.update.length,
            });
        }
        self.ctx.update(chunk);
        self.received += n;
        Ok(())
    }

    /// Checks length and hash of everything fed.
    pub fn finish(self) -> Result<VerifiedImage, TargetError> {
        if self.received != self.update.length {
            return Err(TargetError::TooShort {
                received: self.received,
                length: self.update.length,
            });
        }
        let actual = self.ctx.finish();
        if actual.as_ref() != self.update.sha256.as_slice() {
            return Err(TargetError::HashMismatch {
                expected: self.update.sha256_hex(),
                actual: hex(actual.as_ref()),
            });
        }
        Ok(VerifiedImage {
            update: self.update,
        })
    }
}

/// Proof that the bytes fed to a [`TargetCheck`] are exactly the approved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    update: ApprovedUpdate,
}

impl VerifiedImage {
    /// The update these bytes belong to.
    pub fn update(&self) -> &ApprovedUpdate {
        &self.update
    }
}
