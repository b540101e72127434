//! Updates: verify with [`moat_ota::verify()`] against the device's pinned image and director
//! roots, download the approved image through its length and hash checks (resuming with
//! HTTP ranges), ask for consent, install through the configured command, restart, check
//! health, confirm or roll back by itself, and report every step over MQTT.
//!
//! ```text
//!  start: pending in state.json?
//!    installing --------------------------------------------> failed (interrupted)
//!    rebooting --boots+1 > max--------------------------------> rollback
//!              --health cmd fails ----------------------------> rollback
//!              --health ok, confirm ok -----------------------> installed (record version)
//!  otherwise: verify (director, then image repository)
//!    nothing assigned / already installed ---------------------> up to date
//!    refused (signature, expiry, rollback, mix-and-match, ...) -> refused
//!    approved --consent required; consent cmd says no, cannot
//!               run or none configured -----------------------> consent_declined
//!             --download (resume, hash, length) refused -------> refused (.part deleted)
//!             --install cmd fails -----------------------------> failed
//!             --install ok, reboot cmd ------------------------> rebooting (next start: above)
//!             --install ok, no reboot cmd ---------------------> health check as above
//!  rollback: rollback cmd ok -> rolled_back; fails or none configured -> failed
//! ```
//!
//! Consent: the consent command runs only when the director's target says the campaign
//! requires consent ([`ApprovedUpdate::consent_required`]); other updates install without
//! asking. When consent is required, anything but an exit status 0 declines: a non-zero exit,
//! a command that cannot start or does not finish within [`COMMAND_TIMEOUT`], and no consent
//! command configured at all (nobody can be asked, so nobody said yes). A declined update
//! downloads and installs nothing, is reported as `consent_declined` (with the reason in
//! `error` unless the command simply said no) and is asked about again next cycle.
//!
//! A target that failed or was rolled back is not installed again ([`state`]); the agent
//! keeps its own record of the installed version, which is what it tells the verifier (so a
//! downgrade needs the offline targets role's `downgrade: true`, whatever the hub says).
//!
//! Device-side files (defaults, all in the identity directory `DIR`):
//!
//! ```text
//! DIR/image-root.json      pinned image repository root (provisioned with the device)
//! DIR/director-root.json   pinned director root (provisioned with the device)
//! DIR/ota/state.json       installed version, install in progress, failed targets, the
//!                          last cycle's result (0600; shown by `moat-agent status`)
//! DIR/ota/tuf/             metadata the verifier trusts (rollback protection across runs)
//! DIR/ota/images/          {sha256}.part while downloading, {sha256}.image once verified (0600)
//! DIR/ota/.lock            held while an update cycle runs
//! ```

pub mod command;
pub(crate) mod download;
pub mod inventory;
pub mod state;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use moat_ota::{ApprovedUpdate, DeviceFacts, VerifyConfig, VerifyError};
use moat_types::{DeviceId, TopicName};

use crate::files::{self, DirLock, LockFor};
use crate::https::{HubClient, HubTransport};
use crate::mqtt::{MqttUrl, Report, Reporter};
use crate::{AgentError, Overrides};
use command::CommandLine;
use download::Failure;
use inventory::InventorySource;
use state::{Failed, LastResult, MAX_LAST_REASON_LEN, Pending, Phase, UpdateState};

