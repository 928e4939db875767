//! The layer (config and the shared breaker) and its builder.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::{AllErrorsAreFailures, CircuitBreaker, CircuitBreakerHandle};
use crate::ConfigError;
use crate::backoff::Backoff;

/// Applies one circuit breaker to services.
///
/// The layer holds the breaker itself (behind a [`CircuitBreakerHandle`]): every service
/// it wraps, and every clone of the layer, shares that breaker, as tower's
/// `GlobalConcurrencyLimitLayer` shares its semaphore. Build a second layer for an
/// independent breaker.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let breaker = CircuitBreakerLayer::builder("users-db")
///     .count_window(50)
///     .failure_rate_threshold(40.0)
///     .wait_in_open(Duration::from_secs(10))
///     .build()?;
/// let svc = ServiceBuilder::new()
///     .layer(breaker.clone())
///     .service(service_fn(|id: u64| async move { Ok::<_, std::io::Error>(id * 2) }));
/// assert_eq!(svc.oneshot(21).await?, 42);
/// assert_eq!(breaker.handle().metrics().calls, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = AllErrorsAreFailures> {
    handle: CircuitBreakerHandle,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Starts a builder for a breaker called `name` (used in errors, events and metrics).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// assert_eq!(layer.handle().name(), "orders");
    /// assert_eq!(layer.handle().config().failure_rate_threshold, 50.0); // the default
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: name.into(),
            config: CircuitBreakerConfig::default(),
            classifier: AllErrorsAreFailures,
        }
    }

    /// A breaker from plain-data settings (e.g. a config file), validated.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let mut cfg = CircuitBreakerConfig::default();
    /// cfg.failure_rate_threshold = 140.0;
    /// assert!(CircuitBreakerLayer::from_config("x", cfg).is_err());
    /// ```
    pub fn from_config(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
    ) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The handle on the shared breaker: state, metrics, forcing, events.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// let handle = layer.handle().clone(); // for a health endpoint or an admin API
    /// handle.force_open();
    /// assert!(!handle.state().admits_calls());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn handle(&self) -> &CircuitBreakerHandle {
        &self.handle
    }

    /// The same breaker with another classification (for a second service whose
    /// responses say "failure" differently).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::Outcome;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").build()?;
    /// // The same breaker for a second client whose 503s are failures too.
    /// let http = layer.with_classifier(|r: &Result<u16, std::io::Error>| match r {
    ///     Ok(503) | Err(_) => Outcome::Failure,
    ///     Ok(_) => Outcome::Success,
    /// });
    /// assert_eq!(http.handle().name(), layer.handle().name());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn with_classifier<C2>(&self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            handle: self.handle.clone(),
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.handle.clone(), self.classifier.clone())
    }
}

/// Builds a [`CircuitBreakerLayer`]; every setter documents its default. Validation
/// happens in [`build`](Self::build).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::{backoff::Backoff, circuit_breaker::CircuitBreakerLayer};
///
/// let layer = CircuitBreakerLayer::builder("orders")
///     .time_window(Duration::from_secs(30))
///     .minimum_calls(10)
///     .failure_rate_threshold(50.0)
///     .slow_call_duration(Duration::from_secs(2))
///     .slow_call_rate_threshold(80.0)
///     .wait_in_open_backoff(
///         Backoff::exponential(Duration::from_secs(5)).with_max_delay(Duration::from_secs(120)),
///     )
///     .half_open_probes(5)
///     .build()?;
/// assert_eq!(layer.handle().name(), "orders");
///
/// let err = CircuitBreakerLayer::builder("bad").failure_rate_threshold(140.0).build();
/// assert!(err.is_err());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerBuilder<C = AllErrorsAreFailures> {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    classifier: C,
}

