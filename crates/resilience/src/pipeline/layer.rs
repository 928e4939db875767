use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::{PipelineConfig, RetryConfig};
use super::{Optional, Pipeline};
use crate::BoxError;
use crate::ConfigError;
use crate::bulkhead::{Bulkhead, BulkheadLayer, BulkheadService};
use crate::circuit_breaker::{
    AllErrorsAreFailures, CircuitBreaker, CircuitBreakerLayer, CircuitOpen,
};
use crate::rate_limit::{RateLimit, RateLimitLayer, RateLimited, RateLimiter};
use crate::retry::{
    Classify, CloneRequest, Retry, RetryBudget, RetryDecision, RetryEvent, RetryLayer,
};
use crate::timeout::{Timeout, TimeoutLayer};

/// The pipeline's default retry classification: retry every error except an open
/// circuit (retrying it only adds calls the breaker will refuse); after a
/// [`RateLimited`], wait its `retry_after`; never retry a response.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::pipeline::RetryErrorsExceptOpenCircuit;
/// use palisade_resilience::retry::{Classify, RetryDecision};
///
/// let reset: Result<(), BoxError> = Err(std::io::Error::other("reset").into());
/// assert_eq!(RetryErrorsExceptOpenCircuit.classify(&(), &reset), RetryDecision::Retry);
/// let ok = Ok::<(), BoxError>(());
/// assert_eq!(RetryErrorsExceptOpenCircuit.classify(&(), &ok), RetryDecision::DoNotRetry);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryErrorsExceptOpenCircuit;

impl<Req, Res> Classify<Req, Res, BoxError> for RetryErrorsExceptOpenCircuit {
    fn classify(&self, _: &Req, outcome: &Result<Res, BoxError>) -> RetryDecision {
        match outcome {
            Ok(_) => RetryDecision::DoNotRetry,
            Err(e) if e.is::<CircuitOpen>() => RetryDecision::DoNotRetry,
            Err(e) => match e.downcast_ref::<RateLimited>() {
                Some(limited) => RetryDecision::RetryAfter(limited.retry_after()),
                None => RetryDecision::Retry,
            },
        }
    }
}

/// Per-attempt timeout (innermost).
///
/// ```rust
/// use palisade_resilience::pipeline::{AttemptTimeout, Optional};
///
/// // A pipeline left this strategy out: the alias names the unwrapped service as well.
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let off: AttemptTimeout<_> = Optional::Off(echo);
/// # let _ = off;
/// ```
pub type AttemptTimeout<S> = Optional<Timeout<S>, S>;
/// Bulkhead around the attempt.
///
/// ```rust
/// use palisade_resilience::pipeline::{WithBulkhead, Optional};
///
/// // A pipeline left this strategy out: the alias names the unwrapped service as well.
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let off: WithBulkhead<_> = Optional::Off(Optional::Off(echo));
/// # let _ = off;
/// ```
pub type WithBulkhead<S> = Optional<BulkheadService<AttemptTimeout<S>>, AttemptTimeout<S>>;
/// Rate limit outside the bulkhead.
///
/// ```rust
/// use palisade_resilience::pipeline::{WithRateLimit, Optional};
///
/// // A pipeline left this strategy out: the alias names the unwrapped service as well.
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let off: WithRateLimit<_> = Optional::Off(Optional::Off(Optional::Off(echo)));
/// # let _ = off;
/// ```
pub type WithRateLimit<S> = Optional<RateLimit<WithBulkhead<S>>, WithBulkhead<S>>;
/// Circuit breaker outside the rate limit.
///
/// ```rust
/// use palisade_resilience::pipeline::{WithBreaker, Optional};
///
/// // A pipeline left this strategy out: the alias names the unwrapped service as well.
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let off: WithBreaker<_, palisade_resilience::circuit_breaker::AllErrorsAreFailures> =
///     Optional::Off(Optional::Off(Optional::Off(Optional::Off(echo))));
/// # let _ = off;
/// ```
pub type WithBreaker<S, B> = Optional<CircuitBreaker<WithRateLimit<S>, B>, WithRateLimit<S>>;
/// Retry outside the breaker.
///
/// ```rust
/// use palisade_resilience::pipeline::{WithRetry, Optional};
///
/// // A pipeline left this strategy out: the alias names the unwrapped service as well.
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let off: WithRetry<
///     _,
///     palisade_resilience::pipeline::RetryErrorsExceptOpenCircuit,
///     palisade_resilience::circuit_breaker::AllErrorsAreFailures,
/// > = Optional::Off(Optional::Off(Optional::Off(Optional::Off(Optional::Off(echo)))));
/// # let _ = off;
/// ```
pub type WithRetry<S, C, B> =
    Optional<Retry<WithBreaker<S, B>, C, CloneRequest>, WithBreaker<S, B>>;
