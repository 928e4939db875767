//! Outbox figures, each side by side with what it is measured against, in one run:
//!
//! 1. Relay throughput, PostgreSQL → in-memory publisher, over an N-row backlog
//!    (default 200 000), next to a raw SQL drain loop
//!    (`DELETE … WHERE seq IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED) RETURNING *`)
//!    on the same table and backlog, and (round 1, 20 000 rows) a one-commit-per-message
//!    drain as a reference for consumer-acknowledged outboxes.
//! 2. Two relays vs one on the same backlog, with a per-key order check on every
//!    publish.
//! 3. Commit → publish latency at 1 000 single-event transactions/s (open loop):
//!    `pg_notify` in the enqueue's transaction, `Outbox::wake` after commit, and polling
//!    only (`OUTBOX_BENCH_POLL_MS`, default 50; `OUTBOX_BENCH_FALLBACK_MS` sets the
//!    notify modes' polling fallback, default 1 000).
//! 4. Enqueue overhead inside a user transaction (one INSERT, a 10-event batch) against
//!    the same transaction without it.
//! 5. SQLite relay throughput (temporary file, a quarter of N rows).
//!
//! Run: `cargo bench -p palisade-benches --bench outbox`
//! (`OUTBOX_BENCH_ROWS=20000` for a quick pass; `OUTBOX_BENCH_SKIP=latency,sqlite` to
//! skip sections: throughput, latency, enqueue, sqlite.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_events::{Envelope, Error as EventsError, Publisher};
use palisade_outbox::{Outbox, Relay};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BATCH: usize = 1000;
const KEYS: usize = 1000;

/// When each event was confirmed, by id.
type Stamps = Arc<Mutex<Vec<(uuid::Uuid, Instant)>>>;

/// Counts confirmed publishes and checks that, per key, events arrive in order.
#[derive(Clone, Default)]
struct Counting {
    published: Arc<AtomicU64>,
    check_order: bool,
    last: Arc<Mutex<HashMap<String, u64>>>,
    violations: Arc<AtomicU64>,
    stamps: Option<Stamps>,
}

