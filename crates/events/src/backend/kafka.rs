//! Kafka backend (rdkafka / librdkafka).
//!
//! - **Topology**: a topic is a Kafka topic; a group is a Kafka consumer group, whose
//!   members split the topic's partitions; every group reads every event.
//! - **Publish**: an idempotent producer with `acks=all`; `publish` returns when the
//!   broker acknowledged the write to all in-sync replicas. The envelope's key is the
//!   record key, so one key always lands on one partition and stays in order.
//!   [`Publisher::publish_batch`] enqueues the whole batch before awaiting the
//!   delivery reports, so librdkafka batches it.
//! - **Envelope mapping**: record headers under the names of
//!   [the shared mapping](super::headers), the payload as the record value. A record
//!   without the required headers, or with a header name or value that is not UTF-8
//!   where the envelope keeps it as text, is handed out as [`Delivery::malformed`] (its
//!   header names are read as bytes: rdkafka's own accessor panics on one that is not
//!   UTF-8).
//! - **Consume**: an offset becomes committable only once the record and every earlier
//!   record of its partition delivered to this member were settled: the member stores
//!   the lowest unsettled offset (or the next one when none is unsettled) with
//!   librdkafka, which commits what is stored every
//!   [`commit_interval`](KafkaOptions::commit_interval) (1 s by default) and when the
//!   member leaves the group, so a crash redelivers everything not settled, in order
//!   (plus what was settled since the last commit: the inbox absorbs those). Stores
//!   are batched: a settle stores at once when its partition's committable offset is
//!   64 past the last store, otherwise the member stores within 100 ms (or the commit
//!   interval, if shorter) and when the subscription ends. A `commit_interval` of zero
//!   commits at every settle instead. The reader enters the offsets it hands out in
//!   batches of up to 32 (and whenever it waits for records, and when the stream is
//!   dropped), so a settle that comes first counts from that entry on: while records
//!   flow, at most 32 records later. At most `prefetch` deliveries are unsettled at
//!   once.
//! - **Settle**: ack marks the record done. Retry hands the same record out again in
//!   process after the delay, with the attempt raised, keeping its offset uncommitted
//!   (a crash meanwhile redelivers it from the broker). Dead-letter produces a copy,
//!   with the reason in the `palisade-dead-letter-reason` header, to `<topic>.dlq`
//!   (`acks=all`), then marks the record done. An acked delivery's envelope, when
//!   nothing else holds it (a handler that kept a clone of the `Arc` keeps it to
//!   itself), goes back to the subscription, which reads a later record into it: at
//!   most 128 envelopes kept per subscription, without their payloads.
//! - **Redelivery**: Kafka has no per-record acknowledgement, so an unsettled record is
//!   delivered again only when its partition moves to another member (this member
//!   left the group, died, or lost the partition in a rebalance) or the member
//!   restarts. Dropping the [`DeliveryStream`] and its deliveries leaves the group.
//!   Kafka does not count deliveries: a redelivered record starts again at attempt 1.
//! - **Connections**: librdkafka reconnects and retries by itself; a publish that
//!   cannot be delivered within [`KafkaOptions::send_timeout`] is an error.
//!
//! Topics are not created by this backend: create them (with the partition count you
//! want) with your tooling, or let the broker auto-create them.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use palisade_events::backend::kafka::KafkaBus;
//! use palisade_events::{Envelope, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> Result<(), palisade_events::Error> {
//! let bus = KafkaBus::connect("127.0.0.1:9092")?;
//! let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
//! bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::headers;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::{BoxFuture, Publisher};
use crate::subscriber::{Delivery, DeliveryStream, Subscriber, Subscription};
use native_headers::{HeaderPairs, RecordHeaders};

mod native_headers;

const BACKEND: &str = "kafka";
const ATTEMPT: &str = "x-palisade-attempt";

/// Options of a [`KafkaBus`], with documented defaults.
///
/// ```
/// use palisade_events::backend::kafka::KafkaOptions;
///
/// let options = KafkaOptions::new("127.0.0.1:9092").set("linger.ms", "10");
/// assert_eq!(options.bootstrap_servers(), "127.0.0.1:9092");
/// ```
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    bootstrap_servers: String,
    extra: Vec<(String, String)>,
    dead_letter_suffix: String,
    send_timeout: Duration,
    commit_interval: Duration,
}

