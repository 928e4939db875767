//! The hedge layer, its builder and its shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower_layer::Layer;

use super::Hedge;
use super::histogram::LatencyHistogram;
use crate::ConfigError;
use crate::retry::RetryBudget;

/// When to send a hedge.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::hedge::HedgeDelay;
///
/// let fixed = HedgeDelay::Fixed(Duration::from_millis(50));
/// let p95 = HedgeDelay::Percentile {
///     percentile: 95.0,
///     min_samples: 100,
///     until_known: Duration::from_millis(50),
/// };
/// assert_ne!(fixed, p95);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// Always after this long.
    Fixed(Duration),
    /// After the given latency percentile of recent successful calls (estimated from a
    /// small √2-bucket histogram, so within about 40 % above the true value), once
    /// `min_samples` were seen; `until_known` before that.
    Percentile {
        /// In `(0, 100)`, e.g. 95.
        percentile: f64,
        /// Calls to observe before trusting the estimate.
        min_samples: u32,
        /// The delay used until then.
        until_known: Duration,
    },
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) delay: HedgeDelay,
    pub(crate) max_hedges: u32,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) histogram: Option<LatencyHistogram>,
    pub(crate) hedges_sent: AtomicU64,
    pub(crate) hedges_won: AtomicU64,
}

impl Shared {
    pub(crate) fn current_delay(&self) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { until_known, .. } => self
                .histogram
                .as_ref()
                .and_then(LatencyHistogram::estimate)
                .unwrap_or(until_known),
        }
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        if let Some(h) = &self.histogram {
            h.record(latency);
        }
    }

    /// Takes a budget token for one hedge (always granted without a budget).
    pub(crate) fn may_hedge(&self) -> bool {
        self.budget.as_ref().is_none_or(|b| b.try_withdraw())
    }

    pub(crate) fn note_request(&self) {
        if let Some(b) = &self.budget {
            b.deposit();
        }
    }

    pub(crate) fn note_hedge_sent(&self) {
        self.hedges_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_hedge_won(&self) {
        self.hedges_won.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends a copy of a slow request to another replica and takes whichever answer comes
/// first; see the [module docs](super).
///
/// Clones share the delay histogram and counters.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::hedge::HedgeLayer;
///
/// let layer = HedgeLayer::fixed(Duration::from_millis(20)).max_hedges(2).build()?;
/// assert_eq!(layer.current_delay(), Duration::from_millis(20));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    shared: Arc<Shared>,
}

impl HedgeLayer {
    /// A builder hedging after a fixed delay.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // The first attempt is slow, the hedge fast.
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let counter = calls.clone();
    /// let replicas = service_fn(move |_: ()| {
    ///     let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
    ///     async move {
    ///         let took = if first { 1_000 } else { 10 };
    ///         tokio::time::sleep(Duration::from_millis(took)).await;
    ///         Ok::<_, std::io::Error>(if first { "slow" } else { "hedge" })
    ///     }
    /// });
    /// let layer = HedgeLayer::fixed(Duration::from_millis(50)).build()?;
    /// assert_eq!(layer.layer(replicas).oneshot(()).await?, "hedge");
    /// assert_eq!(layer.hedges_sent(), 1);
    /// # Ok(()) }
    /// ```
    pub fn fixed(delay: Duration) -> HedgeBuilder {
        HedgeBuilder::new(HedgeDelay::Fixed(delay))
    }

    /// A builder hedging after the `percentile` latency of recent successful calls
    /// (after `until_known` until 100 calls were seen; see [`HedgeBuilder::min_samples`]).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// // Hedge at the p99 of recent calls; 200 ms until enough calls were seen.
    /// let layer = HedgeLayer::percentile(99.0, Duration::from_millis(200)).build()?;
    /// assert_eq!(layer.current_delay(), Duration::from_millis(200));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn percentile(percentile: f64, until_known: Duration) -> HedgeBuilder {
        HedgeBuilder::new(HedgeDelay::Percentile {
            percentile,
            min_samples: 100,
            until_known,
        })
    }

    /// The delay after which a hedge would be sent now.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// let hedge = HedgeLayer::fixed(Duration::from_millis(30)).build()?;
    /// assert_eq!(hedge.current_delay(), Duration::from_millis(30));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn current_delay(&self) -> Duration {
        self.shared.current_delay()
    }

    /// Hedges sent so far (by every service built from this layer).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // The first attempt is slow, the hedge fast.
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let counter = calls.clone();
    /// let replicas = service_fn(move |_: ()| {
    ///     let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
    ///     async move {
    ///         let took = if first { 1_000 } else { 10 };
    ///         tokio::time::sleep(Duration::from_millis(took)).await;
    ///         Ok::<_, std::io::Error>(if first { "slow" } else { "hedge" })
    ///     }
    /// });
    /// let layer = HedgeLayer::fixed(Duration::from_millis(50)).build()?;
    /// assert_eq!(layer.layer(replicas).oneshot(()).await?, "hedge");
    /// assert_eq!(layer.hedges_sent(), 1);
    /// # Ok(()) }
    /// ```
    pub fn hedges_sent(&self) -> u64 {
        self.shared.hedges_sent.load(Ordering::Relaxed)
    }

    /// Calls whose answer came from a hedge rather than the original attempt.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // The first attempt is slow, the hedge fast.
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let counter = calls.clone();
    /// let replicas = service_fn(move |_: ()| {
    ///     let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
    ///     async move {
    ///         let took = if first { 1_000 } else { 10 };
    ///         tokio::time::sleep(Duration::from_millis(took)).await;
    ///         Ok::<_, std::io::Error>(if first { "slow" } else { "hedge" })
    ///     }
    /// });
    /// let layer = HedgeLayer::fixed(Duration::from_millis(50)).build()?;
    /// assert_eq!(layer.layer(replicas).oneshot(()).await?, "hedge");
    /// assert_eq!(layer.hedges_won(), 1); // the answer came from the hedge
    /// # Ok(()) }
    /// ```
    pub fn hedges_won(&self) -> u64 {
        self.shared.hedges_won.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(inner, self.shared.clone())
    }
}

