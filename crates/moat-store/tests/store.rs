//! API tests of the SQLite store: real files in a temp dir, synchronised on the commit
//! progress channel only.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use common::{TempDir, client, commit, message, put_session};
use moat_broker::persist::{
    LoadedSession, OutboundState, Snapshot, StoreOp, StoredMessage, StoredSubscription,
};
use moat_store::{CommitError, CommitStatus, SqliteStore, StoreError, wait_durable};
use moat_types::Timestamp;

fn open(path: &std::path::Path) -> (SqliteStore, Snapshot) {
    SqliteStore::open(path).expect("open store")
}

fn reopen(path: &std::path::Path) -> Snapshot {
    let (store, snapshot) = open(path);
    store.close().expect("close");
    snapshot
}

fn put_outbound(id: &str, seq: u64, tag: u8) -> StoreOp {
    StoreOp::PutOutbound {
        client_id: client(id),
        seq,
        state: OutboundState::Queued,
        message: message(tag),
    }
}

fn delete_outbound(id: &str, seq: u64) -> StoreOp {
    StoreOp::DeleteOutbound {
        client_id: client(id),
        seq,
    }
}

fn put_retained(topic: &str, tag: u8) -> StoreOp {
    StoreOp::PutRetained {
        topic: topic.to_owned(),
        message: message(tag),
    }
}

fn subscription(filter: &str, options: u8, identifier: Option<u32>) -> StoredSubscription {
    StoredSubscription {
        filter: filter.to_owned(),
        options,
        identifier,
    }
}

#[tokio::test]
async fn every_op_kind_round_trips_through_a_reopen() {
    let dir = TempDir::new("round-trip");
    let (store, snapshot) = open(&dir.db());
    assert_eq!(snapshot, Snapshot::default());

    let disconnected = Timestamp::from_millis(1_700_000_123_456);
    let never = Timestamp::from_millis(u64::MAX);
    let retained_message = StoredMessage {
        encoded: Bytes::from_static(b"\x30\x07\x00\x03a/bhi"),
        qos: 2,
        retain: true,
        expires_at: None,
    };
    let ops = vec![
        StoreOp::PutSession {
            client_id: client("a"),
            expiry_interval: 60,
            protocol_level: 4,
            disconnected_at: None,
        },
        // Updating a session keeps what it owns.
        StoreOp::PutSession {
            client_id: client("a"),
            expiry_interval: 3600,
            protocol_level: 5,
            disconnected_at: Some(disconnected),
        },
        StoreOp::PutSession {
            client_id: client("b ü/+"),
            expiry_interval: u32::MAX,
            protocol_level: 4,
            disconnected_at: None,
        },
        StoreOp::PutSubscription {
            client_id: client("a"),
            subscription: subscription("sensors/+/temp", 0x01, Some(7)),
        },
        StoreOp::PutSubscription {
            client_id: client("a"),
            subscription: subscription("$share/g/alerts/#", 0x2e, Some(u32::MAX >> 4)),
        },
        StoreOp::PutSubscription {
            client_id: client("a"),
            subscription: subscription("old", 0, None),
        },
        StoreOp::DeleteSubscription {
            client_id: client("a"),
            filter: "old".to_owned(),
        },
        // Replacing a subscription.
        StoreOp::PutSubscription {
            client_id: client("a"),
            subscription: subscription("sensors/+/temp", 0x02, None),
        },
        put_outbound("a", 1, 1),
        put_outbound("a", 2, 2),
        StoreOp::SetOutboundState {
            client_id: client("a"),
            seq: 2,
            state: OutboundState::Sent(10),
        },
        StoreOp::PutOutbound {
            client_id: client("a"),
            seq: 3,
            state: OutboundState::Sent(11),
            message: message(3),
        },
        StoreOp::SetOutboundState {
            client_id: client("a"),
            seq: 3,
            state: OutboundState::Released(11),
        },
        put_outbound("a", 4, 4),
        delete_outbound("a", 4),
        // Above i64::MAX, and submitted before a smaller seq: loaded in queue order.
        StoreOp::PutOutbound {
            client_id: client("b ü/+"),
            seq: u64::MAX - 1,
            state: OutboundState::Queued,
            message: StoredMessage {
                expires_at: Some(never),
                ..message(5)
            },
        },
        put_outbound("b ü/+", 5, 6),
        StoreOp::PutInboundQos2 {
            client_id: client("a"),
            packet_id: 42,
        },
        StoreOp::PutInboundQos2 {
            client_id: client("a"),
            packet_id: 42,
        },
        StoreOp::PutInboundQos2 {
            client_id: client("a"),
            packet_id: 65535,
        },
        StoreOp::PutInboundQos2 {
            client_id: client("a"),
            packet_id: 43,
        },
        StoreOp::DeleteInboundQos2 {
            client_id: client("a"),
            packet_id: 43,
        },
        StoreOp::PutRetained {
            topic: "a/b".to_owned(),
            message: retained_message.clone(),
        },
        put_retained("gone", 7),
        StoreOp::DeleteRetained {
            topic: "gone".to_owned(),
        },
        put_retained("$SYS/x", 8),
    ];
    // Half as single-op batches, half as one batch: both paths keep order.
    let (singles, rest) = ops.split_at(ops.len() / 2);
    for op in singles {
        store.submit(vec![op.clone()]);
    }
    commit(&store, rest.to_vec()).await;
    store.close().expect("close");

    let expected = Snapshot {
        sessions: vec![
            LoadedSession {
                client_id: client("a"),
                expiry_interval: 3600,
                protocol_level: 5,
                disconnected_at: Some(disconnected),
                subscriptions: vec![
                    subscription("$share/g/alerts/#", 0x2e, Some(u32::MAX >> 4)),
                    subscription("sensors/+/temp", 0x02, None),
                ],
                outbound: vec![
                    (1, OutboundState::Queued, message(1)),
                    (2, OutboundState::Sent(10), message(2)),
                    (3, OutboundState::Released(11), message(3)),
                ],
                inbound_qos2: vec![42, 65535],
            },
            LoadedSession {
                client_id: client("b ü/+"),
                expiry_interval: u32::MAX,
                protocol_level: 4,
                disconnected_at: None,
                subscriptions: vec![],
                outbound: vec![
                    (5, OutboundState::Queued, message(6)),
                    (
                        u64::MAX - 1,
                        OutboundState::Queued,
                        StoredMessage {
                            expires_at: Some(never),
                            ..message(5)
                        },
                    ),
                ],
                inbound_qos2: vec![],
            },
        ],
        retained: vec![
            ("$SYS/x".to_owned(), message(8)),
            ("a/b".to_owned(), retained_message),
        ],
    };
    assert_eq!(reopen(&dir.db()), expected);
    // Opening changes nothing.
    assert_eq!(reopen(&dir.db()), expected);
}

