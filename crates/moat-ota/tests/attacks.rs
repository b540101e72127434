//! The attacks TUF and Uptane defend against, each refused by [`moat_ota::verify`] (what
//! moat-agent runs), plus the happy paths: delegation per hardware class, root rotation,
//! resumed downloads. Repositories are built with the same code the hub and the CLI use and
//! served from memory through a `tough::Transport`.

// Fixtures are built from values these tests control; a failure is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use moat_ota::ceremony::{self, NewTarget, PublishKeys, RootSpec};
use moat_ota::director::{DeviceRecord, Director, Instruction};
use moat_ota::image::{ImageRepository, MetadataFile, TargetInfo};
use moat_ota::meta::{self, DAY, ROOT_LIFETIME, TARGETS_LIFETIME};
use moat_ota::tough::schema::{Hashes, Metafile, Signed, Snapshot, Targets, Timestamp};
use moat_ota::tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use moat_ota::verify::Repo;
use moat_ota::{
    ApprovedUpdate, DeviceFacts, OnlineKeys, SigningKey, TargetCheck, TargetError, VerifyConfig,
    VerifyError,
};
use url::Url;

const BASE: &str = "https://hub.test/tuf/";

#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    Endless,
}

/// URL → body; what a network attacker or a compromised hub serves.
#[derive(Debug, Clone, Default)]
struct Mem(Arc<Mutex<HashMap<String, Body>>>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}

#[moat_ota::tough::async_trait]
impl Transport for Mem {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let body = self.0.lock().unwrap().get(url.as_str()).cloned();
        match body {
            Some(Body::Bytes(b)) => Ok(Box::pin(futures_util::stream::once(
                futures_util::future::ready(Ok(moat_ota::tough::Bytes::from(b))),
            ))),
            Some(Body::Endless) => {
                let chunk = moat_ota::tough::Bytes::from(vec![b' '; 64 * 1024]);
                Ok(Box::pin(
                    futures_util::stream::repeat(chunk).map(Ok::<_, TransportError>),
                ))
            }
            None => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
        }
    }
}