/// The total timeout, outermost: the whole stack.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::bulkhead::Bulkhead;
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
/// use palisade_resilience::pipeline::{PipelineLayer, RetryConfig};
/// use tower::{Layer, ServiceExt, service_fn};
/// use palisade_resilience::pipeline::{Pipeline, Stack};
///
/// // The service a pipeline builds, named (e.g. to store it in a struct).
/// type Inner = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::io::Error>>>;
/// fn echo(x: u32) -> std::future::Ready<Result<u32, std::io::Error>> { std::future::ready(Ok(x)) }
/// let layer = PipelineLayer::builder("echo").timeout(Duration::from_secs(1)).build()?;
/// let svc: Pipeline<Stack<Inner, _, _>> = layer.layer(service_fn(echo as fn(u32) -> _));
/// # let _ = svc;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub type Stack<S, C, B> = Optional<Timeout<WithRetry<S, C, B>>, WithRetry<S, C, B>>;

/// Stacks timeout, bulkhead, rate limit, circuit breaker, retry and total timeout in the
/// documented order (see the [module docs](super)). Build it with
/// [`PipelineLayer::builder`]; every strategy is optional.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::bulkhead::Bulkhead;
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
/// use palisade_resilience::pipeline::{PipelineLayer, RetryConfig};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let pipeline = PipelineLayer::builder("inventory")
///     .timeout(Duration::from_millis(300)) // per attempt
///     .total_timeout(Duration::from_secs(2))
///     .retry(RetryConfig { max_attempts: 3, ..RetryConfig::default() })
///     .circuit_breaker(CircuitBreakerLayer::builder("inventory").build()?)
///     .bulkhead(Bulkhead::builder("inventory").max_concurrent(16).build()?)
///     .build_with_breaker()?;
/// let svc = pipeline.layer(service_fn(|sku: u32| async move { Ok::<_, std::io::Error>(sku) }));
/// assert_eq!(svc.oneshot(42).await?, 42);
/// assert!(pipeline.circuit_breaker().is_some());
/// # Ok(()) }
/// ```
pub struct PipelineLayer<C = RetryErrorsExceptOpenCircuit, B = AllErrorsAreFailures> {
    total_timeout: Option<Duration>,
    retry: Option<RetryLayer<C, CloneRequest>>,
    breaker: Option<CircuitBreakerLayer<B>>,
    rate_limit: Option<RateLimitLayer>,
    bulkhead: Option<BulkheadLayer>,
    timeout: Option<Duration>,
}

impl<C, B: Clone> Clone for PipelineLayer<C, B> {
    fn clone(&self) -> Self {
        Self {
            total_timeout: self.total_timeout,
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            rate_limit: self.rate_limit.clone(),
            bulkhead: self.bulkhead.clone(),
            timeout: self.timeout,
        }
    }
}

impl<C, B: fmt::Debug> fmt::Debug for PipelineLayer<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineLayer")
            .field("total_timeout", &self.total_timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit)
            .field("bulkhead", &self.bulkhead)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PipelineLayer {
    /// A builder for a pipeline called `name` (the name of its retry policy, breaker,
    /// rate limiter and bulkhead when they are built from config).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// // Nothing configured: a pass-through (every policy is opt-in).
    /// let pipeline = PipelineLayer::builder("inventory").build()?;
    /// assert!(pipeline.circuit_breaker().is_none() && pipeline.bulkhead().is_none());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn builder(name: impl Into<Arc<str>>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            config: PipelineConfig::default(),
            classify: RetryErrorsExceptOpenCircuit,
            breaker: None,
            budget: None,
            bulkhead: None,
            rate_limiter: None,
            listeners: Vec::new(),
        }
    }
}

