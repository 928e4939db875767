//! The breaker service.

use std::task::{Context, Poll};

use tower_service::Service;

use super::state::Permit;
use super::{CircuitBreakerHandle, CircuitOpen, Classify, ResponseFuture};
use crate::BoxError;

/// A service guarded by a circuit breaker; built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` asks the breaker first: while it is open it returns ready at once
/// (without waiting for the inner service) and the following `call` fails with
/// [`CircuitOpen`] without touching the inner service; when it admits the call (a
/// half-open probe place included, reserved here) it then polls the inner service. A clone
/// starts without a reservation, so a clone called without `poll_ready` asks the breaker
/// in `call` instead.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let layer = CircuitBreakerLayer::builder("echo").build()?;
/// let svc = layer.layer(service_fn(|s: &'static str| async move { Ok::<_, std::io::Error>(s) }));
/// assert_eq!(svc.oneshot("hi").await?, "hi");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: CircuitBreakerHandle,
    classifier: C,
    permit: Option<Result<Permit, Box<CircuitOpen>>>,
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // The reservation stays with the original: it is the one that was polled ready.
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, breaker: CircuitBreakerHandle, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            permit: None,
        }
    }

    /// The handle on the breaker this service uses.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// assert_eq!(svc.handle().name(), "orders"); // the breaker of the layer
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn handle(&self) -> &CircuitBreakerHandle {
        &self.breaker
    }

    /// The inner service.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let _inner = svc.get_ref();
    /// assert_eq!(svc.handle().metrics().calls, 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the breaker, returning the inner service.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let _inner = svc.into_inner(); // unwrapped: calls bypass the breaker
    /// assert_eq!(layer.handle().metrics().calls, 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let stale = match &self.permit {
            None | Some(Err(_)) => true,
            Some(Ok(permit)) => !permit.is_current(),
        };
        if stale {
            self.permit = Some(self.breaker.acquire());
        }
        match &self.permit {
            Some(Ok(_)) => self.inner.poll_ready(cx).map_err(Into::into),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let admission = match self.permit.take() {
            Some(admission) => admission,
            None => self.breaker.acquire(),
        };
        match admission {
            Ok(permit) => {
                let start = permit.start();
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone(), start)
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
