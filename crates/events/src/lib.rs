//! # palisade-events
//!
//! A broker-agnostic event bus for tokio services: one [`Envelope`], typed [`Event`]s,
//! a [`Publisher`] that returns only once the broker confirmed, a [`Subscriber`] whose
//! [`Delivery`]s are acked, retried or dead-lettered, a [`Consumer`] runtime that
//! routes event types to handlers, and inboxes that make a handler's effect happen
//! once under at-least-once delivery.
//!
//! | module | what it holds |
//! |---|---|
//! | [`envelope`], [`event`], [`codec`] | the wire envelope (CloudEvents attribute names), typed events, pluggable codecs (JSON by default) |
//! | [`publisher`], [`subscriber`] | the backend contract: confirmed publishes, deliveries settled exactly once |
//! | [`consumer`] | the runtime: typed handlers, bounded concurrency, order per key, retries with backoff, dead letters, graceful shutdown, re-subscription |
//! | [`inbox`] | idempotent consumers: SQL inbox in the handler's own transaction, Redis and in-memory inboxes |
//! | [`backend`] | [`MemoryBus`] (no feature), RabbitMQ, Kafka, Redis Streams, NATS JetStream (features) |
//! | [`conformance`] | the suite every backend passes, with per-backend capability flags |
//!
//! ## Guarantees
//!
//! - **At-least-once.** A publish that returned `Ok` is stored by the broker; a
//!   delivery that is not acked (dropped, consumer died, shutdown) is delivered again.
//! - **Exactly-once effect with an inbox.** The [`inbox::SqlInbox`] row commits or rolls
//!   back with the handler's writes; concurrent duplicates on two instances produce one
//!   effect (tested on PostgreSQL with racing transactions).
//! - **Order per key** within a consumer group, when the consumer settles in order — which
//!   the [`Consumer`] does: same-key events run one after the other, in-process retries
//!   hold the key.
//! - **Nothing is dropped silently.** Poison messages (undecodable, wrong content type,
//!   oversized, not an envelope, failing after `max_attempts`) go to the dead-letter
//!   destination with the reason in the `palisade-dead-letter-reason` header.
//!
//! ## Example
//!
//! ```rust
//! use palisade_events::consumer::{Consumer, Context, HandlerError};
//! use palisade_events::inbox::MemoryInbox;
//! use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct PaymentCaptured { order_id: u64, cents: u64 }
//!
//! impl Event for PaymentCaptured {
//!     const TYPE: &'static str = "payment.captured";
//!     fn key(&self) -> Option<String> { Some(self.order_id.to_string()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let bus = MemoryBus::new();
//! let (tx, mut shipped) = tokio::sync::mpsc::unbounded_channel();
//! let consumer = Consumer::new(bus.clone(), Subscription::new("payments", "shipping"))
//!     .inbox(MemoryInbox::new())
//!     .handle(move |event: PaymentCaptured, _ctx: Context| {
//!         let tx = tx.clone();
//!         async move {
//!             tx.send(event.order_id)?;
//!             Ok::<_, HandlerError>(())
//!         }
//!     });
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(consumer.run(shutdown.clone()));
//!
//! let event = Envelope::from_event(&PaymentCaptured { order_id: 7, cents: 1200 }, "payments")?;
//! bus.publish("payments", event.clone()).await?;
//! bus.publish("payments", event).await?; // a duplicate: handled once
//! assert_eq!(shipped.recv().await, Some(7));
//!
//! shutdown.cancel();
//! running.await??;
//! assert!(shipped.try_recv().is_err());
//! # Ok(())
//! # }
//! ```
//!
//! ## Where this departs from the design notes
//!
//! - Dead letters carry the *last error* in one header, `palisade-dead-letter-reason`
//!   (`gave up after N attempts: <error chain>`), because [`Delivery::dead_letter`]
//!   takes one reason that every broker can carry.
//! - Two kinds of inbox instead of one trait: the SQL inbox is called by the handler
//!   inside its own transaction (the only way to commit atomically with the handler's
//!   writes), while the Redis and memory inboxes are claim/complete leases the runtime
//!   applies around the handler ([`Consumer::inbox`]).
//! - With [`consumer::RetryMode::Redeliver`] order per key does not survive a retry (later
//!   events of the key proceed); the default [`consumer::RetryMode::InProcess`] keeps it.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod codec;
pub mod conformance;
pub mod consumer;
pub mod envelope;
pub mod error;
pub mod event;
pub mod inbox;
mod lock;
pub mod publisher;
pub mod subscriber;

pub use backend::memory::MemoryBus;
pub use codec::{Codec, JsonCodec};
pub use consumer::{Consumer, Context, Handler, HandlerError};
pub use envelope::Envelope;
pub use error::{BoxError, Error};
pub use event::Event;
pub use publisher::{BoxFuture, DynPublisher, Publisher};
pub use subscriber::{Acknowledge, Delivery, DeliveryStream, Subscriber, Subscription};
