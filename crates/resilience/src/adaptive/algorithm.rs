//! Limit algorithms: AIMD and a latency gradient.

use std::time::Duration;

use crate::ConfigError;

/// What one completed call tells the algorithm.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::adaptive::Sample;
///
/// let s = Sample { latency: Duration::from_millis(12), in_flight: 8, dropped: false };
/// assert!(!s.dropped);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How long the call took.
    pub latency: Duration,
    /// Calls in flight when it started (itself included).
    pub in_flight: u32,
    /// It failed in a way that signals overload (by default: any error).
    pub dropped: bool,
}

/// How the concurrency limit moves; see [`Aimd`] and [`Gradient`].
///
/// Implement it for an algorithm of your own; `update` is called with one sample at a
/// time (samples that arrive while another is being applied are skipped).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, LimitAlgorithm, Sample};
///
/// /// Halve on any call slower than 100 ms, otherwise grow by one, within [1, 64].
/// struct Halving;
///
/// impl LimitAlgorithm for Halving {
///     fn initial_limit(&self) -> u32 { 16 }
///     fn update(&mut self, limit: u32, s: Sample) -> u32 {
///         let slow = s.dropped || s.latency > Duration::from_millis(100);
///         let next = if slow { limit / 2 } else { limit + 1 };
///         next.clamp(1, 64)
///     }
/// }
///
/// let layer = AdaptiveConcurrencyLayer::new("custom", Halving);
/// assert_eq!(layer.handle().limit(), 16);
/// ```
pub trait LimitAlgorithm: Send + 'static {
    /// The limit to start with.
    ///
    /// ```rust
    /// use palisade_resilience::adaptive::{Aimd, LimitAlgorithm};
    ///
    /// assert_eq!(Aimd::new(16, 1, 100)?.initial_limit(), 16);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    fn initial_limit(&self) -> u32;
    /// The new limit after `sample`, given the current one.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, LimitAlgorithm, Sample};
    ///
    /// let mut aimd = Aimd::new(10, 1, 100)?;
    /// let ok = Sample { latency: Duration::from_millis(3), in_flight: 10, dropped: false };
    /// assert_eq!(aimd.update(10, ok), 11); // used and healthy: grow by one
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    fn update(&mut self, limit: u32, sample: Sample) -> u32;
}

/// Additive increase, multiplicative decrease: +1 after a success while the limit is
/// being used (at least half of it in flight), × `backoff` after an overload signal (a
/// failure, or a call slower than `timeout`). The classic TCP congestion rule: simple,
/// stable, slow to find a large limit.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::adaptive::{Aimd, LimitAlgorithm, Sample};
///
/// let mut aimd = Aimd::new(10, 1, 100)?;
/// let busy = Sample { latency: Duration::from_millis(5), in_flight: 10, dropped: false };
/// assert_eq!(aimd.update(10, busy), 11);
/// assert_eq!(aimd.update(11, Sample { dropped: true, ..busy }), 9);
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    initial: u32,
    min: u32,
    max: u32,
    backoff: f64,
    timeout: Duration,
}

fn check_bounds(initial: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::Zero { field: "min_limit" });
    }
    if max < min || initial < min || initial > max {
        return Err(ConfigError::Invalid {
            field: "initial_limit",
            reason: "needs min_limit <= initial_limit <= max_limit",
        });
    }
    Ok(())
}

impl Aimd {
    /// Starts at `initial`, stays within `[min, max]`; backoff 0.9, no latency timeout.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, Gradient, LimitAlgorithm, Sample};
    ///
    /// let aimd = Aimd::new(20, 2, 200)?;
    /// assert_eq!(aimd.initial_limit(), 20);
    /// assert!(Aimd::new(20, 50, 10).is_err()); // min above max
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(initial: u32, min: u32, max: u32) -> Result<Self, ConfigError> {
        check_bounds(initial, min, max)?;
        Ok(Self {
            initial,
            min,
            max,
            backoff: 0.9,
            timeout: Duration::MAX,
        })
    }

    /// The factor applied on an overload signal, in `[0.5, 1)` (default 0.9).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, Gradient, LimitAlgorithm, Sample};
    ///
    /// let mut aimd = Aimd::new(100, 1, 200)?.backoff(0.5)?;
    /// let dropped = Sample { latency: Duration::from_millis(5), in_flight: 100, dropped: true };
    /// assert_eq!(aimd.update(100, dropped), 50); // halved on an overload signal
    /// assert!(Aimd::new(100, 1, 200)?.backoff(1.5).is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn backoff(mut self, factor: f64) -> Result<Self, ConfigError> {
        if !(0.5..1.0).contains(&factor) {
            return Err(ConfigError::OutOfRange {
                field: "backoff",
                value: factor,
                min: 0.5,
                max: 1.0,
            });
        }
        self.backoff = factor;
        Ok(self)
    }

    /// Calls slower than this count as an overload signal too (default: none).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, Gradient, LimitAlgorithm, Sample};
    ///
    /// let mut aimd = Aimd::new(100, 1, 200)?.timeout(Duration::from_millis(200));
    /// let slow = Sample { latency: Duration::from_millis(500), in_flight: 100, dropped: false };
    /// assert!(aimd.update(100, slow) < 100); // too slow counts as overload
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> u32 {
        self.initial
    }

    fn update(&mut self, limit: u32, sample: Sample) -> u32 {
        let next = if sample.dropped || sample.latency > self.timeout {
            (f64::from(limit) * self.backoff).floor() as u32
        } else if sample.in_flight.saturating_mul(2) >= limit {
            limit.saturating_add(1)
        } else {
            limit
        };
        next.clamp(self.min, self.max)
    }
}

