//! The relay: claims rows, publishes them, deletes them; backs off and parks failures.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use palisade_events::{BoxFuture, Envelope, Publisher};
use palisade_resilience::backoff::Backoff;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::outbox::Outbox;
use crate::store::{Backlog, Claimed, Failure, OutboxPool, Outcome, Store, error_chain};

/// Where a test can stop a relay mid-batch (fault injection; not a public API).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Rows are claimed, nothing is published yet.
    Claimed,
    /// Rows are published, not yet deleted.
    Published,
}

/// A test hook awaited at each [`FaultPoint`] (fault injection; not a public API).
#[doc(hidden)]
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> BoxFuture<'static, ()> + Send + Sync>;

/// Relay settings, with their defaults.
#[derive(Clone, Debug)]
struct Config {
    batch_size: usize,
    lease: Duration,
    poll_interval: Duration,
    max_attempts: u32,
    backoff: Backoff,
    error_backoff: Backoff,
    stats_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_size: 500,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            backoff: Backoff::exponential(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(300)),
            error_backoff: Backoff::exponential(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5)),
            stats_interval: Duration::from_secs(5),
        }
    }
}

/// Builds a [`Relay`]; every setting is checked by [`build`](Self::build).
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::Envelope;
/// use palisade_events::backend::memory::MemoryBus;
/// use palisade_outbox::{Outbox, Relay};
///
/// // One in-memory SQLite connection and the in-memory bus: no server needed.
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = Outbox::new();
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// tx.commit().await?;
/// let mut relay = Relay::builder(&outbox, &pool, MemoryBus::new())
///     .batch_size(500)
///     .max_attempts(10)
///     .build()?;
/// let report = relay.run_once().await?;
/// assert_eq!((report.claimed, report.published), (1, 1));
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[must_use]
pub struct RelayBuilder<S, P> {
    outbox: Outbox,
    store: S,
    publisher: P,
    config: Config,
    hook: Option<FaultHook>,
}

impl<S: Store, P: Publisher> RelayBuilder<S, P> {
    /// Rows claimed and published per batch (default 500: large enough that the claim
    /// and delete statements cost little per row, small enough that a batch finishes
    /// well within its lease). Must be at least 1.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).batch_size(200).build()?;
    /// assert!(format!("{relay:?}").contains("batch_size: 200"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.config.batch_size = rows;
        self
    }

    /// How long a claim is good for (default 30 s). A relay that hangs or loses the
    /// database for longer loses its rows to the other relays, which publish them
    /// again (at least once). The relay stops publishing a batch once three quarters of
    /// the lease are gone. Must be at least 100 ms.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).lease(Duration::from_secs(60)).build()?;
    /// assert!(format!("{relay:?}").contains("lease: 60s"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often to look for rows without a wake-up (default 1 s). On PostgreSQL,
    /// LISTEN/NOTIFY wakes the relay within milliseconds and polling is the fallback;
    /// SQLite has no notifications, so set it to the latency you want there. Must not
    /// be zero.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).poll_interval(Duration::from_millis(250)).build()?;
    /// assert!(format!("{relay:?}").contains("poll_interval: 250ms"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Failed publishes after which a row is parked as dead (default 10). Only errors
    /// that will repeat (`!is_transient()`, e.g. a payload the broker refuses) count
    /// toward parking; a broker that is down is waited for, however long, so an outage
    /// parks nothing. Must be at least 1.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).max_attempts(3).build()?;
    /// assert!(format!("{relay:?}").contains("max_attempts: 3"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The delay before a failed row is tried again, by attempt (default exponential
    /// from 1 s, capped at 5 min). Jitter is not applied: rows back off by their nominal
    /// delay.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).backoff(Backoff::constant(Duration::from_secs(2))).build()?;
    /// assert!(format!("{relay:?}").contains("base: 2s"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The delay after a database error before the relay tries again (default
    /// exponential from 100 ms, capped at 5 s).
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).error_backoff(Backoff::constant(Duration::from_millis(700))).build()?;
    /// assert!(format!("{relay:?}").contains("base: 700ms"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn error_backoff(mut self, backoff: Backoff) -> Self {
        self.config.error_backoff = backoff;
        self
    }

    /// How often the running relay counts the backlog for [`Relay::stats`] (default
    /// 5 s; the count reads the whole table's live rows).
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).stats_interval(Duration::from_secs(15)).build()?;
    /// assert!(format!("{relay:?}").contains("stats_interval: 15s"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.config.stats_interval = interval;
        self
    }

    #[doc(hidden)]
    pub fn fault_hook(mut self, hook: FaultHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Checks the settings and builds the relay.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
    /// assert_eq!(relay.stats().published, 0);
    /// // Settings are checked here: a zero batch is an error, not a relay that never moves.
    /// assert!(Relay::builder(&outbox, &pool, MemoryBus::new()).batch_size(0).build().is_err());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn build(self) -> Result<Relay<S, P>, Error> {
        let c = &self.config;
        if c.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        if c.lease < Duration::from_millis(100) {
            return Err(Error::Config("lease must be at least 100 ms".into()));
        }
        if c.poll_interval.is_zero() || c.stats_interval.is_zero() {
            return Err(Error::Config(
                "poll_interval and stats_interval must not be zero".into(),
            ));
        }
        if c.max_attempts == 0 {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        c.backoff
            .validate()
            .and(c.error_backoff.validate())
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Relay {
            stats: Arc::new(Shared::new(self.outbox.table().to_owned())),
            outbox: self.outbox,
            store: self.store,
            publisher: self.publisher,
            config: self.config,
            hook: self.hook,
        })
    }
}

