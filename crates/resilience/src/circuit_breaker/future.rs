//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::state::Permit;
use super::{CircuitOpen, Classify};
use crate::BoxError;

pin_project! {
    /// The response future of a [`CircuitBreaker`](super::CircuitBreaker) service: either
    /// the inner call, whose outcome it records on completion, or an immediate
    /// [`CircuitOpen`].
    ///
    /// Cancellation: dropping it before completion records nothing (a cancelled call is
    /// neither a success nor a failure) and gives a half-open probe place back.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder("payments").build()?;
    /// let mut svc = breaker.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // records the outcome when it completes
    /// assert_eq!(future.await?, 7);
    /// let metrics = breaker.handle().metrics();
    /// assert_eq!((metrics.calls, metrics.failures), (1, 0));
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
        Called {
            #[pin]
            inner: F,
            permit: Permit,
            classifier: C,
            start: u64,
        },
        Rejected {
            error: Option<Box<CircuitOpen>>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(inner: F, permit: Permit, classifier: C, start: u64) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                permit,
                classifier,
                start,
            },
        }
    }

    pub(crate) fn rejected(error: Box<CircuitOpen>) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
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
                permit,
                classifier,
                start,
            } => {
                let result = ready!(inner.poll(cx));
                permit.complete(classifier.classify(&result), *start);
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(match error.take() {
                Some(open) => Err(open as BoxError),
                None => Err("circuit breaker future polled after completion".into()),
            }),
        }
    }
}
