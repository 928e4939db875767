//! What a relay needs from a database, implemented for PostgreSQL and SQLite.
//!
//! These traits are sealed: the crate implements them for `sqlx::PgPool`,
//! `sqlx::SqlitePool`, their connections and transactions.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use palisade_events::Envelope;

use crate::error::Error;
use crate::outbox::Outbox;

pub(crate) mod sealed {
    /// Seals [`OutboxConnection`](super::OutboxConnection) and
    /// [`OutboxPool`](super::OutboxPool).
    pub trait Sealed {}
}

/// A connection or transaction an event can be enqueued on:
/// `sqlx::Transaction<'_, Postgres>`, `sqlx::PgConnection`,
/// `sqlx::Transaction<'_, Sqlite>`, `sqlx::SqliteConnection`.
///
/// Sealed; see [`Outbox::enqueue`].
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # mod demo {
/// use palisade_events::Envelope;
/// use palisade_outbox::{Error, Outbox, OutboxConnection};
///
/// /// Works with a transaction or a plain connection, on either database.
/// async fn record<C: OutboxConnection + ?Sized>(outbox: &Outbox, conn: &mut C) -> Result<(), Error> {
///     outbox.enqueue(conn, "audit", &Envelope::new("audit.entry", "shop", "{}")).await
/// }
/// # }
/// # fn main() {}
/// ```
pub trait OutboxConnection: sealed::Sealed + Send {
    #[doc(hidden)]
    fn insert<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        topic: &'a str,
        envelopes: &'a [Envelope],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
}

/// A connection pool an outbox lives in (`sqlx::PgPool`, `sqlx::SqlitePool`): runs the
/// migrations, answers backlog and dead-row queries, and gives relays their store.
///
/// Sealed; see [`Outbox::migrate`], [`Outbox::backlog`], [`Outbox::dead_rows`],
/// [`Outbox::redrive`] and [`Relay::builder`](crate::Relay::builder).
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # mod demo {
/// use palisade_outbox::{Error, Outbox, OutboxPool};
///
/// /// Startup for either database: create the table, then report what is waiting.
/// async fn start<P: OutboxPool>(outbox: &Outbox, pool: &P) -> Result<u64, Error> {
///     outbox.migrate(pool).await?;
///     Ok(outbox.backlog(pool).await?.pending)
/// }
/// # }
/// # fn main() {}
/// ```
pub trait OutboxPool: sealed::Sealed + Clone + Send + Sync + 'static {
    #[doc(hidden)]
    type Store: Store;

    #[doc(hidden)]
    fn store(&self, outbox: &Outbox) -> Self::Store;

    #[doc(hidden)]
    fn migrate_outbox<'a>(
        &'a self,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;

    #[doc(hidden)]
    fn backlog<'a>(
        &'a self,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<Backlog, Error>> + Send + 'a;

    #[doc(hidden)]
    fn dead_rows<'a>(
        &'a self,
        outbox: &'a Outbox,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, Error>> + Send + 'a;

    #[doc(hidden)]
    fn wake<'a>(
        &'a self,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;

    #[doc(hidden)]
    fn redrive<'a>(
        &'a self,
        outbox: &'a Outbox,
        ids: &'a [uuid::Uuid],
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a;
}

/// A relay's view of the table: claim, finish, wait. Not for use outside the crate.
#[doc(hidden)]
pub trait Store: Send + 'static {
    /// Claims up to `limit` rows for `lease`, in `seq` order.
    fn claim(
        &mut self,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Claimed>, Error>> + Send;

    /// Deletes published rows, records failures, releases the rest.
    fn finish(&mut self, outcome: &Outcome) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases the claimed rows untouched (shutdown, or after an error).
    fn abandon(&mut self) -> impl Future<Output = ()> + Send;

    /// Waits until new rows may be there: a notification, or `poll` elapsed.
    fn wait(&mut self, poll: Duration) -> impl Future<Output = ()> + Send;

    /// Counts what is waiting.
    fn backlog(&mut self) -> impl Future<Output = Result<Backlog, Error>> + Send;
}

/// A claimed row.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The row's order.
    pub seq: i64,
    /// Where it goes.
    pub topic: String,
    /// What goes.
    pub envelope: Envelope,
    /// Failed publishes so far.
    pub attempts: i32,
}

/// What a batch did to its rows.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Published: delete.
    pub published: Vec<i64>,
    /// Failed: record.
    pub failed: Vec<Failure>,
    /// Not tried (their key was blocked, or the lease ran short): release.
    pub released: Vec<i64>,
}

