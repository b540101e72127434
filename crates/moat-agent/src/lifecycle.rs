//! Enrollment, renewal and status: the EST client, the verifier and the identity directory
//! put together.
//!
//! ```text
//!   (no identity) --enroll(token)--> enrolled --renew (due or forced)--> enrolled (new key)
//!                                       |  ^                                   |
//!                                       |  +-----------------------------------+
//!                                       +--certificate expires--> expired: enroll again
//! ```

use std::path::{Path, PathBuf};

use moat_types::DeviceId;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::certificate::{CertificateFacts, DeviceKey, VerifiedIdentity, verify_issued};
use crate::est::{ClientAuth, EstClient};
use crate::files::{self, DirLock, IdentityFiles, LockFor, MAX_PEM_FILE_SIZE, State};
use crate::{AgentError, EnrollmentToken, HubUrl, RenewalSchedule, RenewalThreshold};

/// What to do when the directory already holds an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExistingIdentity {
    /// Refuse to enroll ([`AgentError::IdentityExists`]).
    #[default]
    Refuse,
    /// Replace it (`--force`). The old key is overwritten once the new certificate verified.
    Replace,
}

/// What [`enroll`] needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The hub's EST base URL, e.g. `https://hub.example:8443`.
    pub hub: HubUrl,
    /// PEM file with the root CA the hub's TLS certificate and the issued certificate must
    /// chain to (the hub's `pki/root-ca.crt`).
    pub ca_file: PathBuf,
    /// The enrollment token.
    pub token: EnrollmentToken,
    /// The device id to request (the CSR's subject CN).
    pub device_id: DeviceId,
    /// Where the identity is written (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// Whether an existing identity may be replaced.
    pub existing: ExistingIdentity,
    /// Remembered in `agent.json`: when renewal falls due.
    pub renew_when: RenewalThreshold,
}

impl EnrollOptions {
    /// Options with the defaults: refuse to replace an identity, renew at one third.
    pub fn new(
        hub: HubUrl,
        ca_file: impl Into<PathBuf>,
        token: EnrollmentToken,
        device_id: DeviceId,
        dir: impl Into<PathBuf>,
    ) -> Self {
        EnrollOptions {
            hub,
            ca_file: ca_file.into(),
            token,
            device_id,
            dir: dir.into(),
            existing: ExistingIdentity::Refuse,
            renew_when: RenewalThreshold::DEFAULT,
        }
    }
}

/// A device identity on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device id the certificate names.
    pub device_id: DeviceId,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Where the files are.
    pub files: IdentityFiles,
}

impl Identity {
    fn new(device_id: DeviceId, leaf: &CertificateFacts, files: IdentityFiles) -> Self {
        Identity {
            device_id,
            serial: leaf.serial_hex(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            files,
        }
    }
}

/// Whether [`renew`] renews only when due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
    /// Renew only if less than the threshold's fraction of the lifetime remains.
    WhenDue,
    /// Renew now (`--force`).
    Now,
}

/// One-off replacements for what `agent.json` remembers; not saved.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Talk to this hub instead of the remembered one.
    pub hub: Option<HubUrl>,
    /// Use this threshold instead of the remembered one.
    pub renew_when: Option<RenewalThreshold>,
}

/// What [`renew`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewOutcome {
    /// Not due; nothing changed.
    NotDue {
        /// The current identity.
        identity: Identity,
        /// When renewal falls due.
        due_at: OffsetDateTime,
    },
    /// A new key and certificate replaced the old ones.
    Renewed {
        /// The serial of the certificate that was replaced (it stays valid until it expires,
        /// so sessions using it continue).
        previous_serial: String,
        /// The new identity.
        identity: Identity,
    },
}

/// What `moat-agent status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The identity.
    pub identity: Identity,
    /// The hub renewal talks to.
    pub hub: HubUrl,
    /// The threshold in use.
    pub renew_when: RenewalThreshold,
    /// Validity and due time.
    pub schedule: RenewalSchedule,
    /// Whether renewal is due now.
    pub due: bool,
    /// Whether the certificate has expired (renewal is then impossible: enroll again).
    pub expired: bool,
}

fn read_ca(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let pem = files::read_bounded(path, MAX_PEM_FILE_SIZE)?;
    crate::certificate::certificates_from_pem(&pem, what).map_err(AgentError::Misconfigured)
}

