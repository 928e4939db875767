use tower_layer::Layer;

use super::{Bulkhead, BulkheadService};

/// Applies a [`Bulkhead`] to a service. Every service built from this layer (and every
/// other layer built from a clone of the same handle) shares the bulkhead's permits.
///
/// ```rust
/// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
///
/// let pool = Bulkhead::builder("inventory").max_concurrent(8).build()?;
/// let layer = BulkheadLayer::new(pool.clone());
/// # let _ = layer;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer drawing permits from `bulkhead`.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
    /// use tower::{Layer, service_fn};
    ///
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(8).build()?;
    /// // Two services behind one bulkhead: 8 calls in flight between them.
    /// let layer = BulkheadLayer::new(bulkhead);
    /// let _a = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// let _b = layer.layer(service_fn(|_: u32| async { Ok::<_, std::io::Error>(()) }));
    /// assert_eq!(layer.bulkhead().available(), 8);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }

    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
    /// use tower::{Layer, service_fn};
    ///
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(8).build()?;
    /// let layer = BulkheadLayer::new(bulkhead);
    /// assert_eq!(layer.bulkhead().name(), "reports");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(inner, self.bulkhead.clone())
    }
}
