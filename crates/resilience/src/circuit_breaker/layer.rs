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
    pub fn handle(&self) -> &CircuitBreakerHandle {
        &self.handle
    }

    /// The same breaker with another classification (for a second service whose
    /// responses say "failure" differently).
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
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// Judges the last `size` calls. Default: 100.
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = SlidingWindow::Count { size };
        self
    }

    /// Judges the calls of the last `duration` (ten buckets). Default: a count window.
    pub fn time_window(mut self, duration: Duration) -> Self {
        self.config.window = SlidingWindow::Time { duration };
        self
    }

    /// Opens at this failure rate, in percent, `(0, 100]`. Default 50.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Calls at least this long are slow. Default: slow calls are not judged.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// Opens at this slow-call rate, in percent, `(0, 100]`. Default 100.
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// No judgement before the window holds this many calls. Default 20.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Opens after `failures` failures in a row instead of judging rates. Default: off.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// Stays open this long before probing, every time. Default 30 s.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = Backoff::constant(wait);
        self
    }

    /// Stays open `backoff.nominal_delay(n)` after the n-th opening in a row (reopenings
    /// after failed probes wait longer with an exponential backoff). Jitter is not applied.
    pub fn wait_in_open_backoff(mut self, backoff: Backoff) -> Self {
        self.config.wait_in_open = backoff;
        self
    }

    /// Lets this many probes through while half-open. Default 3.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Decides which results count as failures (default: every `Err`).
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            name: self.name,
            config: self.config,
            classifier,
        }
    }

    /// Validates the settings and builds the breaker.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        self.config.validate()?;
        Ok(CircuitBreakerLayer {
            handle: CircuitBreakerHandle::new_unchecked(self.name, self.config),
            classifier: self.classifier,
        })
    }

    /// Validates the settings and builds a partitioned breaker: one breaker per key, the
    /// key computed from each request by `key`. See [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer).
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