/// Publishes outbox rows through a [`Publisher`]: at least once, in order per key.
///
/// A relay loops: claim a batch (see the [crate docs](crate) for how PostgreSQL and
/// SQLite claims work), publish it grouped by topic with
/// [`Publisher::publish_batch`], delete what the broker confirmed, record what failed.
/// Run as many relays as you like over one table; per key, one relay publishes at a
/// time, in `seq` order.
///
/// ```no_run
/// use std::sync::Arc;
/// use palisade_events::{DynPublisher, Envelope, Error, Publisher};
/// use palisade_outbox::{Outbox, Relay};
///
/// struct Stdout;
/// impl Publisher for Stdout {
///     async fn publish(&self, topic: &str, e: Envelope) -> Result<(), Error> {
///         println!("{topic}: {}", e.event_type);
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), palisade_outbox::Error> {
/// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let outbox = Outbox::new();
/// outbox.migrate(&pool).await?;
/// let relay = Relay::builder(&outbox, &pool, Stdout).batch_size(1000).build()?;
/// let handle = relay.spawn();
/// // ... serve ...
/// println!("{:?}", handle.stats());
/// handle.shutdown().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Failures
///
/// A batch the broker refuses is retried row by row to find the rows at fault. A
/// failed row backs off ([`RelayBuilder::backoff`]) and blocks later rows of its key
/// (order per key) but no other key; after [`RelayBuilder::max_attempts`] failures
/// that will repeat, it is parked as dead: kept, listed by [`Outbox::dead_rows`],
/// published again after [`Outbox::redrive`]. A dead row keeps blocking its key, so
/// nothing of that key overtakes it.
///
/// # Shutdown and cancellation
///
/// [`RelayHandle::shutdown`] lets the batch in hand finish (publish and delete) and
/// stops. Dropping or aborting a relay mid-batch loses nothing: its claim ends
/// (PostgreSQL: the server rolls back its transaction; SQLite: its lease expires) and
/// another relay publishes the rows again.
pub struct Relay<S, P> {
    outbox: Outbox,
    store: S,
    publisher: P,
    config: Config,
    hook: Option<FaultHook>,
    stats: Arc<Shared>,
}

impl<S, P> std::fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.outbox.table())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one batch did, as returned by [`Relay::run_once`].
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::Envelope;
/// use palisade_events::backend::memory::MemoryBus;
/// use palisade_outbox::{Outbox, Relay};
///
/// // One in-memory SQLite connection and the in-memory bus: no server needed.
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = Outbox::new();
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// tx.commit().await?;
/// let mut relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
/// let first = relay.run_once().await?;
/// assert_eq!((first.claimed, first.published, first.failed, first.parked), (1, 1, 0, 0));
/// assert_eq!(relay.run_once().await?.claimed, 0); // nothing left
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and deleted.
    pub published: usize,
    /// Rows whose publish failed (backing off or parked).
    pub failed: usize,
    /// Of the failed rows, those parked as dead.
    pub parked: usize,
    /// Rows released untried (a failing earlier row of their key, or the lease ran
    /// short).
    pub released: usize,
}

