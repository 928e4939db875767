use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::answer::Answer;
use super::layer::Shared;
use super::{Predicate, ResponseFuture};
use crate::BoxError;

/// A service that answers from a fallback when the primary outcome matches a predicate.
/// Built by [`FallbackLayer`](super::FallbackLayer).
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::FallbackLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let ok = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let svc = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Ok(0)).layer(ok);
/// assert_eq!(svc.oneshot(9).await?, 9); // a success is passed through untouched
/// # Ok(()) }
/// ```
pub struct Fallback<S, P, A> {
    inner: S,
    shared: Arc<Shared<P, A>>,
}

impl<S: Clone, P, A> Clone for Fallback<S, P, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P, A> fmt::Debug for Fallback<S, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, P, A> Fallback<S, P, A> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<P, A>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::FallbackLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let primary = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) });
    /// let layer = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Ok::<u32, BoxError>(0));
    /// let svc = layer.layer(primary);
    /// // The wrapped service, reached directly (no fallback in between).
    /// assert_eq!(svc.get_ref().clone().oneshot(21).await?, 42);
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> Arc<Shared<P, A>> {
        self.shared.clone()
    }
}

impl<S, P, A, Req> Service<Req> for Fallback<S, P, A>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Predicate<S::Response>,
    A: Answer<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P, A, Req, S::Response>;

    /// The primary's readiness: a primary that cannot become ready is not bypassed
    /// (readiness errors pass through; put the fallback outside layers that reject in
    /// `call`, as the pipeline does).
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let kept = self.shared.answer.keep(&req);
        ResponseFuture::new(self.inner.call(req), kept, self.shared.clone())
    }
}
