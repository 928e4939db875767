//! SQLite: enqueue on the caller's transaction, claims as leases.
//!
//! SQLite has one writer at a time, so a relay cannot keep a transaction open while it
//! publishes (every business write would wait for the broker). A claim is one
//! `UPDATE … RETURNING` that stamps `lease_owner` and `lease_until` on up to `n` rows
//! that are not dead, are due, are not leased by a live lease, and have no earlier row
//! of their key that is leased (by anyone), failing or dead. Writes are serialized, so
//! two relays never see the same row free, and while one relay holds a row of a key no
//! other takes a later row of it. A relay that dies leaves its leases to expire; the
//! next claim after that takes the rows again, the earliest first.
//!
//! Finishing deletes, records failures and clears leases only on rows still leased to
//! this relay, so a relay whose lease expired mid-batch never touches rows another
//! relay has taken over. Times are unix milliseconds from the relay's clock.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use palisade_events::Envelope;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use crate::error::Error;
use crate::outbox::{Outbox, SQLITE_MIGRATIONS, decode_headers, encode_headers};
use crate::store::{
    Backlog, Claimed, OutboxConnection, OutboxPool, OutboxRow, Outcome, Store, sealed,
};

const COLUMNS: &str = "id, topic, event_type, source, event_key, event_time, content_type, \
                       correlation_id, causation_id, headers, payload";
/// Rows per INSERT statement in a batch (13 parameters a row, well under SQLite's limit).
const ROWS_PER_INSERT: usize = 500;

impl sealed::Sealed for SqliteConnection {}
impl sealed::Sealed for Transaction<'_, Sqlite> {}
impl sealed::Sealed for SqlitePool {}

impl OutboxConnection for SqliteConnection {
    fn insert<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        topic: &'a str,
        envelopes: &'a [Envelope],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        insert(self, outbox, topic, envelopes)
    }
}

impl OutboxConnection for Transaction<'_, Sqlite> {
    fn insert<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        topic: &'a str,
        envelopes: &'a [Envelope],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        insert(self, outbox, topic, envelopes)
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

