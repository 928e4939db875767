use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use crate::BoxError;

/// Chooses the timeout of one call.
///
/// Implemented for [`Duration`] (the same for every call) and for [`PerRequest`]
/// (computed from the request).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::timeout::CallTimeout;
///
/// // A fixed `Duration` is a `CallTimeout` for any request.
/// let fixed = Duration::from_secs(2);
/// assert_eq!(CallTimeout::<&str>::timeout_for(&fixed, &"GET /"), Duration::from_secs(2));
/// ```
pub trait CallTimeout<Req> {
    /// The timeout for `req`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::{CallTimeout, PerRequest};
    ///
    /// // Reports may take longer than lookups.
    /// let by_path = PerRequest(|path: &&str| {
    ///     let secs = if path.starts_with("/reports") { 30 } else { 2 };
    ///     Duration::from_secs(secs)
    /// });
    /// assert_eq!(by_path.timeout_for(&"/reports/q3"), Duration::from_secs(30));
    /// ```
    fn timeout_for(&self, req: &Req) -> Duration;
}

impl<Req> CallTimeout<Req> for Duration {
    #[inline]
    fn timeout_for(&self, _: &Req) -> Duration {
        *self
    }
}

/// A timeout computed from each request by a closure `Fn(&Req) -> Duration`.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::timeout::TimeoutLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // Reports may take 30 s, everything else 1 s.
/// let layer = TimeoutLayer::per_request(|path: &&str| {
///     Duration::from_secs(if path.starts_with("/reports") { 30 } else { 1 })
/// });
/// let slow = service_fn(|_: &str| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::io::Error>("done")
/// });
/// assert_eq!(layer.layer(slow).oneshot("/reports/q3").await.unwrap(), "done");
/// assert!(layer.layer(slow).oneshot("/users").await.is_err());
/// # }
/// ```
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
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::timeout::Timeout;
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let echo = service_fn(|s: &'static str| async move { Ok::<_, std::io::Error>(s) });
/// let svc = Timeout::new(echo, Duration::from_secs(1)); // what TimeoutLayer builds
/// assert_eq!(svc.oneshot("hi").await?, "hi");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Timeout<S, D = Duration> {
    inner: S,
    timeout: D,
}

impl<S, D> Timeout<S, D> {
    /// Wraps `inner`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::Timeout;
    /// use tower::{ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let echo = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// let svc = Timeout::new(echo, Duration::from_millis(100));
    /// assert_eq!(svc.oneshot(7).await?, 7);
    /// # Ok(()) }
    /// ```
    pub const fn new(inner: S, timeout: D) -> Self {
        Self { inner, timeout }
    }

    /// The wrapped service.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::Timeout;
    /// use tower::{ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let echo = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// let svc = Timeout::new(echo, Duration::from_millis(100));
    /// let inner = svc.get_ref().clone();
    /// assert_eq!(inner.oneshot(7).await?, 7); // without the timeout
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::Timeout;
    /// use tower::{ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let echo = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// let inner = Timeout::new(echo, Duration::from_millis(100)).into_inner();
    /// assert_eq!(inner.oneshot(7).await?, 7);
    /// # Ok(()) }
    /// ```
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
