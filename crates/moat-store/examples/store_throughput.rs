//! Write throughput of the SQLite store: PutOutbound then DeleteOutbound of the same message,
//! each operation submitted as its own batch, from 4 threads.
//!
//! ```text
//! cargo run --release -p moat-store --example store_throughput [DIR]
//! ```
//!
//! `DIR` (default: the system temp dir) must be on the disk you want to measure: on tmpfs
//! fsync is free and the figures mean nothing. Two runs:
//!
//! - **pipelined**: threads submit without waiting, as the broker does when it queues
//!   messages for offline sessions. Bounded by how much one transaction can absorb.
//! - **acknowledged**: every thread waits until each batch is durable before the next, as a
//!   connection does before PUBACK. Bounded by fsync latency; group commit is what lets the
//!   threads share an fsync.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_broker::persist::{OutboundState, StoreOp, StoredMessage};
use moat_store::{SqliteStore, wait_durable};
use moat_types::ClientId;

const THREADS: u64 = 4;
/// Operations in the pipelined run.
const PIPELINED_OPS: u64 = 100_000;
/// Operations in the acknowledged run: one fsync per group, so far fewer fit in a few
/// seconds.
const ACKNOWLEDGED_OPS: u64 = 20_000;
/// A typical small sensor reading with its topic and properties.
const MESSAGE_LEN: usize = 120;

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let base = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("moat-store-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "store in {}; {THREADS} threads, {MESSAGE_LEN}-byte messages, one op per batch",
        dir.display()
    );
    let result = run("pipelined", &dir, PIPELINED_OPS, false)
        .and_then(|()| run("acknowledged", &dir, ACKNOWLEDGED_OPS, true));
    std::fs::remove_dir_all(&dir)?;
    result
}

fn run(
    name: &str,
    dir: &Path,
    total_ops: u64,
    acknowledged: bool,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (store, _) = SqliteStore::open(&dir.join(format!("{name}.db")))?;
    let store = Arc::new(store);
    let clients = (0..THREADS)
        .map(|t| ClientId::parse(&format!("bench-{t}")))
        .collect::<Result<Vec<_>, _>>()?;
    let setup = clients
        .iter()
        .map(|client_id| StoreOp::PutSession {
            client_id: client_id.clone(),
            expiry_interval: 3600,
            protocol_level: 5,
            disconnected_at: None,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut progress = store.committed();
    runtime.block_on(wait_durable(&mut progress, store.submit(setup)))?;
    let transactions_before = progress.borrow().transactions;

    let started = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|client_id| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                submit_all(&store, client_id, total_ops / THREADS, acknowledged)
            })
        })
        .collect();
    let mut last = 0;
    for thread in threads {
        last = last.max(thread.join().map_err(|_| "submitter panicked")??);
    }
    runtime.block_on(wait_durable(&mut progress, last))?;
    let elapsed = started.elapsed();

    let transactions = progress.borrow().transactions - transactions_before;
    let ops = (total_ops / THREADS) * THREADS;
    println!(
        "{name:>12}: {ops} ops in {:.2} s = {:>8.0} ops/s, {transactions} commits = {:>6.0} commits/s, {:.1} ops/commit",
        elapsed.as_secs_f64(),
        per_second(ops, elapsed),
        per_second(transactions, elapsed),
        ops as f64 / transactions.max(1) as f64,
    );
    Arc::into_inner(store)
        .ok_or("store still shared")?
        .close()?;
    Ok(())
}

/// Submits `ops` operations for one client (alternately putting message `i` and deleting it)
/// and returns the last commit sequence number.
fn submit_all(
    store: &SqliteStore,
    client_id: ClientId,
    ops: u64,
    acknowledged: bool,
) -> Result<u64, Box<dyn Error + Send + Sync>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut progress = store.committed();
    let message = StoredMessage {
        encoded: Bytes::from(vec![0x5a; MESSAGE_LEN]),
        qos: 1,
        retain: false,
        expires_at: None,
    };
    let mut last = 0;
    for i in 0..ops {
        let seq = i / 2;
        let op = if i % 2 == 0 {
            StoreOp::PutOutbound {
                client_id: client_id.clone(),
                seq,
                state: OutboundState::Queued,
                message: message.clone(),
            }
        } else {
            StoreOp::DeleteOutbound {
                client_id: client_id.clone(),
                seq,
            }
        };
        last = store.submit(vec![op]);
        if acknowledged {
            runtime.block_on(wait_durable(&mut progress, last))?;
        }
    }
    Ok(last)
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}