impl Mem {
    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.0
            .lock()
            .unwrap()
            .insert(format!("{BASE}{path}"), Body::Bytes(bytes));
    }
    fn get(&self, path: &str) -> Vec<u8> {
        match self.0.lock().unwrap().get(&format!("{BASE}{path}")) {
            Some(Body::Bytes(b)) => b.clone(),
            _ => panic!("{path} not served"),
        }
    }
    fn endless(&self, path: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(format!("{BASE}{path}"), Body::Endless);
    }
    fn remove(&self, path: &str) {
        self.0.lock().unwrap().remove(&format!("{BASE}{path}"));
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("moat-ota-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hub, an operator and a device, all honest until a test says otherwise.
struct World {
    root_keys: Vec<SigningKey>,
    targets_key: SigningKey,
    hw_keys: HashMap<String, SigningKey>,
    director_root_key: SigningKey,
    online: OnlineKeys,
    image: ImageRepository,
    director: Director,
    records: HashMap<String, DeviceRecord>,
    mem: Mem,
    image_root_v1: Vec<u8>,
    director_root_v1: Vec<u8>,
    datastore: TempDir,
}

fn now() -> jiff::Timestamp {
    meta::now()
}

fn expires(seconds: i64) -> jiff::Timestamp {
    meta::expires_at(now(), seconds).unwrap()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().try_into().unwrap()
}

impl World {
    fn new() -> Self {
        Self::with_root_keys(1, 1)
    }

    fn with_root_keys(n: usize, threshold: u64) -> Self {
        let root_keys: Vec<SigningKey> = (0..n).map(|_| SigningKey::generate().unwrap()).collect();
        let targets_key = SigningKey::generate().unwrap();
        let director_root_key = SigningKey::generate().unwrap();
        let online = OnlineKeys::generate().unwrap();
        let public = online.public();
        let spec = RootSpec {
            version: 1,
            expires: expires(ROOT_LIFETIME),
            root_keys: root_keys.iter().map(|k| k.public().clone()).collect(),
            threshold,
        };
        let signers: Vec<&SigningKey> = root_keys.iter().collect();
        let image_root = ceremony::sign_root(
            ceremony::image_root(&spec, targets_key.public(), &public).unwrap(),
            &signers,
        )
        .unwrap();
        let dspec = RootSpec {
            root_keys: vec![director_root_key.public().clone()],
            threshold: 1,
            ..spec
        };
        let director_root = ceremony::sign_root(
            ceremony::director_root(&dspec, &public).unwrap(),
            &[&director_root_key],
        )
        .unwrap();
        let targets = ceremony::initial_targets(expires(TARGETS_LIFETIME), &targets_key).unwrap();
        let image_root_v1 = meta::to_bytes(&image_root).unwrap();
        let director_root_v1 = meta::to_bytes(&director_root).unwrap();
        let (image, files) = ImageRepository::create(
            &image_root_v1,
            &meta::to_bytes(&targets).unwrap(),
            &online,
            now(),
        )
        .unwrap();
        let (director, dfile) = Director::create(&director_root_v1, &online, now()).unwrap();
        let w = Self {
            root_keys,
            targets_key,
            hw_keys: HashMap::new(),
            director_root_key,
            online,
            image,
            director,
            records: HashMap::new(),
            mem: Mem::default(),
            image_root_v1,
            director_root_v1,
            datastore: TempDir::new(),
        };
        w.serve_image(&files);
        w.mem
            .put(&format!("director/metadata/{}", dfile.name), dfile.bytes);
        w
    }

    fn serve_image(&self, files: &[MetadataFile]) {
        for f in files {
            self.mem
                .put(&format!("metadata/{}", f.name), f.bytes.clone());
        }
    }

    /// The operator signs and the hub accepts a new image.
    fn publish(&mut self, name: &str, version: &str, hw: Option<&str>, data: &[u8]) -> TargetInfo {
        self.publish_with(name, version, hw, data, false)
    }

    fn publish_with(
        &mut self,
        name: &str,
        version: &str,
        hw: Option<&str>,
        data: &[u8],
        downgrade: bool,
    ) -> TargetInfo {
        let hw_key = hw.map(|c| {
            self.hw_keys
                .entry(c.to_owned())
                .or_insert_with(|| SigningKey::generate().unwrap()) as &SigningKey
        });
        let role = hw.and_then(|c| self.image.delegated_role(&meta::hw_role(c)));
        let target = NewTarget {
            name: name.into(),
            version: version.into(),
            hardware: hw.map(str::to_owned),
            length: data.len() as u64,
            sha256: sha256(data),
            downgrade,
        };
        let (tname, update) = ceremony::publish(
            self.image.targets_role(),
            role,
            &target,
            PublishKeys {
                targets: Some(&self.targets_key),
                hardware: hw_key,
            },
            expires(TARGETS_LIFETIME),
        )
        .unwrap();
        let (info, files) = self
            .image
            .add_target(
                &tname,
                target.length,
                &target.sha256,
                update,
                &self.online,
                now(),
            )
            .unwrap();
        self.serve_image(&files);
        self.mem
            .put(&format!("targets/{}", info.path), data.to_vec());
        info
    }

    /// The hub's director assigns `target` to `device` (and serves that device's files).
    fn assign(&mut self, device: &str, target: Option<&TargetInfo>) {
        let record = self
            .director
            .assign(
                self.records.get(device),
                device,
                target.map(|t| Instruction::new(t).campaign("c1")),
                None,
                &self.online,
                now(),
            )
            .unwrap();
        self.serve_director(&record);
        self.records.insert(device.to_owned(), record);
    }

    /// A director (compromised, or with the online keys) names `genuine` for `device` with
    /// other bytes (`sha256`, 7 bytes long), after `previous`, and serves it.
    fn serve_swapped(
        &self,
        device: &str,
        previous: Option<&DeviceRecord>,
        genuine: TargetInfo,
        sha256: String,
    ) -> DeviceRecord {
        let swapped = TargetInfo {
            sha256,
            length: 7,
            ..genuine
        };
        let record = self
            .director
            .assign(
                previous,
                device,
                Some(Instruction::new(&swapped)),
                None,
                &self.online,
                now(),
            )
            .unwrap();
        self.serve_director(&record);
        record
    }

    fn serve_director(&self, record: &DeviceRecord) {
        for f in ["timestamp.json", "snapshot.json", "targets.json"] {
            self.mem
                .put(&format!("director/metadata/{f}"), record.file(f).unwrap());
        }
    }

    fn config(&self) -> VerifyConfig {
        VerifyConfig {
            image_root: self.image_root_v1.clone(),
            director_root: self.director_root_v1.clone(),
            image_metadata_url: Url::parse(&format!("{BASE}metadata/")).unwrap(),
            image_targets_url: Url::parse(&format!("{BASE}targets/")).unwrap(),
            director_metadata_url: Url::parse(&format!("{BASE}director/metadata/")).unwrap(),
            datastore: self.datastore.0.clone(),
        }
    }

    async fn verify(
        &self,
        device: &str,
        hw: &str,
        installed: &str,
    ) -> Result<Option<ApprovedUpdate>, VerifyError> {
        let facts = DeviceFacts {
            device_id: device.into(),
            hardware: hw.into(),
            installed: installed.into(),
        };
        moat_ota::verify(&self.config(), &facts, self.mem.clone()).await
    }

    /// Re-signs snapshot and timestamp over `targets` with the online keys, as an attacker
    /// who stole them would; serves all three.
    fn forge_with_online_keys(&self, targets: &Signed<Targets>) {
        let tv = targets.signed.version;
        self.mem.put(
            &format!("metadata/{tv}.targets.json"),
            meta::to_bytes(targets).unwrap(),
        );
        let old_ts: Signed<Timestamp> =
            serde_json::from_slice(&self.mem.get("metadata/timestamp.json")).unwrap();
        let sv = old_ts.signed.meta["snapshot.json"].version.get() + 1;
        let mut s = Snapshot::new(meta::SPEC_VERSION.into(), meta::nz(sv), expires(DAY));
        s.meta
            .insert("targets.json".into(), metafile(tv.get(), None));
        for (name, role) in self
            .image
            .targets_role()
            .signed
            .delegations
            .iter()
            .flat_map(|d| d.roles.iter().map(|r| (r.name.clone(), r)))
        {
            let _ = role;
            if let Some(r) = self.image.delegated_role(&name) {
                s.meta.insert(
                    format!("{name}.json"),
                    metafile(r.signed.version.get(), None),
                );
            }
        }
        let s = meta::sign(s, &[&self.online.image_snapshot]).unwrap();
        let sb = meta::to_bytes(&s).unwrap();
        self.mem
            .put(&format!("metadata/{sv}.snapshot.json"), sb.clone());
        let mut t = Timestamp::new(
            meta::SPEC_VERSION.into(),
            meta::nz(old_ts.signed.version.get() + 1),
            expires(DAY),
        );
        t.meta
            .insert("snapshot.json".into(), metafile(sv, Some(&sb)));
        let t = meta::sign(t, &[&self.online.image_timestamp]).unwrap();
        self.mem
            .put("metadata/timestamp.json", meta::to_bytes(&t).unwrap());
    }
}

fn metafile(version: u64, bytes: Option<&[u8]>) -> Metafile {
    Metafile {
        length: bytes.map(|b| b.len() as u64),
        hashes: bytes.map(|b| Hashes {
            sha256: sha256(b).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: meta::nz(version),
        _extra: HashMap::new(),
    }
}

fn check_bytes(update: &ApprovedUpdate, data: &[u8]) -> Result<(), TargetError> {
    let mut c = TargetCheck::new(update);
    c.update(data)?;
    c.finish().map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Happy paths

#[tokio::test]
async fn happy_path_delegated_hardware_target_is_approved_and_resumes() {
    let mut w = World::new();
    let image = b"firmware for rpi4, version 2".repeat(1000);
    let t = w.publish("fw", "2.0.0", Some("rpi4"), &image);
    assert_eq!(t.name, "rpi4/fw-2.0.0");
    assert_eq!(t.role, "hw-rpi4");
    // Nothing assigned yet: nothing to do.
    w.assign("dev-1", None);
    assert_eq!(w.verify("dev-1", "rpi4", "1.0.0").await.unwrap(), None);
    w.assign("dev-1", Some(&t));
    let u = w
        .verify("dev-1", "rpi4", "1.0.0")
        .await
        .unwrap()
        .expect("an update");
    assert_eq!(u.target(), "rpi4/fw-2.0.0");
    assert_eq!(u.version(), "2.0.0");
    assert_eq!(u.campaign(), Some("c1"));
    assert_eq!(u.hardware(), Some("rpi4"));
    assert!(!u.consent_required(), "no campaign asked for consent");
    assert_eq!(u.url_path(), t.path);
    assert_eq!(u.url().as_str(), format!("{BASE}targets/{}", t.path));
    // The download, interrupted after 1000 bytes and resumed: feed what is on disk, then the rest.
    let served = w.mem.get(&format!("targets/{}", u.url_path()));
    let mut check = TargetCheck::new(&u);
    check.update(&served[..1000]).unwrap();
    assert_eq!(check.received(), 1000);
    let mut resumed = TargetCheck::new(&u);
    resumed
        .update(&served[..check.received() as usize])
        .unwrap();
    resumed.update(&served[1000..]).unwrap();
    let verified = resumed.finish().unwrap();
    assert_eq!(verified.update().target(), "rpi4/fw-2.0.0");
    // The same version installed: nothing to do, said so.
    assert!(matches!(
        w.verify("dev-1", "rpi4", "2.0.0").await,
        Err(VerifyError::AlreadyInstalled { .. })
    ));
}

#[tokio::test]
async fn happy_path_any_hardware_target_and_second_class() {
    let mut w = World::new();
    let a = w.publish("agent", "1.1.0", None, b"any hardware");
    let b = w.publish("fw", "3.0.0", Some("x86"), b"x86 image");
    let c = w.publish("fw", "3.0.1", Some("x86"), b"x86 image 2");
    assert_eq!(a.role, "targets");
    assert_eq!((b.role.as_str(), c.role.as_str()), ("hw-x86", "hw-x86"));
    assert_eq!(w.image.targets().len(), 3);
    w.assign("d", Some(&a));
    let u = w.verify("d", "rpi4", "1.0.0").await.unwrap().unwrap();
    assert_eq!(u.target(), "agent-1.1.0");
    check_bytes(&u, b"any hardware").unwrap();
    w.assign("d", Some(&c));
    let u = w.verify("d", "x86", "3.0.0").await.unwrap().unwrap();
    check_bytes(&u, b"x86 image 2").unwrap();
}

#[tokio::test]
async fn happy_path_the_directors_consent_flag_reaches_the_device() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"needs a yes");
    let record = w
        .director
        .assign(
            w.records.get("d"),
            "d",
            Some(Instruction::new(&t).campaign("9").consent(true)),
            None,
            &w.online,
            now(),
        )
        .unwrap();
    assert!(record.assignment.as_ref().unwrap().consent);
    w.serve_director(&record);
    w.records.insert("d".into(), record);
    let u = w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    assert!(u.consent_required());
    assert_eq!(u.campaign(), Some("9"));
    // The next instruction without consent clears it.
    w.assign("d", Some(&t));
    let u = w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    assert!(!u.consent_required());
}

#[tokio::test]
async fn happy_path_root_rotation_with_new_root_keys_is_followed() {
    let mut w = World::with_root_keys(2, 2);
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    // Rotate to root v2 with a fresh pair of root keys, signed by old and new.
    let new_keys: Vec<SigningKey> = (0..2).map(|_| SigningKey::generate().unwrap()).collect();
    let spec = RootSpec {
        version: 2,
        expires: expires(ROOT_LIFETIME),
        root_keys: new_keys.iter().map(|k| k.public().clone()).collect(),
        threshold: 2,
    };
    let root = ceremony::image_root(&spec, w.targets_key.public(), &w.online.public()).unwrap();
    let signers: Vec<&SigningKey> = w.root_keys.iter().chain(new_keys.iter()).collect();
    let root = ceremony::sign_root(root, &signers).unwrap();
    let files = w
        .image
        .rotate_root(&meta::to_bytes(&root).unwrap(), None, &w.online, now())
        .unwrap();
    w.serve_image(&files);
    let t3 = w.publish("fw", "3.0.0", None, b"v3");
    w.assign("d", Some(&t3));
    let u = w.verify("d", "any", "2.0.0").await.unwrap().unwrap();
    assert_eq!(u.version(), "3.0.0");
}

#[tokio::test]
async fn happy_path_downgrade_allowed_only_when_signed_offline() {
    let mut w = World::new();
    let t = w.publish_with("fw", "1.0.0", None, b"old but good", true);
    w.assign("d", Some(&t));
    let u = w.verify("d", "any", "2.0.0").await.unwrap().unwrap();
    assert_eq!(u.version(), "1.0.0");
}

// ---------------------------------------------------------------------------------------------
// Attacks

#[tokio::test]
async fn arbitrary_image_with_bad_signature_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"genuine");
    w.assign("d", Some(&t));
    // The attacker replaces the targets metadata (same version, their own target and key).
    let attacker = SigningKey::generate().unwrap();
    let mut forged = w.image.targets_role().signed.clone();
    for target in forged.targets.values_mut() {
        target.hashes.sha256 = sha256(b"malware").to_vec().into();
        target.length = 7;
    }
    let forged = meta::sign(forged, &[&attacker]).unwrap();
    let v = forged.signed.version;
    w.mem.put(
        &format!("metadata/{v}.targets.json"),
        meta::to_bytes(&forged).unwrap(),
    );
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Signature {
                repo: Repo::Image,
                ..
            }
        ),
        "{err}"
    );
    // And bytes that are not the signed image never pass the download check.
    let mut honest = World::new();
    let t = honest.publish("fw", "2.0.0", None, b"genuine");
    honest.assign("d", Some(&t));
    let u = honest.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    assert!(matches!(
        check_bytes(&u, b"GENUINE"),
        Err(TargetError::HashMismatch { .. })
    ));
}

