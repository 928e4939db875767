use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use crate::BoxError;

/// Chooses the timeout of one call.
///
/// Implemented for [`Duration`] (the same for every call) and for [`PerRequest`]
/// (computed from the request).
pub trait CallTimeout<Req> {
    /// The timeout for `req`.
    fn timeout_for(&self, req: &Req) -> Duration;
}

impl<Req> CallTimeout<Req> for Duration {
    #[inline]
    fn timeout_for(&self, _: &Req) -> Duration {
        *self
    }
}

/// A timeout computed from each request by a closure `Fn(&Req) -> Duration`.
#[derive(Clone, Copy, Debug)]
pub struct PerRequest<F>(pub F);

impl<Req, F: Fn(&Req) -> Duration> CallTimeout<Req> for PerRequest<F> {
    #[inline]
    fn timeout_for(&self, req: &Req) -> Duration {
        (self.0)(req)
    }
}

/// A service that fails a call with [`Elapsed`](super::Elapsed) when it takes longer than
/// its timeout. Built by [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Clone, Copy, Debug)]
pub struct Timeout<S, D = Duration> {
    inner: S,
    timeout: D,
}

impl<S, D> Timeout<S, D> {
    /// Wraps `inner`.
    pub const fn new(inner: S, timeout: D) -> Self {
        Self { inner, timeout }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, D, Req> Service<Req> for Timeout<S, D>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    D: CallTimeout<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The timer starts at `call`: waiting for readiness is backpressure, not latency.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let after = self.timeout.timeout_for(&req);
        ResponseFuture::new(self.inner.call(req), after)
    }
}