impl KafkaOptions {
    /// Options for the cluster at `bootstrap_servers` with every default.
    ///
    /// ```rust
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// let options = KafkaOptions::new("127.0.0.1:9092");
    /// assert!(format!("{options:?}").contains("send_timeout: 30s"));
    /// ```
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            extra: Vec::new(),
            dead_letter_suffix: ".dlq".to_owned(),
            send_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
        }
    }

    /// The bootstrap servers.
    ///
    /// ```rust
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// assert_eq!(KafkaOptions::new("127.0.0.1:9092").bootstrap_servers(), "127.0.0.1:9092");
    /// ```
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Sets a librdkafka property on the producer and the consumers (e.g. security
    /// settings). Default: none. `enable.idempotence`, `acks` and
    /// `enable.auto.commit` are ours and set after these.
    ///
    /// ```rust
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// let options = KafkaOptions::new("127.0.0.1:9092").set("security.protocol", "ssl");
    /// assert!(format!("{options:?}").contains("security.protocol"));
    /// ```
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// Suffix of the dead-letter topic. Default: `.dlq` (`orders.dlq`).
    ///
    /// ```rust
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// let options = KafkaOptions::new("127.0.0.1:9092").dead_letter_suffix(".dead");
    /// assert!(format!("{options:?}").contains("\".dead\""));
    /// ```
    #[must_use]
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// How long a publish may wait for the broker (queueing and delivery) before it
    /// is an error. Default: 30 s, librdkafka's own `message.timeout.ms` scale.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// let options = KafkaOptions::new("127.0.0.1:9092").send_timeout(Duration::from_secs(5));
    /// assert!(format!("{options:?}").contains("send_timeout: 5s"));
    /// ```
    #[must_use]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How often a consumer commits the offsets of settled records (librdkafka's
    /// `auto.commit.interval.ms` over offsets we store only once settled). Default:
    /// 1 s. A crash redelivers what was settled since the last commit; zero commits
    /// at every settle (or, for a record settled before the reader entered its offset,
    /// at that entry: see the module's notes), up to one commit request per record, which a
    /// busy partition pays for in throughput.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::kafka::KafkaOptions;
    ///
    /// // Fewer redeliveries after a crash, at the price of a commit per record.
    /// let options = KafkaOptions::new("127.0.0.1:9092").commit_interval(Duration::ZERO);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// Publisher and subscriber over Kafka. Cheap to clone.
///
/// ```rust,no_run
/// use palisade_events::backend::kafka::KafkaBus;
/// use palisade_events::{Envelope, Publisher};
///
/// # async fn run() -> Result<(), palisade_events::Error> {
/// let bus = KafkaBus::connect("127.0.0.1:9092")?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?; // acks=all
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct KafkaBus {
    producer: FutureProducer,
    options: Arc<KafkaOptions>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// A bus for the cluster at `bootstrap_servers` with default [`KafkaOptions`].
    /// librdkafka connects lazily, so this does not wait for the cluster.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::kafka::KafkaBus;
    ///
    /// let bus = KafkaBus::connect("127.0.0.1:9092")?; // the producer connects lazily
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn connect(bootstrap_servers: &str) -> Result<Self, Error> {
        Self::with_options(KafkaOptions::new(bootstrap_servers))
    }

    /// A bus with `options`.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::kafka::{KafkaBus, KafkaOptions};
    ///
    /// let bus = KafkaBus::with_options(KafkaOptions::new("127.0.0.1:9092").dead_letter_suffix("-dlq"))?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders-dlq");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn with_options(options: KafkaOptions) -> Result<Self, Error> {
        let timeout_ms = options.send_timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = options
            .config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .create()
            .map_err(|e| Error::connection(BACKEND, e))?;
        Ok(Self {
            producer,
            options: Arc::new(options),
        })
    }

    /// The name of `topic`'s dead-letter topic.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::kafka::KafkaBus;
    ///
    /// let bus = KafkaBus::connect("127.0.0.1:9092")?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.options.dead_letter_suffix)
    }
}

/// The record headers carrying `envelope`'s attributes and free headers, then `extra`
/// (which replace any envelope pair of the same name).
fn record_headers(envelope: &Envelope, extra: &[(&str, &str)]) -> OwnedHeaders {
    let capacity = 8 + envelope.headers.len() + extra.len();
    // `insert` takes the headers by value; the `Option` lends them to the closure.
    let mut out = Some(OwnedHeaders::new_with_capacity(capacity));
    headers::encode_each(envelope, |name, value| {
        if !extra.iter().any(|(n, _)| *n == name) {
            out = out.take().map(|h| {
                h.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                })
            });
        }
    });
    with_extra(out.unwrap_or_default(), extra)
}

/// `headers` with `extra` appended.
fn with_extra(headers: OwnedHeaders, extra: &[(&str, &str)]) -> OwnedHeaders {
    extra.iter().fold(headers, |h, (name, value)| {
        h.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        })
    })
}

/// Reads an envelope and the delivery attempt (our `x-palisade-attempt` header, 1 when
/// absent) out of record headers and value, in one pass over the headers; into `spare`
/// (an envelope handed back by an earlier delivery's ack) when there is one.
fn decode_with_attempt<'a, H: HeaderPairs<'a>>(
    record_headers: Option<H>,
    payload: Bytes,
    last: &mut headers::LastRead,
    spare: Option<Arc<Envelope>>,
) -> (Result<Arc<Envelope>, Error>, u32) {
    let mut attempt = None;
    let mut decoder = headers::Decoder::default();
    if let Some(record_headers) = record_headers {
        // By index up to a count taken once: rdkafka's iterator asks librdkafka for the
        // count again at every step.
        let count = record_headers.count();
        // The attributes as our publisher writes them first, then the rest pair by pair
        // (a header without a value is left to that loop, which skips it).
        let first = decoder.leading(|at| {
            if at >= count {
                return None;
            }
            let (name, value) = record_headers.pair(at)?;
            Some((name, value?))
        });
        for at in first..count {
            let Some((name, value)) = record_headers.pair(at) else {
                break;
            };
            let Some(value) = value else {
                continue;
            };
            if name == ATTEMPT.as_bytes() {
                attempt = std::str::from_utf8(value)
                    .ok()
                    .and_then(|value| value.parse().ok())
                    .or(attempt);
            }
            decoder.pair(name, value);
        }
    }
    let envelope = match spare {
        Some(mut spare) => match Arc::get_mut(&mut spare) {
            Some(envelope) => decoder.fill(payload, last, envelope).map(|()| spare),
            None => decoder.finish_after(payload, last).map(Arc::new),
        },
        None => decoder.finish_after(payload, last).map(Arc::new),
    };
    (envelope, attempt.unwrap_or(1).max(1))
}

/// How many envelopes handed back by acks the ledger keeps for the reader (which holds
/// at most as many more, taken from the ledger when it had none left).
const SPARES: usize = 2 * CLAIM;

