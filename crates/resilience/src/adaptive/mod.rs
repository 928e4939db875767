//! Adaptive concurrency: find out how many calls a dependency can take at once, and
//! keep to it as that changes.
//!
//! # What it protects against
//!
//! A fixed limit is wrong most of the time: too high when the dependency slows down (its
//! queues fill, latency climbs for everyone, timeouts follow), too low when it has room.
//! An adaptive limit watches the latency and the failures of completed calls and moves
//! the limit: [`Aimd`] adds one while calls succeed and cuts by a factor on a failure;
//! [`Gradient`] (after Netflix's Gradient2) shrinks as soon as latency rises above its
//! long-term average, before anything fails. Calls over the limit are rejected at once
//! with [`LimitExceeded`], so an overload turns into fast, cheap errors instead of a
//! growing queue.
//!
//! # When not to use it
//!
//! - When the dependency's capacity is known and fixed (a pool of 10 connections): a
//!   [`bulkhead`](crate::bulkhead) says so plainly.
//! - With very little traffic: the algorithms need a stream of samples to learn from.
//! - When callers must wait rather than fail: put a bulkhead with a wait outside it.
//!
//! # How it composes
//!
//! Put it close to the dependency, inside the retry (a rejection is a fast failure the
//! retry may take to another replica) and outside the timeout (a timeout counts as an
//! overload signal). [`load_shed`](crate::load_shed) can take its capacity from this
//! limiter's [`AdaptiveHandle`], so low-priority requests are shed first as the limit
//! drops. Errors are [`BoxError`](crate::BoxError)s; `err.is::<LimitExceeded>()` tells a
//! rejection.
//!
//! # Cost and cancellation
//!
//! Taking a slot is one compare-exchange on the in-flight count; feeding a sample takes
//! the algorithm's lock only if it is free (otherwise the sample is skipped). Dropping a
//! call or a service holding a slot gives it back.
//!
//! Limit changes and rejections are `debug` events (target
//! `palisade_resilience::adaptive`); with the `metrics` feature the limit is the gauge
//! `palisade_adaptive_limit` and rejections count in `palisade_adaptive_rejections_total`
//! (both labelled `name`).
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd, LimitExceeded};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade_resilience::BoxError> {
//! let layer = AdaptiveConcurrencyLayer::new("api", Aimd::new(2, 1, 10)?);
//! let svc = layer.layer(service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, std::io::Error>(ms)
//! }));
//! // Two slow calls take both slots; a third is rejected at once.
//! let a = tokio::spawn(svc.clone().oneshot(100));
//! let b = tokio::spawn(svc.clone().oneshot(100));
//! tokio::task::yield_now().await;
//! let err = svc.clone().oneshot(1).await.unwrap_err();
//! assert!(err.is::<LimitExceeded>());
//! a.await??;
//! b.await??;
//! // Both completed while the limit was fully used: AIMD raised it twice.
//! assert_eq!(layer.handle().limit(), 4);
//! # Ok(())
//! # }
//! ```

mod algorithm;
mod layer;
mod service;

use std::fmt;
use std::sync::Arc;

pub use algorithm::{Aimd, Gradient, LimitAlgorithm, Sample};
pub use layer::{AdaptiveConcurrencyLayer, AdaptiveHandle};
pub use service::{AdaptiveConcurrency, ResponseFuture};

/// A call was rejected because the adaptive limit was reached; the inner service was not
/// called.
///
/// ```rust
/// # use palisade_resilience::adaptive::LimitExceeded;
/// fn retry_after(err: &palisade_resilience::BoxError) -> bool {
///     err.downcast_ref::<LimitExceeded>().is_some_and(|e| e.limit() < 10)
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    name: Arc<str>,
    limit: u32,
}

impl LimitExceeded {
    /// The limiter's name.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd, LimitExceeded};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(1, 1, 4)?);
    /// let inner = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
    /// let mut busy = layer.layer(inner);
    /// let _in_flight = busy.ready().await?.call(()); // holds the only slot
    /// let error = layer.layer(inner).oneshot(()).await.expect_err("over the limit");
    /// let exceeded = error.downcast_ref::<LimitExceeded>().expect("a LimitExceeded");
    /// assert_eq!(exceeded.name(), "db");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit at the time of the rejection.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd, LimitExceeded};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(1, 1, 4)?);
    /// let inner = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
    /// let mut busy = layer.layer(inner);
    /// let _in_flight = busy.ready().await?.call(()); // holds the only slot
    /// let error = layer.layer(inner).oneshot(()).await.expect_err("over the limit");
    /// let exceeded = error.downcast_ref::<LimitExceeded>().expect("a LimitExceeded");
    /// assert_eq!(exceeded.limit(), 1);
    /// # Ok(()) }
    /// ```
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "adaptive concurrency limit of `{}` reached ({} in flight)",
            self.name, self.limit
        )
    }
}

impl std::error::Error for LimitExceeded {}
