//! Support for the `moat` binary's integration tests: run the real binary, issue device
//! certificates, drive third-party clients (mosquitto_pub/mosquitto_sub, paho-mqtt scripts in
//! `tests/interop/`) and speak raw MQTT bytes.
//!
//! Synchronisation is always on an event: the `moat ready` line, a `SUBACK` seen by a client,
//! a process exiting, bytes arriving. Every wait has a deadline and fails with what was seen
//! (the hub's stderr, the client's output, a hex diff). Nothing here sleeps to wait for
//! something to happen.

// Each test file compiles this module separately and uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the hub may take to print its ready line (first start creates a CA).
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound for a single expected event (a message, a SUBACK, a close).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// Upper bound for a whole interop script (each script has its own 150 s watchdog).
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(200);
/// Device ids the interop scripts expect in their certificate directory.
pub const SCRIPT_DEVICES: [&str; 3] = ["dev1", "dev2", "dev3"];

// ---------------------------------------------------------------------------------------------
// Temporary directories

/// A directory removed on drop (kept if `MOAT_TEST_KEEP` is set, for post-mortems).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "moat-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MOAT_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes with deadlines

/// Waits for `child` to exit, killing it (SIGKILL) at the deadline. The child is moved into a
/// waiter thread so the wait is an event, not a poll.
fn wait_with_deadline(child: Child, deadline: Duration) -> Result<Output, Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => panic!("waiting for process {pid}: {e}"),
        Err(_) => {
            signal(pid, "KILL");
            let out = rx
                .recv_timeout(EVENT_DEADLINE)
                .expect("a killed process is reaped")
                .expect("wait_with_output");
            Err(out)
        }
    }
}

/// Sends a signal by pid with the `kill` utility (the test crate uses no libc).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a command to completion with a deadline; a timeout is a test failure showing output.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    match wait_with_deadline(child, deadline) {
        Ok(out) => out,
        Err(out) => panic!(
            "{shown} still running after {deadline:?}; killed\n{}",
            show_output(&out)
        ),
    }
}

pub fn show_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}---",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Lines of a child's stdout, delivered through a channel by a reader thread.
fn line_channel(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// The hub

/// What to start the hub with. Every listener is on 127.0.0.1 port 0.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// `--danger-mqtt-plaintext-listen 127.0.0.1:0 --danger-allow-anonymous`.
    pub plaintext_anonymous: bool,
    /// `--mqtt-wss-listen 127.0.0.1:0`.
    pub wss: bool,
    /// `--max-keepalive`.
    pub max_keepalive: Option<u16>,
    /// Contents of a TOML file passed with `--config`.
    pub config: Option<String>,
    /// Pass only `--data-dir` and `--config`: every listener comes from the file (which must
    /// then set them all to port 0).
    pub config_only: bool,
    /// More `moat serve` arguments.
    pub extra_args: Vec<String>,
}

impl HubOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn plaintext_anonymous(mut self) -> Self {
        self.plaintext_anonymous = true;
        self
    }
    pub fn wss(mut self) -> Self {
        self.wss = true;
        self
    }
    pub fn max_keepalive(mut self, secs: u16) -> Self {
        self.max_keepalive = Some(secs);
        self
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }
    pub fn config_only(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self.config_only = true;
        self
    }
}

/// The addresses from the `moat ready {...}` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyAddrs {
    pub mqtt_tls: SocketAddr,
    pub mqtt_wss: Option<SocketAddr>,
    pub mqtt_plaintext: Option<SocketAddr>,
    pub api: SocketAddr,
}

impl ReadyAddrs {
    /// Parses the JSON object after `moat ready `. Hand-rolled: four flat keys, no escapes.
    pub fn parse(json: &str) -> Result<Self, String> {
        fn field(json: &str, key: &str) -> Result<Option<SocketAddr>, String> {
            let pat = format!("\"{key}\":");
            let at = json
                .find(&pat)
                .ok_or_else(|| format!("no {key:?} in {json}"))?;
            let rest = json[at + pat.len()..].trim_start();
            if rest.starts_with("null") {
                return Ok(None);
            }
            let rest = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("{key:?} is neither null nor a string in {json}"))?;
            let end = rest
                .find('"')
                .ok_or_else(|| format!("unterminated {key:?} in {json}"))?;
            rest[..end]
                .parse()
                .map(Some)
                .map_err(|e| format!("{key:?}: {e} in {json}"))
        }
        let json = json.trim();
        if !(json.starts_with('{') && json.ends_with('}')) {
            return Err(format!("not a JSON object: {json}"));
        }
        Ok(ReadyAddrs {
            mqtt_tls: field(json, "mqtt_tls")?.ok_or("mqtt_tls is null")?,
            mqtt_wss: field(json, "mqtt_wss")?,
            mqtt_plaintext: field(json, "mqtt_plaintext")?,
            api: field(json, "api")?.ok_or("api is null")?,
        })
    }
}

