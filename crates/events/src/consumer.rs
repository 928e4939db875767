//! The consumer runtime: typed handlers, bounded concurrency, order per key, retries,
//! dead letters and graceful shutdown, over any [`Subscriber`].
//!
//! A [`Consumer`] subscribes as a member of a group, routes each delivery by its
//! [`event_type`](Envelope::event_type) to the handler registered for that
//! [`Event`] type, and settles it:
//!
//! | outcome | what the runtime does |
//! |---|---|
//! | handler returned `Ok` | ack |
//! | handler returned a transient error (any error, by default) | retry with [`Backoff`], then dead-letter after `max_attempts` with the last error as the reason |
//! | handler returned [`HandlerError::permanent`] | dead-letter at once |
//! | handler panicked | as a transient error |
//! | message not an envelope, content type not the codec's, payload does not decode, payload over `max_payload` | dead-letter at once with the error as the reason |
//! | no handler for the event type | ack and log, or dead-letter ([`UnknownEvent`]) |
//! | the [`Inbox`] says it was handled | ack without calling the handler |
//!
//! **Order per key.** Deliveries with the same [`key`](Envelope::key) run one after
//! the other, in the order the subscriber yielded them; different keys (and keyless
//! events) run in parallel, up to [`concurrency`](Consumer::concurrency) deliveries in
//! hand. With [`RetryMode::InProcess`] (the default) a failing event holds its key
//! until it succeeds or is dead-lettered, so order per key survives retries. With
//! [`RetryMode::Redeliver`] the delivery goes back to the broker
//! ([`Delivery::retry`]) and later events of its key proceed: no head-of-line
//! blocking, but no order across a retry either.
//!
//! **Where handlers run.** Each delivery is first polled in the consumer's own task: a
//! handler that finishes without waiting (no I/O, or a duplicate the inbox absorbs) is
//! handled and settled right there, with no task spawned and no thread woken; one that
//! has to wait moves into a task of its own and runs in parallel with the others, up to
//! [`concurrency`](Consumer::concurrency). Long CPU-bound work in a handler therefore
//! holds up the consumer's loop: give it to `tokio::task::spawn_blocking`.
//!
//! **Shutdown.** [`run`](Consumer::run) returns once its [`CancellationToken`] is
//! cancelled: it stops taking deliveries, lets in-flight handlers finish and settles
//! them, hands back events waiting out an in-process retry (`retry` with no delay) and
//! only then drops the subscription. Nothing unsettled is lost: the broker redelivers
//! it. A handler that never returns holds shutdown up: bound slow calls inside
//! handlers with a timeout (the resilience crate's `timeout` layer, or
//! `tokio::time::timeout`).
//!
//! **Metrics** (feature `metrics`): `palisade_events_settled_total` counts settled
//! deliveries by `consumer`, `outcome` (`ack`, `retry`, `dead-letter`) and `ok`.
//!
//! **Lost subscriptions.** An error from the delivery stream (a connection the backend
//! could not restore) makes the runtime re-subscribe with its reconnect backoff, for as
//! long as it runs; an [`Error::Closed`] from `subscribe` ends it.
//!
//! ```rust
//! use palisade_events::consumer::{Consumer, Context, HandlerError};
//! use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//!
//! impl Event for OrderPlaced {
//!     const TYPE: &'static str = "order.placed";
//!     fn key(&self) -> Option<String> { Some(self.order_id.to_string()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_events::Error> {
//! let bus = MemoryBus::new();
//! let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
//! let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
//!     .handle(move |event: OrderPlaced, ctx: Context| {
//!         let done_tx = done_tx.clone();
//!         async move {
//!             assert_eq!(ctx.attempt(), 1);
//!             done_tx.send(event.order_id)?;
//!             Ok::<_, HandlerError>(())
//!         }
//!     });
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(consumer.run(shutdown.clone()));
//!
//! bus.publish("orders", Envelope::from_event(&OrderPlaced { order_id: 7 }, "shop")?).await?;
//! assert_eq!(done_rx.recv().await, Some(7));
//!
//! shutdown.cancel();
//! running.await.map_err(|e| palisade_events::Error::Config(e.to_string()))??;
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::Fuse;
use futures_util::{FutureExt, StreamExt};
use palisade_resilience::backoff::{Backoff, BackoffIter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::codec::{Codec, JsonCodec};
use crate::envelope::Envelope;
use crate::error::{BoxError, Error};
use crate::event::Event;
use crate::inbox::{Claim, Inbox};
use crate::publisher::BoxFuture;
use crate::subscriber::{Delivery, DeliveryStream, Subscriber, Subscription};

/// What a handler knows about the delivery it handles.
///
/// ```rust
/// use palisade_events::consumer::{Consumer, Context, HandlerError};
/// use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
/// use serde::{Deserialize, Serialize};
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(Serialize, Deserialize)]
/// struct Shipped { order: u64 }
/// impl Event for Shipped {
///     const TYPE: &'static str = "order.shipped";
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
/// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "mailer"))
///     .name("mailer")
///     .handle(move |event: Shipped, ctx: Context| {
///         let tx = tx.clone();
///         async move {
///             // The event id is what a handler deduplicates on; the attempt counts retries.
///             tx.send((event.order, ctx.attempt(), ctx.consumer().to_owned(), ctx.event_id()))?;
///             Ok::<_, HandlerError>(())
///         }
///     });
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(consumer.run(shutdown.clone()));
/// bus.publish("orders", Envelope::from_event(&Shipped { order: 7 }, "shop")?).await?;
/// let (order, attempt, consumer, _id) = seen.recv().await.expect("handled");
/// assert_eq!((order, attempt, consumer.as_str()), (7, 1, "mailer"));
/// shutdown.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    envelope: Arc<Envelope>,
    attempt: u32,
    consumer: Name,
}