/// How long the install command may run: 1 h.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the consent, reboot, health, confirm and rollback commands may run: 10 min.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// How long reports may take to go out at the end of a cycle (or before a reboot): 15 s.
pub const REPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Default number of starts a new version gets to pass its health check: 3.
pub const DEFAULT_MAX_BOOT_ATTEMPTS: u32 = 3;
/// Longest accepted hardware class, in bytes: 64.
pub const MAX_HARDWARE_LEN: usize = 64;
/// Longest `error` in a status report, in bytes: 512 (what the hub accepts; longer
/// explanations are cut at a character boundary).
pub const MAX_REPORT_ERROR_LEN: usize = 512;

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The device's commands. Only `install` is required.
#[derive(Debug, Clone)]
pub struct Commands {
    /// Installs an image; gets the image path as its last argument (for A/B: write the
    /// inactive slot and make it the next boot).
    pub install: CommandLine,
    /// Restarts into the new version after a successful install (none: the health check
    /// follows at once).
    pub reboot: Option<CommandLine>,
    /// Checks the new version after the restart; exit 0 is healthy (none: healthy).
    pub health: Option<CommandLine>,
    /// Makes the new version permanent after a good health check (e.g. mark the slot good).
    pub confirm: Option<CommandLine>,
    /// Goes back to the previous version (e.g. switch the slot back and restart).
    pub rollback: Option<CommandLine>,
    /// Asks whether an update whose campaign requires consent may happen now; exit 0 is
    /// consent. Not run for other updates; with none configured, updates that require consent
    /// are declined.
    pub consent: Option<CommandLine>,
}

/// Where update reports go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reports {
    /// The hub's host at the MQTT over TLS port 8883.
    #[default]
    HubDefault,
    /// This broker.
    To(MqttUrl),
    /// Nowhere.
    Off,
}

impl std::str::FromStr for Reports {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            Ok(Reports::Off)
        } else {
            MqttUrl::parse(s).map(Reports::To)
        }
    }
}

/// What [`update_once`] needs besides the identity directory.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The device's hardware class (must match the `hardware` of hardware-specific images).
    pub hardware: String,
    /// The version installed when the agent has no record of its own yet (factory image).
    pub installed_version: String,
    /// The pinned image repository root.
    pub image_root: PathBuf,
    /// The pinned director root.
    pub director_root: PathBuf,
    /// The agent's update directory (state, trusted metadata, downloads).
    pub work_dir: PathBuf,
    /// The device's commands.
    pub commands: Commands,
    /// Starts a new version gets to pass its health check before the agent rolls back.
    pub max_boot_attempts: u32,
    /// Where reports go.
    pub reports: Reports,
    /// Where the package inventory comes from (none: an empty package list).
    pub inventory: Option<InventorySource>,
}

impl UpdateOptions {
    /// The defaults for the identity directory `dir`: roots `dir/image-root.json` and
    /// `dir/director-root.json`, work directory `dir/ota`, installed version `0`, three boot
    /// attempts, reports to the hub's host on port 8883, no inventory.
    pub fn new(dir: &Path, hardware: impl Into<String>, install: CommandLine) -> Self {
        UpdateOptions {
            hardware: hardware.into(),
            installed_version: "0".into(),
            image_root: dir.join("image-root.json"),
            director_root: dir.join("director-root.json"),
            work_dir: dir.join("ota"),
            commands: Commands {
                install,
                reboot: None,
                health: None,
                confirm: None,
                rollback: None,
                consent: None,
            },
            max_boot_attempts: DEFAULT_MAX_BOOT_ATTEMPTS,
            reports: Reports::HubDefault,
            inventory: None,
        }
    }

    fn state_file(&self) -> PathBuf {
        self.work_dir.join("state.json")
    }

    fn images_dir(&self) -> PathBuf {
        self.work_dir.join("images")
    }
}

/// What one update cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateOutcome {
    /// Nothing to install (nothing assigned, or the assigned version is installed).
    UpToDate {
        /// The installed version.
        installed: String,
    },
    /// A new version passed its health check and is confirmed.
    Installed {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
    },
    /// Installed; the reboot command ran. The next start checks health and confirms.
    Rebooting {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
    },
    /// The new version failed; the rollback command restored the previous one.
    RolledBack {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The install failed (or was interrupted, or the rollback failed).
    Failed {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The update requires consent and the consent command said no (or failed, or none is
    /// configured); asked again next cycle.
    ConsentDeclined {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
        /// Why, when the command did not simply say no (not configured, cannot start, timed
        /// out).
        reason: Option<String>,
    },
    /// The target failed or was rolled back before; not tried again.
    Skipped {
        /// Target name.
        target: String,
        /// Its version.
        version: String,
    },
    /// Verification refused the update (an attack, a repository fault, a downgrade, the
    /// wrong hardware) or the downloaded bytes were not the signed image.
    Refused {
        /// Target name, when known.
        target: Option<String>,
        /// Why.
        reason: String,
    },
}

/// The report states of the contract (`crates/moat-ota/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportState {
    Downloading,
    Downloaded,
    Installing,
    Rebooting,
    Installed,
    Failed,
    RolledBack,
    Refused,
    ConsentDeclined,
}

impl ReportState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Downloaded => "downloaded",
            Self::Installing => "installing",
            Self::Rebooting => "rebooting",
            Self::Installed => "installed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Refused => "refused",
            Self::ConsentDeclined => "consent_declined",
        }
    }
}

