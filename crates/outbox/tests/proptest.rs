//! Random interleavings of enqueue, commit, rollback, relay crashes and restarts:
//! published ⊇ committed, no rolled-back event, per-key order kept (a re-send may
//! repeat events, never reorder a key).
#![cfg(all(feature = "sqlite", feature = "postgres"))]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Recorder, event};
use palisade_outbox::{FaultPoint, Outbox, OutboxPool, Relay};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    /// A transaction enqueues `n` events of key `key` and commits or rolls back.
    Write { key: u8, n: u8, commit: bool },
    /// Relay `r` runs one batch.
    Step { r: u8 },
    /// Relay `r` crashes after publishing its next batch, before deleting it.
    Crash { r: u8 },
    /// Relay `r` is replaced by a fresh one (a restart).
    Restart { r: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4_u8, 1..4_u8, prop::bool::weighted(0.7)).prop_map(|(key, n, commit)| Op::Write { key, n, commit }),
        4 => (0..2_u8).prop_map(|r| Op::Step { r }),
        1 => (0..2_u8).prop_map(|r| Op::Crash { r }),
        1 => (0..2_u8).prop_map(|r| Op::Restart { r }),
    ]
}

type TestRelay<D> = Relay<<D as OutboxPool>::Store, Recorder>;

fn relay<D: OutboxPool>(
    outbox: &Outbox,
    pool: &D,
    recorder: &Recorder,
    crash: &Arc<AtomicBool>,
) -> TestRelay<D> {
    let crash = crash.clone();
    let hook: palisade_outbox::FaultHook = Arc::new(move |p| {
        let stall = p == FaultPoint::Published && crash.swap(false, Ordering::SeqCst);
        Box::pin(async move {
            if stall {
                std::future::pending::<()>().await;
            }
        })
    });
    match Relay::builder(outbox, pool, recorder.clone())
        .batch_size(3)
        .lease(Duration::from_millis(150))
        .fault_hook(hook)
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("relay: {e}"),
    }
}

async fn check<D>(pool: D, ops: Vec<Op>) -> Result<(), TestCaseError>
where
    for<'c> sqlx::Transaction<'c, <D as PoolDb>::Db>: palisade_outbox::OutboxConnection,
    D: PoolDb,
{
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    let crash = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let mut relays = [
        relay(&outbox, &pool, &recorder, &crash[0]),
        relay(&outbox, &pool, &recorder, &crash[1]),
    ];
    let mut committed: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut rolled_back: HashSet<Uuid> = HashSet::new();
    let mut counter = 0;
    for op in ops {
        match op {
            Op::Write { key, n, commit } => {
                let key = format!("k{key}");
                let events: Vec<_> = (0..n)
                    .map(|_| {
                        counter += 1;
                        event(&key, counter)
                    })
                    .collect();
                let mut tx = pool
                    .begin_tx()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for e in &events {
                    outbox
                        .enqueue(&mut tx, "t", e)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                if commit {
                    tx.commit()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    committed
                        .entry(key)
                        .or_default()
                        .extend(events.iter().map(|e| e.id));
                } else {
                    tx.rollback()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    rolled_back.extend(events.iter().map(|e| e.id));
                }
            }
            Op::Step { r } => {
                let _ = relays[r as usize].run_once().await;
            }
            Op::Crash { r } => {
                crash[r as usize].store(true, Ordering::SeqCst);
                // The stalled batch is dropped: the relay "dies" between publish and delete.
                let _ =
                    tokio::time::timeout(Duration::from_millis(30), relays[r as usize].run_once())
                        .await;
                crash[r as usize].store(false, Ordering::SeqCst);
                relays[r as usize] = relay(&outbox, &pool, &recorder, &crash[r as usize]);
            }
            Op::Restart { r } => {
                relays[r as usize] = relay(&outbox, &pool, &recorder, &crash[r as usize]);
            }
        }
    }
    // Drain: leases of crashed relays expire within 150 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = relays[0].run_once().await;
        let backlog = outbox
            .backlog(&pool)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if backlog.pending == 0 {
            break;
        }
        prop_assert!(
            tokio::time::Instant::now() < deadline,
            "backlog never drained: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let published = recorder.published();
    let ids: HashSet<Uuid> = published.iter().map(|(_, e)| e.id).collect();
    for id in committed.values().flatten() {
        prop_assert!(ids.contains(id), "committed event {id} never published");
    }
    for id in &rolled_back {
        prop_assert!(!ids.contains(id), "rolled-back event {id} published");
    }
    let first_seen = common::first_seen_per_key(&published);
    for (key, expected) in &committed {
        prop_assert_eq!(first_seen.get(key), Some(expected), "order of key {}", key);
    }
    Ok(())
}

/// Begins a transaction on either pool type.
trait PoolDb: OutboxPool {
    type Db: sqlx::Database;
    fn begin_tx(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl PoolDb for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_tx(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

impl PoolDb for sqlx::PgPool {
    type Db = sqlx::Postgres;
    fn begin_tx(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_random_interleavings_publish_every_committed_event_in_key_order(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(async {
            let pool = common::sqlite().await;
            check(pool, ops).await
        })?;
    }

    #[test]
    fn postgres_random_interleavings_publish_every_committed_event_in_key_order(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(async {
            let Some((pool, db)) = common::postgres().await else { return Ok(()) };
            let result = check(pool.clone(), ops).await;
            pool.close().await;
            let _ = db.drop_database().await;
            result
        })?;
    }
}