impl Publisher for Counting {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), EventsError> {
        self.publish_batch(topic, vec![envelope]).await
    }

    async fn publish_batch(
        &self,
        _topic: &str,
        envelopes: Vec<Envelope>,
    ) -> Result<(), EventsError> {
        let now = Instant::now();
        if self.check_order
            && let Ok(mut last) = self.last.lock()
        {
            for e in &envelopes {
                let n = sequence_of(e);
                let key = e.key.clone().unwrap_or_default();
                let prev = last.insert(key, n);
                if prev.is_some_and(|p| p >= n) {
                    self.violations.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(stamps) = &self.stamps
            && let Ok(mut stamps) = stamps.lock()
        {
            stamps.extend(envelopes.iter().map(|e| (e.id, now)));
        }
        self.published
            .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The event's number, from its `n` header (written in increasing order per key).
fn sequence_of(e: &Envelope) -> u64 {
    e.headers.get("n").and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn event(n: usize) -> Envelope {
    Envelope::new(
        "order.placed",
        "bench",
        format!(
            "{{\"order_id\":{n},\"customer\":\"c-{}\",\"cents\":12345,\"items\":[1,2,3]}}",
            n % 977
        )
        .into_bytes(),
    )
    .with_key(format!("order-{}", n % KEYS))
    .with_header("n", n.to_string())
}

async fn fill(pool: &PgPool, outbox: &Outbox, rows: usize) -> BoxResult<Duration> {
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let chunk: Vec<Envelope> = (n..(n + 5000).min(rows)).map(event).collect();
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, "orders", &chunk).await?;
        tx.commit().await?;
        n += chunk.len();
    }
    sqlx::query("VACUUM ANALYZE palisade_outbox")
        .execute(pool)
        .await?;
    Ok(started.elapsed())
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

async fn raw_drain(pool: &PgPool) -> BoxResult<usize> {
    let mut total = 0;
    loop {
        let rows = sqlx::query(
            "DELETE FROM palisade_outbox WHERE seq IN \
             (SELECT seq FROM palisade_outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(BATCH as i64)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        // Touch what a relay would read, so the comparison is fair.
        for row in &rows {
            let payload: &[u8] = row.try_get("payload")?;
            std::hint::black_box(payload);
        }
        total += rows.len();
    }
}

/// One commit per message: read the unprocessed rows, then delete each on its own
/// (autocommit), the shape of a consumer-acknowledged outbox such as ruststream-sqlx's
/// outbox path. Not that crate's code: a reference for "one commit per message".
async fn per_message_drain(pool: &PgPool, rows: usize) -> BoxResult<usize> {
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM palisade_outbox ORDER BY seq LIMIT $1")
            .bind(rows as i64)
            .fetch_all(pool)
            .await?;
    for seq in &seqs {
        sqlx::query("DELETE FROM palisade_outbox WHERE seq = $1")
            .bind(seq)
            .execute(pool)
            .await?;
    }
    Ok(seqs.len())
}

async fn relay_drain(
    pool: &PgPool,
    outbox: &Outbox,
    publisher: Counting,
    relays: usize,
    rows: usize,
) -> BoxResult<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..relays {
        let mut relay = Relay::builder(outbox, pool, publisher.clone())
            .batch_size(BATCH)
            .build()?;
        let published = publisher.published.clone();
        tasks.push(tokio::spawn(async move {
            // Run until everything is published; with several relays one may find
            // nothing claimable for a moment while another holds the last keys.
            while (published.load(Ordering::Relaxed) as usize) < rows {
                if relay.run_once().await?.claimed == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok::<_, palisade_outbox::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = started.elapsed();
    let published = publisher.published.load(Ordering::Relaxed) as usize;
    if published != rows {
        return Err(format!("published {published} of {rows}").into());
    }
    Ok(took)
}

fn skip(section: &str) -> bool {
    std::env::var("OUTBOX_BENCH_SKIP").is_ok_and(|s| s.split(',').any(|x| x == section))
}

async fn throughput(rows: usize) -> BoxResult<()> {
    let Some(db) = palisade_testkit::postgres::fresh_database().await else {
        return Ok(());
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await?;
    let outbox = Outbox::new();
    outbox.migrate(&pool).await?;

    println!("## PostgreSQL relay throughput, {rows}-row backlog, batch {BATCH}, {KEYS} keys");
    // The raw drain's speed moves from round to round (buffer cache, the table's
    // history) by more than the difference being measured: three rounds, each raw
    // drain followed at once by ours on an identical freshly filled and vacuumed
    // backlog, and the median of the per-round ratios.
    let mut ratios = Vec::new();
    let mut ours_rates = Vec::new();
    for round in 1..=3 {
        let took = fill(&pool, &outbox, rows).await?;
        println!(
            "round {round}: fill (enqueue_batch of 5000 per transaction)  {:>9.0} rows/s",
            rate(rows, took)
        );
        let started = Instant::now();
        let drained = raw_drain(&pool).await?;
        let raw = rate(drained, started.elapsed());
        println!(
            "round {round}: raw SQL drain (DELETE … SKIP LOCKED RETURNING *) {raw:>9.0} rows/s"
        );

        if round == 1 {
            fill(&pool, &outbox, rows.min(20_000)).await?;
            let started = Instant::now();
            let n = per_message_drain(&pool, rows.min(20_000)).await?;
            println!(
                "round {round}: one commit per message (reference, {n} rows)  {:>9.0} rows/s",
                rate(n, started.elapsed())
            );
        }

        fill(&pool, &outbox, rows).await?;
        let publisher = Counting::default();
        let took = relay_drain(&pool, &outbox, publisher, 1, rows).await?;
        let ours = rate(rows, took);
        println!(
            "round {round}: palisade relay, 1 relay                     {ours:>9.0} rows/s  ({:.2}× raw)",
            ours / raw
        );
        ratios.push(ours / raw);
        ours_rates.push(ours);

        fill(&pool, &outbox, rows).await?;
        let checked = Counting {
            check_order: true,
            ..Counting::default()
        };
        let took = relay_drain(&pool, &outbox, checked.clone(), 1, rows).await?;
        println!(
            "round {round}: palisade relay, 1 relay, order check         {:>9.0} rows/s  (order violations: {})",
            rate(rows, took),
            checked.violations.load(Ordering::Relaxed)
        );

        fill(&pool, &outbox, rows).await?;
        let checked = Counting {
            check_order: true,
            ..Counting::default()
        };
        let took = relay_drain(&pool, &outbox, checked.clone(), 2, rows).await?;
        println!(
            "round {round}: palisade relay, 2 relays, order check        {:>9.0} rows/s  (order violations: {})",
            rate(rows, took),
            checked.violations.load(Ordering::Relaxed)
        );
    }
    // The closest Rust peer on the same database and backlog size: ruststream-sqlx 0.7's
    // outbox, started over `rows` unprocessed records (its startup republish through the
    // in-memory broker, one ack statement per handled message).
    let median_ours = {
        let mut ours = ours_rates.clone();
        ours.sort_by(f64::total_cmp);
        ours[ours.len() / 2]
    };
    match palisade_bench_ruststream_peer::drain_backlog(
        db.url(),
        rows as u64,
        Duration::from_secs(900),
    )
    .await
    {
        Ok(report) => println!(
            "ruststream-sqlx 0.7 outbox (republish + per-message ack) {:>9.0} rows/s  \
             (palisade relay median {median_ours:.0} rows/s = {:.1}× it; handled {})",
            report.rate(),
            median_ours / report.rate(),
            report.handled
        ),
        Err(e) => println!("ruststream-sqlx 0.7 outbox: failed: {e}"),
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "palisade relay / raw drain, median of {} rounds: {:.2}× (min {:.2}×, max {:.2}×)",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    pool.close().await;
    let _ = db.drop_database().await;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// `pg_notify` inside the enqueue's transaction (the default).
    InTransaction,
    /// No notify in the transaction; `Outbox::wake` after the commit.
    AfterCommit,
    /// No notification at all; the relay polls every 50 ms.
    Polling,
}

async fn latency(mode: Wake) -> BoxResult<()> {
    let Some(db) = palisade_testkit::postgres::fresh_database().await else {
        return Ok(());
    };
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect(db.url())
        .await?;
    let outbox = Outbox::new().with_notify(mode == Wake::InTransaction);
    outbox.migrate(&pool).await?;
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let publisher = Counting {
        stamps: Some(stamps.clone()),
        ..Counting::default()
    };
    let poll = if mode == Wake::Polling {
        Duration::from_millis(
            std::env::var("OUTBOX_BENCH_POLL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(50),
        )
    } else {
        Duration::from_millis(
            std::env::var("OUTBOX_BENCH_FALLBACK_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
        )
    };
    let handle = Relay::builder(&outbox, &pool, publisher.clone())
        .poll_interval(poll)
        .build()?
        .spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1 000 events/s for 5 s, one event per transaction, open loop: a transaction is
    // started every millisecond whether or not the previous ones have committed.
    let events = 5000;
    let committed: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(events)));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut writers = Vec::with_capacity(events);
    for n in 0..events {
        tick.tick().await;
        let (pool, outbox, committed) = (pool.clone(), outbox.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            let e = event(n);
            let mut tx = pool.begin().await?;
            outbox.enqueue(&mut tx, "orders", &e).await?;
            tx.commit().await?;
            if let Ok(mut c) = committed.lock() {
                c.insert(e.id, Instant::now());
            }
            if mode == Wake::AfterCommit {
                outbox.wake(&pool).await?;
            }
            Ok::<_, palisade_outbox::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let offered = events as f64 / started.elapsed().as_secs_f64();
    let committed = committed.lock().map(|c| c.clone()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (publisher.published.load(Ordering::Relaxed) as usize) < events
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await?;
    let stamps = stamps.lock().map(|s| s.clone()).unwrap_or_default();
    // A publish can precede our "committed" stamp by the commit reply's trip: count it as 0.
    let mut lat: Vec<Duration> = stamps
        .iter()
        .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let label = match mode {
        Wake::InTransaction => "NOTIFY in the enqueue's transaction",
        Wake::AfterCommit => "Outbox::wake after commit",
        Wake::Polling => "polling only (50 ms unless OUTBOX_BENCH_POLL_MS)",
    };
    println!(
        "{label:<36} n={:>5} committed at {offered:>5.0}/s  p50 {:>8.2?}  p90 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        lat.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    pool.close().await;
    let _ = db.drop_database().await;
    Ok(())
}

async fn enqueue_overhead() -> BoxResult<()> {
    let Some(db) = palisade_testkit::postgres::fresh_database().await else {
        return Ok(());
    };
    // synchronous_commit=off: the commit's fsync (milliseconds here, and noisy) would
    // hide the statement costs being compared.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("synchronous_commit", "off")]))
        .await?;
    let outbox = Outbox::new();
    outbox.migrate(&pool).await?;
    sqlx::query("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, cents BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let n = 3000;
    println!(
        "## Enqueue overhead inside a user transaction ({n} transactions each, mean per transaction, synchronous_commit=off)"
    );
    let mut base = Duration::ZERO;
    for (label, events) in [
        ("business INSERT only", 0_usize),
        ("+ enqueue 1 event", 1),
        ("+ enqueue_batch 10 events", 10),
    ] {
        for variant in [true, false] {
            let outbox = outbox.clone().with_notify(variant);
            if events == 0 && !variant {
                continue;
            }
            let started = Instant::now();
            for i in 0..n {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO orders (customer, cents) VALUES ($1, $2)")
                    .bind(format!("c-{i}"))
                    .bind(i as i64)
                    .execute(&mut *tx)
                    .await?;
                match events {
                    0 => {}
                    1 => outbox.enqueue(&mut tx, "orders", &event(i)).await?,
                    k => {
                        let batch: Vec<Envelope> = (0..k).map(|j| event(i * k + j)).collect();
                        outbox.enqueue_batch(&mut tx, "orders", &batch).await?;
                    }
                }
                tx.commit().await?;
            }
            let per = started.elapsed() / n as u32;
            if events == 0 {
                base = per;
                println!("{label:<40} {per:>9.1?}");
            } else {
                println!(
                    "{:<40} {per:>9.1?}  (+{:.1?})",
                    format!(
                        "{label}{}",
                        if variant {
                            ", with pg_notify"
                        } else {
                            ", no notify"
                        }
                    ),
                    per.saturating_sub(base)
                );
            }
            sqlx::query("TRUNCATE palisade_outbox")
                .execute(&pool)
                .await?;
        }
    }
    pool.close().await;
    let _ = db.drop_database().await;
    Ok(())
}

async fn sqlite(rows: usize) -> BoxResult<()> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let path = std::env::temp_dir().join(format!(
        "{}.db",
        palisade_testkit::unique_name("outbox_bench")
    ));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let outbox = Outbox::new();
    outbox.migrate(&pool).await?;
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let chunk: Vec<Envelope> = (n..(n + 5000).min(rows)).map(event).collect();
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, "orders", &chunk).await?;
        tx.commit().await?;
        n += chunk.len();
    }
    let fill = started.elapsed();
    let publisher = Counting {
        check_order: true,
        ..Counting::default()
    };
    let mut relay = Relay::builder(&outbox, &pool, publisher.clone())
        .batch_size(BATCH)
        .build()?;
    let started = Instant::now();
    loop {
        if relay.run_once().await?.claimed == 0 {
            break;
        }
    }
    let took = started.elapsed();
    println!("## SQLite (WAL, synchronous=NORMAL), {rows}-row backlog, batch {BATCH}");
    println!(
        "fill (enqueue_batch of 5000 per transaction) {:>9.0} rows/s",
        rate(rows, fill)
    );
    println!(
        "palisade relay, 1 relay, order check        {:>9.0} rows/s  (published {}, order violations {})",
        rate(rows, took),
        publisher.published.load(Ordering::Relaxed),
        publisher.violations.load(Ordering::Relaxed)
    );
    pool.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn main() -> BoxResult<()> {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let rows: usize = std::env::var("OUTBOX_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if !skip("throughput") {
            throughput(rows).await?;
        }
        if !skip("latency") {
            println!(
                "## Commit → publish latency, 1 000 events/s for 5 s, one event per transaction"
            );
            latency(Wake::InTransaction).await?;
            latency(Wake::AfterCommit).await?;

            if std::env::var("OUTBOX_BENCH_FALLBACK_MS").is_err() {
                latency(Wake::Polling).await?;
            }
        }
        if !skip("enqueue") {
            enqueue_overhead().await?;
        }
        if !skip("sqlite") {
            sqlite(rows / 4).await?;
        }
        Ok(())
    })
}
