//! Subscribing to a topic and settling deliveries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;

use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::BoxFuture;

/// What to subscribe to: a topic, as a member of a consumer group.
///
/// Members of one group share the topic's events (competing consumers); each group
/// gets every event (fan-out).
///
/// ```
/// use palisade_events::Subscription;
///
/// let subscription = Subscription::new("orders", "billing").with_prefetch(64);
/// assert_eq!(subscription.group, "billing");
/// assert_eq!(subscription.prefetch, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic (exchange routing key, Kafka topic, stream, subject).
    pub topic: String,
    /// The consumer group (durable queue, Kafka group id, stream group, durable consumer).
    pub group: String,
    /// How many unsettled deliveries the broker may hand this member at once.
    /// Default: 256, enough to keep a network round trip busy without hoarding work
    /// that other members of the group could take.
    pub prefetch: usize,
}

impl Subscription {
    /// A subscription with the default prefetch (256).
    ///
    /// ```rust
    /// use palisade_events::Subscription;
    ///
    /// let subscription = Subscription::new("orders", "billing");
    /// assert_eq!((subscription.topic.as_str(), subscription.group.as_str()), ("orders", "billing"));
    /// ```
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            prefetch: 256,
        }
    }

    /// Sets how many unsettled deliveries this member may hold.
    ///
    /// ```rust
    /// use palisade_events::Subscription;
    ///
    /// assert_eq!(Subscription::new("orders", "billing").with_prefetch(500).prefetch, 500);
    /// ```
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// The stream of deliveries a [`Subscriber`] yields.
///
/// An `Err` item reports a problem with the subscription (a lost connection the backend
/// could not re-establish); the stream ends when the subscription is closed.
///
/// ```rust
/// use futures_util::StreamExt;
/// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// let delivery = stream.next().await.expect("a delivery")?;
/// assert_eq!(delivery.envelope().expect("well formed").key.as_deref(), Some("7"));
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery, Error>> + Send + 'static>>;

/// Subscribes to topics.
///
/// ```rust
/// use futures_util::StreamExt;
/// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// let delivery = stream.next().await.expect("a delivery")?;
/// // Members of one group share the work; another group gets every event again.
/// let mut audit = bus.subscribe(&Subscription::new("orders", "audit")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
/// delivery.ack().await?;
/// let second = stream.next().await.expect("a delivery")?;
/// second.ack().await?;
/// audit.next().await.expect("audit sees the later event too")?.ack().await?;
/// # Ok(()) }
/// ```
pub trait Subscriber: Send + Sync + 'static {
    /// Starts consuming `subscription.topic` as a member of `subscription.group`.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Acknowledge, Delivery, Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery: Delivery = stream.next().await.expect("a delivery")?;
    /// assert_eq!(delivery.attempt(), 1);
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// ```
    fn subscribe(
        &self,
        subscription: &Subscription,
    ) -> impl Future<Output = Result<DeliveryStream, Error>> + Send;
}

/// How a backend settles one delivery: implemented by the RabbitMQ, Redis and NATS
/// backends and by backends outside this crate (the in-memory and Kafka backends keep
/// their ackers inline in the [`Delivery`], saving a box per delivery); users settle
/// through [`Delivery`].
///
/// ```rust
/// use std::time::Duration;
/// use palisade_events::publisher::BoxFuture;
/// use palisade_events::{Acknowledge, Delivery, Envelope, Error};
///
/// /// A backend's acker: settles one message on its broker (here, does nothing).
/// struct NoopAcker;
/// impl Acknowledge for NoopAcker {
///     fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
///     fn retry(self: Box<Self>, _delay: Duration) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
///     fn dead_letter(self: Box<Self>, _reason: String) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let delivery = Delivery::new(Envelope::new("t", "test", "{}"), 1, Box::new(NoopAcker));
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
pub trait Acknowledge: Send + 'static {
    /// The event was handled: the broker may forget it.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Acknowledge, Delivery, Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery: Delivery = stream.next().await.expect("a delivery")?;
    /// delivery.ack().await?; // forwards to the acker
    /// assert_eq!(bus.pending("orders", "billing"), 0);
    /// # Ok(()) }
    /// ```
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Deliver it again after `delay` (to this group).
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Acknowledge, Delivery, Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery: Delivery = stream.next().await.expect("a delivery")?;
    /// delivery.retry(std::time::Duration::from_secs(1)).await?; // forwards to the acker
    /// assert_eq!(bus.pending("orders", "billing"), 1);
    /// # Ok(()) }
    /// ```
    fn retry(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), Error>>;
    /// Move it to the dead-letter destination with the reason in its headers.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Acknowledge, Delivery, Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery: Delivery = stream.next().await.expect("a delivery")?;
    /// // Backends implement this; handlers call `Delivery::dead_letter`, which forwards here.
    /// delivery.dead_letter("unknown customer").await?;
    /// assert_eq!(bus.pending("orders.dlq", "ops"), 1);
    /// # Ok(()) }
    /// ```
    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>>;
}