/// Enrolls this device (EST `simpleenroll`): makes an ECDSA P-256 key, sends a request for
/// `opts.device_id` with the token, checks the issued certificate (this key, this id, chains
/// to the CA file) and writes `device.key` (0600), `device.crt` (leaf and issuing CA),
/// `ca.crt` and `agent.json` into `opts.dir`.
///
/// The token is sent only after the hub's TLS certificate verified against the CA file.
/// Nothing is written unless everything verified; an existing identity is kept unless
/// `opts.existing` is [`ExistingIdentity::Replace`].
pub async fn enroll(opts: &EnrollOptions) -> Result<Identity, AgentError> {
    let roots = read_ca(&opts.ca_file, &opts.ca_file.display().to_string())?;
    let files = IdentityFiles::in_dir(&opts.dir);
    files::ensure_dir(&opts.dir)?;
    let _lock = DirLock::acquire(&opts.dir, LockFor::Identity)?;
    if let Some(what) = files::recover(&files)? {
        tracing::warn!(dir = %opts.dir.display(), "{what}");
    }
    if opts.existing == ExistingIdentity::Refuse && files.any_exist() {
        return Err(AgentError::IdentityExists {
            dir: opts.dir.clone(),
        });
    }

    let client = EstClient::new(opts.hub.clone(), &roots, ClientAuth::None)?;
    let ca_certs = client.cacerts().await?;
    let key = DeviceKey::generate()?;
    let csr = key.certificate_request(&opts.device_id)?;
    let issued = client
        .simpleenroll(&csr, &opts.device_id, &opts.token)
        .await?;
    let verified = verify_issued(
        &opts.device_id,
        key,
        &issued,
        &ca_certs,
        &roots,
        UnixTime::now(),
    )?;

    files::write_atomic(
        &files.ca,
        crate::certificate::certificates_to_pem(&roots).as_bytes(),
        files::Access::Public,
    )?;
    files::write_state(
        &files,
        &State {
            hub: opts.hub.clone(),
            device_id: opts.device_id.clone(),
            renew_when: opts.renew_when,
        },
    )?;
    files::commit(&files, &verified)?;
    let identity = Identity::new(opts.device_id.clone(), &verified.leaf, files);
    tracing::info!(
        device = %identity.device_id,
        serial = %identity.serial,
        not_after = %crate::format_utc(identity.not_after),
        hub = %opts.hub,
        "enrolled"
    );
    Ok(identity)
}

/// The identity as read from its directory (without the key).
struct OnDisk {
    state: State,
    chain: Vec<CertificateDer<'static>>,
    leaf: CertificateFacts,
}

fn read_identity(files: &IdentityFiles) -> Result<OnDisk, AgentError> {
    if !files.dir.is_dir() {
        return Err(AgentError::NoIdentity {
            dir: files.dir.clone(),
            reason: "the directory does not exist (enroll first)".into(),
        });
    }
    let state = files::read_state(files)?;
    let bad =
        |reason: String| AgentError::Misconfigured(format!("{}: {reason}", files.cert.display()));
    let pem = files::read_bounded(&files.cert, MAX_PEM_FILE_SIZE)?;
    let chain = crate::certificate::certificates_from_pem(&pem, "device.crt")
        .map_err(AgentError::Misconfigured)?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad("no certificate".into()))
        .and_then(|c| CertificateFacts::parse(c).map_err(bad))?;
    if !leaf
        .common_names
        .iter()
        .any(|cn| cn == state.device_id.as_str())
        && !leaf
            .device_uris
            .iter()
            .any(|u| u == state.device_id.as_str())
    {
        return Err(bad(format!(
            "the certificate does not name device {}",
            state.device_id
        )));
    }
    Ok(OnDisk { state, chain, leaf })
}

/// Renews with [`RenewMode`] and the remembered settings; see [`renew_with`].
pub async fn renew(dir: &Path, mode: RenewMode) -> Result<RenewOutcome, AgentError> {
    renew_with(dir, mode, &Overrides::default()).await
}

