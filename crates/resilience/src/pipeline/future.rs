use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::PipelineError;
use crate::BoxError;

pin_project! {
    #[project = EitherProj]
    enum Either<A, B> {
        On { #[pin] future: A },
        Off { #[pin] future: B },
    }
}

pin_project! {
    /// The response future of an [`Optional`](super::Optional) strategy.
    pub struct OptionalFuture<A, B> {
        #[pin]
        inner: Either<A, B>,
    }
}

impl<A, B> OptionalFuture<A, B> {
    pub(crate) fn on(future: A) -> Self {
        Self {
            inner: Either::On { future },
        }
    }

    pub(crate) fn off(future: B) -> Self {
        Self {
            inner: Either::Off { future },
        }
    }
}

impl<A, B, T, EA, EB> Future for OptionalFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            EitherProj::On { future } => future.poll(cx).map_err(Into::into),
            EitherProj::Off { future } => future.poll(cx).map_err(Into::into),
        }
    }
}

pin_project! {
    /// The response future of [`Pipeline`](super::Pipeline): the stack's, with its error
    /// sorted into a [`PipelineError`].
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::PipelineLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let pipeline = PipelineLayer::builder("inventory").timeout(Duration::from_secs(1)).build()?;
    /// let echo = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
    /// let mut svc = pipeline.layer(echo);
    /// let future = svc.ready().await?.call(7); // this future
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, PipelineError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_err(|e| PipelineError::from(e.into()))
    }
}
