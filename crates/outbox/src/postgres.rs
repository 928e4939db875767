//! PostgreSQL: enqueue with `pg_notify`, claims held by the relay's open transaction.
//!
//! # How a relay claims rows
//!
//! Every row belongs to a *key bucket*: `hashtext(event_key) & 1023` (rows without a key
//! are spread by `seq`). A relay owns a bucket by holding the transaction-scoped advisory
//! lock `(table hash, bucket)`; per key, only the owner of its bucket publishes. A claim is
//! one transaction on a connection the relay owns, open while it publishes:
//!
//! 1. `BEGIN`; `idle_in_transaction_session_timeout` is set to the lease, so a relay that
//!    hangs or loses its network is cut off by the server and its buckets come free. A
//!    relay that dies closes its socket and its buckets come free at once.
//! 2. It looks at the buckets of the oldest due rows and takes those it can with
//!    `pg_try_advisory_xact_lock` (skipping buckets another relay holds).
//! 3. Then, in a *new statement* (so with a snapshot taken after it got the locks), it
//!    reads up to `n` rows of its buckets in `seq` order: not dead, due, and with no
//!    earlier failing or dead row of their key. Because the snapshot is younger than the
//!    locks, it sees everything the bucket's previous owner did before letting go:
//!    its deletes, its failures, or (if it died) the rows it never finished. So a
//!    relay never starts a key in the middle.
//! 4. Published rows are deleted, failed rows updated (attempts, backoff, error, dead),
//!    and the transaction commits, releasing the buckets.
//!
//! No row is locked or rewritten to claim it: the claim costs two index scans and
//! a few hundred lock-table entries; bucket collisions between unrelated keys only
//! make two relays take turns.
//!
//! Rows of transactions still in flight are invisible to the claim and simply taken by
//! a later one: there is no high-water mark to move past them (Watermill's reason for
//! `xid8` snapshots), so nothing is ever skipped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use palisade_events::Envelope;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::Error;
use crate::outbox::{Outbox, POSTGRES_MIGRATIONS, decode_headers, encode_headers};
use crate::store::{
    Backlog, Claimed, OutboxConnection, OutboxPool, OutboxRow, Outcome, Store, sealed,
};

const COLUMNS: &str = "id, topic, event_type, source, event_key, event_time, content_type, \
                       correlation_id, causation_id, headers, payload";

/// Key buckets for per-key ownership. More buckets, fewer false conflicts between
/// relays; every bucket a relay holds is one entry in the server's lock table.
const BUCKETS: i32 = 1024;
/// How many of the oldest due rows a claim looks at to choose its buckets, per row it
/// may take, once it found buckets held by another relay (the oldest rows are then often
/// that relay's). Alone, a claim looks at `limit` rows: its buckets hold all of them.
const WINDOW: i64 = 4;

impl sealed::Sealed for PgConnection {}
impl sealed::Sealed for Transaction<'_, Postgres> {}
impl sealed::Sealed for PgPool {}

impl OutboxConnection for PgConnection {
    fn insert<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        topic: &'a str,
        envelopes: &'a [Envelope],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        insert(self, outbox, topic, envelopes)
    }
}

impl OutboxConnection for Transaction<'_, Postgres> {
    fn insert<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        topic: &'a str,
        envelopes: &'a [Envelope],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        insert(self, outbox, topic, envelopes)
    }
}