#[tokio::test]
async fn too_few_signatures_on_a_new_root_are_refused() {
    let mut w = World::with_root_keys(2, 2);
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    // One stolen root key signs a root v2 that hands the targets role to the attacker.
    let attacker = SigningKey::generate().unwrap();
    let spec = RootSpec {
        version: 2,
        expires: expires(ROOT_LIFETIME),
        root_keys: vec![w.root_keys[0].public().clone(), attacker.public().clone()],
        threshold: 1,
    };
    let root = ceremony::image_root(&spec, attacker.public(), &w.online.public()).unwrap();
    let root = ceremony::sign_root(root, &[&w.root_keys[0], &attacker]).unwrap();
    // The hub refuses it...
    assert!(
        w.image
            .clone()
            .rotate_root(&meta::to_bytes(&root).unwrap(), None, &w.online, now())
            .is_err()
    );
    // ...and a device served it directly refuses it too.
    w.mem
        .put("metadata/2.root.json", meta::to_bytes(&root).unwrap());
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Threshold {
                repo: Repo::Image,
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rollback_to_older_metadata_is_refused() {
    let mut w = World::new();
    let t1 = w.publish("fw", "2.0.0", None, b"v2");
    let old_timestamp = w.mem.get("metadata/timestamp.json");
    let t2 = w.publish("fw", "3.0.0", None, b"v3");
    w.assign("d", Some(&t2));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    // Replay the older (validly signed, unexpired) timestamp that still lists version 2.
    w.mem.put("metadata/timestamp.json", old_timestamp);
    w.assign("d", Some(&t1));
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::MetadataRollback {
                repo: Repo::Image,
                ..
            }
        ),
        "{err}"
    );
    // The director's metadata cannot be rolled back either.
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", None);
    let old = w.records["d"].clone();
    w.assign("d", Some(&t));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    w.serve_director(&old);
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::MetadataRollback {
                repo: Repo::Director,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rollback_to_older_image_version_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "1.9.9", Some("rpi4"), b"vulnerable old build");
    // A compromised hub (director keys and all) assigns the old image.
    w.assign("d", Some(&t));
    let err = w.verify("d", "rpi4", "2.0.0").await.unwrap_err();
    assert!(matches!(err, VerifyError::Downgrade { .. }), "{err}");
}

