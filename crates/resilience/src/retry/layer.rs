use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::policy::{
    CloneRequest, Listener, RebuildRequest, RestoreRequest, RetryEvent, RetryOnError,
};
use super::{Retry, RetryBudget};
use crate::ConfigError;
use crate::backoff::Backoff;

/// The configuration a [`Retry`] service and all its clones share.
pub(crate) struct Policy<C, P> {
    pub(crate) name: Arc<str>,
    pub(crate) classify: C,
    pub(crate) replay: P,
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) listeners: Vec<Listener>,
}

impl<C, P> Policy<C, P> {
    pub(crate) fn emit(&self, event: RetryEvent<'_>) {
        match event {
            RetryEvent::Retrying { attempt, delay, .. } => {
                crate::telemetry::retry_scheduled(&self.name, attempt, delay);
            }
            RetryEvent::GaveUp {
                attempts, reason, ..
            } => crate::telemetry::retries_exhausted(&self.name, attempts, reason.as_str()),
        }
        for listener in &self.listeners {
            listener(&event);
        }
    }
}

/// Applies a [`Retry`] to a service. Cheap to clone: the policy sits behind one `Arc`.
///
/// Build it with [`RetryLayer::builder`]; the builder validates the configuration.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::{Backoff, Jitter};
/// use palisade_resilience::retry::RetryLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let counter = calls.clone();
/// let flaky = service_fn(move |_: ()| {
///     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move { if n < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
/// });
/// let retry = RetryLayer::builder()
///     .max_attempts(4)
///     .backoff(Backoff::exponential(Duration::from_millis(20)).with_jitter(Jitter::Equal))
///     .build()?;
/// assert_eq!(retry.layer(flaky).oneshot(()).await?, 2); // third attempt succeeded
/// # Ok(()) }
/// ```
pub struct RetryLayer<C = RetryOnError, P = CloneRequest> {
    policy: Arc<Policy<C, P>>,
}

impl<C, P> Clone for RetryLayer<C, P> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
        }
    }
}

impl<C, P> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.policy.name)
            .field("max_attempts", &self.policy.max_attempts)
            .field("max_elapsed", &self.policy.max_elapsed)
            .field("backoff", &self.policy.backoff)
            .field("budget", &self.policy.budget.is_some())
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A builder that retries errors (never responses), clones requests, makes at most 3
    /// attempts and waits the default [`Backoff`] between them.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// // 3 attempts by default.
    /// let retry =
    ///     RetryLayer::builder().backoff(Backoff::constant(Duration::from_millis(10))).build()?;
    /// assert_eq!(retry.layer(flaky).oneshot(7).await?, 7);
    /// assert_eq!(calls.load(Ordering::SeqCst), 3);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> RetryBuilder<RetryOnError, CloneRequest> {
        RetryBuilder {
            name: Arc::from("retry"),
            classify: RetryOnError,
            replay: CloneRequest,
            max_attempts: 3,
            max_elapsed: None,
            backoff: Backoff::default(),
            budget: None,
            listeners: Vec::new(),
        }
    }
}

impl<C, P> RetryLayer<C, P> {
    /// The policy's name, as used in events.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    ///
    /// assert_eq!(RetryLayer::builder().name("users-api").build()?.name(), "users-api");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.policy.name
    }
}

impl<S, C, P> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_policy(inner, self.policy.clone())
    }
}

/// Builds a [`RetryLayer`]; every setter names its default.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::retry::{RetryBudget, RetryLayer};
///
/// let budget = RetryBudget::builder().retry_ratio(0.1).build()?; // shared by services
/// let retry = RetryLayer::builder()
///     .name("inventory")
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(2))
///     .budget(budget.clone())
///     .build()?;
/// assert_eq!(retry.name(), "inventory");
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub struct RetryBuilder<C, P> {
    name: Arc<str>,
    classify: C,
    replay: P,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    backoff: Backoff,
    budget: Option<Arc<RetryBudget>>,
    listeners: Vec<Listener>,
}

