//! Group commit for [`PostgresStore`](super::PostgresStore) transitions.
//!
//! Every transition still commits before its `update` returns. What changes is how many
//! share a commit: a transition is queued, and if fewer than [`MAX_FLUSHERS`] writers
//! are at work one is started for it at once (so a lone transition is written alone,
//! without waiting); while they are all busy, transitions queue up and the next free
//! writer takes up to [`MAX_BATCH`] of them into **one statement** — one round trip, one
//! commit — whose optimistic version check still applies row by row: each caller learns
//! whether *its* row was written. A batch never holds two transitions of one saga.
//!
//! If a batch statement fails, nothing in it was written (it is one statement); each of
//! its callers then writes alone and gets its own answer. Writers are spawned tasks, so a
//! caller that is cancelled does not cancel the others' write.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::StoreError;

/// Writers at work at once (each holds one pooled connection while it writes).
pub(super) const MAX_FLUSHERS: usize = 4;
/// Transitions in one statement at most.
pub(super) const MAX_BATCH: usize = 256;

/// What a queued transition learns: written (`true`), refused by the version check
/// (`false`), or that its batch failed and it must write alone (`Err`).
pub(super) type Reply = Result<bool, ()>;

/// One queued transition, owned so that a writer task can carry it.
pub(super) struct Pending {
    pub(super) id: Uuid,
    pub(super) state: &'static str,
    pub(super) cursor: i32,
    pub(super) backward: bool,
    pub(super) context: serde_json::Value,
    pub(super) error: Option<String>,
    pub(super) version: i64,
    pub(super) owner: Option<String>,
    pub(super) lease_until: Option<DateTime<Utc>>,
    pub(super) deadline: Option<DateTime<Utc>>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) expected: i64,
    pub(super) history: serde_json::Value,
    pub(super) reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    flushers: usize,
}

/// The queue of transitions waiting for a writer.
#[derive(Default)]
pub(super) struct Batcher {
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

const UPDATE_BATCH: &str = "\
WITH v AS ( \
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::bool[], $5::jsonb[], $6::text[], \
                       $7::int8[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
                       $11::timestamptz[], $12::int8[], $13::jsonb[]) WITH ORDINALITY \
    AS v(id, state, cursor, backward, context, error, version, owner, lease_until, deadline, \
         updated_at, expected, hist, ord)), \
s AS ( \
  UPDATE palisade_saga p SET state = v.state, cursor = v.cursor, backward = v.backward, \
         context = v.context, error = v.error, version = v.version, owner = v.owner, \
         lease_until = v.lease_until, deadline = v.deadline, updated_at = v.updated_at \
  FROM v WHERE p.id = v.id AND p.version = v.expected RETURNING p.id), \
h AS ( \
  INSERT INTO palisade_saga_history (saga_id, event, step, attempt, error, started_at, at) \
  SELECT v.id, h.event, h.step, h.attempt, h.error, h.started_at, h.at \
  FROM v JOIN s ON s.id = v.id, \
       ROWS FROM (jsonb_to_recordset(v.hist) AS (event text, step text, attempt int, \
                  error text, started_at timestamptz, at timestamptz)) WITH ORDINALITY \
         AS h(event, step, attempt, error, started_at, at, n) \
  ORDER BY v.ord, h.n \
  RETURNING 1) \
SELECT id FROM s";

impl Batcher {
    /// Queues `pending`; returns whether the caller must start a writer for it.
    pub(super) fn submit(&self, pending: Pending) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.pending.push_back(pending);
        if queue.flushers < MAX_FLUSHERS {
            queue.flushers += 1;
            true
        } else {
            false
        }
    }

    /// The next batch: up to `MAX_BATCH` transitions, at most one per saga (a second
    /// transition of a saga stays queued, in order, for a later batch). Empty when the
    /// queue is, and then this writer has stopped.
    fn next_batch(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        let mut ids = HashSet::new();
        let mut later = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(p) = queue.pending.pop_front() else {
                break;
            };
            if ids.insert(p.id) {
                batch.push(p);
            } else {
                later.push(p);
            }
        }
        for p in later.into_iter().rev() {
            queue.pending.push_front(p);
        }
        if batch.is_empty() {
            queue.flushers -= 1;
        }
        batch
    }

    /// Writes batches until the queue is empty.
    pub(super) async fn flush(self: Arc<Self>, pool: PgPool) {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                return;
            }
            let mut batch = batch;
            let written = write(&pool, &mut batch).await;
            for p in batch {
                let reply = match &written {
                    Ok(ids) => Ok(ids.contains(&p.id)),
                    Err(error) => {
                        tracing::debug!(%error, "a batched saga write failed; its transitions write alone");
                        Err(())
                    }
                };
                // A caller that went away needs no answer.
                let _ = p.reply.send(reply);
            }
        }
    }
}

/// One statement for the whole batch; the ids whose version check passed.
async fn write(pool: &PgPool, batch: &mut [Pending]) -> Result<HashSet<Uuid>, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(UPDATE_BATCH)
        .bind(batch.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.state).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.cursor).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.backward).collect::<Vec<_>>())
        .bind(
            batch
                .iter_mut()
                .map(|p| p.context.take())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter_mut().map(|p| p.error.take()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.version).collect::<Vec<_>>())
        .bind(batch.iter_mut().map(|p| p.owner.take()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.lease_until).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.deadline).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.updated_at).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.expected).collect::<Vec<_>>())
        .bind(
            batch
                .iter_mut()
                .map(|p| p.history.take())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().collect())
}
