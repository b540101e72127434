//! The `ota` scenario (issue 5): the cost of signed updates.
//!
//! 1. **Verification per device**, in process: a repository built with the hub's and the
//!    CLI's own code (an image for any hardware and one delegated to a hardware class), one
//!    director record per device, served from memory through a `tough::Transport`. Each
//!    device runs `moat_ota::verify` from its pinned roots with an empty datastore (first
//!    check), then again with the datastore it left (a periodic check), then streams the
//!    image through `TargetCheck`.
//! 2. **Serving throughput**, against a real `moat serve`: the ceremony and a publish through
//!    the `moat` CLI, then many devices at once, each over its own mutual-TLS connection
//!    (full handshake): image timestamp, snapshot, targets and `hw-CLASS` metadata, the
//!    device's director timestamp, snapshot and targets, and the image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_ota::ceremony::{self, NewTarget, PublishKeys, RootSpec};
use moat_ota::director::{Director, Instruction};
use moat_ota::image::ImageRepository;
use moat_ota::meta::{self, ROOT_LIFETIME, TARGETS_LIFETIME};
use moat_ota::tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use moat_ota::{DeviceFacts, OnlineKeys, SigningKey, TargetCheck, Url, VerifyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::brokers::BrokerSetup;
use crate::pki::ScratchDir;
use crate::stats::LatencySummary;

/// Sizes of the `ota` scenario.
#[derive(Clone, Debug)]
pub struct OtaSettings {
    /// Devices verified in process.
    pub devices: usize,
    /// Devices fetching from the hub at once (each its own connection).
    pub fetchers: usize,
    /// Image size in bytes.
    pub image_bytes: usize,
}

const BASE: &str = "https://hub.bench/tuf/";

/// URL → bytes.
#[derive(Debug, Clone, Default)]
struct Mem(Arc<Mutex<HashMap<String, moat_ota::tough::Bytes>>>);

#[moat_ota::tough::async_trait]
impl Transport for Mem {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let body = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(url.as_str()).cloned());
        match body {
            Some(b) => Ok(Box::pin(futures_util::stream::once(
                futures_util::future::ready(Ok(b)),
            ))),
            None => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
        }
    }
}

impl Mem {
    fn put(&self, path: &str, bytes: Vec<u8>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(format!("{BASE}{path}"), bytes.into());
        }
    }
}

fn e<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Deterministic image bytes.
fn image(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = meta::Sha256::default();
    h.update(data);
    h.finish()
}

/// Runs both parts and prints the figures.
pub fn run(settings: &OtaSettings, moat_binary: &Path, keep: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(e)?;
    eprintln!(
        "ota: verification per device ({} devices)...",
        settings.devices
    );
    let verify = rt.block_on(verification(settings))?;
    println!("{verify}");
    eprintln!("ota: serving ({} devices at once)...", settings.fetchers);
    match rt.block_on(serving(settings, moat_binary, keep)) {
        Ok(text) => println!("{text}"),
        Err(err) => {
            println!("serving throughput: not measured: {err}");
            return Err(err);
        }
    }
    Ok(())
}

