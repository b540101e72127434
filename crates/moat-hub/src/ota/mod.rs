//! Signed updates on the hub: the TUF image repository and the Uptane-style director
//! (`moat-ota` holds the logic; this module stores, serves and schedules it).
//!
//! Data layout (under the data directory):
//!
//! ```text
//! ota/image/metadata/     {N}.root.json root.json {N}.targets.json {N}.hw-{class}.json
//!                         {N}.snapshot.json timestamp.json         → /tuf/metadata/{file}
//! ota/image/targets/      {dir}/{sha256}.{basename}                → /tuf/targets/{path}
//! ota/director/metadata/  {N}.root.json root.json                  → /tuf/director/metadata/
//! ota/director/devices/   {device}.json (that device's timestamp, snapshot, targets)
//! ota/uploads/            images being uploaded, before their signed metadata arrives
//! secrets/ota/            the five online keys (PKCS#8, 0600; directory 0700)
//! ```
//!
//! [`OtaService`] is the hub-internal handle: `assign` (the director's instruction for one
//! device; campaigns call it), `target`/`targets` lookups, root installation, publishing, and
//! `refresh` (re-signing snapshot and timestamp before half their lifetime, run by
//! [`run_refresh`]). Locking: one `std::sync::Mutex` around the state; file writes happen under
//! it (small files; images are moved with a rename), never across an `.await`.

mod campaign_api;
pub(crate) mod campaigns;
pub(crate) mod reports;
mod rest;
mod serve;
pub(crate) mod signals;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moat_ota::director::{Assignment, DeviceRecord, Director, Instruction};
use moat_ota::image::{ImageRepository, MetadataFile, SignedUpdate, TargetInfo};
use moat_ota::keys::ONLINE_KEY_FILES;
use moat_ota::{OnlineKeys, OnlinePublicKeys};
use moat_types::DeviceId;

pub(crate) use campaign_api::router as campaign_router;
pub(crate) use rest::router;

/// A director target a campaign sets for one device ([`OtaService::assign`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectorTarget<'a> {
    /// The image target's name.
    pub(crate) target: &'a str,
    /// The campaign's id.
    pub(crate) campaign: &'a str,
    /// Whether the device must ask its owner before installing (`consent: required`).
    pub(crate) consent: bool,
}

