//! `moat-bench`: Moat and Debian's Mosquitto side by side, on loopback, in one run.
//!
//! Owns: starting both brokers on free high ports (never 1883), a load-generating MQTT client
//! on the workspace codec, the scenarios of issue 2's "How we know", and the table of both
//! figures and their ratio. Does not own: any broker logic; it only drives the `moat` binary
//! and `/usr/sbin/mosquitto` as a user would.
//!
//! Every scenario runs against a freshly started broker, first Mosquitto then Moat, with the
//! same client code and settings. Counts and durations are flags; the defaults keep `all`
//! within about five minutes. Both brokers are killed at the end of each scenario.

#![forbid(unsafe_code)]

mod brokers;
mod client;
mod detect;
mod ota;
mod pki;
mod procfs;
mod report;
mod scenarios;
mod stamp;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::brokers::{BrokerKind, BrokerSetup, RunningBroker};
use crate::report::ScenarioReport;
use crate::scenarios::{Better, Figure, Outcome, Scenario, Settings};

/// Open files the harness asks for: 10,000 idle connections are 10,000 descriptors in the
/// harness and as many in the broker, which inherits the limit.
const NOFILE_LIMIT: u64 = 65_536;

/// Runs Moat and Mosquitto through the same MQTT workloads and prints both figures side by side.
#[derive(Debug, Parser)]
#[command(name = "moat-bench")]
struct Cli {
    /// Scenarios to run.
    #[arg(value_enum, default_value = "all")]
    scenarios: Vec<Scenario>,

    /// Brokers to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mosquitto,moat"
    )]
    brokers: Vec<BrokerKind>,

    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,

    /// An extra global line for the generated mosquitto.conf (repeatable), for example
    /// `--mosquitto-option "set_tcp_nodelay true"`. The default is Debian's defaults.
    #[arg(long)]
    mosquitto_option: Vec<String>,

    /// The Moat binary (default: target/release/moat of this workspace).
    #[arg(long)]
    moat: Option<PathBuf>,

    /// An extra line for Moat's generated configuration file (repeatable), after its
    /// `[shield]` table, for example `--moat-config '[detect]' --moat-config 'mode = "off"'`.
    #[arg(long)]
    moat_config: Vec<String>,

    /// Load before each throughput window (and before latency sampling).
    #[arg(long, default_value = "2s", value_parser = stats::parse_duration)]
    warmup: Duration,

    /// Measuring window of the throughput scenarios.
    #[arg(long, default_value = "10s", value_parser = stats::parse_duration)]
    window: Duration,

    /// Publishers in the fan-in scenarios.
    #[arg(long, default_value_t = 4)]
    publishers: usize,

    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,

    /// Unacknowledged QoS 1 messages each fan-in publisher keeps in flight.
    #[arg(long, default_value_t = 100)]
    qos1_window: usize,

    /// Subscribers in the fan-out scenario.
    #[arg(long, default_value_t = 100)]
    fan_out_subscribers: usize,

    /// Paced publish rate of the latency scenario, in messages per second.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,

    /// Sampled duration of the latency scenario, after the warm-up (in `latency-rounds`,
    /// each broker's, split over its rounds).
    #[arg(long, default_value = "10s", value_parser = stats::parse_duration)]
    latency_duration: Duration,

    /// Rounds per broker of the `latency-rounds` scenario.
    #[arg(long, default_value_t = 10)]
    latency_rounds: u32,

    /// Confine the harness to the first CPU and every broker to the last (`taskset`), so
    /// that thread placement, which on a small virtual machine moves latency by more than
    /// the brokers differ, is the same for every broker. Needs at least 2 CPUs.
    #[arg(long)]
    pin: bool,

    /// Devices in the mutual-TLS namespace scenario.
    #[arg(long, default_value_t = 8)]
    devices: usize,

    /// Idle plaintext connections.
    #[arg(long, default_value_t = 10_000)]
    idle_tcp: usize,

    /// Idle mutual-TLS connections (each needs its own device certificate, and issuing
    /// them is the slowest part of the setup).
    #[arg(long, default_value_t = 1_000)]
    idle_tls: usize,

    /// Full mutual-TLS handshakes to time.
    #[arg(long, default_value_t = 2_000)]
    handshakes: usize,

    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 8)]
    handshake_concurrency: usize,

    /// Device certificates the handshakes take turns with (at least one per handshake in
    /// progress). The default, as many as handshakes at once, measures devices that reconnect;
    /// as many as `--handshakes` measures each device's first connection.
    #[arg(long, default_value_t = 8)]
    handshake_devices: usize,

    /// Connections being opened at once in the idle scenarios.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,

    /// Longest a scenario may run on one broker before it is abandoned (a broker that stops
    /// answering must not hang the run). A latency scenario asked to run longer gets its
    /// planned duration and a minute.
    #[arg(long, default_value = "3m", value_parser = stats::parse_duration)]
    scenario_timeout: Duration,

    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,

    /// Devices in the `detect` scenario.
    #[arg(long, default_value_t = 100_000)]
    detect_devices: usize,

    /// Virtual seconds simulated in the `detect` scenario.
    #[arg(long, default_value_t = 300)]
    detect_seconds: u64,

    /// Devices verified in process in the `ota` scenario.
    #[arg(long, default_value_t = 1_000)]
    ota_devices: usize,

    /// Devices fetching from the hub at once in the `ota` scenario.
    #[arg(long, default_value_t = 200)]
    ota_fetchers: usize,

    /// Image size of the `ota` scenario, in KiB.
    #[arg(long, default_value_t = 1024)]
    ota_image_kib: usize,

    /// Print a Markdown block for BENCHMARKS.md instead of the text tables.
    #[arg(long)]
    markdown: bool,

    /// Keep the scratch directories (configurations, certificates, broker logs).
    #[arg(long)]
    keep_scratch: bool,
}