/// A consumer's name, as the consumer and each handler's [`Context`] hold it: kept
/// once per process when there is room (see the `names` module), so that a context
/// copies it with no reference count to take and give back; a lock-prefixed operation
/// each way cost a few percent of the consuming thread on AMD EPYC machines. Shared
/// when there is no room.
#[derive(Clone, Debug)]
enum Name {
    Kept(&'static str),
    Shared(Arc<str>),
}

impl Name {
    fn of(name: String) -> Self {
        match crate::backend::names::name(&name) {
            std::borrow::Cow::Borrowed(kept) => Self::Kept(kept),
            std::borrow::Cow::Owned(_) => Self::Shared(Arc::from(name)),
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Kept(name) => name,
            Self::Shared(name) => name,
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl Context {
    /// The envelope (attributes, headers, raw payload).
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Placed { id: u64 }
    /// # impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    /// let bus = MemoryBus::new();
    /// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .handle(move |_: Placed, ctx: Context| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.envelope().source.to_string()).map_err(HandlerError::transient) }
    ///     });
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(consumer.run(shutdown.clone()));
    /// let envelope = Envelope::from_event(&Placed { id: 7 }, "shop")?.with_key("order-7");
    /// let id = envelope.id;
    /// bus.publish("orders", envelope).await?;
    /// let seen = seen.recv().await.expect("handled");
    /// assert_eq!(seen, "shop");
    /// shutdown.cancel();
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The event's id: the idempotency key, with [`consumer`](Self::consumer).
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Placed { id: u64 }
    /// # impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    /// let bus = MemoryBus::new();
    /// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .handle(move |_: Placed, ctx: Context| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.event_id()).map_err(HandlerError::transient) }
    ///     });
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(consumer.run(shutdown.clone()));
    /// let envelope = Envelope::from_event(&Placed { id: 7 }, "shop")?.with_key("order-7");
    /// let id = envelope.id;
    /// bus.publish("orders", envelope).await?;
    /// let seen = seen.recv().await.expect("handled");
    /// assert_eq!(seen, id);
    /// shutdown.cancel();
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn event_id(&self) -> Uuid {
        self.envelope.id
    }

    /// The ordering key, if any.
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Placed { id: u64 }
    /// # impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    /// let bus = MemoryBus::new();
    /// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .handle(move |_: Placed, ctx: Context| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.key().map(str::to_owned)).map_err(HandlerError::transient) }
    ///     });
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(consumer.run(shutdown.clone()));
    /// let envelope = Envelope::from_event(&Placed { id: 7 }, "shop")?.with_key("order-7");
    /// let id = envelope.id;
    /// bus.publish("orders", envelope).await?;
    /// let seen = seen.recv().await.expect("handled");
    /// assert_eq!(seen.as_deref(), Some("order-7"));
    /// shutdown.cancel();
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn key(&self) -> Option<&str> {
        self.envelope.key.as_deref()
    }

    /// Which attempt this is, from 1: broker redeliveries plus in-process retries.
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Placed { id: u64 }
    /// # impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    /// let bus = MemoryBus::new();
    /// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .handle(move |_: Placed, ctx: Context| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.attempt()).map_err(HandlerError::transient) }
    ///     });
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(consumer.run(shutdown.clone()));
    /// let envelope = Envelope::from_event(&Placed { id: 7 }, "shop")?.with_key("order-7");
    /// let id = envelope.id;
    /// bus.publish("orders", envelope).await?;
    /// let seen = seen.recv().await.expect("handled");
    /// assert_eq!(seen, 1); // the first delivery
    /// shutdown.cancel();
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The consumer's name (its group, unless set with [`Consumer::name`]).
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Placed { id: u64 }
    /// # impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    /// let bus = MemoryBus::new();
    /// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .handle(move |_: Placed, ctx: Context| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.consumer().to_owned()).map_err(HandlerError::transient) }
    ///     });
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(consumer.run(shutdown.clone()));
    /// let envelope = Envelope::from_event(&Placed { id: 7 }, "shop")?.with_key("order-7");
    /// let id = envelope.id;
    /// bus.publish("orders", envelope).await?;
    /// let seen = seen.recv().await.expect("handled");
    /// assert_eq!(seen, "billing"); // the group, unless named
    /// shutdown.cancel();
    /// running.await??;
    /// # Ok(()) }
    /// ```
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
}

/// A handler's failure: transient (retry, the default for any error) or permanent
/// (dead-letter at once).
///
/// Any error converts into a transient `HandlerError` with `?`.
///
/// ```rust
/// use palisade_events::consumer::HandlerError;
///
/// // Transient: retried with backoff, then dead-lettered. Permanent: dead-lettered at once.
/// let busy = HandlerError::transient(std::io::Error::other("database busy"));
/// let invalid = HandlerError::permanent("order 7 does not exist");
/// assert!(!busy.is_permanent());
/// assert!(invalid.is_permanent());
/// assert_eq!(invalid.into_source().to_string(), "order 7 does not exist");
/// ```
pub struct HandlerError {
    kind: Kind,
    source: BoxError,
}

/// Whether a [`HandlerError`] is permanent: a whole word where a `bool` would do.
///
/// The results that carry a handler's error (`Result<(), HandlerError>`, and the
/// `Poll` and `Option` around it) tell their variants apart by this field's value. As a
/// one-byte `bool`, each move of such a result after a handler's call copied that byte
/// and the seven after it with two overlapping four-byte stores, and the load that
/// read them back could not take its bytes from both: it waited for the stores to
/// reach the cache. On an AMD EPYC those waits were 4.6% of the consuming thread's
/// samples (BENCHMARKS.md, session 15). As a word, a result moves as whole words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Kind {
    Transient,
    Permanent,
}

impl HandlerError {
    /// An error worth retrying (a timeout, a dependency down).
    ///
    /// ```rust
    /// use palisade_events::consumer::HandlerError;
    ///
    /// let error = HandlerError::transient(std::io::Error::other("database busy"));
    /// assert!(!error.is_permanent());
    /// assert_eq!(error.to_string(), "database busy");
    /// ```
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Transient,
            source: source.into(),
        }
    }

    /// An error that will repeat (a business rule rejecting the event): dead-letter now.
    ///
    /// ```rust
    /// use palisade_events::consumer::HandlerError;
    ///
    /// let error = HandlerError::permanent("order 7 does not exist");
    /// assert!(error.is_permanent());
    /// ```
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Permanent,
            source: source.into(),
        }
    }

    /// Whether this error skips the retries.
    ///
    /// ```rust
    /// use palisade_events::consumer::HandlerError;
    ///
    /// // `?` on any error gives a transient one.
    /// fn parse(text: &str) -> Result<u64, HandlerError> { Ok(text.parse::<u64>()?) }
    /// assert!(!parse("x").expect_err("not a number").is_permanent());
    /// ```
    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    /// The underlying error.
    ///
    /// ```rust
    /// use palisade_events::consumer::HandlerError;
    ///
    /// let source = HandlerError::transient(std::io::Error::other("timed out")).into_source();
    /// assert!(source.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(source: E) -> Self {
        Self::transient(source)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.is_permanent())
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(&*self.source))
    }
}

