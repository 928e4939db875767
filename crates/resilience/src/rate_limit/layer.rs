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
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
    /// use tower::{Layer, service_fn};
    ///
    /// let limiter = RateLimiter::builder("sms").rate(5, Duration::from_secs(1)).build()?;
    /// // Every service built by this layer draws from the same allowance.
    /// let layer = RateLimitLayer::new(limiter);
    /// let _svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// assert_eq!(layer.limiter().name(), "sms");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }

    /// The shared limiter.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
    /// use tower::{Layer, service_fn};
    ///
    /// let limiter = RateLimiter::builder("sms").rate(5, Duration::from_secs(1)).build()?;
    /// let layer = RateLimitLayer::new(limiter);
    /// assert!(layer.limiter().try_acquire().is_ok()); // a slot taken outside tower
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
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
