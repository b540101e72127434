//! Issuing-CA rotation without downtime, and the hub's half of an offline-root ceremony.
//!
//! ```text
//!  current [+ previous]                         (or nothing yet: offline root, first import)
//!      │ issuing_request        creates issuing-ca.pending.key, returns a CSR
//!      ▼
//!  current [+ previous] + pending key
//!      │ OfflineRoot::sign_issuing(csr)   on the root's machine (or here: rotate_issuing)
//!      │ import_issuing(cert, root)       verifies, then installs
//!      ▼
//!  new current + previous = old current     (an expired previous is discarded)
//! ```
//!
//! Certificates issued before a rotation stay valid: the previous issuing CA remains a trust
//! anchor ([`CertificateAuthority::trusted_issuing_certs`]) and signs the CRL of what it
//! issued ([`CertificateAuthority::issue_crl_for`]) until it expires. Only one previous CA is
//! kept, so a second rotation waits until it has expired, or until the operator discards it
//! ([`CertificateAuthority::discard_previous_issuing`]). The first rotation of a hub whose
//! root is offline is the initial import: there is no current CA yet.
//!
//! Crash safety: files are replaced atomically, and the install runs in an order where every
//! intermediate state either loads as the old CA or as the new one, and is completed by the
//! next rotation step ([`settle`]):
//!
//! 1. an expired previous CA is discarded (certificate, then key);
//! 2. `issuing-ca.previous.crt` := the current certificate (the loader ignores a previous
//!    certificate identical to the current one);
//! 3. `issuing-ca.crt` := the new certificate: the commit point (the loader finds each
//!    certificate's key by public key, wherever it is);
//! 4. key `Issuing` → `PreviousIssuing`, then `PendingIssuing` → `Issuing`.

use std::path::Path;

use rcgen::CertificateParams;
use time::OffsetDateTime;

use crate::authority::{
    CA_NAME_SUFFIX_LEN, CertFiles, KeyPool, Origin, check_ca, check_issued_by_root,
    check_name_components, distinguished_name, expired, parse_cert_pem, parse_der, parse_root,
    to_utc_seconds, write_cert, write_public_file,
};
use crate::key::{self, CaKeyRole, KeyAlgorithm, KeySource, Signer};
use crate::storage::{self, Replace};
use crate::{
    CA_KEY_ALGORITHM, CLOCK_SKEW_ALLOWANCE, CaOptions, CertificateAuthority, ISSUING_CA_CERT_FILE,
    ISSUING_CA_PREVIOUS_CERT_FILE, ISSUING_CA_VALIDITY, MAX_CA_FILE_SIZE, OfflineRoot, PkiError,
    ROOT_CA_CERT_FILE, pem, random,
};

/// A request for a new issuing CA certificate, from
/// [`CertificateAuthority::issuing_request`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuingRequest {
    /// The PKCS#10 request, PEM (`CERTIFICATE REQUEST`): subject `O=Moat, CN=Moat Issuing CA
    /// {random}`, signed by the pending key. Hand it to the root
    /// ([`OfflineRoot::sign_issuing`]).
    pub csr_pem: String,
    /// Whether the pending key was created now (`false`: an earlier request's pending key was
    /// reused, and any certificate signed for that request still imports).
    pub key_created: bool,
    /// The pending key's algorithm.
    pub algorithm: KeyAlgorithm,
    /// Where the pending key is ([`KeySource::location`]).
    pub key_location: String,
}

impl CertificateAuthority {
    /// Starts an issuing-CA rotation (or, on a hub with an offline root, the first issuing
    /// CA): creates a pending issuing key in `keys` (or reuses the pending one) and returns a
    /// certificate request for it. The key's algorithm is that of the current issuing CA, or
    /// [`CA_KEY_ALGORITHM`] if there is none yet.
    ///
    /// Nothing changes for the running CA until the signed certificate is imported with
    /// [`import_issuing`](Self::import_issuing). Refused while a previous issuing CA is still
    /// trusted (see [`discard_previous_issuing`](Self::discard_previous_issuing)).
    pub fn issuing_request(
        dir: &Path,
        keys: &dyn KeySource,
        now: OffsetDateTime,
    ) -> Result<IssuingRequest, PkiError> {
        request(dir, keys, None, now)
    }

