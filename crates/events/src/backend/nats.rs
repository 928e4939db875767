//! NATS JetStream backend (async-nats).
//!
//! - **Topology**: a topic is a subject; each topic gets a JetStream stream of its own
//!   (named `<prefix><topic>`, made a valid stream name), created on first use with
//!   limits retention, so every group sees every message. A group is a durable pull
//!   consumer on that stream, filtered to the subject; its members pull from it and
//!   share the work. A new group starts at the beginning of the stream.
//! - **Publish**: waits for the `PubAck`. Every message carries `Nats-Msg-Id` = the
//!   event id, so a publish retried within the stream's duplicate window (2 min) is
//!   stored once. [`Publisher::publish_batch`] sends the whole batch before awaiting
//!   the acks, so they pipeline.
//! - **Envelope mapping**: NATS headers under the names of
//!   [the shared mapping](super::headers). NATS header names must be visible ASCII
//!   without `:`, and values must not contain line breaks, so a name or value outside
//!   that (or starting with `%~`) travels percent-encoded behind a `%~` marker and
//!   comes back exactly. A message without the required headers is handed out as
//!   [`Delivery::malformed`].
//! - **Consume**: each member pulls no more messages than it has free prefetch
//!   slots; the group's consumer has `max_ack_pending` = prefetch ×
//!   [`NatsOptions::members`] (JetStream counts unacknowledged messages per consumer,
//!   that is per group). Explicit acks; a message not settled
//!   within [`NatsOptions::ack_wait`] is delivered again (to any member), which is how
//!   a dead consumer's work is redelivered. The attempt is JetStream's delivery count.
//! - **Settle**: ack is `+ACK`; retry is `-NAK` with the delay (the server redelivers,
//!   nothing is re-published); dead-letter publishes a copy with the reason in the
//!   `palisade-dead-letter-reason` header to `<topic>.dlq` (its own stream), awaits
//!   the `PubAck`, then terminates the original (`+TERM`).
//! - **Connections**: async-nats reconnects by itself and the pull consumer resumes;
//!   publishes during the outage fail (or time out) and are errors to the caller.
//!
//! Order: a stream is ordered and one member receives in order; members of a group
//! split messages one by one, and a nak'd message comes back after later ones.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use palisade_events::backend::nats::NatsBus;
//! use palisade_events::{Envelope, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> Result<(), palisade_events::Error> {
//! let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
//! let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
//! bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::headers;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::{BoxFuture, Publisher};
use crate::subscriber::{Acknowledge, Delivery, DeliveryStream, Subscriber, Subscription};

const BACKEND: &str = "nats";
const MARK: &str = "%~";
/// How long one pull waits for messages before it is renewed.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// Options of a [`NatsBus`], with documented defaults.
///
/// ```
/// use std::time::Duration;
/// use palisade_events::backend::nats::NatsOptions;
///
/// let options = NatsOptions::new("nats://127.0.0.1:4222").ack_wait(Duration::from_secs(10));
/// assert_eq!(options.url(), "nats://127.0.0.1:4222");
/// ```
#[derive(Clone, Debug)]
pub struct NatsOptions {
    url: String,
    stream_prefix: String,
    max_messages: i64,
    ack_wait: Duration,
    members: i64,
    dead_letter_suffix: String,
}

