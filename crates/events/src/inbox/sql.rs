//! The transactional inbox on PostgreSQL and SQLite.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migration, MigrationSource, MigrationType, Migrator};
use uuid::Uuid;

use crate::consumer::Context;
use crate::error::Error;
use crate::publisher::BoxFuture;

/// An inbox table written **inside the handler's own sqlx transaction**.
///
/// A handler that writes to PostgreSQL or SQLite records the event in the same
/// transaction as its writes: [`record`](Self::record) runs one
/// `INSERT … ON CONFLICT DO NOTHING` and says whether this is the first time. When it
/// is not, the handler returns without touching anything; when it is, the handler does
/// its work and commits both. A crash or an error before the commit rolls back both,
/// so the redelivery runs the handler again; two instances racing on the same event
/// serialize on the primary key, and only one commits a row — the effect happens
/// exactly once.
///
/// The table ships as SQL files (`migrations/{postgres,sqlite}` in the crate), run
/// with [`migrate`](Self::migrate); rows older than your longest redelivery window can
/// be deleted with [`delete_older_than`](Self::delete_older_than).
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::inbox::SqlInbox;
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// let pool = SqlitePoolOptions::new().connect("sqlite::memory:").await?;
/// let inbox = SqlInbox::new();
/// inbox.migrate(&pool).await?;
///
/// let event_id = uuid::Uuid::now_v7();
/// for _delivery in 0..2 {
///     let mut tx = pool.begin().await?;
///     if !inbox.record_id(&mut *tx, "billing", event_id).await? {
///         continue; // a duplicate: its effect is already committed
///     }
///     sqlx::query("SELECT 1").execute(&mut *tx).await?; // the handler's own writes
///     tx.commit().await?;
/// }
/// # Ok(())
/// # }
/// # #[cfg(feature = "sqlite")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(example())?;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqlInbox {
    inner: Arc<Statements>,
}

#[derive(Debug)]
struct Statements {
    table: String,
    name: String,
    // Both dialects are rendered up front; a build with one backend reads only its own.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    postgres_insert: String,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    postgres_delete: String,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    sqlite_insert: String,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    sqlite_delete: String,
}

impl Default for SqlInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlInbox {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "palisade_inbox";

    /// The inbox in table `palisade_inbox`.
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// assert_eq!(SqlInbox::new().table(), SqlInbox::DEFAULT_TABLE);
    /// ```
    pub fn new() -> Self {
        Self::build(Self::DEFAULT_TABLE)
    }