/// Which update a report is about.
#[derive(Debug, Clone, Default)]
struct About {
    campaign: Option<String>,
    target: Option<String>,
    version: Option<String>,
}

impl About {
    fn approved(u: &ApprovedUpdate) -> Self {
        About {
            campaign: u.campaign().map(str::to_owned),
            target: Some(u.target().to_owned()),
            version: Some(u.version().to_owned()),
        }
    }

    fn pending(p: &Pending) -> Self {
        About {
            campaign: p.campaign.clone(),
            target: Some(p.target.clone()),
            version: Some(p.version.clone()),
        }
    }
}

/// One cycle's context: the device, its reporter, its options.
struct Cycle<'a> {
    device: DeviceId,
    opts: &'a UpdateOptions,
    reporter: Reporter,
    status_topic: Option<TopicName>,
    inventory_topic: Option<TopicName>,
}

impl Cycle<'_> {
    fn status(&self, about: &About, state: ReportState, progress: u8, error: Option<&str>) {
        tracing::info!(
            device = %self.device,
            target = about.target.as_deref().unwrap_or("-"),
            version = about.version.as_deref().unwrap_or("-"),
            state = state.as_str(),
            progress,
            error = error.unwrap_or(""),
            "update"
        );
        let Some(topic) = &self.status_topic else {
            return;
        };
        let payload = serde_json::json!({
            "campaign": about.campaign,
            "target": about.target,
            "version": about.version,
            "state": state.as_str(),
            "progress": progress,
            "error": error.map(|e| truncate(e, MAX_REPORT_ERROR_LEN)),
        });
        self.reporter.send(Report {
            topic: topic.clone(),
            payload: Bytes::from(payload.to_string()),
            retain: false,
        });
    }

    async fn inventory(&self, installed: &str) {
        let Some(topic) = &self.inventory_topic else {
            return;
        };
        let packages = match &self.opts.inventory {
            None => Vec::new(),
            Some(source) => match inventory::read(source).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the inventory; not reported");
                    return;
                }
            },
        };
        self.reporter.send(Report {
            topic: topic.clone(),
            payload: Bytes::from(inventory::message(
                &self.opts.hardware,
                Some(installed),
                &packages,
            )),
            retain: true,
        });
    }

    fn env(&self, about: &About, previous: Option<&str>) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(t) = &about.target {
            env.push(("MOAT_OTA_TARGET", t.clone()));
        }
        if let Some(v) = &about.version {
            env.push(("MOAT_OTA_VERSION", v.clone()));
        }
        if let Some(p) = previous {
            env.push(("MOAT_OTA_PREVIOUS_VERSION", p.to_owned()));
        }
        env.push(("MOAT_OTA_HARDWARE", self.opts.hardware.clone()));
        env
    }
}

fn check_hardware(hardware: &str) -> Result<(), AgentError> {
    if hardware.is_empty()
        || hardware.len() > MAX_HARDWARE_LEN
        || !hardware
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(AgentError::Misconfigured(format!(
            "the hardware class must be 1 to {MAX_HARDWARE_LEN} letters, digits, '-', '_' or \
             '.' (--hardware)"
        )));
    }
    Ok(())
}

