//! Typed events.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed event with a stable type name and an optional ordering key.
///
/// The type name is what routes a delivery to its handler, so it must not change when
/// the Rust type is renamed; version it in the name (`order.placed.v2`) when the shape
/// changes incompatibly.
///
/// ```
/// use palisade_events::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct PaymentCaptured { payment_id: String, cents: u64 }
///
/// impl Event for PaymentCaptured {
///     const TYPE: &'static str = "payment.captured";
///     fn key(&self) -> Option<String> { Some(self.payment_id.clone()) }
/// }
/// assert_eq!(PaymentCaptured::TYPE, "payment.captured");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name carried in [`Envelope::event_type`](crate::Envelope::event_type).
    const TYPE: &'static str;

    /// The ordering key: events with the same key are delivered in order.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Event};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct StockChanged { sku: String, delta: i32 }
    /// impl Event for StockChanged {
    ///     const TYPE: &'static str = "stock.changed";
    ///     // One SKU's changes are applied in order; different SKUs in parallel.
    ///     fn key(&self) -> Option<String> { Some(self.sku.clone()) }
    /// }
    /// let event = StockChanged { sku: "A-1".into(), delta: -2 };
    /// assert_eq!(Envelope::from_event(&event, "inventory")?.key.as_deref(), Some("A-1"));
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    fn key(&self) -> Option<String> {
        None
    }
}
