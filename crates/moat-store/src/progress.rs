//! What the writer publishes after each transaction, and how a waiter reads it.

use tokio::sync::watch;

use crate::CommitError;

/// Commit progress as published by the writer thread after every transaction.
///
/// For a commit sequence number `S`: durable if `S <= committed`; failed if `failed` is
/// `Some(F)` and `S >= F`; otherwise not yet (see [`CommitProgress::status`]).
///
/// The store is fail-stop: after the first failed transaction it writes nothing more, so the
/// file always holds exactly the batches up to `committed`, in order. (A later batch may
/// depend on a failed one, e.g. a state change of a message whose insertion was lost;
/// skipping ahead would store a state the broker never had.) The hub is expected to report
/// the failure and restart; on restart the snapshot is the committed prefix. A failed batch
/// was never acknowledged as durable, but it may or may not be on disk after a restart (a
/// failed fsync does not say what reached the disk); the broker's acknowledgements stay
/// correct either way because it only acknowledges durable batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitProgress {
    /// Every sequence number up to and including this one is durable. Never decreases.
    pub committed: u64,
    /// First sequence number that could not be committed. Once set it never changes.
    pub failed: Option<u64>,
    /// Transactions committed since the store was opened (one per group commit).
    pub transactions: u64,
}

/// Where one commit sequence number stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStatus {
    /// Committed and synced: it survives a crash or power loss.
    Durable,
    /// Will never be committed.
    Failed,
    /// Not yet committed.
    Pending,
}

impl CommitProgress {
    /// Where `seq` stands. Sequence number 0 is always durable (nothing to wait for).
    pub fn status(&self, seq: u64) -> CommitStatus {
        if seq <= self.committed {
            CommitStatus::Durable
        } else if self.failed.is_some_and(|first| seq >= first) {
            CommitStatus::Failed
        } else {
            CommitStatus::Pending
        }
    }
}

/// Waits until `seq` is durable. Fails if it never will be: its transaction (or an earlier
/// one) failed, or the store closed first.
pub async fn wait_durable(
    progress: &mut watch::Receiver<CommitProgress>,
    seq: u64,
) -> Result<(), CommitError> {
    let reached = progress
        .wait_for(|p| p.status(seq) != CommitStatus::Pending)
        .await
        .map(|p| *p);
    match reached {
        Ok(p) => match (p.status(seq), p.failed) {
            (CommitStatus::Failed, Some(first_failed)) => {
                Err(CommitError::Failed { seq, first_failed })
            }
            _ => Ok(()),
        },
        Err(_) => Err(CommitError::Closed { seq }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tells_durable_failed_and_pending_apart() {
        let p = CommitProgress {
            committed: 5,
            failed: Some(6),
            transactions: 2,
        };
        assert_eq!(p.status(0), CommitStatus::Durable);
        assert_eq!(p.status(5), CommitStatus::Durable);
        assert_eq!(p.status(6), CommitStatus::Failed);
        assert_eq!(p.status(100), CommitStatus::Failed);
        let ok = CommitProgress {
            committed: 4,
            ..CommitProgress::default()
        };
        assert_eq!(ok.status(5), CommitStatus::Pending);
    }
}