#[tokio::test]
async fn freeze_attack_with_expired_timestamp_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    // The attacker keeps serving metadata signed two days ago (timestamp lifetime one day).
    let past = meta::expires_at(now(), -2 * DAY).unwrap();
    let files = w.image.refresh(&w.online, past, true).unwrap();
    w.serve_image(&files);
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Expired { repo: Repo::Image, ref role } if role == "timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn mix_and_match_snapshot_mismatch_is_refused() {
    let mut w = World::new();
    w.publish("fw", "2.0.0", None, b"v2");
    let t = w.publish("fw", "3.0.0", None, b"v3");
    w.assign("d", Some(&t));
    // Serve the previous targets (validly signed) where snapshot promises the current version.
    let current = w.image.targets_role().signed.version.get();
    let older = w.mem.get(&format!("metadata/{}.targets.json", current - 1));
    w.mem
        .put(&format!("metadata/{current}.targets.json"), older);
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::SnapshotMismatch {
                repo: Repo::Image,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn endless_data_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    // An endless timestamp stream: the client stops at its limit.
    w.mem.endless("metadata/timestamp.json");
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Oversize {
                repo: Repo::Image,
                ..
            }
        ),
        "{err}"
    );
    w.mem.endless("director/metadata/timestamp.json");
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Oversize {
                repo: Repo::Director,
                ..
            }
        ),
        "{err}"
    );
    // An endless image: not one byte past the signed length is accepted.
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    let u = w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    let mut c = TargetCheck::new(&u);
    c.update(b"v2").unwrap();
    assert_eq!(c.update(b"x"), Err(TargetError::TooLong { length: 2 }));
}

