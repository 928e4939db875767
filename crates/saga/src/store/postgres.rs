use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use tokio::sync::oneshot;

use super::SagaStore;
use super::migrate::{CREATE_TABLE, POSTGRES};
use super::postgres_batch::{Batcher, Pending};
use crate::error::StoreError;
use crate::record::{HistoryEntry, HistoryEvent, ListFilter, SagaId, SagaRecord, SagaState};

/// A [`SagaStore`] on PostgreSQL, for several orchestrator instances.
///
/// Each transition is **one statement** — the row update and the history insert joined
/// in a data-modifying CTE — so it is one transaction and one round trip. Concurrent
/// transitions share statements (group commit): while a few writers are busy, the next
/// one writes everything queued meanwhile, up to 256 transitions, in one statement and
/// one commit, with the version check still row by row; a lone transition is written at
/// once. Every `update` has committed when it returns `Ok`. Recovery claims use
/// `FOR UPDATE SKIP LOCKED`, so instances sweeping at once split the work.
///
/// ```rust,no_run
/// use palisade_saga::PostgresStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_saga::StoreError> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    batch: Arc<Batcher>,
}

/// History entries travel as one JSON array parameter, unpacked by
/// `jsonb_to_recordset`.
#[derive(Serialize)]
struct HistoryRow<'a> {
    event: &'static str,
    step: Option<&'a str>,
    attempt: u32,
    error: Option<&'a str>,
    started_at: DateTime<Utc>,
    at: DateTime<Utc>,
}