/// One event handed to a consumer, to be settled exactly once: [`ack`](Self::ack),
/// [`retry`](Self::retry) or [`dead_letter`](Self::dead_letter).
///
/// A delivery dropped without being settled stays unacknowledged, and the broker
/// delivers it again (to this or another member of the group) — at-least-once.
///
/// ```rust
/// use futures_util::StreamExt;
/// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// let delivery = stream.next().await.expect("a delivery")?;
/// assert_eq!(delivery.attempt(), 1);
/// // Settle it exactly once: ack, retry after a delay, or dead-letter with a reason.
/// delivery.dead_letter("order 7 is unknown").await?;
/// let mut dead = bus.subscribe(&Subscription::new("orders.dlq", "operators")).await?;
/// let letter = dead.next().await.expect("a dead letter")?;
/// assert_eq!(
///     letter.envelope().expect("well formed").headers.get(palisade_events::backend::memory::DEAD_LETTER_REASON).map(String::as_str),
///     Some("order 7 is unknown")
/// );
/// # Ok(()) }
/// ```
pub struct Delivery {
    message: Message,
    attempt: u32,
    acker: Acker,
}

/// A delivery's message. The error is boxed so that a delivery stays small to move
/// (64 bytes, not 96 with the error inline): a delivery moves through several
/// calls between its backend and its handler.
enum Message {
    Envelope(Arc<Envelope>),
    Unreadable(Box<Error>),
    /// Taken out to settle or to put back (a delivery being settled or dropped).
    Taken,
}

/// What [`Message::get`] shows for a message already taken out.
static TAKEN: Error = Error::Closed;

impl Message {
    #[cfg(any(feature = "kafka", feature = "redis"))]
    fn of(message: Result<Arc<Envelope>, Error>) -> Self {
        match message {
            Ok(envelope) => Self::Envelope(envelope),
            Err(error) => Self::Unreadable(Box::new(error)),
        }
    }

    fn get(&self) -> Result<&Arc<Envelope>, &Error> {
        match self {
            Self::Envelope(envelope) => Ok(envelope),
            Self::Unreadable(error) => Err(error),
            Self::Taken => Err(&TAKEN),
        }
    }
}

