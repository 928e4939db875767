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
    pub const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<F> TimeoutLayer<PerRequest<F>> {
    /// Each call gets the timeout `f(&request)` returns.
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