impl Cli {
    fn settings(&self) -> Settings {
        Settings {
            warmup: self.warmup,
            window: self.window,
            publishers: self.publishers,
            payload_size: self.payload,
            qos1_window: self.qos1_window.max(1),
            fan_out_subscribers: self.fan_out_subscribers,
            latency_rate: self.latency_rate,
            latency_duration: self.latency_duration,
            latency_rounds: self.latency_rounds.max(1),
            devices: self.devices,
            idle_tcp: self.idle_tcp,
            idle_tls: self.idle_tls,
            handshakes: self.handshakes,
            handshake_concurrency: self.handshake_concurrency,
            handshake_devices: self.handshake_devices,
            connect_concurrency: self.connect_concurrency,
        }
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let mut chosen: Vec<Scenario> = if self.scenarios.contains(&Scenario::All) {
            Scenario::EACH.to_vec()
        } else {
            self.scenarios.clone()
        };
        chosen.dedup();
        chosen
    }

    fn moat_binary(&self) -> PathBuf {
        self.moat.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/moat")
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let settings = cli.settings();
    let mut scenarios = cli.scenarios();
    // The detection engine needs no broker: run it first and alone.
    if scenarios.contains(&Scenario::Detect) {
        detect::run(&detect::DetectSettings {
            devices: cli.detect_devices,
            seconds: cli.detect_seconds,
        })?;
        scenarios.retain(|s| *s != Scenario::Detect);
        if scenarios.is_empty() {
            return Ok(());
        }
    }
    // Signed updates: in process, then against a Moat hub of its own.
    if scenarios.contains(&Scenario::Ota) {
        ota::run(
            &ota::OtaSettings {
                devices: cli.ota_devices,
                fetchers: cli.ota_fetchers,
                image_bytes: cli.ota_image_kib * 1024,
            },
            &cli.moat_binary(),
            cli.keep_scratch,
        )?;
        scenarios.retain(|s| *s != Scenario::Ota);
        if scenarios.is_empty() {
            return Ok(());
        }
    }
    let devices = settings.devices_needed(&scenarios);
    let broker_cpus = if cli.pin { pin_harness()? } else { None };

    // Before any broker is spawned, so that they inherit it. Each side holds one
    // descriptor per idle connection, plus a margin for everything else.
    let needed = settings.idle_tcp.max(settings.idle_tls) as u64 + 1024;
    match procfs::raise_nofile_limit(NOFILE_LIMIT) {
        Ok(limit) if limit >= needed => {}
        Ok(limit) => eprintln!(
            "warning: open-files limit is {limit}, the idle scenarios need {needed}; \
             run `ulimit -n {NOFILE_LIMIT}` (as root) first"
        ),
        Err(e) => eprintln!("warning: {e}"),
    }

    let mut setups = Vec::new();
    for kind in &cli.brokers {
        eprintln!("preparing {kind} ({devices} device certificates)...");
        let setup = match kind {
            BrokerKind::Mosquitto => BrokerSetup::mosquitto(
                &cli.mosquitto,
                devices,
                &cli.mosquitto_option,
                cli.keep_scratch,
            ),
            BrokerKind::Moat => BrokerSetup::moat(
                &cli.moat_binary(),
                devices,
                &cli.moat_config,
                cli.keep_scratch,
            ),
        };
        match setup {
            Ok(mut setup) => {
                setup.cpus.clone_from(&broker_cpus);
                setups.push(setup);
            }
            Err(e) => eprintln!("warning: skipping {kind}: {e}"),
        }
    }
    if setups.is_empty() {
        return Err("no broker could be prepared".to_owned());
    }

    match machine_load(Duration::from_secs(1)) {
        Ok(cores) if cores > 0.25 => eprintln!(
            "warning: other processes are using {cores:.2} cores; the figures will be \
             skewed (see \"CPU of other processes\" in each table)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: {e}"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("starting the client runtime: {e}"))?;
    // Interrupted or terminated: stop the brokers started so far and remove their scratch
    // directories, which no `Drop` would.
    runtime.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("warning: no signal handler; a killed run leaves its brokers running");
            return;
        };
        let code = tokio::select! {
            _ = terminate.recv() => 143,
            _ = interrupt.recv() => 130,
        };
        brokers::stop_all();
        pki::remove_scratch_dirs();
        std::process::exit(code);
    });

    let mut reports = Vec::new();
    for scenario in scenarios {
        let title = scenario.title(&settings);
        let mut runs = Vec::new();
        // A scenario asked to run longer than the timeout gets its planned time and a minute.
        let scenario_timeout = cli
            .scenario_timeout
            .max(scenario.planned(&settings, setups.len()) + Duration::from_secs(60));
        if matches!(scenario, Scenario::LatencyPaired | Scenario::LatencyRounds) {
            eprintln!("{title}: every broker at once ...");
            runs = all_at_once(scenario, &runtime, &setups, &settings, scenario_timeout);
            reports.push(ScenarioReport {
                scenario,
                title,
                runs,
            });
            continue;
        }
        for setup in &setups {
            eprintln!("{title}: {} ...", setup.kind);
            let outcome = setup.start().and_then(|broker| {
                let background = Background::start(broker.pid)?;
                let run = scenarios::run(scenario, &broker, &setup.pki, &settings);
                let mut outcome = runtime
                    .block_on(async { tokio::time::timeout(scenario_timeout, run).await })
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "gave up after {:?} (raise --scenario-timeout?)",
                            scenario_timeout
                        ))
                    });
                if let Ok(outcome) = &mut outcome {
                    outcome.figures.push(Figure::new(
                        "CPU of other processes",
                        "cores",
                        background.finish()?,
                        Better::Neither,
                    ));
                }
                drop(broker);
                outcome
            });
            if let Err(e) = &outcome {
                eprintln!("  {} failed: {e}", setup.kind);
            }
            runs.push((setup.kind, outcome));
        }
        reports.push(ScenarioReport {
            scenario,
            title,
            runs,
        });
    }
    drop(runtime);

    if cli.markdown {
        println!("{}", header_markdown(&setups));
        println!("{}", report::markdown(&reports));
    } else {
        println!("{}", header_text(&setups));
        println!("{}", report::text(&reports));
    }
    let failed = reports
        .iter()
        .flat_map(|r| &r.runs)
        .filter(|(_, outcome)| outcome.is_err())
        .count();
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} scenario run(s) failed; see the notes above")),
    }
}

