//! RabbitMQ backend (lapin, AMQP 0-9-1).
//!
//! - **Topology**: one durable topic exchange (default `palisade`); a topic is a routing
//!   key; a group is a durable queue `<topic>.<group>` bound to it, so every group gets
//!   every event (fan-out) and the members of a group compete for its queue. Each
//!   topic also has a durable dead-letter queue `<topic>.dlq`, bound under the routing
//!   key `<topic>.dlq`, which keeps dead letters even when nobody reads them; the group
//!   queues name it as their dead-letter route, so messages the broker itself rejects
//!   end up there too.
//! - **Publish**: persistent messages on a channel in confirm mode; `publish` returns
//!   after the broker's `basic.ack`. A `basic.nack`, a closed channel or a lost
//!   connection is an error. By default a publish is `mandatory`: an event no queue is
//!   bound for is returned by the broker and reported as [`Error::NotConfirmed`]
//!   instead of silently dropped — declare the groups first
//!   ([`RabbitMqBus::declare_group`]) or turn this off with
//!   [`RabbitMqOptions::mandatory`]. [`Publisher::publish_batch`] sends the whole batch
//!   before awaiting its confirms, so they pipeline.
//! - **Envelope mapping**: every attribute and free header is an AMQP header
//!   (long string) under the names of [the shared mapping](super::headers); the
//!   standard properties (`message_id`, `type`, `app_id`, `content_type`,
//!   `correlation_id`, `timestamp`) are set as well for other AMQP tools, but the
//!   headers are what is read back, because properties cannot carry everything (the
//!   timestamp has whole seconds). A message without the required headers is handed
//!   out as [`Delivery::malformed`].
//! - **Consume**: `basic.qos(prefetch)`, `basic.consume` with manual acks. Dropping
//!   the [`DeliveryStream`] closes the channel, so the broker hands unacknowledged
//!   messages to another member at once.
//! - **Settle**: ack is `basic.ack`, batched per channel: the acks that arrive while
//!   the previous batch is being sent go out together, as one `basic.ack multiple` up
//!   to the highest tag below which everything is settled, and one plain `basic.ack`
//!   for each of the others (an unsettled delivery is never covered); an ack returns
//!   once its frame was sent. Retry publishes a copy, with its attempt counter
//!   raised, to a per-group delay queue `<topic>.<group>.delay.<ms>` whose TTL
//!   dead-letters it back into the group's queue, then acks the original (after the
//!   copy is confirmed: a crash in between duplicates, never loses). Delays are
//!   rounded down to two significant digits so the number of delay queues stays small;
//!   unused delay queues expire. Dead-letter publishes a copy with the reason in the
//!   `palisade-dead-letter-reason` header to `<topic>.dlq`, confirmed, then acks.
//! - **Attempts**: our `x-palisade-attempt` header (raised by retries) plus the
//!   broker's redelivery: `x-delivery-count` on quorum queues, the `redelivered` flag
//!   otherwise.
//! - **Reconnection**: lapin does not reconnect by itself. A publish that finds the
//!   connection gone reconnects once and fails if that fails. A publish that fails on
//!   a connection lapin has not yet marked closed returns that error and makes the
//!   next publish reconnect, so a reset costs the publishes in flight, not every
//!   publish until lapin notices. No step waits for the broker longer than
//!   [`RabbitMqOptions::operation_timeout`]: one that times out fails with
//!   [`Error::Connection`] and the next connects afresh. Each subscription
//!   re-establishes its connection, channel, topology and consumer with exponential
//!   backoff (50 ms doubling to [`RabbitMqOptions::max_backoff`]) and resumes.
//!   Deliveries from the lost channel can no longer be acked; the broker redelivers
//!   them.
//!
//! Order: a queue is FIFO, so one member sees each key's events in publish order;
//! members of a group split the queue message by message, and retries go to the back.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use palisade_events::backend::rabbitmq::RabbitMqBus;
//! use palisade_events::{Envelope, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> Result<(), palisade_events::Error> {
//! let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
//! bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{Mutex, mpsc};

use super::acks::Acks;
use super::{headers, lock};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::{BoxFuture, Publisher};
use crate::subscriber::{Acknowledge, Delivery, DeliveryStream, Subscriber, Subscription};

const BACKEND: &str = "rabbitmq";
/// Header counting deliveries across retries.
const ATTEMPT: &str = "x-palisade-attempt";

