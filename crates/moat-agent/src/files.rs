//! The identity directory: file names, bounded reads, atomic writes and the two-file commit
//! of a key and its certificate.
//!
//! ```text
//! DIR/device.key   the device's private key (PKCS#8 PEM), mode 0600
//! DIR/device.crt   its certificate then the issuing CA, as TLS clients present them
//! DIR/ca.crt       the root(s) to trust the hub with, from the CA file given to enroll
//! DIR/agent.json   the hub URL, device id and renewal threshold remembered from enroll
//! DIR/.lock        held while an enrollment or renewal writes files
//! ```
//!
//! Every file is written to a temporary name, flushed to disk, renamed over the old one and
//! the directory flushed, so a crash leaves either the old or the new file. A key and its
//! certificate are two files and no rename covers both, so they are committed in steps that
//! `recover` can finish or undo:
//!
//! ```text
//! 1. write device.key.new, device.crt.new     (each atomically; old pair untouched)
//! 2. rename device.key.new -> device.key      (new key, old certificate: recover step 3)
//! 3. rename device.crt.new -> device.crt      (new pair)
//! ```
//!
//! Before an enrollment or renewal changes anything, `recover` completes a commit interrupted
//! after step 1 (when the staged pair matches) or after step 2, and discards an incomplete
//! stage.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::certificate::{
    CertificateFacts, DeviceKey, VerifiedIdentity, certificates_from_pem, certificates_to_pem,
};
use crate::{AgentError, HubUrl, RenewalThreshold};
use moat_types::DeviceId;

/// Largest key or certificate file read, in bytes: 64 KiB.
pub const MAX_PEM_FILE_SIZE: u64 = 64 * 1024;
/// Largest `agent.json` read, in bytes: 4 KiB.
pub const MAX_STATE_FILE_SIZE: u64 = 4 * 1024;

/// The files of one device identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The identity directory.
    pub dir: PathBuf,
    /// `device.key`: the private key, mode 0600.
    pub key: PathBuf,
    /// `device.crt`: the certificate chain (leaf first).
    pub cert: PathBuf,
    /// `ca.crt`: the trusted root(s).
    pub ca: PathBuf,
    /// `agent.json`: what enroll remembered.
    pub state: PathBuf,
}

impl IdentityFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        IdentityFiles {
            dir: dir.to_owned(),
            key: dir.join("device.key"),
            cert: dir.join("device.crt"),
            ca: dir.join("ca.crt"),
            state: dir.join("agent.json"),
        }
    }

    fn staged_key(&self) -> PathBuf {
        self.dir.join("device.key.new")
    }

    fn staged_cert(&self) -> PathBuf {
        self.dir.join("device.crt.new")
    }

    /// Whether any part of an identity is present (enroll refuses to overwrite it).
    pub(crate) fn any_exist(&self) -> bool {
        [&self.key, &self.cert, &self.state]
            .iter()
            .any(|p| p.exists())
    }
}

/// Who may read a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Mode 0600: private keys.
    OwnerOnly,
    /// Mode 0644: certificates and settings.
    Public,
}

