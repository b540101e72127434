//! `moat-agent`: the device side of Moat. Enrolls a device with an enrollment token (EST
//! `simpleenroll`, RFC 7030), keeps its certificate fresh (EST `simplereenroll` over mutual
//! TLS with a new key each time), installs signed updates ([`update`]) and reports them.
//!
//! - **Owns:** the device's key (generated on the device, never sent), its certificate chain
//!   and trusted CA in one directory ([`IdentityFiles`]), the renewal schedule, the update
//!   cycle (verify, download, install, confirm or roll back) and its state file, the update
//!   reports over MQTT ([`mqtt`]).
//! - **Does not own:** the device's own MQTT client (it reads the files), certificate policy
//!   (the hub builds every field; the agent only checks what it got), what an update is
//!   (`moat_ota::verify` decides; the agent supplies the transport and the device's facts),
//!   how an image is written (the configured install command).
//! - **Trust boundary:** the hub's responses. The hub is authenticated by the CA file given
//!   to `enroll`; every response is size-bounded and parsed strictly ([`pkcs7`]), and an
//!   issued certificate replaces nothing until it has verified: it must carry the new key,
//!   name this device and chain to the CA ([`AgentError::NotVerified`] otherwise). Update
//!   metadata is trusted only through the pinned image and director roots; image bytes only
//!   after their signed length and SHA-256 matched (`moat_ota::TargetCheck`).
//! - **Depends on** nothing of Moat above the protocol layer except the update verifier:
//!   `moat-types`, `moat-mqtt` (codec), `moat-ota` (verifier). TLS is rustls with aws-lc-rs,
//!   keys and requests come from rcgen.
//! - **Start reading at** [`enroll`], [`renew`] and [`update_once`].
//!
//! Pure parts (no clock, no I/O): [`pkcs7`], [`RenewalSchedule`], [`renewal_due`]. Secrets
//! (the token, the private key) are never logged and have no revealing `Debug`.

#![forbid(unsafe_code)]

mod base64;
mod certificate;
mod error;
mod est;
pub mod files;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod https;
mod lifecycle;
pub mod mqtt;
pub mod pkcs7;
mod run;
mod schedule;
pub mod update;

use std::sync::Arc;

pub use certificate::{
    DEVICE_URI_PREFIX, MAX_CERTIFICATE_SIZE, MAX_CHAIN_LEN, MAX_PEM_CERTIFICATES, serial_hex,
};
pub use error::{AgentError, Blame};
pub use est::{
    CONNECT_TIMEOUT, EST_TIMEOUT, EnrollmentToken, HubUrl, MAX_ERROR_MESSAGE_LEN,
    MAX_EST_RESPONSE_SIZE, MAX_TOKEN_LEN, MAX_URL_LEN, UrlError,
};
pub use files::{IdentityFiles, MAX_PEM_FILE_SIZE, MAX_STATE_FILE_SIZE};
pub use https::{HubTransport, MAX_METADATA_RESPONSE_SIZE, READ_IDLE_TIMEOUT, RESPONSE_TIMEOUT};
pub use lifecycle::{
    EnrollOptions, ExistingIdentity, Identity, Overrides, RenewMode, RenewOutcome, Status, enroll,
    renew, renew_with, renewal_due, renewal_schedule, status,
};
pub use pkcs7::{MAX_PKCS7_CERTIFICATES, MAX_PKCS7_SIZE};
pub use run::{MAX_RENEWAL_JITTER, MAX_RETRY_DELAY, MAX_SLEEP, MIN_RETRY_DELAY, retry_delay, run};
pub use schedule::{RenewalSchedule, RenewalThreshold, ScheduleError};
pub use update::{Commands, Reports, UpdateOptions, UpdateOutcome, update_once};

/// The one crypto provider: aws-lc-rs (as everywhere in Moat; no ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `t` in UTC as RFC 3339 to the second, e.g. `2026-05-01T12:00:00Z`.
pub fn format_utc(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
