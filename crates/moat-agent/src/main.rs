//! `moat-agent`: argv parsing and output only; everything else is the library.
//!
//! Exit codes: 0 success, 1 local failure, 2 misconfiguration (bad flags or files),
//! 3 refused by the hub, 4 verification failed, 5 hub unreachable, 6 malformed hub response.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use moat_agent::{
    AgentError, Blame, EnrollOptions, EnrollmentToken, ExistingIdentity, HubUrl, Overrides,
    RenewMode, RenewOutcome, RenewalThreshold, format_utc,
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
    /// Keep renewing when due, forever (retrying with backoff on failure).
    Run {
        #[command(flatten)]
        dir: DirArg,
        /// Talk to this hub instead of the one remembered from enroll (not saved).
        #[arg(long)]
        hub: Option<HubUrl>,
        #[command(flatten)]
        threshold: ThresholdArg,
    },
    /// Show the device id, certificate serial, expiry and whether renewal is due.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        threshold: ThresholdArg,
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
        Err(e) => {
            eprintln!("moat-agent: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn execute(command: Command) -> Result<(), AgentError> {
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
            )?;
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
        Command::Run {
            dir,
            hub,
            threshold,
        } => {
            let overrides = Overrides {
                hub,
                renew_when: threshold.renew_when_remaining,
            };
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
            tokio::select! {
                never = moat_agent::run(&dir.dir, &overrides) => match never {},
                () = shutdown() => tracing::info!("stopping"),
            }
            Ok(())
        }
        Command::Status { dir, threshold } => {
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
            Ok(())
        }
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
