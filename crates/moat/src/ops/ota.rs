//! `moat ota` for the update repository: the offline signing ceremony (`init`, `root
//! install`, `root rotate`), `publish`, `targets` and `online-keys`.
//!
//! The key directory (`--keys DIR`, default `./moat-ota-keys`, 0700, keys 0600) holds the
//! offline keys and the operator's copies of what they last signed:
//!
//! ```text
//! image-root-{i}.pk8  director-root-{i}.pk8  targets.pk8  hw-{class}.pk8
//! image-root.json  director-root.json   version 1 of both roots: what devices pin
//! image/root.json  image/targets.json  image/hw-{class}.json  director/root.json  (latest)
//! retired/            keys replaced by `root rotate`
//! ```
//!
//! Keep it off the hub (an offline machine or removable media); the hub holds only the online
//! keys. Metadata fetched from the hub is checked against `image/root.json` before anything is
//! signed on top of it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moat_ota::ceremony::{self, NewTarget, PublishKeys, RootSpec};
use moat_ota::meta::{self, ROOT_LIFETIME, TARGETS_LIFETIME};
use moat_ota::tough::schema::{RoleType, Root, Signed, Snapshot, Targets, Timestamp};
use moat_ota::{OnlinePublicKeys, SigningKey};

use super::*;
use crate::progress::{Progress, Row};

/// Default key directory.
pub const DEFAULT_KEYS_DIR: &str = "moat-ota-keys";
/// File `init --out` and `root rotate --out` write and `root install` reads.
pub const ROOT_FILE: &str = "ota-root.json";

