//! Redis Streams backend.
//!
//! A topic is a stream, a consumer group is a stream consumer group, and each
//! subscription is one consumer of that group with a name of its own.
//!
//! - **Publish**: `XADD <topic> MAXLEN ~ <n> * …fields`; the reply (the entry id) is
//!   the confirmation. [`Publisher::publish_batch`] pipelines the `XADD`s in one round
//!   trip.
//! - **Envelope mapping**: one stream field per attribute (`ce_id`, `ce_type`,
//!   `ce_source`, `ce_subject`, `ce_time`, `content-type`, `ce_correlationid`,
//!   `ce_causationid`), one per free header, and the payload in `ce_data`. An entry
//!   without the required fields, or with a field name or value that is not UTF-8
//!   where the envelope keeps it as text, is handed out as [`Delivery::malformed`], to
//!   be dead-lettered with its fields intact (replies are read with field names as
//!   bytes: redis-rs's stream replies leave such an entry out).
//! - **Consume**: `XREADGROUP … >` for new entries, at most `prefetch` unsettled at
//!   once; every [`RedisOptions::claim_idle`] the subscription also runs `XAUTOCLAIM`
//!   to take over entries that another member read but never settled (a consumer that
//!   died). That is how an unacknowledged delivery is delivered again: dropping a
//!   [`Delivery`] leaves its entry pending until a member claims it.
//! - **Settle**: ack is `XACK`, batched: the acks of one subscription that arrive while
//!   an `XACK` is in flight go out together in the next one (`XACK` takes many ids),
//!   and each ack returns once the `XACK` carrying it was answered; retry keeps the entry pending and, after the delay,
//!   re-claims it (`XCLAIM`, which counts the delivery) and hands it out again in
//!   process — nothing is re-added, so other groups never see a retry twice, and a
//!   process that dies during the delay leaves the entry to be claimed by another
//!   member; dead-letter adds the entry, with the reason in the
//!   `palisade-dead-letter-reason` field, to `<topic>.dlq` and acks the original in
//!   one `MULTI`.
//! - **Connections**: publishing and settling share one auto-reconnecting
//!   [`ConnectionManager`]; each subscription reads on a connection of its own (a
//!   blocking `XREADGROUP` would stall everything behind it) and retries with backoff
//!   while Redis is away.
//!
//! A new group starts at the beginning of the stream (`XGROUP CREATE … 0 MKSTREAM`),
//! so it sees the events still retained by `MAXLEN`. Order: a stream is totally
//! ordered and one consumer reads it in order; members of one group split the work
//! entry by entry, so order per key holds within a member, not across members.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use palisade_events::backend::redis::RedisBus;
//! use palisade_events::{Envelope, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> Result<(), palisade_events::Error> {
//! let bus = RedisBus::connect("redis://127.0.0.1:6379").await?;
//! let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
//! bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamPendingCountReply;
use redis::{Client, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::Original;
use super::acks::Acks;
use super::headers;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::{BoxFuture, Publisher};
use crate::subscriber::{Acknowledge, Delivery, DeliveryStream, Subscriber, Subscription};
use entries::Entry;

mod entries;

const BACKEND: &str = "redis";
/// The stream field carrying the payload.
const DATA: &str = "ce_data";
/// The stream field counting deliveries across re-adds by `retry`.
const ATTEMPT: &str = "x-palisade-attempt";

/// Options of a [`RedisBus`], with documented defaults.
///
/// ```
/// use std::time::Duration;
/// use palisade_events::backend::redis::RedisOptions;
///
/// let options = RedisOptions::new("redis://127.0.0.1:6379")
///     .max_len(Some(100_000))
///     .claim_idle(Duration::from_secs(10));
/// assert_eq!(options.url(), "redis://127.0.0.1:6379");
/// ```
#[derive(Clone, Debug)]
pub struct RedisOptions {
    url: String,
    max_len: Option<usize>,
    block: Duration,
    claim_idle: Duration,
    response_timeout: Duration,
    dead_letter_suffix: String,
}

impl RedisOptions {
    /// Options for the Redis server at `url` with every default.
    ///
    /// ```rust
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379");
    /// assert!(format!("{options:?}").contains("claim_idle"));
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_len: Some(1_000_000),
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            response_timeout: Duration::from_secs(5),
            dead_letter_suffix: ".dlq".to_owned(),
        }
    }

    /// The server URL.
    ///
    /// ```rust
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// assert_eq!(RedisOptions::new("redis://127.0.0.1:6379").url(), "redis://127.0.0.1:6379");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Approximate cap on a stream's length (`MAXLEN ~`). Default: 1,000,000 entries,
    /// a bound on memory that still keeps hours of history at typical rates. `None`
    /// never trims. Entries trimmed before a group read them are lost to that group.
    ///
    /// ```rust
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379").max_len(Some(100_000));
    /// assert!(format!("{options:?}").contains("max_len: Some(100000)"));
    /// ```
    #[must_use]
    pub fn max_len(mut self, max_len: Option<usize>) -> Self {
        self.max_len = max_len;
        self
    }

    /// How long one `XREADGROUP` blocks waiting for entries. Default: 1 s; also bounds
    /// how often stale entries are looked for.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379").block(Duration::from_millis(500));
    /// assert!(format!("{options:?}").contains("block: 500ms"));
    /// ```
    #[must_use]
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How long an entry stays pending with another member before this subscription
    /// claims it (`XAUTOCLAIM` min-idle-time). Default: 30 s — longer than a handler
    /// normally runs, so live members are not robbed, short enough that a crashed
    /// member's work resumes quickly.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379").claim_idle(Duration::from_secs(60));
    /// assert!(format!("{options:?}").contains("claim_idle: 60s"));
    /// ```
    #[must_use]
    pub fn claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle.max(Duration::from_millis(1));
        self
    }

    /// How long a command may wait for its reply before it fails. Default: 5 s, well
    /// above a pipelined batch's round trip on a loaded machine.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379").response_timeout(Duration::from_secs(2));
    /// assert!(format!("{options:?}").contains("response_timeout: 2s"));
    /// ```
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Suffix of the dead-letter stream's name. Default: `.dlq` (`orders.dlq`).
    ///
    /// ```rust
    /// use palisade_events::backend::redis::RedisOptions;
    ///
    /// let options = RedisOptions::new("redis://127.0.0.1:6379").dead_letter_suffix(":dead");
    /// assert!(format!("{options:?}").contains("\":dead\""));
    /// ```
    #[must_use]
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }
}