/// How often the hub checks whether metadata needs re-signing: 10 minutes.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// Largest image the hub accepts in one upload: 4 GiB (the device's own limit,
/// [`moat_ota::verify::MAX_IMAGE_BYTES`]).
pub const MAX_IMAGE_UPLOAD_BYTES: u64 = moat_ota::verify::MAX_IMAGE_BYTES;
/// Most uploads waiting for their metadata at once; older ones are removed first.
pub const MAX_PENDING_UPLOADS: usize = 16;
/// An upload not committed within this time is removed: 1 hour.
pub const UPLOAD_TTL: Duration = Duration::from_secs(3600);
/// Most uploads being received at once (each may write up to [`MAX_IMAGE_UPLOAD_BYTES`] to
/// disk); one more is refused with `429` rather than queued.
pub const MAX_UPLOADS_IN_PROGRESS: usize = 4;
/// Longest an upload's body may pause between two chunks before it is abandoned (its
/// partial file removed and its slot freed): 60 s.
pub const UPLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong in an OTA operation; mapped to HTTP statuses in `rest.rs`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OtaError {
    /// The repository has no root yet.
    #[error("no update repository yet: run `moat ota init` (it signs and installs the roots)")]
    NotInitialised,
    /// Input refused by moat-ota's checks (signatures, versions, expiry, names).
    #[error("{0}")]
    Refused(#[from] moat_ota::Error),
    /// Unknown upload, target or device.
    #[error("{0}")]
    NotFound(String),
    /// Bad request input.
    #[error("{0}")]
    Invalid(String),
    /// Disk trouble (details in the log).
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

struct State {
    image: Option<ImageRepository>,
    director: Option<Director>,
    devices: HashMap<String, DeviceRecord>,
    /// Staged uploads: id → (length, sha256, created).
    uploads: HashMap<String, Upload>,
}

#[derive(Debug, Clone)]
struct Upload {
    length: u64,
    sha256: [u8; 32],
    created: std::time::Instant,
}

/// The hub's update service (see the module docs).
pub(crate) struct OtaService {
    dir: PathBuf,
    keys: OnlineKeys,
    state: Mutex<State>,
    /// Slots for uploads being received ([`MAX_UPLOADS_IN_PROGRESS`]).
    uploading: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for OtaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaService")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn mkdir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// Writes `bytes` to `path` through a temporary file and a rename (readers never see half a
/// file).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path without parent"))?;
    mkdir(dir, 0o700)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path without file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn load_keys(dir: &Path) -> std::io::Result<OnlineKeys> {
    mkdir(dir, 0o700)?;
    let paths: Vec<PathBuf> = ONLINE_KEY_FILES.iter().map(|f| dir.join(f)).collect();
    let present = paths.iter().filter(|p| p.exists()).count();
    let bad = |e: moat_ota::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    if present == 0 {
        let keys = OnlineKeys::generate().map_err(bad)?;
        for (path, key) in paths.iter().zip(keys.as_array()) {
            moat_pki::write_private_file(path, key.pkcs8())?;
        }
        tracing::info!(dir = %dir.display(), "created the online update keys");
        return Ok(keys);
    }
    let mut docs = Vec::with_capacity(5);
    for p in &paths {
        let bytes = std::fs::read(p).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (the online update keys are incomplete; restore them from a \
                     backup, or remove {} and rotate the roots with `moat ota root rotate`)",
                    p.display(),
                    dir.display()
                ),
            )
        })?;
        docs.push(bytes);
    }
    OnlineKeys::from_pkcs8([&docs[0], &docs[1], &docs[2], &docs[3], &docs[4]]).map_err(bad)
}

/// Checks a file name or relative path served from disk: components of letters, digits,
/// `.`, `_`, `-`, none starting with `.`.
pub(crate) fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path
            .split('/')
            .all(|c| moat_ota::meta::valid_component(c, 255))
}