impl<C, P> fmt::Debug for RetryBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<C, P> RetryBuilder<C, P> {
    /// Names the policy in events and metrics (default `"retry"`).
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    ///
    /// // The name labels the retry's events and metrics.
    /// let retry = RetryLayer::builder().name("inventory").build()?;
    /// assert_eq!(retry.name(), "inventory");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most attempts, the first call included (default 3). Must be at least 1.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::RetriesExhausted;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(2)
    ///     .backoff(Backoff::constant(Duration::from_millis(10)))
    ///     .build()?;
    /// let error = retry.layer(flaky).oneshot(7).await.expect_err("two attempts are not enough");
    /// assert_eq!(error.downcast_ref::<RetriesExhausted>().map(|e| e.attempts()), Some(2));
    /// # Ok(()) }
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// No retry is started whose wait would end more than `d` after the first call
    /// began (default: no limit). Bound each attempt with a timeout inside the retry to
    /// bound the total.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted};
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(10)
    ///     .backoff(Backoff::constant(Duration::from_secs(1)))
    ///     .max_elapsed(Duration::from_millis(1500)) // room for one retry only
    ///     .build()?;
    /// let error = retry.layer(flaky).oneshot(7).await.expect_err("out of time");
    /// let exhausted = error.downcast_ref::<RetriesExhausted>().expect("gave up");
    /// assert_eq!(exhausted.reason(), GiveUpReason::MaxElapsed);
    /// # Ok(()) }
    /// ```
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// The delays between attempts (default [`Backoff::default`]: exponential from 100 ms,
    /// capped at 10 s, full jitter). A [`RetryDecision::RetryAfter`](super::RetryDecision)
    /// overrides it for one attempt.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// let started = tokio::time::Instant::now();
    /// let retry =
    ///     RetryLayer::builder().backoff(Backoff::constant(Duration::from_millis(100))).build()?;
    /// retry.layer(flaky).oneshot(7).await?;
    /// assert_eq!(started.elapsed(), Duration::from_millis(200)); // two waits, paused clock
    /// # Ok(()) }
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Draws every retry from a shared [`RetryBudget`] (default: none).
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::{GiveUpReason, RetriesExhausted, RetryBudget};
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// // An empty budget (no floor, nothing earned): the first failure is final. Shared by
    /// // every client of a dependency, a budget stops retry storms.
    /// let budget = RetryBudget::builder().min_per_sec(0).retry_ratio(0.0).max_balance(1).build()?;
    /// assert_eq!(budget.balance(), 0);
    /// let retry = RetryLayer::builder()
    ///     .budget(budget)
    ///     .backoff(Backoff::constant(Duration::from_millis(10)))
    ///     .build()?;
    /// let error = retry.layer(flaky).oneshot(7).await.expect_err("no budget");
    /// let reason = error.downcast_ref::<RetriesExhausted>().map(|e| e.reason());
    /// assert_eq!(reason, Some(GiveUpReason::BudgetExhausted));
    /// # Ok(()) }
    /// ```
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Calls `listener` on every retry and every give-up.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::RetryEvent;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// let retries = Arc::new(AtomicU32::new(0));
    /// let seen = Arc::clone(&retries);
    /// let retry = RetryLayer::builder()
    ///     .on_event(move |event| {
    ///         if let RetryEvent::Retrying { .. } = event {
    ///             seen.fetch_add(1, Ordering::SeqCst);
    ///         }
    ///     })
    ///     .backoff(Backoff::constant(Duration::from_millis(10)))
    ///     .build()?;
    /// retry.layer(flaky).oneshot(7).await?;
    /// assert_eq!(retries.load(Ordering::SeqCst), 2);
    /// # Ok(()) }
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Decides from the request and the whole outcome whether to retry
    /// (default [`RetryOnError`]).
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::RetryDecision;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// // Never retry: e.g. for a request that is not idempotent.
    /// let retry = RetryLayer::builder()
    ///     .classify(|_: &u32, _: &Result<u32, std::io::Error>| RetryDecision::DoNotRetry)
    ///     .build()?;
    /// assert!(retry.layer(flaky).oneshot(7).await.is_err());
    /// assert_eq!(calls.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn classify<C2>(self, classify: C2) -> RetryBuilder<C2, P> {
        RetryBuilder {
            name: self.name,
            classify,
            replay: self.replay,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            backoff: self.backoff,
            budget: self.budget,
            listeners: self.listeners,
        }
    }

    /// Replays requests through `replay` instead of cloning them.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::retry::RebuildRequest;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// // Rebuild the request for each attempt (here: the same number) instead of cloning it.
    /// let retry = RetryLayer::builder()
    ///     .replay(RebuildRequest(|n: &u32| Some(*n)))
    ///     .backoff(Backoff::constant(Duration::from_millis(10)))
    ///     .build()?;
    /// assert_eq!(retry.layer(flaky).oneshot(7).await?, 7);
    /// # Ok(()) }
    /// ```
    pub fn replay<P2>(self, replay: P2) -> RetryBuilder<C, P2> {
        RetryBuilder {
            name: self.name,
            classify: self.classify,
            replay,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            backoff: self.backoff,
            budget: self.budget,
            listeners: self.listeners,
        }
    }

    /// Replays requests that are not `Clone` by rebuilding them:
    /// `Fn(&Req) -> Option<Req>`.
    ///
    /// ```rust
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // A dependency that fails its first two calls.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&calls);
    /// let flaky = service_fn(move |n: u32| {
    ///     let call = counter.fetch_add(1, Ordering::SeqCst);
    ///     async move { if call < 2 { Err(std::io::Error::other("reset")) } else { Ok(n) } }
    /// });
    /// let retry = RetryLayer::builder()
    ///     .rebuild_with(|n: &u32| Some(*n))
    ///     .backoff(Backoff::constant(Duration::from_millis(10)))
    ///     .build()?;
    /// assert_eq!(retry.layer(flaky).oneshot(7).await?, 7);
    /// # Ok(()) }
    /// ```
    pub fn rebuild_with<F>(self, f: F) -> RetryBuilder<C, RebuildRequest<F>> {
        self.replay(RebuildRequest(f))
    }

    /// Replays requests that are not `Clone` by taking them back out of the failed
    /// outcome: `Fn(&mut Result<Res, E>) -> Option<Req>`.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    ///
    /// // The service hands the request back inside its error (a body that cannot be cloned).
    /// struct Failed { request: Vec<u8> }
    /// let retry = RetryLayer::builder()
    ///     .restore_with(|outcome: &mut Result<(), Failed>| {
    ///         outcome.as_mut().err().map(|failed| std::mem::take(&mut failed.request))
    ///     })
    ///     .build()?;
    /// assert_eq!(retry.name(), "retry");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn restore_with<F>(self, f: F) -> RetryBuilder<C, RestoreRequest<F>> {
        self.replay(RestoreRequest(f))
    }

    /// Validates and builds the layer.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    ///
    /// assert!(RetryLayer::builder().build().is_ok());
    /// // A config error, not a panic.
    /// assert!(RetryLayer::builder().max_attempts(0).build().is_err());
    /// ```
    pub fn build(self) -> Result<RetryLayer<C, P>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Zero {
                field: "max_attempts",
            });
        }
        if self.max_elapsed == Some(Duration::ZERO) {
            return Err(ConfigError::Zero {
                field: "max_elapsed",
            });
        }
        self.backoff.validate()?;
        Ok(RetryLayer {
            policy: Arc::new(Policy {
                name: self.name,
                classify: self.classify,
                replay: self.replay,
                max_attempts: self.max_attempts,
                max_elapsed: self.max_elapsed,
                backoff: self.backoff,
                budget: self.budget,
                listeners: self.listeners,
            }),
        })
    }
}