impl<C, B> PipelineLayer<C, B> {
    /// The breaker's handle, when the pipeline has one.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerConfig;
    /// use palisade_resilience::pipeline::PipelineConfig;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let mut config = PipelineConfig::default();
    /// config.circuit_breaker = Some(CircuitBreakerConfig::default());
    /// let pipeline = PipelineLayer::builder("inventory").config(config).build()?;
    /// assert_eq!(pipeline.circuit_breaker().map(|b| b.handle().name()), Some("inventory"));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerLayer<B>> {
        self.breaker.as_ref()
    }

    /// The bulkhead's handle, when the pipeline has one.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::bulkhead::Bulkhead;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let bulkhead = Bulkhead::builder("inventory").max_concurrent(4).build()?;
    /// let pipeline = PipelineLayer::builder("inventory").bulkhead(bulkhead).build()?;
    /// assert_eq!(pipeline.bulkhead().map(Bulkhead::max_concurrent), Some(4));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.bulkhead.as_ref().map(BulkheadLayer::bulkhead)
    }

    /// The rate limiter's handle, when the pipeline has one.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let limiter = RateLimiter::builder("inventory").rate(50, Duration::from_secs(1)).build()?;
    /// let pipeline = PipelineLayer::builder("inventory").rate_limiter(limiter).build()?;
    /// assert_eq!(pipeline.rate_limiter().map(RateLimiter::name), Some("inventory"));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limit.as_ref().map(RateLimitLayer::limiter)
    }
}

fn optional<L: Layer<S>, S>(layer: Option<&L>, inner: S) -> Optional<L::Service, S> {
    match layer {
        Some(l) => Optional::On(l.layer(inner)),
        None => Optional::Off(inner),
    }
}

impl<S, C, B: Clone> Layer<S> for PipelineLayer<C, B> {
    type Service = Pipeline<Stack<S, C, B>>;

    fn layer(&self, inner: S) -> Self::Service {
        let timeout = self.timeout.map(TimeoutLayer::new);
        let s = optional(timeout.as_ref(), inner);
        let s = optional(self.bulkhead.as_ref(), s);
        let s = optional(self.rate_limit.as_ref(), s);
        let s = optional(self.breaker.as_ref(), s);
        let s = optional(self.retry.as_ref(), s);
        let total = self.total_timeout.map(TimeoutLayer::new);
        Pipeline {
            stack: optional(total.as_ref(), s),
        }
    }
}

type RetryListener = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Builds a [`PipelineLayer`] from a [`PipelineConfig`] and shared handles.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::pipeline::PipelineLayer;
///
/// let pipeline = PipelineLayer::builder("search").timeout(Duration::from_secs(1)).build()?;
/// assert!(pipeline.bulkhead().is_none()); // only what was asked for is in the stack
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub struct PipelineBuilder<C = RetryErrorsExceptOpenCircuit, B = AllErrorsAreFailures> {
    name: Arc<str>,
    config: PipelineConfig,
    classify: C,
    breaker: Option<CircuitBreakerLayer<B>>,
    budget: Option<Arc<RetryBudget>>,
    bulkhead: Option<Bulkhead>,
    rate_limiter: Option<RateLimiter>,
    listeners: Vec<RetryListener>,
}

