//! Test fixtures for the update flow without a hub: a CA with a server and a device
//! certificate, a signed image repository and director (built with moat-ota's hub-side
//! types, as the hub does), and an HTTPS server with mutual TLS that serves them under
//! `/tuf/...` with faults to inject (a body cut off mid-way, files replaced).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use moat_ota::ceremony::{self, NewTarget, PublishKeys, RootSpec};
use moat_ota::director::{DeviceRecord, Director, Instruction};
use moat_ota::image::{ImageRepository, MetadataFile, TargetInfo};
use moat_ota::{OnlineKeys, SigningKey, meta};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "moat-agent-test-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().try_into().unwrap()
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A root CA, the server's certificate (localhost) and one device's certificate.
pub struct Pki {
    pub root_pem: String,
    pub root: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Vec<u8>,
    pub device_cert_pem: String,
    pub device_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A client certificate and key (PEM) for `cn`.
    pub fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (
            p.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// A server certificate for localhost and its key (PEM).
    pub fn server_pem(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (
            p.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    pub fn new(device: &str) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("moat test root");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        sp.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = sp.signed_by(&server_key, &issuer).unwrap();

        let device_key = KeyPair::generate().unwrap();
        let mut dp = CertificateParams::default();
        dp.distinguished_name.push(DnType::CommonName, device);
        dp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let dev = dp.signed_by(&device_key, &issuer).unwrap();

        Pki {
            issuer,
            root_pem: root.pem(),
            root: root.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            device_cert_pem: dev.pem(),
            device_key_pem: device_key.serialize_pem(),
        }
    }
}

/// The signed repositories: image (root, targets, snapshot, timestamp) and director.
pub struct Repo {
    pub root_key: SigningKey,
    pub targets_key: SigningKey,
    pub online: OnlineKeys,
    pub image: ImageRepository,
    pub director: Director,
    pub image_root: Vec<u8>,
    pub director_root: Vec<u8>,
    /// Served files: path under `/tuf/` → bytes.
    pub files: HashMap<String, Vec<u8>>,
    pub records: HashMap<String, DeviceRecord>,
    pub now: jiff::Timestamp,
}

fn store(files: &mut HashMap<String, Vec<u8>>, prefix: &str, list: Vec<MetadataFile>) {
    for f in list {
        files.insert(format!("{prefix}{}", f.name), f.bytes);
    }
}

impl Repo {
    /// Repositories signed as of `now`.
    pub fn new_at(now: jiff::Timestamp) -> Self {
        let root_key = SigningKey::generate().unwrap();
        let targets_key = SigningKey::generate().unwrap();
        let online = OnlineKeys::generate().unwrap();
        let spec = RootSpec {
            version: 1,
            expires: meta::expires_at(now, 365 * 86_400).unwrap(),
            root_keys: vec![root_key.public().clone()],
            threshold: 1,
        };
        let image_root =
            ceremony::image_root(&spec, targets_key.public(), &online.public()).unwrap();
        let image_root =
            meta::to_bytes(&ceremony::sign_root(image_root, &[&root_key]).unwrap()).unwrap();
        let targets =
            ceremony::initial_targets(meta::expires_at(now, 90 * 86_400).unwrap(), &targets_key)
                .unwrap();
        let (image, files0) = ImageRepository::create(
            &image_root,
            &meta::to_bytes(&targets).unwrap(),
            &online,
            now,
        )
        .unwrap();
        let director_root = ceremony::director_root(&spec, &online.public()).unwrap();
        let director_root =
            meta::to_bytes(&ceremony::sign_root(director_root, &[&root_key]).unwrap()).unwrap();
        let (director, root_file) = Director::create(&director_root, &online, now).unwrap();
        let mut files = HashMap::new();
        store(&mut files, "metadata/", files0);
        store(&mut files, "director/metadata/", vec![root_file]);
        Repo {
            root_key,
            targets_key,
            online,
            image,
            director,
            image_root,
            director_root,
            files,
            records: HashMap::new(),
            now,
        }
    }

    pub fn new() -> Self {
        Self::new_at(meta::now())
    }

    /// Publishes `bytes` as `fw-{version}` for any hardware (offline targets key).
    pub fn publish(&mut self, version: &str, bytes: &[u8], downgrade: bool) -> TargetInfo {
        let target = NewTarget {
            name: "fw".into(),
            version: version.into(),
            hardware: None,
            length: bytes.len() as u64,
            sha256: sha256(bytes),
            downgrade,
        };
        let (name, update) = ceremony::publish(
            self.image.targets_role(),
            None,
            &target,
            PublishKeys {
                targets: Some(&self.targets_key),
                hardware: None,
            },
            meta::expires_at(self.now, 90 * 86_400).unwrap(),
        )
        .unwrap();
        let (info, files) = self
            .image
            .add_target(
                &name,
                target.length,
                &target.sha256,
                update,
                &self.online,
                self.now,
            )
            .unwrap();
        store(&mut self.files, "metadata/", files);
        self.files
            .insert(format!("targets/{}", info.path), bytes.to_vec());
        info
    }

    /// Tells `device` (through the director) to install `target`.
    pub fn assign(&mut self, device: &str, target: Option<&TargetInfo>) {
        self.assign_asking(device, target, false);
    }

    /// Tells `device` to install `target`, asking its owner first if `consent`.
    pub fn assign_asking(&mut self, device: &str, target: Option<&TargetInfo>, consent: bool) {
        let record = self
            .director
            .assign(
                self.records.get(device),
                device,
                target.map(|t| Instruction::new(t).campaign("campaign-1").consent(consent)),
                None,
                &self.online,
                self.now,
            )
            .unwrap();
        self.records.insert(device.to_owned(), record);
    }

    /// The files as served to `device`.
    fn file_for(&self, device: &str, path: &str) -> Option<Vec<u8>> {
        if let Some(name) = path.strip_prefix("director/metadata/") {
            if let Some(b) = self.files.get(path) {
                return Some(b.clone());
            }
            return self.records.get(device)?.file(name);
        }
        self.files.get(path).cloned()
    }
}

/// What the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
pub struct Faults {
    /// Cut the next target download after this many body bytes.
    pub cut_next_target_after: Option<usize>,
    /// Serve this instead of the director's file, by file name.
    pub director_override: HashMap<String, Vec<u8>>,
}

pub struct Shared {
    pub repo: Repo,
    pub faults: Faults,
    pub seen: Vec<Seen>,
}

/// An HTTPS server with mutual TLS serving `/tuf/...` from a [`Repo`].
pub struct Server {
    pub addr: SocketAddr,
    pub shared: Arc<Mutex<Shared>>,
    runtime: tokio::runtime::Runtime,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn respond(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn handle(
    shared: &Arc<Mutex<Shared>>,
    device: &str,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut s = shared.lock().unwrap();
    s.seen.push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let Some(rel) = path.strip_prefix("/tuf/") else {
        return respond(StatusCode::NOT_FOUND, full(Vec::new()));
    };
    let bytes = match rel
        .strip_prefix("director/metadata/")
        .and_then(|n| s.faults.director_override.get(n))
    {
        Some(b) => Some(b.clone()),
        None => s.repo.file_for(device, rel),
    };
    let Some(bytes) = bytes else {
        return respond(StatusCode::NOT_FOUND, full(Vec::new()));
    };
    if !rel.starts_with("targets/") {
        return respond(StatusCode::OK, full(bytes));
    }
    let total = bytes.len();
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (status, body) = match from {
        Some(f) if f < total => (StatusCode::PARTIAL_CONTENT, bytes[f..].to_vec()),
        Some(_) => return respond(StatusCode::RANGE_NOT_SATISFIABLE, full(Vec::new())),
        None => (StatusCode::OK, bytes),
    };
    let mut response = match s.faults.cut_next_target_after.take() {
        Some(cut) => {
            // The full length is announced, `cut` bytes are sent, then the connection breaks.
            // The error comes after a pending poll, so hyper flushes the data first.
            let n = body.len();
            let first = Bytes::from(body[..cut.min(n)].to_vec());
            let frames = futures_util::stream::unfold(0u8, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(first)), 1)),
                        1 => {
                            tokio::task::yield_now().await;
                            Some((Err(std::io::Error::other("cut off by the test")), 2))
                        }
                        _ => None,
                    }
                }
            });
            let mut r = respond(status, StreamBody::new(frames).boxed());
            r.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                n.to_string().parse().unwrap(),
            );
            r
        }
        None => respond(status, full(body)),
    };
    if let Some(f) = from.filter(|_| status == StatusCode::PARTIAL_CONTENT) {
        response.headers_mut().insert(
            hyper::header::CONTENT_RANGE,
            format!("bytes {f}-{}/{total}", total - 1).parse().unwrap(),
        );
    }
    response
}

