//! The adaptive limit service, its permit and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::algorithm::Sample;
use super::layer::Shared;
use super::{AdaptiveHandle, LimitExceeded};
use crate::BoxError;
use crate::circuit_breaker::{Classify, Outcome};

/// A slot in the limit; given back when dropped.
struct Slot {
    shared: Arc<Shared>,
    in_flight: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A service under an adaptive concurrency limit; built by
/// [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer).
///
/// `poll_ready` takes a slot under the current limit (then waits for the inner service);
/// when none is free it returns ready at once and `call` fails with [`LimitExceeded`]
/// without calling the inner service: the limiter sheds, it does not queue. A slot taken
/// and not used is given back when the service is dropped.
///
/// ```rust
/// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let layer = AdaptiveConcurrencyLayer::new("api", Aimd::new(5, 1, 50)?);
/// let svc = layer.layer(service_fn(|x: u8| async move { Ok::<_, std::io::Error>(x) }));
/// assert_eq!(svc.handle().limit(), 5);
/// assert_eq!(svc.oneshot(1).await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AdaptiveConcurrency<S, C> {
    inner: S,
    handle: AdaptiveHandle,
    classifier: C,
    slot: Option<Result<Slot, LimitExceeded>>,
}

impl<S: Clone, C: Clone> Clone for AdaptiveConcurrency<S, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.handle.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S, C> AdaptiveConcurrency<S, C> {
    pub(crate) fn new(inner: S, handle: AdaptiveHandle, classifier: C) -> Self {
        Self {
            inner,
            handle,
            classifier,
            slot: None,
        }
    }

    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, service_fn};
    ///
    /// let layer = AdaptiveConcurrencyLayer::new("db", Aimd::new(8, 1, 64)?);
    /// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// assert_eq!(svc.handle().limit(), layer.handle().limit()); // one shared limit
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn handle(&self) -> &AdaptiveHandle {
        &self.handle
    }

    fn acquire(&self) -> Result<Slot, LimitExceeded> {
        let shared = &self.handle.shared;
        match shared.try_acquire() {
            Some(in_flight) => Ok(Slot {
                shared: shared.clone(),
                in_flight,
            }),
            None => Err(LimitExceeded {
                name: shared.name.clone(),
                limit: shared.limit(),
            }),
        }
    }
}

impl<S, C, Req> Service<Req> for AdaptiveConcurrency<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !matches!(self.slot, Some(Ok(_))) {
            self.slot = Some(self.acquire());
        }
        match &self.slot {
            Some(Ok(_)) => self.inner.poll_ready(cx).map_err(Into::into),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => self.acquire(),
        };
        match slot {
            Ok(slot) => ResponseFuture {
                kind: Kind::Called {
                    inner: self.inner.call(req),
                    slot: Some(slot),
                    classifier: self.classifier.clone(),
                    started: Instant::now(),
                },
            },
            Err(exceeded) => ResponseFuture {
                kind: Kind::Rejected {
                    error: Some(exceeded),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`AdaptiveConcurrency`]: holds the slot until the call
    /// completes (or is dropped) and feeds its latency to the algorithm.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = AdaptiveConcurrencyLayer::new("api", Aimd::new(2, 1, 10)?);
    /// let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // its latency and outcome feed the limit
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Called { #[pin] inner: F, slot: Option<Slot>, classifier: C, started: Instant },
        Rejected { error: Option<LimitExceeded> },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                inner,
                slot,
                classifier,
                started,
            } => {
                let result = ready!(inner.poll(cx));
                if let Some(slot) = slot.take() {
                    let dropped = match classifier.classify(&result) {
                        Outcome::Success => Some(false),
                        Outcome::Failure => Some(true),
                        Outcome::Ignored => None,
                    };
                    if let Some(dropped) = dropped {
                        slot.shared.sample(Sample {
                            latency: started.elapsed(),
                            in_flight: slot.in_flight,
                            dropped,
                        });
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => "adaptive limit future polled after completion".into(),
            })),
        }
    }
}