/// Options of a [`RabbitMqBus`], with documented defaults.
///
/// ```
/// use palisade_events::backend::rabbitmq::RabbitMqOptions;
///
/// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").exchange("events");
/// assert_eq!(options.url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
/// ```
#[derive(Clone, Debug)]
pub struct RabbitMqOptions {
    url: String,
    exchange: String,
    dead_letter_suffix: String,
    mandatory: bool,
    max_backoff: Duration,
    operation_timeout: Duration,
}

impl RabbitMqOptions {
    /// Options for the broker at `url` with every default.
    ///
    /// ```rust
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f");
    /// assert!(format!("{options:?}").contains("exchange"));
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange: "palisade".to_owned(),
            dead_letter_suffix: ".dlq".to_owned(),
            mandatory: true,
            max_backoff: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }

    /// The broker URL.
    ///
    /// ```rust
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// assert_eq!(RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The durable topic exchange events are published to. Default: `palisade`.
    ///
    /// ```rust
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").exchange("shop.events");
    /// assert!(format!("{options:?}").contains("\"shop.events\""));
    /// ```
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Suffix of a topic's dead-letter routing key and queue. Default: `.dlq`.
    ///
    /// ```rust
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").dead_letter_suffix(".dead");
    /// assert!(format!("{options:?}").contains("\".dead\""));
    /// ```
    #[must_use]
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// Whether a publish no queue is bound for is an error. Default: `true`, because
    /// the broker would otherwise confirm and drop it.
    ///
    /// ```rust
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").mandatory(false);
    /// assert!(format!("{options:?}").contains("mandatory: false"));
    /// ```
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Longest wait between reconnection attempts of a subscription. Default: 5 s.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").max_backoff(Duration::from_secs(10));
    /// assert!(format!("{options:?}").contains("max_backoff: 10s"));
    /// ```
    #[must_use]
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff.max(Duration::from_millis(50));
        self
    }

    /// Longest wait for the broker's answer to one step: connecting, opening the
    /// publishing channel, a publish's confirmation (a batch's, for
    /// `publish_batch`), declaring a group. Default: 30 s.
    ///
    /// A connection can die without lapin noticing at once (a reset under load, a
    /// network that drops packets): a step on it would wait for ever. Past this
    /// timeout the step fails with [`Error::Connection`] (for a publish, the caller
    /// does not know whether the broker took the event: publishing it again is
    /// at-least-once) and the next step connects afresh.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::backend::rabbitmq::RabbitMqOptions;
    ///
    /// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .operation_timeout(Duration::from_secs(5));
    /// assert!(format!("{options:?}").contains("operation_timeout: 5s"));
    /// ```
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// The connection and the confirm-mode publishing channel, re-created when lost.
struct Link {
    options: RabbitMqOptions,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    connection: Option<Arc<Connection>>,
    publish: Option<Publishing>,
}

impl LinkState {
    /// Forgets `used`, and the publishing channel on it, if they are still current.
    fn forget_connection(&mut self, used: &Arc<Connection>) {
        if self
            .connection
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, used))
        {
            self.connection = None;
            self.publish = None;
        }
    }
}

/// The confirm-mode channel and the connection it was opened on, which tells a
/// failure on this channel from one on a channel opened since.
#[derive(Clone)]
struct Publishing {
    connection: Arc<Connection>,
    channel: Channel,
}