/// Handles one event type. Implemented for every
/// `Fn(E, Context) -> impl Future<Output = Result<(), Err>>` where `Err` converts into
/// [`HandlerError`]; implement it on a struct to keep state (a pool, a client).
///
/// ```rust
/// use palisade_events::consumer::{Consumer, Context, HandlerError};
/// use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
/// use serde::{Deserialize, Serialize};
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(Serialize, Deserialize)]
/// struct Shipped { order: u64 }
/// impl Event for Shipped {
///     const TYPE: &'static str = "order.shipped";
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
/// use palisade_events::consumer::Handler;
///
/// /// A handler with state of its own, instead of a closure.
/// struct Mailer { sent: tokio::sync::mpsc::UnboundedSender<u64> }
/// impl Handler<Shipped> for Mailer {
///     async fn handle(&self, event: Shipped, _ctx: Context) -> Result<(), HandlerError> {
///         self.sent.send(event.order).map_err(HandlerError::transient)
///     }
/// }
/// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "mailer"))
///     .handle(Mailer { sent: tx });
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(consumer.run(shutdown.clone()));
/// bus.publish("orders", Envelope::from_event(&Shipped { order: 7 }, "shop")?).await?;
/// assert_eq!(seen.recv().await, Some(7));
/// shutdown.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
pub trait Handler<E: Event>: Send + Sync + 'static {
    /// Handles one event.
    ///
    /// ```rust
    /// use palisade_events::consumer::{Context, Handler, HandlerError};
    /// use palisade_events::Event;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl Event for Placed { const TYPE: &'static str = "order.placed"; }
    ///
    /// struct Counter(std::sync::atomic::AtomicU64);
    /// impl Handler<Placed> for Counter {
    ///     async fn handle(&self, event: Placed, _ctx: Context) -> Result<(), HandlerError> {
    ///         if event.id == 0 {
    ///             return Err(HandlerError::permanent("order 0 does not exist")); // dead-lettered
    ///         }
    ///         self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ///         Ok(())
    ///     }
    /// }
    /// let counter = Counter(std::sync::atomic::AtomicU64::new(0));
    /// assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    /// ```
    fn handle(
        &self,
        event: E,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E, F, Fut, Err> Handler<E> for F
where
    E: Event,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Err>> + Send + 'static,
    Err: Into<HandlerError>,
{
    async fn handle(&self, event: E, ctx: Context) -> Result<(), HandlerError> {
        (self)(event, ctx).await.map_err(Into::into)
    }
}

/// How failed attempts are retried.
///
/// ```rust
/// use palisade_events::consumer::{Consumer, RetryMode};
/// use palisade_events::{MemoryBus, Subscription};
///
/// // Let the broker redeliver failed events so other events of their key go on.
/// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "audit"))
///     .retry_mode(RetryMode::Redeliver);
/// assert_eq!(RetryMode::default(), RetryMode::InProcess);
/// # let _ = consumer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryMode {
    /// Wait out the backoff in this process, holding the delivery (and its key): order
    /// per key is kept. The default.
    #[default]
    InProcess,
    /// Hand the delivery back with [`Delivery::retry`]`(delay)`: the broker redelivers
    /// it after the backoff; other events of its key are not held up.
    Redeliver,
}

/// What to do with an event no handler is registered for.
///
/// ```rust
/// use palisade_events::consumer::{Consumer, UnknownEvent};
/// use palisade_events::{MemoryBus, Subscription};
///
/// // A strict consumer: an event type it has no handler for goes to the dead-letter topic.
/// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "ledger"))
///     .unknown_events(UnknownEvent::DeadLetter);
/// assert_eq!(UnknownEvent::default(), UnknownEvent::Ack);
/// # let _ = consumer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownEvent {
    /// Ack it and log at `warn`: the default, so a new event type published before
    /// its consumers are upgraded does not pile up.
    #[default]
    Ack,
    /// Dead-letter it, with `no handler for event type ...` as the reason.
    DeadLetter,
}

trait Route<C>: Send + Sync + 'static {
    /// Decodes, handles (with retries) and settles one delivery of this route's type:
    /// `shared.routes[at]`, which is `self`. The future finds the route there again
    /// rather than holding a handle of its own on it (no reference count to bump and
    /// drop per delivery).
    fn run(
        &self,
        shared: Arc<Shared<C>>,
        at: usize,
        delivery: Delivery,
        span: Option<tracing::Span>,
    ) -> BoxFuture<'static, ()>;

    /// A place for the run loop to handle this route's deliveries in: see [`Slot`].
    /// `direct`: without an inbox, a [`CallSlot`], which calls the handler itself.
    fn slot(&self, direct: bool) -> Box<dyn Slot<C>>;

    /// `self`, to find the typed route again behind `dyn Route`.
    fn as_any(&self) -> &dyn Any;
}

/// Where the run loop handles one route's deliveries in place: one allocation, made
/// when the slot is and reused by every delivery that completes without waiting,
/// instead of a boxed future per delivery (its allocation and free were a tenth of
/// the in-memory consumer's work per event).
trait Slot<C>: Send {
    /// Handles `delivery` (of this slot's route, `shared.routes[at]`) in the slot,
    /// polled once: `None` when that completed it; otherwise the work, still running,
    /// for the caller to spawn (the slot makes itself a new place for the next).
    fn start(
        &mut self,
        shared: &Arc<Shared<C>>,
        at: usize,
        delivery: Delivery,
    ) -> Option<BoxFuture<'static, ()>>;
}

/// A slot's home for the future it runs: one allocation, reused by every future that
/// completes in its first poll, terminated between them.
struct Place<F>(Pin<Box<Fuse<F>>>);

impl<F: Future> Place<F> {
    fn new() -> Self {
        Self(Box::pin(Fuse::terminated()))
    }

    /// Puts `work` in and polls it once, with a waker that does nothing (the task the
    /// caller spawns for work still running polls again, registering its own waker,
    /// before anything could have been missed): its output if that completed it.
    fn run(&mut self, work: F) -> Option<F::Output> {
        self.0.set(work.fuse());
        self.0.as_mut().now_or_never()
    }

    /// The work still running here, to spawn; the place gets a new home for the next.
    fn take(&mut self) -> Pin<Box<Fuse<F>>> {
        std::mem::replace(&mut self.0, Box::pin(Fuse::terminated()))
    }

    /// Drops what is here (work whose poll panicked, not to be polled again).
    fn clear(&mut self) {
        self.0.set(Fuse::terminated());
    }
}

/// A [`Slot`] for deliveries handled by the futures `make` returns.
struct TypedSlot<C, F> {
    make: fn(Arc<Shared<C>>, usize, Delivery) -> F,
    place: Place<F>,
}

impl<C, F: Future<Output = ()>> TypedSlot<C, F> {
    fn new(make: fn(Arc<Shared<C>>, usize, Delivery) -> F) -> Self {
        Self {
            make,
            place: Place::new(),
        }
    }
}

impl<C: Codec, F: Future<Output = ()> + Send + 'static> Slot<C> for TypedSlot<C, F> {
    fn start(
        &mut self,
        shared: &Arc<Shared<C>>,
        at: usize,
        delivery: Delivery,
    ) -> Option<BoxFuture<'static, ()>> {
        let work = (self.make)(Arc::clone(shared), at, delivery);
        match self.place.run(work) {
            Some(()) => None,
            None => Some(self.place.take()),
        }
    }
}

/// A [`Slot`] that calls the handler itself, for a consumer without an inbox: the
/// event is decoded and the delivery acked here, synchronously, and only the handler's
/// call goes into the slot's place. So a delivery whose handler completes at once
/// costs no per-delivery state machine around the call: [`route_work`]'s future (512
/// bytes to fill per delivery, four `async` layers to step through) is kept for what
/// this one does not handle (an event that does not decode goes through it to its
/// dead letter), and a failed attempt goes on in [`recover`] as there.
struct CallSlot<C, E, H, F> {
    make: fn(Arc<Shared<C>>, usize, E, Context) -> F,
    place: Place<F>,
    _route: PhantomData<fn() -> H>,
}