impl NatsOptions {
    /// Options for the server at `url` with every default.
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222");
    /// assert!(format!("{options:?}").contains("ack_wait: 30s"));
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_prefix: "palisade-".to_owned(),
            max_messages: 1_000_000,
            ack_wait: Duration::from_secs(30),
            members: 16,
            dead_letter_suffix: ".dlq".to_owned(),
        }
    }

    /// The server URL.
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// assert_eq!(NatsOptions::new("nats://127.0.0.1:4222").url(), "nats://127.0.0.1:4222");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Prefix of the stream created for each topic. Default: `palisade-`.
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222").stream_prefix("shop-");
    /// assert!(format!("{options:?}").contains("\"shop-\""));
    /// ```
    #[must_use]
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = prefix.into();
        self
    }

    /// Most messages a topic's stream keeps (oldest discarded first). Default:
    /// 1,000,000, as for the Redis backend; a message discarded before a group read it
    /// is lost to that group. Applies when the stream is created.
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222").max_messages(10_000);
    /// assert!(format!("{options:?}").contains("max_messages: 10000"));
    /// ```
    #[must_use]
    pub fn max_messages(mut self, max_messages: i64) -> Self {
        self.max_messages = max_messages;
        self
    }

    /// How long a delivered message may stay unsettled before JetStream delivers it
    /// again. Default: 30 s, JetStream's own default, longer than a handler normally
    /// runs. Applies when a group's consumer is created.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222").ack_wait(Duration::from_secs(10));
    /// assert!(format!("{options:?}").contains("ack_wait: 10s"));
    /// ```
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How many members a group is sized for: a group's consumer gets
    /// `max_ack_pending` = prefetch × members, because JetStream bounds unacknowledged
    /// messages per consumer (the group), while each member's own bound, its prefetch,
    /// is kept by the member fetching no more than it has room for. Default: 16.
    /// Applies when a group's consumer is created.
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222").members(4);
    /// assert!(format!("{options:?}").contains("members: 4"));
    /// ```
    #[must_use]
    pub fn members(mut self, members: u16) -> Self {
        self.members = i64::from(members.max(1));
        self
    }

    /// Suffix of the dead-letter subject. Default: `.dlq` (`orders.dlq`).
    ///
    /// ```rust
    /// use palisade_events::backend::nats::NatsOptions;
    ///
    /// let options = NatsOptions::new("nats://127.0.0.1:4222").dead_letter_suffix(".dead");
    /// assert!(format!("{options:?}").contains("\".dead\""));
    /// ```
    #[must_use]
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }
}

/// Publisher and subscriber over NATS JetStream. Cheap to clone.
///
/// ```rust,no_run
/// use palisade_events::backend::nats::NatsBus;
/// use palisade_events::{Envelope, Publisher};
///
/// # async fn run() -> Result<(), palisade_events::Error> {
/// let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?; // PubAck received
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    jetstream: jetstream::Context,
    options: NatsOptions,
    /// Topics whose stream is known to exist.
    streams: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the server at `url` with default [`NatsOptions`].
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::nats::NatsBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::with_options(NatsOptions::new(url)).await
    }

    /// Connects with `options`.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::nats::{NatsBus, NatsOptions};
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = NatsBus::with_options(NatsOptions::new("nats://127.0.0.1:4222").stream_prefix("shop-")).await?;
    /// assert_eq!(bus.stream_name("orders"), "shop-orders");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn with_options(options: NatsOptions) -> Result<Self, Error> {
        let client = async_nats::connect(options.url.as_str())
            .await
            .map_err(|e| Error::connection(BACKEND, e))?;
        Ok(Self::from_client(client, options))
    }

    /// Uses an existing client (its URL in `options` is not used).
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::nats::{NatsBus, NatsOptions};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // Share the connection the service already has.
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let bus = NatsBus::from_client(client, NatsOptions::new("nats://127.0.0.1:4222"));
    /// assert_eq!(bus.stream_name("orders"), "palisade-orders");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn from_client(client: async_nats::Client, options: NatsOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                jetstream: jetstream::new(client),
                options,
                streams: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The subject of `topic`'s dead letters.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::nats::NatsBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.inner.options.dead_letter_suffix)
    }

    /// The name of `topic`'s stream.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::nats::NatsBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
    /// // Characters a stream name cannot hold are replaced (and a hash keeps names apart).
    /// assert_eq!(bus.stream_name("orders"), "palisade-orders");
    /// assert!(bus.stream_name("orders.eu").starts_with("palisade-orders_eu"));
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn stream_name(&self, topic: &str) -> String {
        valid_name(&format!("{}{topic}", self.inner.options.stream_prefix))
    }
}