impl Link {
    async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut state = self.state.lock().await;
        self.connected(&mut state).await
    }

    async fn connected(&self, state: &mut LinkState) -> Result<Arc<Connection>, Error> {
        if let Some(connection) = &state.connection
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        state.publish = None;
        let connecting = async {
            Connection::connect(&self.options.url, ConnectionProperties::default())
                .await
                .map_err(failed(connection_error))
        };
        let connection = self
            .within("connecting", connecting)
            .await
            .map_err(|failed| failed.error)?;
        let connection = Arc::new(connection);
        state.connection = Some(connection.clone());
        Ok(connection)
    }

    /// The confirm-mode channel with its connection, reconnecting once if it was lost.
    async fn publishing(&self) -> Result<Publishing, Error> {
        let mut state = self.state.lock().await;
        if let Some(publishing) = &state.publish
            && publishing.channel.status().connected()
        {
            return Ok(publishing.clone());
        }
        let connection = self.connected(&mut state).await?;
        let opening = open_publishing(&connection, &self.options.exchange);
        let channel = match self.within("opening the publishing channel", opening).await {
            Ok(channel) => channel,
            Err(failed) => {
                // A connection lapin has not yet marked closed: the next call
                // connects afresh rather than failing the same way.
                if failed.connection {
                    state.connection = None;
                }
                return Err(failed.error);
            }
        };
        let publishing = Publishing {
            connection,
            channel,
        };
        state.publish = Some(publishing.clone());
        Ok(publishing)
    }

    /// Makes the next publish open a new channel instead of `used`, and a new
    /// connection too if `connection_too`. A channel an operation failed on is
    /// closed (AMQP closes a channel on its errors) or about to be found so.
    ///
    /// lapin marks a channel and its connection closed only once its I/O loop has
    /// seen the reset; until then their status still says connected, and every
    /// publish that reused them would fail the same way.
    async fn forget(&self, used: &Publishing, connection_too: bool) {
        let mut state = self.state.lock().await;
        if state
            .publish
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(&current.connection, &used.connection))
        {
            state.publish = None;
        }
        if connection_too {
            state.forget_connection(&used.connection);
        }
    }

    /// Makes the next step connect afresh instead of using `used`, which failed.
    async fn drop_connection(&self, used: &Arc<Connection>) {
        self.state.lock().await.forget_connection(used);
    }

    /// The error of a step that had no answer within the operation timeout.
    fn timed_out(&self, step: &str) -> Error {
        Error::connection(
            BACKEND,
            format!(
                "no answer from the broker within {:?} ({step})",
                self.options.operation_timeout
            ),
        )
    }

    /// `step` within the operation timeout; one that has no answer by then fails as
    /// the connection's failure.
    async fn within<T>(
        &self,
        name: &str,
        step: impl Future<Output = Result<T, Failed>>,
    ) -> Result<T, Failed> {
        match tokio::time::timeout(self.options.operation_timeout, step).await {
            Ok(done) => done,
            Err(_) => Err(Failed {
                error: self.timed_out(name),
                connection: true,
            }),
        }
    }

    /// Runs `step` on `used` within the operation timeout; a step that fails makes
    /// the next one open a new channel, and a new connection too when the connection
    /// failed or did not answer.
    async fn step<T>(
        &self,
        used: &Publishing,
        name: &str,
        step: impl Future<Output = Result<T, Failed>>,
    ) -> Result<T, Error> {
        match self.within(name, step).await {
            Ok(done) => Ok(done),
            Err(failed) => {
                self.forget(used, failed.connection).await;
                Err(failed.error)
            }
        }
    }

    /// Publishes and awaits the broker's confirmation.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let exchange = short(exchange)?;
        let routing_key_name = short(routing_key)?;
        let publishing = self.publishing().await?;
        let confirming = async {
            let confirm = publishing
                .channel
                .basic_publish(
                    exchange,
                    routing_key_name,
                    BasicPublishOptions {
                        mandatory: self.options.mandatory,
                        immediate: false,
                    },
                    payload,
                    properties,
                )
                .await
                .map_err(failed(connection_error))?;
            confirm.await.map_err(failed(connection_error))
        };
        let confirmation = self
            .step(&publishing, "a publish's confirmation", confirming)
            .await?;
        confirmed(confirmation, routing_key)
    }
}

/// Opens a confirm-mode channel on `connection` with `exchange` declared.
async fn open_publishing(connection: &Connection, exchange: &str) -> Result<Channel, Failed> {
    let channel = connection
        .create_channel()
        .await
        .map_err(failed(connection_error))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(failed(broker_error))?;
    declare_exchange(&channel, exchange).await?;
    Ok(channel)
}

/// Why a step failed, and whether the connection itself failed (or did not answer),
/// so that the next step connects afresh rather than only opening a channel.
struct Failed {
    error: Error,
    connection: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            connection: false,
        }
    }
}

/// Maps lapin's error with `map`, noting whether the connection itself failed.
fn failed(map: fn(lapin::Error) -> Error) -> impl Fn(lapin::Error) -> Failed {
    move |e| Failed {
        connection: socket_failed(&e),
        error: map(e),
    }
}

fn confirmed(confirmation: Confirmation, routing_key: &str) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(Error::NotConfirmed {
                reason: format!(
                    "returned by the broker ({} {}): no queue is bound for routing key {routing_key:?}",
                    returned.reply_code, returned.reply_text
                ),
            })
        }
        Confirmation::Nack(None) => Err(Error::NotConfirmed {
            reason: "basic.nack from the broker".to_owned(),
        }),
        Confirmation::NotRequested => Err(Error::NotConfirmed {
            reason: "the channel is not in confirm mode".to_owned(),
        }),
    }
}