impl<C, E, H, F: Future> CallSlot<C, E, H, F> {
    fn new(make: fn(Arc<Shared<C>>, usize, E, Context) -> F) -> Self {
        Self {
            make,
            place: Place::new(),
            _route: PhantomData,
        }
    }
}

impl<C, E, H, F> Slot<C> for CallSlot<C, E, H, F>
where
    C: Codec,
    E: Event,
    H: Handler<E>,
    F: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn start(
        &mut self,
        shared: &Arc<Shared<C>>,
        at: usize,
        delivery: Delivery,
    ) -> Option<BoxFuture<'static, ()>> {
        let attempt = delivery.attempt();
        let decoded = delivery.message().ok().and_then(|envelope| {
            Some((envelope.decode_with::<C, E>(&shared.codec).ok()?, envelope))
        });
        let Some((event, envelope)) = decoded else {
            // Not an event of this type after all: dead-lettered as the slot-less path
            // does it, with the decode error.
            return now_or_later(Box::pin(route_work::<C, E, H>(
                Arc::clone(shared),
                at,
                delivery,
            )));
        };
        let ctx = Context {
            envelope: Arc::clone(envelope),
            attempt,
            consumer: shared.name.clone(),
        };
        let call = (self.make)(Arc::clone(shared), at, event, ctx);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| self.place.run(call)));
        let called = match polled {
            Ok(Some(called)) => Ok(called),
            Err(panic) => {
                self.place.clear();
                Err(panic)
            }
            Ok(None) => {
                let call = self.place.take();
                let shared = Arc::clone(shared);
                return Some(Box::pin(async move {
                    let called = AssertUnwindSafe(call).catch_unwind().await;
                    conclude::<C, E, H>(shared, at, delivery, attempt, outcome(called)).await;
                }));
            }
        };
        match outcome(called) {
            Ok(()) => {
                let mut ack = delivery.ack();
                if let Some(acked) = ack.as_mut().now_or_never() {
                    settle(&shared.name, "ack", acked);
                    return None;
                }
                let name = shared.name.clone();
                Some(Box::pin(async move { settle(&name, "ack", ack.await) }))
            }
            Err(failure) => Some(Box::pin(conclude::<C, E, H>(
                Arc::clone(shared),
                at,
                delivery,
                attempt,
                Err(failure),
            ))),
        }
    }
}