/// Certificate files of one device, as written by `moat device add`.
#[derive(Debug, Clone)]
pub struct DeviceCreds {
    pub id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running `moat serve` on a fresh data directory; killed on drop.
#[derive(Debug)]
pub struct Hub {
    pub options: HubOptions,
    pub addrs: ReadyAddrs,
    child: Option<Child>,
    /// Lines printed on stdout after the ready line (there should be none).
    stdout: Option<Receiver<String>>,
    dir: TempDir,
    starts: u32,
}

pub fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

impl Hub {
    pub fn start(options: HubOptions) -> Hub {
        let mut hub = Hub::prepare(options);
        hub.spawn();
        hub
    }

    /// A hub that is not running yet (its data directory does not exist until `moat serve` or
    /// `moat device add` creates it); start it with [`Hub::start_again`].
    pub fn prepare(mut options: HubOptions) -> Hub {
        let dir = TempDir::new("hub");
        fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
        // Detection runs in every test hub, but its responses are executed only in hubs
        // whose configuration says something about `[detect]` (the defence tests): the
        // other suites probe authorization on purpose, and a quarantine after their third
        // refused topic would test the detector instead of the protocol.
        let detect_default = "[detect]\nmode = \"dry_run\"\n";
        match &mut options.config {
            // Appended: top-level keys before it stay top-level.
            Some(toml) if !toml.contains("[detect") => {
                toml.push('\n');
                toml.push_str(detect_default);
            }
            Some(_) => {}
            None => options.config = Some(detect_default.to_owned()),
        }
        if let Some(toml) = &options.config {
            fs::write(dir.path().join("moat.toml"), toml).expect("write config");
        }
        Hub {
            options,
            addrs: ReadyAddrs {
                mqtt_tls: "127.0.0.1:1".parse().expect("literal"),
                mqtt_wss: None,
                mqtt_plaintext: None,
                api: "127.0.0.1:1".parse().expect("literal"),
            },
            child: None,
            stdout: None,
            dir,
            starts: 0,
        }
    }

    /// Data directory given to `moat serve --data-dir` (the first start creates it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where `moat device add --out` writes certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.certs_dir().join("ca.crt")
    }

