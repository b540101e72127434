//! CA operations on a running hub: rotate the issuing CA (root key on the hub), reload after
//! an offline import, and describe the hierarchy. Either way the listeners switch to the new
//! CA at once ([`TlsSet::ca_changed`](crate::tls::TlsSet::ca_changed)); the previous issuing
//! CA stays trusted until it expires, so every device keeps connecting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_audit::{Entry, Outcome};
use moat_pki::{CaOptions, CertificateAuthority, KeySource};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::identity::{Identity, IdentityError, now_ms};

/// Where the CA lives.
pub(crate) struct CaHome {
    pub dir: PathBuf,
    pub keys: Arc<dyn KeySource>,
}

impl std::fmt::Debug for CaHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaHome")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The key source for `dir`, with the passphrase if one is configured.
pub fn key_source(dir: &Path, passphrase: Option<moat_pki::Passphrase>) -> Arc<dyn KeySource> {
    match passphrase {
        Some(p) => Arc::new(moat_pki::FileKeySource::with_passphrase(dir, p)),
        None => Arc::new(moat_pki::FileKeySource::new(dir)),
    }
}

fn describe(ca: &CertificateAuthority) -> Value {
    json!({
        "root_pem": ca.root_cert_pem(),
        "root_key_on_hub": ca.root_key_available(),
        "issuing_pem": ca.issuing_cert_pem(),
        "issuing_not_after": ca.issuing_not_after().to_string(),
        "issuing_algorithm": ca.issuing_key_algorithm().to_string(),
        "previous_issuing_pem": ca.previous_issuing_cert_pem(),
        "previous_issuing_not_after": ca.previous_issuing_not_after().map(|t| t.to_string()),
    })
}

impl Identity {
    pub(crate) fn ca_info(&self) -> Value {
        describe(&self.ca.load())
    }

    fn home(&self) -> Result<&CaHome, IdentityError> {
        self.ca_home
            .get()
            .ok_or_else(|| IdentityError::Internal("the CA location is not set".into()))
    }

    /// Installs `ca` as the current CA: new certificates come from it and the listeners
    /// trust it (and the previous issuing CA) from the next handshake.
    async fn install(
        &self,
        actor: &str,
        action: &str,
        ca: CertificateAuthority,
    ) -> Result<Value, IdentityError> {
        if let Some(tls) = self.tls.get() {
            tls.ca_changed(&ca).map_err(|e| {
                IdentityError::Invalid(format!("the new CA cannot be used for TLS: {e}"))
            })?;
        }
        let info = describe(&ca);
        self.trusted_issuers
            .store(Arc::new(crate::identity::issuing_subjects(&ca)));
        self.ca.store(Arc::new(ca));
        self.refresh_directory().await?;
        self.audit_now(
            Entry::new(now_ms(), actor, action, "ca:issuing", Outcome::Success)
                .with("issuing_not_after", &info["issuing_not_after"])
                .with(
                    "previous_issuing_not_after",
                    &info["previous_issuing_not_after"],
                ),
        )
        .await?;
        Ok(info)
    }

    /// A new issuing CA signed by the root key on the hub.
    pub(crate) async fn rotate_ca(&self, actor: &str) -> Result<Value, IdentityError> {
        let _guard = self.changes.lock().await;
        let home = self.home()?;
        let (dir, keys) = (home.dir.clone(), home.keys.clone());
        let ca = tokio::task::spawn_blocking(move || {
            CertificateAuthority::rotate_issuing(&dir, keys.as_ref(), OffsetDateTime::now_utc())
        })
        .await
        .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
        .map_err(|e| IdentityError::Conflict(format!("rotation refused: {e}")))?;
        self.install(actor, "ca.rotate", ca).await
    }

