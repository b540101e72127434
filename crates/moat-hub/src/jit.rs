//! Just-in-time enrollment of devices that carry a factory certificate from a registered
//! manufacturer CA, optionally held for an operator's approval.
//!
//! The factory certificate only ever authenticates an EST `simpleenroll` on the API listener
//! (whose TLS trusts the manufacturer CAs besides Moat's own); the MQTT listeners trust
//! Moat's CAs alone, so a factory certificate never reaches the broker. The device id is the
//! factory certificate's subject CN. With approval required, the first request registers the
//! device as `pending` and answers `202 Accepted` with `Retry-After` (RFC 7030 4.2.3); once
//! an operator approves it, the device's next request gets its certificate.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use moat_audit::{Entry, Outcome};
use moat_pki::IssuedCertificate;
use moat_store::registry::{DeviceRecord, DeviceStatus, ManufacturerRecord};
use moat_types::DeviceId;
use rustls::CertificateError;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::{Identity, IdentityError, issued_entry, now_ms, register_issued};

/// Device attribute naming the manufacturer a device enrolled through.
pub const ATTR_MANUFACTURER: &str = "manufacturer";
/// Device attribute holding the SHA-256 (hex) of the factory certificate it enrolled with.
pub const ATTR_FACTORY_CERT: &str = "factory_cert_sha256";
/// Seconds a device held for approval is told to wait before asking again.
pub const APPROVAL_RETRY_AFTER_SECS: u64 = 60;
/// Most registered manufacturer CAs.
pub const MAX_MANUFACTURERS: usize = 64;

/// A verified factory certificate.
#[derive(Clone, Debug)]
pub(crate) struct Factory {
    pub manufacturer: String,
    pub device: DeviceId,
    /// SHA-256 of the factory certificate (hex): the device record is bound to it, so that
    /// another certificate with the same CN cannot claim it.
    pub fingerprint: String,
}

/// The API listener's certificate check: factory certificates of registered manufacturers
/// pass (their chain was verified by rustls against the manufacturer CA); everything else
/// gets the MQTT listeners' check.
#[derive(Debug)]
pub(crate) struct ApiCertificateCheck {
    pub inner: crate::identity::CertificateCheck,
    pub identity_directory: Arc<ArcSwap<crate::identity::Directory>>,
}

impl moat_net::ClientCertCheck for ApiCertificateCheck {
    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), CertificateError> {
        if factory_of(&self.identity_directory.load(), leaf).is_some() {
            return Ok(());
        }
        self.inner.check(leaf)
    }

    fn rejected(&self, leaf: &CertificateDer<'_>, error: &rustls::Error) {
        self.inner.rejected(leaf, error);
    }
}

/// The factory identity of a (verified) leaf, if a registered manufacturer issued it.
pub(crate) fn factory_of(
    directory: &crate::identity::Directory,
    leaf: &CertificateDer<'_>,
) -> Option<Factory> {
    if directory.manufacturers.is_empty() {
        return None;
    }
    let facts = moat_pki::certificate_facts(leaf).ok()?;
    let m = directory
        .manufacturers
        .iter()
        .find(|m| m.subject_dn == facts.issuer_dn)?;
    let device = DeviceId::parse(facts.subject_cn.as_deref()?).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    Some(Factory {
        manufacturer: m.name.clone(),
        device,
        fingerprint: moat_audit::hex(digest.as_ref()),
    })
}

/// What a just-in-time enrollment came to.
#[derive(Debug)]
pub(crate) enum JitOutcome {
    Issued(Box<IssuedCertificate>),
    /// Held for approval: ask again later.
    Pending,
}

impl Identity {
    pub(crate) fn manufacturers(&self) -> Vec<ManufacturerRecord> {
        self.directory.load().manufacturers.clone()
    }