/// Whether `e` says the connection itself failed (its socket, or a connection-level
/// protocol error), not only a channel.
fn socket_failed(e: &lapin::Error) -> bool {
    e.is_io_error() || e.is_amqp_hard_error()
}

fn connection_error(e: lapin::Error) -> Error {
    Error::connection(BACKEND, e)
}

fn broker_error(e: lapin::Error) -> Error {
    Error::broker(BACKEND, e)
}

fn short(s: &str) -> Result<ShortString, Error> {
    ShortString::try_new(s).map_err(|e| Error::Config(format!("{s:?}: {e}")))
}

async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), Error> {
    channel
        .exchange_declare(
            short(exchange)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)
}

async fn declare_queue(channel: &Channel, queue: &str, arguments: FieldTable) -> Result<(), Error> {
    channel
        .queue_declare(short(queue)?, QueueDeclareOptions::durable(), arguments)
        .await
        .map_err(broker_error)?;
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), Error> {
    channel
        .queue_bind(
            short(queue)?,
            short(exchange)?,
            short(routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)
}

fn long(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The AMQP properties carrying `envelope`.
fn properties(envelope: &Envelope) -> Result<BasicProperties, Error> {
    let mut table = FieldTable::default();
    headers::try_encode_each(envelope, |name, value| {
        let name = ShortString::try_new(name).map_err(|e| Error::Encode(Box::new(e)))?;
        table.insert(name, long(value));
        Ok(())
    })?;
    let mut properties = BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(envelope.id.to_string()))
        .with_timestamp(u64::try_from(envelope.time.timestamp()).unwrap_or(0));
    // Optional properties for other tools; the headers are authoritative.
    if let Ok(kind) = ShortString::try_new(envelope.event_type.as_ref()) {
        properties = properties.with_type(kind);
    }
    if let Ok(source) = ShortString::try_new(envelope.source.as_ref()) {
        properties = properties.with_app_id(source);
    }
    if let Ok(content_type) = ShortString::try_new(envelope.content_type.as_ref()) {
        properties = properties.with_content_type(content_type);
    }
    if let Some(Ok(id)) = envelope.correlation_id.as_deref().map(ShortString::try_new) {
        properties = properties.with_correlation_id(id);
    }
    Ok(properties)
}

use headers::broker_owned as broker_header;

/// Reads an envelope out of an AMQP message.
fn decode(properties: &BasicProperties, payload: Bytes) -> Result<Envelope, Error> {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let mut pairs = Vec::with_capacity(table.inner().len());
    for (name, value) in table.inner() {
        let name = name.as_str();
        if broker_header(name) {
            continue;
        }
        let value = match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
                .map_err(|e| headers::malformed(format!("header {name:?} is not UTF-8: {e}")))?,
            AMQPValue::ShortString(s) => s.as_str(),
            // Numbers and tables other tools may add are not envelope headers.
            _ if name.starts_with("x-") => continue,
            other => {
                return Err(headers::malformed(format!(
                    "header {name:?} is not a string: {other:?}"
                )));
            }
        };
        pairs.push((name, value));
    }
    headers::decode(pairs, payload)
}

fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

/// Which delivery this is: our retry counter plus the broker's redelivery count.
fn attempt(properties: &BasicProperties, redelivered: bool) -> u32 {
    let base = header_u32(properties, ATTEMPT).unwrap_or(1).max(1);
    let redeliveries = header_u32(properties, "x-delivery-count").unwrap_or(u32::from(redelivered));
    base.saturating_add(redeliveries)
}

/// `ms` rounded down to two significant digits (at least 1 ms).
fn delay_bucket(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut scale = 1;
    while ms / scale >= 100 {
        scale *= 10;
    }
    ms / scale * scale
}

/// Publisher and subscriber over RabbitMQ. Cheap to clone.
///
/// ```rust,no_run
/// use palisade_events::backend::rabbitmq::RabbitMqBus;
/// use palisade_events::{Envelope, Publisher};
///
/// # async fn run() -> Result<(), palisade_events::Error> {
/// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?; // confirmed
/// # Ok(()) }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct RabbitMqBus {
    link: Arc<Link>,
}

impl std::fmt::Debug for RabbitMqBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBus")
            .field("options", &self.link.options)
            .finish_non_exhaustive()
    }
}