    /// A scratch directory that lives as long as the hub.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join(format!("moat-{}.stderr", self.starts))
    }

    /// The hub's stderr (its logs) for the current run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The serve arguments for this hub.
    /// The configuration file `moat serve --config` reads (written by `prepare` when the
    /// options have one; a test may rewrite it before a SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("moat.toml")
    }

    pub fn serve_args(&self) -> Vec<String> {
        if self.options.config_only {
            return vec![
                "serve".into(),
                "--data-dir".into(),
                self.data_dir().display().to_string(),
                "--config".into(),
                self.config_path().display().to_string(),
            ];
        }
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--mqtt-tls-listen".into(),
            "127.0.0.1:0".into(),
            "--api-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if self.options.plaintext_anonymous {
            args.extend([
                "--danger-mqtt-plaintext-listen".into(),
                "127.0.0.1:0".into(),
                "--danger-allow-anonymous".into(),
            ]);
        }
        if self.options.wss {
            args.extend(["--mqtt-wss-listen".into(), "127.0.0.1:0".into()]);
        }
        if let Some(k) = self.options.max_keepalive {
            args.extend(["--max-keepalive".into(), k.to_string()]);
        }
        if self.options.config.is_some() {
            args.extend(["--config".into(), self.config_path().display().to_string()]);
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr = File::create(self.stderr_path()).expect("stderr file");
        let mut child = Command::new(moat_bin())
            .args(self.serve_args())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn moat serve");
        let lines = line_channel(child.stdout.take().expect("piped stdout"));
        // The ready line must be the first line on stdout.
        let json = match lines.recv_timeout(READY_DEADLINE) {
            Ok(line) => match line.strip_prefix("moat ready ") {
                Some(json) => json.to_owned(),
                None => {
                    let _ = child.kill();
                    panic!(
                        "moat serve printed {line:?} on stdout before `moat ready`\n--- stderr\n{}",
                        self.stderr()
                    );
                }
            },
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "moat serve printed no `moat ready` line within {READY_DEADLINE:?}\n--- stderr\n{}",
                    self.stderr()
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait");
                panic!(
                    "moat serve exited ({status}) before printing `moat ready`\n--- stderr\n{}",
                    self.stderr()
                );
            }
        };
        self.addrs = ReadyAddrs::parse(&json).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("bad ready line: {e}")
        });
        if !self.options.config_only {
            assert_eq!(
                self.addrs.mqtt_plaintext.is_some(),
                self.options.plaintext_anonymous,
                "ready line's mqtt_plaintext does not match the flags: {json}"
            );
            assert_eq!(
                self.addrs.mqtt_wss.is_some(),
                self.options.wss,
                "ready line's mqtt_wss does not match the flags: {json}"
            );
        }
        self.child = Some(child);
        self.stdout = Some(lines);
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.addrs.mqtt_tls
    }

    pub fn plain_addr(&self) -> SocketAddr {
        self.addrs
            .mqtt_plaintext
            .expect("hub started without the plaintext listener")
    }

    pub fn wss_addr(&self) -> SocketAddr {
        self.addrs.mqtt_wss.expect("hub started without WSS")
    }

    /// `moat device add ID --data-dir DIR --out CERTS`.
    pub fn add_device(&self, id: &str) -> DeviceCreds {
        let out = run_with_deadline(
            Command::new(moat_bin())
                .args(["device", "add", id, "--data-dir"])
                .arg(self.data_dir())
                .arg("--out")
                .arg(self.certs_dir()),
            EVENT_DEADLINE,
        );
        assert!(
            out.status.success(),
            "moat device add {id} failed\n{}",
            show_output(&out)
        );
        let creds = DeviceCreds {
            id: id.to_owned(),
            cert: self.certs_dir().join(format!("{id}.crt")),
            key: self.certs_dir().join(format!("{id}.key")),
            ca: self.ca_file(),
        };
        for f in [&creds.cert, &creds.key, &creds.ca] {
            assert!(
                f.is_file(),
                "moat device add {id} did not write {}",
                f.display()
            );
        }
        creds
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the running hub.
    pub fn send_signal(&self, name: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), name);
        }
    }

    /// SIGKILL: no chance to flush anything that was not already durable.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdout = None;
    }

    /// SIGTERM and wait for a clean exit (status 0) within the deadline.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            signal(child.id(), "TERM");
            match wait_with_deadline(child, EVENT_DEADLINE) {
                Ok(out) => assert!(
                    out.status.success(),
                    "moat serve exited with {} after SIGTERM\n--- stderr\n{}",
                    out.status,
                    self.stderr()
                ),
                Err(_) => panic!(
                    "moat serve still running {EVENT_DEADLINE:?} after SIGTERM\n--- stderr\n{}",
                    self.stderr()
                ),
            }
        }
        self.stdout = None;
    }

    /// Stops the hub gracefully if it runs, then starts it again on the same data directory.
    /// Listener addresses change (port 0).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the hub again after `kill9()` (or `stop()`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "hub is still running");
        self.spawn();
    }

    /// GET `path` on the API listener over HTTPS (verifying the server against the hub's CA),
    /// with python3's urllib so the tests need no HTTP client crate.
    pub fn api_get(&self, path: &str) -> String {
        const GET: &str = "import ssl, sys, urllib.request\n\
            ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
            sys.stdout.write(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10).read().decode())\n";
        // The CA file exists once a device was added; issue a throwaway one if needed.
        if !self.ca_file().is_file() {
            self.add_device("api-reader");
        }
        let url = format!("https://localhost:{}{path}", self.addrs.api.port());
        let out = run_with_deadline(
            Command::new("python3")
                .args(["-B", "-c", GET, &url])
                .arg(self.ca_file()),
            EVENT_DEADLINE,
        );
        assert!(out.status.success(), "GET {url}\n{}", show_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of one sample in /metrics, e.g. `moat_messages_dropped_total{reason="queue_full"}`;
    /// None if the sample is absent.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.api_get("/metrics").lines().find_map(|l| {
            let rest = l.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// The common command line of the interop scripts in tests/interop/.
    pub fn script_args(&self) -> Vec<String> {
        let mut args = vec![
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "--tls-port".to_owned(),
            self.addrs.mqtt_tls.port().to_string(),
            "--cafile".to_owned(),
            self.ca_file().display().to_string(),
            "--certdir".to_owned(),
            self.certs_dir().display().to_string(),
            "--devices".to_owned(),
            SCRIPT_DEVICES.join(","),
        ];
        if let Some(p) = self.addrs.mqtt_plaintext {
            args.extend(["--plain-port".to_owned(), p.port().to_string()]);
        }
        if let Some(p) = self.addrs.mqtt_wss {
            args.extend(["--wss-port".to_owned(), p.port().to_string()]);
        }
        if let Some(k) = self.options.max_keepalive {
            args.extend(["--max-keepalive".to_owned(), k.to_string()]);
        }
        args
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- moat serve stderr (last 200 lines)\n{}",
                tail(&self.stderr(), 200)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Python interop scripts

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

/// Starts a hub with every listener the scripts use, issues dev1..dev3 and runs the script;
/// the test fails (with the script's output) unless it exits 0.
pub fn run_interop_script(script: &str) {
    let hub = Hub::start(
        HubOptions::new()
            .plaintext_anonymous()
            .wss()
            .max_keepalive(60),
    );
    for id in SCRIPT_DEVICES {
        hub.add_device(id);
    }
    run_script(&hub, script, &[]);
}

/// Runs `python3 tests/interop/SCRIPT` against `hub`; fails unless it exits 0.
pub fn run_script(hub: &Hub, script: &str, extra: &[&str]) {
    let path = interop_dir().join(script);
    assert!(path.is_file(), "no interop script {}", path.display());
    let mut cmd = Command::new("python3");
    // -B: do not write __pycache__ into the source tree.
    cmd.arg("-B")
        .arg(&path)
        .args(hub.script_args())
        .args(extra)
        .env("PYTHONUNBUFFERED", "1");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 (is it installed? see .ci/run): {e}"));
    let out = match wait_with_deadline(child, SCRIPT_DEADLINE) {
        Ok(out) => out,
        Err(out) => panic!(
            "{script} still running after {SCRIPT_DEADLINE:?}; killed\n{}",
            show_output(&out)
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'paho'") {
        panic!(
            "paho-mqtt is not installed: python3 -m pip install 'paho-mqtt>=2,<3' (see .ci/run)"
        );
    }
    assert!(
        out.status.success(),
        "{script} failed\n{}",
        show_output(&out)
    );
    // Visible with --nocapture: which steps ran.
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

// ---------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    pub fn flag(self) -> &'static str {
        match self {
            Mqtt::V311 => "mqttv311",
            Mqtt::V5 => "mqttv5",
        }
    }
}

/// How a mosquitto client reaches the hub.
#[derive(Debug, Clone)]
pub enum Via {
    /// Mutual TLS with a device's certificate; client id = device id unless overridden.
    Device(DeviceCreds),
    /// Mutual TLS with explicit files (e.g. a certificate from a foreign CA).
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// TLS that trusts the hub but presents no client certificate.
    NoClientCert { ca: PathBuf },
    /// The anonymous plaintext listener.
    Anonymous,
}

/// Common arguments: version, host, port, TLS files, client id.
pub fn mosquitto_args(hub: &Hub, via: &Via, version: Mqtt, client_id: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec!["-V".into(), version.flag().into(), "-h".into()];
    let tls = |a: &mut Vec<String>, ca: &Path| {
        // "localhost" so that the server certificate's DNS name is checked as well.
        a.push("localhost".into());
        a.extend(["-p".into(), hub.tls_addr().port().to_string()]);
        a.extend(["--cafile".into(), ca.display().to_string()]);
    };
    let mut default_id = None;
    match via {
        Via::Device(c) => {
            tls(&mut a, &c.ca);
            a.extend(["--cert".into(), c.cert.display().to_string()]);
            a.extend(["--key".into(), c.key.display().to_string()]);
            default_id = Some(c.id.clone());
        }
        Via::Files { cert, key, ca } => {
            tls(&mut a, ca);
            a.extend(["--cert".into(), cert.display().to_string()]);
            a.extend(["--key".into(), key.display().to_string()]);
        }
        Via::NoClientCert { ca } => tls(&mut a, ca),
        Via::Anonymous => {
            a.push("127.0.0.1".into());
            a.extend(["-p".into(), hub.plain_addr().port().to_string()]);
        }
    }
    if let Some(id) = client_id.map(str::to_owned).or(default_id) {
        a.extend(["-i".into(), id]);
    }
    a
}

/// Result of a mosquitto_pub run.
#[derive(Debug)]
pub struct PubOutcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PubOutcome {
    pub fn show(&self) -> String {
        format!(
            "status: {}\n--- stdout\n{}--- stderr\n{}---",
            self.status, self.stdout, self.stderr
        )
    }

    /// The publish reached the broker and was acknowledged as a success (for QoS 1/2 `-d`
    /// shows the PUBACK/PUBCOMP; a v5 failure reason makes mosquitto_pub warn on stderr).
    pub fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "mosquitto_pub failed\n{}",
            self.show()
        );
        assert!(
            !self.stderr.contains("failed"),
            "mosquitto_pub reported a failure\n{}",
            self.show()
        );
    }
}