/// `work` polled once in place: `None` when that completed it, else the work, still
/// running, to spawn. The poll's waker does nothing: the task the caller spawns polls
/// again (registering its own waker) before anything could have been missed.
fn now_or_later(mut work: BoxFuture<'static, ()>) -> Option<BoxFuture<'static, ()>> {
    match work.as_mut().now_or_never() {
        Some(()) => None,
        None => Some(work),
    }
}

/// The handler's call for one event of the route at `shared.routes[at]`, a
/// `TypedRoute<E, H>`: what a [`CallSlot`] holds.
async fn route_call<C: Codec, E: Event, H: Handler<E>>(
    shared: Arc<Shared<C>>,
    at: usize,
    event: E,
    ctx: Context,
) -> Result<(), HandlerError> {
    match typed_route::<C, E, H>(&shared, at) {
        Some(route) => route.handler.handle(event, ctx).await,
        // `at` is this route's own place, so this does not happen; were it to, the
        // attempt fails and is retried.
        None => Err(HandlerError::transient("the consumer's route moved")),
    }
}

/// After a [`CallSlot`]'s call of `delivery`'s attempt came to `result`: acks, or
/// retries and dead-letters as [`handle`] does.
async fn conclude<C: Codec, E: Event, H: Handler<E>>(
    shared: Arc<Shared<C>>,
    at: usize,
    delivery: Delivery,
    attempt: u32,
    result: Result<(), Box<Failure>>,
) {
    match (result, typed_route::<C, E, H>(&shared, at)) {
        (Ok(()), _) => settle(&shared.name, "ack", delivery.ack().await),
        (Err(failure), Some(route)) => {
            recover(&shared, &route.handler, delivery, attempt, failure).await;
        }
        (Err(_), None) => settle(&shared.name, "retry", delivery.retry(Duration::ZERO).await),
    }
}

/// The typed route at `shared.routes[at]`.
fn typed_route<C: Codec, E: Event, H: Handler<E>>(
    shared: &Shared<C>,
    at: usize,
) -> Option<&TypedRoute<E, H>> {
    shared
        .routes
        .get(at)
        .and_then(|(_, route)| route.as_any().downcast_ref::<TypedRoute<E, H>>())
}

struct TypedRoute<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<C: Codec, E: Event, H: Handler<E>> Route<C> for TypedRoute<E, H> {
    fn run(
        &self,
        shared: Arc<Shared<C>>,
        at: usize,
        delivery: Delivery,
        span: Option<tracing::Span>,
    ) -> BoxFuture<'static, ()> {
        traced(span, route_work::<C, E, H>(shared, at, delivery))
    }

    fn slot(&self, direct: bool) -> Box<dyn Slot<C>> {
        if direct {
            Box::new(CallSlot::<C, E, H, _>::new(route_call::<C, E, H>))
        } else {
            Box::new(TypedSlot::new(route_work::<C, E, H>))
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Decodes, handles (with retries) and settles `delivery` with the route at
/// `shared.routes[at]`, a `TypedRoute<E, H>`.
async fn route_work<C: Codec, E: Event, H: Handler<E>>(
    shared: Arc<Shared<C>>,
    at: usize,
    delivery: Delivery,
) {
    match typed_route::<C, E, H>(&shared, at) {
        Some(route) => handle(&shared, &route.handler, delivery).await,
        // `at` is this route's own place, so this does not happen; were it to, the
        // event goes back rather than being lost.
        None => settle(&shared.name, "retry", delivery.retry(Duration::ZERO).await),
    }
}

/// The consumer runtime for one subscription. See the [module docs](self).
///
/// ```rust
/// use palisade_events::consumer::{Consumer, Context, HandlerError};
/// use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
/// use serde::{Deserialize, Serialize};
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(Serialize, Deserialize)]
/// struct Shipped { order: u64 }
/// impl Event for Shipped {
///     const TYPE: &'static str = "order.shipped";
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// let consumer = Consumer::new(bus.clone(), Subscription::new("orders", "shipping"))
///     .concurrency(32) // different keys in parallel, one key in order
///     .max_attempts(5)
///     .backoff(Backoff::exponential(Duration::from_millis(100)))
///     .handle(move |event: Shipped, _ctx: Context| {
///         let tx = tx.clone();
///         async move { tx.send(event.order).map_err(HandlerError::transient) }
///     });
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(consumer.run(shutdown.clone()));
/// bus.publish("orders", Envelope::from_event(&Shipped { order: 7 }, "shop")?).await?;
/// assert_eq!(seen.recv().await, Some(7));
/// shutdown.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
pub struct Consumer<S, C = JsonCodec> {
    subscriber: S,
    subscription: Subscription,
    codec: C,
    name: Option<String>,
    routes: HashMap<String, Arc<dyn Route<C>>>,
    concurrency: usize,
    max_attempts: u32,
    backoff: Backoff,
    retry_mode: RetryMode,
    unknown: UnknownEvent,
    max_payload: usize,
    reconnect: Backoff,
    inbox: Option<Arc<dyn Inbox>>,
}

impl<S, C> fmt::Debug for Consumer<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("subscription", &self.subscription)
            .field("name", &self.name)
            .field("event_types", &self.routes.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_mode", &self.retry_mode)
            .field("unknown", &self.unknown)
            .field("max_payload", &self.max_payload)
            .field("reconnect", &self.reconnect)
            .field("inbox", &self.inbox.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Subscriber> Consumer<S, JsonCodec> {
    /// A consumer of `subscription` decoding JSON payloads.
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .concurrency(8);
    /// assert!(format!("{consumer:?}").contains("topic: \"orders\""));
    /// ```
    pub fn new(subscriber: S, subscription: Subscription) -> Self {
        Self::with_codec(subscriber, subscription, JsonCodec)
    }
}

impl<S: Subscriber, C: Codec> Consumer<S, C> {
    /// A consumer of `subscription` decoding payloads with `codec`.
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{JsonCodec, MemoryBus, Subscription};
    ///
    /// // Any `Codec`: JSON is the default, shown explicitly here.
    /// let consumer = Consumer::with_codec(
    ///     MemoryBus::new(),
    ///     Subscription::new("orders", "billing"),
    ///     JsonCodec,
    /// );
    /// assert!(format!("{consumer:?}").contains("billing"));
    /// ```
    pub fn with_codec(subscriber: S, subscription: Subscription, codec: C) -> Self {
        Self {
            subscriber,
            subscription,
            codec,
            name: None,
            routes: HashMap::new(),
            concurrency: 64,
            max_attempts: 5,
            backoff: Backoff::default(),
            retry_mode: RetryMode::default(),
            unknown: UnknownEvent::default(),
            max_payload: 4 * 1024 * 1024,
            reconnect: Backoff::exponential(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter(palisade_resilience::backoff::Jitter::Full),
            inbox: None,
        }
    }

    /// Registers `handler` for events of type `E` (by [`Event::TYPE`]); a second
    /// handler for one type replaces the first.
    ///
    /// ```rust
    /// use palisade_events::consumer::{Consumer, Context, HandlerError};
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl palisade_events::Event for Placed { const TYPE: &'static str = "order.placed"; }
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .handle(|_: Placed, _: Context| async { Ok::<_, HandlerError>(()) });
    /// assert!(format!("{consumer:?}").contains("order.placed"));
    /// ```
    #[must_use]
    pub fn handle<E: Event, H: Handler<E>>(mut self, handler: H) -> Self {
        self.routes.insert(
            E::TYPE.to_owned(),
            Arc::new(TypedRoute::<E, H> {
                handler,
                _event: PhantomData,
            }),
        );
        self
    }

    /// The consumer's name, the inbox's first key (default: the subscription's group).
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .name("billing-v2");
    /// assert!(format!("{consumer:?}").contains("billing-v2"));
    /// ```
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many deliveries may be in hand at once, running or waiting behind an
    /// earlier event of their key (default 64; at least 1). Handlers of different keys
    /// run in parallel up to this bound.
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .concurrency(0); // raised to 1
    /// assert!(format!("{consumer:?}").contains("concurrency: 1"));
    /// ```
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How many attempts an event gets before it is dead-lettered (default 5,
    /// counting broker redeliveries; at least 1).
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .max_attempts(3);
    /// assert!(format!("{consumer:?}").contains("max_attempts: 3"));
    /// ```
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delays between attempts (default [`Backoff::default`]: exponential from
    /// 100 ms, capped at 10 s, full jitter).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .backoff(Backoff::constant(Duration::from_millis(250)));
    /// assert!(format!("{consumer:?}").contains("250ms"));
    /// ```
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Where retries wait (default [`RetryMode::InProcess`]).
    ///
    /// ```rust
    /// use palisade_events::consumer::RetryMode;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .retry_mode(RetryMode::Redeliver);
    /// assert!(format!("{consumer:?}").contains("Redeliver"));
    /// ```
    #[must_use]
    pub fn retry_mode(mut self, mode: RetryMode) -> Self {
        self.retry_mode = mode;
        self
    }

    /// What to do with event types nobody handles (default [`UnknownEvent::Ack`]).
    ///
    /// ```rust
    /// use palisade_events::consumer::UnknownEvent;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .unknown_events(UnknownEvent::DeadLetter);
    /// assert!(format!("{consumer:?}").contains("DeadLetter"));
    /// ```
    #[must_use]
    pub fn unknown_events(mut self, policy: UnknownEvent) -> Self {
        self.unknown = policy;
        self
    }

    /// The largest payload handed to a handler, in bytes (default 4 MiB); larger ones
    /// are dead-lettered with [`Error::PayloadTooLarge`] as the reason.
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .max_payload(64 * 1024);
    /// assert!(format!("{consumer:?}").contains("65536"));
    /// ```
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The delays between re-subscription attempts after the subscription failed
    /// (default exponential from 100 ms, capped at 5 s, full jitter).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .reconnect_backoff(Backoff::constant(Duration::from_secs(2)));
    /// assert!(format!("{consumer:?}").contains("2s"));
    /// ```
    #[must_use]
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Deduplicates through `inbox`, keyed by (name, event id): an event it reports as
    /// handled is acked without running the handler.
    ///
    /// ```rust
    /// use palisade_events::inbox::MemoryInbox;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// let consumer = Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .inbox(MemoryInbox::new());
    /// assert!(format!("{consumer:?}").contains("inbox: true"));
    /// ```
    #[must_use]
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Deduplicates through a shared inbox handle.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::inbox::{Inbox, MemoryInbox};
    /// use palisade_events::{MemoryBus, Subscription};
    ///
    /// // One inbox for two consumers of the same process.
    /// let inbox: Arc<dyn Inbox> = Arc::new(MemoryInbox::new());
    /// let bus = MemoryBus::new();
    /// let a = Consumer::new(bus.clone(), Subscription::new("orders", "billing"))
    ///     .shared_inbox(Arc::clone(&inbox));
    /// let b = Consumer::new(bus, Subscription::new("refunds", "billing")).shared_inbox(inbox);
    /// assert!(format!("{a:?}{b:?}").matches("inbox: true").count() == 2);
    /// ```
    #[must_use]
    pub fn shared_inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Consumes until `shutdown` is cancelled, then finishes and settles in-flight
    /// deliveries and returns `Ok(())`.
    ///
    /// Returns [`Error::Config`] at once for an invalid backoff, and
    /// [`Error::Closed`] (after draining) when the subscriber is closed for good.
    ///
    /// ```rust
    /// use palisade_events::consumer::Consumer;
    /// use palisade_events::{MemoryBus, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let shutdown = CancellationToken::new();
    /// shutdown.cancel(); // already cancelled: returns at once, having handled nothing
    /// Consumer::new(MemoryBus::new(), Subscription::new("orders", "billing"))
    ///     .run(shutdown)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.backoff
            .validate()
            .map_err(|e| Error::Config(format!("consumer backoff: {e}")))?;
        self.reconnect
            .validate()
            .map_err(|e| Error::Config(format!("consumer reconnect backoff: {e}")))?;
        let concurrency = self.concurrency;
        let permits_total = u32::try_from(concurrency)
            .map_err(|_| Error::Config(format!("concurrency {concurrency} is too large")))?;
        let shared = Arc::new(Shared {
            name: Name::of(
                self.name
                    .clone()
                    .unwrap_or_else(|| self.subscription.group.clone()),
            ),
            topic: self.subscription.topic.clone(),
            codec: self.codec,
            routes: {
                // Sorted for a binary search: cheaper than hashing the type per delivery.
                let mut routes: Vec<_> = self.routes.into_iter().collect();
                routes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                routes
            },
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_mode: self.retry_mode,
            unknown: self.unknown,
            max_payload: self.max_payload,
            inbox: self.inbox,
            keys: Mutex::new(HashMap::default()),
            chains: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
        });
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut slots: Vec<_> = shared
            .routes
            .iter()
            .map(|(_, route)| route.slot(shared.inbox.is_none()))
            .collect();
        let mut reconnect = Reconnect {
            backoff: self.reconnect,
            delays: None,
        };
        let mut current: Option<DeliveryStream>;
        let mut turn = 0_u32;
        let outcome = 'subscribe: loop {
            // An old stream goes before a new subscription is made.
            current = None;
            let stream = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                subscribed = self.subscriber.subscribe(&self.subscription) => subscribed,
            };
            let stream = match stream {
                Ok(stream) => current.insert(stream),
                Err(Error::Closed) => break Err(Error::Closed),
                Err(error) => {
                    tracing::warn!(topic = %shared.topic, consumer = %shared.name, error = %chain(&error), "subscribe failed; retrying");
                    if pause(&shutdown, reconnect.next_delay()).await {
                        continue;
                    }
                    break Ok(());
                }
            };
            loop {
                // Fast paths first: a free permit and a delivery already buffered are
                // taken without registering a wake-up. Shutdown is checked every 16th
                // turn here (the check takes a lock); the waits below also watch it, so
                // a consumer that is not busy stops at once.
                turn = turn.wrapping_add(1);
                if turn.is_multiple_of(16) && shutdown.is_cancelled() {
                    break 'subscribe Ok(());
                }
                // Only a delivery that has to wait (in a task, or behind its key) takes
                // a permit, so fetch only when one is free; and since this loop is the
                // only place permits are taken, one free now is free in `dispatch`.
                let permit = if permits.available_permits() == 0 {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break 'subscribe Ok(()),
                        permit = Arc::clone(&permits).acquire_owned() => match permit {
                            Ok(permit) => Some(permit),
                            Err(_) => break 'subscribe Ok(()),
                        },
                    }
                } else {
                    None
                };
                let item = match stream.next().now_or_never() {
                    Some(item) => item,
                    None => tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break 'subscribe Ok(()),
                        item = stream.next() => item,
                    },
                };
                match item {
                    Some(Ok(delivery)) => {
                        reconnect.delivered();
                        dispatch(&shared, &mut slots, delivery, permit, &permits);
                        // Handled inline, a stream that is always ready would never
                        // yield: give the worker back now and then (every 32nd delivery
                        // spends one unit of the task's budget, so this yields every few
                        // thousand; each yield may move the loop to another worker).
                        if turn.is_multiple_of(32) {
                            tokio::task::consume_budget().await;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(topic = %shared.topic, consumer = %shared.name, error = %chain(&error), "subscription failed; re-subscribing");
                        drop(permit);
                        if pause(&shutdown, reconnect.next_delay()).await {
                            continue 'subscribe;
                        }
                        break 'subscribe Ok(());
                    }
                    None => {
                        drop(permit);
                        tracing::debug!(topic = %shared.topic, consumer = %shared.name, "subscription ended; re-subscribing");
                        if pause(&shutdown, reconnect.next_delay()).await {
                            continue 'subscribe;
                        }
                        break 'subscribe Ok(());
                    }
                }
            }
        };
        // Every permit back means every delivery in hand has been settled.
        let _drained = permits.acquire_many(permits_total).await;
        drop(current);
        outcome
    }
}

/// The delays between attempts to subscribe again, from the reconnect backoff: they
/// start over after a delivery. The iterator is made at the first failure after one
/// (building it on every delivery showed in profiles).
struct Reconnect {
    backoff: Backoff,
    delays: Option<BackoffIter>,
}

impl Reconnect {
    /// The wait before the next attempt.
    fn next_delay(&mut self) -> Option<Duration> {
        let backoff = &self.backoff;
        self.delays.get_or_insert_with(|| backoff.iter()).next()
    }

    /// A delivery came: the next failure starts the delays over.
    fn delivered(&mut self) {
        self.delays = None;
    }
}

/// Sleeps `delay` unless shutdown comes first; returns whether to go on.
async fn pause(shutdown: &CancellationToken, delay: Option<Duration>) -> bool {
    let delay = delay.unwrap_or(Duration::from_secs(1));
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

struct Shared<C> {
    name: Name,
    topic: String,
    codec: C,
    /// Sorted by event type.
    routes: Vec<(String, Arc<dyn Route<C>>)>,
    max_attempts: u32,
    backoff: Backoff,
    retry_mode: RetryMode,
    unknown: UnknownEvent,
    max_payload: usize,
    inbox: Option<Arc<dyn Inbox>>,
    /// Keys with a running chain, and the deliveries waiting behind it.
    keys: Mutex<Waiting>,
    /// How many keys have a running chain (`keys`' length, changed under its lock):
    /// while there are none, a keyed delivery need not look (no lock, no hashing).
    /// Only `dispatch` starts chains, so a zero it reads cannot turn stale before it
    /// has placed the delivery; a chain ends with a release store, so a zero read with
    /// acquire also orders the last handling of a key before the next.
    chains: AtomicUsize,
    shutdown: CancellationToken,
}

/// Per key with a running chain, the deliveries waiting behind it and their permits.
/// Hashed with a seeded fast hasher, as the in-memory bus's maps are.
type Waiting = HashMap<
    String,
    VecDeque<(Delivery, Option<OwnedSemaphorePermit>)>,
    foldhash::fast::RandomState,
>;

impl<C> Shared<C> {
    fn keys(&self) -> MutexGuard<'_, Waiting> {
        crate::lock::lock(&self.keys)
    }
}

/// Runs one delivery: inline when its handling completes without waiting (a handler
/// that does no I/O, a duplicate the inbox absorbs), otherwise as a task of its own, so
/// a burst of quick events costs no task spawn and no cross-thread wake-up each while
/// handlers that wait run in parallel. A keyed delivery whose key is still being
/// handled queues behind it.
fn dispatch<C: Codec>(
    shared: &Arc<Shared<C>>,
    slots: &mut [Box<dyn Slot<C>>],
    delivery: Delivery,
    permit: Option<OwnedSemaphorePermit>,
    permits: &Arc<Semaphore>,
) {
    // The run loop fetched this delivery with a permit free, and it is the only place
    // permits are taken, so `try_acquire` cannot fail here.
    let permit = move || permit.or_else(|| Arc::clone(permits).try_acquire_owned().ok());
    // The key, read through a handle on the envelope (two reference count updates)
    // rather than copied out of it (an allocation per keyed delivery).
    let keyed = delivery.message().ok().filter(|e| e.key.is_some()).cloned();
    let key = keyed.as_deref().and_then(|e| e.key.as_deref());
    if let Some(key) = key
        && shared.chains.load(Ordering::Acquire) > 0
    {
        let mut keys = shared.keys();
        if let Some(waiting) = keys.get_mut(key) {
            waiting.push_back((delivery, permit()));
            return;
        }
    }
    let Some(work) = start(shared, slots, delivery) else {
        return;
    };
    let permit = permit();
    let Some(key) = key else {
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
        return;
    };
    let key = key.to_owned();
    {
        let mut keys = shared.keys();
        keys.insert(key.clone(), VecDeque::new());
        shared.chains.store(keys.len(), Ordering::Release);
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let (mut work, mut permit) = (work, permit);
        loop {
            work.await;
            drop(permit);
            let mut keys = shared.keys();
            let Some((delivery, next_permit)) = keys.get_mut(&key).and_then(VecDeque::pop_front)
            else {
                keys.remove(&key);
                shared.chains.store(keys.len(), Ordering::Release);
                return;
            };
            drop(keys);
            work = process(&shared, delivery);
            permit = next_permit;
        }
    });
}

/// The error and its sources, `: `-separated: what a dead letter's reason says.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Why one attempt failed. Boxed wherever it travels: an attempt's result is then one
/// word (null when it succeeded), which the per-delivery future stores and reads back
/// as a whole. As a 32-byte `Result`, its tag and tail were copied in overlapping,
/// misaligned pieces at each `.await`, which stalled store-to-load forwarding on the
/// hot path (`perf annotate`: half of the future's own time on an AMD EPYC).
struct Failure {
    permanent: bool,
    reason: String,
}

impl Failure {
    fn new(permanent: bool, reason: String) -> Box<Self> {
        Box::new(Self { permanent, reason })
    }

    fn transient(reason: String) -> Box<Self> {
        Self::new(false, reason)
    }

    fn permanent(reason: String) -> Box<Self> {
        Self::new(true, reason)
    }
}

/// Records how settling a delivery went (a warning when it failed). Synchronous: the
/// settle itself is awaited by the caller, and a state machine per delivery for this
/// showed in profiles.
fn settle(consumer: &str, what: &'static str, result: Result<(), Error>) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "palisade_events_settled_total",
        "consumer" => consumer.to_string(),
        "outcome" => what,
        "ok" => if result.is_ok() { "true" } else { "false" },
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = consumer;
    if let Err(error) = result {
        // The broker redelivers what we failed to settle; the inbox absorbs the duplicate.
        tracing::warn!(error = %chain(&error), "failed to {what} a delivery");
    }
}

/// Handles and settles `delivery` in place: `None` when that completed it, otherwise
/// the work, still running. Without spans, a delivery a handler takes runs in its
/// route's slot; anything else (in its span, if spans are recorded) is boxed by
/// `process`, which makes the span once.
fn start<C: Codec>(
    shared: &Arc<Shared<C>>,
    slots: &mut [Box<dyn Slot<C>>],
    delivery: Delivery,
) -> Option<BoxFuture<'static, ()>> {
    if !spans_recorded()
        && let Ok(envelope) = delivery.envelope()
        && let Some(at) = route_at(shared, envelope)
        && let Some(slot) = slots.get_mut(at)
    {
        return slot.start(shared, at, delivery);
    }
    now_or_later(process(shared, delivery))
}

/// Where `envelope`'s route is in `shared.routes`, if a handler takes it.
fn route_at<C>(shared: &Shared<C>, envelope: &Envelope) -> Option<usize> {
    if envelope.payload.len() > shared.max_payload {
        return None;
    }
    shared
        .routes
        .binary_search_by(|(event_type, _)| event_type.as_str().cmp(&*envelope.event_type))
        .ok()
}

/// Handles and settles one delivery, boxed (once) so that it can be polled once in
/// place and moved into a task if it has to wait.
fn process<C: Codec>(shared: &Arc<Shared<C>>, delivery: Delivery) -> BoxFuture<'static, ()> {
    let envelope = match delivery.envelope() {
        Ok(envelope) => envelope,
        Err(error) => {
            let reason = chain(error);
            let shared = Arc::clone(shared);
            return Box::pin(async move {
                tracing::warn!(topic = %shared.topic, consumer = %shared.name, %reason, "malformed message; dead-lettering");
                settle(
                    &shared.name,
                    "dead-letter",
                    delivery.dead_letter(reason).await,
                );
            });
        }
    };
    if let Some(at) = route_at(shared, envelope)
        && let Some((_, route)) = shared.routes.get(at)
    {
        let span = event_span(shared, envelope);
        return route.run(Arc::clone(shared), at, delivery, span);
    }
    let span = event_span(shared, envelope);
    let shared = Arc::clone(shared);
    traced(span, async move { refuse(&shared, delivery).await })
}

/// Whether a subscriber takes `info`, so that deliveries get spans. Without one, no
/// span at all: a disabled span still costs its callsite check and, with tracing's
/// `log` feature on (sqlx turns it on), a pass over its fields for `log`, per delivery.
fn spans_recorded() -> bool {
    tracing::level_enabled!(tracing::Level::INFO)
}

/// The span a delivery is handled in, if spans are recorded at all.
fn event_span<C>(shared: &Shared<C>, envelope: &Envelope) -> Option<tracing::Span> {
    if !spans_recorded() {
        return None;
    }
    let span = tracing::info_span!(
        "event",
        event.id = %envelope.id,
        event.r#type = %envelope.event_type,
        topic = %shared.topic,
        consumer = %shared.name,
    );
    (!span.is_disabled()).then_some(span)
}

/// Boxes `work`, to run in `span` when spans are recorded at all (the span stays out
/// of the future otherwise, keeping it small).
fn traced(
    span: Option<tracing::Span>,
    work: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, ()> {
    match span {
        Some(span) => Box::pin(work.instrument(span)),
        None => Box::pin(work),
    }
}

/// Settles a delivery no handler takes: its payload is over `max_payload`, or no
/// handler is registered for its type.
async fn refuse<C>(shared: &Shared<C>, delivery: Delivery) {
    let size = delivery.envelope().map_or(0, |e| e.payload.len());
    if size > shared.max_payload {
        let error = Error::PayloadTooLarge {
            size,
            limit: shared.max_payload,
        };
        tracing::warn!(error = %error, "dead-lettering");
        settle(
            &shared.name,
            "dead-letter",
            delivery.dead_letter(error.to_string()).await,
        );
        return;
    }
    match shared.unknown {
        UnknownEvent::Ack => {
            tracing::warn!("no handler for this event type; acking");
            settle(&shared.name, "ack", delivery.ack().await);
        }
        UnknownEvent::DeadLetter => {
            let event_type = delivery.envelope().map_or("", |e| &e.event_type);
            let reason = format!("no handler for event type {event_type:?}");
            settle(
                &shared.name,
                "dead-letter",
                delivery.dead_letter(reason).await,
            );
        }
    }
}

/// Handles one delivery with `handler`, retrying as configured, and settles it.
///
/// The first attempt and the ack are all most deliveries need; what follows a failure
/// lives in a future of its own, boxed only then, so that the future every delivery
/// pays for stays small.
async fn handle<C: Codec, E: Event, H: Handler<E>>(
    shared: &Shared<C>,
    handler: &H,
    delivery: Delivery,
) {
    let attempt = delivery.attempt();
    match attempt_delivery(shared, handler, delivery.message(), attempt).await {
        Ok(()) => settle(&shared.name, "ack", delivery.ack().await),
        Err(failure) => {
            Box::pin(recover(shared, handler, delivery, attempt, failure)).await;
        }
    }
}

/// After `attempt` failed with `failure`: retries (in process or by redelivery) until
/// an attempt succeeds, then acks; or dead-letters.
async fn recover<C: Codec, E: Event, H: Handler<E>>(
    shared: &Shared<C>,
    handler: &H,
    delivery: Delivery,
    mut attempt: u32,
    mut failure: Box<Failure>,
) {
    // Built at the first in-process retry.
    let mut delays = None;
    loop {
        if failure.permanent {
            tracing::warn!(reason = %failure.reason, attempt, "permanent failure; dead-lettering");
            settle(
                &shared.name,
                "dead-letter",
                delivery.dead_letter(failure.reason).await,
            );
            return;
        }
        if attempt >= shared.max_attempts {
            let reason = format!("gave up after {attempt} attempts: {}", failure.reason);
            tracing::warn!(%reason, "dead-lettering");
            settle(
                &shared.name,
                "dead-letter",
                delivery.dead_letter(reason).await,
            );
            return;
        }
        tracing::debug!(reason = %failure.reason, attempt, "attempt failed; retrying");
        match shared.retry_mode {
            RetryMode::Redeliver => {
                let delay = shared
                    .backoff
                    .iter()
                    .nth(attempt.saturating_sub(1) as usize)
                    .unwrap_or_default();
                settle(&shared.name, "retry", delivery.retry(delay).await);
                return;
            }
            RetryMode::InProcess => {
                let delay = delays
                    .get_or_insert_with(|| shared.backoff.iter())
                    .next()
                    .unwrap_or_default();
                if !pause(&shared.shutdown, Some(delay)).await {
                    // Shutting down: hand it back rather than wait.
                    settle(&shared.name, "retry", delivery.retry(Duration::ZERO).await);
                    return;
                }
                attempt = attempt.saturating_add(1);
            }
        }
        failure = match attempt_delivery(shared, handler, delivery.message(), attempt).await {
            Ok(()) => {
                settle(&shared.name, "ack", delivery.ack().await);
                return;
            }
            Err(failure) => failure,
        };
    }
}

/// One attempt at a delivery's `message`, borrowed from the delivery until it is
/// settled (a message that is no envelope fails for good).
async fn attempt_delivery<C: Codec, E: Event, H: Handler<E>>(
    shared: &Shared<C>,
    handler: &H,
    message: Result<&Arc<Envelope>, &Error>,
    attempt: u32,
) -> Result<(), Box<Failure>> {
    match message {
        Ok(envelope) => attempt_once(shared, handler, envelope, attempt).await,
        Err(error) => Err(Failure::permanent(chain(error))),
    }
}

async fn attempt_once<C: Codec, E: Event, H: Handler<E>>(
    shared: &Shared<C>,
    handler: &H,
    envelope: &Arc<Envelope>,
    attempt: u32,
) -> Result<(), Box<Failure>> {
    let event: E = envelope
        .decode_with(&shared.codec)
        .map_err(|e| Failure::permanent(chain(&e)))?;
    let ctx = Context {
        envelope: Arc::clone(envelope),
        attempt,
        consumer: shared.name.clone(),
    };
    let call = handler.handle(event, ctx);
    if let Some(inbox) = &shared.inbox {
        match inbox.claim(&shared.name, envelope.id).await {
            Ok(Claim::Acquired) => {}
            Ok(Claim::Processed) => {
                tracing::debug!("already handled (inbox); acking the duplicate");
                return Ok(());
            }
            Ok(Claim::InProgress) => {
                return Err(Failure::transient(
                    "being handled by another consumer instance".to_owned(),
                ));
            }
            Err(error) => return Err(Failure::transient(chain(&error))),
        }
    }
    // Mapped inside the poll, so what the future stores is the one-word outcome.
    let result = AssertUnwindSafe(call).catch_unwind().map(outcome).await;
    if let Some(inbox) = &shared.inbox {
        let recorded = match &result {
            Ok(()) => inbox.complete(&shared.name, envelope.id).await,
            Err(_) => inbox.release(&shared.name, envelope.id).await,
        };
        if let Err(error) = recorded {
            tracing::warn!(error = %chain(&error), "inbox update failed");
        }
    }
    result
}

/// What a handler call came to: its error or its panic as a [`Failure`].
fn outcome(
    called: Result<Result<(), HandlerError>, Box<dyn std::any::Any + Send>>,
) -> Result<(), Box<Failure>> {
    match called {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure::new(error.is_permanent(), error.to_string())),
        Err(panic) => Err(Failure::transient(format!(
            "handler panicked: {}",
            panic_message(&*panic)
        ))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_carries_the_consumer_name_kept_or_shared() {
        let kept = Name::of("billing".to_owned());
        assert!(matches!(kept, Name::Kept("billing")));
        assert_eq!(&*kept, "billing");
        assert_eq!(kept.to_string(), "billing");
        // Too long to keep: shared, the same text.
        let long = "b".repeat(200);
        let shared = Name::of(long.clone());
        assert!(matches!(&shared, Name::Shared(name) if **name == *long));
        assert_eq!(&*shared, long);
        assert_eq!(shared.to_string(), long);
    }
}