impl Relay<(), ()> {
    /// Starts building a relay for `outbox` in `pool` (a `sqlx::PgPool` or
    /// `sqlx::SqlitePool`) that publishes through `publisher`.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
    /// assert!(format!("{relay:?}").contains("palisade_outbox"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn builder<D: OutboxPool, P: Publisher>(
        outbox: &Outbox,
        pool: &D,
        publisher: P,
    ) -> RelayBuilder<D::Store, P> {
        RelayBuilder {
            outbox: outbox.clone(),
            store: pool.store(outbox),
            publisher,
            config: Config::default(),
            hook: None,
        }
    }
}

impl<S: Store, P: Publisher> Relay<S, P> {
    /// A snapshot of what this relay has done and what is waiting.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let mut relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
    /// relay.run_once().await?;
    /// assert_eq!(relay.stats().published, 0);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn stats(&self) -> RelayStats {
        self.stats.snapshot()
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch in hand and returns.
    ///
    /// Database errors do not stop it: it logs them, backs off and reconnects.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// shutdown.cancel(); // cancelled before it starts: returns at once
    /// relay.run(shutdown).await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut errors: u32 = 0;
        let mut last_count: Option<Instant> = None;
        tracing::info!(table = self.outbox.table(), "outbox relay started");
        while !shutdown.is_cancelled() {
            if last_count.is_none_or(|t| t.elapsed() >= self.config.stats_interval) {
                last_count = Some(Instant::now());
                match self.store.backlog().await {
                    Ok(backlog) => self.stats.set_backlog(backlog),
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "counting the outbox backlog failed")
                    }
                }
            }
            match self.run_once().await {
                Ok(report) => {
                    errors = 0;
                    if report.claimed >= self.config.batch_size {
                        continue;
                    }
                }
                Err(error) => {
                    errors = errors.saturating_add(1);
                    self.stats.record_error(&error);
                    tracing::warn!(error = %error_chain(&error), "outbox relay batch failed");
                    let delay = self.config.error_backoff.nominal_delay(errors);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = self.store.wait(self.config.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
        self.store.abandon().await;
        tracing::info!(table = self.outbox.table(), "outbox relay stopped");
        Ok(())
    }

    /// Spawns [`run`](Self::run) on the current tokio runtime.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let handle = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?.spawn();
    /// assert_eq!(handle.stats().errors, 0);
    /// handle.shutdown().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn spawn(self) -> RelayHandle {
        let shutdown = CancellationToken::new();
        let stats = Arc::clone(&self.stats);
        let task = tokio::spawn(self.run(shutdown.clone()));
        RelayHandle {
            shutdown,
            stats,
            task: Some(task),
        }
    }

    /// Claims, publishes and finishes one batch. Useful to drain a table from a job or a
    /// test; [`run`](Self::run) calls it in a loop.
    ///
    /// # Cancellation
    ///
    /// Dropping the future mid-batch loses nothing: the rows' claim is ended by the next
    /// call (or by the server, or the lease) and they are published again.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let mut relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
    /// let report = relay.run_once().await?;
    /// assert_eq!(report.claimed, 0); // an empty outbox
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn run_once(&mut self) -> Result<BatchReport, Error> {
        let started = Instant::now();
        let rows = self
            .store
            .claim(self.config.batch_size, self.config.lease)
            .await?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let claimed = rows.len();
        let span = tracing::debug_span!("outbox.batch", table = self.outbox.table(), claimed);
        async {
            let hook = self.hook.clone();
            fault(hook.as_ref(), FaultPoint::Claimed).await;
            let deadline = started + self.config.lease.mul_f64(0.75);
            let outcome = Publishing {
                publisher: &self.publisher,
                config: &self.config,
            }
            .publish(rows, deadline)
            .await;
            fault(hook.as_ref(), FaultPoint::Published).await;
            self.store.finish(&outcome).await?;
            let parked = outcome.failed.iter().filter(|f| f.dead).count();
            let report = BatchReport {
                claimed,
                published: outcome.published.len(),
                failed: outcome.failed.len(),
                parked,
                released: outcome.released.len(),
            };
            self.stats.record_batch(&report, started.elapsed());
            tracing::debug!(
                published = report.published,
                failed = report.failed,
                parked = report.parked,
                released = report.released,
                "outbox batch done"
            );
            Ok(report)
        }
        .instrument(span)
        .await
    }
}