#[tokio::test]
async fn wrong_image_for_the_hardware_class_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", Some("rpi4"), b"rpi4 image");
    w.assign("d", Some(&t));
    let err = w.verify("d", "rpi3", "1.0.0").await.unwrap_err();
    assert!(matches!(err, VerifyError::HardwareMismatch { .. }), "{err}");
    // A compromised director that vouches for the wrong class is caught by the image custom.
    let record = w
        .director
        .assign(
            w.records.get("d"),
            "d",
            Some(Instruction::new(&t)),
            Some("rpi3"),
            &w.online,
            now(),
        )
        .unwrap();
    w.serve_director(&record);
    let err = w.verify("d", "rpi3", "1.0.0").await.unwrap_err();
    assert!(matches!(err, VerifyError::HardwareMismatch { .. }), "{err}");
}

#[tokio::test]
async fn compromised_director_alone_is_refused() {
    let mut w = World::new();
    let genuine = w.publish("fw", "2.0.0", None, b"genuine");
    // With the director's online keys the attacker assigns an image the targets role never
    // signed...
    let evil = TargetInfo {
        name: "fw-9.0.0".into(),
        image: "fw".into(),
        version: "9.0.0".into(),
        hardware: None,
        downgrade: false,
        length: 7,
        sha256: moat_ota::keys::hex(&sha256(b"malware")),
        path: String::new(),
        role: "targets".into(),
    };
    let record = w
        .director
        .assign(
            None,
            "d",
            Some(Instruction::new(&evil)),
            None,
            &w.online,
            now(),
        )
        .unwrap();
    w.serve_director(&record);
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownTarget(ref n) if n == "fw-9.0.0"),
        "{err}"
    );
    // ...or a signed name with other bytes.
    let record = w.serve_swapped("d", Some(&record), genuine, evil.sha256.clone());
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(matches!(err, VerifyError::Disagreement { .. }), "{err}");
    // And an instruction signed for another device does not apply here.
    let record = w
        .director
        .assign(Some(&record), "other", None, None, &w.online, now())
        .unwrap();
    let mut other = w
        .director
        .assign(
            Some(&record),
            "other",
            Some(Instruction::new(&evil)),
            None,
            &w.online,
            now(),
        )
        .unwrap();
    other.device = "d".into();
    w.serve_director(&other);
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(matches!(err, VerifyError::DirectorInvalid(_)), "{err}");
}

