//! `moat-agent`: argv parsing and output only; everything else is the library.
//!
//! Exit codes: 0 success, 1 local failure (for `update`: the install failed or was rolled
//! back), 2 misconfiguration (bad flags or files), 3 refused by the hub, 4 verification failed
//! (for `update`: the update was refused), 5 hub unreachable, 6 malformed hub response.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use moat_agent::update::command::CommandLine;
use moat_agent::update::inventory::InventorySource;
use moat_agent::{
    AgentError, Blame, EnrollOptions, EnrollmentToken, ExistingIdentity, HubUrl, Overrides,
    RenewMode, RenewOutcome, RenewalThreshold, Reports, UpdateOptions, UpdateOutcome, format_utc,
};
use moat_types::DeviceId;

#[derive(Debug, Parser)]
#[command(
    name = "moat-agent",
    version,
    about = "The device side of Moat: enroll with a token, keep the certificate renewed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct DirArg {
    /// The identity directory (device.key, device.crt, ca.crt, agent.json).
    #[arg(long, env = "MOAT_AGENT_DIR", default_value = "/var/lib/moat-agent")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct ThresholdArg {
    /// Renew when less than this fraction of the certificate's lifetime remains (`1/3`,
    /// `25%`); default: what enroll remembered.
    #[arg(long, value_name = "FRACTION")]
    renew_when_remaining: Option<RenewalThreshold>,
}

/// Signed updates (see `crates/moat-ota/README.md` for the contract). Commands are split at
/// whitespace and run without a shell.
#[derive(Debug, Args)]
struct UpdateArgs {
    /// This device's hardware class (images published with --hardware must match).
    #[arg(long, env = "MOAT_AGENT_HARDWARE", value_name = "CLASS")]
    hardware: Option<String>,
    /// The version installed before the agent's first update (its own record wins after).
    #[arg(
        long,
        env = "MOAT_AGENT_INSTALLED_VERSION",
        value_name = "VERSION",
        default_value = "0"
    )]
    installed_version: String,
    /// The pinned image repository root [default: DIR/image-root.json].
    #[arg(long, env = "MOAT_AGENT_IMAGE_ROOT", value_name = "FILE")]
    image_root: Option<PathBuf>,
    /// The pinned director root [default: DIR/director-root.json].
    #[arg(long, env = "MOAT_AGENT_DIRECTOR_ROOT", value_name = "FILE")]
    director_root: Option<PathBuf>,
    /// Update state, trusted metadata and downloads [default: DIR/ota].
    #[arg(long, env = "MOAT_AGENT_OTA_DIR", value_name = "DIR")]
    ota_dir: Option<PathBuf>,
    /// Installs an image; the image path is appended as the last argument.
    #[arg(long, env = "MOAT_AGENT_INSTALL_CMD", value_name = "CMD")]
    install_cmd: Option<CommandLine>,
    /// Restarts into the new version after the install (none: health check at once).
    #[arg(long, env = "MOAT_AGENT_REBOOT_CMD", value_name = "CMD")]
    reboot_cmd: Option<CommandLine>,
    /// Checks the new version after the restart; exit 0 is healthy.
    #[arg(long, env = "MOAT_AGENT_HEALTH_CMD", value_name = "CMD")]
    health_cmd: Option<CommandLine>,
    /// Makes the new version permanent after a good health check.
    #[arg(long, env = "MOAT_AGENT_CONFIRM_CMD", value_name = "CMD")]
    confirm_cmd: Option<CommandLine>,
    /// Restores the previous version after a failed health check or too many starts.
    #[arg(long, env = "MOAT_AGENT_ROLLBACK_CMD", value_name = "CMD")]
    rollback_cmd: Option<CommandLine>,
    /// Asks for consent before downloading an update whose campaign requires it (`moat ota
    /// campaign create --consent`); exit 0 is yes. Without it such updates are declined;
    /// other updates never ask.
    #[arg(long, env = "MOAT_AGENT_CONSENT_CMD", value_name = "CMD")]
    consent_cmd: Option<CommandLine>,
    /// Starts a new version gets to pass its health check before the agent rolls back.
    #[arg(long, value_name = "N", default_value_t = moat_agent::update::DEFAULT_MAX_BOOT_ATTEMPTS)]
    max_boot_attempts: u32,
    /// Where reports go: mqtts://HOST:PORT, or `off` [default: the hub's host, port 8883].
    #[arg(long, env = "MOAT_AGENT_MQTT", value_name = "URL")]
    mqtt: Option<Reports>,
    /// The package inventory: a JSON file of {"name","version","purl"} packages.
    #[arg(
        long,
        env = "MOAT_AGENT_INVENTORY",
        value_name = "FILE",
        conflicts_with = "inventory_cmd"
    )]
    inventory: Option<PathBuf>,
    /// The package inventory: a command printing that JSON.
    #[arg(long, env = "MOAT_AGENT_INVENTORY_CMD", value_name = "CMD")]
    inventory_cmd: Option<CommandLine>,
    /// How often to check for updates (`90s`, `15m`, `6h`, `1d`).
    #[arg(long, env = "MOAT_AGENT_UPDATE_EVERY", value_name = "INTERVAL", default_value = "1h",
          value_parser = moat_agent::update::parse_interval)]
    update_every: std::time::Duration,
}