/// A failed row's new state.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Failure {
    /// The row.
    pub seq: i64,
    /// The new attempt count.
    pub attempts: i32,
    /// The error, rendered with its sources.
    pub error: String,
    /// When it may be tried again.
    pub next_attempt_at: DateTime<Utc>,
    /// Parked as dead.
    pub dead: bool,
}

/// What is waiting in an outbox table.
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
/// let backlog = outbox.backlog(&pool).await?;
/// assert_eq!((backlog.pending, backlog.dead), (1, 0));
/// assert!(backlog.oldest_age(chrono::Utc::now()).is_some());
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows waiting to be published (including rows backing off after a failure).
    pub pending: u64,
    /// Rows parked as dead.
    pub dead: u64,
    /// When the oldest pending row was written.
    pub oldest: Option<DateTime<Utc>>,
}

impl Backlog {
    /// How long the oldest pending row has been waiting, as of `now`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_outbox::Backlog;
    ///
    /// let now = chrono::Utc::now();
    /// let backlog = Backlog { pending: 3, dead: 0, oldest: Some(now - chrono::Duration::seconds(90)) };
    /// assert_eq!(backlog.oldest_age(now), Some(Duration::from_secs(90)));
    /// assert_eq!(Backlog::default().oldest_age(now), None);
    /// ```
    pub fn oldest_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.oldest
            .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
    }
}