/// The longest key or id string a kept envelope keeps, in bytes of capacity.
const SPARE_TEXT: usize = 256;

/// `envelope`, emptied of its payload and free headers, when it can be filled again:
/// no one else holds it. Envelopes go back and forth between the reader and the acks
/// so that reading a record does not allocate an envelope and its key, nor free the
/// ones of the record before: the reading thread frees far more than it allocates
/// (librdkafka allocates each record on its own threads), so its allocator's cache is
/// full and every free took the allocator's slow path.
fn spare(mut envelope: Arc<Envelope>) -> Option<Arc<Envelope>> {
    let kept = Arc::get_mut(&mut envelope)?;
    kept.payload = Bytes::new();
    if !kept.headers.is_empty() {
        kept.headers = std::collections::BTreeMap::new();
    }
    for text in [
        &mut kept.key,
        &mut kept.correlation_id,
        &mut kept.causation_id,
    ] {
        if text.as_ref().is_some_and(|t| t.capacity() > SPARE_TEXT) {
            *text = None;
        }
    }
    Some(envelope)
}

async fn send(
    producer: &FutureProducer,
    timeout: Duration,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    record_headers: OwnedHeaders,
) -> Result<(), Error> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(record_headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Timeout::After(timeout))
        .await
        .map_err(|(e, _)| Error::broker(BACKEND, e))?;
    Ok(())
}

impl Publisher for KafkaBus {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        let record_headers = record_headers(&envelope, &[]);
        send(
            &self.producer,
            self.options.send_timeout,
            topic,
            envelope.key.as_deref().map(str::as_bytes),
            &envelope.payload,
            record_headers,
        )
        .await
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        let mut reports = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(&envelope.payload)
                .headers(record_headers(envelope, &[]));
            if let Some(key) = &envelope.key {
                record = record.key(key.as_bytes());
            }
            let mut record = Some(record);
            // Enqueue the whole batch first; wait for room when the local queue is full.
            loop {
                let Some(next) = record.take() else { break };
                match self.producer.send_result(next) {
                    Ok(report) => reports.push(report),
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        record = Some(back);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(Error::broker(BACKEND, e)),
                }
            }
        }
        for report in reports {
            match report.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::broker(BACKEND, e)),
                Err(_) => {
                    return Err(Error::NotConfirmed {
                        reason: "the producer dropped the delivery report".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Subscriber for KafkaBus {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let periodic = !self.options.commit_interval.is_zero();
        let consumer: StreamConsumer = self
            .options
            .config()
            .set("group.id", &subscription.group)
            .set(
                "enable.auto.commit",
                if periodic { "true" } else { "false" },
            )
            .set(
                "auto.commit.interval.ms",
                self.options.commit_interval.as_millis().max(1).to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| Error::connection(BACKEND, e))?;
        consumer
            .subscribe(&[subscription.topic.as_str()])
            .map_err(|e| Error::broker(BACKEND, e))?;
        let prefetch = subscription.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let shared = Arc::new(Shared {
            consumer: ClosingConsumer(Some(consumer)),
            producer: self.producer.clone(),
            send_timeout: self.options.send_timeout,
            dead_letter: self.dead_letter_topic(&subscription.topic),
            topic: subscription.topic.clone(),
            ledger: Mutex::new(Ledger::new(prefetch)),
            periodic,
            tx,
            retrying: AtomicUsize::new(0),
        });
        if periodic {
            tokio::spawn(store_now_and_then(
                Arc::downgrade(&shared),
                self.options.commit_interval.min(STORE_EVERY),
            ));
        }
        Ok(Box::pin(Reader {
            shared,
            retries: rx,
            waiting: None,
            pause: None,
            last: headers::LastRead::default(),
            room: 0,
            unentered: Vec::with_capacity(CLAIM),
            spares: Vec::with_capacity(SPARES),
        }))
    }
}

/// Offsets of one partition delivered to this member.
#[derive(Default)]
struct PartitionOffsets {
    /// Delivered offsets from the lowest unsettled one on, ascending, each with whether
    /// it is settled (records arrive in offset order, so this is appended to and
    /// drained from the front).
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset delivered.
    next: i64,
    /// The offset a commit may go up to: the lowest unsettled one, or `next`.
    committable: i64,
    /// The offset last handed to librdkafka (stored, or committed).
    stored: i64,
}

impl PartitionOffsets {
    fn delivered(&mut self, offset: i64) {
        match self.window.back() {
            Some(&(last, _)) if offset <= last => {
                // Delivered again (a rebalance moved the partition back): keep it sorted.
                match self.window.binary_search_by_key(&offset, |&(o, _)| o) {
                    Ok(at) => self.window[at].1 = false,
                    Err(at) => self.window.insert(at, (offset, false)),
                }
            }
            _ => self.window.push_back((offset, false)),
        }
        self.next = self.next.max(offset + 1);
    }

    /// Marks `offset` settled; returns whether the committable offset moved, or `None`
    /// when `offset` is not in the window (not entered yet).
    fn settled(&mut self, offset: i64) -> Option<bool> {
        if offset >= self.next {
            // Past every entered offset: not entered yet.
            return None;
        }
        // Usually the oldest unsettled one (records are mostly settled in order).
        if let Some(front) = self.window.front_mut().filter(|(o, _)| *o == offset) {
            front.1 = true;
        } else {
            let at = self
                .window
                .binary_search_by_key(&offset, |&(o, _)| o)
                .ok()?;
            self.window[at].1 = true;
        }
        while self.window.front().is_some_and(|&(_, settled)| settled) {
            self.window.pop_front();
        }
        let upto = self.window.front().map_or(self.next, |&(o, _)| o);
        let moved = upto > self.committable;
        self.committable = self.committable.max(upto);
        Some(moved)
    }

    /// The committable offset, marked stored, when it is at least `gap` (at least 1)
    /// past the offset librdkafka was last given.
    fn take_due(&mut self, gap: i64) -> Option<i64> {
        if self.committable - self.stored < gap {
            return None;
        }
        self.stored = self.committable;
        Some(self.committable)
    }
}

/// How far (in offsets) a partition's committable offset may run ahead of the one
/// stored with librdkafka before a settle stores it at once; `store_now_and_then`
/// stores the rest.
const STORE_BATCH: i64 = 64;

/// How far a partition's committable offset runs ahead of the stored one before a
/// settle hands it over: [`STORE_BATCH`] with periodic commits, any step with a
/// commit per settle.
fn store_gap(periodic: bool) -> i64 {
    if periodic { STORE_BATCH } else { 1 }
}

/// How often settled offsets not yet stored are stored (at most; the commit interval
/// when it is shorter).
const STORE_EVERY: Duration = Duration::from_millis(100);

/// Stores what settled since the last store, every `every`, while the subscription
/// lives: with periodic commits, settles store in batches, and this bounds how long a
/// settled offset waits for librdkafka's next commit.
async fn store_now_and_then(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.store_unstored() {
            tracing::debug!(topic = %shared.topic, error = %error, "kafka offset store failed");
        }
    }
}

/// One delivery's room in the prefetch window, given back when it is settled or
/// dropped unsettled.
struct Slot {
    shared: Arc<Shared>,
    /// Given back already (by its settle).
    returned: bool,
}

impl Slot {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            returned: false,
        }
    }

    /// Settles the delivery at `partition` and `offset` and gives its room back, with
    /// its envelope to fill again when there is one.
    fn settle(
        &mut self,
        partition: i32,
        offset: i64,
        spare: Option<Arc<Envelope>>,
    ) -> Result<(), Error> {
        self.returned = true;
        self.shared.give_back(Some((partition, offset)), spare)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.returned {
            // Dropped unsettled: the room comes back, the offset stays uncommitted.
            let _ = self.shared.give_back(None, None);
        }
    }
}