#[tokio::test]
async fn ops_apply_in_submission_order_across_and_within_batches() {
    let dir = TempDir::new("order");
    let (store, _) = open(&dir.db());
    let seqs = [
        store.submit(vec![put_session("c")]),
        // Put then Delete across batches: nothing left.
        store.submit(vec![put_outbound("c", 1, 1)]),
        store.submit(vec![delete_outbound("c", 1)]),
        // Delete then Put across batches: the row stays.
        store.submit(vec![delete_outbound("c", 2)]),
        store.submit(vec![put_outbound("c", 2, 2)]),
        // The same within one batch.
        store.submit(vec![
            put_retained("x", 1),
            StoreOp::DeleteRetained {
                topic: "x".to_owned(),
            },
            StoreOp::DeleteRetained {
                topic: "y".to_owned(),
            },
            put_retained("y", 2),
        ]),
        // Last write wins.
        store.submit(vec![put_outbound("c", 3, 3)]),
        store.submit(vec![put_outbound("c", 3, 4)]),
    ];
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "sequence numbers start at 1"
    );
    wait_durable(&mut store.committed(), 8)
        .await
        .expect("durable");
    store.close().expect("close");

    let snapshot = reopen(&dir.db());
    assert_eq!(snapshot.sessions.len(), 1);
    assert_eq!(
        snapshot.sessions[0].outbound,
        [
            (2, OutboundState::Queued, message(2)),
            (3, OutboundState::Queued, message(4)),
        ]
    );
    assert_eq!(snapshot.retained, [("y".to_owned(), message(2))]);
}