/// Publisher and subscriber over Redis Streams. Cheap to clone.
///
/// ```rust,no_run
/// use palisade_events::backend::redis::RedisBus;
/// use palisade_events::{Envelope, Publisher};
///
/// # async fn run() -> Result<(), palisade_events::Error> {
/// let bus = RedisBus::connect("redis://127.0.0.1:6379").await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?; // XADD answered
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    conn: ConnectionManager,
    options: Arc<RedisOptions>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to the Redis server at `url` with default [`RedisOptions`].
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::redis::RedisBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RedisBus::connect("redis://127.0.0.1:6379").await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::with_options(RedisOptions::new(url)).await
    }

    /// Connects with `options`.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::redis::{RedisBus, RedisOptions};
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RedisBus::with_options(RedisOptions::new("redis://127.0.0.1:6379").dead_letter_suffix(":dead")).await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders:dead");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn with_options(options: RedisOptions) -> Result<Self, Error> {
        let client =
            Client::open(options.url.as_str()).map_err(|e| Error::connection(BACKEND, e))?;
        let conn = manager(&client, options.response_timeout).await?;
        Ok(Self {
            client,
            conn,
            options: Arc::new(options),
        })
    }

    /// The name of `topic`'s dead-letter stream.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::redis::RedisBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RedisBus::connect("redis://127.0.0.1:6379").await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.options.dead_letter_suffix)
    }

    /// `XADD` of `envelope` to `topic`.
    fn xadd(&self, topic: &str, envelope: &Envelope) -> redis::Cmd {
        // What `xadd_envelope` writes: the pairs and the payload under `DATA`.
        let (pairs, bytes) = headers::encoded_size(envelope);
        let mut cmd = xadd_head(
            topic,
            self.options.max_len,
            2 * pairs + 2,
            bytes + DATA.len() + envelope.payload.len(),
        );
        xadd_envelope(&mut cmd, envelope);
        cmd
    }
}

async fn manager(client: &Client, response_timeout: Duration) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(5));
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| Error::connection(BACKEND, e))
}