/// A stored row, as returned by [`Outbox::dead_rows`].
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
/// // Rows parked as dead after their last attempt, for an operator to read and re-drive.
/// let dead = outbox.dead_rows(&pool, 100).await?;
/// assert!(dead.is_empty());
/// let ids: Vec<_> = dead.iter().map(|row| row.envelope.id).collect();
/// assert_eq!(outbox.redrive(&pool, &ids).await?, 0);
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    /// The row's order in the table (per key, rows are published in this order).
    pub seq: i64,
    /// The topic it is published to.
    pub topic: String,
    /// The event.
    pub envelope: Envelope,
    /// Failed publishes so far.
    pub attempts: u32,
    /// The last publish error.
    pub last_error: Option<String>,
    /// Parked as dead: the relay no longer tries it until [`Outbox::redrive`].
    pub dead: bool,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Renders an error with its chain of sources, for `last_error`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Outbox {
    /// Writes `envelope` to the outbox for `topic`, on the caller's own transaction (or
    /// connection), so it commits or rolls back with the business data.
    ///
    /// The topic and payload size are checked first: an empty topic or a payload over
    /// [`max_payload`](Self::max_payload) returns an error and writes nothing, so the
    /// transaction is untouched and may go on. On PostgreSQL the same statement calls
    /// `pg_notify` (delivered at commit, collapsed to one per transaction) to wake the
    /// relays, unless [`with_notify(false)`](Self::with_notify).
    ///
    /// One `INSERT`, one round trip. A database error on PostgreSQL aborts the caller's
    /// transaction, as any failed statement does.
    ///
    /// # Cancellation
    ///
    /// Dropping the future may or may not have written the row; the caller's
    /// transaction decides, as for any statement it issued.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let mut tx = pool.begin().await?;
    /// // ... the business write, then its event, in the same transaction:
    /// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
    /// tx.commit().await?;
    /// assert_eq!(outbox.backlog(&pool).await?.pending, 1);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn enqueue<C>(
        &self,
        conn: &mut C,
        topic: &str,
        envelope: &Envelope,
    ) -> Result<(), Error>
    where
        C: OutboxConnection + ?Sized,
    {
        self.validate(topic, envelope)?;
        conn.insert(self, topic, std::slice::from_ref(envelope))
            .await
    }

    /// Encodes a typed event (JSON, key from [`Event::key`](palisade_events::Event::key))
    /// and enqueues it like [`enqueue`](Self::enqueue). Returns the envelope written, so
    /// the caller knows its id.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl palisade_events::Event for Placed {
    ///     const TYPE: &'static str = "order.placed";
    ///     fn key(&self) -> Option<String> { Some(self.id.to_string()) }
    /// }
    /// let mut tx = pool.begin().await?;
    /// let envelope = outbox.enqueue_event(&mut tx, "orders", "shop", &Placed { id: 7 }).await?;
    /// tx.commit().await?;
    /// assert_eq!(envelope.key.as_deref(), Some("7"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn enqueue_event<C, E>(
        &self,
        conn: &mut C,
        topic: &str,
        source: &str,
        event: &E,
    ) -> Result<Envelope, Error>
    where
        C: OutboxConnection + ?Sized,
        E: palisade_events::Event,
    {
        let envelope = Self::envelope_for(event, source)?;
        self.enqueue(conn, topic, &envelope).await?;
        Ok(envelope)
    }

    /// Enqueues several envelopes for one topic in one multi-row `INSERT` (PostgreSQL:
    /// one statement whatever the count; SQLite: one statement per 500 rows). Every
    /// envelope is checked before anything is written; per key, they are published in
    /// slice order.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let events: Vec<Envelope> = (0..3)
    ///     .map(|n| Envelope::new("order.placed", "shop", "{}").with_key(n.to_string()))
    ///     .collect();
    /// let mut tx = pool.begin().await?;
    /// outbox.enqueue_batch(&mut tx, "orders", &events).await?; // one statement
    /// tx.commit().await?;
    /// assert_eq!(outbox.backlog(&pool).await?.pending, 3);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn enqueue_batch<C>(
        &self,
        conn: &mut C,
        topic: &str,
        envelopes: &[Envelope],
    ) -> Result<(), Error>
    where
        C: OutboxConnection + ?Sized,
    {
        for envelope in envelopes {
            self.validate(topic, envelope)?;
        }
        if envelopes.is_empty() {
            return Ok(());
        }
        conn.insert(self, topic, envelopes).await
    }

    /// Creates (or brings up to date) the outbox table: one call, safe to repeat.
    ///
    /// Runs a [`sqlx::migrate::Migrator`] built from the SQL files shipped in the crate
    /// (`migrations/postgres`, `migrations/sqlite`, embedded with `include_str!`),
    /// rendered for this table and tracked in `_sqlx_migrations` under versions derived
    /// from the table name (see [`postgres_migrations`](Self::postgres_migrations) to
    /// fold them into your own migrator instead). The migrator ignores versions it does
    /// not know; if your own migrator shares the database, set
    /// `set_ignore_missing(true)` on it too.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// outbox.migrate(&pool).await?; // idempotent: already done above
    /// assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn migrate<P: OutboxPool>(&self, pool: &P) -> Result<(), Error> {
        pool.migrate_outbox(self).await
    }

    /// Counts pending and dead rows and finds the oldest pending one.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// let mut tx = pool.begin().await?;
    /// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}")).await?;
    /// tx.commit().await?;
    /// let backlog = outbox.backlog(&pool).await?;
    /// assert_eq!((backlog.pending, backlog.dead), (1, 0));
    /// assert!(backlog.oldest.is_some());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn backlog<P: OutboxPool>(&self, pool: &P) -> Result<Backlog, Error> {
        pool.backlog(self).await
    }

    /// The rows parked as dead, oldest first, at most `limit`.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// // Rows parked after `max_attempts` failed publishes, oldest first, for inspection.
    /// assert!(outbox.dead_rows(&pool, 100).await?.is_empty());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn dead_rows<P: OutboxPool>(
        &self,
        pool: &P,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, Error> {
        pool.dead_rows(self, limit).await
    }

    /// Wakes the relays now (PostgreSQL: a `pg_notify` in its own transaction, committed
    /// without waiting for the disk; SQLite: nothing, relays poll).
    ///
    /// For applications that commit many outbox transactions concurrently: a `NOTIFY`
    /// inside a transaction makes PostgreSQL take a database-wide lock at commit and
    /// hold it until the commit is on disk, so notifying transactions commit one at a
    /// time. Build the outbox [`with_notify(false)`](Self::with_notify) and call `wake`
    /// after your commit instead: same wake-up, no serialized commits.
    ///
    /// ```rust,no_run
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// // Notify relays after the commit instead of inside the transaction.
    /// let outbox = Outbox::new().with_notify(false);
    /// let mut tx = pool.begin().await?;
    /// outbox.enqueue(&mut tx, "orders", &Envelope::new("order.placed", "shop", "{}")).await?;
    /// tx.commit().await?;
    /// outbox.wake(&pool).await?;
    /// assert!(!outbox.notifies());
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn wake<P: OutboxPool>(&self, pool: &P) -> Result<(), Error> {
        pool.wake(self).await
    }

    /// Re-drives dead rows by event id: they become pending again with their attempt
    /// count reset, and the relay publishes them (before later rows of their key).
    /// Returns how many rows were re-driven.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use palisade_events::Envelope;
    /// use palisade_outbox::Outbox;
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// let outbox = Outbox::new();
    /// outbox.migrate(&pool).await?;
    /// // After fixing what made them fail: put parked rows back in line.
    /// let dead = outbox.dead_rows(&pool, 100).await?;
    /// let ids: Vec<uuid::Uuid> = dead.iter().map(|row| row.envelope.id).collect();
    /// assert_eq!(outbox.redrive(&pool, &ids).await?, 0); // none parked here
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn redrive<P: OutboxPool>(&self, pool: &P, ids: &[uuid::Uuid]) -> Result<u64, Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        pool.redrive(self, ids).await
    }
}