async fn fault(hook: Option<&FaultHook>, point: FaultPoint) {
    if let Some(hook) = hook {
        hook(point).await;
    }
}

/// The publishing half of a batch: borrows only what is `Sync`.
struct Publishing<'a, P> {
    publisher: &'a P,
    config: &'a Config,
}

impl<P: Publisher> Publishing<'_, P> {
    /// Publishes claimed rows grouped by topic, keeping `seq` order within a topic and
    /// never publishing a row after a failed earlier row of its key.
    async fn publish(&self, rows: Vec<Claimed>, deadline: Instant) -> Outcome {
        let mut outcome = Outcome::default();
        let mut blocked: HashSet<String> = HashSet::new();
        for (topic, group) in group_by_topic(rows) {
            let (ready, held): (Vec<Claimed>, Vec<Claimed>) = group
                .into_iter()
                .partition(|r| r.envelope.key.as_ref().is_none_or(|k| !blocked.contains(k)));
            outcome.released.extend(held.iter().map(|r| r.seq));
            if ready.is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    topic,
                    rows = ready.len(),
                    "outbox lease running short; releasing rows"
                );
                outcome.released.extend(ready.iter().map(|r| r.seq));
                continue;
            }
            let envelopes: Vec<Envelope> = ready.iter().map(|r| r.envelope.clone()).collect();
            let result = tokio::time::timeout(
                deadline - now,
                self.publisher.publish_batch(&topic, envelopes),
            )
            .await;
            match result {
                Ok(Ok(())) => outcome.published.extend(ready.iter().map(|r| r.seq)),
                Ok(Err(error)) if error.is_transient() || ready.len() == 1 => {
                    for row in &ready {
                        self.fail(&mut outcome, &mut blocked, &topic, row, &error);
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(topic, error = %error_chain(&error), "outbox batch refused; publishing row by row");
                    self.publish_one_by_one(&mut outcome, &mut blocked, &topic, ready, deadline)
                        .await;
                }
                Err(_elapsed) => {
                    let error = palisade_events::Error::NotConfirmed {
                        reason: "publish did not finish within the outbox lease".into(),
                    };
                    for row in &ready {
                        self.fail(&mut outcome, &mut blocked, &topic, row, &error);
                    }
                }
            }
        }
        outcome
    }

    async fn publish_one_by_one(
        &self,
        outcome: &mut Outcome,
        blocked: &mut HashSet<String>,
        topic: &str,
        rows: Vec<Claimed>,
        deadline: Instant,
    ) {
        for row in rows {
            let now = Instant::now();
            if now >= deadline
                || row
                    .envelope
                    .key
                    .as_ref()
                    .is_some_and(|k| blocked.contains(k))
            {
                outcome.released.push(row.seq);
                continue;
            }
            let result = tokio::time::timeout(
                deadline - now,
                self.publisher.publish(topic, row.envelope.clone()),
            )
            .await;
            match result {
                Ok(Ok(())) => outcome.published.push(row.seq),
                Ok(Err(error)) => self.fail(outcome, blocked, topic, &row, &error),
                Err(_elapsed) => {
                    let error = palisade_events::Error::NotConfirmed {
                        reason: "publish did not finish within the outbox lease".into(),
                    };
                    self.fail(outcome, blocked, topic, &row, &error);
                }
            }
        }
    }

    fn fail(
        &self,
        outcome: &mut Outcome,
        blocked: &mut HashSet<String>,
        topic: &str,
        row: &Claimed,
        error: &palisade_events::Error,
    ) {
        let attempts = row.attempts.saturating_add(1);
        let transient = error.is_transient();
        let dead =
            !transient && u32::try_from(attempts).unwrap_or(u32::MAX) >= self.config.max_attempts;
        let delay = self
            .config
            .backoff
            .nominal_delay(u32::try_from(attempts).unwrap_or(u32::MAX));
        let next_attempt_at =
            Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let message = error_chain(error);
        if dead {
            tracing::error!(topic, seq = row.seq, event_id = %row.envelope.id, attempts, error = %message, "outbox row parked as dead");
        } else {
            tracing::warn!(topic, seq = row.seq, event_id = %row.envelope.id, attempts, transient, error = %message, "outbox publish failed; backing off");
        }
        if let Some(key) = &row.envelope.key {
            blocked.insert(key.clone());
        }
        outcome.failed.push(Failure {
            seq: row.seq,
            attempts,
            error: message,
            next_attempt_at,
            dead,
        });
    }
}

