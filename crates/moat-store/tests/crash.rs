//! Crash durability: a child process commits, reports what is durable, and is killed with
//! SIGKILL mid-stream; everything it reported must be in the file, and what is in the file
//! must be a prefix of what it submitted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, client, message, put_session};
use moat_broker::persist::{OutboundState, StoreOp};
use moat_store::{SqliteStore, wait_durable};

/// Set in the child's environment to the database path.
const CHILD_DB: &str = "MOAT_STORE_CRASH_CHILD_DB";
/// Durable reports the parent waits for before it kills the child.
const REPORTS_BEFORE_KILL: usize = 20;
/// The child gives up on its own after this long, should the parent never kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn batch(i: u64) -> Vec<StoreOp> {
    vec![StoreOp::PutOutbound {
        client_id: client("crash"),
        seq: i,
        state: OutboundState::Queued,
        message: message((i % 251) as u8),
    }]
}

/// How far the child's submissions may run ahead of its commits.
const MAX_IN_FLIGHT: u64 = 2_000;
/// Kill-and-reopen rounds: each child continues where the file left off, so recovery is
/// followed by more writes and more kills.
const ROUNDS: usize = 3;

/// The child's side: runs only when re-executed by `acknowledged_commits_survive_sigkill`.
/// Continues the outbound queue of session `crash` from what the file holds; one thread
/// submits without pause, another prints the highest message index that is durable.
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let (store, snapshot) = SqliteStore::open(db.as_ref()).expect("open");
    let base = snapshot
        .sessions
        .iter()
        .find(|s| s.client_id == client("crash"))
        .map_or(0, |s| s.outbound.len() as u64);
    // Commit 1 is the session; commit k + 1 holds message base + k.
    let durable_index = move |committed: u64| base + committed.saturating_sub(1);
    let mut reporter_progress = store.committed();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            while reporter_progress.changed().await.is_ok() {
                let committed = reporter_progress.borrow_and_update().committed;
                // A line of its own: the test harness may have left its own line open.
                println!("\ndurable {}", durable_index(committed));
            }
        });
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut progress = store.committed();
    store.submit(vec![put_session("crash")]);
    let started = Instant::now();
    let mut i = base;
    while started.elapsed() < CHILD_LIFETIME {
        i += 1;
        let seq = store.submit(batch(i));
        if seq > MAX_IN_FLIGHT {
            runtime
                .block_on(wait_durable(&mut progress, seq - MAX_IN_FLIGHT))
                .expect("durable");
        }
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_commits_survive_sigkill() {
    if std::env::var_os(CHILD_DB).is_some() {
        return; // we are the child
    }
    let dir = TempDir::new("crash");
    for round in 1..=ROUNDS {
        let reported = run_child_and_kill(&dir);
        let (store, snapshot) = SqliteStore::open(&dir.db()).expect("reopen after crash");
        store.close().expect("close");
        let session = snapshot
            .sessions
            .iter()
            .find(|s| s.client_id == client("crash"))
            .expect("session survived");
        let present = session.outbound.len() as u64;
        assert!(
            present >= reported,
            "round {round}: {present} messages in the file, {reported} were reported durable"
        );
        assert!(
            session
                .outbound
                .iter()
                .map(|(seq, _, _)| *seq)
                .eq(1..=present),
            "round {round}: the file holds a prefix of the submissions"
        );
        for (seq, state, stored) in &session.outbound {
            assert_eq!(*state, OutboundState::Queued);
            assert_eq!(*stored, message((seq % 251) as u8));
        }
        eprintln!("round {round}: {reported} messages reported durable, {present} in the file");
    }
}

/// Runs a child on the store, kills it with SIGKILL once it has reported progress a few
/// times, and returns the last message index it reported durable.
fn run_child_and_kill(dir: &TempDir) -> u64 {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, dir.db())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut reported = 0;
    let mut reports = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(index) = line.strip_prefix("durable ") {
            reported = index.parse::<u64>().expect("number");
            reports += 1;
            if reports == REPORTS_BEFORE_KILL {
                break;
            }
        }
    }
    assert_eq!(reports, REPORTS_BEFORE_KILL, "child stopped early");
    // SIGKILL: no destructor, no flush, no chance to finish a commit.
    child.0.kill().expect("kill");
    let status = child.0.wait().expect("wait");
    assert!(!status.success());
    reported
}
