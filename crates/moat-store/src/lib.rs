//! Durable storage for the broker: persistent sessions, their subscriptions, outbound queues
//! and inbound QoS 2 state, and retained messages, in one SQLite file with group commit.
//!
//! **Owns:** the data file (created `0600`, WAL, `synchronous=FULL`, exclusive lock: one hub
//! per file), its schema and migrations (`schema.rs`, [`SCHEMA_VERSION`]), the writer thread that
//! applies [`StoreOp`]s in submission order, and the commit progress the connection driver
//! waits on before it acknowledges ([`CommitProgress`], [`wait_durable`]).
//!
//! **Does not own:** what the operations mean. The broker core decides what to remember and
//! when (`moat_broker::persist`); this crate only makes it durable and gives it back at
//! start-up as a [`Snapshot`]. It decodes no MQTT packet and reads no clock.
//!
//! **Trust boundary:** the data file is trusted but verified. Only the hub writes it, but it
//! may be damaged or edited: a file that is not SQLite, is corrupt or comes from a newer Moat
//! is refused with a [`StoreError`] naming the path; a malformed row (bad client id, invalid
//! UTF-8, out-of-range number, unknown state) is skipped with a warning, never a panic.
//! Payloads are never logged.
//!
//! **Durability contract:** [`SqliteStore::submit`] returns a commit sequence number at once
//! (1, 2, 3, … in submission order; 0 means "nothing to wait for"). The writer thread applies
//! everything queued in one transaction (group commit), and once `COMMIT` has returned (the WAL
//! is fsynced) publishes the new [`CommitProgress`]. What is on disk is always a prefix of the
//! submitted batches: if a transaction fails the store stops writing (fail-stop), and every
//! waiter from the first failed sequence number on is told so instead of hanging.
//!
//! Start reading at [`SqliteStore::open`], then `writer.rs`.

#![forbid(unsafe_code)]

mod error;
mod load;
mod progress;
pub mod registry;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use moat_broker::persist::{Durability, Snapshot, StoreOp};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

pub use error::{CommitError, StoreError};
pub use progress::{CommitProgress, CommitStatus, wait_durable};
pub use schema::SCHEMA_VERSION;
pub use writer::MAX_OPS_PER_TRANSACTION;

use writer::Batch;

/// Prepared statements kept per connection: every distinct statement the writer runs, with
/// room to spare.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// SQLite storage behind the broker's [`Durability`] trait.
///
/// Submissions go over an unbounded channel to one writer thread. Unbounded is acceptable
/// because the broker bounds the work in flight (inflight windows and queue limits per
/// session, and it waits for durability before acknowledging), so the channel cannot grow
/// faster than those limits allow; a bounded channel would make `submit` block, which the
/// trait forbids.
///
/// Operations for a session should follow its `PutSession` (in the same or an earlier batch).
/// They never fail otherwise, but rows of a session that is not stored are purged at the next
/// open.
///
/// Dropping the store flushes and joins the writer like [`SqliteStore::close`], blocking the
/// current thread until the last transaction is durable.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    submitter: Mutex<Submitter>,
    progress: watch::Receiver<CommitProgress>,
    writer: Option<JoinHandle<CommitProgress>>,
}

/// Sequence assignment and sending happen under one lock so that the writer receives
/// batches in sequence order, which the committed watermark relies on.
#[derive(Debug)]
struct Submitter {
    next_seq: u64,
    /// `None` once the store is shutting down.
    sender: Option<mpsc::Sender<Batch>>,
    /// Whether the loss of the writer was logged (once is enough).
    reported_writer_gone: bool,
}