#[tokio::test]
async fn compromised_online_keys_alone_are_refused() {
    let mut w = World::new();
    let genuine = w.publish("fw", "2.0.0", None, b"genuine");
    w.assign("d", Some(&genuine));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    // Every online key (image snapshot and timestamp, all director keys) is stolen; the
    // attacker lists malware under a new targets version signed with a key of their own.
    let attacker = SigningKey::generate().unwrap();
    let mut forged = w.image.targets_role().signed.clone();
    forged.version = meta::nz(forged.version.get() + 1);
    for target in forged.targets.values_mut() {
        target.hashes.sha256 = sha256(b"malware").to_vec().into();
        target.length = 7;
    }
    let forged = meta::sign(forged, &[&attacker]).unwrap();
    w.forge_with_online_keys(&forged);
    w.serve_swapped(
        "d",
        w.records.get("d"),
        genuine,
        moat_ota::keys::hex(&sha256(b"malware")),
    );
    let err = w.verify("d", "any", "1.0.0").await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature { repo: Repo::Image, ref role } if role == "targets"),
        "{err}"
    );
}

#[tokio::test]
async fn revoked_targets_key_after_rotation_is_refused() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    // The targets key leaked: the operator rotates the root to a new targets key and
    // re-signs targets with it.
    let old_targets_key = std::mem::replace(&mut w.targets_key, SigningKey::generate().unwrap());
    let spec = RootSpec {
        version: 2,
        expires: expires(ROOT_LIFETIME),
        root_keys: w.root_keys.iter().map(|k| k.public().clone()).collect(),
        threshold: 1,
    };
    let root = ceremony::image_root(&spec, w.targets_key.public(), &w.online.public()).unwrap();
    let signers: Vec<&SigningKey> = w.root_keys.iter().collect();
    let root = ceremony::sign_root(root, &signers).unwrap();
    let targets = ceremony::resign_targets(
        w.image.targets_role(),
        expires(TARGETS_LIFETIME),
        &w.targets_key,
    )
    .unwrap();
    let files = w
        .image
        .rotate_root(
            &meta::to_bytes(&root).unwrap(),
            Some(&meta::to_bytes(&targets).unwrap()),
            &w.online,
            now(),
        )
        .unwrap();
    w.serve_image(&files);
    let t3 = w.publish("fw", "3.0.0", None, b"v3");
    w.assign("d", Some(&t3));
    w.verify("d", "any", "2.0.0").await.unwrap().unwrap();
    // The thief signs targets with the old key (and has the online keys); the hub would refuse
    // it, and so does the device, even when the new root is withheld from it.
    let mut forged = w.image.targets_role().signed.clone();
    forged.version = meta::nz(forged.version.get() + 1);
    for target in forged.targets.values_mut() {
        target.hashes.sha256 = sha256(b"malware").to_vec().into();
        target.length = 7;
    }
    let forged = meta::sign(forged, &[&old_targets_key]).unwrap();
    w.forge_with_online_keys(&forged);
    w.mem.remove("metadata/2.root.json");
    w.serve_swapped(
        "d",
        w.records.get("d"),
        t3,
        moat_ota::keys::hex(&sha256(b"malware")),
    );
    let err = w.verify("d", "any", "2.0.0").await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature { repo: Repo::Image, ref role } if role == "targets"),
        "{err}"
    );
}

