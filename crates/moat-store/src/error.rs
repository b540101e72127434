//! Why the store could not be opened or closed, and why a commit will never be durable.

use std::path::PathBuf;

use rusqlite::ErrorCode;

/// Why the store could not be opened, or did not shut down cleanly. Every message names the
/// data file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be created or synced.
    #[error("cannot create the store file {}: {source}", path.display())]
    Io {
        /// The data file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not an SQLite database (or its header is damaged).
    #[error("{} is not a Moat store: it is not an SQLite database", path.display())]
    NotADatabase {
        /// The data file.
        path: PathBuf,
    },
    /// The file is SQLite but holds something else than a Moat store.
    #[error("{} is not a Moat store: {reason}", path.display())]
    ForeignDatabase {
        /// The data file.
        path: PathBuf,
        /// What gave it away.
        reason: &'static str,
    },
    /// SQLite found the file damaged.
    #[error("the store {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The data file.
        path: PathBuf,
        /// SQLite's report.
        source: rusqlite::Error,
    },
    /// Written by a newer Moat; opening it could lose data that build relies on.
    #[error(
        "the store {} has schema version {found}, newer than version {supported} this build knows",
        path.display()
    )]
    TooNew {
        /// The data file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Highest version this build can migrate to.
        supported: u32,
    },
    /// Another connection (normally another hub process) holds the file.
    #[error("the store {} is in use by another process", path.display())]
    Locked {
        /// The data file.
        path: PathBuf,
    },
    /// SQLite did not take a setting the durability contract rests on.
    #[error("SQLite would not configure the store {} for durability: {detail}", path.display())]
    Settings {
        /// The data file.
        path: PathBuf,
        /// Which setting.
        detail: String,
    },
    /// Any other SQLite failure.
    #[error("SQLite error on the store {}: {source}", path.display())]
    Sqlite {
        /// The data file.
        path: PathBuf,
        /// SQLite's report.
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the writer thread for the store {}: {source}", path.display())]
    Spawn {
        /// The data file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The writer thread panicked; what it had not committed is lost.
    #[error("the writer thread of the store {} panicked", path.display())]
    WriterPanicked {
        /// The data file.
        path: PathBuf,
    },
    /// A transaction failed while the store was open; nothing from `first_failed` on was
    /// written.
    #[error(
        "the store {} stopped writing at commit {first_failed} after a failed transaction",
        path.display()
    )]
    CommitFailed {
        /// The data file.
        path: PathBuf,
        /// First commit sequence number that is not durable.
        first_failed: u64,
    },
}

impl StoreError {
    /// Classifies an SQLite error so that the common operator mistakes read clearly.
    pub(crate) fn from_sqlite(path: &std::path::Path, source: rusqlite::Error) -> Self {
        let path = path.to_owned();
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt { path, source },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            _ => StoreError::Sqlite { path, source },
        }
    }
}

/// Why a commit sequence number will never be durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// A transaction failed; the store writes nothing from `first_failed` on.
    #[error("commit {seq} failed: the store stopped writing at commit {first_failed}")]
    Failed {
        /// The sequence number waited for.
        seq: u64,
        /// First sequence number that failed.
        first_failed: u64,
    },
    /// The store shut down (or its writer died) before `seq` was committed.
    #[error("the store closed before commit {seq} was durable")]
    Closed {
        /// The sequence number waited for.
        seq: u64,
    },
}
