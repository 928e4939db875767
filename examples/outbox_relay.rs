//! An order service that never loses or doubles an `OrderPlaced` event.
//!
//! - **Writers** save each order and its `OrderPlaced` event in *one* sqlx transaction
//!   through the outbox; one order in ten is rolled back on purpose, and its event must
//!   never be published.
//! - A **relay** publishes committed events to the bus, at least once, in order per key.
//! - A **notification consumer** handles them behind a SQL inbox: the inbox row and the
//!   notification row commit in the handler's own transaction, so a duplicate delivery
//!   has no second effect. The example re-publishes some events itself, as a relay that
//!   died between publish and delete would, to show the duplicates being absorbed.
//!
//! ```text
//! cargo run --example outbox_relay                                   # SQLite + in-memory bus
//! cargo run --example outbox_relay -- --database-url postgres://postgres@127.0.0.1/test
//! cargo run --example outbox_relay --features redis -- --broker redis://127.0.0.1:6379
//! cargo run --example outbox_relay --features rabbitmq -- --broker amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --example outbox_relay --features nats -- --broker nats://127.0.0.1:4222
//! cargo run --example outbox_relay --features kafka -- --broker kafka:127.0.0.1:9092
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade::events::inbox::SqlInbox;
use palisade::events::{
    BoxError, Consumer, Context, Envelope, Event, HandlerError, MemoryBus, Publisher, Subscriber,
    Subscription,
};
use palisade::outbox::{Outbox, Relay};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};
use tokio_util::sync::CancellationToken;

const HELP: &str = "\
outbox_relay: orders and their events in one transaction, a relay to the bus, and an
idempotent notification consumer.

USAGE:
    cargo run --example outbox_relay [--features <broker>] [-- OPTIONS]

OPTIONS:
    --database-url <URL>   sqlite://PATH or postgres://... [default: a SQLite file in the temp dir]
    --broker <BROKER>      memory, amqp://..., kafka:HOST:PORT, redis://... or nats://...
                           [default: memory]; real brokers need the cargo feature of
                           the same name (rabbitmq, kafka, redis, nats)
    --orders <N>           orders to place [default: 200]
    --duplicates <N>       events to re-publish as a crashed relay would [default: 10]
    -h, --help             print this help";

/// The event the order service announces.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    cents: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
    fn key(&self) -> Option<String> {
        Some(format!("customer-{}", self.customer))
    }
}

/// The order service's database: SQLite or PostgreSQL.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    async fn connect(url: &str) -> Result<Self, BoxError> {
        if url.starts_with("postgres") {
            Ok(Self::Postgres(PgPool::connect(url).await?))
        } else {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            let options = options
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            Ok(Self::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            ))
        }
    }

    /// The outbox and inbox tables (shipped migrations) and the service's own tables.
    async fn migrate(&self, outbox: &Outbox, inbox: &SqlInbox) -> Result<(), BoxError> {
        const TABLES: [&str; 2] = [
            "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, cents BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS notifications (order_id BIGINT PRIMARY KEY, event_id TEXT NOT NULL)",
        ];
        match self {
            Self::Sqlite(pool) => {
                outbox.migrate(pool).await?;
                inbox.migrate(pool).await?;
                for ddl in TABLES {
                    sqlx::query(ddl).execute(pool).await?;
                }
            }
            Self::Postgres(pool) => {
                outbox.migrate(pool).await?;
                inbox.migrate(pool).await?;
                for ddl in TABLES {
                    sqlx::query(ddl).execute(pool).await?;
                }
            }
        }
        Ok(())
    }

    /// Saves an order and enqueues its event in one transaction; commits or rolls back.
    async fn place_order(
        &self,
        outbox: &Outbox,
        topic: &str,
        order: &OrderPlaced,
        commit: bool,
    ) -> Result<(), BoxError> {
        const INSERT_PG: &str = "INSERT INTO orders (id, customer, cents) VALUES ($1, $2, $3)";
        const INSERT_SQLITE: &str = "INSERT INTO orders (id, customer, cents) VALUES (?, ?, ?)";
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT_SQLITE)
                    .bind(order.order_id)
                    .bind(&order.customer)
                    .bind(order.cents)
                    .execute(&mut *tx)
                    .await?;
                outbox
                    .enqueue_event(&mut *tx, topic, "orders", order)
                    .await?;
                if commit {
                    tx.commit().await?
                } else {
                    tx.rollback().await?
                }
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(INSERT_PG)
                    .bind(order.order_id)
                    .bind(&order.customer)
                    .bind(order.cents)
                    .execute(&mut *tx)
                    .await?;
                outbox
                    .enqueue_event(&mut *tx, topic, "orders", order)
                    .await?;
                if commit {
                    tx.commit().await?
                } else {
                    tx.rollback().await?
                }
            }
        }
        Ok(())
    }

    /// The notification's effect, once: the inbox row and the notification commit
    /// together. Returns false for a duplicate.
    async fn notify_once(
        &self,
        inbox: &SqlInbox,
        ctx: &Context,
        order: &OrderPlaced,
    ) -> Result<bool, BoxError> {
        const INSERT_PG: &str = "INSERT INTO notifications (order_id, event_id) VALUES ($1, $2)";
        const INSERT_SQLITE: &str = "INSERT INTO notifications (order_id, event_id) VALUES (?, ?)";
        let event_id = ctx.event_id().to_string();
        let first = match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let first = inbox.record(&mut *tx, ctx).await?;
                if first {
                    sqlx::query(INSERT_SQLITE)
                        .bind(order.order_id)
                        .bind(&event_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                first
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let first = inbox.record(&mut *tx, ctx).await?;
                if first {
                    sqlx::query(INSERT_PG)
                        .bind(order.order_id)
                        .bind(&event_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                first
            }
        };
        Ok(first)
    }

    /// Rows of `table` whose order id is in this run's range.
    async fn count(&self, table: &str, ids: (i64, i64)) -> Result<i64, BoxError> {
        let column = if table == "orders" { "id" } else { "order_id" };
        Ok(match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} BETWEEN ? AND ?"
                ))
                .bind(ids.0)
                .bind(ids.1)
                .fetch_one(pool)
                .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} BETWEEN $1 AND $2"
                ))
                .bind(ids.0)
                .bind(ids.1)
                .fetch_one(pool)
                .await?
            }
        })
    }
}

