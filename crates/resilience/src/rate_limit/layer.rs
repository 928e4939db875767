use tower_layer::Layer;

use super::{RateLimit, RateLimiter};

/// Applies a shared [`RateLimiter`] to a service.
///
/// ```rust
/// use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
///
/// let limiter = RateLimiter::builder("partner-api").build()?;
/// let layer = RateLimitLayer::new(limiter);
/// # let _ = layer;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// A layer drawing from `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}