    /// Like [`issuing_request`](Self::issuing_request), with a pending key of
    /// `options.algorithm` (refused if a pending key of another algorithm exists).
    pub fn issuing_request_with(
        dir: &Path,
        keys: &dyn KeySource,
        options: &CaOptions,
        now: OffsetDateTime,
    ) -> Result<IssuingRequest, PkiError> {
        request(dir, keys, Some(options), now)
    }

    /// Installs `issuing_cert_pem`, signed by the root in `root_cert_pem` for the pending key
    /// of [`issuing_request`](Self::issuing_request), as the current issuing CA, and loads the
    /// result. The issuing CA it replaces becomes the previous one, trusted until it expires.
    ///
    /// Checked first, changing nothing if any fails: the root is a valid, unexpired,
    /// self-signed CA and, if `dir` already has [`ROOT_CA_CERT_FILE`], the very same
    /// certificate (else it is installed there); the issuing certificate is a CA named and
    /// signed by that root, valid now, named differently from the root and from the current
    /// issuing CA, and its public key is the pending key's; the previous issuing CA's place is
    /// free (none, or expired). Importing the certificate that is already current does nothing.
    /// The root key is never needed.
    pub fn import_issuing(
        dir: &Path,
        keys: &dyn KeySource,
        issuing_cert_pem: &str,
        root_cert_pem: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        storage::ensure_private_dir(dir)?;
        settle(dir, keys)?;
        let now = to_utc_seconds(now);

        let root_origin = Origin::Given("the root CA certificate given");
        check_input_size(root_origin, root_cert_pem)?;
        let root = parse_root(root_origin, root_cert_pem.as_bytes(), now)?;
        let files = CertFiles::read(dir)?;
        let root_path = dir.join(ROOT_CA_CERT_FILE);
        if let Some(stored) = &files.root
            && parse_cert_pem(Origin::File(&root_path), stored)? != root.der
        {
            return Err(PkiError::InvalidRequest(format!(
                "the root CA certificate given is not the hub's root CA in {}: an issuing CA is \
                 imported under the existing root",
                root_path.display()
            )));
        }

        let origin = Origin::Given("the issuing CA certificate given");
        check_input_size(origin, issuing_cert_pem)?;
        let der = parse_cert_pem(origin, issuing_cert_pem.as_bytes())?;
        let current_path = dir.join(ISSUING_CA_CERT_FILE);
        let current = files
            .issuing
            .as_deref()
            .map(|bytes| parse_cert_pem(Origin::File(&current_path), bytes))
            .transpose()?;
        if current.as_ref() == Some(&der) {
            // Imported already (a retry after a crash, or twice by hand).
            return Self::load(dir, keys, now);
        }
        let cert = parse_der(origin, &der)?;
        let root_x509 = root.x509()?;
        check_ca(origin, &cert)?;
        match cert.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(origin.error("its keyUsage does not include keyCertSign"));
            }
            Ok(_) => {}
            Err(_) => return Err(origin.error("malformed keyUsage")),
        }
        check_issued_by_root(origin, &cert, &root_x509)?;
        check_name_components(origin, &cert)?;
        if cert.subject().as_raw() == root_x509.subject().as_raw() {
            return Err(origin.error("it has the root CA's own name"));
        }
        let validity = cert.validity();
        let not_before = validity.not_before.to_datetime();
        if not_before > now + CLOCK_SKEW_ALLOWANCE {
            return Err(origin.error(format!("not valid before {not_before}")));
        }
        if now > validity.not_after.to_datetime() {
            return Err(origin.error(format!("expired at {}", validity.not_after.to_datetime())));
        }

        let pending_location = keys.location(CaKeyRole::PendingIssuing);
        let pending = keys.open(CaKeyRole::PendingIssuing)?.ok_or_else(|| {
            PkiError::Misconfigured(format!(
                "no pending issuing CA key ({pending_location} is missing): create the key and \
                 its request with issuing_request (`moat ca issuing-request`) first"
            ))
        })?;
        if key::spki_der(pending.as_ref()) != cert.public_key().raw {
            return Err(origin.error(format!(
                "it is not for the pending key {pending_location} (signed for an older request?)"
            )));
        }
        drop(pending);

        if let (Some(current_bytes), Some(current_der)) = (&files.issuing, &current) {
            let current_x509 = parse_der(Origin::File(&current_path), current_der)?;
            if current_x509.subject().as_raw() == cert.subject().as_raw() {
                return Err(origin.error(
                    "it has the same name as the current issuing CA; each issuing CA needs its \
                     own, since certificates and CRLs are matched to their issuer by name",
                ));
            }
            // The current key must be in its place, ready to become the previous one.
            let current_key_matches = keys
                .open(CaKeyRole::Issuing)?
                .is_some_and(|k| key::spki_der(k.as_ref()) == current_x509.public_key().raw);
            if !current_key_matches {
                return Err(PkiError::KeyMismatch {
                    key: keys.location(CaKeyRole::Issuing),
                    certificate: current_path,
                });
            }
            check_previous_place_free(dir, &files, now)?;
            if files.root.is_none() {
                write_cert(&root_path, &root.der, Replace::Refuse)?;
            }
            install_over(dir, keys, &der, current_bytes)?;
        } else {
            if files.root.is_none() {
                write_cert(&root_path, &root.der, Replace::Refuse)?;
            }
            // The first issuing CA (offline root): certificate, then its key into place.
            write_cert(&current_path, &der, Replace::Refuse)?;
            keys.move_key(CaKeyRole::PendingIssuing, CaKeyRole::Issuing)?;
        }
        Self::load(dir, keys, now)
    }

    /// Rotates the issuing CA with the root key in the same key source: a new issuing key
    /// and certificate ([`ISSUING_CA_VALIDITY`], never past the root's expiry) become current;
    /// the old issuing CA becomes the previous one, trusted until it expires. Returns the
    /// loaded result. The new key has the current issuing CA's algorithm.
    ///
    /// Exactly [`issuing_request`](Self::issuing_request), [`OfflineRoot::sign_issuing`] and
    /// [`import_issuing`](Self::import_issuing) in one step. Refused if the root key is not
    /// here (offline root: run those three steps), or while a previous issuing CA is still
    /// trusted.
    pub fn rotate_issuing(
        dir: &Path,
        keys: &dyn KeySource,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        rotate(dir, keys, None, now)
    }

    /// Like [`rotate_issuing`](Self::rotate_issuing), with a new issuing key of
    /// `options.algorithm` (e.g. to move to Ed25519).
    pub fn rotate_issuing_with(
        dir: &Path,
        keys: &dyn KeySource,
        options: &CaOptions,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        rotate(dir, keys, Some(options), now)
    }

    /// Stops trusting the previous issuing CA before it expires: deletes
    /// [`ISSUING_CA_PREVIOUS_CERT_FILE`] and its key. Returns whether there was one.
    ///
    /// Every certificate it issued stops verifying at the hub's next start, so use it only
    /// once they are all expired or replaced (it stopped issuing at the rotation, so after
    /// [`MAX_DEVICE_CERT_VALIDITY`](crate::MAX_DEVICE_CERT_VALIDITY) at the latest), or to
    /// cut off a compromised issuing CA.
    pub fn discard_previous_issuing(dir: &Path, keys: &dyn KeySource) -> Result<bool, PkiError> {
        storage::ensure_private_dir(dir)?;
        settle(dir, keys)?;
        discard_previous(dir, keys)
    }
}

