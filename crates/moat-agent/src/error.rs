//! The agent's one error type, grouped by who is to blame (see [`Blame`]).

use std::path::PathBuf;
use std::time::Duration;

/// Who has to act to fix an [`AgentError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blame {
    /// The device's configuration or files: a wrong flag, a missing or corrupt file, an
    /// identity already present.
    Misconfigured,
    /// The hub answered and said no (bad token, revoked device, conflict).
    Refused,
    /// Something did not verify: the hub's TLS certificate against the CA file, or the issued
    /// certificate against the key and the CA.
    Untrusted,
    /// The hub could not be reached in time. Retrying later may help.
    Unreachable,
    /// The hub answered with something malformed or over a limit.
    HubMisbehaved,
    /// The device itself failed (file system, key generation).
    Local,
}

/// Why an agent operation failed. Messages never contain the enrollment token or key
/// material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A bad argument, URL, CA file or state file.
    #[error("{0}")]
    Misconfigured(String),
    /// Enrollment would overwrite an existing identity.
    #[error(
        "{} already holds a device identity; pass --force to replace it",
        dir.display()
    )]
    IdentityExists {
        /// The identity directory.
        dir: PathBuf,
    },
    /// The directory holds no complete identity.
    #[error("no device identity in {}: {reason}", dir.display())]
    NoIdentity {
        /// The identity directory.
        dir: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The hub answered an EST request with an HTTP error.
    #[error("the hub refused {operation}: HTTP {status}: {message}")]
    Refused {
        /// The EST operation (`simpleenroll`, ...).
        operation: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The hub's explanation (one line, printable characters, bounded).
        message: String,
    },
    /// The hub's TLS certificate did not verify against the CA file.
    #[error("the hub's TLS certificate does not verify against the CA file: {0}")]
    HubNotTrusted(String),
    /// The issued certificate does not match the key, the device id or the CA.
    #[error("the issued certificate does not verify: {0}")]
    NotVerified(String),
    /// The hub could not be reached or the connection failed.
    #[error("cannot reach the hub at {url}: {reason}")]
    Unreachable {
        /// The hub URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// An EST exchange did not finish in time.
    #[error("{operation} did not finish within {after:?}")]
    Timeout {
        /// The EST operation.
        operation: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// The hub's response was malformed.
    #[error("the hub's response to {operation} is malformed: {reason}")]
    Malformed {
        /// The EST operation.
        operation: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Something read from the network or a file exceeded its named limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    LimitExceeded {
        /// What was too large.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The certificate has expired: renewal over mutual TLS is impossible.
    #[error(
        "the certificate of {device} expired at {not_after}; renewal needs a valid \
         certificate: enroll again with a new token (--force)"
    )]
    Expired {
        /// The device.
        device: moat_types::DeviceId,
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// Key or request generation failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
}

impl AgentError {
    /// Who has to act.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Misconfigured(_)
            | Self::IdentityExists { .. }
            | Self::NoIdentity { .. }
            | Self::Expired { .. } => Blame::Misconfigured,
            Self::Refused { .. } => Blame::Refused,
            Self::HubNotTrusted(_) | Self::NotVerified(_) => Blame::Untrusted,
            Self::Unreachable { .. } | Self::Timeout { .. } => Blame::Unreachable,
            Self::Malformed { .. } | Self::LimitExceeded { .. } => Blame::HubMisbehaved,
            Self::Io { .. } | Self::Crypto(_) => Blame::Local,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<crate::ScheduleError> for AgentError {
    fn from(e: crate::ScheduleError) -> Self {
        Self::Misconfigured(e.to_string())
    }
}