/// Splits rows (in `seq` order) into per-topic groups, in order of each topic's first
/// row, each keeping `seq` order.
fn group_by_topic(rows: Vec<Claimed>) -> Vec<(String, Vec<Claimed>)> {
    let mut groups: Vec<(String, Vec<Claimed>)> = Vec::new();
    for row in rows {
        match groups.iter_mut().find(|(t, _)| *t == row.topic) {
            Some((_, group)) => group.push(row),
            None => groups.push((row.topic.clone(), vec![row])),
        }
    }
    groups
}

/// A running relay, from [`Relay::spawn`]. Dropping it asks the relay to stop after
/// its current batch (like [`shutdown`](Self::shutdown), without waiting).
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::Envelope;
/// use palisade_events::backend::memory::MemoryBus;
/// use palisade_outbox::{Outbox, Relay};
///
/// // One in-memory SQLite connection and the in-memory bus: no server needed.
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = Outbox::new();
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// tx.commit().await?;
/// use std::time::Duration;
/// let handle = Relay::builder(&outbox, &pool, MemoryBus::new())
///     .poll_interval(Duration::from_millis(10))
///     .build()?
///     .spawn(); // runs in the background until shut down
/// while outbox.backlog(&pool).await?.pending > 0 {
///     tokio::time::sleep(Duration::from_millis(10)).await;
/// }
/// assert_eq!(handle.stats().published, 1);
/// handle.shutdown().await?; // finishes the batch in hand, then returns
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct RelayHandle {
    shutdown: CancellationToken,
    stats: Arc<Shared>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl RelayHandle {
    /// A snapshot of what the relay has done and what is waiting.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let handle = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?.spawn();
    /// let stats = handle.stats();
    /// assert_eq!((stats.published, stats.failed, stats.parked), (0, 0, 0));
    /// handle.shutdown().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn stats(&self) -> RelayStats {
        self.stats.snapshot()
    }

    /// Asks the relay to stop, lets it finish the batch in hand, and waits for it.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let handle = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?.spawn();
    /// // Finishes the batch in hand, then returns what the relay returned.
    /// assert!(handle.shutdown().await.is_ok());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Kills the relay task where it stands (as a crash would): its claimed rows are
    /// published again by another relay once its claim ends.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::MemoryBus;
    /// use palisade_outbox::{Outbox, Relay};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let handle = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?.spawn();
    /// // Stops at once, mid-batch if need be: claimed rows go to another relay, none is lost.
    /// handle.abort();
    /// assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a relay has done and what is waiting, from [`Relay::stats`] or
/// [`RelayHandle::stats`].
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::Envelope;
/// use palisade_events::backend::memory::MemoryBus;
/// use palisade_outbox::{Outbox, Relay};
///
/// // One in-memory SQLite connection and the in-memory bus: no server needed.
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = Outbox::new();
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// tx.commit().await?;
/// let mut relay = Relay::builder(&outbox, &pool, MemoryBus::new()).build()?;
/// relay.run_once().await?;
/// let stats = relay.stats();
/// assert_eq!((stats.published, stats.failed, stats.parked, stats.errors), (1, 0, 0, 0));
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published (and deleted) since the relay started.
    pub published: u64,
    /// Failed publishes since the relay started.
    pub failed: u64,
    /// Rows parked as dead since the relay started.
    pub parked: u64,
    /// Batches claimed.
    pub batches: u64,
    /// Database errors (each followed by a back-off and a reconnect).
    pub errors: u64,
    /// Rows published per second over the last ten seconds.
    pub published_per_second: f64,
    /// The table's backlog at the last count (every `stats_interval`), if counted yet.
    pub backlog: Option<Backlog>,
    /// How long the oldest pending row has been waiting, as of that count.
    pub oldest_age: Option<Duration>,
    /// The last database error, rendered.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    table: String,
    published: AtomicU64,
    failed: AtomicU64,
    parked: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    slow: Mutex<Slow>,
}

#[derive(Debug, Default)]
struct Slow {
    samples: VecDeque<(Instant, u64)>,
    backlog: Option<(Backlog, chrono::DateTime<Utc>)>,
    last_error: Option<String>,
}

