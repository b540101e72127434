//! Entry points for the cargo-fuzz targets `ota_report`, `ota_upload`, `ota_version`,
//! `ota_custom` and `ota_campaign` in `/fuzz` (feature `fuzzing`), kept in the crate so that each target is a
//! three-line shim and the regression tests below run the same code. They panic only when a
//! promise of the parsers is broken: a limit that does not hold, a value that does not survive
//! re-serialising, an order that is not total, metadata accepted that the hub could not load
//! back.
//!
//! `ota_upload` runs against a small image repository and director built once with the
//! ceremony's own functions from fixed keys and a fixed clock ([`Fixture`]), so that the
//! committed seeds (valid uploads, see `regenerate_seeds`) stay valid in every run.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::OnceLock;

use tough::schema::{Root, Signed, Targets};

use crate::Version;
use crate::ceremony::{self, NewTarget, PublishKeys, RootSpec};
use crate::director::Director;
use crate::image::{ImageRepository, MAX_DELEGATED_ROLES, MAX_TARGETS, MetadataFile, SignedUpdate};
use crate::keys::{OnlineKeys, SigningKey, hex};
use crate::meta::{
    self, DirectorCustom, ImageCustom, MAX_TARGET_NAME_LEN, ROOT_LIFETIME, TARGETS_LIFETIME,
    moat_custom,
};
use crate::report::{MAX_FIELD_LEN, MAX_INVENTORY_PACKAGES, parse_inventory, parse_status};

// ---------------------------------------------------------------------------------------------
// ota_report

/// A device's MQTT payload read as a status report and as an inventory. What parses is within
/// the limits and parses again to the same value after re-serialising.
pub fn report(data: &[u8]) {
    if let Ok(r) = parse_status(data) {
        assert!(r.progress <= 100);
        for (s, max) in [
            (&r.target, crate::campaign::MAX_TARGET_NAME_LEN),
            (&r.version, MAX_FIELD_LEN),
            (&r.error, crate::campaign::MAX_ERROR_LEN),
        ] {
            assert!(s.as_ref().is_none_or(|s| s.len() <= max));
        }
        assert!(r.target.as_ref().is_none_or(|t| !t.is_empty()));
        assert!(r.version.as_ref().is_none_or(|v| !v.is_empty()));
        let again = serde_json::to_vec(&r).expect("a status report serialises");
        assert_eq!(parse_status(&again), Ok(r), "re-serialised status report");
    }
    if let Ok(i) = parse_inventory(data) {
        assert!(i.packages.len() <= MAX_INVENTORY_PACKAGES);
        for s in [&i.hardware, &i.installed] {
            assert!(!s.is_empty() && s.len() <= MAX_FIELD_LEN);
        }
        for p in &i.packages {
            for s in [&p.name, &p.version, &p.purl] {
                assert!(!s.is_empty() && s.len() <= MAX_FIELD_LEN);
            }
            assert!(p.purl.starts_with("pkg:"));
        }
        let again = serde_json::to_vec(&i).expect("an inventory serialises");
        assert_eq!(parse_inventory(&again), Ok(i), "re-serialised inventory");
    }
}

// ---------------------------------------------------------------------------------------------
// ota_version