impl<C, B> fmt::Debug for PipelineBuilder<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C, B> PipelineBuilder<C, B> {
    /// Takes every policy from `config` (replacing earlier settings).
    ///
    /// ```rust
    /// use palisade_resilience::pipeline::{PipelineConfig, PipelineLayer};
    ///
    /// // Plain data, e.g. from the service's config file.
    /// let config: PipelineConfig =
    ///     serde_json::from_str(r#"{ "timeout": "250ms", "retry": { "max_attempts": 2 } }"#)?;
    /// let pipeline = PipelineLayer::builder("inventory").config(config).build()?;
    /// assert!(format!("{pipeline:?}").contains("timeout: Some(250ms)"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// A deadline on each attempt.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let pipeline =
    ///     PipelineLayer::builder("inventory").timeout(Duration::from_millis(100)).build()?;
    /// let hang = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
    /// let error = pipeline.layer(hang).oneshot(()).await.expect_err("timed out");
    /// assert!(matches!(error, PipelineError::Timeout(_)));
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.config.timeout = Some(d);
        self
    }

    /// A deadline on the whole call, retries included.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let pipeline =
    ///     PipelineLayer::builder("inventory").total_timeout(Duration::from_secs(2)).build()?;
    /// assert!(format!("{pipeline:?}").contains("total_timeout: Some(2s)"));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn total_timeout(mut self, d: Duration) -> Self {
        self.config.total_timeout = Some(d);
        self
    }

    /// Retries with these settings.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::pipeline::RetryConfig;
    /// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryConfig {
    ///     max_attempts: 2,
    ///     backoff: Backoff::constant(Duration::from_millis(1)),
    ///     ..RetryConfig::default()
    /// };
    /// let pipeline = PipelineLayer::builder("inventory").retry(retry).build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
    /// let error = pipeline.layer(down).oneshot(()).await.expect_err("gave up");
    /// assert!(matches!(error, PipelineError::RetriesExhausted(ref e) if e.attempts() == 2));
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.config.retry = Some(retry);
        self
    }

    /// Draws retries from a budget shared with other services (overrides the config's).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::RetryConfig;
    /// use palisade_resilience::retry::RetryBudget;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// // One budget for every client of this dependency.
    /// let budget = RetryBudget::builder().build()?;
    /// let pipeline = PipelineLayer::builder("inventory")
    ///     .retry(RetryConfig::default())
    ///     .retry_budget(budget)
    ///     .build()?;
    /// assert!(pipeline.bulkhead().is_none());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Calls `listener` on every retry and give-up.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::pipeline::RetryConfig;
    /// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let pipeline = PipelineLayer::builder("inventory")
    ///     .retry(RetryConfig {
    ///         max_attempts: 2,
    ///         backoff: Backoff::constant(Duration::from_millis(1)),
    ///         ..RetryConfig::default()
    ///     })
    ///     .on_retry(move |event| { let _ = tx.send(format!("{event:?}")); })
    ///     .build()?;
    /// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
    /// let _ = pipeline.layer(down).oneshot(()).await;
    /// assert_eq!(rx.try_iter().count(), 2); // one retry, one give-up
    /// # Ok(()) }
    /// ```
    pub fn on_retry(mut self, listener: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Uses this bulkhead (a handle shared with other services) instead of one from config.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::bulkhead::Bulkhead;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let shared = Bulkhead::builder("db").max_concurrent(10).build()?;
    /// // Two pipelines, one pool of 10 calls.
    /// let reads = PipelineLayer::builder("reads").bulkhead(shared.clone()).build()?;
    /// let writes = PipelineLayer::builder("writes").bulkhead(shared).build()?;
    /// assert_eq!(
    ///     reads.bulkhead().map(Bulkhead::available),
    ///     writes.bulkhead().map(Bulkhead::available)
    /// );
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Uses this rate limiter (shared) instead of one from config.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let limiter = RateLimiter::builder("sms").rate(1, Duration::from_secs(1)).build()?;
    /// let pipeline = PipelineLayer::builder("sms").rate_limiter(limiter).build()?;
    /// assert!(pipeline.rate_limiter().is_some());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Uses this circuit breaker (its handle shared) instead of one from config.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let breaker = CircuitBreakerLayer::builder("inventory").consecutive_failures(5).build()?;
    /// let pipeline = PipelineLayer::builder("inventory")
    ///     .circuit_breaker(breaker.clone())
    ///     .build_with_breaker()?;
    /// breaker.handle().force_open(); // the handle is shared with the pipeline
    /// assert!(pipeline.circuit_breaker().is_some_and(|b| !b.handle().state().admits_calls()));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn circuit_breaker<B2>(self, breaker: CircuitBreakerLayer<B2>) -> PipelineBuilder<C, B2> {
        PipelineBuilder {
            name: self.name,
            config: self.config,
            classify: self.classify,
            breaker: Some(breaker),
            budget: self.budget,
            bulkhead: self.bulkhead,
            rate_limiter: self.rate_limiter,
            listeners: self.listeners,
        }
    }

    /// Replaces the retry classification
    /// (default [`RetryErrorsExceptOpenCircuit`]); errors arrive as [`BoxError`] so the
    /// classifier can tell them apart by type.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::pipeline::RetryConfig;
    /// use palisade_resilience::retry::RetryDecision;
    /// use palisade_resilience::pipeline::{PipelineError, PipelineLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let counter = calls.clone();
    /// // Never retry (the requests are not idempotent), keep the rest of the stack.
    /// let pipeline = PipelineLayer::builder("payments")
    ///     .retry(RetryConfig::default())
    ///     .classify(|_: &(), _: &Result<(), BoxError>| RetryDecision::DoNotRetry)
    ///     .build()?;
    /// let down = service_fn(move |_: ()| {
    ///     counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ///     async { Err::<(), _>(std::io::Error::other("down")) }
    /// });
    /// assert!(pipeline.layer(down).oneshot(()).await.is_err());
    /// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn classify<C2>(self, classify: C2) -> PipelineBuilder<C2, B> {
        PipelineBuilder {
            name: self.name,
            config: self.config,
            classify,
            breaker: self.breaker,
            budget: self.budget,
            bulkhead: self.bulkhead,
            rate_limiter: self.rate_limiter,
            listeners: self.listeners,
        }
    }
}