struct Options {
    database_url: Option<String>,
    broker: String,
    orders: i64,
    duplicates: usize,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut options = Options {
        database_url: None,
        broker: "memory".to_owned(),
        orders: 200,
        duplicates: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--database-url" => options.database_url = Some(value("--database-url")?),
            "--broker" => options.broker = value("--broker")?,
            "--orders" => {
                options.orders = value("--orders")?
                    .parse()
                    .map_err(|e| format!("--orders: {e}"))?;
            }
            "--duplicates" => {
                options.duplicates = value("--duplicates")?
                    .parse()
                    .map_err(|e| format!("--duplicates: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Some(options))
}

/// What the run counted.
#[derive(Debug, Default)]
struct Counts {
    written: i64,
    rolled_back: i64,
    published: u64,
    handled: i64,
    duplicates: usize,
    republished: usize,
}

async fn run<B>(bus: B, db: Db, options: &Options) -> Result<Counts, BoxError>
where
    B: Publisher + Subscriber + Clone,
{
    let outbox = Outbox::new();
    let inbox = SqlInbox::new();
    db.migrate(&outbox, &inbox).await?;
    // A topic of this run's own, so a durable broker's leftovers don't count.
    let topic = format!(
        "orders.{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    );

    // The consumer first, so a broker that keeps events only for existing groups has one.
    let duplicates = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let consumer = {
        let db = db.clone();
        let inbox = inbox.clone();
        let duplicates = Arc::clone(&duplicates);
        Consumer::new(bus.clone(), Subscription::new(&topic, "notifications"))
            .name("notifier")
            .concurrency(16)
            .handle(move |order: OrderPlaced, ctx: Context| {
                let (db, inbox, duplicates) = (db.clone(), inbox.clone(), Arc::clone(&duplicates));
                async move {
                    if !db
                        .notify_once(&inbox, &ctx, &order)
                        .await
                        .map_err(HandlerError::transient)?
                    {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, HandlerError>(())
                }
            })
    };
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));
    // Give a real broker a moment to bind the group's queue before the first publish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let relay = match &db {
        Db::Sqlite(pool) => Relay::builder(&outbox, pool, bus.clone()).build()?.spawn(),
        Db::Postgres(pool) => Relay::builder(&outbox, pool, bus.clone()).build()?.spawn(),
    };

    // Order ids of this run's own, so a database reused across runs stays consistent.
    let base = unix_millis() * 1_000;
    let ids = (base + 1, base + options.orders);
    let mut counts = Counts::default();
    let mut replay = Vec::new();
    for order_id in ids.0..=ids.1 {
        let order = OrderPlaced {
            order_id,
            customer: format!("c{}", order_id % 7),
            cents: 1_000 + order_id,
        };
        let commit = order_id % 10 != 0;
        db.place_order(&outbox, &topic, &order, commit).await?;
        if commit {
            counts.written += 1;
            if replay.len() < options.duplicates {
                replay.push(order);
            }
        } else {
            counts.rolled_back += 1;
        }
    }
    println!(
        "written: {} orders with their events committed, {} rolled back",
        counts.written, counts.rolled_back
    );

    // Wait until the relay published every committed event and the consumer handled it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("notifications", ids).await? < counts.written {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out: {} of {} handled",
                db.count("notifications", ids).await?,
                counts.written
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A relay that died between publish and delete publishes again: same event ids.
    let handled_ids: Vec<String> = match &db {
        Db::Sqlite(pool) => sqlx::query_scalar(
            "SELECT event_id FROM notifications WHERE order_id BETWEEN ? AND ? ORDER BY order_id",
        )
        .bind(ids.0)
        .bind(ids.1)
        .fetch_all(pool)
        .await?,
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT event_id FROM notifications WHERE order_id BETWEEN $1 AND $2 ORDER BY order_id",
        )
        .bind(ids.0)
        .bind(ids.1)
        .fetch_all(pool)
        .await?,
    };
    for (order, id) in replay.iter().zip(&handled_ids) {
        let mut envelope = Envelope::from_event(order, "orders")?;
        envelope.id = id.parse()?;
        bus.publish(&topic, envelope).await?;
    }
    // A broker that deduplicates by event id itself (JetStream's `Nats-Msg-Id` window)
    // drops the re-published events before any consumer sees them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while duplicates.load(Ordering::SeqCst) < replay.len().min(handled_ids.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts.republished = replay.len().min(handled_ids.len());

    counts.published = relay.stats().published;
    relay.shutdown().await?;
    shutdown.cancel();
    consuming.await??;
    counts.handled = db.count("notifications", ids).await?;
    counts.duplicates = duplicates.load(Ordering::SeqCst);
    let orders_left = db.count("orders", ids).await?;
    println!(
        "published: {} by the relay; handled: {} notifications for {} orders",
        counts.published, counts.handled, orders_left
    );
    Ok(counts)
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 1_000_000)
        })
}