#[tokio::test]
async fn ops_for_missing_rows_are_no_ops_and_orphans_are_purged_at_open() {
    let dir = TempDir::new("missing");
    let (store, _) = open(&dir.db());
    commit(
        &store,
        vec![
            delete_outbound("nobody", 1),
            StoreOp::SetOutboundState {
                client_id: client("nobody"),
                seq: 1,
                state: OutboundState::Sent(1),
            },
            StoreOp::DeleteInboundQos2 {
                client_id: client("nobody"),
                packet_id: 1,
            },
            StoreOp::DeleteSubscription {
                client_id: client("nobody"),
                filter: "a".to_owned(),
            },
            StoreOp::DeleteSession {
                client_id: client("nobody"),
            },
            StoreOp::DeleteRetained {
                topic: "nothing".to_owned(),
            },
            // No PutSession: stored, but an orphan.
            put_outbound("orphan", 1, 1),
            put_session("kept"),
        ],
    )
    .await;
    store.close().expect("close");

    let snapshot = reopen(&dir.db());
    assert_eq!(snapshot.sessions.len(), 1);
    assert_eq!(snapshot.sessions[0].client_id, client("kept"));
    // The orphan is gone for good: a later session with that id does not inherit it.
    let (store, _) = open(&dir.db());
    commit(&store, vec![put_session("orphan")]).await;
    store.close().expect("close");
    let orphan = reopen(&dir.db())
        .sessions
        .into_iter()
        .find(|s| s.client_id == client("orphan"))
        .expect("session stored");
    assert!(orphan.outbound.is_empty());
}

#[tokio::test]
async fn delete_session_removes_only_what_that_session_owns() {
    let dir = TempDir::new("delete-session");
    let (store, _) = open(&dir.db());
    let owned = |id: &str| {
        vec![
            put_session(id),
            StoreOp::PutSubscription {
                client_id: client(id),
                subscription: subscription("t/#", 1, None),
            },
            put_outbound(id, 1, 1),
            StoreOp::PutInboundQos2 {
                client_id: client(id),
                packet_id: 9,
            },
        ]
    };
    let mut ops = owned("a");
    ops.extend(owned("b"));
    ops.push(put_retained("t/r", 3));
    commit(&store, ops).await;
    commit(
        &store,
        vec![StoreOp::DeleteSession {
            client_id: client("a"),
        }],
    )
    .await;
    store.close().expect("close");

    let snapshot = reopen(&dir.db());
    assert_eq!(
        snapshot.sessions,
        [LoadedSession {
            client_id: client("b"),
            expiry_interval: 3600,
            protocol_level: 5,
            disconnected_at: None,
            subscriptions: vec![subscription("t/#", 1, None)],
            outbound: vec![(1, OutboundState::Queued, message(1))],
            inbound_qos2: vec![9],
        }]
    );
    assert_eq!(
        snapshot.retained.len(),
        1,
        "retained messages are not owned"
    );

    // No rows of `a` remain anywhere (not merely hidden by the loader).
    let conn = rusqlite::Connection::open(dir.db()).expect("open directly");
    for table in ["sessions", "subscriptions", "outbound", "inbound_qos2"] {
        let rows: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE client_id = 'a'"),
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(rows, 0, "{table}");
    }
}

#[test]
fn concurrent_submitters_are_group_committed_in_order() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 250;
    let dir = TempDir::new("group");
    let (store, _) = open(&dir.db());
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(commit(
        &store,
        (0..THREADS)
            .map(|t| put_session(&format!("c{t}")))
            .collect(),
    ));

    // Watches every published value: committed never goes back, nothing fails.
    let mut progress = store.committed();
    let total = 1 + THREADS * PER_THREAD;
    let watcher = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut last = 0;
            loop {
                let now = *progress.borrow_and_update();
                assert!(now.committed >= last, "committed went back");
                assert_eq!(now.failed, None);
                last = now.committed;
                if last >= total {
                    return now;
                }
                progress.changed().await.expect("store open");
            }
        })
    });

    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let id = format!("c{t}");
                (1..=PER_THREAD)
                    .map(|i| {
                        let seq = store.submit(vec![put_outbound(&id, i, 0)]);
                        // Every other batch deletes the previous message again.
                        if i % 2 == 0 {
                            store.submit(vec![delete_outbound(&id, i - 1)]);
                        }
                        seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs = HashSet::new();
    for submitter in submitters {
        let mine = submitter.join().expect("submitter");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "per-thread order");
        seqs.extend(mine);
    }
    assert_eq!(
        seqs.len() as u64,
        THREADS * PER_THREAD,
        "unique sequence numbers"
    );
    let last = store.submit(Vec::new());
    assert_eq!(last, 1 + THREADS * PER_THREAD * 3 / 2 + 1);
    runtime
        .block_on(wait_durable(&mut store.committed(), last))
        .expect("durable");
    let seen = watcher.join().expect("watcher");
    assert!(seen.committed >= total);
    let progress = *store.committed().borrow();
    assert_eq!(progress.committed, last);
    assert!(progress.transactions <= last);
    for seq in seqs {
        assert_eq!(progress.status(seq), CommitStatus::Durable);
    }
    Arc::into_inner(store)
        .expect("only owner")
        .close()
        .expect("close");

    let snapshot = reopen(&dir.db());
    assert_eq!(snapshot.sessions.len() as u64, THREADS);
    for session in snapshot.sessions {
        let seqs: Vec<u64> = session.outbound.iter().map(|(seq, _, _)| *seq).collect();
        let expected: Vec<u64> = (1..=PER_THREAD).filter(|i| i % 2 == 0).collect();
        assert_eq!(seqs, expected, "{}", session.client_id);
    }
}