const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Shared {
    fn new(table: String) -> Self {
        Self {
            table,
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            slow: Mutex::new(Slow::default()),
        }
    }

    fn record_batch(&self, report: &BatchReport, took: Duration) {
        let published = self
            .published
            .fetch_add(report.published as u64, Ordering::Relaxed)
            + report.published as u64;
        self.failed
            .fetch_add(report.failed as u64, Ordering::Relaxed);
        self.parked
            .fetch_add(report.parked as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slow) = self.slow.lock() {
            let now = Instant::now();
            slow.samples.push_back((now, published));
            while slow
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
                && slow.samples.len() > 2
            {
                slow.samples.pop_front();
            }
        }
        #[cfg(feature = "metrics")]
        {
            let table = self.table.clone();
            metrics::counter!("palisade_outbox_published_total", "table" => table.clone())
                .increment(report.published as u64);
            metrics::counter!("palisade_outbox_failed_total", "table" => table.clone())
                .increment(report.failed as u64);
            metrics::counter!("palisade_outbox_parked_total", "table" => table.clone())
                .increment(report.parked as u64);
            metrics::histogram!("palisade_outbox_batch_seconds", "table" => table)
                .record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (took, &self.table);
    }

    fn record_error(&self, error: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slow) = self.slow.lock() {
            slow.last_error = Some(error_chain(error));
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_outbox_errors_total", "table" => self.table.clone())
            .increment(1);
    }

    fn set_backlog(&self, backlog: Backlog) {
        let now = Utc::now();
        #[cfg(feature = "metrics")]
        {
            let table = self.table.clone();
            metrics::gauge!("palisade_outbox_backlog", "table" => table.clone())
                .set(backlog.pending as f64);
            metrics::gauge!("palisade_outbox_dead", "table" => table.clone())
                .set(backlog.dead as f64);
            metrics::gauge!("palisade_outbox_oldest_age_seconds", "table" => table)
                .set(backlog.oldest_age(now).map_or(0.0, |age| age.as_secs_f64()));
        }
        tracing::debug!(
            table = self.table,
            pending = backlog.pending,
            dead = backlog.dead,
            oldest_age_ms = backlog.oldest_age(now).map(|a| a.as_millis() as u64),
            "outbox backlog"
        );
        if let Ok(mut slow) = self.slow.lock() {
            slow.backlog = Some((backlog, now));
        }
    }

    fn snapshot(&self) -> RelayStats {
        let (rate, backlog, oldest_age, last_error) = match self.slow.lock() {
            Ok(slow) => {
                let rate = match (slow.samples.front(), slow.samples.back()) {
                    (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                        (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
                    }
                    _ => 0.0,
                };
                let backlog = slow.backlog.map(|(b, _)| b);
                let age = slow.backlog.and_then(|(b, at)| b.oldest_age(at));
                (rate, backlog, age, slow.last_error.clone())
            }
            Err(_) => (0.0, None, None, None),
        };
        RelayStats {
            published: self.published.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            published_per_second: rate,
            backlog,
            oldest_age,
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(seq: i64, topic: &str, key: &str) -> Claimed {
        Claimed {
            seq,
            topic: topic.into(),
            envelope: Envelope::new("t", "s", Vec::new()).with_key(key),
            attempts: 0,
        }
    }

    #[test]
    fn groups_keep_seq_order_within_a_topic() {
        let rows = vec![
            claimed(1, "a", "k"),
            claimed(2, "b", "k"),
            claimed(3, "a", "j"),
            claimed(4, "b", "j"),
        ];
        let groups = group_by_topic(rows);
        let shape: Vec<(String, Vec<i64>)> = groups
            .into_iter()
            .map(|(t, g)| (t, g.iter().map(|r| r.seq).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![("a".into(), vec![1, 3]), ("b".into(), vec![2, 4])]
        );
    }

    #[test]
    fn published_rate_is_measured_over_the_window() {
        let shared = Shared::new("t".into());
        let report = BatchReport {
            claimed: 10,
            published: 10,
            ..BatchReport::default()
        };
        shared.record_batch(&report, Duration::ZERO);
        let snap = shared.snapshot();
        assert_eq!(snap.published, 10);
        assert_eq!(snap.batches, 1);
        assert!(snap.published_per_second.abs() < f64::EPSILON);
    }
}