async fn run_on_broker(db: Db, options: &Options) -> Result<Counts, BoxError> {
    let broker = options.broker.as_str();
    if broker == "memory" {
        return run(MemoryBus::new(), db, options).await;
    }
    #[cfg(feature = "rabbitmq")]
    if broker.starts_with("amqp") {
        let bus = palisade::events::backend::rabbitmq::RabbitMqBus::connect(broker).await?;
        return run(bus, db, options).await;
    }
    #[cfg(feature = "redis")]
    if broker.starts_with("redis") {
        let bus = palisade::events::backend::redis::RedisBus::connect(broker).await?;
        return run(bus, db, options).await;
    }
    #[cfg(feature = "nats")]
    if broker.starts_with("nats") {
        let bus = palisade::events::backend::nats::NatsBus::connect(broker).await?;
        return run(bus, db, options).await;
    }
    #[cfg(feature = "kafka")]
    if let Some(servers) = broker.strip_prefix("kafka:") {
        let bus = palisade::events::backend::kafka::KafkaBus::connect(servers)?;
        return run(bus, db, options).await;
    }
    Err(format!(
        "broker {broker:?} is not available: use memory, or build with the cargo feature \
         of the broker (rabbitmq, kafka, redis, nats)"
    )
    .into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let url = options.database_url.clone().unwrap_or_else(|| {
        let path = std::env::temp_dir().join(format!(
            "palisade-outbox-relay-{}.db",
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        ));
        format!("sqlite://{}", path.display())
    });
    println!("database: {url}\nbroker: {}", options.broker);
    let outcome = async {
        let db = Db::connect(&url).await?;
        run_on_broker(db, &options).await
    }
    .await;
    match outcome {
        Ok(counts) => {
            println!(
                "summary: written={} rolled_back={} published={} handled={} republished={} \
                 duplicates_absorbed={} dropped_by_broker={}",
                counts.written,
                counts.rolled_back,
                counts.published,
                counts.handled,
                counts.republished,
                counts.duplicates,
                counts.republished.saturating_sub(counts.duplicates)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