#[tokio::test]
async fn hub_refuses_metadata_the_offline_keys_did_not_sign() {
    let mut w = World::new();
    w.publish("fw", "2.0.0", None, b"v2");
    let attacker = SigningKey::generate().unwrap();
    let target = NewTarget {
        name: "fw".into(),
        version: "3.0.0".into(),
        hardware: None,
        length: 2,
        sha256: sha256(b"v3"),
        downgrade: false,
    };
    let (name, update) = ceremony::publish(
        w.image.targets_role(),
        None,
        &target,
        PublishKeys {
            targets: Some(&attacker),
            hardware: None,
        },
        expires(TARGETS_LIFETIME),
    )
    .unwrap();
    let err = w
        .image
        .add_target(&name, 2, &sha256(b"v3"), update, &w.online, now())
        .unwrap_err();
    assert!(matches!(err, moat_ota::Error::Signature(_)), "{err}");
    // A replayed older targets version is refused too.
    let (name, mut update) = ceremony::publish(
        w.image.targets_role(),
        None,
        &target,
        PublishKeys {
            targets: Some(&w.targets_key),
            hardware: None,
        },
        expires(TARGETS_LIFETIME),
    )
    .unwrap();
    if let Some(t) = update.targets.as_mut() {
        t.signed.version = meta::nz(1);
        *t = meta::sign(t.signed.clone(), &[&w.targets_key]).unwrap();
    }
    let err = w
        .image
        .add_target(&name, 2, &sha256(b"v3"), update, &w.online, now())
        .unwrap_err();
    assert!(matches!(err, moat_ota::Error::Version(_)), "{err}");
    // And the image bytes must be the signed ones.
    let (name, update) = ceremony::publish(
        w.image.targets_role(),
        None,
        &target,
        PublishKeys {
            targets: Some(&w.targets_key),
            hardware: None,
        },
        expires(TARGETS_LIFETIME),
    )
    .unwrap();
    let err = w
        .image
        .add_target(&name, 2, &sha256(b"v4"), update, &w.online, now())
        .unwrap_err();
    assert!(matches!(err, moat_ota::Error::Conflict(_)), "{err}");
    // A published target never changes its bytes.
    let again = NewTarget {
        version: "2.0.0".into(),
        sha256: sha256(b"other"),
        length: 5,
        ..target
    };
    let (name, update) = ceremony::publish(
        w.image.targets_role(),
        None,
        &again,
        PublishKeys {
            targets: Some(&w.targets_key),
            hardware: None,
        },
        expires(TARGETS_LIFETIME),
    )
    .unwrap();
    let err = w
        .image
        .add_target(&name, 5, &sha256(b"other"), update, &w.online, now())
        .unwrap_err();
    assert!(matches!(err, moat_ota::Error::Conflict(_)), "{err}");
    let _ = &w.director_root_key;
}

