//! Test support: a recording publisher (a test double of our own `Publisher` trait, not
//! of a broker), database setup and order checks.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_events::{Envelope, Error as EventsError, Publisher};
use uuid::Uuid;

/// Records every confirmed publish, in order; can be told to be down (transient
/// errors) or to refuse some events for good.
#[derive(Clone, Default)]
pub struct Recorder {
    pub log: Arc<Mutex<Vec<(String, Envelope)>>>,
    pub down: Arc<AtomicBool>,
    pub refused: Arc<Mutex<HashSet<Uuid>>>,
    pub calls: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn published(&self) -> Vec<(String, Envelope)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.published().into_iter().map(|(_, e)| e.id).collect()
    }

    pub fn len(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn refuse(&self, id: Uuid) {
        if let Ok(mut r) = self.refused.lock() {
            r.insert(id);
        }
    }

    pub fn accept(&self, id: Uuid) {
        if let Ok(mut r) = self.refused.lock() {
            r.remove(&id);
        }
    }
}

impl Publisher for Recorder {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), EventsError> {
        self.publish_batch(topic, vec![envelope]).await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        envelopes: Vec<Envelope>,
    ) -> Result<(), EventsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(EventsError::connection(
                "test",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "broker down"),
            ));
        }
        let refused = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
        let mut log = self.log.lock().map_err(|_| EventsError::Closed)?;
        // Like a real broker, a refused event stops the batch; the prefix is stored.
        for envelope in envelopes {
            if refused.contains(&envelope.id) {
                return Err(EventsError::Malformed {
                    reason: format!("event {} refused", envelope.id),
                });
            }
            log.push((topic.to_owned(), envelope));
        }
        Ok(())
    }
}

/// Per key, the order in which events were first published (a consumer that
/// deduplicates by id sees exactly this).
pub fn first_seen_per_key(published: &[(String, Envelope)]) -> HashMap<String, Vec<Uuid>> {
    let mut seen = HashSet::new();
    let mut per_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (_, e) in published {
        if seen.insert(e.id) {
            per_key
                .entry(e.key.clone().unwrap_or_default())
                .or_default()
                .push(e.id);
        }
    }
    per_key
}

/// Asserts that, per key, events were first published in the expected order.
pub fn assert_order_per_key(
    published: &[(String, Envelope)],
    expected: &HashMap<String, Vec<Uuid>>,
) {
    let got = first_seen_per_key(published);
    for (key, ids) in expected {
        let got_ids = got.get(key).cloned().unwrap_or_default();
        assert_eq!(&got_ids, ids, "order of key {key:?}");
    }
}

/// Asserts no event was published twice.
pub fn assert_no_duplicates(published: &[(String, Envelope)]) {
    let mut seen = HashSet::new();
    for (_, e) in published {
        assert!(seen.insert(e.id), "event {} published twice", e.id);
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn event(key: &str, n: usize) -> Envelope {
    Envelope::new("test.event", "tests", format!("{{\"n\":{n}}}").into_bytes()).with_key(key)
}

/// A fault hook that, at `point`, tells the test it got there and then never returns
/// (so the test can abort the relay there), once.
pub fn stall_at(
    point: palisade_outbox::FaultPoint,
) -> (
    palisade_outbox::FaultHook,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let armed = Arc::new(AtomicBool::new(true));
    let hook: palisade_outbox::FaultHook = Arc::new(move |p| {
        let tx = tx.clone();
        let stall = p == point && armed.swap(false, Ordering::SeqCst);
        Box::pin(async move {
            if stall {
                let _ = tx.send(());
                std::future::pending::<()>().await;
            }
        })
    });
    (hook, rx)
}

#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<(sqlx::PgPool, palisade_testkit::postgres::FreshDatabase)> {
    let db = palisade_testkit::postgres::fresh_database().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(db.url())
        .await
        .ok()?;
    palisade_outbox::Outbox::new().migrate(&pool).await.ok()?;
    Some((pool, db))
}

#[cfg(feature = "sqlite")]
pub async fn sqlite() -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let path = std::env::temp_dir().join(format!("{}.db", palisade_testkit::unique_name("outbox")));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("opening {path:?}: {e}"));
    palisade_outbox::Outbox::new()
        .migrate(&pool)
        .await
        .unwrap_or_else(|e| panic!("migrating {path:?}: {e}"));
    pool
}
