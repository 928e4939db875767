//! The order saga as *choreography*: no orchestrator, only events.
//!
//! Four services — order, payment, inventory, shipping — each react to the others'
//! events and announce their own. Every reaction is one SQLite transaction that
//!
//! 1. records the incoming event in the service's **inbox** (a duplicate changes nothing),
//! 2. changes the service's own tables, and
//! 3. writes the outgoing event into the **outbox**,
//!
//! so a service's state and what it announced can never disagree, and redelivery never
//! charges a card twice. A **relay** publishes the outbox to the bus. Failures travel as
//! events too: `inventory.failed` makes payment refund, `payment.refunded` and
//! `payment.declined` make the order cancel itself — compensation by choreography.
//!
//! Compare with `examples/order_saga.rs`, where one orchestrator drives the same steps
//! and persists the saga's state: choreography has no single place that knows where an
//! order stands (here the audit trail is reconstructed from the events), but no
//! service depends on a coordinator either.
//!
//! ```text
//! cargo run --example choreography
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palisade::events::inbox::SqlInbox;
use palisade::events::{
    BoxError, Consumer, Context, Event, HandlerError, MemoryBus, Subscriber, Subscription,
};
use palisade::outbox::{Outbox, Relay};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "shop";

/// Declares an event type keyed by its order id.
macro_rules! order_event {
    ($name:ident, $type:literal { $($field:ident : $ty:ty),* }) => {
        #[derive(Clone, Debug, Serialize, Deserialize)]
        struct $name { order_id: i64, $($field: $ty),* }
        impl Event for $name {
            const TYPE: &'static str = $type;
            fn key(&self) -> Option<String> { Some(self.order_id.to_string()) }
        }
    };
}

order_event!(OrderPlaced, "order.placed" { item: String, qty: i64, cents: i64 });
order_event!(PaymentCharged, "payment.charged" { item: String, qty: i64 });
order_event!(PaymentDeclined, "payment.declined" { reason: String });
order_event!(PaymentRefunded, "payment.refunded" {});
order_event!(InventoryReserved, "inventory.reserved" {});
order_event!(InventoryFailed, "inventory.failed" { reason: String });
order_event!(ShipmentScheduled, "shipment.scheduled" {});

