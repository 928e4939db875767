//! Retry: send a failed call again, spaced by a backoff, bounded by attempts, time and a
//! shared budget.
//!
//! # What it protects against
//!
//! Transient failures: a dropped connection, a pod restarting behind a load balancer, a
//! `503` from a briefly overloaded server. Most of them succeed on a second try.
//!
//! # When not to use it
//!
//! - For calls that are not idempotent (a payment without an idempotency key): a retry
//!   after a timeout may do the work twice. Classify such requests as
//!   [`RetryDecision::DoNotRetry`].
//! - For permanent failures (`400`, `404`, validation errors): retrying only adds load.
//!   The classifier sees the whole outcome precisely so it can refuse these.
//! - Against an overloaded dependency without a [`RetryBudget`]: each retry is extra
//!   load at the worst moment. The budget caps retries at a share of real traffic across
//!   every service that shares it, which is what stops retry storms.
//!
//! # Composition
//!
//! Put the retry outside a per-attempt [`timeout`](crate::timeout) (each attempt gets its
//! own deadline), outside the circuit breaker (each attempt is counted, and an open
//! circuit is an error not worth retrying) and inside a [`fallback`](crate::fallback) (the
//! fallback answers once retries are exhausted). The [`pipeline`](crate::pipeline) stacks
//! them in this order.
//!
//! # Outcomes
//!
//! - The classifier says [`DoNotRetry`](RetryDecision::DoNotRetry): the outcome is
//!   returned as is (an inner error boxed, keeping its type).
//! - The classifier asks for a retry but attempts, elapsed time or budget are spent: a
//!   response (say the last `503`) is returned as is; an error comes back as
//!   [`RetriesExhausted`], which says why and carries the last error as its `source()`.
//! - [`RetryDecision::RetryAfter`] replaces the backoff's delay for that retry (a
//!   server's `Retry-After`).
//!
//! Requests that are not `Clone` are replayed by a hook:
//! [`RetryBuilder::rebuild_with`] or [`RetryBuilder::restore_with`] (see [`Replay`]).
//! Every retry and give-up goes to `tracing` (target `palisade_resilience::retry`) and to
//! the listeners added with [`RetryBuilder::on_event`].
//!
//! # Cancellation
//!
//! Dropping the response future stops everything: the attempt in flight or the wait is
//! dropped and no further attempt starts.
//!
//! # Example
//!
//! ```rust
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use palisade_resilience::backoff::Backoff;
//! use palisade_resilience::retry::{RetryBudget, RetryDecision, RetryLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A server that answers 503 twice, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let server = service_fn(move |_path: &'static str| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move { Ok::<u16, std::io::Error>(if n < 2 { 503 } else { 200 }) }
//! });
//!
//! let budget = RetryBudget::builder().build()?; // share this Arc across services
//! let retry = RetryLayer::builder()
//!     .classify(|_: &&str, outcome: &Result<u16, std::io::Error>| match outcome {
//!         Ok(503) | Err(_) => RetryDecision::Retry,
//!         Ok(_) => RetryDecision::DoNotRetry, // a 400 is never retried
//!     })
//!     .max_attempts(5)
//!     .backoff(Backoff::exponential(Duration::from_millis(50)))
//!     .budget(budget)
//!     .build()?;
//!
//! let mut svc = retry.layer(server);
//! assert_eq!(svc.ready().await?.call("/orders").await?, 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(())
//! # }
//! ```

mod budget;
mod future;
mod layer;
mod policy;
mod service;

pub use budget::{RetryBudget, RetryBudgetBuilder};
pub use future::ResponseFuture;
pub use layer::{RetryBuilder, RetryLayer};
pub use policy::{
    Classify, CloneRequest, GiveUpReason, RebuildRequest, Replay, RestoreRequest, RetryDecision,
    RetryEvent, RetryOnError,
};
pub use service::Retry;

use crate::BoxError;

/// The classifier wanted another attempt but the policy gave up; the last error is the
/// [`source`](std::error::Error::source).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let retry = RetryLayer::builder()
///     .max_attempts(3)
///     .backoff(Backoff::constant(Duration::from_millis(10)))
///     .build()?;
/// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
/// let err = retry.layer(down).oneshot(()).await.unwrap_err();
/// let exhausted = err.downcast_ref::<RetriesExhausted>().expect("gave up");
/// assert_eq!(exhausted.attempts(), 3);
/// assert_eq!(exhausted.reason(), GiveUpReason::MaxAttempts);
/// assert_eq!(exhausted.last_error().to_string(), "down");
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempt(s): {}", reason.as_str())]
pub struct RetriesExhausted {
    attempts: u32,
    reason: GiveUpReason,
    #[source]
    last: BoxError,
}

impl RetriesExhausted {
    pub(crate) fn new(attempts: u32, reason: GiveUpReason, last: BoxError) -> Self {
        Self {
            attempts,
            reason,
            last,
        }
    }

    /// Attempts made, the first call included.
    ///
    /// ```rust
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(2)
    ///     .backoff(Backoff::constant(std::time::Duration::from_millis(5)))
    ///     .build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("refused")) });
    /// let error = retry.layer(down).oneshot(()).await.expect_err("always fails");
    /// let exhausted = error.downcast::<RetriesExhausted>().map_err(|_| "not exhausted")?;
    /// assert_eq!(exhausted.attempts(), 2);
    /// # Ok(()) }
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why no further attempt was made.
    ///
    /// ```rust
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(2)
    ///     .backoff(Backoff::constant(std::time::Duration::from_millis(5)))
    ///     .build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("refused")) });
    /// let error = retry.layer(down).oneshot(()).await.expect_err("always fails");
    /// let exhausted = error.downcast::<RetriesExhausted>().map_err(|_| "not exhausted")?;
    /// assert_eq!(exhausted.reason(), GiveUpReason::MaxAttempts);
    /// # Ok(()) }
    /// ```
    pub fn reason(&self) -> GiveUpReason {
        self.reason
    }

    /// The last attempt's error.
    ///
    /// ```rust
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(2)
    ///     .backoff(Backoff::constant(std::time::Duration::from_millis(5)))
    ///     .build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("refused")) });
    /// let error = retry.layer(down).oneshot(()).await.expect_err("always fails");
    /// let exhausted = error.downcast::<RetriesExhausted>().map_err(|_| "not exhausted")?;
    /// assert_eq!(exhausted.last_error().to_string(), "refused");
    /// # Ok(()) }
    /// ```
    pub fn last_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.last
    }

    /// Takes the last attempt's error.
    ///
    /// ```rust
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(2)
    ///     .backoff(Backoff::constant(std::time::Duration::from_millis(5)))
    ///     .build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("refused")) });
    /// let error = retry.layer(down).oneshot(()).await.expect_err("always fails");
    /// let exhausted = error.downcast::<RetriesExhausted>().map_err(|_| "not exhausted")?;
    /// let last = exhausted.into_last_error();
    /// assert!(last.downcast_ref::<std::io::Error>().is_some());
    /// # Ok(()) }
    /// ```
    pub fn into_last_error(self) -> BoxError {
        self.last
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
