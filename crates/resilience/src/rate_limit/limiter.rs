use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::ConfigError;

/// A shared GCRA rate limiter: `rate` calls per `period`, bursts of up to `burst`.
///
/// The whole state is one `AtomicU64` (the theoretical arrival time of the next call),
/// updated with a compare-and-swap: no lock, and every clone of the handle (every
/// service built with it) draws from the same allowance.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::rate_limit::RateLimiter;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
/// let limiter = RateLimiter::builder("geo-api")
///     .rate(10, Duration::from_secs(1))
///     .burst(2)
///     .build()?;
/// assert!(limiter.try_acquire().is_ok());
/// assert!(limiter.try_acquire().is_ok());
/// // The burst is spent; the next slot opens in 100 ms.
/// assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(100)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    pub(crate) state: Arc<State>,
}

pub(crate) struct State {
    pub(crate) name: Arc<str>,
    clock: Clock,
    /// Theoretical arrival time, nanoseconds since `epoch`.
    tat: AtomicU64,
    /// Nanoseconds between calls at the sustained rate.
    interval: u64,
    /// `burst × interval`: how far ahead of now the TAT may run.
    tolerance: u64,
    pub(crate) max_wait: Duration,
    /// `max_wait` in nanoseconds, converted once.
    max_wait_nanos: u64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.state.name)
            .field("interval", &Duration::from_nanos(self.state.interval))
            .field("burst", &(self.state.tolerance / self.state.interval))
            .field("max_wait", &self.state.max_wait)
            .finish()
    }
}

/// Where a limiter reads the time.
enum Clock {
    /// tokio's clock: follows `tokio::time::pause`/`advance`, so tests are exact.
    Tokio { epoch: Instant },
    /// The CPU's time-stamp counter through `quanta`, as governor reads it: about a third
    /// of the cost of an OS clock read on our machines, but blind to tokio's paused clock.
    #[cfg(feature = "tsc-clock")]
    Tsc { clock: quanta::Clock, epoch: u64 },
}

impl Clock {
    fn tokio() -> Self {
        Clock::Tokio {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the limiter was built.
    #[inline]
    fn now(&self) -> u64 {
        match self {
            Clock::Tokio { epoch } => {
                let elapsed = Instant::now().saturating_duration_since(*epoch);
                elapsed
                    .as_secs()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(elapsed.subsec_nanos()))
            }
            #[cfg(feature = "tsc-clock")]
            Clock::Tsc { clock, epoch } => clock.delta_as_nanos(*epoch, clock.raw()),
        }
    }
}

/// Builds a [`RateLimiter`]; every setter names its default.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::rate_limit::RateLimiter;
///
/// // 600 calls a minute, bursts of 20, and a call may wait up to 50 ms for its slot.
/// let limiter = RateLimiter::builder("search")
///     .rate(600, Duration::from_secs(60))
///     .burst(20)
///     .max_wait(Duration::from_millis(50))
///     .build()?;
/// assert_eq!(limiter.max_wait(), Duration::from_millis(50));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RateLimiterBuilder {
    name: Arc<str>,
    rate: u32,
    period: Duration,
    burst: Option<u32>,
    max_wait: Duration,
    #[cfg(feature = "tsc-clock")]
    tsc: bool,
}

impl RateLimiterBuilder {
    /// `rate` calls per `period` sustained (default 100 per second).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter = RateLimiter::builder("sms").rate(2, Duration::from_secs(1)).burst(1).build()?;
    /// assert!(limiter.try_acquire().is_ok());
    /// assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(500)));
    /// # Ok(()) }
    /// ```
    pub fn rate(mut self, rate: u32, period: Duration) -> Self {
        self.rate = rate;
        self.period = period;
        self
    }

    /// Calls allowed back to back after a quiet spell (default: `rate`, one period's
    /// worth). Must be ≥ 1.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter = RateLimiter::builder("sms").rate(1, Duration::from_secs(1)).burst(3).build()?;
    /// for _ in 0..3 {
    ///     assert!(limiter.try_acquire().is_ok()); // three back to back
    /// }
    /// assert!(limiter.try_acquire().is_err());
    /// # Ok(()) }
    /// ```
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// How long a call may wait for its slot before it is rejected with
    /// [`RateLimited`](super::RateLimited) (default zero: reject at once).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter = RateLimiter::builder("sms").max_wait(Duration::from_millis(250)).build()?;
    /// assert_eq!(limiter.max_wait(), Duration::from_millis(250));
    /// # Ok(()) }
    /// ```
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Reads the CPU's time-stamp counter (through `quanta`, as `governor` does) instead
    /// of tokio's clock (default: tokio's). A decision then costs about what governor's
    /// does, where an OS clock read is most of it (see BENCHMARKS.md); the price is that
    /// `tokio::time::pause` and `advance` no longer move this limiter's time, so test
    /// code paths through it with real time or keep the default clock in tests.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder("hot-path")
    ///     .rate(50_000, Duration::from_secs(1))
    ///     .tsc_clock()
    ///     .build()?;
    /// assert!(limiter.try_acquire().is_ok());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    #[cfg(feature = "tsc-clock")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tsc-clock")))]
    pub fn tsc_clock(mut self) -> Self {
        self.tsc = true;
        self
    }

