use std::time::Duration;

use tower_layer::Layer;

use super::service::{PerRequest, Timeout};

/// Applies a [`Timeout`] to a service: fixed, or computed from each request.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::timeout::TimeoutLayer;
///
/// let fixed = TimeoutLayer::new(Duration::from_secs(2));
/// let per_request = TimeoutLayer::per_request(|req: &Duration| *req);
/// # let _ = (fixed, per_request);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer<D = Duration> {
    timeout: D,
}

impl TimeoutLayer<Duration> {
    /// Every call gets `timeout`. A zero timeout fails every call that is not complete on
    /// its first poll.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::{TimeoutLayer, Elapsed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let slow = service_fn(|_: ()| async {
    ///     tokio::time::sleep(Duration::from_secs(5)).await;
    ///     Ok::<_, std::io::Error>("late")
    /// });
    /// let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(slow);
    /// let error = svc.oneshot(()).await.expect_err("too slow");
    /// assert!(error.is::<Elapsed>());
    /// # Ok(()) }
    /// ```
    pub const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<F> TimeoutLayer<PerRequest<F>> {
    /// Each call gets the timeout `f(&request)` returns.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::{TimeoutLayer, Elapsed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let slow = service_fn(|_: ()| async {
    ///     tokio::time::sleep(Duration::from_secs(5)).await;
    ///     Ok::<_, std::io::Error>("late")
    /// });
    /// // The limit from the request itself (here: none given, so 2 s).
    /// let layer = TimeoutLayer::per_request(|_: &()| Duration::from_secs(2));
    /// let error = layer.layer(slow).oneshot(()).await.expect_err("too slow");
    /// let elapsed = error.downcast_ref::<Elapsed>().map(Elapsed::duration);
    /// assert_eq!(elapsed, Some(Duration::from_secs(2)));
    /// # Ok(()) }
    /// ```
    pub const fn per_request(f: F) -> Self {
        Self {
            timeout: PerRequest(f),
        }
    }
}

impl<S, D: Clone> Layer<S> for TimeoutLayer<D> {
    type Service = Timeout<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout.clone())
    }
}