/// Builds a [`HedgeLayer`].
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::{hedge::HedgeLayer, retry::RetryBudget};
///
/// // Hedge at the p95, at most one extra attempt, never more than 10 % extra load.
/// let budget = RetryBudget::builder().retry_ratio(0.1).min_per_sec(1).build()?;
/// let layer = HedgeLayer::percentile(95.0, Duration::from_millis(100))
///     .min_samples(50)
///     .budget(budget)
///     .build()?;
/// assert!(HedgeLayer::percentile(100.0, Duration::from_millis(1)).build().is_err());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct HedgeBuilder {
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Option<Arc<RetryBudget>>,
}

impl HedgeBuilder {
    fn new(delay: HedgeDelay) -> Self {
        Self {
            delay,
            max_hedges: 1,
            budget: None,
        }
    }

    /// Extra attempts per request, at most (default 1; each one `delay` after the last).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// let layer = HedgeLayer::fixed(Duration::from_millis(20)).max_hedges(2).build()?;
    /// assert_eq!(layer.hedges_sent(), 0);
    /// assert!(HedgeLayer::fixed(Duration::from_millis(20)).max_hedges(0).build().is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn max_hedges(mut self, hedges: u32) -> Self {
        self.max_hedges = hedges;
        self
    }

    /// Calls observed before the percentile is trusted (default 100).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// let layer =
    ///     HedgeLayer::percentile(95.0, Duration::from_millis(100)).min_samples(20).build()?;
    /// assert_eq!(layer.current_delay(), Duration::from_millis(100)); // fewer than 20 calls seen
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn min_samples(mut self, samples: u32) -> Self {
        if let HedgeDelay::Percentile { min_samples, .. } = &mut self.delay {
            *min_samples = samples;
        }
        self
    }

    /// Draws one token per hedge from `budget` (and deposits per request), so hedging
    /// and retries together stay within one share of traffic. Default: no budget.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// // Hedges and retries can share one budget: extra load stays below 10 %.
    /// let budget = palisade_resilience::retry::RetryBudget::builder().retry_ratio(0.1).build()?;
    /// let layer = HedgeLayer::fixed(Duration::from_millis(20)).budget(budget).build()?;
    /// assert_eq!(layer.hedges_sent(), 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Validates and builds: at least one hedge, a percentile in `(0, 100)`, a non-zero
    /// `min_samples`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    ///
    /// assert!(HedgeLayer::fixed(Duration::from_millis(20)).build().is_ok());
    /// assert!(HedgeLayer::percentile(0.0, Duration::from_millis(20)).build().is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build(self) -> Result<HedgeLayer, ConfigError> {
        if self.max_hedges == 0 {
            return Err(ConfigError::Zero {
                field: "max_hedges",
            });
        }
        let histogram = match self.delay {
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                ..
            } => {
                if !(percentile > 0.0 && percentile < 100.0) {
                    return Err(ConfigError::OutOfRange {
                        field: "percentile",
                        value: percentile,
                        min: 0.0,
                        max: 100.0,
                    });
                }
                if min_samples == 0 {
                    return Err(ConfigError::Zero {
                        field: "min_samples",
                    });
                }
                Some(LatencyHistogram::new(percentile, min_samples))
            }
        };
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                delay: self.delay,
                max_hedges: self.max_hedges,
                budget: self.budget,
                histogram,
                hedges_sent: AtomicU64::new(0),
                hedges_won: AtomicU64::new(0),
            }),
        })
    }
}