/// `XADD <topic> [MAXLEN ~ <n>] *`, with room for `args` more arguments of `bytes`
/// bytes in all: built up from nothing, a command's buffers grew a step at a time, a
/// dozen allocations for each event published.
fn xadd_head(topic: &str, max_len: Option<usize>, args: usize, bytes: usize) -> redis::Cmd {
    /// `XADD`, the topic, `MAXLEN ~ <n>` and `*`.
    const HEAD_ARGS: usize = 6;
    /// The same but the topic, `<n>` at its longest.
    const HEAD_BYTES: usize = 4 + 6 + 1 + 20 + 1;
    let mut cmd = redis::Cmd::with_capacity(HEAD_ARGS + args, HEAD_BYTES + topic.len() + bytes);
    cmd.arg("XADD").arg(topic);
    if let Some(n) = max_len {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*");
    cmd
}

fn xadd_envelope(cmd: &mut redis::Cmd, envelope: &Envelope) {
    headers::encode_each(envelope, |name, value| {
        cmd.arg(name).arg(value);
    });
    cmd.arg(DATA).arg(envelope.payload.as_ref());
}

/// A reply our reader could not read ([`entries`]).
fn unreadable(reason: entries::Unreadable) -> Error {
    Error::broker(BACKEND, reason)
}

fn redis_error(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
    {
        Error::connection(BACKEND, e)
    } else {
        Error::broker(BACKEND, e)
    }
}

impl Publisher for RedisBus {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        let cmd = self.xadd(topic, &envelope);
        let mut conn = self.conn.clone();
        let _id: String = cmd.query_async(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::Pipeline::with_capacity(envelopes.len());
        for envelope in &envelopes {
            pipe.add_command(self.xadd(topic, envelope));
        }
        let mut conn = self.conn.clone();
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(redis_error)?;
        if ids.len() != envelopes.len() {
            return Err(Error::NotConfirmed {
                reason: format!("{} of {} XADDs answered", ids.len(), envelopes.len()),
            });
        }
        Ok(())
    }
}

impl Subscriber for RedisBus {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let mut conn = self.conn.clone();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&subscription.topic)
            .arg(&subscription.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(redis_error(e)),
        }
        // A blocking read needs a connection of its own, with a reply timeout longer
        // than the block.
        let reader = manager(
            &self.client,
            self.options.response_timeout + self.options.block,
        )
        .await?;
        let prefetch = subscription.prefetch.max(1);
        let (tx, mut rx) = mpsc::channel(prefetch);
        let name = format!("{}-{}", subscription.group, uuid::Uuid::now_v7());
        let acks = {
            let (conn, stream, group) = (
                self.conn.clone(),
                subscription.topic.clone(),
                subscription.group.clone(),
            );
            Acks::spawn(
                BACKEND,
                |reason| Error::broker(BACKEND, reason),
                move |ids: Vec<String>| {
                    let mut xack = redis::cmd("XACK");
                    xack.arg(&stream).arg(&group).arg(ids);
                    let mut conn = conn.clone();
                    async move {
                        xack.query_async::<i64>(&mut conn)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
            )
        };
        let shared = Arc::new(Shared {
            consumer: name.clone(),
            tx: tx.clone(),
            conn: self.conn.clone(),
            stream: subscription.topic.clone(),
            group: subscription.group.clone(),
            dead_letter: self.dead_letter_topic(&subscription.topic),
            max_len: self.options.max_len,
            acks,
        });
        let consumer = Consumer {
            shared,
            reader,
            name,
            permits: Arc::new(Semaphore::new(prefetch)),
            batch: prefetch,
            block: self.options.block.min(self.options.claim_idle),
            claim_idle: self.options.claim_idle,
            tx,
        };
        tokio::spawn(consumer.run());
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

/// What every delivery of one subscription needs to settle itself.
struct Shared {
    /// This subscription's consumer name in the group.
    consumer: String,
    /// Where in-process retries are delivered again.
    tx: mpsc::Sender<Result<Delivery, Error>>,
    conn: ConnectionManager,
    stream: String,
    group: String,
    dead_letter: String,
    max_len: Option<usize>,
    /// Acks, sent in batches of one `XACK` each.
    acks: Acks<String>,
}

/// The task behind one subscription.
struct Consumer {
    shared: Arc<Shared>,
    reader: ConnectionManager,
    name: String,
    permits: Arc<Semaphore>,
    batch: usize,
    block: Duration,
    claim_idle: Duration,
    tx: mpsc::Sender<Result<Delivery, Error>>,
}

impl Consumer {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut claim_cursor = "0-0".to_owned();
        let mut next_claim = Instant::now() + self.claim_idle;
        let tx = self.tx.clone();
        loop {
            // Read when at least half the prefetch window is free (the other half is
            // still work in hand), so that a window emptied by a trickle of acks is
            // refilled in a few large reads rather than many small ones.
            let low_water = u32::try_from((self.batch / 2).max(1)).unwrap_or(u32::MAX);
            let mut permits = tokio::select! {
                permits = self.permits.clone().acquire_many_owned(low_water) => match permits {
                    Ok(permits) => permits,
                    Err(_) => return,
                },
                () = self.tx.closed() => return,
            };
            let more = self
                .permits
                .available_permits()
                .min(self.batch.saturating_sub(permits.num_permits()));
            if let Ok(more) = self
                .permits
                .clone()
                .try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
            {
                permits.merge(more);
            }
            let fetched = if Instant::now() >= next_claim {
                let claimed = self.claim(&mut claim_cursor, permits.num_permits()).await;
                if claim_cursor == "0-0" {
                    next_claim = Instant::now() + self.claim_idle / 2;
                }
                claimed
            } else {
                tokio::select! {
                    read = self.read(permits.num_permits()) => read,
                    () = tx.closed() => return,
                }
            };
            match fetched {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    for (entry, attempt) in entries {
                        let Some(permit) = permits.split(1) else {
                            break;
                        };
                        let delivery = self.delivery(entry, attempt, permit);
                        if self.tx.send(Ok(delivery)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.shared.stream, group = %self.shared.group, error = %e, "redis read failed; retrying");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn read(&mut self, count: usize) -> Result<Vec<(Entry, u32)>, Error> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(">")
            .query_async(&mut self.reader)
            .await
            .map_err(redis_error)?;
        Ok(entries::read_reply(reply)
            .map_err(unreadable)?
            .into_iter()
            .map(|entry| {
                let attempt = base_attempt(&entry);
                (entry, attempt)
            })
            .collect())
    }

    /// Claims entries other members left pending longer than `claim_idle`.
    async fn claim(
        &mut self,
        cursor: &mut String,
        count: usize,
    ) -> Result<Vec<(Entry, u32)>, Error> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.name)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.reader)
            .await
            .map_err(redis_error)?;
        let (next, claimed) = entries::autoclaim_reply(reply).map_err(unreadable)?;
        *cursor = next;
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(Vec::new());
        };
        // XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(claimed.len())
            .arg(&self.name)
            .query_async(&mut self.reader)
            .await
            .map_err(redis_error)?;
        let delivered: HashMap<String, usize> = pending
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered))
            .collect();
        Ok(claimed
            .into_iter()
            .map(|entry| {
                let times = delivered.get(&entry.id).copied().unwrap_or(2).max(1);
                let attempt = base_attempt(&entry)
                    .saturating_add(u32::try_from(times - 1).unwrap_or(u32::MAX));
                (entry, attempt)
            })
            .collect())
    }

    fn delivery(&self, entry: Entry, attempt: u32, permit: OwnedSemaphorePermit) -> Delivery {
        let fields = entry.fields;
        // Decoded here, and the fields dropped here unless the entry is malformed: what
        // the acker keeps is freed by whichever task settles it, and few allocations
        // crossing tasks keep the allocator off its slow path.
        let original = Original::new(decode_fields(&fields), || fields);
        RedisAcker {
            shared: self.shared.clone(),
            entry_id: entry.id,
            original,
            attempt,
            _permit: permit,
        }
        .into_delivery()
    }
}