    pub(crate) async fn put_manufacturer(
        &self,
        actor: &str,
        name: String,
        ca_pem: String,
        group: Option<String>,
        require_approval: bool,
    ) -> Result<ManufacturerRecord, IdentityError> {
        crate::identity::validate_name(&name, "manufacturer")?;
        let certs = crate::tls::pem_certs(&ca_pem);
        let [cert] = certs.as_slice() else {
            return Err(IdentityError::Invalid(format!(
                "ca_pem must hold exactly one PEM certificate, found {}",
                certs.len()
            )));
        };
        let subject_dn = moat_pki::ca_certificate_subject(cert)
            .map_err(|e| IdentityError::Invalid(format!("manufacturer CA: {e}")))?;
        if let Some(g) = &group
            && !self.groups().iter().any(|x| &x.name == g)
        {
            return Err(IdentityError::NotFound(format!("group {g}")));
        }
        let _guard = self.changes.lock().await;
        let existing = self.manufacturers();
        // Factory certificates are attributed by issuer name: two manufacturers (or a
        // manufacturer and Moat's own CAs) must not share one.
        let ca = self.ca.load();
        let own: Vec<String> = crate::tls::anchors(&ca)
            .iter()
            .filter_map(|c| moat_pki::ca_certificate_subject(c).ok())
            .collect();
        if own.contains(&subject_dn)
            || existing
                .iter()
                .any(|m| m.name != name && m.subject_dn == subject_dn)
        {
            return Err(IdentityError::Conflict(format!(
                "another CA already has the subject {subject_dn}"
            )));
        }
        if existing.len() >= MAX_MANUFACTURERS && !existing.iter().any(|m| m.name == name) {
            return Err(IdentityError::Invalid(format!(
                "at most {MAX_MANUFACTURERS} manufacturers"
            )));
        }
        let record = ManufacturerRecord {
            name: name.clone(),
            ca_pem,
            subject_dn,
            group,
            require_approval,
            created_at_ms: now_ms(),
        };
        self.registry.put_manufacturer(&record)?;
        self.audit_now(
            Entry::new(
                now_ms(),
                actor,
                "manufacturer.put",
                format!("manufacturer:{name}"),
                Outcome::Success,
            )
            .with("subject", &record.subject_dn)
            .with("require_approval", require_approval),
        )
        .await?;
        self.refresh_directory().await?;
        Ok(record)
    }

    pub(crate) async fn delete_manufacturer(
        &self,
        actor: &str,
        name: String,
    ) -> Result<(), IdentityError> {
        let _guard = self.changes.lock().await;
        if !self.registry.delete_manufacturer(&name)? {
            return Err(IdentityError::NotFound(format!("manufacturer {name}")));
        }
        self.audit_now(Entry::new(
            now_ms(),
            actor,
            "manufacturer.delete",
            format!("manufacturer:{name}"),
            Outcome::Success,
        ))
        .await?;
        self.refresh_directory().await?;
        Ok(())
    }

    /// Enrollment authenticated by a factory certificate.
    pub(crate) async fn enroll_jit(
        &self,
        factory: &Factory,
        csr_der: &[u8],
        peer: IpAddr,
    ) -> Result<JitOutcome, IdentityError> {
        let actor = format!("factory:{}/{}", factory.manufacturer, factory.device);
        let result = self.enroll_jit_inner(factory, csr_der).await;
        match &result {
            Ok(JitOutcome::Issued(cert)) => {
                self.audit_now(
                    issued_entry(&actor, &factory.device, cert, "jit")
                        .with("peer", peer)
                        .with("manufacturer", &factory.manufacturer),
                )
                .await?;
            }
            Ok(JitOutcome::Pending) => self.audit.record_unauthenticated(
                Some(peer),
                Entry::new(
                    now_ms(),
                    &actor,
                    "enroll.pending",
                    format!("device:{}", factory.device),
                    Outcome::Denied,
                )
                .with("peer", peer)
                .with("reason", "waiting for an operator's approval"),
            ),
            Err(e) => self.audit.record_unauthenticated(
                Some(peer),
                Entry::new(
                    now_ms(),
                    &actor,
                    "enroll.refused",
                    format!("device:{}", factory.device),
                    Outcome::Denied,
                )
                .with("peer", peer)
                .with("reason", e),
            ),
        }
        result
    }