impl Inner {
    async fn ensure_stream(&self, topic: &str) -> Result<stream::Stream, Error> {
        let name = valid_name(&format!("{}{topic}", self.options.stream_prefix));
        let stream = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name,
                subjects: vec![topic.to_owned()],
                max_messages: self.options.max_messages,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| Error::broker(BACKEND, e))?;
        if let Ok(mut known) = self.streams.lock() {
            known.insert(topic.to_owned());
        }
        Ok(stream)
    }

    async fn ensure_stream_known(&self, topic: &str) -> Result<(), Error> {
        let known = self
            .streams
            .lock()
            .map(|s| s.contains(topic))
            .unwrap_or(false);
        if !known {
            self.ensure_stream(topic).await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        topic: &str,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, Error> {
        self.jetstream
            .publish_with_headers(topic.to_owned(), headers, payload)
            .await
            .map_err(|e| Error::connection(BACKEND, e))
    }
}

async fn confirmed(ack: jetstream::context::PublishAckFuture) -> Result<(), Error> {
    ack.await.map_err(|e| Error::NotConfirmed {
        reason: e.to_string(),
    })?;
    Ok(())
}

/// A valid stream or consumer name: `name` itself when it only has letters, digits,
/// `-` and `_`; otherwise those characters kept, the rest replaced by `_`, and a hash
/// of `name` appended so different names stay different.
fn valid_name(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return name.to_owned();
    }
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a: stable across runs and platforms.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{cleaned}_{hash:016x}")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(MARK.len() + s.len() * 3);
    out.push_str(MARK);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    headers::malformed(format!("bad percent-encoding in header {s:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| headers::malformed(format!("header is not UTF-8: {e}")))
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(MARK)
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn safe_value(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(MARK)
        && !value.contains(['\r', '\n'])
        && value.trim() == value
}

fn wire(s: &str, safe: bool) -> std::borrow::Cow<'_, str> {
    if safe {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(percent_encode(s))
    }
}

fn unwire(s: &str) -> Result<std::borrow::Cow<'_, str>, Error> {
    match s.strip_prefix(MARK) {
        Some(encoded) => Ok(std::borrow::Cow::Owned(percent_decode(encoded)?)),
        None => Ok(std::borrow::Cow::Borrowed(s)),
    }
}

/// The NATS headers carrying `envelope`, and its id as `Nats-Msg-Id` so that JetStream
/// drops a re-published duplicate within its window.
fn encode(envelope: &Envelope) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    headers::try_encode_each(envelope, |name, value| {
        let value: &str = &wire(value, safe_value(value));
        if name == headers::ID {
            map.insert(async_nats::header::NATS_MESSAGE_ID, value);
        }
        map.insert(header_name(name)?, value);
        Ok(())
    })?;
    Ok(map)
}

/// The NATS header name for a wire name: an attribute's without a check or a copy (a
/// name parsed from text is checked and copied into a buffer of its own, for each
/// header of each event published).
fn header_name(name: &str) -> Result<async_nats::HeaderName, Error> {
    use async_nats::HeaderName;
    use headers::{CAUSATION_ID, CONTENT_TYPE, CORRELATION_ID, ID, SOURCE, SUBJECT, TIME, TYPE};

    static ATTRIBUTES: [HeaderName; 8] = [
        HeaderName::from_static(ID),
        HeaderName::from_static(TYPE),
        HeaderName::from_static(SOURCE),
        HeaderName::from_static(TIME),
        HeaderName::from_static(CONTENT_TYPE),
        HeaderName::from_static(SUBJECT),
        HeaderName::from_static(CORRELATION_ID),
        HeaderName::from_static(CAUSATION_ID),
    ];
    if let Some(kept) = ATTRIBUTES
        .iter()
        .find(|kept| AsRef::<str>::as_ref(kept) == name)
    {
        return Ok(kept.clone());
    }
    wire(name, safe_name(name))
        .parse()
        .map_err(|e| Error::Encode(Box::new(e)))
}

/// Reads an envelope out of a NATS message.
fn decode(map: Option<&HeaderMap>, payload: bytes::Bytes) -> Result<Envelope, Error> {
    let mut pairs = Vec::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if headers::broker_owned(name) {
                continue;
            }
            let Some(value) = values.last() else { continue };
            pairs.push((unwire(name)?, unwire(value.as_str())?));
        }
    }
    headers::decode(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())), payload)
}

impl Publisher for NatsBus {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        self.inner.ensure_stream_known(topic).await?;
        let headers = encode(&envelope)?;
        confirmed(self.inner.send(topic, headers, envelope.payload).await?).await
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        self.inner.ensure_stream_known(topic).await?;
        let mut acks = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let headers = encode(&envelope)?;
            acks.push(self.inner.send(topic, headers, envelope.payload).await?);
        }
        for ack in acks {
            confirmed(ack).await?;
        }
        Ok(())
    }
}