/// What every service shares: the database (each service has its own tables), the
/// outbox it publishes through and the inbox it deduplicates with.
#[derive(Clone)]
struct Shop {
    pool: SqlitePool,
    outbox: Outbox,
    inbox: SqlInbox,
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

impl Shop {
    /// Opens a transaction and records the delivery in the inbox; `None` when this
    /// consumer has handled the event already (the duplicate is acked, nothing runs).
    async fn begin_once(&self, ctx: &Context) -> Result<Option<Tx>, BoxError> {
        let mut tx = self.pool.begin().await?;
        if self.inbox.record(&mut *tx, ctx).await? {
            Ok(Some(tx))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    /// Writes `event` to the outbox in `tx` and commits: state and announcement together.
    async fn announce<E: Event>(
        &self,
        mut tx: Tx,
        source: &str,
        event: &E,
    ) -> Result<(), BoxError> {
        self.outbox
            .enqueue_event(&mut *tx, TOPIC, source, event)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn exec(tx: &mut Tx, sql: &str, binds: &[&dyn ToSql]) -> Result<u64, BoxError> {
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = bind.bind_to(query);
        }
        Ok(query.execute(&mut **tx).await?.rows_affected())
    }
}

/// A value bindable into a query (the two types this example stores).
trait ToSql: Send + Sync {
    fn bind_to<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
}

impl ToSql for i64 {
    fn bind_to<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
        query.bind(*self)
    }
}

impl ToSql for String {
    fn bind_to<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
        query.bind(self.clone())
    }
}

/// Turns a handler's body into the runtime's result: errors are retried.
fn transient(result: Result<(), BoxError>) -> Result<(), HandlerError> {
    result.map_err(HandlerError::transient)
}

/// Payment: charges on `order.placed` (declines above a limit), refunds on
/// `inventory.failed`.
fn payment_service(bus: &MemoryBus, shop: &Shop) -> Consumer<MemoryBus> {
    let (charge, refund) = (shop.clone(), shop.clone());
    Consumer::new(bus.clone(), Subscription::new(TOPIC, "payment"))
        .name("payment")
        .handle(move |e: OrderPlaced, ctx: Context| {
            let shop = charge.clone();
            async move {
                transient(
                    async {
                        let Some(mut tx) = shop.begin_once(&ctx).await? else {
                            return Ok(());
                        };
                        if e.cents > 100_000 {
                            Shop::exec(
                                &mut tx,
                                "INSERT INTO payments (order_id, status) VALUES (?, 'declined')",
                                &[&e.order_id],
                            )
                            .await?;
                            let reason =
                                format!("card limit exceeded by {} cents", e.cents - 100_000);
                            shop.announce(
                                tx,
                                "payment",
                                &PaymentDeclined {
                                    order_id: e.order_id,
                                    reason,
                                },
                            )
                            .await
                        } else {
                            Shop::exec(
                                &mut tx,
                                "INSERT INTO payments (order_id, status) VALUES (?, 'charged')",
                                &[&e.order_id],
                            )
                            .await?;
                            shop.announce(
                                tx,
                                "payment",
                                &PaymentCharged {
                                    order_id: e.order_id,
                                    item: e.item,
                                    qty: e.qty,
                                },
                            )
                            .await
                        }
                    }
                    .await,
                )
            }
        })
        .handle(move |e: InventoryFailed, ctx: Context| {
            let shop = refund.clone();
            async move {
                transient(
                    async {
                        let Some(mut tx) = shop.begin_once(&ctx).await? else {
                            return Ok(());
                        };
                        Shop::exec(
                            &mut tx,
                            "UPDATE payments SET status = 'refunded' WHERE order_id = ?",
                            &[&e.order_id],
                        )
                        .await?;
                        shop.announce(
                            tx,
                            "payment",
                            &PaymentRefunded {
                                order_id: e.order_id,
                            },
                        )
                        .await
                    }
                    .await,
                )
            }
        })
}

/// Inventory: reserves stock on `payment.charged`, or fails the order.
fn inventory_service(bus: &MemoryBus, shop: &Shop) -> Consumer<MemoryBus> {
    let shop = shop.clone();
    Consumer::new(bus.clone(), Subscription::new(TOPIC, "inventory"))
        .name("inventory")
        .handle(move |e: PaymentCharged, ctx: Context| {
            let shop = shop.clone();
            async move {
                transient(async {
                    let Some(mut tx) = shop.begin_once(&ctx).await? else { return Ok(()) };
                    let taken = Shop::exec(
                        &mut tx,
                        "UPDATE stock SET available = available - ? WHERE item = ? AND available >= ?",
                        &[&e.qty, &e.item, &e.qty],
                    )
                    .await?;
                    if taken == 1 {
                        Shop::exec(&mut tx, "INSERT INTO reservations (order_id, item, qty) VALUES (?, ?, ?)", &[&e.order_id, &e.item, &e.qty]).await?;
                        shop.announce(tx, "inventory", &InventoryReserved { order_id: e.order_id }).await
                    } else {
                        let reason = format!("{} x {} out of stock", e.qty, e.item);
                        shop.announce(tx, "inventory", &InventoryFailed { order_id: e.order_id, reason }).await
                    }
                }.await)
            }
        })
}

/// Shipping: schedules the shipment on `inventory.reserved`.
fn shipping_service(bus: &MemoryBus, shop: &Shop) -> Consumer<MemoryBus> {
    let shop = shop.clone();
    Consumer::new(bus.clone(), Subscription::new(TOPIC, "shipping"))
        .name("shipping")
        .handle(move |e: InventoryReserved, ctx: Context| {
            let shop = shop.clone();
            async move {
                transient(
                    async {
                        let Some(mut tx) = shop.begin_once(&ctx).await? else {
                            return Ok(());
                        };
                        Shop::exec(
                            &mut tx,
                            "INSERT INTO shipments (order_id) VALUES (?)",
                            &[&e.order_id],
                        )
                        .await?;
                        shop.announce(
                            tx,
                            "shipping",
                            &ShipmentScheduled {
                                order_id: e.order_id,
                            },
                        )
                        .await
                    }
                    .await,
                )
            }
        })
}

/// Order: completes on `shipment.scheduled`, cancels on a decline or a refund.
fn order_service(bus: &MemoryBus, shop: &Shop) -> Consumer<MemoryBus> {
    async fn set_status(
        shop: Shop,
        ctx: Context,
        order_id: i64,
        status: &str,
    ) -> Result<(), BoxError> {
        let Some(mut tx) = shop.begin_once(&ctx).await? else {
            return Ok(());
        };
        Shop::exec(
            &mut tx,
            "UPDATE orders SET status = ? WHERE id = ?",
            &[&status.to_owned(), &order_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    let (a, b, c) = (shop.clone(), shop.clone(), shop.clone());
    Consumer::new(bus.clone(), Subscription::new(TOPIC, "order"))
        .name("order")
        .handle(move |e: ShipmentScheduled, ctx: Context| {
            let shop = a.clone();
            async move { transient(set_status(shop, ctx, e.order_id, "completed").await) }
        })
        .handle(move |e: PaymentDeclined, ctx: Context| {
            let shop = b.clone();
            async move { transient(set_status(shop, ctx, e.order_id, "cancelled").await) }
        })
        .handle(move |e: PaymentRefunded, ctx: Context| {
            let shop = c.clone();
            async move { transient(set_status(shop, ctx, e.order_id, "cancelled").await) }
        })
}

/// The order service's write path: the order row and `order.placed`, one transaction.
async fn place_order(shop: &Shop, order: OrderPlaced) -> Result<(), BoxError> {
    let mut tx = shop.pool.begin().await?;
    Shop::exec(
        &mut tx,
        "INSERT INTO orders (id, status, item, qty, cents) VALUES (?, 'pending', ?, ?, ?)",
        &[&order.order_id, &order.item, &order.qty, &order.cents],
    )
    .await?;
    shop.announce(tx, "order", &order).await
}

async fn open_shop() -> Result<(Shop, String), BoxError> {
    let path = std::env::temp_dir().join(format!(
        "palisade-choreography-{}.db",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    ));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let shop = Shop {
        pool,
        outbox: Outbox::new(),
        inbox: SqlInbox::new(),
    };
    shop.outbox.migrate(&shop.pool).await?;
    shop.inbox.migrate(&shop.pool).await?;
    for ddl in [
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, item TEXT NOT NULL, qty INTEGER NOT NULL, cents INTEGER NOT NULL)",
        "CREATE TABLE payments (order_id INTEGER PRIMARY KEY, status TEXT NOT NULL)",
        "CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER NOT NULL)",
        "CREATE TABLE reservations (order_id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER NOT NULL)",
        "CREATE TABLE shipments (order_id INTEGER PRIMARY KEY)",
        "INSERT INTO stock (item, available) VALUES ('keyboard', 5), ('monitor', 1)",
    ] {
        sqlx::query(ddl).execute(&shop.pool).await?;
    }
    Ok((shop, path.display().to_string()))
}

async fn run() -> Result<BTreeMap<String, usize>, BoxError> {
    let (shop, path) = open_shop().await?;
    println!("database: SQLite file {path}");
    let bus = MemoryBus::new();
    let shutdown = CancellationToken::new();

    // An audit trail: a group of its own sees every event, in order per order id.
    let trail: Arc<Mutex<BTreeMap<i64, Vec<String>>>> = Arc::default();
    let mut audit = bus.subscribe(&Subscription::new(TOPIC, "audit")).await?;
    let audit_trail = Arc::clone(&trail);
    let auditing = tokio::spawn(async move {
        while let Some(Ok(delivery)) = audit.next().await {
            if let Ok(envelope) = delivery.envelope() {
                let order: i64 = envelope
                    .key
                    .as_deref()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_default();
                if let Ok(mut trail) = audit_trail.lock() {
                    trail
                        .entry(order)
                        .or_default()
                        .push(envelope.event_type.to_string());
                }
            }
            let _ = delivery.ack().await;
        }
    });

    let mut services = Vec::new();
    for consumer in [
        order_service(&bus, &shop),
        payment_service(&bus, &shop),
        inventory_service(&bus, &shop),
        shipping_service(&bus, &shop),
    ] {
        services.push(tokio::spawn(consumer.run(shutdown.clone())));
    }
    let relay = Relay::builder(&shop.outbox, &shop.pool, bus.clone())
        .build()?
        .spawn();

    let orders = [
        (1001, "keyboard", 1, 4_900, "happy path"),
        (1002, "keyboard", 1, 250_000, "payment declined"),
        (
            1003,
            "monitor",
            2,
            30_000,
            "out of stock: refund, then cancel",
        ),
        (1004, "monitor", 1, 30_000, "happy path, last monitor"),
    ];
    for (order_id, item, qty, cents, _) in orders {
        place_order(
            &shop,
            OrderPlaced {
                order_id,
                item: item.to_owned(),
                qty,
                cents,
            },
        )
        .await?;
    }

    // Choreography has no coordinator to ask: wait until every order left `pending`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'pending'")
                .fetch_one(&shop.pool)
                .await?;
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{pending} orders still pending after 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the audit group catch up with the last events.
    tokio::time::sleep(Duration::from_millis(200)).await;

    relay.shutdown().await?;
    shutdown.cancel();
    for service in services {
        service.await??;
    }
    bus.close();
    let _ = auditing.await;

    let mut outcomes = BTreeMap::new();
    let trail = trail.lock().map_err(|_| "audit trail poisoned")?.clone();
    for (order_id, item, qty, cents, story) in orders {
        let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
            .bind(order_id)
            .fetch_one(&shop.pool)
            .await?;
        println!("\norder #{order_id} ({qty} x {item}, {cents} cents) — {story}");
        for event in trail.get(&order_id).map(Vec::as_slice).unwrap_or_default() {
            println!("    {event}");
        }
        println!("  => {status}");
        *outcomes.entry(status).or_insert(0) += 1;
    }
    let monitors: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE item = 'monitor'")
        .fetch_one(&shop.pool)
        .await?;
    let refunds: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status = 'refunded'")
            .fetch_one(&shop.pool)
            .await?;
    println!("\nstock left: {monitors} monitor(s); refunds issued: {refunds}");
    outcomes.insert("refunded".to_owned(), usize::try_from(refunds)?);
    Ok(outcomes)
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "choreography: the order saga driven by events, outbox and inbox.\n\nUSAGE:\n    cargo run --example choreography"
        );
        return ExitCode::SUCCESS;
    }
    match run().await {
        Ok(outcomes) => {
            let get = |k: &str| outcomes.get(k).copied().unwrap_or(0);
            println!(
                "summary: completed={} cancelled={} refunded={}",
                get("completed"),
                get("cancelled"),
                get("refunded")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