/// A consumer closed on a thread of its own: closing leaves the group, which blocks
/// until the broker answers, and must stall neither an async worker nor the
/// runtime's shutdown.
struct ClosingConsumer(Option<StreamConsumer>);

impl std::ops::Deref for ClosingConsumer {
    type Target = Option<StreamConsumer>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for ClosingConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let closing = std::thread::Builder::new()
                .name("palisade-kafka-close".to_owned())
                .spawn(move || drop(consumer));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "could not spawn a thread to close the kafka consumer");
            }
        }
    }
}

/// What the reader and every delivery of one subscription share.
struct Shared {
    consumer: ClosingConsumer,
    producer: FutureProducer,
    send_timeout: Duration,
    dead_letter: String,
    /// The subscribed topic (a subscription reads one).
    topic: String,
    /// The offsets and the prefetch window.
    ledger: Mutex<Ledger>,
    /// Store offsets for librdkafka's periodic commit (else commit each one).
    periodic: bool,
    tx: mpsc::Sender<Result<Delivery, Error>>,
    /// Retries sent through `tx` and not yet taken by the reader.
    retrying: AtomicUsize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Before the consumer closes (fields drop after this), so that its closing
        // commit includes every settled offset.
        if let Err(error) = self.store_unstored() {
            tracing::debug!(topic = %self.topic, error = %error, "kafka offset store failed");
        }
    }
}

/// The offsets of each partition this member was handed records of, indexed by
/// partition id: a topic's partitions are numbered from 0, so the vector is as long as
/// the highest partition delivered here (64 bytes per partition).
#[derive(Default)]
struct Offsets(Vec<PartitionOffsets>);

impl Offsets {
    /// The entry of `partition`, made when it is new here.
    fn entry(&mut self, partition: i32) -> Option<&mut PartitionOffsets> {
        let at = usize::try_from(partition).ok()?;
        if at >= self.0.len() {
            self.0.resize_with(at + 1, PartitionOffsets::default);
        }
        self.0.get_mut(at)
    }

    /// The entry of `partition`, if records of it were delivered here.
    fn get(&mut self, partition: i32) -> Option<&mut PartitionOffsets> {
        self.0.get_mut(usize::try_from(partition).ok()?)
    }

    /// Each partition's committable offset at least `gap` past its stored one, marked
    /// stored (see [`PartitionOffsets::take_due`]).
    fn take_due(&mut self, gap: i64) -> Vec<(i32, i64)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(p, entry)| Some((i32::try_from(p).ok()?, entry.take_due(gap)?)))
            .collect()
    }
}

/// How many records the reader hands out between two visits to the [`Ledger`]: it
/// claims room in the prefetch window for up to this many at once, and enters the
/// offsets it delivered meanwhile in one go, so that a record costs the reader no
/// lock of its own.
const CLAIM: usize = 32;

/// What the reader and the settles of one subscription keep under one lock: each
/// partition's offsets, the prefetch window's unclaimed room, and the settles of
/// records delivered but not entered yet.
///
/// The reader enters the offsets it delivered in batches (at most [`CLAIM`] at a
/// time, and whenever it has to wait), so a settle may come before its record's
/// offset is entered; it is kept in `early` and applied when the offset is. Until
/// then a partition's committable offset is at most one past the highest entered
/// offset, which is below the record's: nothing is committed past an unsettled record.
struct Ledger {
    offsets: Offsets,
    /// Room in the prefetch window that the reader has not claimed.
    free: usize,
    /// Settles of records whose offsets were not entered yet.
    early: Vec<(i32, i64)>,
    /// The reader, while it waits for room.
    reader: Option<std::task::Waker>,
    /// Envelopes handed back by acks (at most [`SPARES`]), for the reader to take.
    spares: Vec<Arc<Envelope>>,
}