    async fn enroll_jit_inner(
        &self,
        factory: &Factory,
        csr_der: &[u8],
    ) -> Result<JitOutcome, IdentityError> {
        let manufacturer = self
            .manufacturers()
            .into_iter()
            .find(|m| m.name == factory.manufacturer)
            .ok_or_else(|| {
                IdentityError::Unauthorized("the manufacturer is no longer registered".into())
            })?;
        let request = moat_pki::parse_certificate_request(csr_der)
            .map_err(|e| IdentityError::Invalid(format!("certificate request: {e}")))?;
        let id = &factory.device;
        if let Some(cn) = request.subject_common_name()
            && cn != id.as_str()
        {
            return Err(IdentityError::Invalid(format!(
                "the request's CN {cn:?} is not the factory certificate's device {id}"
            )));
        }
        let _guard = self.changes.lock().await;
        let now = now_ms();
        match self.registry.device(id.as_str())? {
            None => {
                let status = if manufacturer.require_approval {
                    DeviceStatus::Pending
                } else {
                    DeviceStatus::Active
                };
                self.registry.put_device(&DeviceRecord {
                    id: id.to_string(),
                    group: manufacturer.group.clone(),
                    status,
                    attrs: [
                        (ATTR_MANUFACTURER.to_owned(), manufacturer.name.clone()),
                        (ATTR_FACTORY_CERT.to_owned(), factory.fingerprint.clone()),
                    ]
                    .into(),
                    policies: Vec::new(),
                    created_at_ms: now,
                    updated_at_ms: now,
                })?;
                if status == DeviceStatus::Pending {
                    self.refresh_directory().await?;
                    return Ok(JitOutcome::Pending);
                }
            }
            // Only the device record this very factory certificate created: not one an
            // operator registered, nor one another manufacturer's certificate with the same
            // CN is waiting on.
            Some(d)
                if d.attrs.get(ATTR_MANUFACTURER) != Some(&manufacturer.name)
                    || d.attrs.get(ATTR_FACTORY_CERT) != Some(&factory.fingerprint) =>
            {
                return Err(IdentityError::Conflict(format!(
                    "device {id} exists and was not registered by this factory certificate"
                )));
            }
            Some(d) => match d.status {
                DeviceStatus::Pending => return Ok(JitOutcome::Pending),
                DeviceStatus::Active if self.registry.certificates_of(id.as_str())?.is_empty() => {}
                DeviceStatus::Active => {
                    return Err(IdentityError::Conflict(format!(
                        "device {id} is already enrolled; renew with simplereenroll"
                    )));
                }
                other => {
                    return Err(IdentityError::Conflict(format!(
                        "device {id} is {}",
                        other.as_str()
                    )));
                }
            },
        }
        let cert = self.ca.load().issue_device_certificate_for_request(
            id,
            &request,
            self.device_validity(),
            OffsetDateTime::now_utc(),
        )?;
        register_issued(&self.registry, id, &cert, "jit", manufacturer.group.clone())?;
        self.refresh_directory().await?;
        Ok(JitOutcome::Issued(Box::new(cert)))
    }

    /// An operator approves a device held for approval.
    pub(crate) async fn approve(&self, actor: &str, id: &DeviceId) -> Result<(), IdentityError> {
        let device = self.device(id.as_str())?;
        if device.status != DeviceStatus::Pending {
            return Err(IdentityError::Conflict(format!(
                "device {id} is {}, not pending approval",
                device.status.as_str()
            )));
        }
        self.set_status(actor, id, DeviceStatus::Active, "approved")
            .await?;
        Ok(())
    }
}
