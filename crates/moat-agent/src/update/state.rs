//! What the update flow remembers across restarts and reboots, in `WORK/state.json` (mode
//! 0600, written atomically: temporary file, flush, rename).
//!
//! ```json
//! {"version": 1, "installed": "1.2.0",
//!  "pending": {"target": "...", "version": "1.3.0", "sha256": "...", "length": 1234,
//!              "campaign": null, "phase": "rebooting", "boots": 1, "previous": "1.2.0",
//!              "image": "WORK/....image"},
//!  "failed": [{"target": "...", "version": "1.3.0", "sha256": "..."}],
//!  "last": {"result": "installed", "target": "...", "version": "1.3.0", "reason": null,
//!           "at": 1790000000}}
//! ```
//!
//! `pending` exists from the moment the install command starts until the new version is
//! confirmed or rolled back; the next start finds it (see [`crate::update`]). `failed` lists
//! the last [`MAX_FAILED_TARGETS`] targets that failed to install or were rolled back: the
//! agent does not install one of them again (a director still listing it would otherwise
//! make the device install and roll back forever). `last` is what the last update cycle
//! decided (not written again while a device stays up to date), for `moat-agent status`;
//! files written before it existed read as `null`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::AgentError;
use crate::files::{Access, read_bounded, write_atomic};

/// Largest `state.json` read, in bytes: 16 KiB.
pub const MAX_UPDATE_STATE_SIZE: u64 = 16 * 1024;
/// Most failed targets remembered: 8 (the oldest is forgotten first).
pub const MAX_FAILED_TARGETS: usize = 8;
/// Longest reason kept in [`LastResult`], in bytes: 512 (longer ones are cut at a character
/// boundary).
pub const MAX_LAST_REASON_LEN: usize = 512;
const STATE_VERSION: u32 = 1;

/// Where an install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The install command was started; it did not report back (yet).
    Installing,
    /// Installed; waiting for the restart into the new version and its health check.
    Rebooting,
}

/// An install in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// The target name.
    pub target: String,
    /// Its version.
    pub version: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
    /// The campaign it came with, if any.
    pub campaign: Option<String>,
    /// Where the install stands.
    pub phase: Phase,
    /// Starts counted since the install (a device that keeps rebooting rolls back).
    pub boots: u32,
    /// The version installed before, if known.
    pub previous: Option<String>,
    /// The verified image file.
    pub image: PathBuf,
}

/// A target that failed to install or was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failed {
    /// The target name.
    pub target: String,
    /// Its version.
    pub version: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// What the last update cycle decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastResult {
    /// `up_to_date`, `installed`, `rebooting`, `rolled_back`, `failed`, `consent_declined`,
    /// `skipped` or `refused`.
    pub result: String,
    /// The target, when there was one.
    pub target: Option<String>,
    /// Its version (for `up_to_date`: the installed version).
    pub version: Option<String>,
    /// Why it failed, was rolled back, refused or declined, when known.
    pub reason: Option<String>,
    /// When, in seconds since the Unix epoch (for `up_to_date`: since when).
    pub at: i64,
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    version: u32,
    /// The version the agent installed and confirmed last (`None`: none yet; the configured
    /// installed version applies).
    pub installed: Option<String>,
    /// The install in progress.
    pub pending: Option<Pending>,
    /// Targets not to try again.
    #[serde(default)]
    pub failed: Vec<Failed>,
    /// What the last update cycle decided.
    #[serde(default)]
    pub last: Option<LastResult>,
}

impl UpdateState {
    /// Reads `path`; a missing file is the empty state.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let bytes = match read_bounded(path, MAX_UPDATE_STATE_SIZE) {
            Err(AgentError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(UpdateState {
                    version: STATE_VERSION,
                    ..UpdateState::default()
                });
            }
            r => r?,
        };
        let bad = |reason: String| {
            AgentError::Misconfigured(format!(
                "{}: {reason} (fix or remove the file; removing it forgets the installed \
                 version and any install in progress)",
                path.display()
            ))
        };
        let state: UpdateState = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(bad(format!("unknown version {}", state.version)));
        }
        if state.failed.len() > MAX_FAILED_TARGETS {
            return Err(bad("too many failed targets".into()));
        }
        Ok(state)
    }

    /// Writes the state to `path` atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
        let mut copy = self.clone();
        copy.version = STATE_VERSION;
        let mut json = serde_json::to_vec_pretty(&copy)
            .map_err(|e| AgentError::Misconfigured(format!("encoding the update state: {e}")))?;
        json.push(b'\n');
        if json.len() as u64 > MAX_UPDATE_STATE_SIZE {
            return Err(AgentError::LimitExceeded {
                what: path.display().to_string(),
                limit: MAX_UPDATE_STATE_SIZE,
            });
        }
        write_atomic(path, &json, Access::OwnerOnly)
    }

    /// Whether the target with this digest failed before.
    pub fn has_failed(&self, sha256: &str) -> bool {
        self.failed.iter().any(|f| f.sha256 == sha256)
    }

    /// Remembers a failed target (forgetting the oldest beyond [`MAX_FAILED_TARGETS`]).
    pub fn remember_failed(&mut self, failed: Failed) {
        self.failed.retain(|f| f.sha256 != failed.sha256);
        self.failed.push(failed);
        while self.failed.len() > MAX_FAILED_TARGETS {
            self.failed.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_privately_and_bad_files_are_refused() -> Result<(), AgentError> {
        let dir = std::env::temp_dir().join(format!("moat-agent-ustate-{}", std::process::id()));
        crate::files::ensure_dir(&dir)?;
        let path = dir.join("state.json");
        let mut s = UpdateState::load(&path)?;
        assert_eq!(s.installed, None);
        s.installed = Some("1.0.0".into());
        s.pending = Some(Pending {
            target: "hw/fw-1.1.0".into(),
            version: "1.1.0".into(),
            sha256: "ab".repeat(32),
            length: 10,
            campaign: None,
            phase: Phase::Rebooting,
            boots: 1,
            previous: Some("1.0.0".into()),
            image: dir.join("x.image"),
        });
        for i in 0..20 {
            s.remember_failed(Failed {
                target: "t".into(),
                version: "1".into(),
                sha256: format!("{i:064}"),
            });
        }
        assert_eq!(s.failed.len(), MAX_FAILED_TARGETS);
        assert!(s.has_failed(&format!("{:064}", 19)) && !s.has_failed(&format!("{:064}", 0)));
        s.save(&path)?;
        assert_eq!(UpdateState::load(&path)?, s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(AgentError::io(&path))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.last = Some(LastResult {
            result: "installed".into(),
            target: Some("hw/fw-1.1.0".into()),
            version: Some("1.1.0".into()),
            reason: None,
            at: 1_790_000_000,
        });
        s.save(&path)?;
        assert_eq!(UpdateState::load(&path)?, s);
        // A file written before `last` existed.
        write_atomic(
            &path,
            br#"{"version":1,"installed":"1.0.0","pending":null,"failed":[]}"#,
            Access::OwnerOnly,
        )?;
        let old = UpdateState::load(&path)?;
        assert_eq!((old.installed.as_deref(), old.last), (Some("1.0.0"), None));
        for bad in [&b"{\"version\":2}"[..], b"{\"version\":1,\"x\":1}", b"[]"] {
            write_atomic(&path, bad, Access::OwnerOnly)?;
            assert!(UpdateState::load(&path).is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
