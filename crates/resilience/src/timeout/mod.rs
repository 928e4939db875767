//! Timeout: bound how long one call may take.
//!
//! # What it protects against
//!
//! A dependency that hangs (a dead TCP peer, a stuck lock, a GC pause) holds the caller's
//! resources forever: its task, its connection, its bulkhead permit, and the user's
//! patience. A timeout turns "never" into a typed [`Elapsed`] error after a known time, so
//! the caller can retry, fall back or fail fast.
//!
//! # When not to use it
//!
//! - Around work that must not be abandoned half-way without compensation (a payment
//!   that may still complete after you gave up): time out, but make the call idempotent or
//!   reconcile later. Dropping the inner future cancels it only on *this* side.
//! - As a rate limiter or a concurrency limit: use [`rate_limit`](crate::rate_limit) or
//!   [`bulkhead`](crate::bulkhead).
//!
//! # Composition
//!
//! Put the timeout *inside* a retry (each attempt gets its own deadline) and inside a
//! bulkhead (the permit comes back when the timeout fires). For a deadline on the whole
//! retried call, add a second timeout outside the retry. The [`pipeline`](crate::pipeline)
//! does this for you.
//!
//! The deadline can be fixed ([`TimeoutLayer::new`]) or computed from each request
//! ([`TimeoutLayer::per_request`]), e.g. from a `grpc-timeout` header. It counts from the
//! first poll of the response future (which follows `call` at once in every executor and
//! in tower's own combinators); a call that completes on that first poll never arms a
//! timer — unlike `tower::timeout`, which reads the clock and registers a timer on every
//! call.
//!
//! # Cancellation
//!
//! Dropping the response future drops the inner future and the timer; nothing leaks.
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::timeout::{Elapsed, TimeoutLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let hanging = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
//! let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(hanging);
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let elapsed = err.downcast_ref::<Elapsed>().unwrap();
//! assert_eq!(elapsed.duration(), Duration::from_secs(1));
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use service::{CallTimeout, PerRequest, Timeout};

use std::time::Duration;

/// The call did not complete within its timeout.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::timeout::{Elapsed, TimeoutLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let hang = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
/// let svc = TimeoutLayer::new(Duration::from_millis(250)).layer(hang);
/// let err = svc.oneshot(()).await.expect_err("hangs past the timeout");
/// let elapsed = err.downcast_ref::<Elapsed>().expect("a timeout");
/// assert_eq!(elapsed.duration(), Duration::from_millis(250));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("call timed out after {after:?}")]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    /// An `Elapsed` for a timeout of `after`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::Elapsed;
    ///
    /// // For a test double or a service of your own that times out the same way.
    /// let elapsed = Elapsed::new(Duration::from_millis(250));
    /// assert_eq!(elapsed.to_string(), "call timed out after 250ms");
    /// ```
    pub const fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The timeout that fired.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::Elapsed;
    ///
    /// assert_eq!(Elapsed::new(Duration::from_secs(2)).duration(), Duration::from_secs(2));
    /// ```
    pub const fn duration(&self) -> Duration {
        self.after
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt, service_fn};

    #[tokio::test(start_paused = true)]
    async fn a_call_that_finishes_in_time_passes_through() {
        let slow = service_fn(|d: Duration| async move {
            tokio::time::sleep(d).await;
            Ok::<_, std::io::Error>(d)
        });
        let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(slow);
        let ok = svc
            .ready()
            .await
            .unwrap()
            .call(Duration::from_millis(99))
            .await;
        assert_eq!(ok.unwrap(), Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_fails_with_elapsed_at_exactly_the_deadline() {
        let slow = service_fn(|d: Duration| async move {
            tokio::time::sleep(d).await;
            Ok::<_, std::io::Error>(d)
        });
        let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(slow);
        let start = tokio::time::Instant::now();
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(
            err.downcast_ref::<Elapsed>(),
            Some(&Elapsed::new(Duration::from_millis(100)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_can_come_from_the_request() {
        let hang = service_fn(|_: u64| std::future::pending::<Result<(), std::io::Error>>());
        let mut svc = TimeoutLayer::per_request(|ms: &u64| Duration::from_millis(*ms)).layer(hang);
        let err = svc.ready().await.unwrap().call(250).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Elapsed>().map(Elapsed::duration),
            Some(Duration::from_millis(250))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_error_keeps_its_type() {
        let failing = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("boom")) });
        let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(failing);
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<std::io::Error>());
    }
}
