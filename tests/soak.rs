//! The soak test: writers, two outbox relays, a two-member consumer group and a saga
//! orchestrator run at once against PostgreSQL and Redis Streams, while fault proxies
//! cut both connections at random moments. At the end every committed event was
//! handled exactly once in effect and every started saga finished.
//!
//! About 50 s of load in CI (a minute with the final drain and checks);
//! `PALISADE_SOAK_SECS=600 cargo test --all-features --test
//! soak -- --nocapture` runs it longer. `PALISADE_SOAK_SEED` replays a fault schedule.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade::events::backend::redis::RedisBus;
use palisade::events::inbox::SqlInbox;
use palisade::events::{Consumer, Context, Event, HandlerError, Subscription};
use palisade::outbox::{Outbox, Relay};
use palisade::saga::{
    ListFilter, Orchestrator, PostgresStore, SagaDefinition, SagaState, Step, StepError,
};
use palisade_testkit::{FaultProxy, Service, require, unique_name};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
    fn key(&self) -> Option<String> {
        Some(self.customer.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Booking {
    n: u64,
    declined: bool,
}

/// splitmix64: the fault schedule must be replayable from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap()
}

/// A saga whose steps write through the faulty connection, keyed for idempotence.
fn booking_saga(db: PgPool) -> SagaDefinition<Booking> {
    let step = |name: &'static str, db: PgPool| {
        Step::new(name, move |booking: Booking, step| {
            let db = db.clone();
            async move {
                if name == "charge" && booking.declined {
                    return Err(StepError::permanent("card declined"));
                }
                sqlx::query("INSERT INTO saga_effects (key) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(step.key.to_string())
                    .execute(&db)
                    .await
                    .map_err(StepError::retryable)?;
                Ok(booking)
            }
        })
    };
    let undo = db.clone();
    SagaDefinition::builder("booking", 1)
        .step(
            step("reserve", db.clone()).compensate(move |_booking: Booking, step| {
                let db = undo.clone();
                async move {
                    sqlx::query(
                        "INSERT INTO saga_effects (key) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .bind(step.key.to_string())
                    .execute(&db)
                    .await
                    .map_err(StepError::retryable)?;
                    Ok(())
                }
            }),
        )
        .step(step("charge", db.clone()))
        .pivot(step("confirm", db))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_cuts_every_committed_event_takes_effect_once_and_every_saga_ends() {
    let Some(database) = palisade_testkit::postgres::fresh_database().await else {
        return;
    };
    let Some(redis_url) = require(Service::Redis).await else {
        return;
    };
    let seconds = env_u64("PALISADE_SOAK_SECS", 50);
    let seed = env_u64("PALISADE_SOAK_SEED", u64::from(std::process::id()) ^ 0x5EED);
    println!("soak: {seconds} s, seed {seed}");

    // Clients of the system under test go through the proxies; the checks do not.
    let pg_proxy = FaultProxy::start(&Service::Postgres.host_port())
        .await
        .unwrap();
    let redis_proxy = FaultProxy::start(&redis_url.replace("redis://", ""))
        .await
        .unwrap();
    let direct = pool(database.url(), 4).await;
    let faulty_url = pg_proxy.url_for(database.url());

    let outbox = Outbox::new();
    let inbox = SqlInbox::new();
    outbox.migrate(&direct).await.unwrap();
    inbox.migrate(&direct).await.unwrap();
    for ddl in [
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer BIGINT NOT NULL)",
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL, event_id UUID NOT NULL)",
        "CREATE TABLE saga_effects (key TEXT PRIMARY KEY)",
    ] {
        sqlx::query(ddl).execute(&direct).await.unwrap();
    }
    let saga_store = PostgresStore::from_pool(direct.clone());
    saga_store.migrate().await.unwrap();

    let topic = unique_name("soak_orders");
    let bus = RedisBus::connect(&redis_proxy.url_for(&redis_url))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = Arc::new(AtomicBool::new(true));

    // Two relays over one table.
    let mut relays = Vec::new();
    for _ in 0..2 {
        let db = pool(&faulty_url, 4).await;
        relays.push(
            Relay::builder(&outbox, &db, bus.clone())
                .lease(Duration::from_secs(2))
                .poll_interval(Duration::from_millis(100))
                .build()
                .unwrap()
                .spawn(),
        );
    }

    // A consumer group of two members, each behind the SQL inbox.
    let duplicates = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for _ in 0..2 {
        let db = pool(&faulty_url, 4).await;
        let (inbox, duplicates) = (inbox.clone(), Arc::clone(&duplicates));
        let consumer = Consumer::new(bus.clone(), Subscription::new(&topic, "notifier"))
            .name("notifier")
            .concurrency(8)
            .max_attempts(1_000)
            .handle(move |order: OrderPlaced, ctx: Context| {
                let (db, inbox, duplicates) = (db.clone(), inbox.clone(), Arc::clone(&duplicates));
                async move {
                    let mut tx = db.begin().await?;
                    if inbox
                        .record(&mut *tx, &ctx)
                        .await
                        .map_err(HandlerError::transient)?
                    {
                        sqlx::query("INSERT INTO effects (order_id, event_id) VALUES ($1, $2)")
                            .bind(order.order_id)
                            .bind(ctx.event_id())
                            .execute(&mut *tx)
                            .await?;
                    } else {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                    tx.commit().await?;
                    Ok::<_, HandlerError>(())
                }
            });
        members.push(tokio::spawn(consumer.run(shutdown.clone())));
    }

    // Sagas through the faulty connection, with recovery for the ones it interrupts.
    let saga_db = pool(&faulty_url, 6).await;
    let saga = booking_saga(saga_db.clone());
    let orchestrator = Orchestrator::builder(PostgresStore::from_pool(saga_db))
        .register(&saga)
        .concurrency(16)
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    let recovery = orchestrator.spawn_recovery(Duration::from_millis(500));

    // Writers: each owns its customers, so per-key order is its commit order.
    let next_id = Arc::new(AtomicU64::new(1));
    let write_errors = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..2_i64 {
        let db = pool(&faulty_url, 2).await;
        let (outbox, topic, running) = (outbox.clone(), topic.clone(), Arc::clone(&running));
        let (next_id, write_errors) = (Arc::clone(&next_id), Arc::clone(&write_errors));
        writers.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let order_id = i64::try_from(next_id.fetch_add(1, Ordering::SeqCst)).unwrap();
                let order = OrderPlaced {
                    order_id,
                    customer: writer * 100 + order_id % 5,
                };
                let attempt = async {
                    let mut tx = db.begin().await?;
                    sqlx::query("INSERT INTO orders (id, customer) VALUES ($1, $2)")
                        .bind(order.order_id)
                        .bind(order.customer)
                        .execute(&mut *tx)
                        .await?;
                    outbox
                        .enqueue_event(&mut *tx, &topic, "soak", &order)
                        .await?;
                    tx.commit().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                };
                if attempt.await.is_err() {
                    write_errors.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // The saga starter.
    let started_sagas = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start_errors = Arc::new(AtomicU64::new(0));
    let starter = {
        let (orchestrator, saga, running) = (orchestrator.clone(), saga, Arc::clone(&running));
        let (started_sagas, start_errors) = (Arc::clone(&started_sagas), Arc::clone(&start_errors));
        tokio::spawn(async move {
            let mut n = 0_u64;
            while running.load(Ordering::SeqCst) {
                n += 1;
                match orchestrator
                    .start(
                        &saga,
                        &Booking {
                            n,
                            declined: n.is_multiple_of(4),
                        },
                    )
                    .await
                {
                    Ok(id) => started_sagas.lock().unwrap().push(id),
                    Err(_) => {
                        start_errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    // Faults at random moments until the time is up.
    let mut rng = Rng(seed);
    let mut faults = 0_u64;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(700 + rng.below(1_500))).await;
        let proxy = if rng.below(2) == 0 {
            &pg_proxy
        } else {
            &redis_proxy
        };
        if rng.below(3) == 0 {
            proxy.refuse();
            tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
            proxy.restore();
        } else {
            proxy.cut();
        }
        faults += 1;
    }
    running.store(false, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    starter.await.unwrap();
    pg_proxy.restore();
    redis_proxy.restore();

    // Drain: every committed order handled, every saga finished.
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&direct)
        .await
        .unwrap();
    let reader = direct_store(&direct);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let handled: i64 = sqlx::query_scalar("SELECT count(DISTINCT order_id) FROM effects")
            .fetch_one(&direct)
            .await
            .unwrap();
        let unfinished = saga_store_unfinished(&reader).await;
        if handled >= committed && unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {handled} of {committed} events handled, {unfinished} sagas unfinished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for relay in relays {
        relay.shutdown().await.unwrap();
    }
    shutdown.cancel();
    for member in members {
        member.await.unwrap().unwrap();
    }
    recovery.abort();
    orchestrator.shutdown();

    // Exactly once in effect: one effect row per committed order, none for others.
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&direct)
        .await
        .unwrap();
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM effects e WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = e.order_id)",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(
        effects, committed,
        "an event took effect twice or not at all"
    );
    assert_eq!(strays, 0, "an event of an uncommitted order took effect");

    // Every started saga ended completed or compensated.
    let ids = started_sagas.lock().unwrap().clone();
    let (mut completed, mut compensated) = (0, 0);
    for id in &ids {
        let record = store_status(&reader, *id).await;
        match record {
            SagaState::Completed => completed += 1,
            SagaState::Compensated => compensated += 1,
            other => panic!("saga {id} ended {other:?}"),
        }
    }
    assert!(
        completed > 0 && compensated > 0,
        "the load must exercise both outcomes"
    );
    assert!(faults > 0);
    println!(
        "soak: events={committed} effects={effects} duplicates_absorbed={} write_errors={} \
         sagas={} completed={completed} compensated={compensated} saga_start_errors={} faults={faults} seed={seed}",
        duplicates.load(Ordering::SeqCst),
        write_errors.load(Ordering::SeqCst),
        ids.len(),
        start_errors.load(Ordering::SeqCst),
    );
}

/// An orchestrator on the direct connection, used only to read.
fn direct_store(direct: &PgPool) -> Orchestrator<PostgresStore> {
    Orchestrator::builder(PostgresStore::from_pool(direct.clone()))
        .build()
        .unwrap()
}

async fn saga_store_unfinished(reader: &Orchestrator<PostgresStore>) -> usize {
    let filter = ListFilter {
        states: vec![SagaState::Running, SagaState::Compensating],
        limit: 10_000,
        ..ListFilter::default()
    };
    reader.list(&filter).await.map_or(usize::MAX, |v| v.len())
}

async fn store_status(
    reader: &Orchestrator<PostgresStore>,
    id: palisade::saga::SagaId,
) -> SagaState {
    reader.status(id).await.unwrap().unwrap().state
}
