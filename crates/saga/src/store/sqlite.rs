use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::SagaStore;
use super::migrate::{CREATE_TABLE, SQLITE};
use crate::error::StoreError;
use crate::record::{HistoryEntry, HistoryEvent, ListFilter, SagaId, SagaRecord, SagaState};

/// A [`SagaStore`] on SQLite: one file, no server.
///
/// [`connect`](Self::connect) opens (creating if missing) the database in WAL mode with
/// **one** connection: SQLite admits one writer at a time, and a pool of writers would
/// only take turns through the busy handler's sleeps. Every method is one transaction.
/// Instants are stored as milliseconds since the epoch so that lease comparisons are
/// numeric.
///
/// ```rust
/// use palisade_saga::{SagaStore, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_saga::StoreError> {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// assert!(store.get(palisade_saga::SagaId::new()).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `url` (`sqlite://path/to/file.db`, `sqlite::memory:`), creating the file if
    /// missing, in WAL mode with a 5 s busy timeout and a single connection. Does not
    /// migrate: call [`migrate`](Self::migrate).
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use palisade_saga::{ListFilter, SagaStore, SqliteStore};
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// store.migrate().await?;
    /// assert!(store.list(&ListFilter::default()).await?.is_empty());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Uses an existing pool (keep it at one connection unless you know better).
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use palisade_saga::{ListFilter, SagaStore, SqliteStore};
    ///
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new()
    ///     .max_connections(1)
    ///     .connect("sqlite::memory:")
    ///     .await?;
    /// let store = SqliteStore::from_pool(pool);
    /// store.migrate().await?;
    /// assert!(store.list(&ListFilter::default()).await?.is_empty());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use palisade_saga::{ListFilter, SagaStore, SqliteStore};
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// store.migrate().await?;
    /// // The same database for the application's own tables.
    /// let sagas: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM palisade_saga")
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// assert_eq!(sagas, 0);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the saga tables (`palisade_saga`, `palisade_saga_history`).
    /// Safe to call on every start.
    ///
    /// ```rust
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use palisade_saga::{ListFilter, SagaStore, SqliteStore};
    ///
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// store.migrate().await?;
    /// store.migrate().await?; // safe on every start
    /// assert!(store.list(&ListFilter::default()).await?.is_empty());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
        for m in SQLITE {
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM palisade_saga_migrations WHERE version = ?",
            )
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?;
            if done.is_none() {
                sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO palisade_saga_migrations (version, description) VALUES (?, ?)",
                )
                .bind(m.version)
                .bind(m.description)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("instant {ms} out of range")))
}

fn opt_from_ms(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_ms).transpose()
}

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

fn record(row: &SqliteRow) -> Result<SagaRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let context: String = row.try_get("context")?;
    Ok(SagaRecord {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("saga id {id:?}: {e}")))?,
        saga_type: row.try_get("saga_type")?,
        definition_version: to_u32(row.try_get("definition_version")?, "definition version")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state:?}")))?,
        cursor: to_u32(row.try_get("cursor")?, "cursor")?,
        backward: row.try_get::<i64, _>("backward")? != 0,
        context: serde_json::from_str(&context)
            .map_err(|e| StoreError::Corrupt(format!("context: {e}")))?,
        error: row.try_get("error")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
        lease_until: opt_from_ms(row.try_get("lease_until")?)?,
        deadline: opt_from_ms(row.try_get("deadline")?)?,
        created_at: from_ms(row.try_get("created_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
    })
}