impl<C> CircuitBreakerBuilder<C> {
    /// Replaces every setting with `config`'s.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerConfig;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let mut config = CircuitBreakerConfig::default(); // e.g. read from a file
    /// config.minimum_calls = 20;
    /// let layer = CircuitBreakerLayer::builder("orders").config(config).build()?;
    /// assert_eq!(layer.handle().config().minimum_calls, 20);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// Judges the last `size` calls. Default: 100.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::SlidingWindow;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").count_window(50).build()?;
    /// assert_eq!(layer.handle().config().window, SlidingWindow::Count { size: 50 });
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = SlidingWindow::Count { size };
        self
    }

    /// Judges the calls of the last `duration` (ten buckets). Default: a count window.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::SlidingWindow;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer =
    ///     CircuitBreakerLayer::builder("orders").time_window(Duration::from_secs(60)).build()?;
    /// assert!(matches!(layer.handle().config().window, SlidingWindow::Time { .. }));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn time_window(mut self, duration: Duration) -> Self {
        self.config.window = SlidingWindow::Time { duration };
        self
    }

    /// Opens at this failure rate, in percent, `(0, 100]`. Default 50.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").failure_rate_threshold(25.0).build()?;
    /// assert_eq!(layer.handle().config().failure_rate_threshold, 25.0);
    /// assert!(CircuitBreakerLayer::builder("x").failure_rate_threshold(0.0).build().is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Calls at least this long are slow. Default: slow calls are not judged.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders")
    ///     .slow_call_duration(Duration::from_millis(800))
    ///     .build()?;
    /// assert_eq!(layer.handle().config().slow_call_duration, Some(Duration::from_millis(800)));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// Opens at this slow-call rate, in percent, `(0, 100]`. Default 100.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders")
    ///     .slow_call_duration(Duration::from_secs(1))
    ///     .slow_call_rate_threshold(60.0)
    ///     .build()?;
    /// assert_eq!(layer.handle().config().slow_call_rate_threshold, 60.0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// No judgement before the window holds this many calls. Default 20.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").minimum_calls(5).build()?;
    /// assert_eq!(layer.handle().config().minimum_calls, 5);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Opens after `failures` failures in a row instead of judging rates. Default: off.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").consecutive_failures(3).build()?;
    /// assert_eq!(layer.handle().config().consecutive_failures, Some(3));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// Stays open this long before probing, every time. Default 30 s.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer =
    ///     CircuitBreakerLayer::builder("orders").wait_in_open(Duration::from_secs(15)).build()?;
    /// assert_eq!(layer.handle().config().wait_in_open.base(), Duration::from_secs(15));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = Backoff::constant(wait);
        self
    }

    /// Stays open `backoff.nominal_delay(n)` after the n-th opening in a row (reopenings
    /// after failed probes wait longer with an exponential backoff). Jitter is not applied.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let backoff =
    ///     Backoff::exponential(Duration::from_secs(5)).with_max_delay(Duration::from_secs(300));
    /// let layer = CircuitBreakerLayer::builder("orders").wait_in_open_backoff(backoff).build()?;
    /// let wait = &layer.handle().config().wait_in_open;
    /// assert_eq!(wait.max_delay(), Some(Duration::from_secs(300)));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn wait_in_open_backoff(mut self, backoff: Backoff) -> Self {
        self.config.wait_in_open = backoff;
        self
    }

    /// Lets this many probes through while half-open. Default 3.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("orders").half_open_probes(3).build()?;
    /// assert_eq!(layer.handle().config().half_open_probes, 3);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Decides which results count as failures (default: every `Err`).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::Outcome;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// // Client errors (4xx) are the caller's fault, not the dependency's.
    /// let layer = CircuitBreakerLayer::builder("api")
    ///     .classify(|r: &Result<u16, std::io::Error>| match r {
    ///         Ok(status) if *status >= 500 => Outcome::Failure,
    ///         Ok(_) => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     })
    ///     .build()?;
    /// assert_eq!(layer.handle().name(), "api");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            name: self.name,
            config: self.config,
            classifier,
        }
    }

    /// Validates the settings and builds the breaker.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// assert!(CircuitBreakerLayer::builder("ok").build().is_ok());
    /// // Invalid settings are reported here, never as a panic later.
    /// assert!(CircuitBreakerLayer::builder("bad").half_open_probes(0).build().is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        self.config.validate()?;
        Ok(CircuitBreakerLayer {
            handle: CircuitBreakerHandle::new_unchecked(self.name, self.config),
            classifier: self.classifier,
        })
    }

    /// Validates the settings and builds a partitioned breaker: one breaker per key, the
    /// key computed from each request by `key`. See
    /// [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// struct Call { host: &'static str }
    /// let layer = CircuitBreakerLayer::builder("hosts").build_keyed(|c: &Call| c.host)?;
    /// assert!(layer.handle().get(&"a.example").is_none()); // created on first sight
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build_keyed<Req, K, F>(
        self,
        key: F,
    ) -> Result<super::KeyedCircuitBreakerLayer<K, F, C>, ConfigError>
    where
        F: Fn(&Req) -> K,
    {
        self.config.validate()?;
        Ok(super::KeyedCircuitBreakerLayer::new(
            self.name,
            self.config,
            key,
            self.classifier,
        ))
    }
}