    /// Stops trusting the previous issuing CA before it expires (after a compromise of its
    /// key, or to rotate again): every certificate it issued stops working at once.
    pub(crate) async fn discard_previous_ca(&self, actor: &str) -> Result<Value, IdentityError> {
        {
            let _guard = self.changes.lock().await;
            let home = self.home()?;
            let (dir, keys) = (home.dir.clone(), home.keys.clone());
            let discarded = tokio::task::spawn_blocking(move || {
                CertificateAuthority::discard_previous_issuing(&dir, keys.as_ref())
            })
            .await
            .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))??;
            if !discarded {
                return Err(IdentityError::Conflict(
                    "there is no previous issuing CA to discard".into(),
                ));
            }
        }
        self.reload_ca(actor).await
    }

    /// Loads the CA from disk again (after `moat ca import-issuing`).
    pub(crate) async fn reload_ca(&self, actor: &str) -> Result<Value, IdentityError> {
        let _guard = self.changes.lock().await;
        let home = self.home()?;
        let (dir, keys) = (home.dir.clone(), home.keys.clone());
        // Reload, never create: an emptied directory must not become a brand-new CA.
        if !dir.join(moat_pki::ISSUING_CA_CERT_FILE).exists() {
            return Err(IdentityError::Conflict(format!(
                "{} holds no issuing CA to load",
                dir.display()
            )));
        }
        let ca = tokio::task::spawn_blocking(move || {
            CertificateAuthority::load_or_create_with(
                &dir,
                keys.as_ref(),
                &CaOptions::default(),
                OffsetDateTime::now_utc(),
            )
        })
        .await
        .map_err(|e| IdentityError::Internal(format!("task failed: {e}")))?
        .map_err(|e| IdentityError::Conflict(format!("reload refused: {e}")))?
        .0;
        self.install(actor, "ca.reload", ca).await
    }
}

// ---- the offline ceremony (files only; no running hub needed) ---------------------------

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Invalid(format!("{}: {e}", path.display()))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// On an offline machine: creates a root CA in `dir` (its key never leaves it). Returns the
/// root certificate's path, to carry to the hub.
pub fn init_root(
    dir: &Path,
    algorithm: moat_pki::KeyAlgorithm,
    passphrase: Option<moat_pki::Passphrase>,
) -> Result<PathBuf, IdentityError> {
    let keys = key_source(dir, passphrase);
    moat_pki::OfflineRoot::create(
        dir,
        keys.as_ref(),
        &CaOptions::with_algorithm(algorithm),
        now(),
    )?;
    Ok(dir.join(moat_pki::ROOT_CA_CERT_FILE))
}

/// On the hub: the issuing-CA key (made in the hub's key source) and its request, written
/// to `out` (PEM) for the offline root to sign.
pub fn issuing_request(
    data_dir: &Path,
    algorithm: moat_pki::KeyAlgorithm,
    passphrase: Option<moat_pki::Passphrase>,
    out: &Path,
) -> Result<(), IdentityError> {
    let dir = data_dir.join("pki");
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let keys = key_source(&dir, passphrase);
    let req = CertificateAuthority::issuing_request_with(
        &dir,
        keys.as_ref(),
        &CaOptions::with_algorithm(algorithm),
        now(),
    )?;
    std::fs::write(out, req.csr_pem.as_bytes()).map_err(io_error(out))
}

/// On the offline machine: signs an issuing-CA request with the root in `dir`; writes the
/// issuing CA certificate (PEM) to `out`.
pub fn sign_issuing(
    dir: &Path,
    passphrase: Option<moat_pki::Passphrase>,
    csr: &Path,
    out: &Path,
    validity: std::time::Duration,
) -> Result<(), IdentityError> {
    let keys = key_source(dir, passphrase);
    let root = moat_pki::OfflineRoot::load(dir, keys.as_ref(), now())?;
    let csr_pem = std::fs::read_to_string(csr).map_err(io_error(csr))?;
    let cert = root.sign_issuing(&csr_pem, validity, now())?;
    std::fs::write(out, cert.as_bytes()).map_err(io_error(out))
}

/// On the hub: installs the signed issuing CA and the root it chains to. A running hub
/// picks it up with [`Identity::reload_ca`] (`moat ca import-issuing` asks it to).
pub fn import_issuing(
    data_dir: &Path,
    passphrase: Option<moat_pki::Passphrase>,
    cert: &Path,
    root: &Path,
) -> Result<(), IdentityError> {
    let dir = data_dir.join("pki");
    let keys = key_source(&dir, passphrase);
    let cert_pem = std::fs::read_to_string(cert).map_err(io_error(cert))?;
    let root_pem = std::fs::read_to_string(root).map_err(io_error(root))?;
    CertificateAuthority::import_issuing(&dir, keys.as_ref(), &cert_pem, &root_pem, now())?;
    Ok(())
}