impl Ledger {
    fn new(prefetch: usize) -> Self {
        Self {
            offsets: Offsets::default(),
            free: prefetch,
            early: Vec::new(),
            reader: None,
            spares: Vec::with_capacity(SPARES),
        }
    }

    /// Marks `offset` of `partition` settled (or keeps the settle until the offset is
    /// entered); returns the offset to hand over to librdkafka now, if any: with a
    /// commit per settle (`periodic` false) whenever the committable offset moved,
    /// else once it is [`STORE_BATCH`] past the last store.
    fn settle(&mut self, partition: i32, offset: i64, periodic: bool) -> Option<i64> {
        let entered = self
            .offsets
            .get(partition)
            .and_then(|entry| Some((entry.settled(offset)?, entry)));
        match entered {
            Some((true, entry)) => entry.take_due(store_gap(periodic)),
            Some((false, _)) => None,
            None => {
                self.early.push((partition, offset));
                None
            }
        }
    }

    /// Enters the offsets the reader delivered (`delivered`, in delivery order, left
    /// empty), then the settles that came before them; returns the offsets to hand
    /// over to librdkafka now, as [`settle`](Self::settle) decides them.
    fn enter(&mut self, delivered: &mut Vec<(i32, i64)>, periodic: bool) -> Vec<(i32, i64)> {
        for (partition, offset) in delivered.drain(..) {
            // Kafka's partition ids are never negative.
            if let Some(entry) = self.offsets.entry(partition) {
                entry.delivered(offset);
            }
        }
        let mut moved = false;
        for &(partition, offset) in &self.early {
            // Each is entered now: it was delivered before the reader's last batch.
            if let Some(entry) = self.offsets.get(partition) {
                moved |= entry.settled(offset).unwrap_or(false);
            }
        }
        self.early.clear();
        if !moved {
            return Vec::new();
        }
        self.offsets.take_due(store_gap(periodic))
    }

    /// Claims room for up to [`CLAIM`] deliveries; 0 when there is none, and then
    /// `reader` is woken by the next give-back.
    fn claim(&mut self, reader: &std::task::Waker) -> usize {
        let claimed = self.free.min(CLAIM);
        self.free -= claimed;
        if claimed == 0 && !self.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            self.reader = Some(reader.clone());
        }
        claimed
    }
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        super::lock(&self.ledger)
    }

    /// Gives one delivery's room back, settling its record first when given one (see
    /// [`Ledger::settle`]) and keeping its envelope for the reader when given one and
    /// there is room, and wakes the reader if it waits for room.
    fn give_back(
        &self,
        settled: Option<(i32, i64)>,
        spare: Option<Arc<Envelope>>,
    ) -> Result<(), Error> {
        let (due, reader, _unkept) = {
            let mut ledger = self.ledger();
            ledger.free += 1;
            let due = settled.and_then(|(partition, offset)| {
                let upto = ledger.settle(partition, offset, self.periodic)?;
                Some((partition, upto))
            });
            let unkept = match spare {
                Some(spare) if ledger.spares.len() < SPARES => {
                    ledger.spares.push(spare);
                    None
                }
                unkept => unkept,
            };
            // An envelope not kept is dropped after the lock is let go.
            (due, ledger.reader.take(), unkept)
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        match due {
            Some(due) => self.hand_over(&[due]),
            None => Ok(()),
        }
    }

    /// Stores every partition's committable offset not stored yet.
    fn store_unstored(&self) -> Result<(), Error> {
        let due = self.ledger().offsets.take_due(1);
        if due.is_empty() {
            return Ok(());
        }
        self.hand_over(&due)
    }

    /// Stores (periodic commits) or commits these offsets.
    fn hand_over(&self, offsets: &[(i32, i64)]) -> Result<(), Error> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for &(partition, upto) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(upto))
                .map_err(|e| Error::broker(BACKEND, e))?;
        }
        // A store fails for a partition no longer assigned here: its new owner gets
        // the record again, which is at-least-once.
        let done = if self.periodic {
            consumer.store_offsets(&list)
        } else {
            consumer.commit(&list, CommitMode::Async)
        };
        done.map_err(|e| Error::broker(BACKEND, e))
    }
}

/// Reads records for the subscriber, in its own task (no hop through a channel): the
/// subscription's stream polls the consumer directly. In-process retries come back
/// through `retries`, ahead of new records.
///
/// A stream written out by hand rather than an `async` loop: a record librdkafka has
/// already fetched (the usual case under load) is taken by a receive polled on the
/// stack, with no state kept between records; only a receive that has to wait is
/// boxed and kept, owning its handle on the consumer.
struct Reader {
    shared: Arc<Shared>,
    retries: mpsc::Receiver<Result<Delivery, Error>>,
    /// A receive that is waiting for a record.
    waiting: Option<Waiting>,
    /// After a consumer error, the pause before the next receive.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What the reader remembers of the last record it read: its time's minute, its
    /// type and source.
    last: headers::LastRead,
    /// Room in the prefetch window claimed from the ledger and not used yet.
    room: usize,
    /// The partitions and offsets of the records delivered since the reader last
    /// entered them in the ledger (at most [`CLAIM`]).
    unentered: Vec<(i32, i64)>,
    /// Envelopes handed back by acks, taken from the ledger when this ran out, to read
    /// the next records into.
    spares: Vec<Arc<Envelope>>,
}

