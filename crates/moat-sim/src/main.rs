//! `moat-sim`: runs the simulator and writes its ground truth, the engine's alerts and a
//! report. Thin: options in, files out; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use moat_detect::DetectConfig;
use moat_sim::attack::{Intensity, Scenario};
use moat_sim::eval::{GRACE_MS, RunFacts, evaluate, old_loud_set_p95, render, targets};
use moat_sim::hub::GroupMode;
use moat_sim::replay::{ReplayOptions, replay};

#[derive(Debug, Parser)]
#[command(
    name = "moat-sim",
    about = "Fleet and attack simulator for Moat's detection engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accelerated replay: the engine fed in virtual time.
    Replay(ReplayArgs),
    /// Live: the fleet and the attacks against a running hub on loopback, over mutual-TLS
    /// MQTT, in wall-clock time.
    Live(LiveArgs),
}

#[derive(Debug, clap::Args)]
struct LiveArgs {
    /// The hub's MQTT over mutual TLS listener.
    #[arg(long, default_value = "127.0.0.1:8883")]
    hub: std::net::SocketAddr,
    /// The hub's data directory (the `moat` CLI provisions devices and reads alerts there;
    /// run as the hub's user).
    #[arg(long)]
    data_dir: PathBuf,
    /// The `moat` executable [default: `moat` next to moat-sim, else on PATH].
    #[arg(long)]
    moat: Option<PathBuf>,
    /// Benign devices.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Attack scenario names (comma-separated), `all`, or `none`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// `low`, `medium`, `high` or `all`.
    #[arg(long, default_value = "medium")]
    intensity: String,
    /// Seconds of benign traffic before the first attack.
    #[arg(long, default_value_t = 60)]
    warmup_secs: u64,
    /// Devices join over this many seconds (at most 60; the rest at once).
    #[arg(long, default_value_t = 20)]
    ramp_secs: u64,
    /// Seconds each attack lasts.
    #[arg(long, default_value_t = 20)]
    attack_secs: u64,
    /// Seconds of calm between attacks (with --concurrent: between their starts).
    #[arg(long, default_value_t = 10)]
    gap_secs: u64,
    /// Attacks overlap: each starts --gap-secs after the previous one started.
    #[arg(long)]
    concurrent: bool,
    /// Seconds of benign traffic after the last attack (late alerts arrive meanwhile).
    #[arg(long, default_value_t = 20)]
    tail_secs: u64,
    /// Seconds after an attack's end during which an alert still counts for it.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// Output directory.
    #[arg(long, default_value = "moat-sim-live-out")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Benign devices in the initial fleet (5 % more join during onboarding).
    #[arg(long, default_value_t = 300)]
    devices: usize,
    /// Simulated days.
    #[arg(long, default_value_t = 10.0)]
    days: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Attack scenario name, `all`, or `none`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// `low`, `medium`, `high` or `all`.
    #[arg(long, default_value = "all")]
    intensity: String,
    /// Output directory.
    #[arg(long, default_value = "moat-sim-out")]
    out: PathBuf,
    /// `assigned`: events name the device's group; `none`: as moat-hub feeds the engine today.
    #[arg(long, value_enum, default_value_t = GroupMode::Assigned)]
    groups: GroupMode,
    /// Leave out the hard negatives (certificate rotation, restarts, outages, fleet update,
    /// rate doubling, onboarding).
    #[arg(long)]
    no_hard_negatives: bool,
    /// The engine's configuration (the `[detect]` table's contents, TOML); defaults otherwise.
    #[arg(long)]
    detect_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => run(&args),
        Command::Live(args) => run_live(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &ReplayArgs) -> Result<(), String> {
    let scenarios = match args.scenario.as_str() {
        "all" => Scenario::ALL.to_vec(),
        "none" => Vec::new(),
        s => vec![Scenario::parse(s).ok_or_else(|| {
            format!(
                "unknown scenario {s:?}; one of: all, none, {}",
                Scenario::ALL.map(Scenario::as_str).join(", ")
            )
        })?],
    };
    let intensities = match args.intensity.as_str() {
        "all" => Intensity::ALL.to_vec(),
        s => vec![
            Intensity::parse(s)
                .ok_or_else(|| format!("unknown intensity {s:?}; low, medium, high or all"))?,
        ],
    };
    if !(args.days > 0.0 && args.days.is_finite()) || args.devices == 0 {
        return Err("--days and --devices must be positive".to_owned());
    }
    let detect = match &args.detect_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str::<DetectConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => DetectConfig::default(),
    };
    let opts = ReplayOptions {
        devices: args.devices,
        days: args.days,
        seed: args.seed,
        scenarios,
        intensities,
        hard_negatives: !args.no_hard_negatives,
        groups: args.groups,
        detect,
    };
    let run = replay(&opts)?;
    let report = evaluate(
        &run.incidents,
        &run.hard_negatives,
        run.alerts.clone(),
        run.device_days,
        &run.models,
        GRACE_MS,
    );
    let facts = RunFacts {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        devices: run.devices,
        days: args.days,
        seed: args.seed,
        groups: format!("{:?}", args.groups).to_lowercase(),
        events: run.events,
        wall_secs: run.wall_secs,
        model_days: run.model_days.clone(),
    };
    let md = render(&report, &facts, &run.incidents, &run.hard_negatives);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let write = |name: &str, body: String| {
        let p = args.out.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("ground_truth.jsonl", lines(&run.ground_truth))?;
    write("alerts.jsonl", lines(&run.output_lines))?;
    write("report.md", md)?;
    println!(
        "moat-sim replay: {} devices, {:.1} device-days, {} incidents, {} alerts, {} events in {:.1} s",
        run.devices,
        run.device_days,
        run.incidents.len(),
        report.alerts.len(),
        run.events,
        run.wall_secs
    );
    for (name, ok, fig) in targets(&report) {
        println!("  [{}] {name}: {fig}", if ok { "met" } else { "MISSED" });
    }
    if let Some(fig) = old_loud_set_p95(&report) {
        println!("  [info] earlier loud set (loud scenarios and clones at medium and high): {fig}");
    }
    let detected = report.incidents.iter().filter(|i| i.detected).count();
    println!(
        "  incidents detected: {detected}/{}",
        report.incidents.len()
    );
    println!(
        "  wrote {}/{{ground_truth.jsonl,alerts.jsonl,report.md}}",
        args.out.display()
    );
    Ok(())
}

fn run_live(args: &LiveArgs) -> Result<(), String> {
    let scenarios = match args.scenario.as_str() {
        "all" => Scenario::ALL.to_vec(),
        "none" => Vec::new(),
        list => list
            .split(',')
            .map(|s| {
                Scenario::parse(s.trim()).ok_or_else(|| {
                    format!(
                        "unknown scenario {s:?}; one of: all, none, {}",
                        Scenario::ALL.map(Scenario::as_str).join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let intensities = match args.intensity.as_str() {
        "all" => Intensity::ALL.to_vec(),
        s => vec![
            Intensity::parse(s)
                .ok_or_else(|| format!("unknown intensity {s:?}; low, medium, high or all"))?,
        ],
    };
    let moat = args.moat.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("moat")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("moat"))
    });
    let secs = std::time::Duration::from_secs;
    let opts = moat_sim::live::LiveOptions {
        hub: args.hub,
        data_dir: args.data_dir.clone(),
        moat,
        devices: args.devices,
        seed: args.seed,
        scenarios,
        intensities,
        warmup: secs(args.warmup_secs),
        ramp: secs(args.ramp_secs),
        attack: secs(args.attack_secs),
        gap: secs(args.gap_secs),
        concurrent: args.concurrent,
        tail: secs(args.tail_secs),
        grace: secs(args.grace_secs),
        out: args.out.clone(),
    };
    let run = moat_sim::live::live(&opts)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let summary = moat_sim::live::score_and_write(&run, &args.out, command, args.seed)?;
    println!(
        "moat-sim live: {} devices, {:.3} device-days, {} incidents, {} alerts, {} messages in {:.1} s",
        run.devices,
        run.device_days,
        run.incidents.len(),
        summary.alerts,
        run.published,
        run.wall_secs
    );
    let detected = summary.incidents.iter().filter(|i| i.detected).count();
    println!(
        "  incidents detected: {detected}/{}",
        summary.incidents.len()
    );
    println!(
        "  false alerts: {} ({:.2} per device-day), mitigating: {}, benign devices affected: {}, collateral: {}",
        summary.false_alerts,
        summary.fp_per_device_day,
        summary.benign_mitigations,
        summary.benign_devices_affected,
        summary.collateral_devices
    );
    println!(
        "  wrote {}/{{ground_truth.jsonl,alerts.jsonl,effects.jsonl,report.md,summary.json}}",
        args.out.display()
    );
    Ok(())
}

fn lines(v: &[String]) -> String {
    let mut s = v.join("\n");
    s.push('\n');
    s
}