fn read_root(path: &Path, which: &str) -> Result<Vec<u8>, AgentError> {
    files::read_bounded(path, moat_ota::verify::MAX_ROOT_BYTES).map_err(|e| match e {
        AgentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            AgentError::Misconfigured(format!(
                "no pinned {which} root at {}: provision the device with the {which} \
                 repository's 1.root.json (see moat ota init) or pass its path",
                path.display()
            ))
        }
        other => other,
    })
}

fn base_url(hub: &crate::HubUrl, path: &str) -> Result<url::Url, AgentError> {
    url::Url::parse(&format!("{hub}{path}"))
        .map_err(|e| AgentError::Misconfigured(format!("{hub}{path}: {e}")))
}

/// Runs one update cycle for the identity in `dir` (see the module docs).
///
/// `Err` is for what the device cannot act on now: a misconfiguration (missing root, bad
/// flags), an unreachable hub (the partial download is kept), a failing disk. Everything
/// the update itself decided is an [`UpdateOutcome`], reported over MQTT.
pub async fn update_once(
    dir: &Path,
    overrides: &Overrides,
    opts: &UpdateOptions,
) -> Result<UpdateOutcome, AgentError> {
    check_hardware(&opts.hardware)?;
    moat_ota::Version::parse(&opts.installed_version)
        .map_err(|e| AgentError::Misconfigured(format!("--installed-version: {e}")))?;
    let creds = crate::lifecycle::device_credentials(dir, overrides)?;
    files::ensure_dir(&opts.work_dir)?;
    files::ensure_dir(&opts.images_dir())?;
    let _lock = DirLock::acquire(&opts.work_dir, LockFor::Update)?;

    let mqtt = match &opts.reports {
        Reports::Off => None,
        Reports::HubDefault => Some(MqttUrl::default_for(&creds.hub)),
        Reports::To(url) => Some(url.clone()),
    };
    let topic =
        |leaf: &str| TopicName::parse(&format!("devices/{}/ota/{leaf}", creds.device_id)).ok();
    let reporter = Reporter::start(
        mqtt,
        &creds.roots,
        creds.auth.clone_key(),
        creds.device_id.clone(),
    );
    let cycle = Cycle {
        device: creds.device_id.clone(),
        opts,
        reporter,
        status_topic: topic("status"),
        inventory_topic: topic("inventory"),
    };
    let client = HubClient::new(creds.hub.clone(), &creds.roots, creds.auth)?;
    let hub = creds.hub;

    let mut state = UpdateState::load(&opts.state_file())?;
    let result = if let Some(pending) = state.pending.clone() {
        let outcome = finish_pending(&cycle, &mut state, pending).await;
        if let Ok(installed) = installed(&state, opts) {
            cycle.inventory(&installed).await;
        }
        outcome
    } else {
        let installed = installed(&state, opts)?;
        cycle.inventory(&installed).await;
        let config = VerifyConfig {
            image_root: read_root(&opts.image_root, "image")?,
            director_root: read_root(&opts.director_root, "director")?,
            image_metadata_url: base_url(&hub, "/tuf/metadata/")?,
            image_targets_url: base_url(&hub, "/tuf/targets/")?,
            director_metadata_url: base_url(&hub, "/tuf/director/metadata/")?,
            datastore: opts.work_dir.join("tuf"),
        };
        let facts = DeviceFacts {
            device_id: cycle.device.to_string(),
            hardware: opts.hardware.clone(),
            installed: installed.clone(),
        };
        match moat_ota::verify(&config, &facts, HubTransport::new(client.clone())).await {
            Ok(None) => {
                download::remove_other_images(&opts.images_dir(), None);
                Ok(UpdateOutcome::UpToDate { installed })
            }
            Err(VerifyError::AlreadyInstalled { target, version }) => {
                download::remove_other_images(&opts.images_dir(), None);
                let about = About {
                    campaign: None,
                    target: Some(target),
                    version: Some(version),
                };
                cycle.status(&about, ReportState::Installed, 100, None);
                Ok(UpdateOutcome::UpToDate { installed })
            }
            Err(e @ VerifyError::Transport { .. }) => Err(AgentError::Unreachable {
                url: hub.to_string(),
                reason: e.to_string(),
            }),
            Err(e @ (VerifyError::Config(_) | VerifyError::Datastore { .. })) => {
                Err(AgentError::Misconfigured(e.to_string()))
            }
            Err(e) => {
                let reason = e.to_string();
                let about = refused_about(&e);
                cycle.status(&about, ReportState::Refused, 0, Some(&reason));
                Ok(UpdateOutcome::Refused {
                    target: about.target,
                    reason,
                })
            }
            Ok(Some(update)) => install(&cycle, &client, &mut state, &update, &installed).await,
        }
    };
    if let Ok(outcome) = &result {
        record_last(&mut state, outcome, &opts.state_file());
    }
    let reporter = cycle.reporter;
    reporter.finish(REPORT_FLUSH_TIMEOUT).await;
    result
}