/// Up to three versions separated by `\n`: each parses or not; `parse(display(v)) == v`;
/// the order is antisymmetric, transitive and agrees with `==`.
pub fn version(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vs: Vec<Version> = text
        .splitn(3, '\n')
        .filter_map(|s| Version::parse(s).ok())
        .collect();
    for v in &vs {
        assert!(v.as_str().len() <= crate::version::MAX_VERSION_LEN);
        assert_eq!(Version::parse(&v.to_string()).as_ref(), Ok(v));
        assert_eq!(v.cmp(v), Ordering::Equal);
    }
    for a in &vs {
        for b in &vs {
            let ab = a.cmp(b);
            assert_eq!(ab, b.cmp(a).reverse(), "{a} vs {b}: not antisymmetric");
            assert_eq!(
                ab == Ordering::Equal,
                a == b,
                "{a} vs {b}: Ord and Eq disagree"
            );
            assert_eq!(a.partial_cmp(b), Some(ab));
            for c in &vs {
                if a <= b && b <= c {
                    assert!(a <= c, "{a} <= {b} <= {c} but not {a} <= {c}");
                }
                if a == b && b == c {
                    assert!(a == c);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ota_custom

/// Arbitrary JSON as `custom.moat` of an image target and of a director target (as the device
/// reads them in `verify`), and as a whole TUF target entry. What parses survives
/// re-serialising; an image custom yields a target name within the limits or an error.
pub fn custom(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let map = HashMap::from([("moat".to_owned(), value.clone())]);
    if let Some(c) = moat_custom::<ImageCustom>(&map) {
        let again = meta::custom_map(&c).expect("image custom serialises");
        assert_eq!(moat_custom::<ImageCustom>(&again).as_ref(), Some(&c));
        if let Ok(name) = meta::target_name(&c.name, &c.version, c.hardware.as_deref()) {
            assert!(name.len() <= MAX_TARGET_NAME_LEN);
            assert!(Version::parse(&c.version).is_ok());
            assert_eq!(name.split_once('/').map(|(c, _)| c), c.hardware.as_deref());
            let path = meta::consistent_target_path(&name, &"0".repeat(64));
            assert!(path.len() == name.len() + 65);
            assert!(tough::TargetName::new(name).is_ok());
        }
    }
    if let Some(c) = moat_custom::<DirectorCustom>(&map) {
        let again = meta::custom_map(&c).expect("director custom serialises");
        assert_eq!(moat_custom::<DirectorCustom>(&again).as_ref(), Some(&c));
    }
    if let Ok(t) = serde_json::from_value::<tough::schema::Target>(value) {
        let _ = moat_custom::<ImageCustom>(&t.custom);
        let _ = moat_custom::<DirectorCustom>(&t.custom);
    }
}

// ---------------------------------------------------------------------------------------------
// ota_campaign

/// Monday 2026-11-23 00:00 UTC, when the `ota_campaign` campaign is created.
const MONDAY_MS: u64 = 1_795_392_000_000;
/// Devices in the `ota_campaign` group.
const CAMPAIGN_DEVICES: usize = 20;

/// An operator's campaign spec (`POST /api/v1/ota/campaigns`, first line) run over twenty
/// devices with the device status reports of the following lines (first byte: which device
/// and how many minutes pass, or an operator's operation; the rest: the MQTT payload). No
/// panic; a spec that validates re-serialises to the same spec and always makes a campaign;
/// every wave's counts add up, every device stays in its wave.
pub fn campaign(data: &[u8]) {
    use crate::campaign::{
        Campaign, CampaignSpec, DeviceReport, MAX_WAVES, MAX_WINDOWS, TimeOfDay,
    };
    use moat_types::DeviceId;
    let mut lines = data.split(|&b| b == b'\n');
    let Some(Ok(spec)) = lines.next().map(serde_json::from_slice::<CampaignSpec>) else {
        return;
    };
    for w in &spec.windows {
        for t in [w.start, w.end] {
            assert!(t.minutes() <= 24 * 60);
            assert_eq!(TimeOfDay::parse(&t.to_string()).ok(), Some(t));
        }
    }
    if spec.validate().is_err() {
        return;
    }
    assert!(spec.waves.len() <= MAX_WAVES && spec.windows.len() <= MAX_WINDOWS);
    assert_eq!(spec.waves.last(), Some(&100));
    let again = serde_json::to_vec(&spec).expect("a spec serialises");
    assert_eq!(
        serde_json::from_slice::<CampaignSpec>(&again).ok().as_ref(),
        Some(&spec)
    );
    let waves = spec.waves.len();
    let devices: Vec<DeviceId> = (0..CAMPAIGN_DEVICES)
        .map(|i| DeviceId::parse(&format!("dev-{i:02}")).expect("a device id"))
        .collect();
    let mut c = Campaign::new(7, spec, devices.clone(), MONDAY_MS).expect("a valid spec");
    let signals = std::collections::BTreeMap::new();
    let mut now = MONDAY_MS;
    let _ = c.start(now);
    for line in lines.take(64) {
        let Some((&op, payload)) = line.split_first() else {
            continue;
        };
        now += u64::from(op) * 7 * 60_000;
        let _ = match op {
            0xf0 => c.pause(now, "fuzz").map(|_| ()),
            0xf1 => c.resume(now, &signals).map(|_| ()),
            0xf2 => c.abort(now, "fuzz").map(|_| ()),
            0xf3 => c.rollback(now).map(|_| ()),
            _ => {
                if let Ok(r) = parse_status(payload) {
                    let report = DeviceReport {
                        campaign: r.campaign,
                        target: r.target.unwrap_or_default(),
                        state: r.state,
                        progress: r.progress,
                        error: r.error,
                    };
                    let device = &devices[usize::from(op) % CAMPAIGN_DEVICES];
                    let _ = c.report(device, &report, now);
                }
                Ok(())
            }
        };
        let _ = c.tick(now, &signals);
        let counts = c.wave_counts();
        assert_eq!(counts.len(), waves);
        assert_eq!(
            counts.iter().map(|w| w.total as usize).sum::<usize>(),
            CAMPAIGN_DEVICES
        );
        for w in &counts {
            assert_eq!(w.sum(), w.total);
        }
        assert!(usize::from(c.meta().current_wave) < waves);
        assert!(c.devices().iter().all(|d| usize::from(d.wave) < waves));
        let _ = c.take_changed();
    }
}

// ---------------------------------------------------------------------------------------------
// ota_upload

/// The fixed clock of the fixture (2027-01-15).
pub const FIXTURE_NOW: i64 = 1_800_000_000;

/// What the first byte of an `ota_upload` input selects (low two bits); bit 2 ([`RESIGN`])
/// asks to re-sign the parsed metadata with the right offline keys first (targets key, the
/// `hw-rpi4` key for every delegated role, old and new root keys for a root), so that
/// mutations get past the signature checks to the version, expiry, naming and limit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOp {
    /// `POST /api/v1/ota/targets`: the rest is the `metadata` (a [`SignedUpdate`]).
    Publish = 0,
    /// `PUT /api/v1/ota/root`: the rest is the next image root.
    RotateImageRoot = 1,
    /// `PUT /api/v1/ota/root` with targets: the rest is the re-signed targets under a root
    /// rotation (the fixture's next root).
    RotateWithTargets = 2,
    /// `PUT /api/v1/ota/root`: the rest is a director root (first install and rotation).
    DirectorRoot = 3,
}

/// Flag in the first byte: re-sign before checking.
pub const RESIGN: u8 = 4;

/// A small repository, built once: one root key, a targets key, a `hw-rpi4` key, one published
/// target `rpi4/fw-1.0.0` in `hw-rpi4`, and a director.
#[derive(Debug)]
pub struct Fixture {
    /// Hub's online keys.
    pub online: OnlineKeys,
    /// Offline root key (image and director).
    pub root_key: SigningKey,
    /// A second root key for rotations.
    pub next_root_key: SigningKey,
    /// Offline targets key.
    pub targets_key: SigningKey,
    /// Offline `hw-rpi4` key.
    pub hw_key: SigningKey,
    /// The repository after the first publish.
    pub repo: ImageRepository,
    /// Every file it stored, by name.
    pub files: HashMap<String, Vec<u8>>,
    /// The director.
    pub director: Director,
    /// The fixed clock.
    pub now: jiff::Timestamp,
}

/// A deterministic Ed25519 key from a one-byte seed (PKCS#8 v1).
fn fixed_key(n: u8) -> SigningKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([n; 32]);
    SigningKey::from_pkcs8(&der).expect("a fixed Ed25519 key")
}

fn at(now: jiff::Timestamp, seconds: i64) -> jiff::Timestamp {
    meta::expires_at(now, seconds).expect("fixture expiry")
}

fn store(files: &mut HashMap<String, Vec<u8>>, new: &[MetadataFile]) {
    for f in new {
        files.insert(f.name.clone(), f.bytes.clone());
    }
}

impl Fixture {
    fn build() -> Self {
        let online = OnlineKeys {
            image_snapshot: fixed_key(1),
            image_timestamp: fixed_key(2),
            director_targets: fixed_key(3),
            director_snapshot: fixed_key(4),
            director_timestamp: fixed_key(5),
        };
        let (root_key, next_root_key, targets_key, hw_key) =
            (fixed_key(10), fixed_key(11), fixed_key(12), fixed_key(13));
        let now = jiff::Timestamp::from_second(FIXTURE_NOW).expect("fixture clock");
        let spec = RootSpec {
            version: 1,
            expires: at(now, ROOT_LIFETIME),
            root_keys: vec![root_key.public().clone()],
            threshold: 1,
        };
        let public = online.public();
        let root = ceremony::sign_root(
            ceremony::image_root(&spec, targets_key.public(), &public).expect("image root"),
            &[&root_key],
        )
        .expect("signed image root");
        let targets = ceremony::initial_targets(at(now, TARGETS_LIFETIME), &targets_key)
            .expect("initial targets");
        let (mut repo, created) = ImageRepository::create(
            &meta::to_bytes(&root).expect("root bytes"),
            &meta::to_bytes(&targets).expect("targets bytes"),
            &online,
            now,
        )
        .expect("image repository");
        let mut files = HashMap::new();
        store(&mut files, &created);
        let target = NewTarget {
            name: "fw".into(),
            version: "1.0.0".into(),
            hardware: Some("rpi4".into()),
            length: 1000,
            sha256: [7; 32],
            downgrade: false,
        };
        let (name, update) = ceremony::publish(
            repo.targets_role(),
            None,
            &target,
            PublishKeys {
                targets: Some(&targets_key),
                hardware: Some(&hw_key),
            },
            at(now, TARGETS_LIFETIME),
        )
        .expect("first publish");
        let (_, published) = repo
            .add_target(&name, 1000, &[7; 32], update, &online, now)
            .expect("first target");
        store(&mut files, &published);
        let droot = ceremony::sign_root(
            ceremony::director_root(&spec, &public).expect("director root"),
            &[&root_key],
        )
        .expect("signed director root");
        let (director, _) = Director::create(
            &meta::to_bytes(&droot).expect("director root bytes"),
            &online,
            now,
        )
        .expect("director");
        Self {
            online,
            root_key,
            next_root_key,
            targets_key,
            hw_key,
            repo,
            files,
            director,
            now,
        }
    }

    /// The fixture, built on first use.
    pub fn get() -> &'static Self {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Self::build)
    }

    /// Version 2 of the image or director root, signed by the old and a new root key.
    pub fn next_root(&self, image: bool) -> Signed<Root> {
        let spec = RootSpec {
            version: 2,
            expires: at(self.now, ROOT_LIFETIME),
            root_keys: vec![self.next_root_key.public().clone()],
            threshold: 1,
        };
        let public = self.online.public();
        let root = if image {
            ceremony::image_root(&spec, self.targets_key.public(), &public)
        } else {
            ceremony::director_root(&spec, &public)
        };
        ceremony::sign_root(
            root.expect("next root"),
            &[&self.root_key, &self.next_root_key],
        )
        .expect("signed next root")
    }

    /// The operator's upload publishing `target` (a valid `Publish` body).
    pub fn publish(&self, target: &NewTarget) -> SignedUpdate {
        let role = target
            .hardware
            .as_deref()
            .and_then(|c| self.repo.delegated_role(&meta::hw_role(c)));
        ceremony::publish(
            self.repo.targets_role(),
            role,
            target,
            PublishKeys {
                targets: Some(&self.targets_key),
                hardware: Some(&self.hw_key),
            },
            at(self.now, TARGETS_LIFETIME),
        )
        .expect("publish")
        .1
    }
}

/// Replaces the signatures of `signed` by one of `key`.
fn resign(signed: &mut Signed<Targets>, key: &SigningKey) {
    signed.signatures.clear();
    let _ = meta::add_signatures(signed, &[key]);
}

/// The repository loaded back from the fixture's files plus `new`; it must list the same
/// targets as `repo`.
fn check_reloads(fx: &Fixture, repo: &ImageRepository, new: &[MetadataFile]) {
    let mut files = fx.files.clone();
    store(&mut files, new);
    let loaded = ImageRepository::load(|name| files.get(name).cloned())
        .expect("accepted metadata loads back")
        .expect("a repository");
    assert_eq!(loaded.targets(), repo.targets(), "reloaded targets differ");
    assert_eq!(loaded.root(), repo.root());
    assert!(new.iter().any(|f| f.name == "timestamp.json"));
}

/// An operator's upload against the fixture: see [`UploadOp`] for what the first byte selects.
/// Refused or accepted, never a panic; what is accepted is within the limits and loads back.
pub fn upload(data: &[u8]) {
    let Some((&op, body)) = data.split_first() else {
        return;
    };
    let fx = Fixture::get();
    let resigning = op & RESIGN != 0;
    match op & 3 {
        0 => publish(fx, body, resigning),
        1 => rotate_image_root(fx, &resign_root(fx, body, resigning), None),
        2 => {
            let root = meta::to_bytes(&fx.next_root(true)).expect("root bytes");
            let targets = if resigning {
                match meta::parse::<Targets>(body, "targets") {
                    Ok(mut t) => {
                        resign(&mut t, &fx.targets_key);
                        meta::to_bytes(&t).expect("targets bytes")
                    }
                    Err(_) => body.to_vec(),
                }
            } else {
                body.to_vec()
            };
            rotate_image_root(fx, &root, Some(&targets));
        }
        _ => director_root(fx, &resign_root(fx, body, resigning)),
    }
}

/// `body` as a root re-signed by the fixture's old and new root keys when `resigning` (and it
/// parses), else unchanged.
fn resign_root(fx: &Fixture, body: &[u8], resigning: bool) -> Vec<u8> {
    if resigning && let Ok(mut root) = meta::parse::<Root>(body, "root") {
        root.signatures.clear();
        if meta::add_signatures(&mut root, &[&fx.root_key, &fx.next_root_key]).is_ok()
            && let Ok(bytes) = meta::to_bytes(&root)
        {
            return bytes;
        }
    }
    body.to_vec()
}

fn publish(fx: &Fixture, body: &[u8], resigning: bool) {
    // As the hub reads it: the `metadata` member of the JSON body.
    let Ok(mut update) = serde_json::from_slice::<SignedUpdate>(body) else {
        return;
    };
    if resigning {
        if let Some(t) = &mut update.targets {
            resign(t, &fx.targets_key);
        }
        for r in update.roles.values_mut() {
            resign(r, &fx.hw_key);
        }
    }
    // The name and upload the operator would send with it: the first new target listed.
    let listed = update
        .roles
        .values()
        .chain(update.targets.as_ref())
        .flat_map(|s| s.signed.targets.iter())
        .find(|(n, _)| fx.repo.target(n.raw()).is_none())
        .map(|(n, t)| {
            let mut sha = [0u8; 32];
            if t.hashes.sha256.len() == 32 {
                sha.copy_from_slice(&t.hashes.sha256);
            }
            (n.raw().to_owned(), t.length, sha)
        });
    let (name, length, sha) = listed.unwrap_or_else(|| ("fw-2.0.0".into(), 1, [0; 32]));
    let mut repo = fx.repo.clone();
    let Ok((info, files)) = repo.add_target(&name, length, &sha, update, &fx.online, fx.now) else {
        return;
    };
    assert_eq!(
        (info.name.as_str(), info.length, info.sha256.as_str()),
        (name.as_str(), length, hex(&sha).as_str())
    );
    assert_eq!(repo.target(&name).as_ref(), Some(&info));
    assert!(info.name.len() <= MAX_TARGET_NAME_LEN);
    assert!(repo.targets_role().signed.targets.len() <= MAX_TARGETS);
    assert!(
        repo.targets_role()
            .signed
            .delegations
            .as_ref()
            .is_none_or(|d| d.roles.len() <= MAX_DELEGATED_ROLES)
    );
    // Every target the hub lists parses as its custom.moat says.
    for t in repo.targets() {
        assert_eq!(
            meta::target_name(&t.image, &t.version, t.hardware.as_deref()).ok(),
            Some(t.name.clone())
        );
    }
    check_reloads(fx, &repo, &files);
}

fn rotate_image_root(fx: &Fixture, root: &[u8], targets: Option<&[u8]>) {
    let mut repo = fx.repo.clone();
    let Ok(files) = repo.rotate_root(root, targets, &fx.online, fx.now) else {
        return;
    };
    assert_eq!(repo.root().signed.version.get(), 2);
    assert!(files.iter().any(|f| f.name == "2.root.json"));
    check_reloads(fx, &repo, &files);
}

fn director_root(fx: &Fixture, root: &[u8]) {
    if let Ok((d, file)) = Director::create(root, &fx.online, fx.now) {
        assert_eq!(file.name, format!("{}.root.json", d.root().signed.version));
        assert_eq!(
            Director::load(&file.bytes).ok().map(|l| l.root().clone()),
            Some(d.root().clone())
        );
    }
    let mut d = fx.director.clone();
    if let Ok(file) = d.rotate_root(root, &fx.online, fx.now) {
        assert_eq!(file.name, "2.root.json");
        assert_eq!(d.root().signed.version.get(), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn seeds_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target)
    }

    fn with_op(op: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![op];
        v.extend_from_slice(body);
        v
    }

    /// The valid uploads the `ota_upload` seeds hold, by file name.
    fn upload_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let fx = Fixture::get();
        // Canonical JSON: the targets are a hash map, whose order differs between runs.
        let json = |u: &SignedUpdate| {
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                olpc_cjson::CanonicalFormatter::new(),
            );
            serde::Serialize::serialize(u, &mut ser).expect("update JSON");
            out
        };
        let hw = |name: &str, version: &str, class: &str| NewTarget {
            name: name.into(),
            version: version.into(),
            hardware: Some(class.into()),
            length: 4096,
            sha256: [9; 32],
            downgrade: false,
        };
        let any = NewTarget {
            hardware: None,
            downgrade: true,
            ..hw("tool", "0.9.1-rc.1", "")
        };
        let mut rotated_targets = fx.repo.targets_role().clone();
        rotated_targets.signed.version = meta::nz(rotated_targets.signed.version.get() + 1);
        resign(&mut rotated_targets, &fx.targets_key);
        vec![
            (
                "publish-hw-next",
                with_op(0, &json(&fx.publish(&hw("fw", "1.1.0", "rpi4")))),
            ),
            (
                "publish-new-class",
                with_op(0, &json(&fx.publish(&hw("fw", "2.0.0", "x86_64")))),
            ),
            ("publish-any", with_op(0, &json(&fx.publish(&any)))),
            (
                "resign-publish-any",
                with_op(RESIGN, &json(&fx.publish(&any))),
            ),
            (
                "rotate-image-root",
                with_op(1, &meta::to_bytes(&fx.next_root(true)).expect("root")),
            ),
            (
                "rotate-with-targets",
                with_op(2, &meta::to_bytes(&rotated_targets).expect("targets")),
            ),
            (
                "director-root",
                with_op(3, &meta::to_bytes(&fx.next_root(false)).expect("root")),
            ),
            (
                "resign-rotate-image-root",
                with_op(
                    1 | RESIGN,
                    &meta::to_bytes(&fx.next_root(true)).expect("root"),
                ),
            ),
            (
                "resign-director-root",
                with_op(
                    3 | RESIGN,
                    &meta::to_bytes(&fx.next_root(false)).expect("root"),
                ),
            ),
            (
                "resign-rotate-with-targets",
                with_op(
                    2 | RESIGN,
                    &meta::to_bytes(&rotated_targets).expect("targets"),
                ),
            ),
        ]
    }

    fn other_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let custom = |v: serde_json::Value| serde_json::to_vec(&v).expect("JSON");
        vec![
            ("ota_report", "status-downloading", br#"{"campaign":"7","target":"rpi4/fw-2.0.0","version":"2.0.0","state":"downloading","progress":40,"error":null}"#.to_vec()),
            ("ota_report", "status-refused", br#"{"campaign":null,"target":null,"version":null,"state":"refused","progress":0,"error":"director: timestamp expired"}"#.to_vec()),
            ("ota_report", "status-number", br#"{"campaign":12,"target":"fw-1.0.0","version":"1.0.0","state":"consent_declined","progress":100,"error":""}"#.to_vec()),
            ("ota_report", "inventory", br#"{"hardware":"rpi4","installed":"2.0.0","packages":[{"name":"openssl","version":"3.0.13","purl":"pkg:deb/debian/openssl@3.0.13"},{"name":"busybox","version":"1.36.1","purl":"pkg:generic/busybox@1.36.1"}]}"#.to_vec()),
            ("ota_report", "inventory-empty", br#"{"hardware":"x86_64","installed":"1","packages":[]}"#.to_vec()),
            ("ota_version", "release", b"1.2.3\n1.10.0\n1.2".to_vec()),
            ("ota_version", "pre", b"1.0.0-rc.1\n1.0.0-rc.10\n1.0.0-alpha-2.x".to_vec()),
            ("ota_version", "equal", b"1.2\n1.2.0\n1.2.0.0".to_vec()),
            ("ota_custom", "image", custom(serde_json::json!({"name": "fw", "version": "2.0.0", "hardware": "rpi4", "downgrade": false}))),
            ("ota_custom", "image-any", custom(serde_json::json!({"name": "tool", "version": "0.9.1-rc.1", "hardware": null}))),
            ("ota_custom", "director", custom(serde_json::json!({"device": "dev-1", "hardware": "rpi4", "version": "2.0.0", "campaign": "7"}))),
            ("ota_campaign", "default", br#"{"name":"fw-2","group":"sensors","target":"fw-2.0.0"}"#.to_vec()),
            ("ota_campaign", "reports", [
                &br#"{"name":"fw-2","group":"sensors","target":"rpi4/fw-2.0.0","rollback_target":"rpi4/fw-1.0.0","waves":[10,50,100],"device_timeout_secs":600,"gates":{"max_failure_percent":20,"on_failure":"abort","security":null}}"#[..],
                b"\n\x01{\"campaign\":\"7\",\"target\":\"rpi4/fw-2.0.0\",\"version\":\"2.0.0\",\"state\":\"downloading\",\"progress\":40,\"error\":null}",
                b"\n\x02{\"campaign\":7,\"target\":\"rpi4/fw-2.0.0\",\"version\":\"2.0.0\",\"state\":\"installed\",\"progress\":100,\"error\":null}",
                b"\n\x03{\"campaign\":7,\"target\":\"rpi4/fw-2.0.0\",\"version\":\"2.0.0\",\"state\":\"failed\",\"progress\":10,\"error\":\"disk full\"}",
                b"\n\xf0\n\xf1\n\xf3",
            ].concat()),
            ("ota_campaign", "windows", br#"{"name":"night","group":"g","target":"fw-1.0.1","waves":[5,25,100],"windows":[{"days":["mon","tue","sat"],"start":"22:00","end":"04:00"},{"days":["sun"],"start":"00:00","end":"24:00"}],"consent":"required","device_timeout_secs":10}"#.to_vec()),
            ("ota_custom", "target", custom(serde_json::json!({"length": 4096, "hashes": {"sha256": "09".repeat(32)}, "custom": {"moat": {"name": "fw", "version": "2.0.0", "hardware": "rpi4", "downgrade": true}}}))),
        ]
    }

    /// Writes the seeds under `fuzz/seeds/`: `cargo test -p moat-ota --features fuzzing --lib
    /// fuzz::tests::regenerate_seeds -- --ignored`. The fixture is deterministic, so the files
    /// only change when the metadata format does.
    #[test]
    #[ignore]
    fn regenerate_seeds() -> std::io::Result<()> {
        for (name, data) in upload_seeds() {
            std::fs::create_dir_all(seeds_dir("ota_upload"))?;
            std::fs::write(seeds_dir("ota_upload").join(name), data)?;
        }
        for (target, name, data) in other_seeds() {
            std::fs::create_dir_all(seeds_dir(target))?;
            std::fs::write(seeds_dir(target).join(name), data)?;
        }
        Ok(())
    }

    /// The committed seeds are what the fixture makes now, and each is accepted.
    #[test]
    fn upload_seeds_are_accepted() {
        let fx = Fixture::get();
        for (name, data) in upload_seeds() {
            let committed = std::fs::read(seeds_dir("ota_upload").join(name))
                .unwrap_or_else(|e| panic!("seed {name}: {e}; run regenerate_seeds"));
            assert_eq!(
                committed, data,
                "seed {name} is stale: run regenerate_seeds"
            );
            let (op, body) = data.split_first().expect("op byte");
            let accepted = match op & 3 {
                0 => {
                    let mut update: SignedUpdate = serde_json::from_slice(body).expect("JSON");
                    if op & RESIGN != 0 {
                        for r in update.roles.values_mut() {
                            resign(r, &fx.hw_key);
                        }
                    }
                    let (n, t) = update
                        .roles
                        .values()
                        .chain(update.targets.as_ref())
                        .flat_map(|s| s.signed.targets.iter())
                        .find(|(n, _)| fx.repo.target(n.raw()).is_none())
                        .map(|(n, t)| (n.raw().to_owned(), t.clone()))
                        .expect("a new target");
                    let mut sha = [0; 32];
                    sha.copy_from_slice(&t.hashes.sha256);
                    fx.repo
                        .clone()
                        .add_target(&n, t.length, &sha, update, &fx.online, fx.now)
                        .map(|_| ())
                }
                1 => fx
                    .repo
                    .clone()
                    .rotate_root(body, None, &fx.online, fx.now)
                    .map(|_| ()),
                2 => fx
                    .repo
                    .clone()
                    .rotate_root(
                        &meta::to_bytes(&fx.next_root(true)).expect("root"),
                        Some(body),
                        &fx.online,
                        fx.now,
                    )
                    .map(|_| ()),
                _ => fx
                    .director
                    .clone()
                    .rotate_root(body, &fx.online, fx.now)
                    .map(|_| ()),
            };
            assert!(accepted.is_ok(), "seed {name}: {accepted:?}");
            upload(&data);
        }
    }

    #[test]
    fn other_seeds_are_current_and_pass() {
        for (target, name, data) in other_seeds() {
            let committed = std::fs::read(seeds_dir(target).join(name))
                .unwrap_or_else(|e| panic!("seed {target}/{name}: {e}; run regenerate_seeds"));
            assert_eq!(committed, data, "seed {target}/{name} is stale");
            report(&data);
            version(&data);
            custom(&data);
            campaign(&data);
        }
        let ok = |t: &str| other_seeds().iter().filter(|(x, _, _)| *x == t).count();
        assert!(ok("ota_report") >= 5 && ok("ota_version") >= 3 && ok("ota_custom") >= 4);
        // The campaign seeds make campaigns (the fuzzer starts past validation).
        for (_, name, data) in other_seeds()
            .iter()
            .filter(|(t, _, _)| *t == "ota_campaign")
        {
            let spec = data.split(|&b| b == b'\n').next().unwrap_or_default();
            let spec: crate::campaign::CampaignSpec =
                serde_json::from_slice(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(spec.validate(), Ok(()), "{name}");
            campaign(data);
        }
    }
}
