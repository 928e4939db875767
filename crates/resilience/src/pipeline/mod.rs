//! Pipeline: every strategy in one layer, stacked in an order that works, with one error
//! type, buildable from a config file.
//!
//! # The order, outermost first, and why
//!
//! 1. **Total timeout** — the caller's deadline for the whole call, retries and waits
//!    included. Outermost so nothing inside can outlive it.
//! 2. **Retry** — outside everything that judges a single attempt, so each attempt is
//!    rate limited, counted by the breaker, bounded by the bulkhead and timed out on its
//!    own. By default an open circuit is not retried and a [`RateLimited`] is retried
//!    after its `retry_after` ([`RetryErrorsExceptOpenCircuit`]).
//! 3. **Circuit breaker** — sees every attempt's outcome, including attempt timeouts
//!    and bulkhead rejections (tell it to ignore those with a classifier if you prefer),
//!    and refuses calls while open before they consume a rate-limit slot or a permit.
//! 4. **Rate limit** — spends the allowance only on calls the breaker lets through, and
//!    before they take a bulkhead permit.
//! 5. **Bulkhead** — bounds calls in flight; outside the attempt timeout so a hung call
//!    gives its permit back when the timeout fires.
//! 6. **Attempt timeout** — innermost, around the real call.
//!
//! A fallback belongs outside all of this (it answers once everything above has failed):
//! add a [`FallbackLayer`](crate::fallback::FallbackLayer) on top with
//! `tower::ServiceBuilder`; its predicate sees the [`PipelineError`] boxed.
//!
//! # When not to use it
//!
//! When you need another order (a bulkhead shared by several retried services outside
//! their retries, say), stack the layers yourself with `tower::ServiceBuilder`; each
//! strategy is a plain layer.
//!
//! # Errors
//!
//! The pipeline's service returns one [`PipelineError`]: the strategy that failed the
//! call, typed, or the inner service's error. It implements `std::error::Error`, so it
//! still boxes into a `tower::BoxError` for axum's `HandleErrorLayer`.
//!
//! # Configuration
//!
//! [`PipelineConfig`] is plain serde data; [`PipelineBuilder::build`] validates every
//! section and reports the first problem as a [`ConfigError`](crate::ConfigError) naming
//! the section: a zero bulkhead, a threshold of 140 %, a cap below its base or a total
//! timeout shorter than the attempt timeout never reach a running service.
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::pipeline::{PipelineConfig, PipelineError, PipelineLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config: PipelineConfig = serde_json::from_str(r#"{
//!     "timeout": "1s",
//!     "retry": { "max_attempts": 3, "backoff": { "kind": "constant", "base": "10ms" } },
//!     "bulkhead": { "max_concurrent": 16 }
//! }"#)?;
//! let pipeline = PipelineLayer::builder("inventory").config(config).build()?;
//!
//! let hanging = service_fn(|_: u32| std::future::pending::<Result<u32, std::io::Error>>());
//! let err = pipeline.layer(hanging).oneshot(7).await.unwrap_err();
//! // Three attempts, each timed out after 1 s, then the retry gave up.
//! assert!(matches!(err, PipelineError::RetriesExhausted(ref e) if e.attempts() == 3));
//! # Ok(())
//! # }
//! ```

mod config;
mod future;
mod layer;
mod service;

pub use config::{BulkheadConfig, PipelineConfig, RateLimitConfig, RetryBudgetConfig, RetryConfig};
pub use future::{OptionalFuture, ResponseFuture};
pub use layer::{
    AttemptTimeout, PipelineBuilder, PipelineLayer, RetryErrorsExceptOpenCircuit, Stack,
    WithBreaker, WithBulkhead, WithRateLimit, WithRetry,
};
pub use service::{Optional, Pipeline};

use crate::BoxError;
use crate::bulkhead::BulkheadFull;
use crate::circuit_breaker::CircuitOpen;
use crate::rate_limit::RateLimited;
use crate::retry::RetriesExhausted;
use crate::timeout::Elapsed;

/// Why a call through a [`Pipeline`] failed: the strategy that stopped it, or the inner
/// service's own error.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let pipeline = PipelineLayer::builder("slow").timeout(Duration::from_millis(100)).build()?;
/// let hang = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
/// match pipeline.layer(hang).oneshot(()).await {
///     Err(PipelineError::Timeout(elapsed)) => {
///         assert_eq!(elapsed.duration(), Duration::from_millis(100))
///     }
///     other => panic!("expected a timeout, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The attempt timeout or the total timeout fired.
    #[error(transparent)]
    Timeout(Elapsed),
    /// Retries were exhausted; the last attempt's error is the source.
    #[error(transparent)]
    RetriesExhausted(RetriesExhausted),
    /// The circuit breaker refused the call.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// The rate limiter refused the call.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// The bulkhead was full.
    #[error(transparent)]
    BulkheadFull(BulkheadFull),
    /// The inner service failed (and was not retried).
    #[error(transparent)]
    Inner(BoxError),
}

impl From<BoxError> for PipelineError {
    fn from(e: BoxError) -> Self {
        let e = match e.downcast::<Elapsed>() {
            Ok(e) => return PipelineError::Timeout(*e),
            Err(e) => e,
        };
        let e = match e.downcast::<RetriesExhausted>() {
            Ok(e) => return PipelineError::RetriesExhausted(*e),
            Err(e) => e,
        };
        let e = match e.downcast::<CircuitOpen>() {
            Ok(e) => return PipelineError::CircuitOpen(*e),
            Err(e) => e,
        };
        let e = match e.downcast::<RateLimited>() {
            Ok(e) => return PipelineError::RateLimited(*e),
            Err(e) => e,
        };
        match e.downcast::<BulkheadFull>() {
            Ok(e) => PipelineError::BulkheadFull(*e),
            Err(e) => PipelineError::Inner(e),
        }
    }
}

impl PipelineError {
    /// Whether a strategy rejected the call before the inner service saw it
    /// (circuit open, rate limited, bulkhead full): the caller may tell its own client to
    /// back off (`503` / `429`) rather than report a dependency failure.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder("inventory").build()?;
    /// breaker.handle().force_open();
    /// let pipeline =
    ///     PipelineLayer::builder("inventory").circuit_breaker(breaker).build_with_breaker()?;
    /// let svc = pipeline.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// let error = svc.oneshot(()).await.expect_err("refused");
    /// assert!(error.is_rejection()); // answer 503, do not page anyone
    /// # Ok(()) }
    /// ```
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            PipelineError::CircuitOpen(_)
                | PipelineError::RateLimited(_)
                | PipelineError::BulkheadFull(_)
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