fn history_json(history: &[HistoryEntry]) -> Result<serde_json::Value, StoreError> {
    let rows: Vec<HistoryRow<'_>> = history
        .iter()
        .map(|h| HistoryRow {
            event: h.event.as_str(),
            step: h.step.as_deref(),
            attempt: h.attempt,
            error: h.error.as_deref(),
            started_at: h.started_at,
            at: h.at,
        })
        .collect();
    serde_json::to_value(rows).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const INSERT_HISTORY: &str = "INSERT INTO palisade_saga_history (saga_id, event, step, attempt, error, started_at, at) \
     SELECT s.id, h.event, h.step, h.attempt, h.error, h.started_at, h.at \
     FROM s, jsonb_to_recordset($HIST::jsonb) AS h(event text, step text, attempt int, error text, started_at timestamptz, at timestamptz) \
     RETURNING 1";

impl PostgresStore {
    /// Connects with a pool of up to 16 connections. Does not migrate: call
    /// [`migrate`](Self::migrate).
    ///
    /// ```rust,no_run
    /// use palisade_saga::{ListFilter, PostgresStore, SagaStore};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PostgresStore::connect("postgres://127.0.0.1/orders").await?;
    /// store.migrate().await?;
    /// assert!(store.list(&ListFilter::default().limit(10)).await?.len() <= 10);
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// Uses an existing pool.
    ///
    /// ```rust,no_run
    /// use palisade_saga::{ListFilter, PostgresStore, SagaStore};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // Share the service's pool.
    /// let pool = sqlx::PgPool::connect("postgres://127.0.0.1/orders").await?;
    /// let store = PostgresStore::from_pool(pool.clone());
    /// store.migrate().await?;
    /// assert_eq!(store.pool().size(), pool.size());
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            batch: Arc::default(),
        }
    }

    /// One transition in a statement of its own: the path of a transition whose batch
    /// failed.
    async fn update_alone(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "WITH s AS (UPDATE palisade_saga SET state = $1, cursor = $2, backward = $3, context = $4, error = $5, \
             version = $6, owner = $7, lease_until = $8, deadline = $9, updated_at = $10 \
             WHERE id = $11 AND version = $12 RETURNING id), \
             h AS ({}) SELECT count(*) FROM s",
            INSERT_HISTORY.replace("$HIST", "$13")
        );
        let updated: i64 = sqlx::query_scalar(&sql)
            .bind(record.state.as_str())
            .bind(to_i32(record.cursor))
            .bind(record.backward)
            .bind(&record.context)
            .bind(record.error.as_deref())
            .bind(record.version)
            .bind(record.owner.as_deref())
            .bind(record.lease_until)
            .bind(record.deadline)
            .bind(record.updated_at)
            .bind(record.id.0)
            .bind(expected_version)
            .bind(history_json(history)?)
            .fetch_one(&self.pool)
            .await?;
        if updated == 0 {
            return Err(StoreError::Conflict {
                id: record.id,
                expected: expected_version,
            });
        }
        Ok(())
    }

    /// The pool.
    ///
    /// ```rust,no_run
    /// use palisade_saga::{ListFilter, PostgresStore, SagaStore};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PostgresStore::connect("postgres://127.0.0.1/orders").await?;
    /// let sql = "SELECT COUNT(*) FROM palisade_saga WHERE state = 'failed'";
    /// let stuck: i64 = sqlx::query_scalar(sql)
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// assert!(stuck >= 0);
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the saga tables, under an advisory lock so that instances
    /// starting together migrate once.
    ///
    /// ```rust,no_run
    /// use palisade_saga::{ListFilter, PostgresStore, SagaStore};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PostgresStore::connect("postgres://127.0.0.1/orders").await?;
    /// store.migrate().await?; // instances starting together migrate once
    /// assert!(store.list(&ListFilter::default()).await.is_ok());
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // An arbitrary constant naming this crate's migration lock.
        sqlx::query("SELECT pg_advisory_xact_lock(7281001)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
        for m in POSTGRES {
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM palisade_saga_migrations WHERE version = $1",
            )
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?;
            if done.is_none() {
                sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO palisade_saga_migrations (version, description) VALUES ($1, $2)",
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

fn to_u32(v: i32, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn record(row: &PgRow) -> Result<SagaRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let id: uuid::Uuid = row.try_get("id")?;
    Ok(SagaRecord {
        id: SagaId(id),
        saga_type: row.try_get("saga_type")?,
        definition_version: to_u32(row.try_get("definition_version")?, "definition version")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state:?}")))?,
        cursor: to_u32(row.try_get("cursor")?, "cursor")?,
        backward: row.try_get("backward")?,
        context: row.try_get("context")?,
        error: row.try_get("error")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
        lease_until: row.try_get("lease_until")?,
        deadline: row.try_get("deadline")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl SagaStore for PostgresStore {
    async fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> Result<Option<SagaRecord>, StoreError> {
        let sql = format!(
            "WITH s AS (INSERT INTO palisade_saga (id, saga_type, definition_version, definition, state, cursor, backward, \
             context, error, version, owner, lease_until, deadline, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING RETURNING id), \
             h AS ({}) SELECT count(*) FROM s",
            INSERT_HISTORY.replace("$HIST", "$16")
        );
        let inserted: i64 = sqlx::query_scalar(&sql)
            .bind(record.id.0)
            .bind(&record.saga_type)
            .bind(to_i32(record.definition_version))
            .bind(record.definition_key())
            .bind(record.state.as_str())
            .bind(to_i32(record.cursor))
            .bind(record.backward)
            .bind(&record.context)
            .bind(record.error.as_deref())
            .bind(record.version)
            .bind(record.owner.as_deref())
            .bind(record.lease_until)
            .bind(record.deadline)
            .bind(record.created_at)
            .bind(record.updated_at)
            .bind(history_json(history)?)
            .fetch_one(&self.pool)
            .await?;
        if inserted == 0 {
            return self.get(record.id).await;
        }
        Ok(None)
    }

    async fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id: record.id.0,
            state: record.state.as_str(),
            cursor: to_i32(record.cursor),
            backward: record.backward,
            context: record.context.clone(),
            error: record.error.clone(),
            version: record.version,
            owner: record.owner.clone(),
            lease_until: record.lease_until,
            deadline: record.deadline,
            updated_at: record.updated_at,
            expected: expected_version,
            history: history_json(history)?,
            reply,
        };
        if self.batch.submit(pending) {
            tokio::spawn(Arc::clone(&self.batch).flush(self.pool.clone()));
        }
        match answer.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(StoreError::Conflict {
                id: record.id,
                expected: expected_version,
            }),
            // The batch failed (nothing in it was written) or its writer is gone.
            Ok(Err(())) | Err(_) => self.update_alone(record, expected_version, history).await,
        }
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE palisade_saga SET lease_until = $1 WHERE id = $2 AND version = $3 AND owner = $4")
            .bind(until)
            .bind(id.0)
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
        let rows = sqlx::query(
            "UPDATE palisade_saga s SET owner = $1, lease_until = $2, version = s.version + 1 \
             FROM (SELECT id FROM palisade_saga \
                   WHERE state IN ('running', 'compensating') \
                     AND (lease_until IS NULL OR lease_until < $3) \
                     AND definition = ANY($4) \
                   ORDER BY lease_until LIMIT $5 FOR UPDATE SKIP LOCKED) c \
             WHERE s.id = c.id RETURNING s.*",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(definitions)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM palisade_saga WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaRecord>, StoreError> {
        let states: Vec<String> = filter
            .states
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let rows = sqlx::query(
            "SELECT * FROM palisade_saga \
             WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
               AND ($2::timestamptz IS NULL OR updated_at < $2) \
             ORDER BY updated_at, id LIMIT $3",
        )
        .bind(states)
        .bind(filter.updated_before)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT event, step, attempt, error, started_at, at FROM palisade_saga_history WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(id.0)
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
                    started_at: row.try_get("started_at")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }
}