async fn insert(
    conn: &mut PgConnection,
    outbox: &Outbox,
    topic: &str,
    envelopes: &[Envelope],
) -> Result<(), Error> {
    let table = outbox.table();
    // A data-modifying CTE runs whether or not it is referenced, so the notify rides in
    // the same statement: one round trip. NOTIFY is delivered at commit, never on
    // rollback, and collapsed to one per transaction and channel.
    let (prefix, suffix) = if outbox.notifies() {
        ("WITH ins AS (", ") SELECT pg_notify($12, '')")
    } else {
        ("", "")
    };
    if let [envelope] = envelopes {
        let sql = format!(
            "{prefix}INSERT INTO {table} ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11){suffix}"
        );
        let mut query = sqlx::query(&sql)
            .bind(envelope.id)
            .bind(topic)
            .bind(&envelope.event_type)
            .bind(&envelope.source)
            .bind(envelope.key.as_deref())
            .bind(envelope.time)
            .bind(&envelope.content_type)
            .bind(envelope.correlation_id.as_deref())
            .bind(envelope.causation_id.as_deref())
            .bind(encode_headers(&envelope.headers))
            .bind(envelope.payload.as_ref());
        if outbox.notifies() {
            query = query.bind(outbox.channel());
        }
        query.execute(&mut *conn).await?;
        return Ok(());
    }
    let sql = format!(
        "{prefix}INSERT INTO {table} ({COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[]){suffix}"
    );
    let n = envelopes.len();
    let mut ids = Vec::with_capacity(n);
    let mut topics = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut content_types = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for e in envelopes {
        ids.push(e.id);
        topics.push(topic);
        types.push(e.event_type.as_ref());
        sources.push(e.source.as_ref());
        keys.push(e.key.as_deref());
        times.push(e.time);
        content_types.push(e.content_type.as_ref());
        correlations.push(e.correlation_id.as_deref());
        causations.push(e.causation_id.as_deref());
        headers.push(encode_headers(&e.headers));
        payloads.push(e.payload.as_ref());
    }
    let mut query = sqlx::query(&sql)
        .bind(ids)
        .bind(topics)
        .bind(types)
        .bind(sources)
        .bind(keys)
        .bind(times)
        .bind(content_types)
        .bind(correlations)
        .bind(causations)
        .bind(headers)
        .bind(payloads);
    if outbox.notifies() {
        query = query.bind(outbox.channel());
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

fn envelope_from(row: &PgRow) -> Result<(i64, String, Envelope), Error> {
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

impl OutboxPool for PgPool {
    type Store = PgStore;

    fn store(&self, outbox: &Outbox) -> PgStore {
        PgStore::new(outbox.clone(), self.clone())
    }

    async fn migrate_outbox(&self, outbox: &Outbox) -> Result<(), Error> {
        outbox
            .migrator(POSTGRES_MIGRATIONS)
            .await?
            .run(self)
            .await?;
        Ok(())
    }

    async fn backlog(&self, outbox: &Outbox) -> Result<Backlog, Error> {
        let row = sqlx::query(&format!(
            "SELECT count(*) FILTER (WHERE NOT dead) AS pending, \
             count(*) FILTER (WHERE dead) AS dead, \
             min(created_at) FILTER (WHERE NOT dead) AS oldest FROM {}",
            outbox.table()
        ))
        .fetch_one(self)
        .await?;
        let pending: i64 = row.try_get("pending")?;
        let dead: i64 = row.try_get("dead")?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest: row.try_get("oldest")?,
        })
    }

    async fn dead_rows(&self, outbox: &Outbox, limit: usize) -> Result<Vec<OutboxRow>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT seq, {COLUMNS}, attempts, last_error, dead, created_at FROM {} \
             WHERE dead ORDER BY seq LIMIT $1",
            outbox.table()
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self)
        .await?;
        rows.iter()
            .map(|row| {
                let (seq, topic, envelope) = envelope_from(row)?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok(OutboxRow {
                    seq,
                    topic,
                    envelope,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: row.try_get("last_error")?,
                    dead: row.try_get("dead")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn wake(&self, outbox: &Outbox) -> Result<(), Error> {
        // `synchronous_commit` off for this one-statement transaction only: the notify
        // lock is then held for microseconds, and a lost wake-up is covered by polling.
        sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
            .bind(outbox.channel())
            .execute(self)
            .await?;
        Ok(())
    }

    async fn redrive(&self, outbox: &Outbox, ids: &[Uuid]) -> Result<u64, Error> {
        // Becoming claimable can only unblock later rows, so no claim gate is needed.
        let done = sqlx::query(&format!(
            "UPDATE {} SET dead = false, attempts = 0, next_attempt_at = '-infinity' \
             WHERE dead AND id = ANY($1)",
            outbox.table()
        ))
        .bind(ids)
        .execute(self)
        .await?;
        if outbox.notifies() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(outbox.channel())
                .execute(self)
                .await?;
        }
        Ok(done.rows_affected())
    }
}

/// A relay's PostgreSQL side: an owned connection holding the claim transaction, and a
/// LISTEN task that turns notifications into wake-ups.
#[doc(hidden)]
#[derive(Debug)]
pub struct PgStore {
    outbox: Outbox,
    pool: PgPool,
    conn: Option<PgConnection>,
    in_transaction: bool,
    wake: Arc<Notify>,
    listener: Option<JoinHandle<()>>,
    buckets_sql: String,
    claim_sql: String,
    delete_sql: String,
    fail_sql: String,
    lock_class: i32,
}

impl PgStore {
    fn new(outbox: Outbox, pool: PgPool) -> Self {
        let t = outbox.table();
        let bucket = format!(
            "(CASE WHEN event_key IS NULL THEN (seq & {mask})::int \
             ELSE hashtext(event_key) & {mask} END)",
            mask = BUCKETS - 1
        );
        // `DISTINCT` first, then the (volatile, so never pushed down) lock call: one
        // attempt per bucket. Returns how many buckets it tried and those it got (a
        // bucket this transaction already holds is granted again).
        let buckets_sql = format!(
            "SELECT count(*), coalesce(array_agg(b) FILTER (WHERE locked), '{{}}') FROM ( \
               SELECT b, pg_try_advisory_xact_lock($1, b) AS locked FROM ( \
                 SELECT DISTINCT b FROM ( \
                   SELECT {bucket} AS b FROM {t} \
                   WHERE NOT dead AND next_attempt_at <= statement_timestamp() \
                   ORDER BY seq LIMIT $2) candidates) distinct_buckets) attempts"
        );
        let claim_sql = format!(
            "SELECT seq, {COLUMNS}, attempts FROM {t} o \
             WHERE {bucket} = ANY($1) \
               AND NOT o.dead \
               AND o.next_attempt_at <= statement_timestamp() \
               AND NOT EXISTS (SELECT 1 FROM {t} p \
                    WHERE p.event_key = o.event_key AND p.seq < o.seq \
                      AND (p.attempts > 0 OR p.dead) \
                      AND (p.dead OR p.next_attempt_at > statement_timestamp())) \
             ORDER BY o.seq LIMIT $2"
        );
        let delete_sql = format!("DELETE FROM {t} WHERE seq = ANY($1)");
        let fail_sql = format!(
            "UPDATE {t} SET attempts = f.attempts, last_error = f.error, \
             next_attempt_at = f.next_attempt_at, dead = f.dead \
             FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::bool[]) \
               AS f(seq, attempts, error, next_attempt_at, dead) \
             WHERE {t}.seq = f.seq"
        );
        let lock_class = outbox.table_hash();
        Self {
            outbox,
            pool,
            conn: None,
            in_transaction: false,
            wake: Arc::new(Notify::new()),
            listener: None,
            buckets_sql,
            claim_sql,
            delete_sql,
            fail_sql,
            lock_class,
        }
    }

    /// The owned connection, opened (detached from the pool, so a dropped relay closes
    /// it and the server releases its claim) when missing. A connection left inside a
    /// transaction by a cancelled batch is thrown away, releasing its rows.
    async fn connection(&mut self) -> Result<&mut PgConnection, Error> {
        if self.in_transaction {
            if let Some(conn) = self.conn.take() {
                let _ = conn.close_hard().await;
            }
            self.in_transaction = false;
        }
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?.detach());
        }
        match self.conn.as_mut() {
            Some(conn) => Ok(conn),
            None => Err(Error::Database(sqlx::Error::PoolClosed)),
        }
    }

    async fn try_claim(&mut self, limit: usize, lease: Duration) -> Result<Vec<Claimed>, Error> {
        let lock_class = self.lock_class;
        let lease_ms = lease.as_millis().max(1).to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let buckets_sql = std::mem::take(&mut self.buckets_sql);
        let claim_sql = std::mem::take(&mut self.claim_sql);
        let result = async {
            let conn = self.connection().await?;
            sqlx::query("BEGIN").execute(&mut *conn).await?;
            self.in_transaction = true;
            let conn = self.connection_in_tx()?;
            sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
                .bind(&lease_ms)
                .execute(&mut *conn)
                .await?;
            let (tried, mut buckets): (i64, Vec<i32>) = sqlx::query_as(&buckets_sql)
                .bind(lock_class)
                .bind(limit)
                .fetch_one(&mut *conn)
                .await?;
            if usize::try_from(tried).unwrap_or(0) > buckets.len() {
                // Another relay holds some of the oldest rows' buckets: look further.
                let (_, wider): (i64, Vec<i32>) = sqlx::query_as(&buckets_sql)
                    .bind(lock_class)
                    .bind(limit.saturating_mul(WINDOW))
                    .fetch_one(&mut *conn)
                    .await?;
                buckets = wider;
            }
            if buckets.is_empty() {
                return Ok(Vec::new());
            }
            // A new statement: its snapshot is younger than the bucket locks.
            let rows = sqlx::query(&claim_sql)
                .bind(&buckets)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            rows.iter()
                .map(|row| {
                    let (seq, topic, envelope) = envelope_from(row)?;
                    Ok(Claimed {
                        seq,
                        topic,
                        envelope,
                        attempts: row.try_get("attempts")?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()
        }
        .await;
        self.buckets_sql = buckets_sql;
        self.claim_sql = claim_sql;
        // Nothing claimed: end the transaction now rather than hold empty buckets.
        if matches!(&result, Ok(rows) if rows.is_empty()) {
            self.abandon().await;
        }
        result
    }

    fn connection_in_tx(&mut self) -> Result<&mut PgConnection, Error> {
        self.conn
            .as_mut()
            .ok_or(Error::Database(sqlx::Error::PoolClosed))
    }

    async fn try_finish(&mut self, outcome: &Outcome) -> Result<(), Error> {
        let delete_sql = std::mem::take(&mut self.delete_sql);
        let fail_sql = std::mem::take(&mut self.fail_sql);
        let result = async {
            let conn = self.connection_in_tx()?;
            if !outcome.published.is_empty() {
                sqlx::query(&delete_sql)
                    .bind(&outcome.published)
                    .execute(&mut *conn)
                    .await?;
            }
            if !outcome.failed.is_empty() {
                let f = &outcome.failed;
                sqlx::query(&fail_sql)
                    .bind(f.iter().map(|f| f.seq).collect::<Vec<_>>())
                    .bind(f.iter().map(|f| f.attempts).collect::<Vec<_>>())
                    .bind(f.iter().map(|f| f.error.as_str()).collect::<Vec<_>>())
                    .bind(
                        f.iter()
                            .map(|f| f.next_attempt_at)
                            .collect::<Vec<DateTime<Utc>>>(),
                    )
                    .bind(f.iter().map(|f| f.dead).collect::<Vec<_>>())
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        }
        .await;
        self.delete_sql = delete_sql;
        self.fail_sql = fail_sql;
        if result.is_ok() {
            self.in_transaction = false;
        }
        result
    }

    fn drop_connection(&mut self) {
        // Dropping the socket makes the server roll back and release everything.
        self.conn = None;
        self.in_transaction = false;
    }

    fn start_listener(&mut self) {
        let pool = self.pool.clone();
        let channel = self.outbox.channel().to_owned();
        let wake = Arc::clone(&self.wake);
        self.listener = Some(tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(error) => {
                        tracing::warn!(%error, channel, "outbox LISTEN connection failed; polling");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(error) = listener.listen(&channel).await {
                    tracing::warn!(%error, channel, "outbox LISTEN failed; polling");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // Anything committed while we were not listening is found by this wake-up.
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // Connection lost: notifications may be lost, so look now and
                        // reconnect.
                        Ok(None) => wake.notify_one(),
                        Err(error) => {
                            tracing::warn!(%error, channel, "outbox LISTEN lost; reconnecting");
                            wake.notify_one();
                            break;
                        }
                    }
                }
            }
        }));
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

impl Store for PgStore {
    async fn claim(&mut self, limit: usize, lease: Duration) -> Result<Vec<Claimed>, Error> {
        let result = self.try_claim(limit, lease).await;
        if result.is_err() {
            self.drop_connection();
        }
        result
    }

    async fn finish(&mut self, outcome: &Outcome) -> Result<(), Error> {
        let result = self.try_finish(outcome).await;
        if result.is_err() {
            self.drop_connection();
        }
        result
    }

    async fn abandon(&mut self) {
        if !self.in_transaction {
            return;
        }
        let rolled_back = match self.conn.as_mut() {
            Some(conn) => sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok(),
            None => false,
        };
        if rolled_back {
            self.in_transaction = false;
        } else {
            self.drop_connection();
        }
    }

    async fn wait(&mut self, poll: Duration) {
        // Listen even when enqueues do not notify: `Outbox::wake` does.
        if self.listener.is_none() {
            self.start_listener();
        }
        let _ = tokio::time::timeout(poll, self.wake.notified()).await;
    }

    async fn backlog(&mut self) -> Result<Backlog, Error> {
        OutboxPool::backlog(&self.pool, &self.outbox).await
    }
}