#[tokio::test]
async fn a_failed_transaction_fails_its_waiters_and_stops_the_store() {
    let dir = TempDir::new("failure");
    let (store, _) = open(&dir.db());
    store.close().expect("close");
    // Simulates a write the disk refuses, for one topic only.
    let conn = rusqlite::Connection::open(dir.db()).expect("open directly");
    conn.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON retained WHEN NEW.topic = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
    )
    .expect("trigger");
    drop(conn);

    let (store, _) = open(&dir.db());
    let mut progress = store.committed();
    let ok = commit(&store, vec![put_retained("ok", 1)]).await;
    let poisoned = store.submit(vec![put_retained("poison", 2)]);
    let after = store.submit(vec![put_retained("after", 3)]);
    assert_eq!(
        wait_durable(&mut progress, poisoned).await,
        Err(CommitError::Failed {
            seq: poisoned,
            first_failed: poisoned
        })
    );
    assert_eq!(
        wait_durable(&mut progress, after).await,
        Err(CommitError::Failed {
            seq: after,
            first_failed: poisoned
        })
    );
    // Already-durable commits stay durable; new ones fail at once.
    assert_eq!(wait_durable(&mut progress, ok).await, Ok(()));
    let later = store.submit(vec![put_retained("later", 4)]);
    assert_eq!(progress.borrow().status(later), CommitStatus::Failed);
    assert!(matches!(
        store.close(),
        Err(StoreError::CommitFailed { first_failed, .. }) if first_failed == poisoned
    ));

    let snapshot = reopen(&dir.db());
    let topics: Vec<&str> = snapshot.retained.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["ok"], "the file holds the committed prefix only");
}

#[tokio::test]
async fn waiters_are_released_when_the_store_closes() {
    let dir = TempDir::new("close");
    let (store, _) = open(&dir.db());
    let mut progress = store.committed();
    let seqs: Vec<u64> = (0..100)
        .map(|i| store.submit(vec![put_retained(&format!("t/{i}"), 1)]))
        .collect();
    // Graceful shutdown flushes everything queued.
    let last = store.close().expect("close");
    assert_eq!(last, 100);
    for seq in &seqs {
        assert_eq!(wait_durable(&mut progress, *seq).await, Ok(()));
    }
    assert_eq!(
        wait_durable(&mut progress, 101).await,
        Err(CommitError::Closed { seq: 101 })
    );
    assert_eq!(reopen(&dir.db()).retained.len(), 100);
}

#[tokio::test]
async fn dropping_the_store_flushes_too() {
    let dir = TempDir::new("drop");
    let (store, _) = open(&dir.db());
    store.submit(vec![put_session("d")]);
    drop(store);
    assert_eq!(reopen(&dir.db()).sessions.len(), 1);
}

#[cfg(unix)]
#[test]
fn the_data_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let (store, _) = open(&dir.db());
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.db()), 0o600);
    let wal = dir.path().join("store.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
    store.close().expect("close");
}

