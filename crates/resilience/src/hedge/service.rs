//! The hedging service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::ResponseFuture;
use super::layer::Shared;
use crate::BoxError;

/// A service that hedges slow requests; built by [`HedgeLayer`](super::HedgeLayer).
///
/// The original attempt goes to this service (so `poll_ready` is the inner service's);
/// each hedge goes to a clone of it, which the hedge waits to be ready.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::hedge::HedgeLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let svc = HedgeLayer::fixed(Duration::from_millis(10))
///     .build()?
///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
/// assert_eq!(svc.oneshot(1).await?, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Hedge<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// use tower::{Layer, service_fn};
    /// let layer = HedgeLayer::fixed(Duration::from_millis(20)).build()?;
    /// let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// let _inner = svc.get_ref(); // the wrapped service
    /// assert_eq!(layer.hedges_sent(), 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for Hedge<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.shared.note_request();
        let spare = self.inner.clone();
        let copy = req.clone();
        let primary = self.inner.call(req);
        ResponseFuture::new(primary, spare, copy, self.shared.clone())
    }
}