impl Server {
    pub fn start(pki: &Pki, repo: Repo) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                pki.server_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            repo,
            faults: Faults::default(),
            seen: Vec::new(),
        }));
        let state = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // The device is the CN of its certificate.
                    let device = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| {
                            x509_parser::parse_x509_certificate(c.as_ref())
                                .ok()
                                .and_then(|(_, x)| {
                                    x.subject()
                                        .iter_common_name()
                                        .next()
                                        .and_then(|cn| cn.as_str().ok().map(str::to_owned))
                                })
                        })
                        .unwrap_or_default();
                    let service = hyper::service::service_fn(move |req| {
                        let r = handle(&state, &device, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            shared,
            runtime,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().unwrap())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

/// A device's identity directory, provisioned with pinned roots, and its scripts.
pub struct Device {
    pub tmp: TempDir,
    pub dir: PathBuf,
    pub id: String,
}

impl Device {
    pub fn new(label: &str, id: &str, pki: &Pki, server: &Server) -> Self {
        let tmp = TempDir::new(label);
        let dir = tmp.0.join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("device.crt"), &pki.device_cert_pem).unwrap();
        std::fs::write(dir.join("device.key"), &pki.device_key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &pki.root_pem).unwrap();
        std::fs::write(
            dir.join("agent.json"),
            format!(
                r#"{{"version":1,"hub":"{}","device_id":"{id}","renew_when_remaining":"1/3"}}"#,
                server.url()
            ),
        )
        .unwrap();
        server.with(|s| {
            std::fs::write(dir.join("image-root.json"), &s.repo.image_root).unwrap();
            std::fs::write(dir.join("director-root.json"), &s.repo.director_root).unwrap();
        });
        let d = Device {
            tmp,
            dir,
            id: id.to_owned(),
        };
        // install: copies the image into the "inactive slot" and logs; the rest log their
        // name (and fail when a file named after them exists).
        d.script(
            "install",
            "cp \"$1\" \"$(dirname \"$0\")/slot\"\n\
             echo \"install $MOAT_OTA_VERSION\" >> \"$(dirname \"$0\")/log\"",
        );
        for name in ["reboot", "health", "confirm", "rollback", "consent"] {
            d.script(
                name,
                &format!(
                    "echo \"{name} $MOAT_OTA_VERSION\" >> \"$(dirname \"$0\")/log\"\n\
                     if [ -e \"$(dirname \"$0\")/{name}.fail\" ]; then\n\
                     echo '{name} says no' >&2; exit 1; fi"
                ),
            );
        }
        d
    }

    pub fn script(&self, name: &str, body: &str) {
        std::fs::write(
            self.tmp.0.join(format!("{name}.sh")),
            format!("#!/bin/sh\n{body}\n"),
        )
        .unwrap();
    }

    pub fn cmd(&self, name: &str) -> String {
        format!("sh {}", self.tmp.0.join(format!("{name}.sh")).display())
    }

    pub fn fail(&self, name: &str, fail: bool) {
        let p = self.tmp.0.join(format!("{name}.fail"));
        if fail {
            std::fs::write(p, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The commands the scripts ran, in order.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp.0.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn slot(&self) -> Option<Vec<u8>> {
        std::fs::read(self.tmp.0.join("slot")).ok()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("ota/state.json")).unwrap()).unwrap()
    }

    /// `moat-agent update --once` with the standard scripts plus `extra` flags.
    pub fn update(&self, extra: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat-agent"));
        c.args(["update", "--once", "--dir"])
            .arg(&self.dir)
            .args(["--hardware", "testhw", "--installed-version", "1.0.0"])
            .args(["--install-cmd", &self.cmd("install")])
            .args(extra);
        if !extra.contains(&"--mqtt") {
            c.args(["--mqtt", "off"]);
        }
        c.env("MOAT_AGENT_LOG", "moat_agent=debug,info");
        run_with_deadline(&mut c, Duration::from_secs(120))
    }
}

/// Runs `cmd` to completion, killing it after `deadline` (its output is read meanwhile, so a
/// chatty process cannot block on a full pipe).
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("the agent did not finish within {deadline:?}");
        }
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A mosquitto broker requiring client certificates from the test CA, and a mosquitto_sub
/// subscribed to `devices/#` as `watcher`.
pub struct Broker {
    pub port: u16,
    tmp: TempDir,
    broker: std::process::Child,
    sub: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

const BROKER_DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start(pki: &Pki) -> Self {
        let tmp = TempDir::new("broker");
        let (cert, key) = pki.server_pem();
        let (wcert, wkey) = pki.client("watcher");
        for (name, text) in [
            ("ca.crt", pki.root_pem.as_str()),
            ("server.crt", &cert),
            ("server.key", &key),
            ("watcher.crt", &wcert),
            ("watcher.key", &wkey),
        ] {
            std::fs::write(tmp.0.join(name), text).unwrap();
        }
        let port = free_port();
        let conf = tmp.0.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
                 use_identity_as_username true\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n\
                 keyfile {d}/server.key\n",
                d = tmp.0.display()
            ),
        )
        .unwrap();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let broker = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto (see .ci/run)");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < BROKER_DEADLINE, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut sub = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-d",
                "-V",
                "mqttv5",
                "-h",
                "localhost",
            ])
            .args(["-p", &port.to_string(), "-i", "watcher", "-q", "1"])
            .args(["-t", "devices/#", "-F", "MSG %t %p"])
            .arg("--cafile")
            .arg(tmp.0.join("ca.crt"))
            .arg("--cert")
            .arg(tmp.0.join("watcher.crt"))
            .arg("--key")
            .arg(tmp.0.join("watcher.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub (see .ci/run)");
        let out = sub.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let b = Broker {
            port,
            tmp,
            broker,
            sub,
            lines,
        };
        let deadline = std::time::Instant::now() + BROKER_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match b.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("Subscribed") => break,
                Ok(_) => {}
                Err(_) => panic!("mosquitto_sub did not subscribe"),
            }
        }
        b
    }

    pub fn url(&self) -> String {
        format!("mqtts://localhost:{}", self.port)
    }

    /// The messages received so far, waiting until one matches `until` (or the deadline).
    pub fn messages_until(
        &self,
        until: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Vec<(String, serde_json::Value)> {
        let deadline = std::time::Instant::now() + BROKER_DEADLINE;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no matching message within {BROKER_DEADLINE:?}; got {got:?}");
            };
            let Some(msg) = line.strip_prefix("MSG ") else {
                continue;
            };
            let (topic, payload) = msg.split_once(' ').unwrap_or((msg, ""));
            let value: serde_json::Value = serde_json::from_str(payload)
                .unwrap_or_else(|e| panic!("{topic}: not JSON ({e}): {payload}"));
            let done = until(topic, &value);
            got.push((topic.to_owned(), value));
            if done {
                return got;
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.sub.kill();
        let _ = self.sub.wait();
        let _ = self.broker.kill();
        let _ = self.broker.wait();
        let _ = &self.tmp;
    }
}