impl Subscriber for NatsBus {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let stream = self.inner.ensure_stream(&subscription.topic).await?;
        let prefetch = subscription.prefetch.max(1);
        let durable = valid_name(&subscription.group);
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: subscription.topic.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.inner.options.ack_wait,
                    max_ack_pending: i64::try_from(prefetch)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(self.inner.options.members),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(|e| Error::broker(BACKEND, e))?;
        let (tx, mut rx) = mpsc::channel(prefetch);
        let pump = Pump {
            inner: self.inner.clone(),
            consumer,
            topic: subscription.topic.clone(),
            dead_letter: Arc::from(self.dead_letter_topic(&subscription.topic).as_str()),
            permits: Arc::new(Semaphore::new(prefetch)),
            tx,
        };
        tokio::spawn(pump.run());
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

/// Moves messages from the pull consumer to the subscriber.
///
/// It fetches only as many messages as this member has free prefetch permits, so a
/// member never holds more than its prefetch (the consumer's `max_ack_pending` bounds
/// the whole group).
struct Pump {
    inner: Arc<Inner>,
    consumer: consumer::PullConsumer,
    topic: String,
    dead_letter: Arc<str>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Result<Delivery, Error>>,
}

impl Pump {
    async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        let tx = self.tx.clone();
        loop {
            let first = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let mut permits = vec![first];
            while let Ok(permit) = self.permits.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let fetched = tokio::select! {
                fetched = self.fetch(&mut permits) => fetched,
                () = tx.closed() => return,
            };
            match fetched {
                Ok(true) => backoff = Duration::from_millis(50),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "jetstream fetch failed; retrying");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One pull of up to `permits.len()` messages; `Ok(false)` once the subscriber is gone.
    async fn fetch(&self, permits: &mut Vec<OwnedSemaphorePermit>) -> Result<bool, Error> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(permits.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| Error::connection(BACKEND, e))?;
        while let Some(item) = batch.next().await {
            let message = item.map_err(|e| Error::connection(BACKEND, e))?;
            let Some(permit) = permits.pop() else { break };
            let attempt = message
                .info()
                .map(|info| u32::try_from(info.delivered).unwrap_or(1))
                .unwrap_or(1);
            let envelope = decode(message.headers.as_ref(), message.payload.clone());
            let acker = Box::new(NatsAcker {
                inner: self.inner.clone(),
                dead_letter: self.dead_letter.clone(),
                message,
                _permit: permit,
            });
            let delivery = match envelope {
                Ok(envelope) => Delivery::new(envelope, attempt, acker),
                Err(error) => Delivery::malformed(error, attempt, acker),
            };
            if self.tx.send(Ok(delivery)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Settles one message.
struct NatsAcker {
    inner: Arc<Inner>,
    dead_letter: Arc<str>,
    message: jetstream::Message,
    _permit: OwnedSemaphorePermit,
}

fn settle_error(e: async_nats::Error) -> Error {
    Error::connection(BACKEND, e)
}

impl Acknowledge for NatsAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move { self.message.ack().await.map_err(settle_error) })
    }

    fn retry(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            self.message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(settle_error)
        })
    }

    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let mut copy = HeaderMap::new();
            if let Some(original) = &self.message.headers {
                for (name, values) in original.iter() {
                    for value in values {
                        copy.append(name.clone(), value.clone());
                    }
                }
            }
            let name = headers::DEAD_LETTER_REASON;
            let value: async_nats::HeaderValue = wire(&reason, safe_value(&reason))
                .parse()
                .map_err(|e| Error::Encode(Box::new(e)))?;
            copy.insert(name, value);
            self.inner.ensure_stream_known(&self.dead_letter).await?;
            let ack = self
                .inner
                .send(&self.dead_letter, copy, self.message.payload.clone())
                .await?;
            confirmed(ack).await?;
            self.message
                .ack_with(AckKind::Term)
                .await
                .map_err(settle_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_headers_round_trip_any_envelope() -> Result<(), Error> {
        let envelope = Envelope::new("order.placed", "shop", vec![0u8, 255])
            .with_key("key with spaces: and colons")
            .with_correlation_id(" padded ")
            .with_header("line\nbreak", "two\r\nlines")
            .with_header("grüße", "✓")
            .with_header("%~looks encoded", "%~too")
            .with_header("Nats-Msg-Id", "a free header")
            .with_header("empty", "");
        let map = encode(&envelope)?;
        assert_eq!(decode(Some(&map), envelope.payload.clone())?, envelope);
        Ok(())
    }

    #[test]
    fn message_without_headers_is_malformed() {
        assert!(matches!(
            decode(None, bytes::Bytes::new()),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn names_are_made_valid_without_collisions() {
        assert_eq!(valid_name("orders"), "orders");
        assert_ne!(valid_name("a.b"), valid_name("a_b"));
        assert!(
            valid_name("a.b*>")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        );
    }
}
