use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower_service::Service;

use super::{RateLimited, RateLimiter, ResponseFuture};
use crate::BoxError;

/// The slot `poll_ready` took for the next `call`. A refusal keeps its `retry_after` as
/// plain nanoseconds: the enum stays two words with a simple tag, cheap to move.
#[derive(Default)]
enum Slot {
    #[default]
    None,
    Granted,
    Refused(u64),
    Waiting(Pin<Box<Sleep>>),
}

/// A service whose calls each take a slot of a shared [`RateLimiter`]. Built by
/// [`RateLimitLayer`](super::RateLimitLayer).
///
/// `poll_ready` takes the slot: `Ready` at once when one is free, `Pending` until the
/// reserved slot opens when it opens within `max_wait`; otherwise it returns `Ready(Ok)`
/// and the next `call` fails with [`RateLimited`] carrying the `retry_after`, without
/// calling the inner service. (Readiness never fails, so `tower::buffer` stays usable.)
///
/// A slot reserved in `poll_ready` is spent even if `call` never comes.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let limiter = RateLimiter::builder("partner-api").rate(100, Duration::from_secs(1)).build()?;
/// let svc = RateLimitLayer::new(limiter.clone())
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// assert_eq!(svc.oneshot(1).await?, 1);
/// # Ok(()) }
/// ```
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
    slot: Slot,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone shares the limiter, not the slot this instance may hold.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.limiter.clone())
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with `limiter`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
    /// use tower::{Layer, service_fn};
    ///
    /// let limiter = RateLimiter::builder("sms").rate(5, Duration::from_secs(1)).build()?;
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = RateLimit::new(ok, limiter);
    /// assert_eq!(svc.limiter().name(), "sms");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        Self {
            inner,
            limiter,
            slot: Slot::None,
        }
    }

    /// The shared limiter.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
    /// use tower::{Layer, service_fn};
    ///
    /// let limiter = RateLimiter::builder("sms").rate(5, Duration::from_secs(1)).build()?;
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = RateLimitLayer::new(limiter).layer(ok);
    /// assert_eq!(svc.limiter().max_wait(), Duration::ZERO);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.slot {
                Slot::None => {
                    self.slot = match self.limiter.reserve_configured() {
                        Ok(wait) if wait.is_zero() => Slot::Granted,
                        Ok(wait) => Slot::Waiting(Box::pin(tokio::time::sleep(wait))),
                        Err(retry_after) => {
                            Slot::Refused(u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX))
                        }
                    };
                }
                Slot::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.slot = Slot::Granted;
                }
                Slot::Granted => return self.inner.poll_ready(cx).map_err(Into::into),
                Slot::Refused(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::take(&mut self.slot) {
            Slot::Granted => ResponseFuture::called(self.inner.call(req)),
            Slot::Refused(nanos) => self.refuse(Duration::from_nanos(nanos)),
            // `call` without `poll_ready`: only a free slot lets it through.
            Slot::None | Slot::Waiting(_) => match self.limiter.try_acquire() {
                Ok(()) => ResponseFuture::called(self.inner.call(req)),
                Err(retry_after) => self.refuse(retry_after),
            },
        }
    }
}

impl<S> RateLimit<S> {
    fn refuse<F>(&self, retry_after: Duration) -> ResponseFuture<F> {
        crate::telemetry::rate_limited(self.limiter.name(), retry_after);
        ResponseFuture::rejected(RateLimited::new(
            self.limiter.state.name.clone(),
            retry_after,
        ))
    }
}