/// Runs `mosquitto_pub -d` with `extra` (topic, message, QoS, ...) to completion.
pub fn mosquitto_pub(
    hub: &Hub,
    via: &Via,
    version: Mqtt,
    client_id: Option<&str>,
    extra: &[&str],
) -> PubOutcome {
    let out = run_with_deadline(
        Command::new("mosquitto_pub")
            .arg("-d")
            .args(mosquitto_args(hub, via, version, client_id))
            .args(extra),
        EVENT_DEADLINE,
    );
    PubOutcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `mosquitto_sub -d -F 'MSG %t %p'`, started and waited for until its SUBACK.
#[derive(Debug)]
pub struct Sub {
    child: Option<Child>,
    lines: Receiver<String>,
    /// Every stdout line so far (debug lines and messages), for failure reports.
    pub transcript: Vec<String>,
    /// Messages read from stdout and not yet taken by an expectation (a resumed session's
    /// queued messages may arrive before the SUBACK).
    pending: VecDeque<(String, String)>,
    /// Granted QoS / reason codes from `Subscribed (mid: N): a, b` (decimal).
    pub granted: Vec<u8>,
    stderr_path: PathBuf,
}

impl Sub {
    /// Starts mosquitto_sub with `extra` (must include `-t FILTER`, may include `-q`, `-c`,
    /// `-C N`, `-W SECS`, `-x SECS`...) and waits for its SUBACK.
    pub fn start(
        hub: &Hub,
        via: &Via,
        version: Mqtt,
        client_id: Option<&str>,
        extra: &[&str],
    ) -> Sub {
        let stderr_path = hub.scratch("mosquitto_sub").join(format!(
            "{}.stderr",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        // stdbuf -oL: mosquitto_sub's -d lines go through stdio, block-buffered on a pipe;
        // line buffering makes "Subscribed ..." visible the moment the SUBACK arrives.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-F", "MSG %t %p"])
            .args(mosquitto_args(hub, via, version, client_id))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("run mosquitto_sub (is mosquitto-clients installed? see .ci/run)");
        let lines = line_channel(child.stdout.take().expect("piped"));
        let mut sub = Sub {
            child: Some(child),
            lines,
            transcript: Vec::new(),
            pending: VecDeque::new(),
            granted: Vec::new(),
            stderr_path,
        };
        sub.wait_for_suback();
        sub
    }

    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                self.record(&l);
                Some(l)
            }
            Err(_) => None,
        }
    }

    fn record(&mut self, line: &str) {
        self.transcript.push(line.to_owned());
        if let Some(msg) = line.strip_prefix("MSG ") {
            let (t, p) = msg.split_once(' ').unwrap_or((msg, ""));
            self.pending.push_back((t.to_owned(), p.to_owned()));
        }
    }

    fn wait_for_suback(&mut self) {
        let deadline = Instant::now() + EVENT_DEADLINE;
        while let Some(line) = self.next_line(deadline) {
            // mosquitto_sub -d prints "Subscribed (mid: 1): 1" right after "received SUBACK".
            if let Some(rest) = line.strip_prefix("Subscribed (mid: ") {
                let codes = rest.split_once("):").map(|(_, c)| c).unwrap_or("");
                self.granted = codes
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
                return;
            }
        }
        panic!(
            "mosquitto_sub saw no SUBACK within {EVENT_DEADLINE:?}\n{}",
            self.show()
        );
    }

    pub fn show(&self) -> String {
        format!(
            "--- mosquitto_sub stdout\n{}\n--- stderr\n{}---",
            self.transcript.join("\n"),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// The next message as (topic, payload); fails after the deadline.
    pub fn expect_message(&mut self) -> (String, String) {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if let Some(m) = self.pending.pop_front() {
                return m;
            }
            if self.next_line(deadline).is_none() {
                break;
            }
        }
        panic!(
            "mosquitto_sub got no message within {EVENT_DEADLINE:?}\n{}",
            self.show()
        );
    }

    /// Like expect_message, and checks topic and payload.
    pub fn expect(&mut self, topic: &str, payload: &str) {
        let got = self.expect_message();
        assert_eq!(
            got,
            (topic.to_owned(), payload.to_owned()),
            "unexpected message\n{}",
            self.show()
        );
    }

    /// No message within `quiet`.
    pub fn expect_no_message(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while self.pending.is_empty() && self.next_line(deadline).is_some() {}
        if let Some(m) = self.pending.front() {
            panic!("unexpected message {m:?}\n{}", self.show());
        }
    }

    /// Waits for mosquitto_sub to exit on its own (after -C/-W/-E), returning its status.
    /// Its stdout closing marks the exit; every line is kept in the transcript.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.record(&l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "mosquitto_sub did not exit within {EVENT_DEADLINE:?}\n{}",
                        self.show()
                    );
                }
            }
        }
        let mut child = self.child.take().expect("not yet waited");
        child.wait().expect("wait mosquitto_sub")
    }

    /// All messages not yet taken, until mosquitto_sub exits (with -C N or -W SECS).
    pub fn messages_until_exit(&mut self) -> (Vec<(String, String)>, ExitStatus) {
        let status = self.wait_exit();
        (self.pending.drain(..).collect(), status)
    }

    /// Kills mosquitto_sub without a DISCONNECT (the session stays, the will fires).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes a foreign CA and a device certificate (CN = `cn`) signed by it, with the openssl CLI.
