use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

use super::handle::wait_for_permit;
use super::{Bulkhead, BulkheadFull, Permit, ResponseFuture};
use crate::BoxError;

type Waiting = Pin<Box<dyn Future<Output = Option<Permit>> + Send + Sync>>;

/// A service whose calls each hold a permit of a [`Bulkhead`]. Built by
/// [`BulkheadLayer`](super::BulkheadLayer).
///
/// `poll_ready` reserves the permit `call` will use: it returns `Ready` at once when a
/// permit is free, waits (`Pending`) up to `max_wait` otherwise, and when none comes in
/// time it still returns `Ready(Ok)` and the next `call` fails with [`BulkheadFull`]
/// without touching the inner service. (Readiness never fails: under `tower::buffer` a
/// readiness error would poison the buffer for every later caller.)
///
/// ```rust
/// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let pool = Bulkhead::builder("db").max_concurrent(8).build()?;
/// let echo = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let svc = BulkheadLayer::new(pool).layer(echo);
/// assert_eq!(svc.oneshot(3).await?, 3);
/// # Ok(()) }
/// ```
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
    permit: Option<Permit>,
    waiting: Option<Waiting>,
    rejected: bool,
}

impl<S: fmt::Debug> fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead)
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for BulkheadService<S> {
    /// A clone shares the bulkhead but not the permit this instance may hold.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.bulkhead.clone())
    }
}

impl<S> BulkheadService<S> {
    /// Wraps `inner` with `bulkhead`.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadService};
    /// use tower::{Layer, service_fn};
    ///
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(8).build()?;
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = BulkheadService::new(ok, bulkhead);
    /// assert_eq!(svc.bulkhead().max_concurrent(), 8);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(inner: S, bulkhead: Bulkhead) -> Self {
        Self {
            inner,
            bulkhead,
            permit: None,
            waiting: None,
            rejected: false,
        }
    }

    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
    /// use tower::{Layer, service_fn};
    ///
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(8).build()?;
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = BulkheadLayer::new(bulkhead).layer(ok);
    /// assert_eq!(svc.bulkhead().in_flight(), 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// The wrapped service.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
    /// use tower::{Layer, service_fn};
    ///
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(8).build()?;
    /// let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    /// let svc = BulkheadLayer::new(bulkhead).layer(ok);
    /// let _inner = svc.get_ref();
    /// assert_eq!(svc.bulkhead().name(), "reports");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.rejected {
            return Poll::Ready(Ok(()));
        }
        if self.permit.is_none() {
            if let Some(waiting) = &mut self.waiting {
                let permit = match waiting.as_mut().poll(cx) {
                    Poll::Ready(permit) => permit,
                    Poll::Pending => return Poll::Pending,
                };
                self.waiting = None;
                match permit {
                    Some(p) => self.permit = Some(p),
                    None => {
                        self.rejected = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            } else if let Some(p) = self.bulkhead.try_acquire() {
                self.permit = Some(p);
            } else if self.bulkhead.max_wait().is_zero() {
                self.rejected = true;
                return Poll::Ready(Ok(()));
            } else {
                self.waiting = Some(Box::pin(wait_for_permit(self.bulkhead.state.clone())));
                return self.poll_ready(cx);
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.permit.take() {
            Some(permit) => ResponseFuture::called(self.inner.call(req), permit),
            None => {
                // Rejected in poll_ready (or `call` without `poll_ready`): fail fast.
                self.rejected = false;
                let state = &self.bulkhead.state;
                crate::telemetry::bulkhead_rejected(&state.name, state.max_concurrent);
                ResponseFuture::rejected(BulkheadFull::new(
                    state.name.clone(),
                    state.max_concurrent,
                ))
            }
        }
    }
}
