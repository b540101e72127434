//! Signed updates, TUF and Uptane style.
//!
//! Owns: the image repository's metadata (TUF roles root, targets with delegations per hardware
//! class, snapshot and timestamp), the director's per-device metadata, online re-signing,
//! the operator's signing ceremony, campaigns as a pure state machine (`campaign`), the strict
//! parser of device update reports (`report`), and the verifier a device
//! runs before it downloads. The contract with the hub and the agent is `README.md` in this
//! crate.
//!
//! Does not own: storage, HTTP, MQTT or the install itself (moat-hub, moat and moat-agent).
//! The hub-side types ([`image::ImageRepository`], [`director::Director`]) take bytes and `now`
//! and return the metadata files to store; only [`verify::verify`] does I/O (through the
//! caller's [`tough::Transport`] and its datastore directory).
//!
//! Start reading at [`verify`] (what a device trusts), then [`image`], [`director`] and
//! [`ceremony`].

#![forbid(unsafe_code)]

pub mod campaign;
pub mod ceremony;
pub mod director;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod image;
pub mod keys;
pub mod meta;
pub mod report;
pub mod verify;
mod version;

pub use keys::{OnlineKeys, OnlinePublicKeys, SigningKey};
pub use verify::{
    ApprovedUpdate, DeviceFacts, TargetCheck, TargetError, VerifiedImage, VerifyConfig,
    VerifyError, verify,
};
pub use version::{Version, VersionError};

/// Re-exported so callers implement [`tough::Transport`] against the same version.
pub use tough;
/// The URL type of [`VerifyConfig`] and [`tough::Transport::fetch`].
pub use url::Url;

/// Errors of the hub-side and operator-side operations (not the device's: see [`VerifyError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key could not be created, parsed or used.
    #[error("key: {0}")]
    Key(String),
    /// Input metadata or arguments are malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Metadata is not signed by enough of the keys its role requires.
    #[error("signature: {0}")]
    Signature(String),
    /// A version does not increase where it must (metadata or image version).
    #[error("version: {0}")]
    Version(String),
    /// Metadata already expired or expiring too soon.
    #[error("expired: {0}")]
    Expired(String),
    /// The repository is not initialised yet (`moat ota init`).
    #[error("not initialised: {0}")]
    NotInitialised(String),
    /// The request conflicts with the repository's state (unknown target, role not delegated).
    #[error("conflict: {0}")]
    Conflict(String),
}