/// Measures how much CPU the rest of the machine used while a scenario ran: everything
/// busy minus the broker and the harness. Anything well above zero means the figures next
/// to it were taken on a shared machine.
struct Background {
    pid: u32,
    at: Instant,
    machine: Duration,
    broker: Duration,
    harness: Duration,
}

impl Background {
    fn start(pid: u32) -> Result<Self, String> {
        Ok(Self {
            pid,
            at: Instant::now(),
            machine: procfs::machine_busy_time()?,
            broker: procfs::cpu_time(pid)?,
            harness: procfs::own_cpu_time()?,
        })
    }

    /// Cores used by other processes on average since `start`.
    fn finish(self) -> Result<f64, String> {
        let machine = procfs::machine_busy_time()?.saturating_sub(self.machine);
        let ours = procfs::cpu_time(self.pid)?.saturating_sub(self.broker)
            + procfs::own_cpu_time()?.saturating_sub(self.harness);
        Ok(machine.saturating_sub(ours).as_secs_f64() / self.at.elapsed().as_secs_f64())
    }
}

/// Cores the machine keeps busy on average over `period`, while the harness sleeps.
fn machine_load(period: Duration) -> Result<f64, String> {
    let before = procfs::machine_busy_time()?;
    std::thread::sleep(period);
    let busy = procfs::machine_busy_time()?.saturating_sub(before);
    Ok(busy.as_secs_f64() / period.as_secs_f64())
}