/// A receive's outcome: the record with its attempt, or librdkafka's error (nothing
/// once the consumer is gone, which does not happen while the stream lives).
type Fetched = Option<KafkaResult<(Record, u32)>>;

/// A receive that had to wait.
type Waiting = BoxFuture<'static, Fetched>;

impl Reader {
    /// The next fetched record, if one is ready and there is room for it.
    fn poll_fetch(&mut self, cx: &mut Context<'_>) -> Poll<Fetched> {
        if let Some(waiting) = &mut self.waiting {
            let fetched = ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
            return Poll::Ready(fetched);
        }
        // At most `prefetch` deliveries unsettled: room before each record.
        ready!(self.poll_room(cx));
        let Some(consumer) = self.shared.consumer.as_ref() else {
            return Poll::Ready(None);
        };
        {
            let mut receive = std::pin::pin!(consumer.recv());
            if let Poll::Ready(received) = receive.as_mut().poll(cx) {
                let (last, spare) = (&mut self.last, self.spares.pop());
                return Poll::Ready(Some(received.map(|m| Record::of(&m, last, spare))));
            }
        }
        // None fetched yet: wait in a receive of its own (the one above, dropped, no
        // longer holds a wake-up), kept until a record comes.
        let shared = Arc::clone(&self.shared);
        let mut waiting: Waiting = Box::pin(async move {
            let received = match shared.consumer.as_ref() {
                // A record after a wait starts a minute of its own.
                Some(consumer) => Some(
                    consumer
                        .recv()
                        .await
                        .map(|m| Record::of(&m, &mut headers::LastRead::default(), None)),
                ),
                None => None,
            };
            drop(shared);
            received
        });
        match waiting.as_mut().poll(cx) {
            Poll::Ready(fetched) => Poll::Ready(fetched),
            Poll::Pending => {
                self.waiting = Some(waiting);
                Poll::Pending
            }
        }
    }

    /// Room for one more delivery. When the reader has used what it claimed, it enters
    /// the offsets it delivered in the ledger and claims more there, or registers to be
    /// woken by the next give-back.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.room > 0 {
            return Poll::Ready(());
        }
        let due = {
            let mut ledger = self.shared.ledger();
            let due = ledger.enter(&mut self.unentered, self.shared.periodic);
            self.room = ledger.claim(cx.waker());
            if self.spares.is_empty() {
                std::mem::swap(&mut self.spares, &mut ledger.spares);
            }
            due
        };
        self.hand_over(&due);
        if self.room > 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Enters the offsets delivered since the last entry (before the reader waits, and
    /// when it ends), so that their settles count at once.
    fn enter(&mut self) {
        if self.unentered.is_empty() {
            return;
        }
        let due = self
            .shared
            .ledger()
            .enter(&mut self.unentered, self.shared.periodic);
        self.hand_over(&due);
    }

    /// Hands offsets over to librdkafka; a failure is logged (a later store or the
    /// closing commit takes the offset again, at least once).
    fn hand_over(&self, due: &[(i32, i64)]) {
        if due.is_empty() {
            return;
        }
        if let Err(error) = self.shared.hand_over(due) {
            tracing::debug!(topic = %self.shared.topic, error = %error, "kafka offset store failed");
        }
    }

    /// A retried delivery that came back, taken without registering a wake-up.
    fn retried(&mut self) -> Option<Result<Delivery, Error>> {
        // The channel is looked at only when a retry was sent (a count is cheaper to
        // read than the channel).
        if self.shared.retrying.load(Ordering::Acquire) == 0 {
            return None;
        }
        let retried = self.retries.try_recv().ok()?;
        self.shared.retrying.fetch_sub(1, Ordering::AcqRel);
        Some(retried)
    }
}

impl futures_util::Stream for Reader {
    type Item = Result<Delivery, Error>;

    /// The next delivery; `None` once the consumer is gone (it lives as long as the
    /// stream, so this does not happen while the stream is polled).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            // Retried deliveries go ahead of new records (one that comes back while a
            // record is already ready waits behind that record).
            if let Some(retried) = this.retried() {
                return Poll::Ready(Some(retried));
            }
            let Poll::Ready(received) = this.poll_fetch(cx) else {
                // No record yet: what was delivered counts for commits while the reader
                // waits, and a retry may come back meanwhile (the sender lives in
                // `shared`, as long as the reader: never closed).
                this.enter();
                return match this.retries.poll_recv(cx) {
                    Poll::Ready(Some(retried)) => {
                        this.shared.retrying.fetch_sub(1, Ordering::AcqRel);
                        Poll::Ready(Some(retried))
                    }
                    Poll::Ready(None) | Poll::Pending => Poll::Pending,
                };
            };
            match received {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    tracing::warn!(topic = %this.shared.topic, error = %e, "kafka consumer error");
                    this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
                Some(Ok((record, attempt))) => {
                    this.room -= 1;
                    this.unentered.push((record.partition, record.offset));
                    let acker = KafkaAcker {
                        slot: Slot::new(Arc::clone(&this.shared)),
                        partition: record.partition,
                        offset: record.offset,
                        raw: record.raw,
                    };
                    return Poll::Ready(Some(Ok(Delivery::kafka(record.message, attempt, acker))));
                }
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Settles of what it delivered count from now on, without waiting for a store.
        self.enter();
    }
}

/// A record as read: what its delivery shows, and where it came from.
struct Record {
    /// The envelope, or why the record is not one.
    message: Result<Arc<Envelope>, Error>,
    /// A malformed record as read, to dead-letter it unchanged.
    raw: Option<Box<RawRecord>>,
    partition: i32,
    offset: i64,
}

/// A malformed record's key, headers and payload.
struct RawRecord {
    key: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    payload: Bytes,
}