/// Renews the identity in `dir` (EST `simplereenroll`) when due or when `mode` is
/// [`RenewMode::Now`]: authenticates with the current key and certificate over mutual TLS,
/// requests a certificate for a NEW P-256 key, checks it like [`enroll`] does, then replaces
/// key and certificate (a crash-safe two-file commit, see [`crate::files`]). The previous
/// certificate stays valid at the hub until it expires, so open sessions are not cut.
///
/// Fails without changing anything if the hub refuses, the certificate does not verify, or
/// the current certificate has expired ([`AgentError::Expired`]: enroll again).
pub async fn renew_with(
    dir: &Path,
    mode: RenewMode,
    overrides: &Overrides,
) -> Result<RenewOutcome, AgentError> {
    let files = IdentityFiles::in_dir(dir);
    if !dir.is_dir() {
        return Err(AgentError::NoIdentity {
            dir: dir.to_owned(),
            reason: "the directory does not exist (enroll first)".into(),
        });
    }
    let _lock = DirLock::acquire(dir, LockFor::Identity)?;
    if let Some(what) = files::recover(&files)? {
        tracing::warn!(dir = %dir.display(), "{what}");
    }
    let current = read_identity(&files)?;
    let threshold = overrides.renew_when.unwrap_or(current.state.renew_when);
    let schedule = RenewalSchedule::new(current.leaf.not_before, current.leaf.not_after, threshold)
        .map_err(|e| AgentError::Misconfigured(format!("{}: {e}", files.cert.display())))?;
    let now = OffsetDateTime::now_utc();
    let device_id = current.state.device_id.clone();
    if mode == RenewMode::WhenDue && !schedule.is_due(now) {
        return Ok(RenewOutcome::NotDue {
            identity: Identity::new(device_id, &current.leaf, files),
            due_at: schedule.due_at,
        });
    }
    if schedule.is_expired(now) {
        return Err(AgentError::Expired {
            device: device_id,
            not_after: crate::format_utc(current.leaf.not_after),
        });
    }

    let key_pem = files::read_bounded(&files.key, MAX_PEM_FILE_SIZE)?;
    let current_key = std::str::from_utf8(&key_pem)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(DeviceKey::from_pem)
        .map_err(|e| AgentError::Misconfigured(format!("{}: {e}", files.key.display())))?;
    if !current_key.matches(&current.leaf) {
        return Err(AgentError::Misconfigured(format!(
            "{} does not belong to the certificate in {}",
            files.key.display(),
            files.cert.display()
        )));
    }
    let roots = read_ca(&files.ca, "ca.crt")?;
    let hub = overrides
        .hub
        .clone()
        .unwrap_or_else(|| current.state.hub.clone());
    let client = EstClient::new(
        hub.clone(),
        &roots,
        ClientAuth::Device {
            chain: current.chain.clone(),
            key: current_key.der_for_tls()?,
        },
    )?;
    // Fetched again: the hub may have rotated its issuing CA since enrollment.
    let ca_certs = client.cacerts().await?;
    let key = DeviceKey::generate()?;
    let csr = key.certificate_request(&device_id)?;
    let issued = client.simplereenroll(&csr).await?;
    let verified: VerifiedIdentity =
        verify_issued(&device_id, key, &issued, &ca_certs, &roots, UnixTime::now())?;
    if verified.leaf.serial == current.leaf.serial {
        return Err(AgentError::NotVerified(
            "the hub returned the current certificate instead of a new one".into(),
        ));
    }
    files::commit(&files, &verified)?;
    let previous_serial = current.leaf.serial_hex();
    let identity = Identity::new(device_id, &verified.leaf, files);
    tracing::info!(
        device = %identity.device_id,
        previous_serial = %previous_serial,
        serial = %identity.serial,
        not_after = %crate::format_utc(identity.not_after),
        hub = %hub,
        "renewed"
    );
    Ok(RenewOutcome::Renewed {
        previous_serial,
        identity,
    })
}

/// What a mutual-TLS connection to the hub needs, read from the identity directory: the
/// device id, the hub, the trusted roots (`ca.crt`), the chain and its key.
pub(crate) struct DeviceCredentials {
    pub(crate) device_id: DeviceId,
    pub(crate) hub: HubUrl,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) auth: crate::est::ClientAuth,
}