fn base_attempt(entry: &Entry) -> u32 {
    entry
        .field(ATTEMPT)
        .and_then(|value| std::str::from_utf8(value).ok()?.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

/// Reads an envelope out of an entry's fields: names and values as bytes, each
/// checked for UTF-8 where the envelope keeps it as text (a field that is not makes
/// the entry malformed).
fn decode_fields(fields: &[(Bytes, Bytes)]) -> Result<Envelope, Error> {
    let mut payload = None;
    let mut decoder = headers::Decoder::default();
    for (name, value) in fields {
        if name.as_ref() == DATA.as_bytes() {
            payload = Some(value.clone());
        } else {
            decoder.pair(name, value);
        }
    }
    let payload = payload.ok_or_else(|| headers::malformed(format!("missing field {DATA}")))?;
    decoder.finish(payload)
}

/// Settles one entry.
struct RedisAcker {
    shared: Arc<Shared>,
    entry_id: String,
    /// The envelope, or the entry's fields as read when it is malformed.
    original: Original<Vec<(Bytes, Bytes)>>,
    attempt: u32,
    _permit: OwnedSemaphorePermit,
}

impl RedisAcker {
    fn into_delivery(self) -> Delivery {
        Delivery::from_message(self.original.message(), self.attempt, Box::new(self))
    }

    /// `MULTI; XADD <to> …fields; XACK <stream> <group> <id>; EXEC`.
    async fn move_to(self, to: &str, extra: &[(&str, String)]) -> Result<(), Error> {
        // Rare (a retry or a dead letter): the command grows as it is written.
        let mut add = xadd_head(to, self.shared.max_len, 0, 0);
        let kept = |name: &[u8]| !extra.iter().any(|(n, _)| n.as_bytes() == name);
        match &self.original {
            Original::Envelope(envelope) => {
                headers::encode_each(envelope, |name, value| {
                    if kept(name.as_bytes()) {
                        add.arg(name).arg(value);
                    }
                });
                add.arg(DATA).arg(envelope.payload.as_ref());
            }
            Original::Malformed { raw: fields, .. } => {
                for (name, value) in fields {
                    if kept(name) {
                        add.arg(name.as_ref()).arg(value.as_ref());
                    }
                }
            }
        }
        for (name, value) in extra {
            add.arg(*name).arg(value.as_str());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(add)
            .cmd("XACK")
            .arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.entry_id);
        let mut conn = self.shared.conn.clone();
        let _: (String, i64) = pipe.query_async(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }
}

impl Acknowledge for RedisAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let entry_id = std::mem::take(&mut self.entry_id);
            // `self` (and with it the prefetch permit) goes only once the ack was sent.
            self.shared.acks.ack(entry_id).await
        })
    }

    fn retry(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), Error>> {
        // Retried in process: the entry stays pending with this consumer, so neither
        // other members nor other groups see it again, and a crash during the delay
        // leaves it to be claimed like any unsettled entry.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut conn = self.shared.conn.clone();
            // Re-claiming resets the idle time and counts the delivery; it returns
            // nothing if another member claimed the entry during the delay.
            let min_idle = u64::try_from(delay.as_millis() * 9 / 10).unwrap_or(u64::MAX);
            let claimed = redis::cmd("XCLAIM")
                .arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(min_idle)
                .arg(&self.entry_id)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(redis_error)
                .and_then(|reply| entries::claim_reply(reply).map_err(unreadable));
            match claimed {
                Ok(claimed) if claimed.iter().any(|e| e.id == self.entry_id) => {
                    let mut again = *self;
                    again.attempt = again.attempt.saturating_add(1);
                    let tx = again.shared.tx.clone();
                    let _ = tx.send(Ok(again.into_delivery())).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(stream = %self.shared.stream, entry = %self.entry_id, error = %e, "redis retry could not re-claim the entry; it stays pending and will be claimed");
                }
            }
        });
        super::settled()
    }

    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let to = self.shared.dead_letter.clone();
            let attempt = self.attempt.to_string();
            self.move_to(
                &to,
                &[(headers::DEAD_LETTER_REASON, reason), (ATTEMPT, attempt)],
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(envelope: &Envelope) -> Vec<(Bytes, Bytes)> {
        let mut fields: Vec<(Bytes, Bytes)> = headers::encode(envelope)
            .into_iter()
            .map(|(n, v)| (Bytes::from(n.into_owned()), Bytes::from(v.into_owned())))
            .collect();
        fields.push((
            Bytes::from_static(DATA.as_bytes()),
            envelope.payload.clone(),
        ));
        fields
    }

    #[test]
    fn stream_fields_round_trip_the_envelope() -> Result<(), Error> {
        let envelope = Envelope::new("order.placed", "shop", vec![0u8, 159, 146, 150])
            .with_key("order-1")
            .with_correlation_id("c")
            .with_header("ce_data", "not the payload");
        assert_eq!(decode_fields(&fields_of(&envelope))?, envelope);
        Ok(())
    }

    #[test]
    fn entry_without_payload_or_with_binary_header_is_malformed() {
        let envelope = Envelope::new("t", "s", "{}");
        let mut fields = fields_of(&envelope);
        fields.retain(|(n, _)| n.as_ref() != DATA.as_bytes());
        assert!(matches!(
            decode_fields(&fields),
            Err(Error::Malformed { .. })
        ));
        let mut fields = fields_of(&envelope);
        fields.push((Bytes::from_static(b"h"), Bytes::from_static(&[0xff, 0xfe])));
        assert!(matches!(
            decode_fields(&fields),
            Err(Error::Malformed { .. })
        ));
    }
}
