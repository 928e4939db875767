//! palisade-events, in-memory parts, side by side with a peer in one run:
//!
//! - `memory_publish_to_handler`: small JSON events published one by one (and in
//!   batches) on the in-memory bus, decoded and handled by a typed handler of the
//!   consumer runtime, versus `ruststream` 0.7's in-memory broker doing the same
//!   (publish → decode → handler → ack), both on a 2-worker tokio runtime. Each event
//!   gets a payload buffer of its own on both sides (ruststream copies the bytes it is
//!   given into a fresh buffer; a service encodes each event anew), so neither run
//!   shares one reference-counted buffer across threads.
//! - `sql_inbox`: one handled event as a transaction (one business `INSERT`), with and
//!   without the inbox's `INSERT … ON CONFLICT DO NOTHING` in the same transaction, on
//!   SQLite and on PostgreSQL (skipped when unreachable).
//!
//! ```text
//! cargo bench -p palisade-benches --bench events -- --warm-up-time 1 --measurement-time 3
//! ```
#![allow(missing_docs, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade_events::inbox::SqlInbox;
use palisade_events::{Envelope, Event, MemoryBus, Publisher};
use tokio_util::sync::CancellationToken;

/// Events per measured iteration.
const EVENTS: usize = 20_000;

#[path = "events_memory.rs"]
mod memory;

use memory::{Latch, Order, body, runtime};

fn palisade_memory(c: &mut Criterion) {
    let rt = runtime();
    let bus = MemoryBus::new();
    let latch = Latch::default();
    let shutdown = CancellationToken::new();
    let running = rt.spawn(memory::palisade_consumer(&bus, &latch).run(shutdown.clone()));
    let body = body();

    let mut group = c.benchmark_group("memory_publish_to_handler");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("palisade", "publish"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let publish = memory::palisade_publish(&bus, &body, EVENTS, 0);
                total += memory::round(&rt, &latch, EVENTS, publish);
            }
            total
        });
    });
    group.bench_function(BenchmarkId::new("palisade", "publish_batch_100"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let publish = async {
                    for _ in 0..EVENTS / 100 {
                        let batch = (0..100)
                            .map(|_| {
                                Envelope::new(Order::TYPE, "bench", Bytes::copy_from_slice(&body))
                            })
                            .collect();
                        if let Err(e) = bus.publish_batch("orders", batch).await {
                            panic!("publish: {e}");
                        }
                    }
                };
                total += memory::round(&rt, &latch, EVENTS, publish);
            }
            total
        });
    });
    ruststream_memory(&mut group);
    group.finish();
    shutdown.cancel();
    let _ = rt.block_on(running);
}

fn ruststream_memory(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let rt = runtime();
    let latch = Latch::default();
    let (running, publisher) = memory::ruststream_app(&rt, &latch);
    let body = body();
    group.bench_function(BenchmarkId::new("ruststream_0.7", "publish"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let publish = memory::ruststream_publish(&publisher, &body, EVENTS);
                total += memory::round(&rt, &latch, EVENTS, publish);
            }
            total
        });
    });
    drop(running);
}

/// One handled event as the handler's transaction: a business insert, plus (or not) the
/// inbox row.
fn sql_inbox(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sql_inbox");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    // SQLite: a file database in WAL mode, as a service would run it.
    let dir = std::env::temp_dir().join(format!("palisade-inbox-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let sqlite = rt.block_on(async {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let options: SqliteConnectOptions = url.parse().ok()?;
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .ok()?;
        SqlInbox::new().migrate(&pool).await.ok()?;
        sqlx::query("CREATE TABLE IF NOT EXISTS orders (id BLOB PRIMARY KEY, quantity INTEGER)")
            .execute(&pool)
            .await
            .ok()?;
        Some(pool)
    });
    if let Some(pool) = sqlite {
        for with_inbox in [false, true] {
            let name = if with_inbox {
                "with_inbox"
            } else {
                "without_inbox"
            };
            let inbox = SqlInbox::new();
            group.bench_function(BenchmarkId::new("sqlite", name), |b| {
                b.to_async(&rt).iter(|| {
                    let (pool, inbox) = (pool.clone(), inbox.clone());
                    async move {
                        let id = uuid::Uuid::now_v7();
                        let mut tx = pool.begin().await.ok()?;
                        if with_inbox && !inbox.record_id(&mut *tx, "bench", id).await.ok()? {
                            return None;
                        }
                        sqlx::query("INSERT INTO orders (id, quantity) VALUES (?, ?)")
                            .bind(id)
                            .bind(37)
                            .execute(&mut *tx)
                            .await
                            .ok()?;
                        tx.commit().await.ok()
                    }
                });
            });
        }
    }

    let postgres = rt.block_on(async {
        let db = palisade_testkit::postgres::fresh_database().await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(db.url())
            .await
            .ok()?;
        SqlInbox::new().migrate(&pool).await.ok()?;
        sqlx::query("CREATE TABLE orders (id UUID PRIMARY KEY, quantity INT NOT NULL)")
            .execute(&pool)
            .await
            .ok()?;
        Some((db, pool))
    });
    if let Some((_db, pool)) = &postgres {
        for with_inbox in [false, true] {
            let name = if with_inbox {
                "with_inbox"
            } else {
                "without_inbox"
            };
            let inbox = SqlInbox::new();
            group.bench_function(BenchmarkId::new("postgres", name), |b| {
                b.to_async(&rt).iter(|| {
                    let (pool, inbox) = (pool.clone(), inbox.clone());
                    async move {
                        let id = uuid::Uuid::now_v7();
                        let mut tx = pool.begin().await.ok()?;
                        if with_inbox && !inbox.record_id(&mut *tx, "bench", id).await.ok()? {
                            return None;
                        }
                        sqlx::query("INSERT INTO orders (id, quantity) VALUES ($1, $2)")
                            .bind(id)
                            .bind(37)
                            .execute(&mut *tx)
                            .await
                            .ok()?;
                        tx.commit().await.ok()
                    }
                });
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, palisade_memory, sql_inbox);
criterion_main!(benches);