async fn verification(settings: &OtaSettings) -> Result<String, String> {
    let now = meta::now();
    let root_key = SigningKey::generate().map_err(e)?;
    let droot_key = SigningKey::generate().map_err(e)?;
    let targets_key = SigningKey::generate().map_err(e)?;
    let hw_key = SigningKey::generate().map_err(e)?;
    let online = OnlineKeys::generate().map_err(e)?;
    let spec = |k: &SigningKey| RootSpec {
        version: 1,
        expires: meta::expires_at(now, ROOT_LIFETIME).unwrap_or(now),
        root_keys: vec![k.public().clone()],
        threshold: 1,
    };
    let iroot = ceremony::sign_root(
        ceremony::image_root(&spec(&root_key), targets_key.public(), &online.public())
            .map_err(e)?,
        &[&root_key],
    )
    .map_err(e)?;
    let droot = ceremony::sign_root(
        ceremony::director_root(&spec(&droot_key), &online.public()).map_err(e)?,
        &[&droot_key],
    )
    .map_err(e)?;
    let expires = meta::expires_at(now, TARGETS_LIFETIME).map_err(e)?;
    let targets = ceremony::initial_targets(expires, &targets_key).map_err(e)?;
    let iroot_bytes = meta::to_bytes(&iroot).map_err(e)?;
    let droot_bytes = meta::to_bytes(&droot).map_err(e)?;
    let (mut repo, files) = ImageRepository::create(
        &iroot_bytes,
        &meta::to_bytes(&targets).map_err(e)?,
        &online,
        now,
    )
    .map_err(e)?;
    let mem = Mem::default();
    for f in files {
        mem.put(&format!("metadata/{}", f.name), f.bytes);
    }
    let data = image(settings.image_bytes);
    let target = NewTarget {
        name: "fw".into(),
        version: "2.0.0".into(),
        hardware: Some("rpi4".into()),
        length: data.len() as u64,
        sha256: sha256(&data),
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
        expires,
    )
    .map_err(e)?;
    let (info, files) = repo
        .add_target(&name, target.length, &target.sha256, update, &online, now)
        .map_err(e)?;
    for f in files {
        mem.put(&format!("metadata/{}", f.name), f.bytes);
    }
    mem.put(&format!("targets/{}", info.path), data.clone());
    let (director, dfile) = Director::create(&droot_bytes, &online, now).map_err(e)?;
    let sign_start = Instant::now();
    for i in 0..settings.devices {
        let id = format!("bench-{i:06}");
        let record = director
            .assign(
                None,
                &id,
                Some(Instruction::new(&info).campaign("1")),
                None,
                &online,
                now,
            )
            .map_err(e)?;
        for f in ["timestamp.json", "snapshot.json", "targets.json"] {
            if let Some(b) = record.file(f) {
                mem.put(&format!("director/{id}/{f}"), b);
            }
        }
        mem.put(
            &format!("director/{id}/{}", dfile.name),
            dfile.bytes.clone(),
        );
    }
    let sign_time = sign_start.elapsed();
    let scratch = ScratchDir::new("ota-verify", false)?;
    let mut first = Vec::with_capacity(settings.devices);
    let mut again = Vec::with_capacity(settings.devices);
    for i in 0..settings.devices {
        let id = format!("bench-{i:06}");
        let config = VerifyConfig {
            image_root: iroot_bytes.clone(),
            director_root: droot_bytes.clone(),
            image_metadata_url: Url::parse(&format!("{BASE}metadata/")).map_err(e)?,
            image_targets_url: Url::parse(&format!("{BASE}targets/")).map_err(e)?,
            director_metadata_url: Url::parse(&format!("{BASE}director/{id}/")).map_err(e)?,
            datastore: scratch.path().join(&id),
        };
        let facts = DeviceFacts {
            device_id: id.clone(),
            hardware: "rpi4".into(),
            installed: "1.0.0".into(),
        };
        for times in [&mut first, &mut again] {
            let t = Instant::now();
            let approved = moat_ota::verify(&config, &facts, mem.clone())
                .await
                .map_err(|err| format!("{id}: {err}"))?;
            times.push(t.elapsed());
            if approved.is_none() {
                return Err(format!("{id}: no update approved"));
            }
        }
    }
    // The download check: SHA-256 and length over the whole image, in 64 KiB chunks.
    let approved = {
        let id = "bench-000000";
        let config = VerifyConfig {
            image_root: iroot_bytes.clone(),
            director_root: droot_bytes.clone(),
            image_metadata_url: Url::parse(&format!("{BASE}metadata/")).map_err(e)?,
            image_targets_url: Url::parse(&format!("{BASE}targets/")).map_err(e)?,
            director_metadata_url: Url::parse(&format!("{BASE}director/{id}/")).map_err(e)?,
            datastore: scratch.path().join("check"),
        };
        let facts = DeviceFacts {
            device_id: id.into(),
            hardware: "rpi4".into(),
            installed: "1.0.0".into(),
        };
        moat_ota::verify(&config, &facts, mem.clone())
            .await
            .map_err(e)?
            .ok_or("no update")?
    };
    let t = Instant::now();
    let mut check = TargetCheck::new(&approved);
    for chunk in data.chunks(64 * 1024) {
        check.update(chunk).map_err(e)?;
    }
    check.finish().map_err(e)?;
    let hash_time = t.elapsed();
    let mean_first = first.iter().sum::<Duration>().as_secs_f64() / first.len().max(1) as f64;
    let p_first = LatencySummary::of(&mut first).ok_or("no devices")?;
    let p_again = LatencySummary::of(&mut again).ok_or("no devices")?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "== ota: verification per device (in process, one task, {} devices) ==\n\
         director metadata signed per device (assign): {:.3} ms\n\
         first check (empty datastore; 7 metadata files and 2 root probes): p50 {:.2} ms, p99 {:.2} ms -> {:.0} devices/s\n\
         periodic check (datastore kept): p50 {:.2} ms, p99 {:.2} ms\n\
         image check (SHA-256 + length, {:.1} MiB): {:.0} MiB/s",
        settings.devices,
        sign_time.as_secs_f64() * 1000.0 / settings.devices.max(1) as f64,
        ms(p_first.p50),
        ms(p_first.p99),
        1.0 / mean_first.max(1e-9),
        ms(p_again.p50),
        ms(p_again.p99),
        settings.image_bytes as f64 / (1024.0 * 1024.0),
        settings.image_bytes as f64 / (1024.0 * 1024.0) / hash_time.as_secs_f64().max(1e-9),
    ))
}