impl Record {
    /// The record and its delivery attempt. The payload is copied once, into the
    /// envelope (into the record's own copy only when it is malformed).
    fn of(
        message: &rdkafka::message::BorrowedMessage<'_>,
        last: &mut headers::LastRead,
        spare: Option<Arc<Envelope>>,
    ) -> (Self, u32) {
        let payload = || Bytes::copy_from_slice(message.payload().unwrap_or_default());
        let (decoded, attempt) =
            decode_with_attempt(RecordHeaders::of(message), payload(), last, spare);
        let (decoded, raw) = match decoded {
            Ok(envelope) => (Ok(envelope), None),
            Err(error) => (
                Err(error),
                Some(Box::new(RawRecord {
                    key: message.key().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(rdkafka::message::BorrowedHeaders::detach),
                    payload: payload(),
                })),
            ),
        };
        let record = Self {
            message: decoded,
            raw,
            partition: message.partition(),
            offset: message.offset(),
        };
        (record, attempt)
    }
}

/// Settles one record; kept inline in its [`Delivery`], which holds the envelope and
/// hands it over where settling needs it (a retry, a dead letter).
pub(crate) struct KafkaAcker {
    /// The subscription, and this record's place in its prefetch window.
    slot: Slot,
    partition: i32,
    offset: i64,
    /// The record as read, when it is malformed.
    raw: Option<Box<RawRecord>>,
}

impl KafkaAcker {
    /// Marks the record done, handing `spare` (its envelope, when it can be filled
    /// again) back to the reader.
    fn done(&mut self, spare: Option<Arc<Envelope>>) -> Result<(), Error> {
        self.slot.settle(self.partition, self.offset, spare)
    }

