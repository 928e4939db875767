use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Policy;
use super::policy::{Classify, Replay};
use crate::BoxError;

/// A service that retries failed calls according to its policy. Built by
/// [`RetryLayer`](super::RetryLayer).
///
/// `call` sends the request through the service it found ready and keeps a clone of the
/// inner service in the response future for the next attempts, polling that clone ready
/// before each retry, so readiness stays honest under `Buffer` and when cloned per call.
///
/// ```rust
/// use palisade_resilience::retry::RetryLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let svc = RetryLayer::builder().build()?
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// assert_eq!(svc.oneshot(5).await?, 5);
/// # Ok(()) }
/// ```
pub struct Retry<S, C, P> {
    inner: S,
    policy: Arc<Policy<C, P>>,
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, C, P> fmt::Debug for Retry<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn from_policy(inner: S, policy: Arc<Policy<C, P>>) -> Self {
        Self { inner, policy }
    }

    /// The wrapped service.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// let echo = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// let svc = RetryLayer::builder().build()?.layer(echo);
    /// let _inner = svc.get_ref(); // the wrapped service
    /// assert_eq!(RetryLayer::builder().build()?.name(), "retry");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, P, Req> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<Req, S::Response, S::Error>,
    P: Replay<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(budget) = &self.policy.budget {
            budget.deposit();
        }
        // Call the instance that was polled ready; keep an un-readied clone here.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let kept = self.policy.replay.keep(&req);
        let future = ready.call(req);
        ResponseFuture::new(future, ready, kept, self.policy.clone())
    }
}
