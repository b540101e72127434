//! Certificate revocation lists (RFC 5280 5) signed by an issuing CA.
//!
//! This crate only encodes and signs a list; which serials are revoked, the CRL number
//! sequence and the publication schedule belong to the caller (`moat-hub` and its store).
//! After an issuing-CA rotation each trusted issuing CA signs its own CRL: a CRL speaks only
//! for certificates of its issuer (RFC 5280 6.3.3), so the previous CA's revocations must be
//! signed by the previous CA's key.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;

use crate::authority::to_utc_seconds;
use crate::{CertificateAuthority, IssuerSlot, PkiError, serial_hex};

/// Most entries [`CertificateAuthority::issue_crl`] puts in one CRL: 65,536 (about 2.5 MiB).
/// A larger list means the installation needs shorter certificate lifetimes, not a bigger
/// CRL that every verifier must download and search.
pub const MAX_CRL_ENTRIES: usize = 65_536;
/// Longest serial number accepted in a [`RevokedSerial`], in DER content octets: 20
/// (RFC 5280 4.1.2.2).
pub const MAX_SERIAL_LEN: usize = 20;

/// Why a certificate was revoked (RFC 5280 5.3.1 `CRLReason`). `removeFromCRL` is absent: it
/// belongs to delta CRLs, which Moat does not issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given. RFC 5280 says to omit the reason code rather than send this, so the
    /// CRL entry carries no reason extension.
    Unspecified,
    /// The certificate's private key is known or suspected to be compromised.
    KeyCompromise,
    /// The CA's key is known or suspected to be compromised.
    CaCompromise,
    /// The subject's name or other information changed.
    AffiliationChanged,
    /// The certificate was replaced by a new one.
    Superseded,
    /// The certificate is no longer needed (a device was decommissioned).
    CessationOfOperation,
    /// Temporarily suspended; may reappear as not revoked in a later CRL.
    CertificateHold,
    /// A privilege the certificate asserted was withdrawn.
    PrivilegeWithdrawn,
    /// The attribute authority's key is known or suspected to be compromised.
    AaCompromise,
}

impl RevocationReason {
    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::CertificateHold => R::CertificateHold,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Self::AaCompromise => R::AaCompromise,
        }
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// The certificate's serial number: the content octets of its DER INTEGER, as in
    /// [`IssuedCertificate::serial`](crate::IssuedCertificate::serial) and
    /// [`CertificateFacts::serial`](crate::CertificateFacts::serial). Positive, minimally
    /// encoded, at most [`MAX_SERIAL_LEN`] bytes.
    pub serial: Vec<u8>,
    /// When the revocation was recorded (truncated to whole seconds); not after the CRL's
    /// `this_update`.
    pub revoked_at: OffsetDateTime,
    /// Why, if known.
    pub reason: Option<RevocationReason>,
}

impl CertificateAuthority {
    /// A DER CRL (v2, RFC 5280 5.1) listing `revoked`, signed by the current issuing CA with
    /// its Authority Key Identifier and `crl_number` (5.2.3; the caller keeps it increasing).
    /// The same as [`issue_crl_for`](Self::issue_crl_for) with [`IssuerSlot::Current`].
    ///
    /// Times are converted to UTC and truncated to whole seconds. Refused
    /// ([`PkiError::InvalidRequest`]): more than [`MAX_CRL_ENTRIES`] entries, a serial that
    /// is empty, longer than [`MAX_SERIAL_LEN`], not positive or not minimally encoded, the
    /// same serial twice, `next_update` not after `this_update`, and a revocation time after
    /// `this_update`.
    pub fn issue_crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<CertificateRevocationListDer<'static>, PkiError> {
        self.issue_crl_for(
            IssuerSlot::Current,
            revoked,
            crl_number,
            this_update,
            next_update,
        )
    }

    /// Like [`issue_crl`](Self::issue_crl), signed by the issuing CA in `slot`: after a
    /// rotation, [`IssuerSlot::Previous`] publishes the revocations of certificates the
    /// previous issuing CA issued ([`issuer_of`](Self::issuer_of) tells which CA issued a
    /// certificate). Refused ([`PkiError::InvalidRequest`]) if no issuing CA is in `slot`.
    pub fn issue_crl_for(
        &self,
        slot: IssuerSlot,
        revoked: &[RevokedSerial],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<CertificateRevocationListDer<'static>, PkiError> {
        let issuing = self.issuing_ca(slot).ok_or_else(|| {
            PkiError::InvalidRequest("there is no previous issuing CA (or it has expired)".into())
        })?;
        if revoked.len() > MAX_CRL_ENTRIES {
            return Err(PkiError::InvalidRequest(format!(
                "{} revoked serials, more than the limit of {MAX_CRL_ENTRIES} per CRL",
                revoked.len()
            )));
        }
        let this_update = to_utc_seconds(this_update);
        let next_update = to_utc_seconds(next_update);
        if next_update <= this_update {
            return Err(PkiError::InvalidRequest(format!(
                "CRL nextUpdate {next_update} is not after thisUpdate {this_update}"
            )));
        }
        let mut sorted: Vec<&[u8]> = Vec::with_capacity(revoked.len());
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for entry in revoked {
            check_serial(&entry.serial)?;
            let revoked_at = to_utc_seconds(entry.revoked_at);
            if revoked_at > this_update {
                return Err(PkiError::InvalidRequest(format!(
                    "serial {} revoked at {revoked_at}, after the CRL's thisUpdate {this_update}",
                    serial_hex(&entry.serial)
                )));
            }
            sorted.push(&entry.serial);
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&entry.serial),
                revocation_time: revoked_at,
                reason_code: entry.reason.map(RevocationReason::rcgen),
                invalidity_date: None,
            });
        }
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PkiError::InvalidRequest(format!(
                "serial {} listed twice",
                serial_hex(pair[0])
            )));
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            // The Authority Key Identifier (RFC 5280 5.2.1) must equal the signing CA's
            // Subject Key Identifier; rcgen would otherwise derive it afresh, which matches
            // only if the CA was created with the same method.
            key_identifier_method: issuing
                .cert
                .key_id
                .clone()
                .map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified),
        };
        let crl = params.signed_by(&issuing.issuer)?;
        Ok(crl.der().clone())
    }
}

/// A serial as the content octets of a positive, minimally encoded DER INTEGER: what an
/// X.509 certificate can carry, and what rcgen writes back unchanged.
fn check_serial(serial: &[u8]) -> Result<(), PkiError> {
    let bad = |why: &str| {
        Err(PkiError::InvalidRequest(format!(
            "serial {:.80} {why}",
            serial_hex(serial)
        )))
    };
    match serial {
        [] => bad("is empty"),
        s if s.len() > MAX_SERIAL_LEN => bad("is longer than 20 bytes"),
        [first, ..] if first & 0x80 != 0 => bad("is negative"),
        [0] => bad("is zero"),
        [0, second, ..] if second & 0x80 == 0 => bad("has a redundant leading zero byte"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_must_be_positive_minimal_integers() {
        for good in [&[1u8][..], &[0x7f], &[0x00, 0x80], &[0x40; 20]] {
            assert!(check_serial(good).is_ok(), "{good:?}");
        }
        for bad in [
            &[][..],
            &[0x00],
            &[0x80],
            &[0xff, 0x01],
            &[0x00, 0x01],
            &[0x01; 21],
        ] {
            assert!(
                matches!(check_serial(bad), Err(PkiError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }
}
