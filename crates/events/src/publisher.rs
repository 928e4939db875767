//! Publishing events and waiting for the broker's confirmation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::error::Error;

/// A boxed, sendable future, as returned by the object-safe [`DynPublisher`].
///
/// ```rust
/// use palisade_events::publisher::BoxFuture;
///
/// // What the object-safe traits (`Acknowledge`, `Inbox`) return.
/// fn ready_ack() -> BoxFuture<'static, Result<(), palisade_events::Error>> {
///     Box::pin(async { Ok(()) })
/// }
/// # let _ = ready_ack();
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes envelopes to a topic and returns only once the broker confirmed them.
///
/// "Confirmed" means what the broker can promise: RabbitMQ publisher confirms, Kafka
/// `acks=all`, the `XADD` reply, the JetStream `PubAck`, or for the in-memory bus the
/// event being queued. A publish that cannot be confirmed is an [`Error`]: never a
/// silent loss. An error does not prove the event was *not* stored (a confirm can be
/// lost on the way back), so retrying a failed publish gives at-least-once delivery.
///
/// # Cancellation
///
/// Dropping a publish future before it resolves leaves the event's fate unknown, like
/// an error: publish it again to be sure.
///
/// The trait uses `impl Future` returns; wrap a publisher in [`DynPublisher`]
/// (`Arc<dyn DynPublisher>`) to choose a backend at run time.
///
/// ```rust
/// use palisade_events::{Envelope, MemoryBus, Publisher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_events::Error> {
/// let bus = MemoryBus::new();
/// // Returns once the broker confirmed: an error here means "not published".
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
/// let batch = (0..3).map(|n| Envelope::new("order.placed", "shop", n.to_string())).collect();
/// bus.publish_batch("orders", batch).await?;
/// # Ok(()) }
/// ```
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one envelope and waits for the broker's confirmation.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, MemoryBus, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let bus = MemoryBus::new();
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// bus.close();
    /// // Not confirmed: an error the caller sees, never a silent loss.
    /// assert!(matches!(bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await, Err(Error::Closed)));
    /// # Ok(()) }
    /// ```
    fn publish(
        &self,
        topic: &str,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Publishes envelopes in order and waits until all are confirmed.
    ///
    /// Backends override this to pipeline the batch; the default publishes one at a
    /// time. On error, a prefix of the batch may have been confirmed: retry the whole
    /// batch (consumers deduplicate by event id).
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, MemoryBus, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let bus = MemoryBus::new();
    /// let batch = (1..=3).map(|n| Envelope::new("order.placed", "shop", n.to_string())).collect();
    /// bus.publish_batch("orders", batch).await?; // in order, all confirmed
    /// bus.close();
    /// assert!(bus.publish_batch("orders", Vec::new()).await.is_err());
    /// # Ok(()) }
    /// ```
    fn publish_batch(
        &self,
        topic: &str,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            for envelope in envelopes {
                self.publish(topic, envelope).await?;
            }
            Ok(())
        }
    }
}

/// The object-safe form of [`Publisher`], implemented for every publisher.
///
/// ```
/// use std::sync::Arc;
/// use palisade_events::{DynPublisher, Envelope, Error, Publisher};
///
/// /// A publisher that confirms everything, for the example.
/// struct Confirming;
///
/// impl Publisher for Confirming {
///     async fn publish(&self, _topic: &str, _envelope: Envelope) -> Result<(), Error> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let publisher: Arc<dyn DynPublisher> = Arc::new(Confirming);
/// publisher.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
/// # Ok(())
/// # }
/// ```
pub trait DynPublisher: Send + Sync + 'static {
    /// [`Publisher::publish`], boxed.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, MemoryBus, DynPublisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let bus = MemoryBus::new();
    /// // The backend chosen at run time (memory in tests, a broker in production).
    /// let publisher: std::sync::Arc<dyn DynPublisher> = std::sync::Arc::new(bus.clone());
    /// publisher.publish_dyn("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// bus.close();
    /// assert!(matches!(publisher.publish_dyn("orders", Envelope::new("order.placed", "shop", "{}")).await, Err(Error::Closed)));
    /// # Ok(()) }
    /// ```
    fn publish_dyn<'a>(
        &'a self,
        topic: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// [`Publisher::publish_batch`], boxed.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, MemoryBus, DynPublisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let bus = MemoryBus::new();
    /// let publisher: std::sync::Arc<dyn DynPublisher> = std::sync::Arc::new(bus.clone());
    /// let batch = vec![Envelope::new("order.placed", "shop", "1"), Envelope::new("order.placed", "shop", "2")];
    /// publisher.publish_batch_dyn("orders", batch).await?;
    /// assert_eq!(bus.pending("orders", "billing"), 2); // kept for the first group
    /// # Ok(()) }
    /// ```
    fn publish_batch_dyn<'a>(
        &'a self,
        topic: &'a str,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(
        &'a self,
        topic: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.publish(topic, envelope))
    }

    fn publish_batch_dyn<'a>(
        &'a self,
        topic: &'a str,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.publish_batch(topic, envelopes))
    }
}

impl Publisher for Arc<dyn DynPublisher> {
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        self.as_ref().publish_dyn(topic, envelope).await
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        self.as_ref().publish_batch_dyn(topic, envelopes).await
    }
}