pub fn foreign_ca_device(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = run_with_deadline(
            Command::new("openssl").args(args).current_dir(dir),
            EVENT_DEADLINE,
        );
        assert!(
            out.status.success(),
            "openssl {args:?}\n{}",
            show_output(&out)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "foreign-ca.key",
        "-out",
        "foreign-ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=foreign root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&a);
    let subj = format!("/CN={cn}");
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "foreign-dev.key",
        "-out",
        "foreign-dev.csr",
        "-subj",
        &subj,
    ]);
    run(&a);
    fs::write(
        dir.join("client.ext"),
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext file");
    run(&[
        "x509",
        "-req",
        "-in",
        "foreign-dev.csr",
        "-CA",
        "foreign-ca.crt",
        "-CAkey",
        "foreign-ca.key",
        "-CAcreateserial",
        "-out",
        "foreign-dev.crt",
        "-days",
        "2",
        "-extfile",
        "client.ext",
    ]);
    (dir.join("foreign-dev.crt"), dir.join("foreign-dev.key"))
}

// ---------------------------------------------------------------------------------------------
// Raw wire

/// Bytes from hex text; whitespace and `#`-to-end-of-line comments are ignored.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("bad hex {text:?}: {e}"))
        })
        .collect()
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// MQTT variable byte integer (MQTT 5.0 1.5.5).
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// One packet: the first byte of the fixed header and the rest after the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// How a connection ended, as seen by [`Wire::expect_closed_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server closed (or reset) without sending anything more.
    Closed,
    /// The server sent DISCONNECT with this reason code (0 if absent), then closed.
    Disconnect(u8),
}

