//! Enrollment: tokens, first enrollment from a CSR (EST simpleenroll), renewal from a CSR
//! over mutual TLS (EST simplereenroll).
//!
//! The device makes its key; Moat builds the certificate from its own device profile and
//! takes only the public key from the request (a CSR asking for `CA:TRUE`, other names or
//! usages gets none of them; what it asked for is recorded in the audit trail).

use std::net::IpAddr;
use std::time::Duration;

use moat_audit::{Entry, Outcome};
use moat_pki::{CertificateRequest, IssuedCertificate};
use moat_store::registry::{DeviceStatus, EnrollmentTokenRecord};
use moat_types::DeviceId;
use time::OffsetDateTime;

use crate::access::{self, Access};
use crate::identity::{Identity, IdentityError, issued_entry, now_ms, register_issued};

/// Most uses one enrollment token may have.
pub const MAX_TOKEN_USES: u32 = 100_000;
/// Longest an enrollment token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long an enrollment token lives unless told otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

fn requested_summary(request: &CertificateRequest) -> String {
    let r = request.requested_extensions();
    let mut parts = Vec::new();
    if r.ca {
        parts.push("CA:TRUE".to_owned());
    }
    parts.extend(r.subject_alt_names.iter().cloned());
    parts.extend(r.key_usages.iter().map(|s| (*s).to_owned()));
    parts.extend(r.extended_key_usages.iter().cloned());
    parts.extend(r.other_extensions.iter().cloned());
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

impl Identity {
    /// Creates an enrollment token; returns it (shown once) and its record.
    pub(crate) async fn create_enrollment_token(
        &self,
        access: &Access,
        actor: &str,
        group: Option<String>,
        uses: u32,
        ttl: Duration,
    ) -> Result<(String, EnrollmentTokenRecord), IdentityError> {
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(IdentityError::Invalid(format!(
                "uses must be between 1 and {MAX_TOKEN_USES}"
            )));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(IdentityError::Invalid(format!(
                "ttl must be between 1 s and {} s",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        if let Some(g) = &group
            && !self.groups().iter().any(|x| &x.name == g)
        {
            return Err(IdentityError::NotFound(format!("group {g}")));
        }
        let (id, token, mac) = access::new_token(&access.token_key, "et")?;
        let now = now_ms();
        let record = EnrollmentTokenRecord {
            id: id.clone(),
            hash: mac,
            group,
            uses_left: uses,
            max_uses: uses,
            expires_at_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            revoked: false,
            created_at_ms: now,
            created_by: actor.to_owned(),
        };
        self.registry.put_enrollment_token(&record)?;
        self.audit_now(
            Entry::new(
                now,
                actor,
                "token.create",
                format!("token:{id}"),
                Outcome::Success,
            )
            .with("group", record.group.as_deref().unwrap_or("-"))
            .with("uses", uses)
            .with("expires_at_ms", record.expires_at_ms),
        )
        .await?;
        Ok((token, record))
    }

    pub(crate) async fn revoke_enrollment_token(
        &self,
        actor: &str,
        id: &str,
    ) -> Result<(), IdentityError> {
        if !self.registry.revoke_enrollment_token(id)? {
            return Err(IdentityError::NotFound(format!("enrollment token {id}")));
        }
        self.audit_now(Entry::new(
            now_ms(),
            actor,
            "token.revoke",
            format!("token:{id}"),
            Outcome::Success,
        ))
        .await
    }

    /// First enrollment: `token` must be a live enrollment token; the device id is the CSR's
    /// common name. Every refusal is audited with its reason.
    pub(crate) async fn enroll(
        &self,
        access: &Access,
        token: &str,
        csr_der: &[u8],
        peer: IpAddr,
    ) -> Result<IssuedCertificate, IdentityError> {
        let token_id = access::parse_token(token).map(|p| p.id.to_owned());
        let result = self.enroll_inner(access, token, csr_der).await;
        let actor = token_id
            .as_ref()
            .map_or_else(|| format!("peer:{peer}"), |id| format!("token:{id}"));
        match &result {
            Ok((id, cert, request)) => {
                self.audit_now(
                    issued_entry(&actor, id, cert, "est")
                        .with("peer", peer)
                        .with("requested_and_ignored", requested_summary(request)),
                )
                .await?;
            }
            Err(e) => {
                self.audit.record_unauthenticated(
                    Some(peer),
                    Entry::new(
                        now_ms(),
                        &actor,
                        "enroll.refused",
                        "enrollment",
                        Outcome::Denied,
                    )
                    .with("peer", peer)
                    .with("reason", e),
                );
            }
        }
        result.map(|(_, cert, _)| cert)
    }

    async fn enroll_inner(
        &self,
        access: &Access,
        token: &str,
        csr_der: &[u8],
    ) -> Result<(DeviceId, IssuedCertificate, CertificateRequest), IdentityError> {
        let unauthorized =
            || IdentityError::Unauthorized("invalid or expired enrollment token".into());
        let parsed = access::parse_token(token)
            .filter(|p| p.kind == "et")
            .ok_or_else(unauthorized)?;
        let record = self
            .registry
            .enrollment_token(parsed.id)?
            .ok_or_else(unauthorized)?;
        if !access::secret_matches(&access.token_key, parsed.secret, &record.hash)
            || record.revoked
            || record.uses_left == 0
            || record.expires_at_ms <= now_ms()
        {
            return Err(unauthorized());
        }
        let request = moat_pki::parse_certificate_request(csr_der)
            .map_err(|e| IdentityError::Invalid(format!("certificate request: {e}")))?;
        let cn = request.subject_common_name().ok_or_else(|| {
            IdentityError::Invalid(
                "the certificate request has no subject CN (the device id)".into(),
            )
        })?;
        let id = DeviceId::parse(cn).map_err(|e| {
            IdentityError::Invalid(format!("device id {cn:?} in the request CN: {e}"))
        })?;
        // One enrollment at a time: two requests for the same id cannot both pass the check.
        let _guard = self.changes.lock().await;
        if let Some(existing) = self.registry.device(id.as_str())? {
            return Err(IdentityError::Conflict(match existing.status {
                DeviceStatus::Revoked => format!("device {id} is revoked"),
                _ => format!("device {id} is already enrolled; renew with simplereenroll"),
            }));
        }
        // Issued first, then the token's use is taken: a failed issuance does not spend it,
        // and a certificate whose use could not be taken is never registered (without a
        // device record it opens no connection).
        let cert = self.ca.load().issue_device_certificate_for_request(
            &id,
            &request,
            self.device_validity(),
            OffsetDateTime::now_utc(),
        )?;
        if !self
            .registry
            .take_enrollment_token_use(&record.id, now_ms())?
        {
            return Err(unauthorized());
        }
        register_issued(&self.registry, &id, &cert, "est", record.group.clone())?;
        self.refresh_directory().await?;
        Ok((id, cert, request))
    }

    /// Renewal by a device over mutual TLS with its current certificate: same identity, new
    /// key and certificate; the old certificate stays valid until it expires.
    pub(crate) async fn reenroll(
        &self,
        device: &DeviceId,
        csr_der: &[u8],
        peer: IpAddr,
    ) -> Result<IssuedCertificate, IdentityError> {
        let actor = format!("device:{device}");
        let result = async {
            let record = self.device(device.as_str())?;
            if record.status != DeviceStatus::Active {
                return Err(IdentityError::Unauthorized(format!(
                    "device {device} is {}",
                    record.status.as_str()
                )));
            }
            let request = moat_pki::parse_certificate_request(csr_der)
                .map_err(|e| IdentityError::Invalid(format!("certificate request: {e}")))?;
            if let Some(cn) = request.subject_common_name()
                && cn != device.as_str()
            {
                return Err(IdentityError::Invalid(format!(
                    "the request's CN {cn:?} is not the authenticated device {device}"
                )));
            }
            let cert = self.ca.load().issue_device_certificate_for_request(
                device,
                &request,
                self.device_validity(),
                OffsetDateTime::now_utc(),
            )?;
            register_issued(&self.registry, device, &cert, "reenroll", None)?;
            Ok((cert, request))
        }
        .await;
        match &result {
            Ok((cert, request)) => {
                self.audit_now(
                    issued_entry(&actor, device, cert, "reenroll")
                        .with("peer", peer)
                        .with("requested_and_ignored", requested_summary(request)),
                )
                .await?;
            }
            Err(e) => self.audit.record_limited(
                crate::identity::AuditKey::Device(device.to_string()),
                crate::identity::MAX_DENIAL_AUDIT_PER_MINUTE,
                Entry::new(now_ms(), &actor, "enroll.refused", &actor, Outcome::Denied)
                    .with("peer", peer)
                    .with("reason", e),
            ),
        }
        result.map(|(c, _)| c)
    }
}