/// How a delivery is settled.
///
/// The in-memory bus's and the Kafka backend's ackers are kept inline, with no
/// envelope of their own (the delivery hands its envelope over where settling needs
/// it): their deliveries are handled in well under a microsecond of the consumer's
/// time each (an ack needs no I/O), and a box per delivery (an allocation and a free)
/// plus a second handle on the envelope (two atomic read-modify-writes) were a
/// measurable part of that. Every other backend's acker is boxed behind
/// [`Acknowledge`], where the broker round trip of a settle dwarfs both.
pub(crate) enum Acker {
    Boxed(Box<dyn Acknowledge>),
    Memory(crate::backend::memory::MemoryAck),
    #[cfg(feature = "kafka")]
    Kafka(crate::backend::kafka::KafkaAcker),
    /// Taken out to settle; what is left in a delivery being settled.
    Settled,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Unsettled: an in-memory delivery goes back to its group (a boxed acker does
        // the same in its own `Drop`).
        if let Acker::Memory(acker) = std::mem::replace(&mut self.acker, Acker::Settled) {
            acker.dropped(self.take_message(), self.attempt);
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message.get())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery of a well-formed envelope. `attempt` is 1 for the first delivery.
    ///
    /// ```rust
    /// # use std::time::Duration;
    /// # use palisade_events::{Acknowledge, BoxFuture, Error};
    /// # struct Noop;
    /// # impl Acknowledge for Noop {
    /// #     fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn retry(self: Box<Self>, _: Duration) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn dead_letter(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// # }
    /// use palisade_events::{Delivery, Envelope};
    ///
    /// // A backend's attempt 0 is read as the first.
    /// let delivery = Delivery::new(Envelope::new("t", "test", "{}"), 0, Box::new(Noop));
    /// assert_eq!(delivery.attempt(), 1);
    /// ```
    pub fn new(envelope: Envelope, attempt: u32, acker: Box<dyn Acknowledge>) -> Self {
        Self {
            message: Message::Envelope(Arc::new(envelope)),
            attempt: attempt.max(1),
            acker: Acker::Boxed(acker),
        }
    }

    /// A delivery of an envelope the backend already holds behind an `Arc` (no copy).
    ///
    /// ```rust
    /// # use std::time::Duration;
    /// # use palisade_events::{Acknowledge, BoxFuture, Error};
    /// # struct Noop;
    /// # impl Acknowledge for Noop {
    /// #     fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn retry(self: Box<Self>, _: Duration) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn dead_letter(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// # }
    /// use std::sync::Arc;
    /// use palisade_events::{Delivery, Envelope};
    ///
    /// let envelope = Arc::new(Envelope::new("t", "test", "{}"));
    /// let delivery = Delivery::from_shared(Arc::clone(&envelope), 2, Box::new(Noop));
    /// assert!(Arc::ptr_eq(&delivery.shared_envelope().expect("well formed"), &envelope));
    /// ```
    pub fn from_shared(envelope: Arc<Envelope>, attempt: u32, acker: Box<dyn Acknowledge>) -> Self {
        Self {
            message: Message::Envelope(envelope),
            attempt: attempt.max(1),
            acker: Acker::Boxed(acker),
        }
    }

    /// An in-memory delivery, settled by its inline acker.
    pub(crate) fn in_memory(
        envelope: Arc<Envelope>,
        attempt: u32,
        acker: crate::backend::memory::MemoryAck,
    ) -> Self {
        Self {
            message: Message::Envelope(envelope),
            attempt: attempt.max(1),
            acker: Acker::Memory(acker),
        }
    }

    /// The envelope's shared handle, borrowed, or why the message is not one.
    pub(crate) fn message(&self) -> Result<&Arc<Envelope>, &Error> {
        self.message.get()
    }

    /// A Kafka delivery, settled by its inline acker.
    #[cfg(feature = "kafka")]
    pub(crate) fn kafka(
        message: Result<Arc<Envelope>, Error>,
        attempt: u32,
        acker: crate::backend::kafka::KafkaAcker,
    ) -> Self {
        Self {
            message: Message::of(message),
            attempt: attempt.max(1),
            acker: Acker::Kafka(acker),
        }
    }

    /// The message, leaving a placeholder (for a delivery being settled or dropped).
    fn take_message(&mut self) -> Result<Arc<Envelope>, Error> {
        match std::mem::replace(&mut self.message, Message::Taken) {
            Message::Envelope(envelope) => Ok(envelope),
            Message::Unreadable(error) => Err(*error),
            Message::Taken => Err(Error::Closed),
        }
    }

    /// The acker, leaving [`Acker::Settled`], so that dropping the rest does nothing.
    fn take_acker(&mut self) -> Acker {
        std::mem::replace(&mut self.acker, Acker::Settled)
    }

    /// A delivery of `message`: an envelope, or the error it could not be read with.
    #[cfg(feature = "redis")]
    pub(crate) fn from_message(
        message: Result<Arc<Envelope>, Error>,
        attempt: u32,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            message: Message::of(message),
            attempt: attempt.max(1),
            acker: Acker::Boxed(acker),
        }
    }

    /// A delivery whose broker message could not be mapped to an envelope (a missing
    /// required header, an unreadable attribute). The consumer runtime dead-letters
    /// it at once with the error as the reason.
    ///
    /// ```rust
    /// # use std::time::Duration;
    /// # use palisade_events::{Acknowledge, BoxFuture};
    /// # struct Noop;
    /// # impl Acknowledge for Noop {
    /// #     fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn retry(self: Box<Self>, _: Duration) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// #     fn dead_letter(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), Error>> { Box::pin(async { Ok(()) }) }
    /// # }
    /// use palisade_events::{Delivery, Error};
    ///
    /// let error = Error::Malformed { reason: "no ce_id header".into() };
    /// let delivery = Delivery::malformed(error, 1, Box::new(Noop));
    /// assert!(matches!(delivery.envelope(), Err(Error::Malformed { .. })));
    /// ```
    pub fn malformed(error: Error, attempt: u32, acker: Box<dyn Acknowledge>) -> Self {
        Self {
            message: Message::Unreadable(Box::new(error)),
            attempt: attempt.max(1),
            acker: Acker::Boxed(acker),
        }
    }

    /// The envelope, or why the message is not one.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// assert_eq!(delivery.envelope().map(|e| e.event_type.to_string()).ok(), Some("order.placed".into()));
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// ```
    pub fn envelope(&self) -> Result<&Envelope, &Error> {
        self.message.get().map(|envelope| &**envelope)
    }

