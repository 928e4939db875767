use std::task::{Context, Poll};

use tower_service::Service;

use super::{OptionalFuture, PipelineError, ResponseFuture};
use crate::BoxError;

/// A strategy that is in the stack or left out, with one type either way.
///
/// ```rust
/// use palisade_resilience::pipeline::Optional;
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let echo = service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// // A strategy left out: the service itself, under the same type as when it is in.
/// let off: Optional<tower::util::BoxService<u32, u32, std::io::Error>, _> = Optional::Off(echo);
/// assert_eq!(off.oneshot(3).await?, 3);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub enum Optional<On, Off> {
    /// The strategy wraps the service.
    On(On),
    /// The service, unwrapped.
    Off(Off),
}

impl<On, Off, Req> Service<Req> for Optional<On, Off>
where
    On: Service<Req>,
    On::Error: Into<BoxError>,
    Off: Service<Req, Response = On::Response>,
    Off::Error: Into<BoxError>,
{
    type Response = On::Response;
    type Error = BoxError;
    type Future = OptionalFuture<On::Future, Off::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Optional::On(s) => s.poll_ready(cx).map_err(Into::into),
            Optional::Off(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Optional::On(s) => OptionalFuture::on(s.call(req)),
            Optional::Off(s) => OptionalFuture::off(s.call(req)),
        }
    }
}

/// The service a [`PipelineLayer`](super::PipelineLayer) builds: the stack of strategies,
/// with errors as one [`PipelineError`].
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::pipeline::PipelineLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let svc = PipelineLayer::builder("echo")
///     .timeout(Duration::from_secs(1))
///     .build()?
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// assert_eq!(svc.oneshot(1).await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline<T> {
    pub(crate) stack: T,
}

impl<T> Pipeline<T> {
    /// The stack of strategies inside.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// use tower::{Layer, service_fn};
    /// let pipeline = PipelineLayer::builder("inventory").timeout(Duration::from_secs(1)).build()?;
    /// let svc = pipeline.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let _stack = svc.get_ref(); // the composed strategies around the service
    /// assert!(pipeline.bulkhead().is_none());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &T {
        &self.stack
    }
}

impl<T, Req> Service<Req> for Pipeline<T>
where
    T: Service<Req>,
    T::Error: Into<BoxError>,
{
    type Response = T::Response;
    type Error = PipelineError;
    type Future = ResponseFuture<T::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.stack
            .poll_ready(cx)
            .map_err(|e| PipelineError::from(e.into()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.stack.call(req))
    }
}