impl OtaService {
    /// Opens (or starts) the repository under `data_dir`: creates the online keys on first use.
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<Arc<Self>> {
        let keys = load_keys(&data_dir.join("secrets").join("ota"))?;
        let dir = data_dir.join("ota");
        for sub in [
            "image/metadata",
            "image/targets",
            "director/metadata",
            "director/devices",
            "uploads",
        ] {
            mkdir(&dir.join(sub), 0o700)?;
        }
        let invalid = |e: moat_ota::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let meta_dir = dir.join("image/metadata");
        let image =
            ImageRepository::load(|f| std::fs::read(meta_dir.join(f)).ok()).map_err(invalid)?;
        let director = match std::fs::read(dir.join("director/metadata/root.json")) {
            Ok(b) => Some(Director::load(&b).map_err(invalid)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut devices = HashMap::new();
        for entry in std::fs::read_dir(dir.join("director/devices"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let bytes = std::fs::read(entry.path())?;
            match serde_json::from_slice::<DeviceRecord>(&bytes) {
                Ok(r) => {
                    devices.insert(id.to_owned(), r);
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "ignoring an unreadable director record");
                }
            }
        }
        // Staged uploads do not survive a restart.
        for entry in std::fs::read_dir(dir.join("uploads"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Arc::new(Self {
            dir,
            keys,
            state: Mutex::new(State {
                image,
                director,
                devices,
                uploads: HashMap::new(),
            }),
            uploading: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS_IN_PROGRESS)),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_image_files(&self, files: &[MetadataFile]) -> std::io::Result<()> {
        // Versioned files first, timestamp.json and root.json last: a reader never sees a
        // timestamp naming a snapshot that is not there yet.
        let (last, first): (Vec<_>, Vec<_>) = files
            .iter()
            .partition(|f| f.name == "timestamp.json" || f.name == "root.json");
        for f in first.into_iter().chain(last) {
            write_atomic(&self.dir.join("image/metadata").join(&f.name), &f.bytes)?;
        }
        Ok(())
    }

    fn store_device(&self, record: &DeviceRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        write_atomic(
            &self
                .dir
                .join("director/devices")
                .join(format!("{}.json", record.device)),
            &bytes,
        )
    }

    /// The online public keys, for the ceremony.
    pub(crate) fn online_keys(&self) -> OnlinePublicKeys {
        self.keys.public()
    }

    /// Whether both roots are installed.
    pub(crate) fn initialised(&self) -> bool {
        let s = self.lock();
        s.image.is_some() && s.director.is_some()
    }

    /// Versions of the installed roots (image, director).
    pub(crate) fn root_versions(&self) -> (Option<u64>, Option<u64>) {
        let s = self.lock();
        (
            s.image.as_ref().map(|i| i.root().signed.version.get()),
            s.director.as_ref().map(|d| d.root().signed.version.get()),
        )
    }

    /// Installs roots: the first ones (with the first targets), or the next versions of
    /// either (with re-signed targets when the targets key changed). Returns the installed
    /// versions (image, director).
    pub(crate) fn install_root(
        &self,
        image_root: Option<&[u8]>,
        director_root: Option<&[u8]>,
        targets: Option<&[u8]>,
    ) -> Result<(u64, u64), OtaError> {
        let now = moat_ota::meta::now();
        let mut s = self.lock();
        // Check everything before storing anything.
        let mut image_files = Vec::new();
        let mut image = s.image.clone();
        match (&mut image, image_root) {
            (None, Some(root)) => {
                let targets = targets.ok_or_else(|| {
                    OtaError::Invalid("the first image root needs the first targets".into())
                })?;
                let (repo, files) = ImageRepository::create(root, targets, &self.keys, now)?;
                image = Some(repo);
                image_files = files;
            }
            (Some(repo), Some(root)) => {
                image_files = repo.rotate_root(root, targets, &self.keys, now)?;
            }
            (None, None) => return Err(OtaError::NotInitialised),
            (Some(_), None) => {
                if targets.is_some() {
                    return Err(OtaError::Invalid(
                        "targets without an image root: publish targets with `moat ota publish`"
                            .into(),
                    ));
                }
            }
        }
        let mut director = s.director.clone();
        let mut director_file = None;
        match (&mut director, director_root) {
            (None, Some(root)) => {
                let (d, file) = Director::create(root, &self.keys, now)?;
                director = Some(d);
                director_file = Some(file);
            }
            (Some(d), Some(root)) => director_file = Some(d.rotate_root(root, &self.keys, now)?),
            (None, None) => return Err(OtaError::NotInitialised),
            (Some(_), None) => {}
        }
        self.store_image_files(&image_files)?;
        if let Some(f) = &director_file {
            let dir = self.dir.join("director/metadata");
            write_atomic(&dir.join(&f.name), &f.bytes)?;
            write_atomic(&dir.join("root.json"), &f.bytes)?;
        }
        let versions = (
            image.as_ref().map_or(0, |i| i.root().signed.version.get()),
            director
                .as_ref()
                .map_or(0, |d| d.root().signed.version.get()),
        );
        s.image = image;
        // A new director root may name new online keys: every device's metadata is re-signed
        // (versions go up) so that devices following the rotation trust it.
        if director_file.is_some()
            && let Some(d) = &director
        {
            let ids: Vec<String> = s.devices.keys().cloned().collect();
            for id in ids {
                if let Some(mut record) = s.devices.get(&id).cloned() {
                    d.refresh(&mut record, &self.keys, now, true)?;
                    self.store_device(&record)?;
                    s.devices.insert(id, record);
                }
            }
        }
        s.director = director;
        Ok(versions)
    }

    /// Path of a staged upload (the REST layer streams into `{path}.part`, then calls
    /// [`OtaService::finish_upload`]).
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        self.dir.join("uploads").join(id)
    }

    /// A slot for one upload being received, or `None` when [`MAX_UPLOADS_IN_PROGRESS`]
    /// are already under way.
    pub(crate) fn upload_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.uploading).try_acquire_owned().ok()
    }

    /// Registers a fully received upload; drops expired and excess ones.
    pub(crate) fn finish_upload(&self, id: &str, length: u64, sha256: [u8; 32]) {
        let mut s = self.lock();
        let now = std::time::Instant::now();
        let expired: Vec<String> = s
            .uploads
            .iter()
            .filter(|(_, u)| now.duration_since(u.created) > UPLOAD_TTL)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            s.uploads.remove(&k);
            let _ = std::fs::remove_file(self.upload_path(&k));
        }
        while s.uploads.len() >= MAX_PENDING_UPLOADS {
            let Some(oldest) = s
                .uploads
                .iter()
                .min_by_key(|(_, u)| u.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            s.uploads.remove(&oldest);
            let _ = std::fs::remove_file(self.upload_path(&oldest));
        }
        s.uploads.insert(
            id.to_owned(),
            Upload {
                length,
                sha256,
                created: now,
            },
        );
    }

    /// Accepts a staged upload as target `name` with the operator's signed metadata.
    pub(crate) fn publish(
        &self,
        upload: &str,
        name: &str,
        update: SignedUpdate,
    ) -> Result<TargetInfo, OtaError> {
        let now = moat_ota::meta::now();
        let mut s = self.lock();
        let staged =
            s.uploads.get(upload).cloned().ok_or_else(|| {
                OtaError::NotFound(format!("upload {upload} not found or expired"))
            })?;
        let mut image = s.image.clone().ok_or(OtaError::NotInitialised)?;
        let (info, files) =
            image.add_target(name, staged.length, &staged.sha256, update, &self.keys, now)?;
        if !safe_relative(&info.path) {
            return Err(OtaError::Invalid(format!("target path {:?}", info.path)));
        }
        let dest = self.dir.join("image/targets").join(&info.path);
        if let Some(parent) = dest.parent() {
            mkdir(parent, 0o700)?;
        }
        std::fs::rename(self.upload_path(upload), &dest)?;
        s.uploads.remove(upload);
        self.store_image_files(&files)?;
        s.image = Some(image);
        Ok(info)
    }

    /// Every target of the image repository.
    pub(crate) fn targets(&self) -> Vec<TargetInfo> {
        self.lock()
            .image
            .as_ref()
            .map(ImageRepository::targets)
            .unwrap_or_default()
    }

    /// One target by name (`{class}/{name}-{version}` or `{name}-{version}`).
    pub(crate) fn target(&self, name: &str) -> Option<TargetInfo> {
        self.lock().image.as_ref()?.target(name)
    }

    /// Signs the director's instruction for `device`: install the target for its campaign
    /// (with the consent flag when the campaign requires consent), or nothing (`None`: e.g.
    /// after a campaign was aborted). Versions of the device's metadata only increase. The
    /// caller audits (campaign actions already are).
    pub(crate) fn assign(
        &self,
        device: &DeviceId,
        target: Option<DirectorTarget<'_>>,
    ) -> Result<(), OtaError> {
        let now = moat_ota::meta::now();
        let mut s = self.lock();
        let director = s.director.clone().ok_or(OtaError::NotInitialised)?;
        let info = match target {
            Some(t) => {
                let info = s
                    .image
                    .as_ref()
                    .and_then(|i| i.target(t.target))
                    .ok_or_else(|| OtaError::NotFound(format!("target {} not found", t.target)))?;
                Some((info, t))
            }
            None => None,
        };
        let previous = s.devices.get(device.as_str());
        let record = director.assign(
            previous,
            device.as_str(),
            info.as_ref()
                .map(|(i, t)| Instruction::new(i).campaign(t.campaign).consent(t.consent)),
            None,
            &self.keys,
            now,
        )?;
        self.store_device(&record)?;
        s.devices.insert(device.as_str().to_owned(), record);
        Ok(())
    }

    /// The director's current instruction for `device`.
    pub(crate) fn assignment(&self, device: &DeviceId) -> Option<Assignment> {
        self.lock()
            .devices
            .get(device.as_str())
            .and_then(|r| r.assignment.clone())
    }

    /// Path of an image metadata file, if it exists.
    pub(crate) fn image_metadata_path(&self, file: &str) -> Option<PathBuf> {
        if !safe_relative(file) || file.contains('/') {
            return None;
        }
        let p = self.dir.join("image/metadata").join(file);
        p.is_file().then_some(p)
    }

    /// Path of a target file (`{dir}/{sha256}.{basename}`), if it exists.
    pub(crate) fn target_path(&self, path: &str) -> Option<PathBuf> {
        if !safe_relative(path) {
            return None;
        }
        let p = self.dir.join("image/targets").join(path);
        p.is_file().then_some(p)
    }

    /// A director root file (`{N}.root.json` or `root.json`), readable by anyone allowed to
    /// read the repository.
    pub(crate) fn director_root(&self, file: &str) -> Option<Vec<u8>> {
        if !(file == "root.json"
            || file
                .strip_suffix(".root.json")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        {
            return None;
        }
        std::fs::read(self.dir.join("director/metadata").join(file)).ok()
    }

    /// `timestamp.json`, `snapshot.json` or `targets.json` of `device`'s director metadata;
    /// a device without a record gets one with no target.
    pub(crate) fn director_file(
        &self,
        device: &DeviceId,
        file: &str,
    ) -> Result<Option<Vec<u8>>, OtaError> {
        if !matches!(file, "timestamp.json" | "snapshot.json" | "targets.json") {
            return Ok(None);
        }
        let now = moat_ota::meta::now();
        let mut s = self.lock();
        if !s.devices.contains_key(device.as_str()) {
            let director = s.director.clone().ok_or(OtaError::NotInitialised)?;
            let record = director.assign(None, device.as_str(), None, None, &self.keys, now)?;
            self.store_device(&record)?;
            s.devices.insert(device.as_str().to_owned(), record);
        }
        Ok(s.devices.get(device.as_str()).and_then(|r| r.file(file)))
    }

    /// Re-signs what is due (or everything, `force`): image snapshot/timestamp and every
    /// device's director metadata. Returns how many documents sets were re-signed.
    pub(crate) fn refresh(&self, force: bool) -> Result<usize, OtaError> {
        let now = moat_ota::meta::now();
        let mut s = self.lock();
        let mut count = 0;
        if let Some(mut image) = s.image.clone() {
            let files = image.refresh(&self.keys, now, force)?;
            if !files.is_empty() {
                self.store_image_files(&files)?;
                s.image = Some(image);
                count += 1;
            }
        }
        if let Some(director) = s.director.clone() {
            let ids: Vec<String> = s.devices.keys().cloned().collect();
            for id in ids {
                let Some(mut record) = s.devices.get(&id).cloned() else {
                    continue;
                };
                if director.refresh(&mut record, &self.keys, now, force)? {
                    self.store_device(&record)?;
                    s.devices.insert(id, record);
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

/// How long before an offline-signed role (root, targets, `hw-*`, the director's root)
/// expires the hub starts warning, once a day: 30 days.
pub const OFFLINE_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

impl OtaService {
    /// When each offline-signed role expires, as `(repository, role, Unix seconds)`:
    /// `image` root, targets and `hw-*` roles, and the `director` root. Empty before the
    /// ceremony.
    pub(crate) fn offline_expiries(&self) -> Vec<(&'static str, String, i64)> {
        let s = self.lock();
        let mut out = Vec::new();
        if let Some(image) = &s.image {
            out.extend(
                image
                    .offline_expiries()
                    .into_iter()
                    .map(|(role, at)| ("image", role, at.as_second())),
            );
        }
        if let Some(director) = &s.director {
            out.push((
                "director",
                "root".to_owned(),
                director.root().signed.expires.as_second(),
            ));
        }
        out
    }

    /// Appends the offline roles' expiry times to a Prometheus exposition (one series per
    /// role; the roles are the operator's hardware classes, at most 256).
    pub(crate) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP moat_ota_offline_metadata_expiry_timestamp_seconds When offline-signed update metadata expires (Unix time); re-sign with the offline keys before.\n# TYPE moat_ota_offline_metadata_expiry_timestamp_seconds gauge"
        );
        for (repository, role, at) in self.offline_expiries() {
            let _ = writeln!(
                out,
                "moat_ota_offline_metadata_expiry_timestamp_seconds{{repository=\"{repository}\",role=\"{role}\"}} {at}"
            );
        }
    }
}

/// The offline roles expiring within [`OFFLINE_EXPIRY_WARNING`] of `now` (Unix seconds)
/// that were not warned about in the last day; records the warning times in `warned`.
fn expiring_soon(
    expiries: Vec<(&'static str, String, i64)>,
    now: i64,
    warned: &mut HashMap<(&'static str, String), i64>,
) -> Vec<(&'static str, String, i64)> {
    let window = i64::try_from(OFFLINE_EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    let mut due = Vec::new();
    for (repository, role, at) in expiries {
        if at - now > window {
            continue;
        }
        let key = (repository, role.clone());
        if warned.get(&key).is_some_and(|last| now - last < 86_400) {
            continue;
        }
        warned.insert(key, now);
        due.push((repository, role, at));
    }
    due
}

/// Re-signs metadata every [`REFRESH_INTERVAL`] until `stop` turns true; audits each run
/// that re-signed something, and warns (once a day per role) when an offline-signed role
/// is within [`OFFLINE_EXPIRY_WARNING`] of expiring.
pub(crate) async fn run_refresh(
    ota: Arc<OtaService>,
    identity: Arc<crate::identity::Identity>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    let mut warned = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = i64::try_from(crate::identity::now_ms() / 1000).unwrap_or(i64::MAX);
        for (repository, role, at) in expiring_soon(ota.offline_expiries(), now, &mut warned) {
            if at <= now {
                tracing::error!(
                    repository,
                    role,
                    expires_unix = at,
                    "offline-signed update metadata has expired: devices refuse every update \
                     until it is re-signed with the offline keys"
                );
            } else {
                tracing::warn!(
                    repository,
                    role,
                    expires_unix = at,
                    days_left = (at - now) / 86_400,
                    "offline-signed update metadata expires soon: re-sign it with the offline \
                     keys (moat ota root rotate, moat ota publish)"
                );
            }
        }
        let svc = ota.clone();
        match tokio::task::spawn_blocking(move || svc.refresh(false)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                let entry = moat_audit::Entry::new(
                    crate::identity::now_ms(),
                    "hub",
                    "ota.resign",
                    "ota:metadata",
                    moat_audit::Outcome::Success,
                )
                .with("sets", n.to_string());
                if let Err(e) = identity.audit_now(entry).await {
                    tracing::warn!(error = %e, "could not audit the OTA re-signing");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "re-signing update metadata failed"),
            Err(e) => tracing::error!(error = %e, "re-signing task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn roles(now: i64) -> Vec<(&'static str, String, i64)> {
        vec![
            ("image", "root".to_owned(), now + 365 * DAY),
            ("image", "targets".to_owned(), now + 10 * DAY),
            ("image", "hw-rpi4".to_owned(), now - DAY),
            ("director", "root".to_owned(), now + 31 * DAY),
        ]
    }

    #[test]
    fn warns_of_roles_within_the_window_once_a_day() {
        let now = 1_800_000_000;
        let mut warned = HashMap::new();
        let due: Vec<String> = expiring_soon(roles(now), now, &mut warned)
            .into_iter()
            .map(|(repository, role, _)| format!("{repository}/{role}"))
            .collect();
        // Within 30 days or already expired; not a year away, not 31 days away.
        assert_eq!(due, ["image/targets", "image/hw-rpi4"]);
        // Ten minutes later: already warned today.
        assert!(expiring_soon(roles(now), now + 600, &mut warned).is_empty());
        // A day later: warned again, and the director's root, now 30 days away, joins.
        let again: Vec<String> = expiring_soon(roles(now), now + DAY, &mut warned)
            .into_iter()
            .map(|(repository, role, _)| format!("{repository}/{role}"))
            .collect();
        assert_eq!(again, ["image/targets", "image/hw-rpi4", "director/root"]);
    }
}