    /// Validates and builds the shared limiter.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// assert!(RateLimiter::builder("sms").build().is_ok()); // 100 per second
    /// assert!(RateLimiter::builder("sms").burst(0).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        if self.rate == 0 {
            return Err(ConfigError::Zero { field: "rate" });
        }
        if self.period.is_zero() {
            return Err(ConfigError::Zero { field: "period" });
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err(ConfigError::Zero { field: "burst" });
        }
        let interval = u64::try_from(self.period.as_nanos() / u128::from(self.rate))
            .unwrap_or(u64::MAX)
            .max(1);
        #[cfg(feature = "tsc-clock")]
        let clock = if self.tsc {
            let clock = quanta::Clock::new();
            let epoch = clock.raw();
            Clock::Tsc { clock, epoch }
        } else {
            Clock::tokio()
        };
        #[cfg(not(feature = "tsc-clock"))]
        let clock = Clock::tokio();
        Ok(RateLimiter {
            state: Arc::new(State {
                name: self.name,
                clock,
                tat: AtomicU64::new(0),
                interval,
                tolerance: interval.saturating_mul(u64::from(burst)),
                max_wait: self.max_wait,
                max_wait_nanos: nanos(self.max_wait),
            }),
        })
    }
}

impl RateLimiter {
    /// A builder for a limiter called `name` (the name appears in errors and events).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter = RateLimiter::builder("sms").rate(5, Duration::from_secs(1)).build()?;
    /// assert_eq!(limiter.name(), "sms");
    /// # Ok(()) }
    /// ```
    pub fn builder(name: impl Into<Arc<str>>) -> RateLimiterBuilder {
        RateLimiterBuilder {
            name: name.into(),
            rate: 100,
            period: Duration::from_secs(1),
            burst: None,
            max_wait: Duration::ZERO,
            #[cfg(feature = "tsc-clock")]
            tsc: false,
        }
    }

    /// The limiter's name.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// assert_eq!(RateLimiter::builder("sms").build()?.name(), "sms");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// How long a call may wait for its slot.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// // Rejects at once by default.
    /// assert_eq!(RateLimiter::builder("sms").build()?.max_wait(), Duration::ZERO);
    /// # Ok(()) }
    /// ```
    pub fn max_wait(&self) -> Duration {
        self.state.max_wait
    }

    /// Takes a slot now, or says how long until one opens (nothing is reserved then).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter =
    ///     RateLimiter::builder("sms").rate(10, Duration::from_secs(1)).burst(1).build()?;
    /// assert!(limiter.try_acquire().is_ok());
    /// let wait = limiter.try_acquire().expect_err("spent");
    /// tokio::time::advance(wait).await;
    /// assert!(limiter.try_acquire().is_ok());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.state.reserve_nanos(0).map(|_| ())
    }

    /// Reserves the next slot if it opens within `max_wait` and returns the wait until
    /// it (zero: go now); otherwise reserves nothing and returns the time until a slot
    /// would open.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::rate_limit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::ConfigError> {
    /// let limiter =
    ///     RateLimiter::builder("sms").rate(10, Duration::from_secs(1)).burst(1).build()?;
    /// assert_eq!(limiter.reserve(Duration::ZERO), Ok(Duration::ZERO)); // go now
    /// // The next slot is 100 ms away: reserved if we may wait that long.
    /// assert_eq!(limiter.reserve(Duration::from_millis(150)), Ok(Duration::from_millis(100)));
    /// assert!(limiter.reserve(Duration::ZERO).is_err());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn reserve(&self, max_wait: Duration) -> Result<Duration, Duration> {
        self.state.reserve_nanos(nanos(max_wait))
    }

    /// [`reserve`](Self::reserve) with the limiter's own `max_wait`.
    #[inline]
    pub(crate) fn reserve_configured(&self) -> Result<Duration, Duration> {
        self.state.reserve_nanos(self.state.max_wait_nanos)
    }
}

/// A duration in whole nanoseconds, saturating (u64 nanoseconds is 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    #[inline]
    fn reserve_nanos(&self, max_wait: u64) -> Result<Duration, Duration> {
        // One clock read is most of the cost of a decision: see BENCHMARKS.md.
        let now = self.clock.now();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(self.interval);
            let wait = new_tat.saturating_sub(now.saturating_add(self.tolerance));
            if wait > max_wait {
                return Err(Duration::from_nanos(wait));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Duration::from_nanos(wait)),
                Err(actual) => tat = actual,
            }
        }
    }
}
