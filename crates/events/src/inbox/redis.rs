//! The Redis inbox.

use std::time::Duration;

use redis::aio::ConnectionManager;
use uuid::Uuid;

use super::{Claim, Inbox};
use crate::error::Error;
use crate::publisher::BoxFuture;

const PROCESSING: &str = "processing";
const PROCESSED: &str = "processed";

/// Deletes the key only while it still says `processing`, so a late release cannot
/// erase a `processed` mark or another instance's newer claim state.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// An [`Inbox`] in Redis, shared by every instance of a consumer: `SET NX` with a TTL.
///
/// Each (consumer, event id) is one key, `<prefix>:<consumer>:<event id>`, holding
/// `processing` (a claim, expiring after `lease`, default 30 s) or `processed`
/// (expiring after `ttl`, default 24 h). A claim is `SET key processing NX PX lease`:
/// one instance wins, the others see [`Claim::InProgress`] (try later) or
/// [`Claim::Processed`] (skip). If the instance holding a claim crashes mid-handler,
/// the claim expires and the redelivery is handled — retried, not skipped.
///
/// ```rust,no_run
/// use std::time::Duration;
/// use palisade_events::consumer::Consumer;
/// use palisade_events::inbox::RedisInbox;
/// use palisade_events::{MemoryBus, Subscription};
///
/// # async fn run() -> Result<(), palisade_events::Error> {
/// let inbox = RedisInbox::connect("redis://127.0.0.1:6379").await?
///     .with_ttl(Duration::from_secs(7 * 24 * 3600)); // how long a handled id is remembered
/// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "mailer")).inbox(inbox);
/// # let _ = consumer;
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct RedisInbox {
    conn: ConnectionManager,
    prefix: String,
    lease: Duration,
    ttl: Duration,
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisInbox {
    /// An inbox over `conn` with key prefix `palisade:inbox`, 30 s leases and a 24 h TTL.
    ///
    /// ```rust,no_run
    /// use palisade_events::inbox::RedisInbox;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // Share the service's reconnecting connection.
    /// let conn = redis::aio::ConnectionManager::new(redis::Client::open("redis://127.0.0.1:6379")?).await?;
    /// let inbox = RedisInbox::new(conn);
    /// assert!(format!("{inbox:?}").contains("palisade:inbox"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: "palisade:inbox".to_owned(),
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Connects to `url` (`redis://host:port/db`) with a reconnecting connection.
    ///
    /// ```rust,no_run
    /// use std::time::Duration;
    /// use palisade_events::inbox::RedisInbox;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let inbox = RedisInbox::connect("redis://127.0.0.1:6379").await?;
    /// assert!(format!("{inbox:?}").contains("lease: 30s"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::connection("redis", e))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| Error::connection("redis", e))?;
        Ok(Self::new(conn))
    }

    /// Sets the key prefix (default `palisade:inbox`).
    ///
    /// ```rust,no_run
    /// use std::time::Duration;
    /// use palisade_events::inbox::RedisInbox;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let inbox = RedisInbox::connect("redis://127.0.0.1:6379").await?.with_prefix("shop:inbox");
    /// assert!(format!("{inbox:?}").contains("shop:inbox"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a claim lasts without completion (default 30 s): longer than the
    /// slowest handler.
    ///
    /// ```rust,no_run
    /// use std::time::Duration;
    /// use palisade_events::inbox::RedisInbox;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let inbox = RedisInbox::connect("redis://127.0.0.1:6379").await?.with_lease(Duration::from_secs(120));
    /// assert!(format!("{inbox:?}").contains("lease: 120s"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a handled event is remembered (default 24 h).
    ///
    /// ```rust,no_run
    /// use std::time::Duration;
    /// use palisade_events::inbox::RedisInbox;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let inbox = RedisInbox::connect("redis://127.0.0.1:6379").await?.with_ttl(Duration::from_secs(7 * 24 * 3600));
    /// assert!(format!("{inbox:?}").contains("ttl: 604800s"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn key(&self, consumer: &str, event_id: Uuid) -> String {
        format!("{}:{consumer}:{event_id}", self.prefix)
    }

    fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    async fn claim_key(&self, key: String) -> Result<Claim, Error> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(PROCESSING)
            .arg("NX")
            .arg("PX")
            .arg(Self::millis(self.lease))
            .query_async(&mut conn)
            .await
            .map_err(inbox_error)?;
        if set.is_some() {
            return Ok(Claim::Acquired);
        }
        let state: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(inbox_error)?;
        Ok(match state.as_deref() {
            Some(PROCESSED) => Claim::Processed,
            // Expired between the two commands: let the redelivery try again.
            _ => Claim::InProgress,
        })
    }
}

fn inbox_error(e: redis::RedisError) -> Error {
    Error::Inbox(Box::new(e))
}

impl Inbox for RedisInbox {
    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        let key = self.key(consumer, event_id);
        Box::pin(self.claim_key(key))
    }

    fn complete<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let key = self.key(consumer, event_id);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(&key)
                .arg(PROCESSED)
                .arg("PX")
                .arg(Self::millis(self.ttl))
                .query_async::<()>(&mut conn)
                .await
                .map_err(inbox_error)
        })
    }

    fn release<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let key = self.key(consumer, event_id);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(&key)
                .arg(PROCESSING)
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(inbox_error)
        })
    }
}