    /// The envelope as a shared handle (no copy), or why the message is not one.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// // Keep the envelope after settling: a cheap handle, no copy.
    /// let envelope = delivery.shared_envelope().map_err(|e| e.to_string())?;
    /// delivery.ack().await?;
    /// assert_eq!(envelope.source, "shop");
    /// # Ok(()) }
    /// ```
    pub fn shared_envelope(&self) -> Result<Arc<Envelope>, &Error> {
        self.message.get().map(Arc::clone)
    }

    /// Which delivery of this event this is, starting at 1, as far as the broker
    /// tracks it (redelivery counts, `x-death`, JetStream's `num_delivered`).
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// assert_eq!(delivery.attempt(), 1);
    /// drop(delivery); // unsettled: delivered again
    /// let again = deliveries.next().await.expect("redelivered")?;
    /// assert_eq!(again.attempt(), 2);
    /// again.ack().await?;
    /// # Ok(()) }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledges: the event was handled.
    ///
    /// Returns the backend's settling future, already boxed: spawning it or keeping many
    /// in flight costs no further allocation. Await it: a backend may do the work at
    /// the call (a Kafka offset store) or only once the future is polled, and only its
    /// output says the broker took the ack.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// delivery.ack().await?;
    /// assert_eq!(bus.pending("orders", "billing"), 0);
    /// # Ok(()) }
    /// ```
    pub fn ack(mut self) -> BoxFuture<'static, Result<(), Error>> {
        match self.take_acker() {
            Acker::Boxed(acker) => acker.ack(),
            Acker::Memory(acker) => acker.ack(self.envelope().ok()),
            #[cfg(feature = "kafka")]
            Acker::Kafka(acker) => acker.ack(self.take_message().ok()),
            Acker::Settled => crate::backend::settled(),
        }
    }

    /// Asks for redelivery after `delay`. Like [`Delivery::ack`], returns the
    /// backend's boxed settling future, to be awaited.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// delivery.retry(std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(bus.pending("orders", "billing"), 1); // waiting out the delay
    /// let again = deliveries.next().await.expect("after the delay")?;
    /// assert_eq!(again.attempt(), 2);
    /// again.ack().await?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, delay: Duration) -> BoxFuture<'static, Result<(), Error>> {
        match self.take_acker() {
            Acker::Boxed(acker) => acker.retry(delay),
            Acker::Memory(acker) => acker.retry(self.take_message(), self.attempt, delay),
            #[cfg(feature = "kafka")]
            Acker::Kafka(acker) => acker.retry(self.take_message(), self.attempt, delay),
            Acker::Settled => crate::backend::settled(),
        }
    }

    /// Moves the event to the dead-letter destination with `reason`. Like
    /// [`Delivery::ack`], returns the backend's boxed settling future, to be awaited.
    ///
    /// ```rust
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::new();
    /// let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// let delivery = deliveries.next().await.expect("a delivery")?;
    /// delivery.dead_letter("customer unknown").await?;
    /// let mut dead = bus.subscribe(&Subscription::new("orders.dlq", "ops")).await?;
    /// let letter = dead.next().await.expect("a dead letter")?;
    /// assert_eq!(letter.envelope().map(|e| e.headers["palisade-dead-letter-reason"].clone()).ok(), Some("customer unknown".into()));
    /// letter.ack().await?;
    /// # Ok(()) }
    /// ```
    pub fn dead_letter(
        mut self,
        reason: impl Into<String>,
    ) -> BoxFuture<'static, Result<(), Error>> {
        match self.take_acker() {
            Acker::Boxed(acker) => acker.dead_letter(reason.into()),
            Acker::Memory(acker) => acker.dead_letter(self.take_message(), reason.into()),
            #[cfg(feature = "kafka")]
            Acker::Kafka(acker) => {
                acker.dead_letter(self.take_message(), self.attempt, reason.into())
            }
            Acker::Settled => crate::backend::settled(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_small_to_move() {
        // What a backend hands to the consumer moves through several calls per event.
        assert!(
            std::mem::size_of::<Delivery>() <= 64,
            "Delivery is {} bytes",
            std::mem::size_of::<Delivery>()
        );
    }

    #[test]
    fn a_taken_message_reads_as_closed() {
        let mut message = Message::Unreadable(Box::new(Error::Malformed {
            reason: "no ce_id".into(),
        }));
        assert!(matches!(message.get(), Err(Error::Malformed { .. })));
        message = Message::Taken;
        assert!(matches!(message.get(), Err(Error::Closed)));
    }
}
