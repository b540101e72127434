use std::path::PathBuf;

/// Everything that can go wrong in the CA, grouped by who has to act on it.
///
/// No variant ever carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    // --- The environment: the disk failed us.
    /// Reading or writing a CA file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    // --- Stored CA state: damaged, or files that do not belong together.
    /// A stored file cannot be parsed or does not fit with the other CA files.
    #[error("{}: {reason}", .path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA private key is not the key of the certificate stored beside it.
    #[error("the key at {key} does not match the public key in {}", .certificate.display())]
    KeyMismatch {
        /// Where the key lives ([`KeySource::location`](crate::KeySource::location)).
        key: String,
        /// The certificate it was expected to belong to.
        certificate: PathBuf,
    },

    // --- The operator: the installation is set up wrongly.
    /// A key file or the CA directory can be read or written by other users.
    #[error(
        "{} is accessible by group or others (mode {mode:03o}); run `chmod {required:o} {}`",
        .path.display(),
        .path.display()
    )]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode it must have.
        required: u32,
    },
    /// A CA key file is encrypted and no passphrase was given.
    #[error("{}: the key is encrypted and needs a passphrase", .path.display())]
    PassphraseRequired {
        /// The encrypted key file.
        path: PathBuf,
    },
    /// The passphrase given does not open a CA key file. Never carries the passphrase.
    #[error("{}: wrong passphrase, or the encrypted key is damaged", .path.display())]
    WrongPassphrase {
        /// The encrypted key file.
        path: PathBuf,
    },
    /// Anything else the operator has to fix: an incomplete CA directory, an expired CA, an
    /// unsupported key type.
    #[error("{0}")]
    Misconfigured(String),

    // --- The caller: asked for a certificate or CRL we will not issue.
    /// The caller asked for a certificate or CRL this CA will not issue (bad server name, zero
    /// validity, too many names, malformed or duplicate revocation entries).
    #[error("refused to issue: {0}")]
    InvalidRequest(String),

    // --- The peer: presented a certificate without a usable device identity.
    /// A client certificate does not bind exactly one valid device id.
    #[error("certificate does not carry a valid device identity: {0}")]
    InvalidDeviceCertificate(String),

    // --- The peer: sent an enrollment request we refuse.
    /// An EST body is not strict base64 (RFC 7030 4.2.1: base64 of DER, line breaks allowed).
    #[error("invalid EST body encoding: {0}")]
    InvalidEncoding(String),
    /// A PKCS#10 certificate request is malformed, its self-signature (proof of possession of
    /// the private key) does not verify, or it asks for something that cannot be parsed
    /// safely.
    #[error("refused certificate signing request: {0}")]
    InvalidCertificateRequest(String),
    /// A certificate request carries a public key of a type or size Moat does not certify
    /// (RSA below 2048 bits, DSA, an unsupported curve).
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// Peer-supplied input is larger than its named limit; nothing of it was parsed.
    #[error("{what} of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// What was too large ("EST body", "certificate request").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes (one of this crate's `MAX_*` constants).
        limit: usize,
    },

    // --- The crypto library failed (randomness, key generation, signing, encoding).
    /// Key generation, signing or encoding failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

/// Who has to act on a [`PkiError`]: lets callers pick an exit code, an HTTP status or a log
/// level without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Blame {
    /// The disk or operating system failed.
    Environment,
    /// The stored CA files are damaged or do not belong together.
    StoredState,
    /// The operator's setup (permissions, missing files, expired CA, passphrases).
    Operator,
    /// The caller asked for a certificate that will not be issued.
    Caller,
    /// A peer presented an unusable certificate or an unacceptable certificate request.
    Peer,
    /// The crypto library failed.
    CryptoLibrary,
}

impl PkiError {
    /// Who has to act on this error.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Io { .. } => Blame::Environment,
            Self::Corrupt { .. } | Self::KeyMismatch { .. } => Blame::StoredState,
            Self::InsecurePermissions { .. }
            | Self::PassphraseRequired { .. }
            | Self::WrongPassphrase { .. }
            | Self::Misconfigured(_) => Blame::Operator,
            Self::InvalidRequest(_) => Blame::Caller,
            Self::InvalidDeviceCertificate(_)
            | Self::InvalidEncoding(_)
            | Self::InvalidCertificateRequest(_)
            | Self::UnsupportedKey(_)
            | Self::TooLarge { .. } => Blame::Peer,
            Self::Generation(_) => Blame::CryptoLibrary,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generation(e.to_string())
    }
}