/// Remembers what the cycle decided in the state file's `last` (for `moat-agent status`); a
/// device that stays up to date does not write it again. A failure to write is logged: the
/// outcome stands.
fn record_last(state: &mut UpdateState, outcome: &UpdateOutcome, path: &Path) {
    let at = time::OffsetDateTime::now_utc().unix_timestamp();
    let last =
        |result: &str, target: Option<&str>, version: &str, reason: Option<&str>| LastResult {
            result: result.to_owned(),
            target: target.map(str::to_owned),
            version: Some(version.to_owned()),
            reason: reason.map(|r| truncate(r, MAX_LAST_REASON_LEN).to_owned()),
            at,
        };
    let new = match outcome {
        UpdateOutcome::UpToDate { installed } => {
            let unchanged = state.last.as_ref().is_some_and(|l| {
                l.result == "up_to_date" && l.version.as_deref() == Some(installed.as_str())
            });
            if unchanged {
                return;
            }
            last("up_to_date", None, installed, None)
        }
        UpdateOutcome::Installed { target, version } => {
            last("installed", Some(target), version, None)
        }
        UpdateOutcome::Rebooting { target, version } => {
            last("rebooting", Some(target), version, None)
        }
        UpdateOutcome::RolledBack {
            target,
            version,
            reason,
        } => last("rolled_back", Some(target), version, Some(reason)),
        UpdateOutcome::Failed {
            target,
            version,
            reason,
        } => last("failed", Some(target), version, Some(reason)),
        UpdateOutcome::ConsentDeclined {
            target,
            version,
            reason,
        } => last("consent_declined", Some(target), version, reason.as_deref()),
        UpdateOutcome::Skipped { target, version } => last("skipped", Some(target), version, None),
        UpdateOutcome::Refused { target, reason } => LastResult {
            result: "refused".to_owned(),
            target: target.clone(),
            version: None,
            reason: Some(truncate(reason, MAX_LAST_REASON_LEN).to_owned()),
            at,
        },
    };
    state.last = Some(new);
    if let Err(e) = state.save(path) {
        tracing::warn!(error = %e, "cannot record the update result in the state file");
    }
}

/// What a refusal names: the target (and version) when the verifier got that far; nothing
/// for a refusal of the metadata itself (then `target` and `version` are null).
fn refused_about(e: &VerifyError) -> About {
    let (target, version) = match e {
        VerifyError::Downgrade {
            target, offered, ..
        } => (Some(target.clone()), Some(offered.clone())),
        VerifyError::HardwareMismatch { target, .. }
        | VerifyError::Disagreement { target, .. }
        | VerifyError::UnknownTarget(target) => (Some(target.clone()), None),
        _ => (None, None),
    };
    About {
        campaign: None,
        target,
        version,
    }
}

/// The version the device runs: the agent's record, else the configured one.
fn installed(state: &UpdateState, opts: &UpdateOptions) -> Result<String, AgentError> {
    Ok(state
        .installed
        .clone()
        .unwrap_or_else(|| opts.installed_version.clone()))
}

fn failed_entry(about: &About, sha256: &str) -> Failed {
    Failed {
        target: about.target.clone().unwrap_or_default(),
        version: about.version.clone().unwrap_or_default(),
        sha256: sha256.to_owned(),
    }
}