impl<C> PipelineBuilder<C, AllErrorsAreFailures> {
    fn breaker_from_config(&mut self) -> Result<Option<CircuitBreakerLayer>, ConfigError> {
        if let Some(b) = self.breaker.take() {
            return Ok(Some(b));
        }
        match &self.config.circuit_breaker {
            Some(c) => CircuitBreakerLayer::from_config(self.name.clone(), c.clone())
                .map(Some)
                .map_err(|e| e.in_section("circuit_breaker")),
            None => Ok(None),
        }
    }

    /// Validates every section and builds the layer, with a circuit breaker from the
    /// config (or the one given).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::pipeline::RetryConfig;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let builder = PipelineLayer::builder("inventory").timeout(Duration::from_secs(1));
    /// assert!(builder.build().is_ok());
    /// let bad = RetryConfig { max_attempts: 0, ..RetryConfig::default() };
    /// let error = PipelineLayer::builder("inventory").retry(bad).build().expect_err("invalid");
    /// assert!(error.to_string().contains("retry"));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build(mut self) -> Result<PipelineLayer<C, AllErrorsAreFailures>, ConfigError> {
        let breaker = self.breaker_from_config()?;
        self.breaker = breaker;
        self.build_with_breaker()
    }
}

impl<C, B> PipelineBuilder<C, B> {
    /// Validates every section and builds the layer with the breaker given by
    /// [`circuit_breaker`](Self::circuit_breaker) (a config section for the breaker is
    /// ignored then).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use palisade_resilience::pipeline::PipelineLayer;
    ///
    /// let breaker = CircuitBreakerLayer::builder("inventory").build()?;
    /// let pipeline =
    ///     PipelineLayer::builder("inventory").circuit_breaker(breaker).build_with_breaker()?;
    /// assert!(pipeline.circuit_breaker().is_some());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build_with_breaker(self) -> Result<PipelineLayer<C, B>, ConfigError> {
        let c = &self.config;
        if c.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::Zero { field: "timeout" });
        }
        if c.total_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::Zero {
                field: "total_timeout",
            });
        }
        if let (Some(total), Some(attempt)) = (c.total_timeout, c.timeout)
            && total < attempt
        {
            return Err(ConfigError::BelowMinimum {
                field: "total_timeout",
                value: total,
                minimum_field: "timeout",
                minimum: attempt,
            });
        }
        let bulkhead = match (self.bulkhead, &c.bulkhead) {
            (Some(b), _) => Some(b),
            (None, Some(cfg)) => Some(
                Bulkhead::builder(self.name.clone())
                    .max_concurrent(cfg.max_concurrent)
                    .max_wait(cfg.max_wait)
                    .build()
                    .map_err(|e| e.in_section("bulkhead"))?,
            ),
            (None, None) => None,
        };
        let limiter = match (self.rate_limiter, &c.rate_limit) {
            (Some(l), _) => Some(l),
            (None, Some(cfg)) => {
                let mut b = RateLimiter::builder(self.name.clone())
                    .rate(cfg.rate, cfg.period)
                    .max_wait(cfg.max_wait);
                if let Some(burst) = cfg.burst {
                    b = b.burst(burst);
                }
                Some(b.build().map_err(|e| e.in_section("rate_limit"))?)
            }
            (None, None) => None,
        };
        let retry = match &c.retry {
            Some(cfg) => {
                let budget = match (self.budget, &cfg.budget) {
                    (Some(b), _) => Some(b),
                    (None, Some(bc)) => {
                        let mut b = RetryBudget::builder()
                            .retry_ratio(bc.retry_ratio)
                            .min_per_sec(bc.min_per_sec);
                        if let Some(max) = bc.max_balance {
                            b = b.max_balance(max);
                        }
                        Some(b.build().map_err(|e| e.in_section("retry"))?)
                    }
                    (None, None) => None,
                };
                let mut b = RetryLayer::builder()
                    .name(self.name.clone())
                    .classify(self.classify)
                    .max_attempts(cfg.max_attempts)
                    .backoff(cfg.backoff);
                if let Some(d) = cfg.max_elapsed {
                    b = b.max_elapsed(d);
                }
                if let Some(budget) = budget {
                    b = b.budget(budget);
                }
                for listener in self.listeners {
                    b = b.on_event(move |e| listener(e));
                }
                Some(b.build().map_err(|e| e.in_section("retry"))?)
            }
            None => None,
        };
        Ok(PipelineLayer {
            total_timeout: c.total_timeout,
            retry,
            breaker: self.breaker,
            rate_limit: limiter.map(RateLimitLayer::new),
            bulkhead: bulkhead.map(BulkheadLayer::new),
            timeout: c.timeout,
        })
    }
}
