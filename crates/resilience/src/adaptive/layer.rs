//! The adaptive limit layer, its shared state and its handle.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tower_layer::Layer;

use super::AdaptiveConcurrency;
use super::algorithm::{LimitAlgorithm, Sample};
use crate::circuit_breaker::AllErrorsAreFailures;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    limit: AtomicU32,
    in_flight: AtomicU32,
    rejected: AtomicU64,
    algorithm: Mutex<Box<dyn LimitAlgorithm>>,
}

impl Shared {
    /// Takes a slot if one is free; returns the in-flight count including it.
    pub(crate) fn try_acquire(&self) -> Option<u32> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "palisade_resilience::adaptive",
                    name = %self.name,
                    limit,
                    "adaptive limit reached, call rejected"
                );
                #[cfg(feature = "metrics")]
                metrics::counter!("palisade_adaptive_rejections_total", "name" => self.name.to_string())
                    .increment(1);
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(current + 1),
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn sample(&self, sample: Sample) {
        // Samples arriving while another is applied are skipped rather than queued.
        if let Ok(mut algorithm) = self.algorithm.try_lock() {
            let before = self.limit.load(Ordering::Relaxed);
            let after = algorithm.update(before, sample).max(1);
            if after != before {
                self.limit.store(after, Ordering::Relaxed);
                tracing::debug!(
                    target: "palisade_resilience::adaptive",
                    name = %self.name,
                    from = before,
                    to = after,
                    "concurrency limit changed"
                );
                #[cfg(feature = "metrics")]
                metrics::gauge!("palisade_adaptive_limit", "name" => self.name.to_string())
                    .set(f64::from(after));
            }
        }
    }
}

/// The handle on an adaptive limit: read the current limit, the calls in flight and the
/// rejections. Shared by every clone of the layer and its services.
///
/// ```rust
/// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
///
/// let layer = AdaptiveConcurrencyLayer::new("search", Aimd::new(10, 1, 100)?);
/// let handle = layer.handle();
/// assert_eq!((handle.limit(), handle.in_flight(), handle.rejected()), (10, 0, 0));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct AdaptiveHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for AdaptiveHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveHandle")
            .field("name", &self.shared.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl AdaptiveHandle {
    /// The limiter's name.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// assert_eq!(layer.handle().name(), "db");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current concurrency limit.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// assert_eq!(layer.handle().limit(), 8); // a call far below the limit does not grow it
    /// # Ok(()) }
    /// ```
    pub fn limit(&self) -> u32 {
        self.shared.limit()
    }

    /// Calls in flight now.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// assert_eq!(layer.handle().in_flight(), 0); // the call completed
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight()
    }

    /// Calls rejected since the limiter was built.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// assert_eq!(layer.handle().rejected(), 0);
    /// # Ok(()) }
    /// ```
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

/// Applies an adaptive concurrency limit; see the [module docs](super).
///
/// ```rust
/// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Gradient};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let limit = AdaptiveConcurrencyLayer::new("db", Gradient::new(20, 2, 500)?);
/// let svc = ServiceBuilder::new()
///     .layer(limit.clone())
///     .service(service_fn(|q: u32| async move { Ok::<_, std::io::Error>(q) }));
/// assert_eq!(svc.oneshot(3).await?, 3);
/// assert_eq!(limit.handle().in_flight(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveConcurrencyLayer<C = AllErrorsAreFailures> {
    handle: AdaptiveHandle,
    classifier: C,
}

impl AdaptiveConcurrencyLayer {
    /// A limiter called `name` driven by `algorithm` (an [`Aimd`](super::Aimd), a
    /// [`Gradient`](super::Gradient) or your own). Errors count as overload signals.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// assert_eq!(layer.handle().limit(), 8); // the algorithm's initial limit
    /// # Ok(()) }
    /// ```
    pub fn new(name: impl Into<Arc<str>>, algorithm: impl LimitAlgorithm) -> Self {
        let limit = algorithm.initial_limit().max(1);
        Self {
            handle: AdaptiveHandle {
                shared: Arc::new(Shared {
                    name: name.into(),
                    limit: AtomicU32::new(limit),
                    in_flight: AtomicU32::new(0),
                    rejected: AtomicU64::new(0),
                    algorithm: Mutex::new(Box::new(algorithm)),
                }),
            },
            classifier: AllErrorsAreFailures,
        }
    }
}

impl<C> AdaptiveConcurrencyLayer<C> {
    /// Decides which results are overload signals:
    /// [`Outcome::Failure`](crate::circuit_breaker::Outcome)
    /// is one, `Success` is a latency sample, `Ignored` is neither (a 404).
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use palisade_resilience::circuit_breaker::Outcome;
    ///
    /// // A 404 says nothing about load; a 503 does.
    /// let layer = AdaptiveConcurrencyLayer::new("api", Aimd::new(8, 1, 64)?).classify(
    ///     |r: &Result<u16, std::io::Error>| match r {
    ///         Ok(404) => Outcome::Ignored,
    ///         Ok(503) | Err(_) => Outcome::Failure,
    ///         Ok(_) => Outcome::Success,
    ///     },
    /// );
    /// assert_eq!(layer.handle().limit(), 8);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn classify<C2>(self, classifier: C2) -> AdaptiveConcurrencyLayer<C2> {
        AdaptiveConcurrencyLayer {
            handle: self.handle,
            classifier,
        }
    }

    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.oneshot(1).await?;
    /// let handle = layer.handle().clone(); // e.g. for a load-shedding Capacity
    /// assert_eq!(handle.limit(), 8);
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &AdaptiveHandle {
        &self.handle
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveConcurrencyLayer<C> {
    type Service = AdaptiveConcurrency<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrency::new(inner, self.handle.clone(), self.classifier.clone())
    }
}