async fn insert(
    conn: &mut SqliteConnection,
    outbox: &Outbox,
    topic: &str,
    envelopes: &[Envelope],
) -> Result<(), Error> {
    let created = now_ms();
    for chunk in envelopes.chunks(ROWS_PER_INSERT) {
        let mut sql = format!(
            "INSERT INTO {} ({COLUMNS}, created_at) VALUES ",
            outbox.table()
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        }
        let mut query = sqlx::query(&sql);
        for e in chunk {
            query = query
                .bind(e.id)
                .bind(topic)
                .bind(&e.event_type)
                .bind(&e.source)
                .bind(e.key.as_deref())
                .bind(e.time)
                .bind(&e.content_type)
                .bind(e.correlation_id.as_deref())
                .bind(e.causation_id.as_deref())
                .bind(encode_headers(&e.headers))
                .bind(e.payload.as_ref())
                .bind(created);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

fn envelope_from(row: &SqliteRow) -> Result<(i64, String, Envelope), Error> {
    let seq: i64 = row.try_get("seq")?;
    let headers: String = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let envelope = Envelope {
        id: row.try_get("id")?,
        event_type: std::borrow::Cow::Owned(row.try_get::<String, _>("event_type")?),
        source: std::borrow::Cow::Owned(row.try_get::<String, _>("source")?),
        key: row.try_get("event_key")?,
        time: row.try_get("event_time")?,
        content_type: std::borrow::Cow::Owned(row.try_get::<String, _>("content_type")?),
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        headers: decode_headers(seq, &headers)?,
        payload: payload.into(),
    };
    Ok((seq, row.try_get("topic")?, envelope))
}

/// A JSON array of sequence numbers, for `seq IN (SELECT value FROM json_each(?))`.
fn seq_list(seqs: impl IntoIterator<Item = i64>) -> String {
    let mut out = String::from("[");
    for (i, s) in seqs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out.push(']');
    out
}

impl OutboxPool for SqlitePool {
    type Store = SqliteStore;

    fn store(&self, outbox: &Outbox) -> SqliteStore {
        SqliteStore::new(outbox.clone(), self.clone())
    }

    async fn migrate_outbox(&self, outbox: &Outbox) -> Result<(), Error> {
        outbox.migrator(SQLITE_MIGRATIONS).await?.run(self).await?;
        Ok(())
    }

    async fn backlog(&self, outbox: &Outbox) -> Result<Backlog, Error> {
        let row = sqlx::query(&format!(
            "SELECT coalesce(sum(dead = 0), 0) AS pending, coalesce(sum(dead <> 0), 0) AS dead, \
             min(CASE WHEN dead = 0 THEN created_at END) AS oldest FROM {}",
            outbox.table()
        ))
        .fetch_one(self)
        .await?;
        let pending: i64 = row.try_get("pending")?;
        let dead: i64 = row.try_get("dead")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest: oldest.map(from_ms),
        })
    }

    async fn dead_rows(&self, outbox: &Outbox, limit: usize) -> Result<Vec<OutboxRow>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT seq, {COLUMNS}, attempts, last_error, dead, created_at FROM {} \
             WHERE dead <> 0 ORDER BY seq LIMIT ?",
            outbox.table()
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self)
        .await?;
        rows.iter()
            .map(|row| {
                let (seq, topic, envelope) = envelope_from(row)?;
                let attempts: i64 = row.try_get("attempts")?;
                let dead: i64 = row.try_get("dead")?;
                Ok(OutboxRow {
                    seq,
                    topic,
                    envelope,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: row.try_get("last_error")?,
                    dead: dead != 0,
                    created_at: from_ms(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn wake(&self, _outbox: &Outbox) -> Result<(), Error> {
        Ok(())
    }

    async fn redrive(&self, outbox: &Outbox, ids: &[Uuid]) -> Result<u64, Error> {
        let mut done = 0;
        let mut tx = self.begin().await?;
        for id in ids {
            done += sqlx::query(&format!(
                "UPDATE {} SET dead = 0, attempts = 0, next_attempt_at = 0 \
                 WHERE dead <> 0 AND id = ?",
                outbox.table()
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(done)
    }
}

/// A relay's SQLite side: lease claims under a random owner id.
#[doc(hidden)]
#[derive(Debug)]
pub struct SqliteStore {
    outbox: Outbox,
    pool: SqlitePool,
    owner: String,
    held: Vec<i64>,
    claim_sql: String,
}

impl SqliteStore {
    fn new(outbox: Outbox, pool: SqlitePool) -> Self {
        let t = outbox.table();
        let claim_sql = format!(
            "UPDATE {t} SET lease_owner = ?1, lease_until = ?2 WHERE seq IN ( \
               SELECT o.seq FROM {t} o \
               WHERE o.dead = 0 AND o.next_attempt_at <= ?3 \
                 AND (o.lease_owner IS NULL OR o.lease_until <= ?3) \
                 AND NOT EXISTS (SELECT 1 FROM {t} p \
                     WHERE p.event_key = o.event_key AND p.seq < o.seq \
                       AND (p.lease_owner IS NOT NULL OR p.attempts > 0 OR p.dead <> 0) \
                       AND ((p.lease_owner IS NOT NULL AND p.lease_until > ?3) \
                            OR p.dead <> 0 OR p.next_attempt_at > ?3)) \
               ORDER BY o.seq LIMIT ?4) \
             RETURNING seq, {COLUMNS}, attempts"
        );
        Self {
            outbox,
            pool,
            owner: Uuid::now_v7().to_string(),
            held: Vec::new(),
            claim_sql,
        }
    }

    async fn release(&mut self, seqs: &[i64]) -> Result<(), Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "UPDATE {} SET lease_owner = NULL, lease_until = 0 \
             WHERE lease_owner = ? AND seq IN (SELECT value FROM json_each(?))",
            self.outbox.table()
        ))
        .bind(&self.owner)
        .bind(seq_list(seqs.iter().copied()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store for SqliteStore {
    async fn claim(&mut self, limit: usize, lease: Duration) -> Result<Vec<Claimed>, Error> {
        // Rows still held from a cancelled batch go back first.
        let held = std::mem::take(&mut self.held);
        self.release(&held).await?;
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let rows = sqlx::query(&self.claim_sql)
            .bind(&self.owner)
            .bind(until)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let (seq, topic, envelope) = envelope_from(row)?;
                let attempts: i64 = row.try_get("attempts")?;
                Ok(Claimed {
                    seq,
                    topic,
                    envelope,
                    attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // RETURNING order is unspecified in SQLite.
        claimed.sort_by_key(|c| c.seq);
        self.held = claimed.iter().map(|c| c.seq).collect();
        Ok(claimed)
    }

    async fn finish(&mut self, outcome: &Outcome) -> Result<(), Error> {
        let t = self.outbox.table();
        let mut tx = self.pool.begin().await?;
        if !outcome.published.is_empty() {
            sqlx::query(&format!(
                "DELETE FROM {t} WHERE lease_owner = ? AND seq IN (SELECT value FROM json_each(?))"
            ))
            .bind(&self.owner)
            .bind(seq_list(outcome.published.iter().copied()))
            .execute(&mut *tx)
            .await?;
        }
        for f in &outcome.failed {
            sqlx::query(&format!(
                "UPDATE {t} SET attempts = ?, last_error = ?, next_attempt_at = ?, dead = ?, \
                 lease_owner = NULL, lease_until = 0 WHERE lease_owner = ? AND seq = ?"
            ))
            .bind(f.attempts)
            .bind(&f.error)
            .bind(f.next_attempt_at.timestamp_millis())
            .bind(f.dead)
            .bind(&self.owner)
            .bind(f.seq)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.released.is_empty() {
            sqlx::query(&format!(
                "UPDATE {t} SET lease_owner = NULL, lease_until = 0 \
                 WHERE lease_owner = ? AND seq IN (SELECT value FROM json_each(?))"
            ))
            .bind(&self.owner)
            .bind(seq_list(outcome.released.iter().copied()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.held.clear();
        Ok(())
    }

    async fn abandon(&mut self) {
        let held = std::mem::take(&mut self.held);
        if let Err(error) = self.release(&held).await {
            tracing::warn!(%error, "releasing outbox leases failed; they expire on their own");
        }
    }

    async fn wait(&mut self, poll: Duration) {
        tokio::time::sleep(poll).await;
    }

    async fn backlog(&mut self) -> Result<Backlog, Error> {
        OutboxPool::backlog(&self.pool, &self.outbox).await
    }
}
