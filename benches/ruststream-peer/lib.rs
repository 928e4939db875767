//! ruststream-sqlx 0.7's transactional outbox over a backlog, through its own API.
//!
//! Its outbox keeps every published message in a table until a consumer processed it;
//! the subscription layer (`tracking.layer()`) runs the record's ack after the handler
//! acknowledged (one statement per message: with no `processed_at` field in the record,
//! the ack deletes the row), and `tracking.republish()` re-sends every unprocessed row
//! when the service starts. Its relay over a backlog is therefore: start the service,
//! republish publishes every row through the in-memory broker, the subscriber handles
//! each and the layer deletes it. [`drain_backlog`] times exactly that, from the start
//! of the service until the table is empty.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ruststream::OutgoingMessage;
use ruststream::memory::prelude::*;
use ruststream_sqlx::{Outbox, outbox};
use serde::Deserialize;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, Postgres};

/// What one drain did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Rows in the backlog.
    pub rows: u64,
    /// Messages the subscriber handled (at least `rows`).
    pub handled: u64,
    /// From the service's start until the table was empty.
    pub took: Duration,
}

impl Report {
    /// Rows drained per second.
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.took.as_secs_f64()
    }
}

/// One record of the outbox table; with no `processed_at` field, an ack deletes it.
#[derive(Outbox, sqlx::FromRow)]
#[outbox(table = "rs_outbox")]
struct OrderOutbox {
    #[field(id)]
    id: i64,
    #[field(name)]
    name: String,
    #[field(payload)]
    payload: Vec<u8>,
}

impl outbox::Publish<Postgres> for OrderOutbox {
    async fn publish(conn: &mut PgConnection, msg: &OutgoingMessage<'_>) -> sqlx::Result<i64> {
        sqlx::query_scalar("INSERT INTO rs_outbox (name, payload) VALUES ($1, $2) RETURNING id")
            .bind(msg.name())
            .bind(msg.payload())
            .fetch_one(conn)
            .await
    }
}

#[derive(Debug, Deserialize)]
struct OrderPlaced {
    #[allow(dead_code)]
    id: u64,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

#[subscriber("orders")]
async fn fulfil(_order: &OrderPlaced) -> HandlerOutcome {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    HandlerOutcome::ack()
}

fn service(pool: PgPool) -> impl App {
    let tracking = outbox! { pool: pool, "orders" => OrderOutbox };
    RustStream::new(AppInfo::new("orders", "0.1.0"))
        .layer(tracking.layer())
        .with_broker(MemoryBroker::new(), |b| {
            b.include(fulfil);
            b.after_startup(Publish, tracking.republish());
        })
}

async fn pending(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM rs_outbox")
        .fetch_one(pool)
        .await
}

/// Fills a `rows`-row backlog in the database at `database_url` (a table of its own,
/// `rs_outbox`, dropped at the end), then starts the service and times it until every
/// row was handled and deleted. Gives up after `limit`.
pub async fn drain_backlog(
    database_url: &str,
    rows: u64,
    limit: Duration,
) -> Result<Report, Box<dyn Error + Send + Sync>> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url)
        .await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS rs_outbox; \
         CREATE TABLE rs_outbox (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, payload BYTEA NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO rs_outbox (name, payload) \
         SELECT 'orders', convert_to('{\"id\":' || g || '}', 'UTF8') FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(rows)?)
    .execute(&pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE rs_outbox")
        .execute(&pool)
        .await?;

    HANDLED.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let running = service(pool.clone()).start().await?;
    loop {
        if pending(&pool).await? == 0 {
            break;
        }
        if started.elapsed() > limit {
            running.shutdown().await?;
            return Err(format!(
                "ruststream-sqlx left {} of {rows} rows after {limit:?}",
                pending(&pool).await?
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    running.shutdown().await?;
    let handled = HANDLED.load(Ordering::Relaxed);
    sqlx::raw_sql("DROP TABLE rs_outbox").execute(&pool).await?;
    pool.close().await;
    if handled < rows {
        return Err(format!("handled {handled} of {rows}").into());
    }
    Ok(Report {
        rows,
        handled,
        took,
    })
}