/// Reads at most `limit` bytes of `path`; a larger file is an error, not a truncation.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, AgentError> {
    let file = File::open(path).map_err(AgentError::io(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(AgentError::io(path))?;
    if bytes.len() as u64 > limit {
        return Err(AgentError::LimitExceeded {
            what: path.display().to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// Creates `dir` (mode 0700) if it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), AgentError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(AgentError::io(dir))
}

/// Flushes a directory's entries (the renames in it) to disk.
fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, created with
/// its final mode, flushed, then renamed over `path`, then the directory flushed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> Result<(), AgentError> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| AgentError::Misconfigured(format!("{} is not a file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A leftover from a crash: it was never renamed, so it is not anyone's file.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(AgentError::io(&tmp)(e)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(
        &mut options,
        match access {
            Access::OwnerOnly => 0o600,
            Access::Public => 0o644,
        },
    );
    #[cfg(not(unix))]
    let _ = access;
    let result = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = result.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(AgentError::io(path)(e));
    }
    sync_dir(dir)
}

/// Holds `DIR/.lock` exclusively while alive, so a `run` loop and a manual `renew` do not
/// commit at the same time (the identity directory), and two update cycles do not run at once
/// (the update directory).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// What a [`DirLock`] protects, for the message another process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockFor {
    /// Enroll, renew and recovery in the identity directory.
    Identity,
    /// An update cycle in the update directory.
    Update,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path, purpose: LockFor) -> Result<Self, AgentError> {
        let path = dir.join(".lock");
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(AgentError::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(AgentError::Misconfigured(match purpose {
                LockFor::Identity => format!(
                    "another moat-agent is changing the identity in {} (it holds {})",
                    dir.display(),
                    path.display()
                ),
                LockFor::Update => format!(
                    "another moat-agent is running an update cycle in {} (it holds {}); \
                     this one did nothing: try again when that one has finished",
                    dir.display(),
                    path.display()
                ),
            })),
            Err(fs::TryLockError::Error(e)) => Err(AgentError::io(&path)(e)),
        }
    }
}

/// Makes `identity` the device's key and certificate (the commit in the module docs).
pub(crate) fn commit(files: &IdentityFiles, identity: &VerifiedIdentity) -> Result<(), AgentError> {
    let staged_key = files.staged_key();
    let staged_cert = files.staged_cert();
    write_atomic(
        &staged_key,
        identity.key.pem().as_bytes(),
        Access::OwnerOnly,
    )?;
    write_atomic(
        &staged_cert,
        certificates_to_pem(&identity.chain).as_bytes(),
        Access::Public,
    )?;
    fs::rename(&staged_key, &files.key).map_err(AgentError::io(&files.key))?;
    fs::rename(&staged_cert, &files.cert).map_err(AgentError::io(&files.cert))?;
    sync_dir(&files.dir)
}

/// Whether the key PEM at `key` belongs to the leaf of the chain PEM at `cert`; `None` if
/// either is missing or unreadable.
fn pair_matches(key: &Path, cert: &Path) -> Option<bool> {
    let key = read_bounded(key, MAX_PEM_FILE_SIZE).ok()?;
    let key = DeviceKey::from_pem(std::str::from_utf8(&key).ok()?).ok()?;
    let chain = certificates_from_pem(&read_bounded(cert, MAX_PEM_FILE_SIZE).ok()?, "").ok()?;
    let leaf = CertificateFacts::parse(chain.first()?).ok()?;
    Some(key.matches(&leaf))
}

/// Finishes or undoes a commit a crash interrupted (see the module docs). Returns what it did
/// (for the log), or `None` if there was nothing to do.
pub(crate) fn recover(files: &IdentityFiles) -> Result<Option<&'static str>, AgentError> {
    let staged_key = files.staged_key();
    let staged_cert = files.staged_cert();
    let (has_key, has_cert) = (staged_key.exists(), staged_cert.exists());
    if !has_key && !has_cert {
        return Ok(None);
    }
    let done = if has_cert && has_key && pair_matches(&staged_key, &staged_cert) == Some(true) {
        fs::rename(&staged_key, &files.key).map_err(AgentError::io(&files.key))?;
        fs::rename(&staged_cert, &files.cert).map_err(AgentError::io(&files.cert))?;
        "completed an interrupted renewal (both files were staged)"
    } else if has_cert && !has_key && pair_matches(&files.key, &staged_cert) == Some(true) {
        fs::rename(&staged_cert, &files.cert).map_err(AgentError::io(&files.cert))?;
        "completed an interrupted renewal (the key was already in place)"
    } else {
        for p in [&staged_key, &staged_cert] {
            match fs::remove_file(p) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(AgentError::io(p)(e)),
                _ => {}
            }
        }
        "discarded an incomplete renewal; the previous identity is unchanged"
    };
    sync_dir(&files.dir)?;
    Ok(Some(done))
}