/// A send/expect driver for raw MQTT over plain TCP (the anonymous plaintext listener).
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    /// Bytes received but not yet consumed by an expectation.
    buf: Vec<u8>,
    eof: bool,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Wire {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("send {} failed: {e}", to_hex(bytes));
        }
    }

    /// Sends and tolerates the server having closed already (for floods after a violation).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads until `want` bytes are buffered, EOF, or the deadline.
    fn fill(&mut self, want: usize, deadline: Instant) {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < want && !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset is how some servers close after an error: treat it as the end.
                Err(_) => self.eof = true,
            }
        }
    }

    /// The next bytes must be exactly `want`.
    pub fn expect(&mut self, want: &[u8]) {
        self.fill(want.len(), Instant::now() + EVENT_DEADLINE);
        let got = &self.buf[..self.buf.len().min(want.len())];
        if got != want {
            panic!(
                "wire mismatch\n  expected: {}\n  got:      {}{}",
                to_hex(want),
                to_hex(got),
                if self.eof {
                    " <connection closed>"
                } else {
                    " <then nothing before the deadline>"
                }
            );
        }
        self.buf.drain(..want.len());
    }

    /// The next complete packet, or None if the connection ended first. Fails at the deadline.
    pub fn read_packet(&mut self) -> Option<RawPacket> {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if self.buf.len() >= 2 {
                let mut len = 0usize;
                let mut mult = 1usize;
                let mut i = 1;
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    let b = self.buf[i];
                    len += (b & 0x7f) as usize * mult;
                    mult *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                assert!(
                    complete || i <= 4,
                    "server sent a malformed remaining length: {}",
                    to_hex(&self.buf)
                );
                if complete && self.buf.len() >= i + len {
                    let first = self.buf[0];
                    let body = self.buf[i..i + len].to_vec();
                    self.buf.drain(..i + len);
                    return Some(RawPacket { first, body });
                }
            }
            if self.eof {
                assert!(
                    self.buf.is_empty(),
                    "connection closed in the middle of a packet: {}",
                    to_hex(&self.buf)
                );
                return None;
            }
            let before = self.buf.len();
            self.fill(self.buf.len() + 1, deadline);
            if self.buf.len() == before && !self.eof {
                panic!(
                    "no complete packet within {EVENT_DEADLINE:?}; buffered: {}",
                    to_hex(&self.buf)
                );
            }
        }
    }

    /// The next packet must be of `kind` (packet type, MQTT 5.0 2.1.2); returns it.
    pub fn expect_packet(&mut self, kind: u8) -> RawPacket {
        match self.read_packet() {
            Some(p) if p.kind() == kind => p,
            Some(p) => panic!(
                "expected packet type {kind}, got type {} ({:02x} {})",
                p.kind(),
                p.first,
                to_hex(&p.body)
            ),
            None => panic!("expected packet type {kind}, the connection was closed"),
        }
    }

    /// The server must close the connection without sending anything else.
    pub fn expect_closed(&mut self) {
        self.fill(usize::MAX, Instant::now() + EVENT_DEADLINE);
        assert!(
            self.buf.is_empty(),
            "expected the server to close without sending more, got {}",
            to_hex(&self.buf)
        );
        assert!(self.eof, "connection still open after {EVENT_DEADLINE:?}");
    }

    /// The server must close within `deadline`, optionally after a DISCONNECT (v5);
    /// other packets before it are a failure.
    pub fn expect_closed_within(&mut self, deadline: Duration) -> Ending {
        let end = Instant::now() + deadline;
        self.fill(usize::MAX, end);
        assert!(
            self.eof,
            "connection still open after {deadline:?}; received {}",
            to_hex(&self.buf)
        );
        if self.buf.is_empty() {
            return Ending::Closed;
        }
        let p = self.read_packet().expect("buffered packet");
        assert_eq!(
            p.kind(),
            14,
            "expected DISCONNECT or close, got {:02x} {}",
            p.first,
            to_hex(&p.body)
        );
        assert!(
            self.buf.is_empty(),
            "bytes after DISCONNECT: {}",
            to_hex(&self.buf)
        );
        Ending::Disconnect(p.body.first().copied().unwrap_or(0))
    }

    /// v5: the server must send DISCONNECT with `reason` and close (MQTT 5.0 4.13).
    pub fn expect_disconnect(&mut self, reason: u8) {
        match self.expect_closed_within(EVENT_DEADLINE) {
            Ending::Disconnect(r) => assert_eq!(
                r, reason,
                "DISCONNECT reason {r:#04x}, expected {reason:#04x}"
            ),
            Ending::Closed => panic!("connection closed without DISCONNECT {reason:#04x}"),
        }
    }

    /// v5 CONNACK: checks the reason code, returns (session present, properties).
    pub fn expect_connack_v5(&mut self, reason: u8) -> (bool, Props) {
        let p = self.expect_packet(2);
        assert!(p.body.len() >= 3, "short v5 CONNACK {}", to_hex(&p.body));
        assert_eq!(
            p.body[1],
            reason,
            "CONNACK reason {:#04x}, expected {reason:#04x}; body {}",
            p.body[1],
            to_hex(&p.body)
        );
        let (props, _) = Props::parse(&p.body[2..]);
        (p.body[0] & 1 == 1, props)
    }

    pub fn shutdown(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// MQTT 5.0 properties of a received packet (2.2.2), by identifier; raw value bytes.
#[derive(Debug, Clone, Default)]
pub struct Props(pub Vec<(u8, Vec<u8>)>);

impl Props {
    /// Parses a property block (length + properties); returns it and the bytes consumed.
    pub fn parse(bytes: &[u8]) -> (Props, usize) {
        let (len, mut at) = read_varint(bytes);
        let end = at + len;
        assert!(
            end <= bytes.len(),
            "property length {len} beyond the packet: {}",
            to_hex(bytes)
        );
        let mut out = Vec::new();
        while at < end {
            let id = bytes[at];
            at += 1;
            let size = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
                0x13 | 0x21 | 0x22 | 0x23 => 2,
                0x02 | 0x11 | 0x18 | 0x27 => 4,
                0x0b => {
                    let (_, n) = read_varint(&bytes[at..]);
                    n
                }
                0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                    2 + u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize
                }
                0x26 => {
                    let k = 2 + u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
                    k + 2 + u16::from_be_bytes([bytes[at + k], bytes[at + k + 1]]) as usize
                }
                other => panic!("unknown property {other:#04x} in {}", to_hex(bytes)),
            };
            out.push((id, bytes[at..at + size].to_vec()));
            at += size;
        }
        (Props(out), end)
    }

    pub fn get(&self, id: u8) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_slice())
    }

    /// A two- or four-byte integer property.
    pub fn int(&self, id: u8) -> Option<u32> {
        self.get(id)
            .map(|v| v.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
    }
}

fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    let mut mult = 1usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value += (b & 0x7f) as usize * mult;
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
        mult *= 128;
    }
    panic!("malformed variable byte integer {}", to_hex(bytes))
}

/// Builds a packet from its first byte and body (remaining length computed).
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    p.extend(varint(body.len()));
    p.extend_from_slice(body);
    p
}

/// MQTT UTF-8 string / binary data: two-byte length then bytes (MQTT 5.0 1.5.4).
pub fn mstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// A v5 CONNECT (MQTT 5.0 3.1): clean start, keep alive, properties block bytes, client id.
pub fn connect_v5(client_id: &str, keepalive: u16, props: &[u8]) -> Vec<u8> {
    let mut body = mstr(b"MQTT");
    body.push(5); // protocol level
    body.push(0x02); // Clean Start
    body.extend(keepalive.to_be_bytes());
    body.extend(varint(props.len()));
    body.extend_from_slice(props);
    body.extend(mstr(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A v5 CONNECT with Clean Start as given and a Session Expiry Interval property (3.1.2.11.2).
pub fn connect_v5_session(client_id: &str, clean_start: bool, session_expiry: u32) -> Vec<u8> {
    let mut body = mstr(b"MQTT");
    body.push(5);
    body.push(if clean_start { 0x02 } else { 0x00 });
    body.extend(60u16.to_be_bytes());
    body.extend([5, 0x11]);
    body.extend(session_expiry.to_be_bytes());
    body.extend(mstr(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A 3.1.1 CONNECT (MQTT 3.1.1 3.1) with clean session.
pub fn connect_v311(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = mstr(b"MQTT");
    body.push(4);
    body.push(0x02);
    body.extend(keepalive.to_be_bytes());
    body.extend(mstr(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A unique suffix for client ids and topics within one test process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// The operator CLI and other command-line tools

/// `moat ARGS --data-dir DIR` (the operator CLI against this hub).
pub fn cli(hub: &Hub, args: &[&str]) -> Output {
    run_with_deadline(
        Command::new(moat_bin())
            .args(args)
            .arg("--data-dir")
            .arg(hub.data_dir()),
        EVENT_DEADLINE,
    )
}

/// [`cli`], which must succeed; its standard output, trimmed.
pub fn cli_ok(hub: &Hub, args: &[&str]) -> String {
    let out = cli(hub, args);
    assert!(
        out.status.success(),
        "moat {} failed\n{}",
        args.join(" "),
        show_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `program ARGS` run in `dir`.
pub fn tool(program: &str, args: &[&str], dir: &Path) -> Output {
    run_with_deadline(
        Command::new(program).args(args).current_dir(dir),
        EVENT_DEADLINE,
    )
}

/// [`tool`], which must succeed; its standard output.
pub fn tool_ok(program: &str, args: &[&str], dir: &Path) -> String {
    let out = tool(program, args, dir);
    assert!(
        out.status.success(),
        "{program} {} failed\n{}",
        args.join(" "),
        show_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns Some, or fails after `deadline` with `what`.
pub fn eventually<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "not within {deadline:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Audit entries (JSON lines) with `action`, waiting (bounded) for the hub's asynchronous
/// audit writer; fails the test when none appears.
pub fn audit_lines(hub: &Hub, action: &str) -> Vec<String> {
    eventually(EVENT_DEADLINE, &format!("audit {action}"), || {
        let found: Vec<String> = cli_ok(hub, &["audit", "export"])
            .lines()
            .filter(|l| l.contains(&format!("\"action\":\"{action}\"")))
            .map(str::to_owned)
            .collect();
        (!found.is_empty()).then_some(found)
    })
}