    /// Acks the record; its envelope goes back to the reader to be filled again.
    pub(crate) fn ack(
        mut self,
        envelope: Option<Arc<Envelope>>,
    ) -> BoxFuture<'static, Result<(), Error>> {
        match self.done(envelope.and_then(spare)) {
            Ok(()) => super::settled(),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    pub(crate) fn retry(
        self,
        message: Result<Arc<Envelope>, Error>,
        attempt: u32,
        delay: Duration,
    ) -> BoxFuture<'static, Result<(), Error>> {
        // In process: the offset stays unsettled (so uncommitted) until the retry is
        // settled; a crash meanwhile redelivers it from the broker.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let tx = self.slot.shared.tx.clone();
            // Counted before it is sent, so that the count is never below what waits
            // in the channel.
            self.slot.shared.retrying.fetch_add(1, Ordering::AcqRel);
            let again = Delivery::kafka(message, attempt.saturating_add(1), self);
            let _ = tx.send(Ok(again)).await;
        });
        super::settled()
    }

    pub(crate) fn dead_letter(
        mut self,
        message: Result<Arc<Envelope>, Error>,
        attempt: u32,
        reason: String,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let attempt = attempt.to_string();
            let extra = [
                (headers::DEAD_LETTER_REASON, reason.as_str()),
                (ATTEMPT, attempt.as_str()),
            ];
            let (copy, key, payload) = match (&message, &self.raw) {
                (Ok(envelope), _) => (
                    record_headers(envelope, &extra),
                    envelope.key.as_deref().map(str::as_bytes),
                    &envelope.payload,
                ),
                // The record's headers as they were (copied by librdkafka, names
                // that are not UTF-8 included), then the reason and the attempt: a
                // reason or attempt it had already comes before the new one, and
                // readers take the last (Kafka headers are a list; Java's `lastHeader`).
                (Err(_), Some(raw)) => (
                    with_extra(raw.headers.clone().unwrap_or_default(), &extra),
                    raw.key.as_deref(),
                    &raw.payload,
                ),
                // Every malformed record keeps its raw form.
                (Err(error), None) => return Err(headers::malformed(error.to_string())),
            };
            send(
                &self.slot.shared.producer,
                self.slot.shared.send_timeout,
                &self.slot.shared.dead_letter,
                key,
                payload,
                copy,
            )
            .await?;
            self.done(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseError;
    use rdkafka::message::Headers as _;

    /// Headers made here, read by position as a record's are.
    impl<'a> HeaderPairs<'a> for &'a OwnedHeaders {
        fn count(&self) -> usize {
            rdkafka::message::Headers::count(*self)
        }

        fn pair(&self, at: usize) -> Option<(&'a [u8], Option<&'a [u8]>)> {
            let headers: &'a OwnedHeaders = self;
            headers.try_get(at).map(|h| (h.key.as_bytes(), h.value))
        }
    }

    #[test]
    fn record_headers_round_trip_the_envelope() -> Result<(), Error> {
        let envelope = Envelope::new("order.placed", "shop", vec![0u8, 255])
            .with_key("k")
            .with_causation_id("z")
            .with_header("tenant", "acme");
        let record_headers = record_headers(&envelope, &[(ATTEMPT, "3")]);
        let (decoded, attempt) = decode_with_attempt(
            Some(&record_headers),
            envelope.payload.clone(),
            &mut headers::LastRead::default(),
            None,
        );
        assert_eq!(*decoded?, envelope);
        assert_eq!(attempt, 3);
        Ok(())
    }

    proptest::proptest! {
        /// After each settle of an offset in the window, the committable offset is the
        /// lowest delivered-and-unsettled offset (or one past the highest delivered),
        /// checked against a set model, for any order of settles and for records
        /// delivered again; a settle of an offset not in the window changes nothing.
        #[test]
        fn committable_offset_is_the_lowest_unsettled(
            steps in proptest::collection::vec((0_i64..40, proptest::bool::ANY), 1..120),
        ) {
            let mut offsets = PartitionOffsets::default();
            let mut unsettled = std::collections::BTreeSet::new();
            let mut next = 0_i64;
            let mut committable = 0_i64;
            for (offset, deliver) in steps {
                if deliver {
                    offsets.delivered(offset);
                    unsettled.insert(offset);
                    next = next.max(offset + 1);
                } else {
                    let Some(moved) = offsets.settled(offset) else {
                        // Not in the window: never delivered, or settled and gone.
                        proptest::prop_assert!(!unsettled.contains(&offset));
                        continue;
                    };
                    unsettled.remove(&offset);
                    let upto = unsettled.first().copied().unwrap_or(next);
                    proptest::prop_assert_eq!(moved, upto > committable);
                    committable = committable.max(upto);
                }
                proptest::prop_assert_eq!(offsets.committable, committable);
            }
        }
    }

    proptest::proptest! {
        /// The reader enters its deliveries in batches and a settle may come before its
        /// offset is entered. At every step no partition's committable offset passes an
        /// unsettled delivery, the offsets handed over only grow and are what is
        /// committable (with a commit per settle, every time it moved), and the
        /// window's room is conserved; once everything is entered, the committable
        /// offset is past every delivery below the lowest unsettled one.
        #[test]
        fn ledger_commits_nothing_unsettled_whatever_the_batching(
            steps in proptest::collection::vec(
                (0_u8..4, 0_usize..3, proptest::prelude::any::<proptest::sample::Index>()),
                1..300,
            ),
            periodic in proptest::bool::ANY,
            prefetch in 1_usize..80,
        ) {
            let mut ledger = Ledger::new(prefetch);
            let waker = futures_util::task::noop_waker();
            let mut room = 0;
            let mut unentered = Vec::new();
            // Offsets advance by one or two (a topic may have gaps).
            let mut next = [0_i64; 3];
            let mut delivered: [Vec<i64>; 3] = Default::default();
            let mut outstanding: Vec<(i32, i64)> = Vec::new();
            let mut handed = [0_i64; 3];
            let hand_over = |due: &[(i32, i64)], handed: &mut [i64; 3]| {
                for &(p, upto) in due {
                    let p = usize::try_from(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    proptest::prop_assert!(upto > handed[p], "handed over {upto} after {}", handed[p]);
                    handed[p] = upto;
                }
                Ok(())
            };
            for (op, p, pick) in steps {
                let partition = i32::try_from(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match op {
                    0 | 1 => {
                        if room == 0 {
                            let due = ledger.enter(&mut unentered, periodic);
                            hand_over(&due, &mut handed)?;
                            room = ledger.claim(&waker);
                            proptest::prop_assert!(room <= CLAIM);
                        }
                        if room == 0 {
                            proptest::prop_assert!(ledger.reader.is_some(), "waits to be woken");
                            continue;
                        }
                        room -= 1;
                        let offset = next[p];
                        next[p] += 1 + i64::from(pick.index(2) == 1);
                        delivered[p].push(offset);
                        unentered.push((partition, offset));
                        outstanding.push((partition, offset));
                    }
                    2 => {
                        if outstanding.is_empty() {
                            continue;
                        }
                        let (p, offset) = outstanding.swap_remove(pick.index(outstanding.len()));
                        ledger.free += 1;
                        if let Some(upto) = ledger.settle(p, offset, periodic) {
                            hand_over(&[(p, upto)], &mut handed)?;
                        }
                    }
                    _ => {
                        let due = ledger.enter(&mut unentered, periodic);
                        hand_over(&due, &mut handed)?;
                    }
                }
                proptest::prop_assert_eq!(ledger.free + room + outstanding.len(), prefetch);
                for (p, entry) in ledger.offsets.0.iter().enumerate() {
                    let lowest = outstanding
                        .iter()
                        .filter(|&&(q, _)| usize::try_from(q).ok() == Some(p))
                        .map(|&(_, o)| o)
                        .min();
                    if let Some(lowest) = lowest {
                        proptest::prop_assert!(entry.committable <= lowest);
                    }
                    proptest::prop_assert_eq!(entry.stored, handed[p]);
                    if !periodic {
                        proptest::prop_assert_eq!(entry.stored, entry.committable);
                    }
                }
            }
            let due = ledger.enter(&mut unentered, periodic);
            hand_over(&due, &mut handed)?;
            proptest::prop_assert!(ledger.early.is_empty());
            for (p, delivered) in delivered.iter().enumerate() {
                if delivered.is_empty() {
                    continue;
                }
                let entry = ledger.offsets.get(i32::try_from(p).map_err(|e| TestCaseError::fail(e.to_string()))?);
                let entry = entry.ok_or_else(|| TestCaseError::fail("delivered partition entered"))?;
                let lowest = outstanding
                    .iter()
                    .filter(|&&(q, _)| usize::try_from(q).ok() == Some(p))
                    .map(|&(_, o)| o)
                    .min();
                let settled_before = delivered
                    .iter()
                    .copied()
                    .filter(|&o| lowest.is_none_or(|lowest| o < lowest))
                    .max();
                if let Some(settled_before) = settled_before {
                    proptest::prop_assert!(entry.committable > settled_before);
                }
                if let Some(lowest) = lowest {
                    proptest::prop_assert!(entry.committable <= lowest);
                }
            }
        }
    }

    #[test]
    fn record_without_headers_is_malformed() {
        assert!(matches!(
            decode_with_attempt::<&OwnedHeaders>(
                None,
                Bytes::new(),
                &mut headers::LastRead::default(),
                None,
            )
            .0,
            Err(Error::Malformed { .. })
        ));
    }
}