fn moat(binary: &Path, data_dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(binary)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .map_err(|err| format!("running moat {}: {err}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "moat {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One HTTP/1.1 GET on an open connection; returns the body length.
async fn get<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    path: &str,
) -> Result<usize, String> {
    io.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(e)?;
    buf.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    // Head.
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = io.read(&mut chunk).await.map_err(e)?;
        if n == 0 {
            return Err(format!("{path}: connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("{path}: {}", head.lines().next().unwrap_or("")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{path}: no content-length"))?;
    let mut have = buf.len() - head_end;
    while have < length {
        let n = io.read(&mut chunk).await.map_err(e)?;
        if n == 0 {
            return Err(format!("{path}: body cut short"));
        }
        have += n;
    }
    Ok(length)
}

async fn serving(settings: &OtaSettings, binary: &Path, keep: bool) -> Result<String, String> {
    let setup = BrokerSetup::moat(binary, settings.fetchers, &[], keep)?;
    let broker = setup.start()?;
    let api = broker.api.ok_or("moat printed no API address")?;
    let data_dir = setup.data_dir();
    let work = ScratchDir::new("ota-serve", keep)?;
    let keys = work.path().join("keys");
    let keys_s = keys.to_str().ok_or("non-UTF-8 path")?;
    moat(binary, &data_dir, &["ota", "init", "--keys", keys_s])?;
    let file: PathBuf = work.path().join("fw-2.0.0.bin");
    std::fs::write(&file, image(settings.image_bytes)).map_err(e)?;
    moat(
        binary,
        &data_dir,
        &[
            "ota",
            "publish",
            file.to_str().ok_or("non-UTF-8 path")?,
            "--name",
            "fw",
            "--hardware",
            "rpi4",
            "--keys",
            keys_s,
        ],
    )?;
    let listed: serde_json::Value =
        serde_json::from_str(&moat(binary, &data_dir, &["ota", "targets", "--json"])?)
            .map_err(e)?;
    let target_path = listed["targets"][0]["path"]
        .as_str()
        .ok_or("no target listed")?
        .to_owned();
    let ts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("ota/image/metadata/timestamp.json")).map_err(e)?,
    )
    .map_err(e)?;
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .ok_or("timestamp")?;
    let snap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join(format!("ota/image/metadata/{sv}.snapshot.json")))
            .map_err(e)?,
    )
    .map_err(e)?;
    let tv = snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .ok_or("snapshot")?;
    let hv = snap["signed"]["meta"]["hw-rpi4.json"]["version"]
        .as_u64()
        .ok_or("snapshot")?;
    let paths = Arc::new(vec![
        "/tuf/metadata/timestamp.json".to_owned(),
        format!("/tuf/metadata/{sv}.snapshot.json"),
        format!("/tuf/metadata/{tv}.targets.json"),
        format!("/tuf/metadata/{hv}.hw-rpi4.json"),
        "/tuf/director/metadata/timestamp.json".to_owned(),
        "/tuf/director/metadata/snapshot.json".to_owned(),
        "/tuf/director/metadata/targets.json".to_owned(),
        format!("/tuf/targets/{target_path}"),
    ]);
    let mut configs = Vec::new();
    for d in &setup.pki.devices {
        configs.push(crate::client::tls_config(&setup.pki.ca, &d.chain, &d.key)?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for config in configs {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut io = crate::client::tls(api, &config).await?;
            let mut buf = Vec::new();
            let mut bytes = 0usize;
            for p in paths.iter() {
                bytes += get(&mut io, &mut buf, p).await?;
            }
            Ok::<_, String>((t.elapsed(), bytes))
        }));
    }
    let mut durations = Vec::new();
    let mut total_bytes = 0usize;
    for t in tasks {
        let (d, b) = t.await.map_err(e)??;
        durations.push(d);
        total_bytes += b;
    }
    let wall = start.elapsed();
    drop(broker);
    let n = durations.len();
    let p = LatencySummary::of(&mut durations).ok_or("no devices")?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "== ota: serving ({n} devices at once, each: mutual-TLS handshake, 7 metadata files, {} KiB image) ==\n\
         update checks with download: {:.0} devices/s, {:.0} requests/s, {:.1} MiB/s in {:.2} s\n\
         per device: p50 {:.1} ms, p99 {:.1} ms",
        settings.image_bytes / 1024,
        n as f64 / wall.as_secs_f64().max(1e-9),
        (n * paths.len()) as f64 / wall.as_secs_f64().max(1e-9),
        total_bytes as f64 / (1024.0 * 1024.0) / wall.as_secs_f64().max(1e-9),
        wall.as_secs_f64(),
        ms(p.p50),
        ms(p.p99),
    ))
}