async fn append_history(
    conn: &mut SqliteConnection,
    id: SagaId,
    history: &[HistoryEntry],
) -> Result<(), StoreError> {
    let id = id.to_string();
    for h in history {
        sqlx::query(
            "INSERT INTO palisade_saga_history (saga_id, event, step, attempt, error, started_at, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(h.event.as_str())
        .bind(h.step.as_deref())
        .bind(i64::from(h.attempt))
        .bind(h.error.as_deref())
        .bind(ms(h.started_at))
        .bind(ms(h.at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn context_text(record: &SagaRecord) -> Result<String, StoreError> {
    serde_json::to_string(&record.context).map_err(|e| StoreError::Corrupt(format!("context: {e}")))
}

impl SagaStore for SqliteStore {
    async fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> Result<Option<SagaRecord>, StoreError> {
        let context = context_text(record)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO palisade_saga (id, saga_type, definition_version, definition, state, cursor, backward, \
             context, error, version, owner, lease_until, deadline, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(record.id.to_string())
        .bind(&record.saga_type)
        .bind(i64::from(record.definition_version))
        .bind(record.definition_key())
        .bind(record.state.as_str())
        .bind(i64::from(record.cursor))
        .bind(i64::from(record.backward))
        .bind(context)
        .bind(record.error.as_deref())
        .bind(record.version)
        .bind(record.owner.as_deref())
        .bind(record.lease_until.map(ms))
        .bind(record.deadline.map(ms))
        .bind(ms(record.created_at))
        .bind(ms(record.updated_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let row = sqlx::query("SELECT * FROM palisade_saga WHERE id = ?")
                .bind(record.id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            return record_opt(&row);
        }
        append_history(&mut tx, record.id, history).await?;
        tx.commit().await?;
        Ok(None)
    }

    async fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let context = context_text(record)?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE palisade_saga SET state = ?, cursor = ?, backward = ?, context = ?, error = ?, version = ?, \
             owner = ?, lease_until = ?, deadline = ?, updated_at = ? WHERE id = ? AND version = ?",
        )
        .bind(record.state.as_str())
        .bind(i64::from(record.cursor))
        .bind(i64::from(record.backward))
        .bind(context)
        .bind(record.error.as_deref())
        .bind(record.version)
        .bind(record.owner.as_deref())
        .bind(record.lease_until.map(ms))
        .bind(record.deadline.map(ms))
        .bind(ms(record.updated_at))
        .bind(record.id.to_string())
        .bind(expected_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Conflict {
                id: record.id,
                expected: expected_version,
            });
        }
        append_history(&mut tx, record.id, history).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE palisade_saga SET lease_until = ? WHERE id = ? AND version = ? AND owner = ?",
        )
        .bind(ms(until))
        .bind(id.to_string())
        .bind(version)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Conflict {
                id,
                expected: version,
            });
        }
        Ok(())
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        definitions: &[String],
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError> {
        let definitions =
            serde_json::to_string(definitions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "UPDATE palisade_saga SET owner = ?, lease_until = ?, version = version + 1 \
             WHERE id IN (SELECT id FROM palisade_saga \
                 WHERE state IN ('running', 'compensating') \
                   AND (lease_until IS NULL OR lease_until < ?) \
                   AND definition IN (SELECT value FROM json_each(?)) \
                 ORDER BY lease_until LIMIT ?) \
             RETURNING *",
        )
        .bind(owner)
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(definitions)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM palisade_saga WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaRecord>, StoreError> {
        let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
        let states =
            serde_json::to_string(&states).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT * FROM palisade_saga \
             WHERE (json_array_length(?1) = 0 OR state IN (SELECT value FROM json_each(?1))) \
               AND (?2 IS NULL OR updated_at < ?2) \
             ORDER BY updated_at, id LIMIT ?3",
        )
        .bind(states)
        .bind(filter.updated_before.map(ms))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT event, step, attempt, error, started_at, at FROM palisade_saga_history WHERE saga_id = ? ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event")?;
                Ok(HistoryEntry {
                    event: HistoryEvent::parse(&event).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown history event {event:?}"))
                    })?,
                    step: row.try_get("step")?,
                    attempt: to_u32(row.try_get("attempt")?, "attempt")?,
                    error: row.try_get("error")?,
                    started_at: from_ms(row.try_get("started_at")?)?,
                    at: from_ms(row.try_get("at")?)?,
                })
            })
            .collect()
    }
}

fn record_opt(row: &SqliteRow) -> Result<Option<SagaRecord>, StoreError> {
    record(row).map(Some)
}
