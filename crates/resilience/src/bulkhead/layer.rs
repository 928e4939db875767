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
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }

    /// The shared handle.
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