/// What enroll remembers in `agent.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) hub: HubUrl,
    pub(crate) device_id: DeviceId,
    pub(crate) renew_when: RenewalThreshold,
}

/// `agent.json` on disk: version 1.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    hub: String,
    device_id: String,
    renew_when_remaining: String,
}

const STATE_VERSION: u32 = 1;

pub(crate) fn write_state(files: &IdentityFiles, state: &State) -> Result<(), AgentError> {
    let file = StateFile {
        version: STATE_VERSION,
        hub: state.hub.to_string(),
        device_id: state.device_id.to_string(),
        renew_when_remaining: state.renew_when.to_string(),
    };
    let mut json = serde_json::to_vec_pretty(&file)
        .map_err(|e| AgentError::Misconfigured(format!("encoding agent.json: {e}")))?;
    json.push(b'\n');
    write_atomic(&files.state, &json, Access::Public)
}

pub(crate) fn read_state(files: &IdentityFiles) -> Result<State, AgentError> {
    let bytes = match read_bounded(&files.state, MAX_STATE_FILE_SIZE) {
        Err(AgentError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Err(AgentError::NoIdentity {
                dir: files.dir.clone(),
                reason: "no agent.json (enroll first)".into(),
            });
        }
        r => r?,
    };
    let bad =
        |reason: String| AgentError::Misconfigured(format!("{}: {reason}", files.state.display()));
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if file.version != STATE_VERSION {
        return Err(bad(format!("unknown version {}", file.version)));
    }
    Ok(State {
        hub: HubUrl::parse(&file.hub).map_err(|e| bad(e.to_string()))?,
        device_id: DeviceId::parse(&file.device_id).map_err(|e| bad(e.to_string()))?,
        renew_when: RenewalThreshold::parse(&file.renew_when_remaining)
            .map_err(|e| bad(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::tests::TestCa;
    use time::OffsetDateTime;

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir()
                .join(format!("moat-agent-{label}-{}-{nanos}", std::process::id()));
            ensure_dir(&p).expect("scratch dir");
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    fn identity(ca: &TestCa, id: &str) -> Result<VerifiedIdentity, AgentError> {
        let key = DeviceKey::generate()?;
        let now = OffsetDateTime::now_utc();
        let leaf = ca.issue(
            id,
            key.pair(),
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        );
        crate::certificate::verify_issued(
            &DeviceId::parse(id).map_err(|e| AgentError::Misconfigured(e.to_string()))?,
            key,
            &[leaf],
            std::slice::from_ref(&ca.issuing),
            std::slice::from_ref(&ca.root),
            rustls_pki_types::UnixTime::now(),
        )
    }

    #[test]
    fn atomic_writes_set_modes_and_replace_content() -> Result<(), AgentError> {
        let s = Scratch::new("write");
        let key = s.0.join("k");
        write_atomic(&key, b"one", Access::OwnerOnly)?;
        write_atomic(&key, b"two", Access::OwnerOnly)?;
        assert_eq!(fs::read(&key).map_err(AgentError::io(&key))?, b"two");
        let public = s.0.join("p");
        write_atomic(&public, b"x", Access::Public)?;
        #[cfg(unix)]
        {
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(&public), 0o644);
            assert_eq!(mode(&s.0), 0o700);
        }
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&s.0)
            .map_err(AgentError::io(&s.0))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        Ok(())
    }

    #[test]
    fn bounded_reads_refuse_oversized_files() -> Result<(), AgentError> {
        let s = Scratch::new("bounded");
        let p = s.0.join("big");
        write_atomic(&p, &[b'a'; 101], Access::Public)?;
        assert!(read_bounded(&p, 101).is_ok());
        assert!(matches!(
            read_bounded(&p, 100),
            Err(AgentError::LimitExceeded { limit: 100, .. })
        ));
        Ok(())
    }

    #[test]
    fn commit_writes_a_private_key_and_the_chain() -> Result<(), AgentError> {
        let s = Scratch::new("commit");
        let files = IdentityFiles::in_dir(&s.0);
        let ca = TestCa::new();
        let id = identity(&ca, "dev1")?;
        commit(&files, &id)?;
        #[cfg(unix)]
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(pair_matches(&files.key, &files.cert), Some(true));
        let chain = certificates_from_pem(&read_bounded(&files.cert, MAX_PEM_FILE_SIZE)?, "")
            .map_err(AgentError::Misconfigured)?;
        assert_eq!(chain, id.chain);
        assert_eq!(recover(&files)?, None);
        Ok(())
    }

    #[test]
    fn recovery_finishes_or_undoes_an_interrupted_commit() -> Result<(), AgentError> {
        let s = Scratch::new("recover");
        let files = IdentityFiles::in_dir(&s.0);
        let ca = TestCa::new();
        let old = identity(&ca, "dev1")?;
        commit(&files, &old)?;

        // Crash after staging both files: the staged pair is completed.
        let new = identity(&ca, "dev1")?;
        write_atomic(
            &files.staged_key(),
            new.key.pem().as_bytes(),
            Access::OwnerOnly,
        )?;
        write_atomic(
            &files.staged_cert(),
            certificates_to_pem(&new.chain).as_bytes(),
            Access::Public,
        )?;
        assert!(recover(&files)?.is_some());
        assert_eq!(pair_matches(&files.key, &files.cert), Some(true));
        let installed = read_bounded(&files.key, MAX_PEM_FILE_SIZE)?;
        assert_eq!(installed, new.key.pem().as_bytes());

        // Crash between the two renames: the certificate follows the key.
        let newer = identity(&ca, "dev1")?;
        write_atomic(&files.key, newer.key.pem().as_bytes(), Access::OwnerOnly)?;
        write_atomic(
            &files.staged_cert(),
            certificates_to_pem(&newer.chain).as_bytes(),
            Access::Public,
        )?;
        assert_eq!(pair_matches(&files.key, &files.cert), Some(false));
        assert!(recover(&files)?.is_some());
        assert_eq!(pair_matches(&files.key, &files.cert), Some(true));

        // Crash while staging (a key without its certificate): discarded, old pair intact.
        let before = read_bounded(&files.key, MAX_PEM_FILE_SIZE)?;
        write_atomic(&files.staged_key(), b"partial", Access::OwnerOnly)?;
        assert!(recover(&files)?.is_some());
        assert!(!files.staged_key().exists());
        assert_eq!(read_bounded(&files.key, MAX_PEM_FILE_SIZE)?, before);
        assert_eq!(pair_matches(&files.key, &files.cert), Some(true));
        Ok(())
    }

    #[test]
    fn state_round_trips_and_strange_state_is_refused() -> Result<(), AgentError> {
        let s = Scratch::new("state");
        let files = IdentityFiles::in_dir(&s.0);
        assert!(matches!(
            read_state(&files),
            Err(AgentError::NoIdentity { .. })
        ));
        let state = State {
            hub: HubUrl::parse("https://localhost:8443")
                .map_err(|e| AgentError::Misconfigured(e.to_string()))?,
            device_id: DeviceId::parse("dev1")
                .map_err(|e| AgentError::Misconfigured(e.to_string()))?,
            renew_when: RenewalThreshold::DEFAULT,
        };
        write_state(&files, &state)?;
        assert_eq!(read_state(&files)?, state);
        for bad in [
            &br#"{"version":1,"hub":"http://x:1","device_id":"d","renew_when_remaining":"1/3"}"#[..],
            br#"{"version":1,"hub":"https://x:1","device_id":"../d","renew_when_remaining":"1/3"}"#,
            br#"{"version":2,"hub":"https://x:1","device_id":"d","renew_when_remaining":"1/3"}"#,
            br#"{"version":1,"hub":"https://x:1","device_id":"d","renew_when_remaining":"1/3","x":1}"#,
            b"not json",
        ] {
            write_atomic(&files.state, bad, Access::Public)?;
            assert!(
                matches!(read_state(&files), Err(AgentError::Misconfigured(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        Ok(())
    }
}