impl RabbitMqBus {
    /// Connects to the broker at `url` with default [`RabbitMqOptions`].
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::rabbitmq::RabbitMqBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// assert_eq!(bus.queue_name("orders", "billing"), "orders.billing");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::with_options(RabbitMqOptions::new(url)).await
    }

    /// Connects with `options` and declares the exchange.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::rabbitmq::{RabbitMqBus, RabbitMqOptions};
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RabbitMqBus::with_options(RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").dead_letter_suffix("-dlq")).await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders-dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn with_options(options: RabbitMqOptions) -> Result<Self, Error> {
        let link = Arc::new(Link {
            options,
            state: Mutex::new(LinkState::default()),
        });
        link.publishing().await?;
        Ok(Self { link })
    }

    /// The routing key (and queue) of `topic`'s dead letters.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::rabbitmq::RabbitMqBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// assert_eq!(bus.dead_letter_topic("orders"), "orders.dlq");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.link.options.dead_letter_suffix)
    }

    /// The queue of `group` on `topic`.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::rabbitmq::RabbitMqBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// assert_eq!(bus.queue_name("orders", "billing"), "orders.billing");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn queue_name(&self, topic: &str, group: &str) -> String {
        format!("{topic}.{group}")
    }

    /// Declares `group`'s queue on `topic` (and the topic's dead-letter queue) without
    /// consuming, so events published before the first subscriber are kept.
    ///
    /// ```rust,no_run
    /// use palisade_events::backend::rabbitmq::RabbitMqBus;
    ///
    /// # async fn run() -> Result<(), palisade_events::Error> {
    /// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// // Events published from now on are kept for `billing`, even before it subscribes.
    /// bus.declare_group("orders", "billing").await?;
    /// assert_eq!(bus.queue_name("orders", "billing"), "orders.billing");
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub async fn declare_group(&self, topic: &str, group: &str) -> Result<(), Error> {
        let publishing = self.link.publishing().await?;
        let topology = self.topology(topic, group);
        let declaring = async { Ok(declare_group(&publishing.channel, &topology).await?) };
        self.link
            .step(&publishing, "declaring a group", declaring)
            .await
    }

    fn topology(&self, topic: &str, group: &str) -> Topology {
        Topology {
            exchange: self.link.options.exchange.clone(),
            topic: topic.to_owned(),
            queue: self.queue_name(topic, group),
            dead_letter: self.dead_letter_topic(topic),
        }
    }
}

/// Names one subscription uses.
struct Topology {
    exchange: String,
    topic: String,
    queue: String,
    dead_letter: String,
}

async fn declare_group(channel: &Channel, topology: &Topology) -> Result<(), Error> {
    declare_exchange(channel, &topology.exchange).await?;
    declare_queue(channel, &topology.dead_letter, FieldTable::default()).await?;
    bind(
        channel,
        &topology.dead_letter,
        &topology.exchange,
        &topology.dead_letter,
    )
    .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        long(topology.exchange.as_str()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        long(topology.dead_letter.as_str()),
    );
    declare_queue(channel, &topology.queue, arguments).await?;
    bind(
        channel,
        &topology.queue,
        &topology.exchange,
        &topology.topic,
    )
    .await
}

impl Publisher for RabbitMqBus {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        let properties = properties(&envelope)?;
        self.link
            .publish_confirmed(
                &self.link.options.exchange,
                topic,
                &envelope.payload,
                properties,
            )
            .await
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        let exchange = short(&self.link.options.exchange)?;
        let routing_key = short(topic)?;
        let options = BasicPublishOptions {
            mandatory: self.link.options.mandatory,
            immediate: false,
        };
        let all = envelopes
            .iter()
            .map(properties)
            .collect::<Result<Vec<_>, Error>>()?;
        let publishing = self.link.publishing().await?;
        let confirming = async {
            let mut confirms = Vec::with_capacity(envelopes.len());
            for (envelope, properties) in envelopes.iter().zip(all) {
                let confirm = publishing
                    .channel
                    .basic_publish(
                        exchange.clone(),
                        routing_key.clone(),
                        options,
                        &envelope.payload,
                        properties,
                    )
                    .await
                    .map_err(failed(connection_error))?;
                confirms.push(confirm);
            }
            let mut confirmations = Vec::with_capacity(confirms.len());
            for confirm in confirms {
                confirmations.push(confirm.await.map_err(failed(connection_error))?);
            }
            Ok(confirmations)
        };
        let confirmations = self
            .link
            .step(&publishing, "a batch's confirmations", confirming)
            .await?;
        for confirmation in confirmations {
            confirmed(confirmation, topic)?;
        }
        Ok(())
    }
}