/// Consent, download, install and (reboot or) health check of an approved update.
async fn install(
    cycle: &Cycle<'_>,
    client: &HubClient,
    state: &mut UpdateState,
    update: &ApprovedUpdate,
    installed: &str,
) -> Result<UpdateOutcome, AgentError> {
    let opts = cycle.opts;
    let about = About::approved(update);
    let target = update.target().to_owned();
    let version = update.version().to_owned();
    let sha = update.sha256_hex();
    if state.has_failed(&sha) {
        tracing::info!(
            target,
            version,
            "this target failed before; not trying it again"
        );
        return Ok(UpdateOutcome::Skipped { target, version });
    }
    let env = cycle.env(&about, Some(installed));

    if update.consent_required()
        && let Err(reason) = ask_consent(opts.commands.consent.as_ref(), &env).await
    {
        cycle.status(&about, ReportState::ConsentDeclined, 0, reason.as_deref());
        return Ok(UpdateOutcome::ConsentDeclined {
            target,
            version,
            reason,
        });
    }

    // Download, resuming a partial file; a broken connection is retried a few times.
    let images = opts.images_dir();
    download::remove_other_images(&images, Some(&sha));
    cycle.status(&about, ReportState::Downloading, 0, None);
    let mut attempt = 0u32;
    let downloaded = loop {
        attempt += 1;
        let mut progress = |p: u8| cycle.status(&about, ReportState::Downloading, p, None);
        match download::attempt(client, update, &images, &mut progress).await {
            Ok(d) => break d,
            Err(Failure::Refused(e)) => {
                let reason = e.to_string();
                cycle.status(&about, ReportState::Refused, 0, Some(&reason));
                return Ok(UpdateOutcome::Refused {
                    target: Some(target),
                    reason,
                });
            }
            Err(Failure::Retry(e)) if attempt < download::MAX_DOWNLOAD_ATTEMPTS => {
                let wait = download::DOWNLOAD_RETRY_DELAY.saturating_mul(1 << (attempt - 1));
                tracing::warn!(
                    target,
                    attempt,
                    error = %e,
                    retry_in = ?wait,
                    "download interrupted"
                );
                tokio::time::sleep(wait).await;
            }
            Err(Failure::Retry(e)) => return Err(e),
        }
    };
    cycle.status(&about, ReportState::Downloaded, 100, None);

    // Install. The pending record goes to disk first, so a crash during the install is
    // noticed at the next start.
    state.pending = Some(Pending {
        target: target.clone(),
        version: version.clone(),
        sha256: sha.clone(),
        length: update.length(),
        campaign: update.campaign().map(str::to_owned),
        phase: Phase::Installing,
        boots: 0,
        previous: Some(installed.to_owned()),
        image: downloaded.path.clone(),
    });
    state.save(&opts.state_file())?;
    cycle.status(&about, ReportState::Installing, 100, None);
    let failure = match run_install(&opts.commands.install, &downloaded, &env).await {
        Ok(d) if d.success => None,
        Ok(d) => Some(d.failure),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = failure {
        state.pending = None;
        state.remember_failed(failed_entry(&about, &sha));
        state.save(&opts.state_file())?;
        download::remove_other_images(&images, None);
        cycle.status(&about, ReportState::Failed, 0, Some(&reason));
        return Ok(UpdateOutcome::Failed {
            target,
            version,
            reason,
        });
    }

    let Some(pending) = state.pending.as_mut() else {
        return Err(AgentError::Misconfigured(
            "the pending install vanished".into(),
        ));
    };
    pending.phase = Phase::Rebooting;
    let pending = pending.clone();
    state.save(&opts.state_file())?;
    match &opts.commands.reboot {
        None => finish_pending(cycle, state, pending).await,
        Some(reboot) => {
            cycle.status(&about, ReportState::Rebooting, 100, None);
            // The reboot may end this process: let the reports out first.
            cycle.reporter.flush(REPORT_FLUSH_TIMEOUT).await;
            let done = command::run("reboot", reboot, &[], &env, COMMAND_TIMEOUT, 0).await;
            match done {
                Ok(d) if d.success => Ok(UpdateOutcome::Rebooting { target, version }),
                Ok(d) => rollback(cycle, state, &pending, d.failure).await,
                Err(e) => rollback(cycle, state, &pending, e.to_string()).await,
            }
        }
    }
}

/// Asks for consent (see the module docs). `Ok`: consent given; `Err(None)`: the command
/// said no; `Err(Some(reason))`: declined because nobody could answer.
async fn ask_consent(
    consent: Option<&CommandLine>,
    env: &[(&'static str, String)],
) -> Result<(), Option<String>> {
    let Some(consent) = consent else {
        tracing::warn!(
            "an update requires consent but no consent command is configured \
             (--consent-cmd); declined"
        );
        return Err(Some(
            "the campaign requires consent and no consent command is configured \
             (--consent-cmd)"
                .to_owned(),
        ));
    };
    match command::run("consent", consent, &[], env, COMMAND_TIMEOUT, 0).await {
        Ok(d) if d.success => Ok(()),
        Ok(d) if d.timed_out => Err(Some(d.failure)),
        Ok(_) => Err(None),
        Err(e) => {
            tracing::warn!(error = %e, "the consent command cannot run; declined");
            Err(Some(e.to_string()))
        }
    }
}

/// Runs the install command on a verified image: the image path as the last argument and in
/// `MOAT_OTA_IMAGE`. Taking [`download::Downloaded`] (which only a passed `TargetCheck` makes)
/// means no unverified bytes reach the install command.
async fn run_install(
    install: &CommandLine,
    downloaded: &download::Downloaded,
    env: &[(&'static str, String)],
) -> Result<command::Finished, AgentError> {
    tracing::debug!(
        target = downloaded.image.update().target(),
        image = %downloaded.path.display(),
        "installing"
    );
    let mut env = env.to_vec();
    env.push(("MOAT_OTA_IMAGE", downloaded.path.display().to_string()));
    command::run(
        "install",
        install,
        &[OsString::from(downloaded.path.as_os_str())],
        &env,
        INSTALL_TIMEOUT,
        0,
    )
    .await
}

/// Finishes an install found pending at the start of a cycle (or right after an install
/// without reboot command): health check, then confirm or roll back.
async fn finish_pending(
    cycle: &Cycle<'_>,
    state: &mut UpdateState,
    mut pending: Pending,
) -> Result<UpdateOutcome, AgentError> {
    let opts = cycle.opts;
    let about = About::pending(&pending);
    if pending.phase == Phase::Installing {
        let reason = "the install was interrupted (the agent stopped while the install command \
                      ran); not trying this target again"
            .to_owned();
        state.pending = None;
        state.remember_failed(failed_entry(&about, &pending.sha256));
        state.save(&opts.state_file())?;
        download::remove_other_images(&opts.images_dir(), None);
        cycle.status(&about, ReportState::Failed, 0, Some(&reason));
        return Ok(UpdateOutcome::Failed {
            target: pending.target,
            version: pending.version,
            reason,
        });
    }
    pending.boots = pending.boots.saturating_add(1);
    state.pending = Some(pending.clone());
    state.save(&opts.state_file())?;
    if pending.boots > opts.max_boot_attempts {
        let reason = format!(
            "the new version did not pass its health check within {} starts",
            opts.max_boot_attempts
        );
        return rollback(cycle, state, &pending, reason).await;
    }
    let env = cycle.env(&about, pending.previous.as_deref());
    for (what, cmd) in [
        ("health", &opts.commands.health),
        ("confirm", &opts.commands.confirm),
    ] {
        let Some(cmd) = cmd else { continue };
        match command::run(what, cmd, &[], &env, COMMAND_TIMEOUT, 0).await {
            Ok(d) if d.success => {}
            Ok(d) => return rollback(cycle, state, &pending, d.failure).await,
            Err(e) => return rollback(cycle, state, &pending, e.to_string()).await,
        }
    }
    state.installed = Some(pending.version.clone());
    state.pending = None;
    state.save(&opts.state_file())?;
    download::remove_other_images(&opts.images_dir(), None);
    cycle.status(&about, ReportState::Installed, 100, None);
    Ok(UpdateOutcome::Installed {
        target: pending.target,
        version: pending.version,
    })
}

/// Runs the rollback command and records the target as failed.
async fn rollback(
    cycle: &Cycle<'_>,
    state: &mut UpdateState,
    pending: &Pending,
    reason: String,
) -> Result<UpdateOutcome, AgentError> {
    let opts = cycle.opts;
    let about = About::pending(pending);
    let env = cycle.env(&about, pending.previous.as_deref());
    let rolled_back = match &opts.commands.rollback {
        None => Err("no rollback command configured".to_owned()),
        Some(cmd) => match command::run("rollback", cmd, &[], &env, COMMAND_TIMEOUT, 0).await {
            Ok(d) if d.success => Ok(()),
            Ok(d) => Err(d.failure),
            Err(e) => Err(e.to_string()),
        },
    };
    state.pending = None;
    state.remember_failed(failed_entry(&about, &pending.sha256));
    state.save(&opts.state_file())?;
    download::remove_other_images(&opts.images_dir(), None);
    let (target, version) = (pending.target.clone(), pending.version.clone());
    match rolled_back {
        Ok(()) => {
            cycle.status(&about, ReportState::RolledBack, 0, Some(&reason));
            Ok(UpdateOutcome::RolledBack {
                target,
                version,
                reason,
            })
        }
        Err(why) => {
            let reason = format!("{reason}; rollback failed: {why}");
            cycle.status(&about, ReportState::Failed, 0, Some(&reason));
            Ok(UpdateOutcome::Failed {
                target,
                version,
                reason,
            })
        }
    }
}

/// Shortest interval between update checks: 5 s.
pub const MIN_UPDATE_INTERVAL: Duration = Duration::from_secs(5);
/// Default interval between update checks: 1 h (plus up to a tenth at random, so that a
/// fleet does not ask in the same second).
pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs [`update_once`] every `every` (plus jitter) until the future is dropped; every
/// outcome and error is logged, never fatal.
pub async fn run_updates(
    dir: &Path,
    overrides: &Overrides,
    opts: &UpdateOptions,
    every: Duration,
) -> std::convert::Infallible {
    let every = every.max(MIN_UPDATE_INTERVAL);
    loop {
        match update_once(dir, overrides, opts).await {
            Ok(UpdateOutcome::UpToDate { installed }) => {
                tracing::debug!(installed, "no update");
            }
            Ok(outcome) => tracing::info!(?outcome, "update cycle"),
            Err(e) => tracing::warn!(error = %e, "update check failed"),
        }
        tokio::time::sleep(every + crate::run::random_below(every / 10)).await;
    }
}

/// Parses an interval: a number with `s`, `m`, `h` or `d` (`90s`, `15m`, `6h`, `1d`).
pub fn parse_interval(text: &str) -> Result<Duration, AgentError> {
    let bad = || {
        AgentError::Misconfigured(format!(
            "interval {text:?}: use a number with s, m, h or d, e.g. 15m"
        ))
    };
    let text = text.trim();
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(secs);
    if d < MIN_UPDATE_INTERVAL {
        return Err(AgentError::Misconfigured(format!(
            "interval {text:?} is shorter than {MIN_UPDATE_INTERVAL:?}"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() -> Result<(), AgentError> {
        assert_eq!(parse_interval("90s")?, Duration::from_secs(90));
        assert_eq!(parse_interval("15m")?, Duration::from_secs(900));
        assert_eq!(parse_interval("1d")?, Duration::from_secs(86_400));
        for bad in ["", "1", "1w", "-1h", "1s", "99999999999999999999d", "h"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn report_errors_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("x", 10), "x");
    }

    #[test]
    fn hardware_classes_are_checked() {
        assert!(check_hardware("rpi4-b_1.0").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(MAX_HARDWARE_LEN + 1)] {
            assert!(check_hardware(bad).is_err(), "{bad}");
        }
    }
}