impl SqliteStore {
    /// Opens the store at `path`, creating it (mode `0600`) if absent, migrating its schema to
    /// the current version, and loading everything it holds.
    ///
    /// Fails if the file cannot be created or opened, is not a Moat store (or not SQLite at
    /// all), is corrupt, is from a newer Moat, or is held by another process.
    pub fn open(path: &Path) -> Result<(SqliteStore, Snapshot), StoreError> {
        create_private_file(path)?;
        // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI with options.
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::from_sqlite(path, e))?;
        schema::configure(&conn, path)?;
        schema::migrate(&mut conn, path)?;
        let snapshot = load::snapshot(&conn).map_err(|e| StoreError::from_sqlite(path, e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);

        let (sender, receiver) = mpsc::channel();
        let (progress_tx, progress_rx) = watch::channel(CommitProgress::default());
        let writer_path = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("moat-store-writer".into())
            .spawn(move || writer::run(conn, receiver, progress_tx, &writer_path))
            .map_err(|source| StoreError::Spawn {
                path: path.to_owned(),
                source,
            })?;
        let store = SqliteStore {
            path: path.to_owned(),
            submitter: Mutex::new(Submitter {
                next_seq: 1,
                sender: Some(sender),
                reported_writer_gone: false,
            }),
            progress: progress_rx,
            writer: Some(writer),
        };
        Ok((store, snapshot))
    }

    /// Queues `ops` to be applied atomically, after everything submitted before, and returns
    /// the commit sequence number that covers them. Never blocks on disk.
    ///
    /// An empty `ops` still gets a sequence number: waiting for it waits for everything
    /// submitted before (a barrier).
    pub fn submit(&self, ops: Vec<StoreOp>) -> u64 {
        // The critical section cannot panic, so a poisoned lock still holds a consistent
        // counter and sender.
        let mut submitter = self
            .submitter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seq = submitter.next_seq;
        submitter.next_seq += 1;
        let sent = submitter
            .sender
            .as_ref()
            .is_some_and(|sender| sender.send(Batch { seq, ops }).is_ok());
        if !sent && !submitter.reported_writer_gone {
            // The writer is gone (it panicked); waiters see the progress channel closed.
            submitter.reported_writer_gone = true;
            tracing::error!(path = %self.path.display(), seq, "store writer is gone; submissions are dropped");
        }
        seq
    }

    /// Commit progress: the highest durable sequence number and the first failed one, if
    /// any. Wait on it with [`wait_durable`].
    pub fn committed(&self) -> watch::Receiver<CommitProgress> {
        self.progress.clone()
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes every submitted batch, joins the writer thread and closes the file. Returns the
    /// last committed sequence number.
    ///
    /// Fails if a transaction failed while the store was open (nothing after it was written)
    /// or if the writer thread panicked.
    pub fn close(mut self) -> Result<u64, StoreError> {
        let progress = self.shut_down()?;
        match progress.failed {
            Some(first_failed) => Err(StoreError::CommitFailed {
                path: self.path.clone(),
                first_failed,
            }),
            None => Ok(progress.committed),
        }
    }

    fn shut_down(&mut self) -> Result<CommitProgress, StoreError> {
        // Dropping the only sender lets the writer drain the channel and stop.
        drop(
            self.submitter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sender
                .take(),
        );
        match self.writer.take() {
            Some(writer) => writer.join().map_err(|_| StoreError::WriterPanicked {
                path: self.path.clone(),
            }),
            None => Ok(*self.progress.borrow()),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if self.writer.is_none() {
            return; // closed already
        }
        match self.shut_down() {
            Ok(CommitProgress {
                failed: Some(first_failed),
                ..
            }) => {
                tracing::error!(path = %self.path.display(), first_failed, "store closed after a failed commit");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "store did not shut down cleanly"),
        }
    }
}

impl Durability for SqliteStore {
    fn submit(&self, ops: Vec<StoreOp>) -> u64 {
        SqliteStore::submit(self, ops)
    }
}

/// Creates the data file readable by its owner only, so that SQLite (which gives the WAL the
/// database's mode) never creates a world-readable file. An existing file is left as it is.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let io_error = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(file) => {
            file.sync_all().map_err(io_error)?;
            sync_parent_dir(path).map_err(io_error)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(e) => Err(io_error(e)),
    }
}

/// Makes the new directory entry durable, so that a power cut right after the first start
/// cannot lose the file while its WAL survives.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.is_file()
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "store file is accessible to other users; it holds queued messages"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
