use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::RateLimited;
use crate::BoxError;

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        // Boxed when rejected (the error path), so the future stays two words plus `F`.
        Rejected { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): the inner call, or an
    /// immediate [`RateLimited`].
    ///
    /// ```rust
    /// use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let limiter = RateLimiter::builder("api").build()?;
    /// let mut svc = RateLimitLayer::new(limiter)
    ///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // this future
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn rejected(error: RateLimited) -> Self {
        Self {
            kind: Kind::Rejected {
                error: Some(Box::new(error)),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx).map_err(Into::into),
            KindProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e,
                None => "rate limit response future polled after completion".into(),
            })),
        }
    }
}