#[derive(Subcommand, Debug)]
pub enum OtaRootCommand {
    /// Install roots written by `init --out` or `root rotate --out` (a file or its directory).
    Install {
        /// `ota-root.json`, or the directory holding it.
        path: PathBuf,
    },
    /// Sign the next root version of both repositories (with the old and the new root keys)
    /// and install it: picks up the hub's current online keys, and replaces keys on request.
    Rotate {
        /// Key directory.
        #[arg(long, default_value = DEFAULT_KEYS_DIR)]
        keys: PathBuf,
        /// New targets key (the old one leaked or is lost); targets are re-signed with it.
        #[arg(long)]
        replace_targets_key: bool,
        /// New root keys (same number and threshold); the old ones sign this rotation once more.
        #[arg(long)]
        replace_root_key: bool,
        /// Online public keys from a file (`moat ota online-keys --json`) instead of the hub.
        #[arg(long)]
        online_keys: Option<PathBuf>,
        /// Write `ota-root.json` into this directory instead of installing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(p) = path.parent() {
        mkdir(p)?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

struct KeyDir(PathBuf);

impl KeyDir {
    fn key(&self, name: &str) -> Result<SigningKey, String> {
        let path = self.0.join(format!("{name}.pk8"));
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| {
                f.take(moat_ota::keys::MAX_KEY_FILE_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(|e| format!("cannot read the key {}: {e}", path.display()))?;
        SigningKey::from_pkcs8(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn has(&self, name: &str) -> bool {
        self.0.join(format!("{name}.pk8")).exists()
    }

    fn save_key(&self, name: &str, key: &SigningKey) -> Result<(), String> {
        mkdir(&self.0)?;
        let path = self.0.join(format!("{name}.pk8"));
        moat_pki::write_private_file(&path, key.pkcs8())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The numbered keys `{prefix}-{i}.pk8`, in order.
    fn numbered(&self, prefix: &str) -> Result<Vec<SigningKey>, String> {
        let mut out = Vec::new();
        for i in 1.. {
            let name = format!("{prefix}-{i}");
            if !self.has(&name) {
                break;
            }
            out.push(self.key(&name)?);
        }
        Ok(out)
    }

    fn retire(&self, name: &str) -> Result<(), String> {
        let from = self.0.join(format!("{name}.pk8"));
        let dir = self.0.join("retired");
        mkdir(&dir)?;
        let to = dir.join(format!("{name}.{}.pk8", meta::now().as_second()));
        std::fs::rename(&from, &to).map_err(|e| format!("cannot move {}: {e}", from.display()))
    }

    fn signed<T: for<'de> serde::Deserialize<'de>>(&self, rel: &str) -> Result<Signed<T>, String> {
        let path = self.0.join(rel);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (is --keys the directory `moat ota init` created?)",
                path.display()
            )
        })?;
        meta::parse(&bytes, rel).map_err(|e| e.to_string())
    }

    fn save_signed<T: serde::Serialize>(&self, rel: &str, s: &Signed<T>) -> Result<(), String> {
        write_file(
            &self.0.join(rel),
            &meta::to_bytes(s).map_err(|e| e.to_string())?,
        )
    }
}

fn online_keys(t: &Target, file: Option<&Path>) -> Result<OnlinePublicKeys, String> {
    let v = match file {
        Some(f) => read_json(f)?,
        None => call(t, "GET", "/api/v1/ota/online-keys", None)?,
    };
    let keys = if v.get("keys").is_some() {
        v["keys"].clone()
    } else {
        v
    };
    serde_json::from_value(keys).map_err(|e| format!("online keys: {e}"))
}

pub fn ota_online_keys(t: &Target) -> ExitCode {
    finish(call(t, "GET", "/api/v1/ota/online-keys", None).map(|v| {
        if t.json {
            return pretty(&v);
        }
        let rows = [
            "image_snapshot",
            "image_timestamp",
            "director_targets",
            "director_snapshot",
            "director_timestamp",
        ]
        .iter()
        .map(|k| vec![(*k).to_owned(), s(&v["key_ids"][*k])])
        .collect();
        table(&["ROLE", "KEY ID"], rows)
    }))
}

pub fn ota_targets(t: &Target) -> ExitCode {
    finish(call(t, "GET", "/api/v1/ota/targets", None).map(|v| {
        if t.json {
            return pretty(&v);
        }
        let rows = v["targets"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        let sha = s(&i["sha256"]);
                        vec![
                            s(&i["name"]),
                            s(&i["version"]),
                            s(&i["hardware"]),
                            s(&i["length"]),
                            sha.get(..16).unwrap_or(&sha).to_owned(),
                            if i["downgrade"] == true {
                                "yes".into()
                            } else {
                                "-".into()
                            },
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "TARGET",
                "VERSION",
                "HARDWARE",
                "BYTES",
                "SHA256",
                "DOWNGRADE",
            ],
            rows,
        )
    }))
}

/// Installs a root body, or writes it to `out`.
fn install_or_write(t: &Target, body: Value, out: Option<&Path>) -> Result<String, String> {
    match out {
        Some(dir) => {
            let path = dir.join(ROOT_FILE);
            write_file(&path, pretty(&body).as_bytes())?;
            Ok(format!(
                "wrote {}; install it with `moat ota root install {}`",
                path.display(),
                path.display()
            ))
        }
        None => {
            let v = call(t, "PUT", "/api/v1/ota/root", Some(body))?;
            Ok(format!(
                "installed image root version {} and director root version {}",
                s(&v["image_root_version"]),
                s(&v["director_root_version"])
            ))
        }
    }
}

fn value<T: serde::Serialize>(s: &Signed<T>) -> Result<Value, String> {
    serde_json::to_value(s).map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
pub fn ota_init(
    t: &Target,
    keys: &Path,
    root_keys: usize,
    root_threshold: u64,
    online_file: Option<&Path>,
    out: Option<&Path>,
) -> ExitCode {
    finish((|| {
        let dir = KeyDir(keys.to_owned());
        if dir.has("image-root-1") || dir.has("targets") {
            return Err(format!(
                "{} already holds update keys; use `moat ota root rotate`, or another --keys",
                keys.display()
            ));
        }
        if root_keys == 0 || root_keys > ceremony::MAX_ROOT_KEYS {
            return Err(format!(
                "--root-keys must be 1 to {}",
                ceremony::MAX_ROOT_KEYS
            ));
        }
        if root_threshold == 0 || root_threshold > root_keys as u64 {
            return Err("--root-threshold must be 1 to --root-keys".into());
        }
        let online = online_keys(t, online_file)?;
        let new_key = || SigningKey::generate().map_err(|e| e.to_string());
        let image_roots: Vec<SigningKey> = (0..root_keys)
            .map(|_| new_key())
            .collect::<Result<_, _>>()?;
        let director_roots: Vec<SigningKey> = (0..root_keys)
            .map(|_| new_key())
            .collect::<Result<_, _>>()?;
        let targets_key = new_key()?;
        let now = meta::now();
        let expires = meta::expires_at(now, ROOT_LIFETIME).map_err(|e| e.to_string())?;
        let spec = |keys: &[SigningKey]| RootSpec {
            version: 1,
            expires,
            root_keys: keys.iter().map(|k| k.public().clone()).collect(),
            threshold: root_threshold,
        };
        let e = |e: moat_ota::Error| e.to_string();
        let image_root = ceremony::sign_root(
            ceremony::image_root(&spec(&image_roots), targets_key.public(), &online).map_err(e)?,
            &image_roots.iter().collect::<Vec<_>>(),
        )
        .map_err(e)?;
        let director_root = ceremony::sign_root(
            ceremony::director_root(&spec(&director_roots), &online).map_err(e)?,
            &director_roots.iter().collect::<Vec<_>>(),
        )
        .map_err(e)?;
        let targets = ceremony::initial_targets(
            meta::expires_at(now, TARGETS_LIFETIME).map_err(e)?,
            &targets_key,
        )
        .map_err(e)?;
        for (i, k) in image_roots.iter().enumerate() {
            dir.save_key(&format!("image-root-{}", i + 1), k)?;
        }
        for (i, k) in director_roots.iter().enumerate() {
            dir.save_key(&format!("director-root-{}", i + 1), k)?;
        }
        dir.save_key("targets", &targets_key)?;
        dir.save_signed("image/root.json", &image_root)?;
        dir.save_signed("director/root.json", &director_root)?;
        dir.save_signed("image/targets.json", &targets)?;
        // What devices pin (moat-agent reads these names): version 1 of both roots.
        dir.save_signed("image-root.json", &image_root)?;
        dir.save_signed("director-root.json", &director_root)?;
        let body = json!({
            "image_root": value(&image_root)?,
            "director_root": value(&director_root)?,
            "targets": value(&targets)?,
        });
        let done = install_or_write(t, body, out)?;
        Ok(format!(
            "created offline keys in {} ({root_keys} root keys per repository, threshold \
             {root_threshold}); {done}\ndevices pin {} and {} (image and director root)",
            keys.display(),
            keys.join("image-root.json").display(),
            keys.join("director-root.json").display()
        ))
    })())
}

pub fn ota_root(t: &Target, cmd: OtaRootCommand) -> ExitCode {
    match cmd {
        OtaRootCommand::Install { path } => finish((|| {
            let path = if path.is_dir() {
                path.join(ROOT_FILE)
            } else {
                path
            };
            let body = read_json(&path)?;
            install_or_write(t, body, None)
        })()),
        OtaRootCommand::Rotate {
            keys,
            replace_targets_key,
            replace_root_key,
            online_keys: file,
            out,
        } => finish(rotate(
            t,
            &keys,
            replace_targets_key,
            replace_root_key,
            file.as_deref(),
            out.as_deref(),
        )),
    }
}

fn signers<'a>(old: &'a [SigningKey], new: &'a [SigningKey]) -> Vec<&'a SigningKey> {
    old.iter().chain(new.iter()).collect()
}

fn threshold(root: &Signed<Root>) -> u64 {
    root.signed
        .roles
        .get(&RoleType::Root)
        .map_or(1, |r| r.threshold.get())
}

fn rotate(
    t: &Target,
    keys: &Path,
    replace_targets_key: bool,
    replace_root_key: bool,
    online_file: Option<&Path>,
    out: Option<&Path>,
) -> Result<String, String> {
    let dir = KeyDir(keys.to_owned());
    let e = |e: moat_ota::Error| e.to_string();
    let image_root: Signed<Root> = dir.signed("image/root.json")?;
    let director_root: Signed<Root> = dir.signed("director/root.json")?;
    let old_image_keys = dir.numbered("image-root")?;
    let old_director_keys = dir.numbered("director-root")?;
    if old_image_keys.is_empty() || old_director_keys.is_empty() {
        return Err(format!("no root keys in {}", keys.display()));
    }
    let online = online_keys(t, online_file)?;
    let new_key = || SigningKey::generate().map_err(|e| e.to_string());
    let (new_image_keys, new_director_keys) = if replace_root_key {
        (
            (0..old_image_keys.len())
                .map(|_| new_key())
                .collect::<Result<Vec<_>, _>>()?,
            (0..old_director_keys.len())
                .map(|_| new_key())
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let targets_key = if replace_targets_key {
        new_key()?
    } else {
        dir.key("targets")?
    };
    let now = meta::now();
    let expires = meta::expires_at(now, ROOT_LIFETIME).map_err(e)?;
    let current_image: &[SigningKey] = if replace_root_key {
        &new_image_keys
    } else {
        &old_image_keys
    };
    let current_director: &[SigningKey] = if replace_root_key {
        &new_director_keys
    } else {
        &old_director_keys
    };
    let spec = |root: &Signed<Root>, keys: &[SigningKey]| RootSpec {
        version: root.signed.version.get() + 1,
        expires,
        root_keys: keys.iter().map(|k| k.public().clone()).collect(),
        threshold: threshold(root),
    };
    let new_image_root = ceremony::sign_root(
        ceremony::image_root(
            &spec(&image_root, current_image),
            targets_key.public(),
            &online,
        )
        .map_err(e)?,
        &signers(&old_image_keys, &new_image_keys),
    )
    .map_err(e)?;
    let new_director_root = ceremony::sign_root(
        ceremony::director_root(&spec(&director_root, current_director), &online).map_err(e)?,
        &signers(&old_director_keys, &new_director_keys),
    )
    .map_err(e)?;
    let targets = if replace_targets_key {
        let (current, _) = current_targets(t, &dir, &image_root, None)?;
        Some(
            ceremony::resign_targets(
                &current,
                meta::expires_at(now, TARGETS_LIFETIME).map_err(e)?,
                &targets_key,
            )
            .map_err(e)?,
        )
    } else {
        None
    };
    let body = json!({
        "image_root": value(&new_image_root)?,
        "director_root": value(&new_director_root)?,
        "targets": match &targets { Some(t) => value(t)?, None => Value::Null },
    });
    let done = install_or_write(t, body, out)?;
    // Only once the hub took it (or it was written) do the keys on disk change.
    if replace_root_key {
        for (prefix, old, new) in [
            ("image-root", &old_image_keys, &new_image_keys),
            ("director-root", &old_director_keys, &new_director_keys),
        ] {
            for i in 1..=old.len() {
                dir.retire(&format!("{prefix}-{i}"))?;
            }
            for (i, k) in new.iter().enumerate() {
                dir.save_key(&format!("{prefix}-{}", i + 1), k)?;
            }
        }
    }
    if replace_targets_key {
        dir.retire("targets")?;
        dir.save_key("targets", &targets_key)?;
    }
    if let Some(tg) = &targets {
        dir.save_signed("image/targets.json", tg)?;
    }
    dir.save_signed("image/root.json", &new_image_root)?;
    dir.save_signed("director/root.json", &new_director_root)?;
    Ok(format!(
        "signed image root version {} and director root version {}; {done}",
        new_image_root.signed.version, new_director_root.signed.version
    ))
}

/// The latest targets (and `role`, if given) the hub serves, checked against the operator's
/// root; the operator's own copy when it is newer or the hub has none.
fn current_targets(
    t: &Target,
    dir: &KeyDir,
    root: &Signed<Root>,
    role: Option<&str>,
) -> Result<(Signed<Targets>, Option<Signed<Targets>>), String> {
    let parse = |v: Value, what: &str| -> Result<Value, String> {
        if v.is_null() {
            Err(format!("the hub served no {what}"))
        } else {
            Ok(v)
        }
    };
    let ts: Signed<Timestamp> = serde_json::from_value(parse(
        call(t, "GET", "/tuf/metadata/timestamp.json", None)?,
        "timestamp",
    )?)
    .map_err(|e| format!("hub timestamp: {e}"))?;
    let sv = ts
        .signed
        .meta
        .get("snapshot.json")
        .ok_or("hub timestamp lists no snapshot")?
        .version;
    let snap: Signed<Snapshot> = serde_json::from_value(call(
        t,
        "GET",
        &format!("/tuf/metadata/{sv}.snapshot.json"),
        None,
    )?)
    .map_err(|e| format!("hub snapshot: {e}"))?;
    let tv = snap
        .signed
        .meta
        .get("targets.json")
        .ok_or("hub snapshot lists no targets")?
        .version;
    let hub_targets: Signed<Targets> = serde_json::from_value(call(
        t,
        "GET",
        &format!("/tuf/metadata/{tv}.targets.json"),
        None,
    )?)
    .map_err(|e| format!("hub targets: {e}"))?;
    root.signed.verify_role(&hub_targets).map_err(|e| {
        format!(
            "the hub's targets version {tv} is not signed by the targets key of your root \
             ({e}); refusing to sign on top of it"
        )
    })?;
    let local: Option<Signed<Targets>> = dir.signed("image/targets.json").ok();
    let targets = match local {
        Some(l)
            if l.signed.version > hub_targets.signed.version
                && root.signed.verify_role(&l).is_ok() =>
        {
            l
        }
        _ => hub_targets,
    };
    let role_meta = match role {
        None => None,
        Some(name) => match snap.signed.meta.get(&format!("{name}.json")) {
            None => None,
            Some(m) => {
                let r: Signed<Targets> = serde_json::from_value(call(
                    t,
                    "GET",
                    &format!("/tuf/metadata/{}.{name}.json", m.version),
                    None,
                )?)
                .map_err(|e| format!("hub {name}: {e}"))?;
                let delegated = targets
                    .signed
                    .delegations
                    .as_ref()
                    .is_some_and(|d| d.verify_role(&r, name).is_ok());
                // A role signed by a key the targets role no longer delegates to (replaced)
                // starts over from the hub's version number.
                if delegated {
                    Some(r)
                } else {
                    let mut fresh = r.clone();
                    fresh.signed.targets.clear();
                    Some(fresh)
                }
            }
        },
    };
    Ok((targets, role_meta))
}

/// Version from a file name `NAME-VERSION[.ext]`.
fn version_from_file(file: &Path, name: &str) -> Option<String> {
    let stem = file.file_name()?.to_str()?;
    let rest = stem.strip_prefix(name)?.strip_prefix('-')?;
    // Longest prefix that parses: `1.2.3.bin` → `1.2.3`.
    let mut best = None;
    for (i, _) in rest
        .char_indices()
        .chain(std::iter::once((rest.len(), ' ')))
    {
        let cand = &rest[..i];
        if moat_ota::Version::parse(cand).is_ok() {
            best = Some(cand.to_owned());
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
pub fn ota_publish(
    t: &Target,
    file: &Path,
    name: &str,
    hardware: Option<&str>,
    version: Option<&str>,
    keys: &Path,
    allow_downgrade: bool,
) -> ExitCode {
    finish((|| {
        let version = match version {
            Some(v) => v.to_owned(),
            None => version_from_file(file, name).ok_or_else(|| {
                format!(
                    "give --version (it could not be read from the file name; expected \
                     {name}-VERSION...)"
                )
            })?,
        };
        moat_ota::Version::parse(&version).map_err(|e| e.to_string())?;
        let dir = KeyDir(keys.to_owned());
        let root: Signed<Root> = dir.signed("image/root.json")?;
        let role = hardware.map(meta::hw_role);
        // Hash the image first (and learn its length).
        let mut f = std::fs::File::open(file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let mut hasher = meta::Sha256::default();
        let mut length = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            length += n as u64;
        }
        let sha256 = hasher.finish();
        let (current, current_role) = current_targets(t, &dir, &root, role.as_deref())?;
        let targets_key = if dir.has("targets") {
            Some(dir.key("targets")?)
        } else {
            None
        };
        let hw_key = match (&role, hardware) {
            (Some(r), Some(_)) => Some(if dir.has(r) {
                dir.key(r)?
            } else {
                let k = SigningKey::generate().map_err(|e| e.to_string())?;
                dir.save_key(r, &k)?;
                k
            }),
            _ => None,
        };
        let target = NewTarget {
            name: name.to_owned(),
            version: version.clone(),
            hardware: hardware.map(str::to_owned),
            length,
            sha256,
            downgrade: allow_downgrade,
        };
        let now = meta::now();
        let (target_name, update) = ceremony::publish(
            &current,
            current_role.as_ref(),
            &target,
            PublishKeys {
                targets: targets_key.as_ref(),
                hardware: hw_key.as_ref(),
            },
            meta::expires_at(now, TARGETS_LIFETIME).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let upload = upload(t, file, length, &target_name)?;
        if upload["sha256"].as_str() != Some(moat_ota::keys::hex(&sha256).as_str()) {
            return Err(
                "the hub received other bytes than were signed (the file changed \
                        during the upload?); publish again"
                    .into(),
            );
        }
        let body = json!({
            "upload": upload["upload"],
            "name": target_name,
            "metadata": serde_json::to_value(&update).map_err(|e| e.to_string())?,
        });
        let v = call(t, "POST", "/api/v1/ota/targets", Some(body))?;
        if let Some(tg) = &update.targets {
            dir.save_signed("image/targets.json", tg)?;
        }
        for (r, signed) in &update.roles {
            dir.save_signed(&format!("image/{r}.json"), signed)?;
        }
        if t.json {
            return Ok(pretty(&v));
        }
        Ok(format!(
            "published {} (version {version}, {length} bytes, sha256 {}), signed by {}",
            s(&v["name"]),
            s(&v["sha256"]),
            s(&v["role"])
        ))
    })())
}

/// Streams the image to the hub with a progress bar on a terminal.
fn upload(t: &Target, file: &Path, length: u64, label: &str) -> Result<Value, String> {
    let client = t.client()?;
    let rt = runtime()?;
    let sent = Arc::new(AtomicU64::new(0));
    let (status, bytes) = rt.block_on(async {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let mut progress = Progress::stderr();
        let call = client.upload("/api/v1/ota/uploads", f, length, sent.clone());
        tokio::pin!(call);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let draw = |p: &mut Progress| {
            let done = sent.load(Ordering::Relaxed);
            p.draw(&[Row {
                label: format!("upload {label}"),
                done,
                total: length,
                note: format!("{} / {} KiB", done / 1024, length / 1024),
            }]);
        };
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tick.tick() => draw(&mut progress),
            }
        };
        if progress.enabled() {
            draw(&mut progress);
            progress.finish();
        }
        result.map_err(|e| e.to_string())
    })?;
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!(
            "upload refused: {}",
            v["error"]["message"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_owned)
        ))
    }
}