/// Facts a reader needs to judge the figures: machine, versions, command.
fn environment(setups: &[BrokerSetup]) -> Vec<(String, String)> {
    // Online CPUs, not the ones this process may use (`--pin` confines it to one).
    let cpus = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |info| {
        info.lines().filter(|l| l.starts_with("processor")).count()
    });
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mut facts = vec![
        ("machine".to_owned(), format!("{cpus} CPUs, {model}")),
        (
            "command".to_owned(),
            std::env::args()
                .map(|arg| {
                    if arg.contains(' ') {
                        format!("\"{arg}\"")
                    } else {
                        arg
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    for setup in setups {
        let pinned = setup
            .cpus
            .as_ref()
            .map_or_else(String::new, |cpus| format!(" (pinned to CPU {cpus})"));
        facts.push((
            setup.kind.to_string(),
            format!("{}{pinned}", setup.version()),
        ));
    }
    facts
}

fn header_text(setups: &[BrokerSetup]) -> String {
    environment(setups)
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn header_markdown(setups: &[BrokerSetup]) -> String {
    environment(setups)
        .into_iter()
        .map(|(k, v)| format!("- {k}: `{v}`"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Confines this process (before it starts any thread) to the first CPU, and returns the
/// CPU list for the brokers: the last CPU.
fn pin_harness() -> Result<Option<String>, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!("warning: --pin needs at least 2 CPUs; running unpinned");
        return Ok(None);
    }
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0"])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running taskset (util-linux) for --pin: {e}"))?;
    if !status.success() {
        return Err(format!("taskset for --pin failed: {status}"));
    }
    Ok(Some((cpus - 1).to_string()))
}

/// Runs a latency scenario that starts every broker at once: one result each.
fn all_at_once(
    scenario: Scenario,
    runtime: &tokio::runtime::Runtime,
    setups: &[BrokerSetup],
    settings: &Settings,
    timeout: Duration,
) -> Vec<(BrokerKind, Result<Outcome, String>)> {
    let mut started = Vec::new();
    for setup in setups {
        match setup.start() {
            Ok(broker) => started.push(broker),
            Err(e) => {
                eprintln!("  {} failed: {e}", setup.kind);
                return setups.iter().map(|s| (s.kind, Err(e.clone()))).collect();
            }
        }
    }
    let brokers: Vec<&RunningBroker> = started.iter().collect();
    let outcomes = runtime
        .block_on(async {
            let outcomes = async {
                if scenario == Scenario::LatencyRounds {
                    scenarios::latency_rounds(&brokers, settings).await
                } else {
                    scenarios::latency_paired(&brokers, settings).await
                }
            };
            tokio::time::timeout(timeout, outcomes).await
        })
        .unwrap_or_else(|_| {
            let e = format!("gave up after {timeout:?} (raise --scenario-timeout?)");
            brokers.iter().map(|_| Err(e.clone())).collect()
        });
    setups.iter().map(|s| s.kind).zip(outcomes).collect()
}
