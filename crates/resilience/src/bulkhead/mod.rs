//! Bulkhead: cap the calls in flight to one dependency, so its slowness cannot sink the
//! whole service.
//!
//! # What it protects against
//!
//! A ship's bulkheads keep one flooded compartment from sinking the ship. When a
//! dependency slows down, calls to it pile up and hold tasks, connections and memory
//! until nothing is left for the calls that would succeed. A bulkhead gives each
//! dependency (or each class of work: critical vs non-critical) its own fixed pool of
//! permits; when the pool is empty further calls fail fast with a typed
//! [`BulkheadFull`] instead of queueing without bound.
//!
//! # When not to use it
//!
//! - To smooth a steady rate: that is a [`rate_limit`](crate::rate_limit).
//! - When the right limit is unknown and moves with the dependency's latency: an
//!   adaptive concurrency limit finds it for you.
//! - With a long `max_wait`: a queue in front of a saturated dependency only adds
//!   latency. Zero (the default) fails fast; a few milliseconds absorbs bursts.
//!
//! # Composition
//!
//! Put the bulkhead outside the per-attempt [`timeout`](crate::timeout), so a hung call
//! gives its permit back when the timeout fires, and inside retry and circuit breaker.
//! Share one [`Bulkhead`] handle between services that must share a pool; give separate
//! handles to pools that must not starve each other.
//!
//! # Guarantees
//!
//! - Never more than `max_concurrent` calls hold permits, across all clones and all
//!   services sharing the handle.
//! - `poll_ready` reserves the permit, so backpressure reaches the caller (a
//!   `tower::buffer::Buffer` in front stops pulling requests) instead of hiding in a queue.
//! - Cancellation returns permits: dropping a waiting service, a ready service that holds
//!   a permit, or a response future in flight gives the permit back.
//! - The unsaturated path takes no lock: one compare-and-swap to take a permit, one
//!   atomic decrement to give it back. Waiters (only with `max_wait > 0`) park on a
//!   `tokio::sync::Notify`; waiting is not FIFO.
//!
//! # Example
//!
//! ```rust
//! use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let pool = Bulkhead::builder("search").max_concurrent(1).build()?;
//! let backend = service_fn(|q: &'static str| async move { Ok::<_, std::io::Error>(q.len()) });
//! let mut a = BulkheadLayer::new(pool.clone()).layer(backend);
//! let mut b = a.clone();
//!
//! // `a` reserves the only permit...
//! a.ready().await?;
//! // ...so `b` is rejected at once, by type.
//! let err = b.ready().await?.call("rust").await.unwrap_err();
//! assert!(err.is::<BulkheadFull>());
//! assert_eq!(a.call("tower").await?, 5);
//! assert_eq!(pool.available(), 1);
//! # Ok(())
//! # }
//! ```

mod future;
mod handle;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use handle::{Bulkhead, BulkheadBuilder, Permit};
pub use layer::BulkheadLayer;
pub use service::BulkheadService;

use std::sync::Arc;

/// The bulkhead had no permit for this call within its `max_wait`.
///
/// ```rust
/// use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let pool = Bulkhead::builder("reports").max_concurrent(1).build()?;
/// let backend = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
/// let mut holder = BulkheadLayer::new(pool.clone()).layer(backend);
/// holder.ready().await?; // takes the only permit
/// let err = BulkheadLayer::new(pool).layer(backend).oneshot(()).await.unwrap_err();
/// let full = err.downcast_ref::<BulkheadFull>().expect("bulkhead full");
/// assert_eq!((full.name(), full.max_concurrent()), ("reports", 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead `{name}` is full ({max_concurrent} calls in flight)")]
pub struct BulkheadFull {
    name: Arc<str>,
    max_concurrent: usize,
}

impl BulkheadFull {
    pub(crate) fn new(name: Arc<str>, max_concurrent: usize) -> Self {
        Self {
            name,
            max_concurrent,
        }
    }

    /// The bulkhead's name.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(1).build()?;
    /// let _busy = bulkhead.try_acquire(); // the one slot is taken
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = BulkheadLayer::new(bulkhead).layer(ok);
    /// let error = svc.oneshot(()).await.expect_err("full");
    /// let full = error.downcast_ref::<BulkheadFull>().expect("a BulkheadFull");
    /// assert_eq!(full.name(), "reports");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its limit.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(1).build()?;
    /// let _busy = bulkhead.try_acquire(); // the one slot is taken
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = BulkheadLayer::new(bulkhead).layer(ok);
    /// let error = svc.oneshot(()).await.expect_err("full");
    /// let full = error.downcast_ref::<BulkheadFull>().expect("a BulkheadFull");
    /// assert_eq!(full.max_concurrent(), 1);
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use proptest::prelude::*;
    use tower::{Layer, Service, ServiceExt, service_fn};