    /// The inbox in another table (`name` or `schema.name`: ASCII letters, digits and
    /// `_` only, since it is written into SQL).
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// assert_eq!(SqlInbox::with_table("billing.inbox")?.table(), "billing.inbox");
    /// // Written into SQL, so only plain names are accepted.
    /// assert!(SqlInbox::with_table("inbox; DROP TABLE orders").is_err());
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn with_table(table: impl Into<String>) -> Result<Self, Error> {
        let table = table.into();
        let valid = !table.is_empty()
            && table.split('.').count() <= 2
            && table.split('.').all(|part| {
                !part.is_empty()
                    && !part.starts_with(|c: char| c.is_ascii_digit())
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(Error::Config(format!("invalid inbox table name {table:?}")));
        }
        Ok(Self::build(&table))
    }

    fn build(table: &str) -> Self {
        let name = table.rsplit('.').next().unwrap_or(table).to_owned();
        Self {
            inner: Arc::new(Statements {
                postgres_insert: format!(
                    "INSERT INTO {table} (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                ),
                postgres_delete: format!("DELETE FROM {table} WHERE processed_at < $1"),
                sqlite_insert: format!(
                    "INSERT INTO {table} (consumer, event_id, processed_at) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING"
                ),
                sqlite_delete: format!("DELETE FROM {table} WHERE processed_at < ?"),
                table: table.to_owned(),
                name,
            }),
        }
    }

    /// The table name.
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// assert_eq!(SqlInbox::with_table("shop_inbox")?.table(), "shop_inbox");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Records the delivery in `ctx` for its consumer, in the caller's transaction (or
    /// connection); `true` the first time, `false` for a duplicate.
    ///
    /// Pass `&mut *tx` for a `sqlx::Transaction`. On PostgreSQL a concurrent duplicate
    /// waits here until the first transaction commits (then `false`) or rolls back
    /// (then `true`).
    ///
    /// ```rust,no_run
    /// use palisade_events::consumer::{Context, HandlerError};
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// // Inside a handler: the business write and the inbox row in one transaction.
    /// async fn handle(pool: &sqlx::PgPool, inbox: &SqlInbox, ctx: &Context) -> Result<(), HandlerError> {
    ///     let mut tx = pool.begin().await?;
    ///     if !inbox.record(&mut *tx, ctx).await? {
    ///         return Ok(()); // a duplicate: its effect is already committed
    ///     }
    ///     sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 7")
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     tx.commit().await?;
    ///     Ok(())
    /// }
    /// # fn main() {}
    /// ```
    pub async fn record<C: InboxConnection + ?Sized>(
        &self,
        conn: &mut C,
        ctx: &Context,
    ) -> Result<bool, Error> {
        self.record_id(conn, ctx.consumer(), ctx.event_id()).await
    }

    /// [`record`](Self::record) with an explicit consumer name and event id.
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let inbox = SqlInbox::new();
    /// inbox.migrate(&pool).await?;
    /// let id = uuid::Uuid::now_v7();
    /// let mut tx = pool.begin().await?;
    /// assert!(inbox.record_id(&mut *tx, "billing", id).await?); // first time
    /// assert!(!inbox.record_id(&mut *tx, "billing", id).await?); // a duplicate
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn record_id<C: InboxConnection + ?Sized>(
        &self,
        conn: &mut C,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, Error> {
        let inserted = conn
            .insert_row(&self.inner, consumer, event_id)
            .await
            .map_err(|e| Error::Inbox(Box::new(e)))?;
        Ok(inserted == 1)
    }

    /// Deletes rows recorded more than `age` ago; returns how many. Keep `age` longer
    /// than any redelivery can come late (broker retention, outbox retries).
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let inbox = SqlInbox::new();
    /// inbox.migrate(&pool).await?;
    /// let mut conn = pool.acquire().await?;
    /// inbox.record_id(&mut *conn, "billing", uuid::Uuid::now_v7()).await?;
    /// // Nothing is a week old yet.
    /// let deleted = inbox.delete_older_than(&mut *conn, std::time::Duration::from_secs(7 * 86_400)).await?;
    /// assert_eq!(deleted, 0);
    /// # Ok(()) }
    /// ```
    pub async fn delete_older_than<C: InboxConnection + ?Sized>(
        &self,
        conn: &mut C,
        age: Duration,
    ) -> Result<u64, Error> {
        let age = chrono::Duration::from_std(age)
            .map_err(|_| Error::Config(format!("retention {age:?} is out of range")))?;
        let before = Utc::now() - age;
        conn.delete_before(&self.inner, before)
            .await
            .map_err(|e| Error::Inbox(Box::new(e)))
    }

    /// Creates the table (and index) with the shipped migrations, recorded in
    /// `_sqlx_migrations` under versions derived from the table name. Pass a pool, a
    /// connection or a transaction.
    ///
    /// The migrator ignores versions it does not know, so it shares
    /// `_sqlx_migrations` with the application's; set `ignore_missing` on the
    /// application's migrator as well, or fold these in with
    /// [`migrations`](Self::migrations).
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let inbox = SqlInbox::new();
    /// inbox.migrate(&pool).await?;
    /// inbox.migrate(&pool).await?; // idempotent
    /// let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM palisade_inbox").fetch_one(&pool).await?;
    /// assert_eq!(rows, 0);
    /// # Ok(()) }
    /// ```
    pub async fn migrate<'a, A>(&self, conn: A) -> Result<(), Error>
    where
        A: sqlx::Acquire<'a>,
        <A::Connection as Deref>::Target: Migrate + InboxConnection,
    {
        let files = <<A::Connection as Deref>::Target as InboxConnection>::MIGRATIONS;
        let mut migrator = Migrator::new(EmbeddedMigrations(self.render(files)))
            .await
            .map_err(|e| Error::Inbox(Box::new(e)))?;
        migrator.set_ignore_missing(true);
        migrator
            .run(conn)
            .await
            .map_err(|e| Error::Inbox(Box::new(e)))
    }

    /// The migrations for connection type `C` (`PgConnection` or `SqliteConnection`)
    /// rendered for this table, as `(version, description, sql)`.
    ///
    /// ```rust
    /// use palisade_events::inbox::SqlInbox;
    ///
    /// let migrations = SqlInbox::new().migrations::<sqlx::PgConnection>();
    /// assert!(!migrations.is_empty());
    /// assert!(migrations.iter().any(|(_, _, sql)| sql.contains("palisade_inbox")));
    /// ```
    pub fn migrations<C: InboxConnection + ?Sized>(&self) -> Vec<(i64, String, String)> {
        self.render(C::MIGRATIONS)
    }

    fn render(&self, files: &[(&'static str, &'static str)]) -> Vec<(i64, String, String)> {
        // FNV-1a of the table name: stable across builds, so the versions are too.
        let mut h: u32 = 0x811c_9dc5;
        for b in self.inner.table.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let base = 8_000_000_000_000_i64 + i64::from(h % 1_000_000) * 100;
        files
            .iter()
            .zip(1_i64..)
            .map(|((description, sql), n)| {
                (
                    base + n,
                    format!("{description} ({})", self.inner.table),
                    sql.replace("{{table}}", &self.inner.table)
                        .replace("{{name}}", &self.inner.name),
                )
            })
            .collect()
    }
}

/// Migrations embedded in the binary (`include_str!`) and rendered for one table, as
/// `(version, description, sql)`: the migration source of the SQL inbox, and of
/// palisade-outbox's table, which shares it rather than keeping a copy. Not a stable
/// API.
#[doc(hidden)]
#[derive(Debug)]
pub struct EmbeddedMigrations(pub Vec<(i64, String, String)>);

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>>
    {
        Box::pin(async move {
            Ok(self
                .0
                .into_iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Owned(description),
                        MigrationType::Simple,
                        Cow::Owned(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A database connection the [`SqlInbox`] can write to: `PgConnection` (feature
/// `postgres`) and `SqliteConnection` (feature `sqlite`). Transactions deref to them.
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::inbox::SqlInbox;
///
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let inbox = SqlInbox::new();
/// inbox.migrate(&pool).await?;
/// let id = uuid::Uuid::now_v7();
/// // In the handler's own transaction: the inbox row commits with the handler's writes.
/// let mut tx = pool.begin().await?;
/// assert!(inbox.record_id(&mut *tx, "mailer", id).await?); // first time: do the work
/// tx.commit().await?;
/// let mut tx = pool.begin().await?;
/// assert!(!inbox.record_id(&mut *tx, "mailer", id).await?); // a duplicate: skip
/// tx.commit().await?;
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub trait InboxConnection: Send {
    /// The shipped migrations for this database, `(description, sql)`.
    #[doc(hidden)]
    const MIGRATIONS: &'static [(&'static str, &'static str)];

    /// Inserts the row; returns rows affected.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn insert_row<'a>(
        &'a mut self,
        sql: &'a Statements,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Deletes rows processed before `before`; returns rows affected.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn delete_before<'a>(
        &'a mut self,
        sql: &'a Statements,
        before: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

#[cfg(feature = "postgres")]
#[allow(private_interfaces)]
impl InboxConnection for sqlx::PgConnection {
    const MIGRATIONS: &'static [(&'static str, &'static str)] = &[(
        "create inbox",
        include_str!("../../migrations/postgres/0001_create_inbox.sql"),
    )];

    fn insert_row<'a>(
        &'a mut self,
        sql: &'a Statements,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(&sql.postgres_insert)
                .bind(consumer)
                .bind(event_id)
                .execute(self)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn delete_before<'a>(
        &'a mut self,
        sql: &'a Statements,
        before: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(&sql.postgres_delete)
                .bind(before)
                .execute(self)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(feature = "sqlite")]
#[allow(private_interfaces)]
impl InboxConnection for sqlx::SqliteConnection {
    const MIGRATIONS: &'static [(&'static str, &'static str)] = &[(
        "create inbox",
        include_str!("../../migrations/sqlite/0001_create_inbox.sql"),
    )];

    fn insert_row<'a>(
        &'a mut self,
        sql: &'a Statements,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(&sql.sqlite_insert)
                .bind(consumer)
                .bind(event_id)
                .bind(Utc::now().timestamp_millis())
                .execute(self)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn delete_before<'a>(
        &'a mut self,
        sql: &'a Statements,
        before: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(&sql.sqlite_delete)
                .bind(before.timestamp_millis())
                .execute(self)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_that_are_not_plain_identifiers_are_refused() {
        for bad in ["", "a b", "x;drop table y", "1abc", "a.b.c", "a.", "\"q\""] {
            assert!(SqlInbox::with_table(bad).is_err(), "{bad:?}");
        }
        for good in ["inbox", "app.inbox_2", "_x"] {
            assert!(SqlInbox::with_table(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn migration_versions_depend_on_the_table_and_are_stable() {
        let a = SqlInbox::new().render(&[("create", "CREATE {{table}} {{name}}")]);
        let b = SqlInbox::with_table("app.other")
            .map(|i| i.render(&[("create", "CREATE {{table}} {{name}}")]))
            .unwrap_or_default();
        assert_ne!(a[0].0, b[0].0);
        assert_eq!(a[0].2, "CREATE palisade_inbox palisade_inbox");
        assert_eq!(b[0].2, "CREATE app.other other");
        assert_eq!(
            a,
            SqlInbox::new().render(&[("create", "CREATE {{table}} {{name}}")])
        );
    }
}
