//! The SQL inbox on SQLite and on a real PostgreSQL: the row commits or rolls back with
//! the handler's transaction, duplicates are refused, racing instances produce one
//! effect, old rows are cleaned up.
#![cfg(all(feature = "sqlite", feature = "postgres"))]

use std::sync::Arc;
use std::time::Duration;

use palisade_events::consumer::{Consumer, Context, HandlerError};
use palisade_events::inbox::SqlInbox;
use palisade_events::{Envelope, Error, Event, MemoryBus, Publisher, Subscription};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{PgPool, Row, SqlitePool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn sqlite() -> Result<SqlitePool, sqlx::Error> {
    // One connection: every connection to `sqlite::memory:` is its own database.
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
}

async fn postgres() -> Option<(palisade_testkit::postgres::FreshDatabase, PgPool)> {
    let db = palisade_testkit::postgres::fresh_database().await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await
        .ok()?;
    Some((db, pool))
}

#[tokio::test]
async fn sqlite_inbox_row_commits_or_rolls_back_with_the_handlers_transaction() -> TestResult {
    let pool = sqlite().await?;
    let inbox = SqlInbox::new();
    inbox.migrate(&pool).await?;
    inbox.migrate(&pool).await?; // idempotent
    sqlx::query("CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT)")
        .execute(&pool)
        .await?;
    let id = Uuid::now_v7();

    let mut tx = pool.begin().await?;
    assert!(inbox.record_id(&mut *tx, "billing", id).await?);
    sqlx::query("INSERT INTO effects DEFAULT VALUES")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?; // the handler failed: neither the effect nor the row stays

    for expected_first in [true, false, false] {
        let mut tx = pool.begin().await?;
        let first = inbox.record_id(&mut *tx, "billing", id).await?;
        assert_eq!(first, expected_first);
        if first {
            sqlx::query("INSERT INTO effects DEFAULT VALUES")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let effects: i64 = sqlx::query("SELECT COUNT(*) FROM effects")
        .fetch_one(&pool)
        .await?
        .get(0);
    assert_eq!(effects, 1);
    // Another consumer handles the same event independently.
    let mut conn = pool.acquire().await?;
    assert!(inbox.record_id(&mut *conn, "shipping", id).await?);
    Ok(())
}

#[tokio::test]
async fn sqlite_retention_deletes_only_old_rows() -> TestResult {
    let pool = sqlite().await?;
    let inbox = SqlInbox::with_table("inbox_custom")?;
    inbox.migrate(&pool).await?;
    let mut conn = pool.acquire().await?;
    inbox.record_id(&mut *conn, "c", Uuid::now_v7()).await?;
    let old = chrono::Utc::now() - chrono::Duration::days(30);
    sqlx::query("INSERT INTO inbox_custom (consumer, event_id, processed_at) VALUES ('c', ?, ?)")
        .bind(Uuid::now_v7())
        .bind(old.timestamp_millis())
        .execute(&mut *conn)
        .await?;
    let deleted = inbox
        .delete_older_than(&mut *conn, Duration::from_secs(7 * 24 * 3600))
        .await?;
    assert_eq!(deleted, 1);
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM inbox_custom")
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    assert_eq!(left, 1);
    Ok(())
}

#[tokio::test]
async fn postgres_inbox_row_commits_or_rolls_back_with_the_handlers_transaction() -> TestResult {
    let Some((_db, pool)) = postgres().await else {
        return Ok(());
    };
    let inbox = SqlInbox::new();
    inbox.migrate(&pool).await?;
    inbox.migrate(&pool).await?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    assert!(inbox.record_id(&mut *tx, "billing", id).await?);
    tx.rollback().await?;
    let mut tx = pool.begin().await?;
    assert!(inbox.record_id(&mut *tx, "billing", id).await?);
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    assert!(!inbox.record_id(&mut *tx, "billing", id).await?);
    tx.commit().await?;

    let old = chrono::Utc::now() - chrono::Duration::days(30);
    sqlx::query(
        "INSERT INTO palisade_inbox (consumer, event_id, processed_at) VALUES ('c', $1, $2)",
    )
    .bind(Uuid::now_v7())
    .bind(old)
    .execute(&pool)
    .await?;
    let mut conn = pool.acquire().await?;
    let deleted = inbox
        .delete_older_than(&mut *conn, Duration::from_secs(24 * 3600))
        .await?;
    assert_eq!(deleted, 1);
    Ok(())
}

/// Two instances get the same event at the same moment, each in its own transaction;
/// the second waits on the key, then sees the duplicate — or, when the first rolls
/// back, does the work itself. Either way: one effect.
#[tokio::test]
async fn postgres_two_racing_instances_produce_one_effect() -> TestResult {
    let Some((_db, pool)) = postgres().await else {
        return Ok(());
    };
    let inbox = SqlInbox::new();
    inbox.migrate(&pool).await?;
    sqlx::query("CREATE TABLE effects (event_id UUID NOT NULL, instance INT NOT NULL)")
        .execute(&pool)
        .await?;
    for round in 0..20 {
        let id = Uuid::now_v7();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for instance in 0..2_i32 {
            let (pool, inbox, barrier) = (pool.clone(), inbox.clone(), Arc::clone(&barrier));
            // In odd rounds instance 0 fails after recording: its row must vanish.
            let fails = round % 2 == 1 && instance == 0;
            tasks.push(tokio::spawn(async move {
                let mut tx = pool.begin().await.map_err(|e| Error::Inbox(Box::new(e)))?;
                barrier.wait().await;
                if !inbox.record_id(&mut *tx, "billing", id).await? {
                    return Ok::<bool, Error>(false);
                }
                sqlx::query("INSERT INTO effects (event_id, instance) VALUES ($1, $2)")
                    .bind(id)
                    .bind(instance)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::Inbox(Box::new(e)))?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if fails {
                    tx.rollback().await.map_err(|e| Error::Inbox(Box::new(e)))?;
                    return Ok(false);
                }
                tx.commit().await.map_err(|e| Error::Inbox(Box::new(e)))?;
                Ok(true)
            }));
        }
        let mut committed = 0;
        for task in tasks {
            if task.await?? {
                committed += 1;
            }
        }
        assert_eq!(committed, 1, "round {round}");
        let effects: i64 = sqlx::query("SELECT COUNT(*) FROM effects WHERE event_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await?
            .get(0);
        assert_eq!(effects, 1, "round {round}");
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Charged {
    order: u32,
}

impl Event for Charged {
    const TYPE: &'static str = "test.charged";
}

/// The full path: two consumer instances (same name) both receive every event, the
/// handler records the inbox row in its own transaction, and each event's effect is
/// written once.
#[tokio::test]
async fn postgres_consumers_with_the_sql_inbox_apply_each_duplicate_once() -> TestResult {
    let Some((_db, pool)) = postgres().await else {
        return Ok(());
    };
    let inbox = SqlInbox::new();
    inbox.migrate(&pool).await?;
    sqlx::query("CREATE TABLE charges (order_id INT NOT NULL)")
        .execute(&pool)
        .await?;
    let bus = MemoryBus::new();
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for instance in 0..2 {
        let (pool, inbox) = (pool.clone(), inbox.clone());
        // Separate groups so both instances get every event at once, like a
        // rebalance handing one partition to two members; one consumer name.
        let consumer = Consumer::new(
            bus.clone(),
            Subscription::new("charges", format!("i{instance}")),
        )
        .name("billing")
        .handle(move |event: Charged, ctx: Context| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                let mut tx = pool.begin().await?;
                if !inbox.record(&mut *tx, &ctx).await? {
                    return Ok::<_, HandlerError>(());
                }
                sqlx::query("INSERT INTO charges (order_id) VALUES ($1)")
                    .bind(i32::try_from(event.order)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        });
        running.push(tokio::spawn(consumer.run(shutdown.clone())));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let events: Vec<Envelope> = (0..50)
        .map(|order| Envelope::from_event(&Charged { order }, "shop"))
        .collect::<Result<_, _>>()?;
    bus.publish_batch("charges", events.clone()).await?;
    bus.publish_batch("charges", events).await?; // and every event twice more
    for _ in 0..500 {
        if bus.pending("charges", "i0") == 0 && bus.pending("charges", "i1") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for task in running {
        task.await??;
    }
    let rows = sqlx::query("SELECT order_id, COUNT(*) FROM charges GROUP BY order_id")
        .fetch_all(&pool)
        .await?;
    assert_eq!(rows.len(), 50);
    for row in rows {
        assert_eq!(row.get::<i64, _>(1), 1, "order {}", row.get::<i32, _>(0));
    }
    Ok(())
}