/// Reads the credentials of the identity in `dir` (the key must belong to the certificate).
pub(crate) fn device_credentials(
    dir: &Path,
    overrides: &Overrides,
) -> Result<DeviceCredentials, AgentError> {
    let files = IdentityFiles::in_dir(dir);
    let current = read_identity(&files)?;
    let key_pem = files::read_bounded(&files.key, MAX_PEM_FILE_SIZE)?;
    let key = std::str::from_utf8(&key_pem)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(DeviceKey::from_pem)
        .map_err(|e| AgentError::Misconfigured(format!("{}: {e}", files.key.display())))?;
    if !key.matches(&current.leaf) {
        return Err(AgentError::Misconfigured(format!(
            "{} does not belong to the certificate in {}",
            files.key.display(),
            files.cert.display()
        )));
    }
    Ok(DeviceCredentials {
        device_id: current.state.device_id,
        hub: overrides.hub.clone().unwrap_or(current.state.hub),
        roots: read_ca(&files.ca, "ca.crt")?,
        auth: crate::est::ClientAuth::Device {
            chain: current.chain,
            key: key.der_for_tls()?,
        },
    })
}

/// The identity in `dir`, its hub and renewal schedule at the current time. Reads only: an
/// interrupted renewal is completed by the next [`renew`], not here.
pub fn status(dir: &Path, overrides: &Overrides) -> Result<Status, AgentError> {
    let files = IdentityFiles::in_dir(dir);
    let current = read_identity(&files)?;
    let renew_when = overrides.renew_when.unwrap_or(current.state.renew_when);
    let schedule =
        RenewalSchedule::new(current.leaf.not_before, current.leaf.not_after, renew_when)
            .map_err(|e| AgentError::Misconfigured(format!("{}: {e}", files.cert.display())))?;
    let now = OffsetDateTime::now_utc();
    Ok(Status {
        hub: overrides.hub.clone().unwrap_or(current.state.hub),
        renew_when,
        due: schedule.is_due(now),
        expired: schedule.is_expired(now),
        schedule,
        identity: Identity::new(current.state.device_id, &current.leaf, files),
    })
}

/// The renewal schedule of the first certificate in `cert_pem` (a `device.crt`).
pub fn renewal_schedule(
    cert_pem: &[u8],
    threshold: RenewalThreshold,
) -> Result<RenewalSchedule, AgentError> {
    let chain = crate::certificate::certificates_from_pem(cert_pem, "certificate")
        .map_err(AgentError::Misconfigured)?;
    let leaf = chain
        .first()
        .ok_or_else(|| AgentError::Misconfigured("no certificate".into()))
        .and_then(|c| CertificateFacts::parse(c).map_err(AgentError::Misconfigured))?;
    RenewalSchedule::new(leaf.not_before, leaf.not_after, threshold)
        .map_err(|e| AgentError::Misconfigured(e.to_string()))
}

/// Whether the first certificate in `cert_pem` is due for renewal at `now`: less than
/// `threshold` of its lifetime remains (or it has expired). Pure: no clock, no files.
pub fn renewal_due(
    cert_pem: &[u8],
    now: OffsetDateTime,
    threshold: RenewalThreshold,
) -> Result<bool, AgentError> {
    renewal_schedule(cert_pem, threshold).map(|s| s.is_due(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::tests::TestCa;

    #[test]
    fn renewal_due_reads_the_leaf_of_a_pem_chain() -> Result<(), AgentError> {
        let ca = TestCa::new();
        let key = DeviceKey::generate()?;
        let start = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| AgentError::Misconfigured(e.to_string()))?;
        let leaf = ca.issue("dev1", key.pair(), start, start + time::Duration::days(30));
        let pem = crate::certificate::certificates_to_pem(&[leaf, ca.issuing.clone()]);
        let t = RenewalThreshold::DEFAULT;
        let day = time::Duration::days(1);
        assert!(!renewal_due(pem.as_bytes(), start, t)?);
        assert!(!renewal_due(pem.as_bytes(), start + day * 19, t)?);
        assert!(renewal_due(pem.as_bytes(), start + day * 20, t)?);
        assert!(renewal_due(pem.as_bytes(), start + day * 40, t)?);
        assert!(renewal_due(
            pem.as_bytes(),
            start + day * 16,
            RenewalThreshold::new(1, 2)?
        )?);
        assert!(renewal_due(b"garbage", start, t).is_err());
        Ok(())
    }
}