fn rotate(
    dir: &Path,
    keys: &dyn KeySource,
    options: Option<&CaOptions>,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, PkiError> {
    storage::ensure_private_dir(dir)?;
    if !keys.exists(CaKeyRole::Root)? {
        return Err(PkiError::Misconfigured(format!(
            "the root CA key is not on this machine ({} is missing): with an offline root, \
             rotate with `moat ca issuing-request`, `moat ca sign-issuing` where the root is \
             kept, and `moat ca import-issuing`",
            keys.location(CaKeyRole::Root)
        )));
    }
    let root = OfflineRoot::load(dir, keys, now)?;
    let request = request(dir, keys, options, now)?;
    let cert = root.sign_issuing(&request.csr_pem, ISSUING_CA_VALIDITY, now)?;
    CertificateAuthority::import_issuing(dir, keys, &cert, root.root_cert_pem(), now)
}

fn request(
    dir: &Path,
    keys: &dyn KeySource,
    options: Option<&CaOptions>,
    now: OffsetDateTime,
) -> Result<IssuingRequest, PkiError> {
    storage::ensure_private_dir(dir)?;
    settle(dir, keys)?;
    let now = to_utc_seconds(now);
    let files = CertFiles::read(dir)?;
    check_previous_place_free(dir, &files, now)?;

    let location = keys.location(CaKeyRole::PendingIssuing);
    let (key, key_created) = match keys.open(CaKeyRole::PendingIssuing)? {
        Some(key) => {
            if let Some(options) = options
                && key.algorithm() != options.algorithm
            {
                return Err(PkiError::Misconfigured(format!(
                    "a pending {} issuing CA key exists ({location}); delete it to request an \
                     {} one",
                    key.algorithm(),
                    options.algorithm
                )));
            }
            (key, false)
        }
        None => {
            let algorithm = match options {
                Some(options) => options.algorithm,
                None => keys
                    .open(CaKeyRole::Issuing)?
                    .map_or(CA_KEY_ALGORITHM, |k| k.algorithm()),
            };
            (keys.create(CaKeyRole::PendingIssuing, algorithm)?, true)
        }
    };
    let algorithm = key.algorithm();
    let mut params = CertificateParams::default();
    // A fresh name for every issuing CA: verifiers match certificates and CRLs to their
    // issuer by name, so the previous and the new CA must never share one.
    let suffix = random::hex(CA_NAME_SUFFIX_LEN)?;
    params.distinguished_name = distinguished_name(&format!("Moat Issuing CA {suffix}"));
    let csr = params.serialize_request(&Signer(key))?;
    Ok(IssuingRequest {
        csr_pem: pem::encode("CERTIFICATE REQUEST", csr.der()),
        key_created,
        algorithm,
        key_location: location,
    })
}

fn check_input_size(origin: Origin<'_>, pem: &str) -> Result<(), PkiError> {
    if pem.len() as u64 > MAX_CA_FILE_SIZE {
        return Err(origin.error(format!("larger than the limit of {MAX_CA_FILE_SIZE} bytes")));
    }
    Ok(())
}

/// Refuses while a previous issuing CA is still trusted: only one is kept.
fn check_previous_place_free(
    dir: &Path,
    files: &CertFiles,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let Some(previous) = files.distinct_previous() else {
        return Ok(());
    };
    let path = dir.join(ISSUING_CA_PREVIOUS_CERT_FILE);
    if expired(Origin::File(&path), previous, now)? {
        return Ok(());
    }
    let der = parse_cert_pem(Origin::File(&path), previous)?;
    let not_after = parse_der(Origin::File(&path), &der)?
        .validity()
        .not_after
        .to_datetime();
    Err(PkiError::Misconfigured(format!(
        "the previous issuing CA ({}) is trusted until {not_after}: certificates it issued may \
         still be in use. Rotate again after that, or discard it first (`moat ca \
         discard-previous`), which stops trusting every certificate it issued",
        path.display()
    )))
}

/// Steps 1 to 4 of the module docs: `new_der` (for the pending key) replaces the current
/// issuing CA, whose file holds `current_bytes`.
fn install_over(
    dir: &Path,
    keys: &dyn KeySource,
    new_der: &[u8],
    current_bytes: &[u8],
) -> Result<(), PkiError> {
    discard_previous(dir, keys)?;
    let previous_path = dir.join(ISSUING_CA_PREVIOUS_CERT_FILE);
    write_public_file(&previous_path, current_bytes, Replace::Refuse)?;
    write_cert(&dir.join(ISSUING_CA_CERT_FILE), new_der, Replace::Allow)?;
    keys.move_key(CaKeyRole::Issuing, CaKeyRole::PreviousIssuing)?;
    keys.move_key(CaKeyRole::PendingIssuing, CaKeyRole::Issuing)
}

/// Deletes the previous issuing CA: certificate first, so that a crash leaves at most a key
/// without a certificate, which [`settle`] removes.
fn discard_previous(dir: &Path, keys: &dyn KeySource) -> Result<bool, PkiError> {
    let path = dir.join(ISSUING_CA_PREVIOUS_CERT_FILE);
    let cert = storage::remove(&path).map_err(|e| PkiError::io(&path, e))?;
    let key = keys.delete(CaKeyRole::PreviousIssuing)?;
    Ok(cert || key)
}

/// Completes whatever an interrupted rotation step left, so the next step starts from a
/// tidy directory:
///
/// - a previous certificate identical to the current one (interrupted before the commit)
///   is removed;
/// - a previous key without a previous certificate (interrupted discard) is deleted;
/// - each issuing certificate's key is moved into its role (`Issuing` for the current,
///   `PreviousIssuing` for the previous) if it is elsewhere and that role is free, and a
///   second copy of it (interrupted move) is deleted.
///
/// Keys are matched by public key, never by name; a key that matches no certificate is left
/// alone (it is the pending key, or the loader reports the mismatch).
pub(crate) fn settle(dir: &Path, keys: &dyn KeySource) -> Result<(), PkiError> {
    let files = CertFiles::read(dir)?;
    let previous_path = dir.join(ISSUING_CA_PREVIOUS_CERT_FILE);
    let current_path = dir.join(ISSUING_CA_CERT_FILE);
    if files.previous.is_some() && files.distinct_previous().is_none() {
        storage::remove(&previous_path).map_err(|e| PkiError::io(&previous_path, e))?;
    }
    let files = CertFiles::read(dir)?;
    if files.previous.is_none() && keys.exists(CaKeyRole::PreviousIssuing)? {
        keys.delete(CaKeyRole::PreviousIssuing)?;
    }

    let mut pool = KeyPool::new(keys);
    for (bytes, path, role) in [
        (&files.previous, &previous_path, CaKeyRole::PreviousIssuing),
        (&files.issuing, &current_path, CaKeyRole::Issuing),
    ] {
        let Some(bytes) = bytes else { continue };
        // A damaged certificate is the loader's to report.
        let Ok(der) = parse_cert_pem(Origin::File(path), bytes) else {
            continue;
        };
        let Ok(cert) = parse_der(Origin::File(path), &der) else {
            continue;
        };
        let spki = cert.public_key().raw;
        let holders = pool.holding(spki, role)?;
        match holders.first() {
            None => continue,
            Some(&first) if first != role => {
                if pool.get(role)?.is_some() {
                    // Occupied by another key: leave it for the loader to report.
                    continue;
                }
                keys.move_key(first, role)?;
                pool.forget(first);
                pool.forget(role);
            }
            Some(_) => {}
        }
        for duplicate in pool.holding(spki, role)?.into_iter().filter(|r| *r != role) {
            keys.delete(duplicate)?;
            pool.forget(duplicate);
        }
    }
    Ok(())
}