#[test]
fn a_second_opener_is_refused() {
    let dir = TempDir::new("locked");
    let (store, _) = open(&dir.db());
    let second = SqliteStore::open(&dir.db());
    assert!(
        matches!(second, Err(StoreError::Locked { .. })),
        "{second:?}"
    );
    store.close().expect("close");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_clearly() {
    let dir = TempDir::new("not-sqlite");
    let path = dir.db();
    std::fs::write(
        &path,
        b"this is a configuration file, not a database\n".repeat(100),
    )
    .expect("write");
    let error = SqliteStore::open(&path).expect_err("refused");
    assert!(
        matches!(error, StoreError::NotADatabase { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not an SQLite database"), "{text}");
}

#[test]
fn a_foreign_sqlite_database_is_refused() {
    let dir = TempDir::new("foreign");
    let conn = rusqlite::Connection::open(dir.db()).expect("create");
    conn.execute_batch("CREATE TABLE users (name TEXT)")
        .expect("table");
    drop(conn);
    let error = SqliteStore::open(&dir.db()).expect_err("refused");
    assert!(
        matches!(error, StoreError::ForeignDatabase { .. }),
        "{error:?}"
    );
    // And it was not modified.
    let conn = rusqlite::Connection::open(dir.db()).expect("open");
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tables, 1);
}

#[test]
fn a_store_from_a_newer_moat_is_refused() {
    let dir = TempDir::new("too-new");
    reopen(&dir.db());
    let conn = rusqlite::Connection::open(dir.db()).expect("open directly");
    conn.execute("UPDATE schema_version SET version = 99", [])
        .expect("bump");
    drop(conn);
    let error = SqliteStore::open(&dir.db()).expect_err("refused");
    assert!(
        matches!(error, StoreError::TooNew { found: 99, .. }),
        "{error:?}"
    );
    assert_eq!(moat_store::SCHEMA_VERSION, 1);
}

#[tokio::test]
async fn malformed_rows_are_skipped_not_fatal() {
    let dir = TempDir::new("malformed");
    let (store, _) = open(&dir.db());
    commit(
        &store,
        vec![
            put_session("ok"),
            put_outbound("ok", 1, 1),
            put_retained("good", 1),
        ],
    )
    .await;
    store.close().expect("close");

    let conn = rusqlite::Connection::open(dir.db()).expect("open directly");
    conn.execute_batch(
        "INSERT INTO sessions VALUES ('', 1, 5, NULL);                -- empty client id
         INSERT INTO outbound VALUES ('', 1, 0, NULL, x'00', 0, 0, NULL);
         INSERT INTO sessions VALUES (CAST(x'ff00' AS TEXT), 1, 5, NULL); -- not UTF-8
         INSERT INTO sessions VALUES ('big', 4294967296, 5, NULL);    -- expiry beyond u32
         INSERT INTO outbound VALUES ('ok', 2, 7, NULL, x'00', 0, 0, NULL);   -- unknown state
         INSERT INTO outbound VALUES ('ok', 3, 1, NULL, x'00', 0, 0, NULL);   -- sent, no id
         INSERT INTO outbound VALUES ('ok', 4, 0, NULL, x'00', 9, 0, NULL);   -- QoS 9
         INSERT INTO outbound VALUES ('ok', 5, 1, 70000, x'00', 1, 0, NULL);  -- id beyond u16
         INSERT INTO subscriptions VALUES ('ok', 'a/#/b', 0, NULL);   -- bad filter
         INSERT INTO subscriptions VALUES ('ok', 'fine/#', 0, NULL);
         INSERT INTO inbound_qos2 VALUES ('ok', -1);
         INSERT INTO retained VALUES ('a/+', x'00', 0, 1, NULL);      -- wildcard topic
         INSERT INTO retained VALUES (CAST(x'c328' AS TEXT), x'00', 0, 1, NULL);",
    )
    .expect("damage");
    drop(conn);

    let snapshot = reopen(&dir.db());
    assert_eq!(snapshot.sessions.len(), 1);
    let ok = &snapshot.sessions[0];
    assert_eq!(ok.client_id, client("ok"));
    assert_eq!(ok.outbound, [(1, OutboundState::Queued, message(1))]);
    assert_eq!(ok.subscriptions, [subscription("fine/#", 0, None)]);
    assert!(ok.inbound_qos2.is_empty());
    assert_eq!(snapshot.retained, [("good".to_owned(), message(1))]);
}

#[test]
fn a_directory_path_gives_an_error_naming_it() {
    let dir = TempDir::new("dir");
    let error = SqliteStore::open(dir.path()).expect_err("refused");
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
}