    struct Leaving(Arc<AtomicUsize>);

    impl Drop for Leaving {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A backend that sleeps for the requested time and records the peak concurrency.
    fn backend(
        current: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    ) -> impl Service<
        u64,
        Response = (),
        Error = std::io::Error,
        Future = impl Future<Output = Result<(), std::io::Error>> + Send,
    > + Clone
    + Send {
        service_fn(move |ms: u64| {
            let (current, peak) = (current.clone(), peak.clone());
            async move {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Counts down even when the call is cancelled mid-flight.
                let _leaving = Leaving(current);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_wait_fails_fast_without_calling_the_inner_service() {
        let pool = Bulkhead::builder("b").max_concurrent(1).build().unwrap();
        let (current, peak) = Default::default();
        let mut a = BulkheadLayer::new(pool.clone()).layer(backend(current, Arc::clone(&peak)));
        let mut b = a.clone();
        let first = a.ready().await.unwrap().call(100);
        let err = b.ready().await.unwrap().call(1).await.unwrap_err();
        let full = err.downcast_ref::<BulkheadFull>().unwrap();
        assert_eq!((full.name(), full.max_concurrent()), ("b", 1));
        first.await.unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(pool.available(), 1);
        // After the rejection, the service works again.
        b.ready().await.unwrap().call(1).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_the_permit_released_within_max_wait() {
        let pool = Bulkhead::builder("b")
            .max_concurrent(1)
            .max_wait(Duration::from_millis(50))
            .build()
            .unwrap();
        let (current, peak) = Default::default();
        let svc = BulkheadLayer::new(pool.clone()).layer(backend(current, peak));
        let first = tokio::spawn(svc.clone().oneshot(30));
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        svc.clone().oneshot(1).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(31));
        first.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_max_wait_is_rejected_at_max_wait() {
        let pool = Bulkhead::builder("b")
            .max_concurrent(1)
            .max_wait(Duration::from_millis(50))
            .build()
            .unwrap();
        let (current, peak) = Default::default();
        let svc = BulkheadLayer::new(pool.clone()).layer(backend(current, peak));
        let _first = tokio::spawn(svc.clone().oneshot(1_000));
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(err.is::<BulkheadFull>());
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_ready_service_or_a_response_future_returns_the_permit() {
        let pool = Bulkhead::builder("b").max_concurrent(2).build().unwrap();
        let (current, peak) = Default::default();
        let mut svc = BulkheadLayer::new(pool.clone()).layer(backend(current, peak));
        svc.ready().await.unwrap();
        assert_eq!(pool.available(), 1);
        let fut = svc.call(1_000);
        let mut other = svc.clone();
        other.ready().await.unwrap();
        assert_eq!(pool.available(), 0);
        drop(other);
        drop(fut);
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn a_zero_limit_is_a_config_error() {
        assert!(matches!(
            Bulkhead::builder("b").max_concurrent(0).build(),
            Err(crate::ConfigError::Zero {
                field: "max_concurrent"
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn never_more_than_the_limit_under_random_load_and_cancellation(
            limit in 1usize..6,
            max_wait_ms in prop_oneof![Just(0u64), 1u64..40],
            calls in prop::collection::vec((0u64..30, 1u64..60, prop::option::of(0u64..80)), 1..40),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let pool = Bulkhead::builder("p")
                    .max_concurrent(limit)
                    .max_wait(Duration::from_millis(max_wait_ms))
                    .build()
                    .unwrap();
                let current = Arc::new(AtomicUsize::new(0));
                let peak = Arc::new(AtomicUsize::new(0));
                let svc = BulkheadLayer::new(pool.clone()).layer(backend(current.clone(), peak.clone()));
                let mut tasks = Vec::new();
                for (start, work, cancel_after) in calls {
                    let svc = svc.clone();
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(start)).await;
                        svc.oneshot(work).await
                    });
                    if let Some(after) = cancel_after {
                        let handle = task.abort_handle();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(after)).await;
                            handle.abort();
                        });
                    }
                    tasks.push(task);
                }
                for task in tasks {
                    let _ = task.await;
                }
                prop_assert!(peak.load(Ordering::SeqCst) <= limit);
                prop_assert_eq!(pool.in_flight(), 0, "every permit came back");
                Ok(())
            })?;
        }
    }
}