/// A latency gradient, after Netflix's `Gradient2Limit`: compares the latency of each
/// call with a long-term average; while they agree the limit grows by a small queue
/// allowance, when latency rises (queueing somewhere downstream) the limit shrinks in
/// proportion. Finds a large limit fast and backs off before errors appear.
///
/// `limit' = limit × (1 − s) + s × (limit × clamp(tolerance × long / short, 0.5, 1) + queue)`
/// with smoothing `s` = 0.2, tolerance 1.5, queue allowance 4, long-term average over
/// the last 600 samples. Overload signals (failures) halve towards the gradient's floor.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::adaptive::{Gradient, LimitAlgorithm, Sample};
///
/// let mut g = Gradient::new(20, 1, 200)?;
/// let mut limit = g.initial_limit();
/// for _ in 0..50 {
///     let latency = Duration::from_millis(10);
///     limit = g.update(limit, Sample { latency, in_flight: limit, dropped: false });
/// }
/// assert!(limit > 20, "steady latency: the limit grows ({limit})");
/// for _ in 0..20 {
///     let latency = Duration::from_millis(100);
///     limit = g.update(limit, Sample { latency, in_flight: limit, dropped: false });
/// }
/// assert!(limit < 30, "latency ×10: the limit shrinks ({limit})");
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gradient {
    initial: u32,
    min: u32,
    max: u32,
    estimate: f64,
    long_rtt: Option<f64>,
    window: f64,
    tolerance: f64,
    smoothing: f64,
    queue: f64,
}

impl Gradient {
    /// Starts at `initial`, stays within `[min, max]`, with the defaults above.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, Gradient, LimitAlgorithm, Sample};
    ///
    /// let gradient = Gradient::new(20, 2, 200)?;
    /// assert_eq!(gradient.initial_limit(), 20);
    /// assert!(Gradient::new(0, 0, 10).is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn new(initial: u32, min: u32, max: u32) -> Result<Self, ConfigError> {
        check_bounds(initial, min, max)?;
        Ok(Self {
            initial,
            min,
            max,
            estimate: f64::from(initial),
            long_rtt: None,
            window: 600.0,
            tolerance: 1.5,
            smoothing: 0.2,
            queue: 4.0,
        })
    }

    /// How much latency growth is tolerated before shrinking, in `[1, 10]` (default 1.5).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::adaptive::{Aimd, Gradient, LimitAlgorithm, Sample};
    ///
    /// let gradient = Gradient::new(20, 2, 200)?.tolerance(2.0)?; // accept latency doubling
    /// assert_eq!(gradient.initial_limit(), 20);
    /// assert!(Gradient::new(20, 2, 200)?.tolerance(0.5).is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn tolerance(mut self, tolerance: f64) -> Result<Self, ConfigError> {
        if !(1.0..=10.0).contains(&tolerance) {
            return Err(ConfigError::OutOfRange {
                field: "tolerance",
                value: tolerance,
                min: 1.0,
                max: 10.0,
            });
        }
        self.tolerance = tolerance;
        Ok(self)
    }
}

impl LimitAlgorithm for Gradient {
    fn initial_limit(&self) -> u32 {
        self.initial
    }

    fn update(&mut self, limit: u32, sample: Sample) -> u32 {
        let short = sample.latency.as_secs_f64().max(1e-9);
        let long = match self.long_rtt {
            None => short,
            Some(long) => long + (short - long) / self.window.min(600.0),
        };
        // Recovering from overload: do not let an inflated average hold the limit up.
        let long = if long / short > 2.0 {
            long * 0.95
        } else {
            long
        };
        self.long_rtt = Some(long);
        if self.estimate.round() as u32 != limit {
            self.estimate = f64::from(limit); // set from elsewhere: start from there
        }
        if sample.dropped {
            self.estimate = (self.estimate * 0.5).max(f64::from(self.min));
        } else if f64::from(sample.in_flight) >= self.estimate / 2.0 {
            let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
            let target = self.estimate * gradient + self.queue;
            self.estimate = self.estimate * (1.0 - self.smoothing) + target * self.smoothing;
        }
        (self.estimate.round() as u32).clamp(self.min, self.max)
    }
}
