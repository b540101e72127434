//! `moat`: the hub and the operator CLI. Parses arguments and the environment, nothing more;
//! everything else lives in `moat-hub`.

#![forbid(unsafe_code)]

mod ops;
mod progress;

use clap::{Args, Parser, Subcommand};
use moat_hub::{ConfigError, Settings};
use moat_types::DeviceId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for invalid configuration or arguments.
pub(crate) const EXIT_CONFIG: u8 = 2;
/// Exit code for a runtime failure.
pub(crate) const EXIT_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "moat", version, about = "Moat: a secure-by-default IoT hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub (creates the data directory, CA and server certificate on first start).
    Serve(ServeArgs),
    /// Check a configuration (file and flags) without starting the hub: prints what the hub
    /// would run with, or the first error with file and line (exit 2).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: ops::TokenCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Policies: store, inspect, test decisions.
    Policy {
        #[command(subcommand)]
        command: ops::PolicyCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Device groups and the policies attached to them.
    Group {
        #[command(subcommand)]
        command: ops::GroupCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// The tamper-evident audit trail.
    Audit {
        #[command(subcommand)]
        command: ops::AuditCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// The certificate authority: inspection, rotation, the offline-root ceremony.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Manufacturer CAs whose factory certificates enroll just in time (admin only).
    Manufacturer {
        #[command(subcommand)]
        command: ops::ManufacturerCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// API tokens for scripts (admin only).
    ApiToken {
        #[command(subcommand)]
        command: ops::ApiTokenCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Print a shell completion script: `moat completions bash > /etc/bash_completion.d/moat`
    /// (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Alerts of the detection engine: list and show them with their explanation; confirm,
    /// release or mark false positive (operators; auditors list and show).
    Alerts {
        #[command(subcommand)]
        command: ops::AlertCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// The ban list: addresses and networks refused before TLS, devices and client ids
    /// refused at CONNECT (operators add and remove; auditors list).
    Ban {
        #[command(subcommand)]
        command: ops::BanCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Signed updates: update campaigns (waves, maintenance windows, gates) and each
    /// device's update state.
    Ota {
        #[command(subcommand)]
        command: OtaCommand,
        #[command(flatten)]
        target: ops::Target,
    },
    /// Operators who log in to the web console and the API (on the hub's machine: writes the
    /// registry in --data-dir directly).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
        #[command(flatten)]
        target: ops::Target,
    },
}

#[derive(Subcommand, Debug)]
enum OtaCommand {
    /// Update campaigns: create, start, pause, resume, abort, roll back, show (--watch), list.
    Campaign {
        #[command(subcommand)]
        command: ops::CampaignCommand,
    },
    /// A device's update state: its campaigns, last report, inventory and director target.
    Device {
        /// The device id.
        id: String,
    },
    /// The hub's online public keys (image snapshot and timestamp; director targets,
    /// snapshot and timestamp), for the ceremony.
    OnlineKeys,
    /// The signing ceremony: create offline keys, sign version 1 of both roots and the first
    /// targets, install them (or write them with --out for `root install`).
    Init {
        /// Key directory to create (keep it offline).
        #[arg(long, default_value = ops::DEFAULT_KEYS_DIR)]
        keys: PathBuf,
        /// Root keys per repository.
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signatures a new root needs.
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        /// Online public keys from a file (`moat ota online-keys --json`), for a machine that
        /// cannot reach the hub.
        #[arg(long)]
        online_keys: Option<PathBuf>,
        /// Write `ota-root.json` into this directory instead of installing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install or rotate the roots.
    Root {
        #[command(subcommand)]
        command: ops::OtaRootCommand,
    },
    /// Sign an image offline (targets or hw-CLASS role) and publish it: the image is uploaded
    /// with a progress bar, then the signed metadata; the hub checks both.
    Publish {
        /// The image file.
        file: PathBuf,
        /// Image name: letters, digits, '.', '_', '-'.
        #[arg(long)]
        name: String,
        /// Hardware class (delegated role hw-CLASS, its own key); any hardware without it.
        #[arg(long)]
        hardware: Option<String>,
        /// Version (dotted numbers, optional -suffix); read from FILE's name NAME-VERSION... if
        /// omitted.
        #[arg(long)]
        version: Option<String>,
        /// Key directory.
        #[arg(long, default_value = ops::DEFAULT_KEYS_DIR)]
        keys: PathBuf,
        /// Let devices install it over a higher version (a rollback target).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// List the repository's targets.
    Targets,
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Add an operator, or give an existing one a new role and password. Prints a random
    /// password once; only its argon2id hash is stored.
    Add {
        /// Login name: 1-64 characters of A-Z a-z 0-9 . _ -
        name: String,
        /// admin, operator or auditor.
        #[arg(long)]
        role: String,
    },
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Data directory [default: ./moat-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MQTT over mutual TLS [default: 127.0.0.1:8883].
    #[arg(long)]
    mqtt_tls_listen: Option<SocketAddr>,
    /// MQTT over secure WebSocket (path /mqtt), off unless given.
    #[arg(long)]
    mqtt_wss_listen: Option<SocketAddr>,
    /// DANGER: plaintext MQTT listener (no encryption, no client certificates).
    #[arg(long)]
    danger_mqtt_plaintext_listen: Option<SocketAddr>,
    /// DANGER: accept clients without credentials on the plaintext listener.
    #[arg(long)]
    danger_allow_anonymous: bool,
    /// Largest keep alive granted to clients, seconds [default: 300].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    max_keepalive: Option<u16>,
    /// Log format on standard error: text (default) or json (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "MOAT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Key algorithm of the CA created at first start: p256 (default) or ed25519.
    #[arg(long, value_enum)]
    ca_algorithm: Option<CaAlgorithmArg>,
    /// Encrypt (and unlock) the CA key files with the passphrase in this file (0600).
    #[arg(long)]
    ca_passphrase_file: Option<PathBuf>,
    /// HTTPS listener for the REST API, EST, /metrics and /healthz [default: 127.0.0.1:8443].
    #[arg(long)]
    api_listen: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration `moat serve` would run with (same flags).
    Check(ServeArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CaAlgorithmArg {
    P256,
    Ed25519,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Show the running hub's CA hierarchy.
    Show,
    /// Rotate the issuing CA (the root key must be on the hub). Devices keep connecting: the
    /// previous issuing CA stays trusted until it expires.
    Rotate,
    /// Stop trusting the previous issuing CA now (its key was compromised, or to rotate
    /// again): every certificate it issued stops working.
    DiscardPrevious,
    /// Offline machine: create a root CA in DIR; only its certificate ever leaves.
    InitRoot {
        #[arg(long)]
        dir: PathBuf,
        /// Ed25519 instead of ECDSA P-256.
        #[arg(long)]
        ed25519: bool,
        /// Encrypt the root key with the passphrase in this file (0600).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Hub machine: make an issuing-CA key (in the data directory) and a request for the
    /// offline root to sign.
    IssuingRequest {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        ed25519: bool,
        /// The hub's CA key passphrase file, if its keys are encrypted.
        #[arg(long)]
        ca_passphrase_file: Option<PathBuf>,
    },
    /// Offline machine: sign an issuing-CA request with the root in DIR.
    SignIssuing {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Validity of the issuing CA, days (at most the root's remaining life).
        #[arg(long, default_value_t = 1826)]
        validity_days: u64,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Hub machine: install the signed issuing CA and its root; a running hub switches to
    /// it at once.
    ImportIssuing {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        ca_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Issue a key and certificate for a device (works with the hub running or stopped).
    Add {
        /// Device id: 1-64 characters of A-Z a-z 0-9 . _ -
        id: String,
        /// Where to write ID.crt, ID.key and ca.crt.
        #[arg(long)]
        out: PathBuf,
        /// Certificate validity in days.
        #[arg(long, default_value_t = 30)]
        validity_days: u64,
        /// The CA key passphrase file, if the hub's CA keys are encrypted.
        #[arg(long)]
        ca_passphrase_file: Option<PathBuf>,
    },
    /// List devices.
    List,
    /// Show a device and its certificates.
    Show { id: String },
    /// Set a device's group, attributes (NAME=VALUE) and own policies.
    Set {
        id: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long = "attr")]
        attrs: Vec<String>,
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Clear the group, attributes and policies first (then apply what is given).
        #[arg(long)]
        reset: bool,
    },
    /// Revoke a device for good: its certificates are revoked and its live sessions closed.
    Revoke {
        id: String,
        /// RFC 5280 reason: keyCompromise, cessationOfOperation, superseded, ...
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke one certificate by serial (hex, as `device show` lists it); the device and its
    /// other certificates stay valid.
    RevokeCert {
        serial: String,
        /// RFC 5280 reason: keyCompromise, superseded, ...
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a device until it is enabled again; its live sessions are closed.
    Disable {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Allow a disabled device again.
    Enable { id: String },
    /// Identities seen live from two addresses at once (suspected clones) or claiming
    /// client ids that are not theirs.
    Conflicts,
    /// Approve a device that enrolled with a factory certificate and waits for approval.
    Approve { id: String },
}

/// How log lines are written to standard error.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    });
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config {
            command: ConfigCommand::Check(args),
        } => config_check(args),
        Command::Device { command, target } => device(command, &target),
        Command::Token { command, target } => ops::token(&target, command),
        Command::Policy { command, target } => ops::policy(&target, command),
        Command::Group { command, target } => ops::group(&target, command),
        Command::Audit { command, target } => ops::audit(&target, command),
        Command::ApiToken { command, target } => ops::api_token(&target, command),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "moat", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Alerts { command, target } => ops::alerts(&target, command),
        Command::Ban { command, target } => ops::ban(&target, command),
        Command::Ota { command, target } => match command {
            OtaCommand::Campaign { command } => ops::campaign(&target, command),
            OtaCommand::Device { id } => ops::ota_device(&target, &id),
            OtaCommand::OnlineKeys => ops::ota_online_keys(&target),
            OtaCommand::Init {
                keys,
                root_keys,
                root_threshold,
                online_keys,
                out,
            } => ops::ota_init(
                &target,
                &keys,
                root_keys,
                root_threshold,
                online_keys.as_deref(),
                out.as_deref(),
            ),
            OtaCommand::Root { command } => ops::ota_root(&target, command),
            OtaCommand::Publish {
                file,
                name,
                hardware,
                version,
                keys,
                allow_downgrade,
            } => ops::ota_publish(
                &target,
                &file,
                &name,
                hardware.as_deref(),
                version.as_deref(),
                &keys,
                allow_downgrade,
            ),
            OtaCommand::Targets => ops::ota_targets(&target),
        },
        Command::Manufacturer { command, target } => ops::manufacturer(&target, command),
        Command::Ca { command, target } => ca(command, &target),
        Command::Operator {
            command: OperatorCommand::Add { name, role },
            target,
        } => {
            let Some(role) = moat_hub::Role::parse(&role) else {
                eprintln!("error: role must be admin, operator or auditor");
                return ExitCode::from(EXIT_CONFIG);
            };
            match moat_hub::add_operator(&target.data_dir(), &name, role) {
                Ok(password) => {
                    println!("operator {name} ({}): password {password}", role.as_str());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

fn device(command: DeviceCommand, target: &ops::Target) -> ExitCode {
    match command {
        DeviceCommand::Add {
            id,
            out,
            validity_days,
            ca_passphrase_file,
        } => {
            let passphrase = match passphrase(ca_passphrase_file.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let ca_settings = moat_hub::CaSettings {
                passphrase,
                ..moat_hub::CaSettings::default()
            };
            let id = match DeviceId::parse(&id) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("error: invalid device id {id:?}: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let validity = Duration::from_secs(validity_days.saturating_mul(86_400));
            match moat_hub::add_device(&target.data_dir(), &ca_settings, &id, &out, validity) {
                Ok(()) => {
                    println!(
                        "issued {id}: {out}/{id}.crt, {out}/{id}.key (keep it secret), {out}/ca.crt",
                        out = out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        DeviceCommand::List => ops::device_list(target),
        DeviceCommand::Conflicts => ops::device_conflicts(target),
        DeviceCommand::Show { id } => ops::device_show(target, &id),
        DeviceCommand::Set {
            id,
            group,
            attrs,
            policies,
            reset,
        } => ops::device_set(target, &id, group, attrs, policies, reset),
        DeviceCommand::Revoke { id, reason } => ops::device_status(target, &id, "revoke", reason),
        DeviceCommand::RevokeCert { serial, reason } => ops::revoke_cert(target, &serial, reason),
        DeviceCommand::Disable { id, reason } => ops::device_status(target, &id, "disable", reason),
        DeviceCommand::Enable { id } => ops::device_status(target, &id, "enable", None),
        DeviceCommand::Approve { id } => ops::device_status(target, &id, "approve", None),
    }
}

/// Reads a passphrase file (0600), or exits with a configuration error.
fn passphrase(path: Option<&std::path::Path>) -> Result<Option<moat_pki::Passphrase>, ExitCode> {
    match path {
        None => Ok(None),
        Some(p) => moat_pki::Passphrase::read_file(p).map(Some).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }),
    }
}

fn algorithm(ed25519: bool) -> moat_pki::KeyAlgorithm {
    if ed25519 {
        moat_pki::KeyAlgorithm::Ed25519
    } else {
        moat_pki::KeyAlgorithm::EcdsaP256Sha256
    }
}

fn ca(command: CaCommand, target: &ops::Target) -> ExitCode {
    let done = |r: Result<String, moat_hub::IdentityError>| match r {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    };
    match command {
        CaCommand::Show => ops::ca_show(target),
        CaCommand::Rotate => ops::ca_post(target, "rotate"),
        CaCommand::DiscardPrevious => ops::ca_post(target, "discard-previous"),
        CaCommand::InitRoot {
            dir,
            ed25519,
            passphrase_file,
        } => {
            let p = match passphrase(passphrase_file.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            done(
                moat_hub::ca::init_root(&dir, algorithm(ed25519), p).map(|root| {
                    format!(
                        "root CA created in {}; carry {} (the certificate only) to the hub",
                        dir.display(),
                        root.display()
                    )
                }),
            )
        }
        CaCommand::IssuingRequest {
            out,
            ed25519,
            ca_passphrase_file,
        } => {
            let p = match passphrase(ca_passphrase_file.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            done(
                moat_hub::ca::issuing_request(&target.data_dir(), algorithm(ed25519), p, &out)
                    .map(|()| format!("request written to {}; sign it with `moat ca sign-issuing` on the root's machine", out.display())),
            )
        }
        CaCommand::SignIssuing {
            dir,
            csr,
            out,
            validity_days,
            passphrase_file,
        } => {
            let p = match passphrase(passphrase_file.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let validity = Duration::from_secs(validity_days.saturating_mul(86_400));
            done(
                moat_hub::ca::sign_issuing(&dir, p, &csr, &out, validity)
                    .map(|()| format!("issuing CA certificate written to {}", out.display())),
            )
        }
        CaCommand::ImportIssuing {
            cert,
            root,
            ca_passphrase_file,
        } => {
            let p = match passphrase(ca_passphrase_file.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let dir = target.data_dir();
            if let Err(e) = moat_hub::ca::import_issuing(&dir, p, &cert, &root) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
            println!("issuing CA installed in {}", dir.display());
            // A hub running from this directory switches at once.
            if dir.join(moat_hub::HUB_FILE).exists() {
                return ops::ca_post(target, "reload");
            }
            ExitCode::SUCCESS
        }
    }
}

fn settings(args: ServeArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    Ok(file.merge(Settings {
        data_dir: args.data_dir,
        mqtt_tls_listen: args.mqtt_tls_listen,
        mqtt_wss_listen: args.mqtt_wss_listen,
        danger_mqtt_plaintext_listen: args.danger_mqtt_plaintext_listen,
        danger_allow_anonymous: args.danger_allow_anonymous.then_some(true),
        max_keepalive: args.max_keepalive,
        api_listen: args.api_listen,
        ca_algorithm: args.ca_algorithm.map(|a| match a {
            CaAlgorithmArg::P256 => moat_hub::config::CaAlgorithm::P256,
            CaAlgorithmArg::Ed25519 => moat_hub::config::CaAlgorithm::Ed25519,
        }),
        ca_passphrase_file: args.ca_passphrase_file,
        ..Settings::default()
    }))
}

fn config_check(args: ServeArgs) -> ExitCode {
    match settings(args).and_then(Settings::resolve) {
        Ok(c) => {
            let addr = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
            println!(
                "configuration ok\n  data-dir: {}\n  mqtt-tls-listen: {}\n  mqtt-wss-listen: {}\n  danger-mqtt-plaintext-listen: {}{}\n  api-listen: {}\n  max-keepalive: {} s\n  device-cert-validity: {} days\n  ca: {}{}",
                c.data_dir.display(),
                c.mqtt_tls_listen,
                addr(c.mqtt_wss_listen),
                addr(c.danger_mqtt_plaintext_listen),
                if c.danger_allow_anonymous {
                    " (anonymous allowed)"
                } else {
                    ""
                },
                c.api_listen,
                c.broker.max_keep_alive.as_secs(),
                c.device_cert_validity.as_secs() / 86_400,
                c.ca.algorithm,
                if c.ca.passphrase.is_some() {
                    ", keys encrypted"
                } else {
                    ""
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let again = args.clone();
    let config = match settings(args).and_then(Settings::resolve) {
        // SIGHUP reads the same file with the same flags again.
        Ok(c) => moat_hub::HubConfig {
            reload: Some(moat_hub::Reloader::new(move || {
                settings(again.clone()).and_then(Settings::resolve)
            })),
            ..c
        },
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(moat_hub::run(
        config,
        |ready| {
            let addr = |a: Option<SocketAddr>| a.map_or("null".to_owned(), |a| format!("\"{a}\""));
            println!(
                "moat ready {{\"mqtt_tls\":\"{}\",\"mqtt_wss\":{},\"mqtt_plaintext\":{},\"api\":\"{}\"}}",
                ready.mqtt_tls,
                addr(ready.mqtt_wss),
                addr(ready.mqtt_plaintext),
                ready.api
            );
            tracing::info!(
                mqtt_tls = %ready.mqtt_tls,
                api = %ready.api,
                "listening; client certificates required"
            );
        },
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
