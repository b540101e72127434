//! Helpers shared by the store's API tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use moat_broker::persist::{StoreOp, StoredMessage};
use moat_store::{SqliteStore, wait_durable};
use moat_types::{ClientId, Timestamp};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "moat-store-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The database file inside.
    pub fn db(&self) -> PathBuf {
        self.0.join("store.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn client(id: &str) -> ClientId {
    ClientId::parse(id).expect("valid client id")
}

/// A distinct message per `tag`.
pub fn message(tag: u8) -> StoredMessage {
    StoredMessage {
        encoded: Bytes::from(vec![0x30, 5, 0, 1, b't', tag, tag]),
        qos: 1,
        retain: false,
        expires_at: Some(Timestamp::from_millis(1_700_000_000_000 + u64::from(tag))),
    }
}

pub fn put_session(id: &str) -> StoreOp {
    StoreOp::PutSession {
        client_id: client(id),
        expiry_interval: 3600,
        protocol_level: 5,
        disconnected_at: None,
    }
}

/// Submits `ops` and waits until they are durable.
pub async fn commit(store: &SqliteStore, ops: Vec<StoreOp>) -> u64 {
    let seq = store.submit(ops);
    wait_durable(&mut store.committed(), seq)
        .await
        .expect("commit is durable");
    seq
}