impl UpdateArgs {
    /// The update options, `None` if updates are not configured (no --install-cmd).
    fn options(&self, dir: &std::path::Path) -> Result<Option<UpdateOptions>, AgentError> {
        let Some(install) = self.install_cmd.clone() else {
            if self.hardware.is_some() {
                return Err(AgentError::Misconfigured(
                    "--hardware is set but --install-cmd is not: updates need an install \
                     command"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let hardware = self.hardware.clone().ok_or_else(|| {
            AgentError::Misconfigured(
                "updates need this device's hardware class (--hardware or \
                 MOAT_AGENT_HARDWARE)"
                    .into(),
            )
        })?;
        let mut o = UpdateOptions::new(dir, hardware, install);
        o.installed_version = self.installed_version.clone();
        if let Some(p) = &self.image_root {
            o.image_root = p.clone();
        }
        if let Some(p) = &self.director_root {
            o.director_root = p.clone();
        }
        if let Some(p) = &self.ota_dir {
            o.work_dir = p.clone();
        }
        o.commands.reboot = self.reboot_cmd.clone();
        o.commands.health = self.health_cmd.clone();
        o.commands.confirm = self.confirm_cmd.clone();
        o.commands.rollback = self.rollback_cmd.clone();
        o.commands.consent = self.consent_cmd.clone();
        o.max_boot_attempts = self.max_boot_attempts;
        if let Some(r) = &self.mqtt {
            o.reports = r.clone();
        }
        o.inventory = match (&self.inventory, &self.inventory_cmd) {
            (Some(f), _) => Some(InventorySource::File(f.clone())),
            (None, Some(c)) => Some(InventorySource::Command(c.clone())),
            (None, None) => None,
        };
        Ok(Some(o))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device: generate a key here, get it certified by the hub with a token.
    Enroll {
        /// The hub's EST base URL, e.g. https://hub.example:8443.
        #[arg(long)]
        hub: HubUrl,
        /// The root CA (PEM) the hub must chain to (the hub's pki/root-ca.crt).
        #[arg(long, value_name = "CA.pem")]
        ca: PathBuf,
        /// The enrollment token from `moat token create` (prefer the environment variable:
        /// command lines are visible to other users).
        #[arg(long, env = "MOAT_ENROLL_TOKEN", hide_env_values = true)]
        token: EnrollmentToken,
        /// The device id to enroll as.
        #[arg(long, value_parser = parse_device_id)]
        id: DeviceId,
        #[command(flatten)]
        dir: DirArg,
        /// Replace an identity already in the directory.
        #[arg(long)]
        force: bool,
        /// Renew when less than this fraction of the lifetime remains (remembered).
        #[arg(long, value_name = "FRACTION", default_value_t = RenewalThreshold::DEFAULT)]
        renew_when_remaining: RenewalThreshold,
    },
    /// Renew the certificate (with a new key) if renewal is due.
    Renew {
        #[command(flatten)]
        dir: DirArg,
        /// Talk to this hub instead of the one remembered from enroll (not saved).
        #[arg(long)]
        hub: Option<HubUrl>,
        /// Renew now even if not due.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        threshold: ThresholdArg,
    },
    /// Keep renewing when due, forever (retrying with backoff on failure); with
    /// --install-cmd, also check for updates every --update-every.
    Run {
        #[command(flatten)]
        dir: DirArg,
        /// Talk to this hub instead of the one remembered from enroll (not saved).
        #[arg(long)]
        hub: Option<HubUrl>,
        #[command(flatten)]
        threshold: ThresholdArg,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Check for a signed update and install it (finishing an install pending from before a
    /// restart first).
    Update {
        #[command(flatten)]
        dir: DirArg,
        /// Talk to this hub instead of the one remembered from enroll (not saved).
        #[arg(long)]
        hub: Option<HubUrl>,
        /// One cycle, then exit (otherwise: every --update-every, forever).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Show the device id, certificate serial, expiry and whether renewal is due, and the
    /// update state (installed version, install in progress, last result).
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        threshold: ThresholdArg,
        /// The update directory [default: DIR/ota].
        #[arg(long, env = "MOAT_AGENT_OTA_DIR", value_name = "DIR")]
        ota_dir: Option<PathBuf>,
    },
}

fn parse_device_id(s: &str) -> Result<DeviceId, moat_types::IdError> {
    DeviceId::parse(s)
}

fn exit_code(e: &AgentError) -> u8 {
    match e.blame() {
        Blame::Misconfigured => 2,
        Blame::Refused => 3,
        Blame::Untrusted => 4,
        Blame::Unreachable => 5,
        Blame::HubMisbehaved => 6,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOAT_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Agent(e)) => {
            eprintln!("moat-agent: {e}");
            ExitCode::from(exit_code(&e))
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// How `execute` fails: an error to print, or an outcome already printed that still needs a
/// non-zero exit code.
enum Failure {
    Agent(AgentError),
    Exit(u8),
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::Agent(e)
    }
}

async fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::Enroll {
            hub,
            ca,
            token,
            id,
            dir,
            force,
            renew_when_remaining,
        } => {
            let mut opts = EnrollOptions::new(hub, ca, token, id, dir.dir);
            opts.existing = if force {
                ExistingIdentity::Replace
            } else {
                ExistingIdentity::Refuse
            };
            opts.renew_when = renew_when_remaining;
            let identity = moat_agent::enroll(&opts).await?;
            let schedule = moat_agent::RenewalSchedule::new(
                identity.not_before,
                identity.not_after,
                opts.renew_when,
            )
            .map_err(AgentError::from)?;
            println!("enrolled {}", identity.device_id);
            println!("  serial     {}", identity.serial);
            println!(
                "  valid      {} to {}",
                format_utc(identity.not_before),
                format_utc(identity.not_after)
            );
            println!(
                "  renew from {} (less than {} of the lifetime left)",
                format_utc(schedule.due_at),
                opts.renew_when
            );
            println!("  key        {} (0600)", identity.files.key.display());
            println!("  chain      {}", identity.files.cert.display());
            println!("  ca         {}", identity.files.ca.display());
            Ok(())
        }
        Command::Renew {
            dir,
            hub,
            force,
            threshold,
        } => {
            let mode = if force {
                RenewMode::Now
            } else {
                RenewMode::WhenDue
            };
            let overrides = Overrides {
                hub,
                renew_when: threshold.renew_when_remaining,
            };
            match moat_agent::renew_with(&dir.dir, mode, &overrides).await? {
                RenewOutcome::NotDue { identity, due_at } => println!(
                    "not due: {} certificate {} is valid until {}; renewal is due from {} \
                     (--force renews now)",
                    identity.device_id,
                    identity.serial,
                    format_utc(identity.not_after),
                    format_utc(due_at)
                ),
                RenewOutcome::Renewed {
                    previous_serial,
                    identity,
                } => println!(
                    "renewed {}: new key, certificate {} (was {}), valid until {}",
                    identity.device_id,
                    identity.serial,
                    previous_serial,
                    format_utc(identity.not_after)
                ),
                other => println!("{other:?}"),
            }
            Ok(())
        }
        Command::Update {
            dir,
            hub,
            once,
            update,
        } => {
            let opts = update.options(&dir.dir)?.ok_or_else(|| {
                AgentError::Misconfigured(
                    "updates need an install command (--install-cmd or MOAT_AGENT_INSTALL_CMD)"
                        .into(),
                )
            })?;
            let overrides = Overrides {
                hub,
                renew_when: None,
            };
            if !once {
                tokio::select! {
                    never = moat_agent::update::run_updates(
                        &dir.dir, &overrides, &opts, update.update_every
                    ) => match never {},
                    () = shutdown() => tracing::info!("stopping"),
                }
                return Ok(());
            }
            let outcome = moat_agent::update_once(&dir.dir, &overrides, &opts).await?;
            match &outcome {
                UpdateOutcome::UpToDate { installed } => println!("up to date: {installed}"),
                UpdateOutcome::Installed { target, version } => {
                    println!("installed {target} (version {version})")
                }
                UpdateOutcome::Rebooting { target, version } => println!(
                    "installed {target} (version {version}); rebooting, the next start checks \
                     its health"
                ),
                UpdateOutcome::RolledBack {
                    target,
                    version,
                    reason,
                } => println!("rolled back {target} (version {version}): {reason}"),
                UpdateOutcome::Failed {
                    target,
                    version,
                    reason,
                } => println!("failed to install {target} (version {version}): {reason}"),
                UpdateOutcome::ConsentDeclined {
                    target,
                    version,
                    reason,
                } => match reason {
                    Some(r) => println!("consent declined for {target} (version {version}): {r}"),
                    None => println!("consent declined for {target} (version {version})"),
                },
                UpdateOutcome::Skipped { target, version } => println!(
                    "not retrying {target} (version {version}): it failed or was rolled back \
                     before"
                ),
                UpdateOutcome::Refused { target, reason } => match target {
                    Some(t) => println!("refused {t}: {reason}"),
                    None => println!("refused: {reason}"),
                },
                other => println!("{other:?}"),
            }
            match outcome {
                UpdateOutcome::Refused { .. } => Err(Failure::Exit(4)),
                UpdateOutcome::RolledBack { .. } | UpdateOutcome::Failed { .. } => {
                    Err(Failure::Exit(1))
                }
                _ => Ok(()),
            }
        }
        Command::Run {
            dir,
            hub,
            threshold,
            update,
        } => {
            let overrides = Overrides {
                hub,
                renew_when: threshold.renew_when_remaining,
            };
            let updates = update.options(&dir.dir)?;
            // A directory without an identity is a setup mistake, reported at once; later
            // failures are retried by the loop.
            let st = moat_agent::status(&dir.dir, &overrides)?;
            tracing::info!(
                device = %st.identity.device_id,
                serial = %st.identity.serial,
                not_after = %format_utc(st.identity.not_after),
                due_at = %format_utc(st.schedule.due_at),
                hub = %st.hub,
                "moat-agent running"
            );
            let update_loop = async {
                match &updates {
                    Some(opts) => {
                        moat_agent::update::run_updates(
                            &dir.dir,
                            &overrides,
                            opts,
                            update.update_every,
                        )
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                never = moat_agent::run(&dir.dir, &overrides) => match never {},
                never = update_loop => match never {},
                () = shutdown() => tracing::info!("stopping"),
            }
            Ok(())
        }
        Command::Status {
            dir,
            threshold,
            ota_dir,
        } => {
            let overrides = Overrides {
                hub: None,
                renew_when: threshold.renew_when_remaining,
            };
            let st = moat_agent::status(&dir.dir, &overrides)?;
            println!("device      {}", st.identity.device_id);
            println!("hub         {}", st.hub);
            println!("serial      {}", st.identity.serial);
            println!("not_before  {}", format_utc(st.schedule.not_before));
            println!("not_after   {}", format_utc(st.schedule.not_after));
            println!(
                "renew_from  {} (less than {} of the lifetime left)",
                format_utc(st.schedule.due_at),
                st.renew_when
            );
            println!(
                "due         {}",
                if st.expired {
                    "expired (enroll again)"
                } else if st.due {
                    "yes"
                } else {
                    "no"
                }
            );
            print_update_state(&ota_dir.unwrap_or_else(|| dir.dir.join("ota")));
            Ok(())
        }
    }
}

/// The update lines of `status`, from the agent's state file in `work_dir` (read without the
/// update lock: the file is replaced atomically).
fn print_update_state(work_dir: &std::path::Path) {
    use moat_agent::update::state::UpdateState;
    let path = work_dir.join("state.json");
    if !path.exists() {
        println!("updates     none yet (no {})", path.display());
        return;
    }
    let state = match UpdateState::load(&path) {
        Ok(s) => s,
        Err(e) => {
            println!("updates     unreadable: {e}");
            return;
        }
    };
    let when = |at: i64| {
        time::OffsetDateTime::from_unix_timestamp(at)
            .map(format_utc)
            .unwrap_or_else(|_| at.to_string())
    };
    println!(
        "installed   {}",
        state
            .installed
            .as_deref()
            .unwrap_or("not recorded yet (--installed-version applies)")
    );
    match &state.pending {
        Some(p) => println!(
            "pending     {} (version {}, {}, {} start{} so far{})",
            p.target,
            p.version,
            match p.phase {
                moat_agent::update::state::Phase::Installing => "installing",
                moat_agent::update::state::Phase::Rebooting =>
                    "installed, waiting for the health check",
            },
            p.boots,
            if p.boots == 1 { "" } else { "s" },
            p.previous
                .as_deref()
                .map(|v| format!(", previous {v}"))
                .unwrap_or_default()
        ),
        None => println!("pending     none"),
    }
    match &state.last {
        Some(l) => {
            let what = match (&l.target, &l.version) {
                (Some(t), Some(v)) => format!(" {t} (version {v})"),
                (Some(t), None) => format!(" {t}"),
                (None, Some(v)) => format!(" {v}"),
                (None, None) => String::new(),
            };
            let since = if l.result == "up_to_date" {
                "since"
            } else {
                "at"
            };
            println!(
                "last        {}{what} {since} {}{}",
                l.result,
                when(l.at),
                l.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        None => println!("last        none"),
    }
    if !state.failed.is_empty() {
        let list: Vec<String> = state
            .failed
            .iter()
            .map(|f| format!("{} ({})", f.target, f.version))
            .collect();
        println!("not retried {}", list.join(", "));
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