impl Subscriber for RabbitMqBus {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let topology = self.topology(&subscription.topic, &subscription.group);
        // Validate names and declare now, so a bad subscription fails here.
        self.declare_group(&subscription.topic, &subscription.group)
            .await?;
        let prefetch = subscription.prefetch.max(1);
        let (tx, mut rx) = mpsc::channel(prefetch);
        let consumer = Consumer {
            link: self.link.clone(),
            topology: Arc::new(topology),
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            tx,
        };
        tokio::spawn(consumer.run());
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

/// The task behind one subscription.
struct Consumer {
    link: Arc<Link>,
    topology: Arc<Topology>,
    prefetch: u16,
    tx: mpsc::Sender<Result<Delivery, Error>>,
}

enum Ended {
    /// The subscriber dropped the stream.
    Dropped,
    /// The connection or channel went away after consuming started.
    Lost(Error),
}

impl Consumer {
    async fn run(self) {
        let min = Duration::from_millis(50);
        let mut backoff = min;
        loop {
            match self.consume().await {
                Ok(Ended::Dropped) => return,
                Ok(Ended::Lost(e)) => {
                    tracing::warn!(queue = %self.topology.queue, error = %e, "rabbitmq consumer lost; reconnecting");
                    backoff = min;
                }
                Err(e) => {
                    tracing::warn!(queue = %self.topology.queue, error = %e, "rabbitmq consumer cannot start; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return,
            }
            backoff = (backoff * 2).min(self.link.options.max_backoff);
        }
    }

    /// Opens a channel on `connection`, declares the group and starts consuming.
    async fn start(&self, connection: &Connection) -> Result<(Channel, lapin::Consumer), Failed> {
        let channel = connection
            .create_channel()
            .await
            .map_err(failed(connection_error))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(failed(broker_error))?;
        declare_group(&channel, &self.topology).await?;
        let consumer = channel
            .basic_consume(
                short(&self.topology.queue)?,
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed(broker_error))?;
        Ok((channel, consumer))
    }

    async fn consume(&self) -> Result<Ended, Error> {
        let connection = self.link.connection().await?;
        let starting = self
            .link
            .within("starting a consumer", self.start(&connection));
        let (channel, mut consumer) = match starting.await {
            Ok(started) => started,
            Err(failed) => {
                if failed.connection {
                    self.link.drop_connection(&connection).await;
                }
                return Err(failed.error);
            }
        };
        let window = Arc::new(std::sync::Mutex::new(TagWindow::default()));
        let acks = {
            let (channel, window) = (channel.clone(), Arc::clone(&window));
            Acks::spawn(
                BACKEND,
                |reason| Error::connection(BACKEND, reason),
                move |tags| send_acks(channel.clone(), Arc::clone(&window), tags),
            )
        };
        loop {
            let item = tokio::select! {
                item = consumer.next() => item,
                () = self.tx.closed() => {
                    // Closing the channel hands every unacked message back to the queue.
                    let _ = channel.close(200, ShortString::from("subscription dropped")).await;
                    return Ok(Ended::Dropped);
                }
            };
            let message = match item {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Ok(Ended::Lost(connection_error(e))),
                None => {
                    return Ok(Ended::Lost(Error::Closed));
                }
            };
            let payload = Bytes::from(message.data);
            let attempt = attempt(&message.properties, message.redelivered);
            let envelope = decode(&message.properties, payload.clone());
            lock(&window).delivered(message.delivery_tag);
            let acker = Box::new(RabbitMqAcker {
                link: self.link.clone(),
                topology: self.topology.clone(),
                tag: message.delivery_tag,
                acks: acks.clone(),
                properties: message.properties,
                payload,
                attempt,
            });
            let delivery = match envelope {
                Ok(envelope) => Delivery::new(envelope, attempt, acker),
                Err(error) => Delivery::malformed(error, attempt, acker),
            };
            if self.tx.send(Ok(delivery)).await.is_err() {
                let _ = channel
                    .close(200, ShortString::from("subscription dropped"))
                    .await;
                return Ok(Ended::Dropped);
            }
        }
    }
}

/// The delivery tags of one consuming channel from the lowest unsettled one on, in
/// delivery order (tags grow by one per delivery on a channel).
#[derive(Default)]
struct TagWindow {
    tags: VecDeque<(u64, TagState)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TagState {
    /// Delivered, not settled.
    Outstanding,
    /// Settled; its ack not sent yet.
    Settled,
    /// Settled, and acked on its own (an earlier tag was outstanding).
    AckedAlone,
}

impl TagWindow {
    fn delivered(&mut self, tag: u64) {
        self.tags.push_back((tag, TagState::Outstanding));
    }

    fn mark(&mut self, tag: u64, state: TagState) {
        if let Ok(at) = self.tags.binary_search_by_key(&tag, |&(t, _)| t) {
            self.tags[at].1 = state;
        }
    }

    /// Drops the settled tags at the front; returns the highest of them whose ack is
    /// not sent yet: one `basic.ack multiple` up to it acks every one of them (the
    /// tags below it are settled, and those acked alone are no longer outstanding).
    fn take_settled_prefix(&mut self) -> Option<u64> {
        let mut upto = None;
        while let Some(&(tag, state)) = self.tags.front() {
            match state {
                TagState::Outstanding => break,
                TagState::Settled => upto = Some(tag),
                TagState::AckedAlone => {}
            }
            self.tags.pop_front();
        }
        upto
    }

    /// Marks a batch of tags settled; returns how to ack them: `basic.ack multiple` up
    /// to the first value (when there is one), and a plain `basic.ack` for each tag of
    /// the second, which this marks acked alone.
    fn settle(&mut self, tags: Vec<u64>) -> (Option<u64>, Vec<u64>) {
        for &tag in &tags {
            self.mark(tag, TagState::Settled);
        }
        let upto = self.take_settled_prefix();
        let alone: Vec<u64> = tags
            .into_iter()
            .filter(|&tag| upto.is_none_or(|upto| tag > upto))
            .collect();
        for &tag in &alone {
            self.mark(tag, TagState::AckedAlone);
        }
        (upto, alone)
    }
}

/// Sends one batch of a channel's acks (see [`Acks`]): one `basic.ack multiple` for
/// the settled tags at the front of the window, and one `basic.ack` for each of the
/// others; returns why a send failed, if one did.
async fn send_acks(
    channel: Channel,
    window: Arc<std::sync::Mutex<TagWindow>>,
    tags: Vec<u64>,
) -> Result<(), String> {
    let (upto, alone) = lock(&window).settle(tags);
    let mut failed = None;
    if let Some(upto) = upto
        && let Err(e) = channel
            .basic_ack(upto, BasicAckOptions { multiple: true })
            .await
    {
        failed = Some(e.to_string());
    }
    for tag in alone {
        if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
            failed = Some(e.to_string());
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Settles one message.
struct RabbitMqAcker {
    link: Arc<Link>,
    topology: Arc<Topology>,
    /// The delivery tag, acked through the channel's ack batches.
    tag: u64,
    acks: Acks<u64>,
    properties: BasicProperties,
    payload: Bytes,
    attempt: u32,
}

impl RabbitMqAcker {
    /// A copy of the message's properties with `extra` headers set.
    fn copy_properties(&self, extra: &[(&str, String)]) -> BasicProperties {
        let mut table = FieldTable::default();
        if let Some(original) = self.properties.headers() {
            for (name, value) in original.inner() {
                if !broker_header(name.as_str()) {
                    table.insert(name.clone(), value.clone());
                }
            }
        }
        for (name, value) in extra {
            table.insert(ShortString::from(*name), long(value.as_str()));
        }
        self.properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2)
    }

    /// Acks the message (batched with the channel's other acks); returns once the ack
    /// was sent.
    async fn ack_original(self) -> Result<(), Error> {
        self.acks.ack(self.tag).await
    }
}

impl Acknowledge for RabbitMqAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(self.ack_original())
    }

    fn retry(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let ms = delay_bucket(delay);
            let delay_queue = format!("{}.delay.{ms}", self.topology.queue);
            let publishing = self.link.publishing().await?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
            );
            arguments.insert("x-dead-letter-exchange".into(), long(""));
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                long(self.topology.queue.as_str()),
            );
            // An idle delay queue goes away, but never before its messages expired.
            let expires = ms.saturating_add(60_000);
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(i64::try_from(expires).unwrap_or(i64::MAX)),
            );
            let declaring =
                async { Ok(declare_queue(&publishing.channel, &delay_queue, arguments).await?) };
            self.link
                .step(&publishing, "declaring a delay queue", declaring)
                .await?;
            let properties =
                self.copy_properties(&[(ATTEMPT, self.attempt.saturating_add(1).to_string())]);
            self.link
                .publish_confirmed("", &delay_queue, &self.payload, properties)
                .await?;
            self.ack_original().await
        })
    }

    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let properties = self.copy_properties(&[
                (headers::DEAD_LETTER_REASON, reason),
                (ATTEMPT, self.attempt.to_string()),
            ]);
            self.link
                .publish_confirmed(
                    &self.topology.exchange,
                    &self.topology.dead_letter,
                    &self.payload,
                    properties,
                )
                .await?;
            self.ack_original().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Settling deliveries in any order and in batches of any size, as `send_acks` does through `TagWindow::settle`
        /// does: a multiple ack never covers an unsettled delivery, and every settled
        /// delivery is acked exactly once (by a multiple ack or on its own).
        #[test]
        fn batched_acks_cover_settled_tags_only_and_each_once(
            order in proptest::sample::subsequence((1_u64..=40).collect::<Vec<_>>(), 0..=40)
                .prop_shuffle(),
            cuts in proptest::collection::vec(1_usize..6, 1..40),
        ) {
            use proptest::prop_assert;
            use proptest::prop_assert_eq;
            let mut window = TagWindow::default();
            for tag in 1..=40 {
                window.delivered(tag);
            }
            let mut settled = std::collections::BTreeSet::new();
            // Tags the broker still counts as unacknowledged.
            let mut unacked: std::collections::BTreeSet<u64> = (1..=40).collect();
            let mut acked_times = std::collections::HashMap::new();
            let mut rest = order.as_slice();
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let size = (*cut.next().unwrap_or(&1)).min(rest.len());
                let (batch, later) = rest.split_at(size);
                rest = later;
                settled.extend(batch.iter().copied());
                let (upto, alone) = window.settle(batch.to_vec());
                if let Some(upto) = upto {
                    let covered: Vec<u64> = unacked.range(..=upto).copied().collect();
                    for tag in covered {
                        prop_assert!(settled.contains(&tag), "multiple ack covers unsettled {}", tag);
                        unacked.remove(&tag);
                        *acked_times.entry(tag).or_insert(0) += 1;
                    }
                }
                for tag in alone {
                    prop_assert!(unacked.remove(&tag), "tag {} acked alone twice", tag);
                    *acked_times.entry(tag).or_insert(0) += 1;
                }
            }
            for tag in &settled {
                prop_assert_eq!(acked_times.get(tag).copied(), Some(1), "tag {}", tag);
            }
            prop_assert_eq!(acked_times.len(), settled.len());
        }
    }

    #[test]
    fn amqp_properties_round_trip_the_envelope() -> Result<(), Error> {
        let envelope = Envelope::new("order.placed", "shop", vec![1u8, 2, 255])
            .with_key("k")
            .with_correlation_id("c")
            .with_causation_id("z")
            .with_header("x-death", "a free header, not the broker's")
            .with_header("tenant", "acme");
        let properties = properties(&envelope)?;
        let mut expected = envelope.clone();
        // Free headers named like broker headers are escaped, so they survive too.
        assert_eq!(decode(&properties, envelope.payload.clone())?, {
            expected
                .headers
                .insert("x-death".into(), "a free header, not the broker's".into());
            expected
        });
        assert_eq!(attempt(&properties, false), 1);
        assert_eq!(attempt(&properties, true), 2);
        Ok(())
    }

    #[test]
    fn message_without_headers_is_malformed() {
        let result = decode(&BasicProperties::default(), Bytes::from_static(b"{}"));
        assert!(matches!(result, Err(Error::Malformed { .. })));
    }

    #[test]
    fn header_name_too_long_for_amqp_is_an_error_not_a_panic() {
        let envelope = Envelope::new("t", "s", "{}").with_header("h".repeat(300), "v");
        assert!(matches!(properties(&envelope), Err(Error::Encode(_))));
    }

    #[test]
    fn delays_round_down_to_two_significant_digits() {
        assert_eq!(delay_bucket(Duration::ZERO), 1);
        assert_eq!(delay_bucket(Duration::from_millis(57)), 57);
        assert_eq!(delay_bucket(Duration::from_millis(1234)), 1200);
        assert_eq!(delay_bucket(Duration::from_millis(99_999)), 99_000);
    }
}