#[tokio::test]
async fn happy_path_online_resigning_keeps_devices_fresh() {
    let mut w = World::new();
    let t = w.publish("fw", "2.0.0", None, b"v2");
    w.assign("d", Some(&t));
    w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    // Nothing is due an hour later...
    let soon = meta::expires_at(now(), 3600).unwrap();
    assert!(w.image.refresh(&w.online, soon, false).unwrap().is_empty());
    let mut record = w.records["d"].clone();
    assert!(
        !w.director
            .refresh(&mut record, &w.online, soon, false)
            .unwrap()
    );
    // ...but past half the timestamp's lifetime both are re-signed, versions going up.
    let later = meta::expires_at(now(), 13 * 3600).unwrap();
    let before = w.image.timestamp().signed.version;
    let files = w.image.refresh(&w.online, later, false).unwrap();
    assert!(files.iter().any(|f| f.name == "timestamp.json"));
    assert!(w.image.timestamp().signed.version > before);
    w.serve_image(&files);
    let old_ts = record.timestamp.signed.version;
    assert!(
        w.director
            .refresh(&mut record, &w.online, later, false)
            .unwrap()
    );
    assert!(record.timestamp.signed.version > old_ts);
    w.serve_director(&record);
    w.records.insert("d".into(), record);
    let u = w.verify("d", "any", "1.0.0").await.unwrap().unwrap();
    assert_eq!(u.target(), "fw-2.0.0");
}
