//! Delay schedules between retries: constant, linear, exponential with a cap, and jitter.
//!
//! # What it protects against
//!
//! Retrying at once, and all at the same moment, turns a dependency's short hiccup into a
//! thundering herd that keeps it down. A backoff spaces the retries out (exponential growth
//! gives a struggling server room) and jitter spreads clients that failed together so they
//! do not come back together.
//!
//! # When not to use it
//!
//! A [`Backoff`] only decides *how long to wait*. Whether to retry at all (a 400 never, a
//! 503 yes), how many times, and within what total time is the job of the
//! [`retry`](crate::retry) layer, which takes a `Backoff`. For a single call with a deadline
//! use [`timeout`](crate::timeout) instead.
//!
//! # Shapes and jitter
//!
//! For retry *n* (1 for the first retry) the nominal delay is
//!
//! | shape | delay before retry *n* |
//! |---|---|
//! | [`constant(d)`](Backoff::constant) | `d` |
//! | [`linear(base, step)`](Backoff::linear) | `base + step × (n − 1)` |
//! | [`exponential(base)`](Backoff::exponential) | `base × factor^(n − 1)` (factor 2 unless [`with_factor`](Backoff::with_factor)) |
//!
//! then capped at [`with_max_delay`](Backoff::with_max_delay) (uncapped by default; the
//! arithmetic saturates, it never overflows). [`Jitter`] then draws the actual delay:
//!
//! | jitter | actual delay |
//! |---|---|
//! | [`Jitter::None`] | the nominal delay `d` |
//! | [`Jitter::Full`] | uniform in `[0, d]` |
//! | [`Jitter::Equal`] | uniform in `[d/2, d]` |
//! | [`Jitter::Decorrelated`] | uniform in `[base, min(max, 3 × previous)]` (the shape is ignored; `previous` starts at `base`) |
//!
//! so every delay stays within `[0, max_delay]`. These are the AWS Architecture Blog
//! "Exponential Backoff and Jitter" formulas.
//!
//! Randomness comes from a tiny splitmix64 generator inside each [`BackoffIter`]: no
//! `rand` dependency, no shared state, and [`Backoff::iter_seeded`] makes a schedule
//! reproducible in tests.
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100))
//!     .with_max_delay(Duration::from_secs(1));
//! backoff.validate()?;
//! let delays: Vec<_> = backoff.iter().take(6).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis));
//!
//! // With jitter every delay is drawn at random, within the documented range.
//! let jittered = backoff.with_jitter(Jitter::Equal);
//! for (n, delay) in jittered.iter_seeded(42).take(6).enumerate() {
//!     let nominal = backoff.nominal_delay(n as u32 + 1);
//!     assert!(delay >= nominal / 2 && delay <= nominal);
//! }
//! # Ok::<(), palisade_resilience::ConfigError>(())
//! ```
//!
//! A `Backoff` is plain data (`Copy`, serde): in a config file it reads
//! `{ "kind": "exponential", "base": "100ms", "max_delay": "10s", "jitter": "full" }`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::duration_serde;
use crate::rng::SplitMix64;

/// How the actual delay is drawn around the nominal one. See the [module docs](self).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::{Backoff, Jitter};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100))
///     .with_max_delay(Duration::from_secs(2))
///     .with_jitter(Jitter::Full);
/// // Full jitter: each delay is drawn between zero and the exponential schedule's value.
/// for (n, delay) in backoff.iter_seeded(7).take(5).enumerate() {
///     assert!(delay <= backoff.nominal_delay(n as u32 + 1)); // retry numbers are 1-based
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exactly the nominal delay. Deterministic; clients that failed together retry together.
    #[default]
    None,
    /// Uniform in `[0, d]`: the most spread, the best at breaking up herds.
    Full,
    /// Uniform in `[d/2, d]`: keeps at least half of the nominal wait.
    Equal,
    /// Uniform in `[base, min(max, 3 × previous delay)]`, independent of the shape.
    Decorrelated,
}

/// The growth of the nominal delay.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::{Backoff, BackoffKind};
///
/// let linear = Backoff::linear(Duration::from_millis(100), Duration::from_millis(50));
/// assert_eq!(linear.kind(), BackoffKind::Linear);
/// assert_eq!(linear.nominal_delay(3), Duration::from_millis(200)); // 100 + 2 × 50
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// Always `base`.
    Constant,
    /// `base + step × (n − 1)`.
    Linear,
    /// `base × factor^(n − 1)`.
    Exponential,
}

fn default_factor() -> f64 {
    2.0
}

fn is_zero(d: &Duration) -> bool {
    d.is_zero()
}

/// A retry delay schedule: a shape, an optional cap and a jitter. See the [module docs](self).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
///
/// let linear = Backoff::linear(Duration::from_millis(10), Duration::from_millis(5));
/// assert_eq!(linear.iter().take(3).collect::<Vec<_>>(), [10, 15, 20].map(Duration::from_millis));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    kind: BackoffKind,
    #[serde(with = "duration_serde")]
    base: Duration,
    #[serde(default, with = "duration_serde", skip_serializing_if = "is_zero")]
    step: Duration,
    #[serde(default = "default_factor")]
    factor: f64,
    #[serde(
        default,
        with = "duration_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    max_delay: Option<Duration>,
    #[serde(default)]
    jitter: Jitter,
}

impl Default for Backoff {
    /// Exponential from 100 ms, factor 2, capped at 10 s, full jitter: a safe choice for
    /// calls between services (the first retry comes quickly, a dead dependency is probed
    /// at most every 10 s, and clients that failed together spread out).
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter(Jitter::Full)
    }
}

impl Backoff {
    /// The same delay before every retry.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::constant(Duration::from_millis(50));
    /// let delays: Vec<_> = backoff.iter().take(3).collect();
    /// assert_eq!(delays, [50, 50, 50].map(Duration::from_millis));
    /// ```
    pub const fn constant(delay: Duration) -> Self {
        Self::new(BackoffKind::Constant, delay, Duration::ZERO)
    }

    /// `base` before the first retry, then `step` more before each next one.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::linear(Duration::from_millis(100), Duration::from_millis(50));
    /// let delays: Vec<_> = backoff.iter().take(3).collect();
    /// assert_eq!(delays, [100, 150, 200].map(Duration::from_millis));
    /// ```
    pub const fn linear(base: Duration, step: Duration) -> Self {
        Self::new(BackoffKind::Linear, base, step)
    }

    /// `base` before the first retry, multiplied by the factor (2 unless
    /// [`with_factor`](Self::with_factor)) before each next one. Cap it with
    /// [`with_max_delay`](Self::with_max_delay).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff =
    ///     Backoff::exponential(Duration::from_millis(100)).with_max_delay(Duration::from_secs(1));
    /// let delays: Vec<_> = backoff.iter().take(5).collect();
    /// assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
    /// ```
    pub const fn exponential(base: Duration) -> Self {
        Self::new(BackoffKind::Exponential, base, Duration::ZERO)
    }

    const fn new(kind: BackoffKind, base: Duration, step: Duration) -> Self {
        Self {
            kind,
            base,
            step,
            factor: 2.0,
            max_delay: None,
            jitter: Jitter::None,
        }
    }

    /// Sets the growth factor of an exponential backoff (default 2; must be in `[1, 1000]`).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::exponential(Duration::from_millis(10)).with_factor(3.0);
    /// let delays: Vec<_> = backoff.iter().take(3).collect();
    /// assert_eq!(delays, [10, 30, 90].map(Duration::from_millis));
    /// let shrinking = Backoff::exponential(Duration::from_millis(10)).with_factor(0.5);
    /// assert!(shrinking.validate().is_err());
    /// ```
    pub const fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Caps every delay at `max` (default: no cap). Must not be below the base.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::exponential(Duration::from_millis(100))
    ///     .with_max_delay(Duration::from_millis(250));
    /// assert_eq!(backoff.nominal_delay(10), Duration::from_millis(250));
    /// assert_eq!(backoff.max_delay(), Some(Duration::from_millis(250)));
    /// ```
    pub const fn with_max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// Sets the jitter (default [`Jitter::None`]).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::constant(Duration::from_millis(100)).with_jitter(Jitter::Full);
    /// // Full jitter: each delay uniform in [0, nominal].
    /// assert!(backoff.iter().take(100).all(|d| d <= Duration::from_millis(100)));
    /// ```
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The shape.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let linear = Backoff::linear(Duration::from_millis(1), Duration::from_millis(1));
    /// assert_eq!(linear.kind(), BackoffKind::Linear);
    /// ```
    pub const fn kind(&self) -> BackoffKind {
        self.kind
    }

    /// The delay before the first retry.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::exponential(Duration::from_millis(20));
    /// assert_eq!(backoff.base(), Duration::from_millis(20));
    /// ```
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The cap, if any.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// assert_eq!(Backoff::exponential(Duration::from_millis(20)).max_delay(), None);
    /// ```
    pub const fn max_delay(&self) -> Option<Duration> {
        self.max_delay
    }

    /// The jitter.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// assert_eq!(Backoff::constant(Duration::from_millis(5)).jitter(), Jitter::None);
    /// assert_eq!(Backoff::default().jitter(), Jitter::Full);
    /// ```
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// Checks the configuration: the factor is finite and in `[1, 1000]`, an exponential
    /// base is not zero, and the cap is not below the base.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// assert!(Backoff::default().validate().is_ok());
    /// // A cap below the base is a configuration error, reported when the layer is built.
    /// let capped_below_base = Backoff::exponential(Duration::from_millis(100))
    ///     .with_max_delay(Duration::from_millis(10));
    /// assert!(capped_below_base.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == BackoffKind::Exponential {
            if !self.factor.is_finite() || !(1.0..=1000.0).contains(&self.factor) {
                return Err(ConfigError::OutOfRange {
                    field: "factor",
                    value: self.factor,
                    min: 1.0,
                    max: 1000.0,
                });
            }
            if self.base.is_zero() {
                return Err(ConfigError::Zero { field: "base" });
            }
        }
        if let Some(max) = self.max_delay
            && max < self.base
        {
            return Err(ConfigError::BelowMinimum {
                field: "max_delay",
                value: max,
                minimum_field: "base",
                minimum: self.base,
            });
        }
        Ok(())
    }

    /// The nominal (jitter-free, capped) delay before retry `n` (1-based; 0 is treated as 1).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::exponential(Duration::from_millis(100)).with_jitter(Jitter::Full);
    /// assert_eq!(backoff.nominal_delay(3), Duration::from_millis(400)); // before jitter
    /// ```
    pub fn nominal_delay(&self, n: u32) -> Duration {
        let k = n.max(1) - 1;
        let raw = match self.kind {
            BackoffKind::Constant => self.base,
            BackoffKind::Linear => self
                .step
                .checked_mul(k)
                .and_then(|s| self.base.checked_add(s))
                .unwrap_or(Duration::MAX),
            BackoffKind::Exponential => self.exponential_delay(k),
        };
        match self.max_delay {
            Some(max) => raw.min(max),
            None => raw,
        }
    }

    fn exponential_delay(&self, k: u32) -> Duration {
        // Integral factors stay exact (100 ms × 2^3 is 800 ms, not 799.999…).
        if self.factor.fract() == 0.0 && self.factor >= 1.0 && self.factor <= f64::from(u32::MAX) {
            let factor = self.factor as u32;
            return factor
                .checked_pow(k)
                .and_then(|m| self.base.checked_mul(m))
                .unwrap_or(Duration::MAX);
        }
        let secs = self.base.as_secs_f64() * self.factor.powi(i32::try_from(k).unwrap_or(i32::MAX));
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// The delays before retry 1, 2, … forever, jittered with a freshly seeded generator.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff = Backoff::linear(Duration::from_millis(10), Duration::from_millis(10));
    /// let mut delays = backoff.iter();
    /// assert_eq!(delays.next(), Some(Duration::from_millis(10)));
    /// assert_eq!(delays.next(), Some(Duration::from_millis(20)));
    /// ```
    pub fn iter(&self) -> BackoffIter {
        BackoffIter::new(*self, SplitMix64::from_entropy())
    }

    /// Like [`iter`](Self::iter) but reproducible: the same seed yields the same delays.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let backoff =
    ///     Backoff::exponential(Duration::from_millis(10)).with_jitter(Jitter::Decorrelated);
    /// let a: Vec<_> = backoff.iter_seeded(42).take(5).collect();
    /// let b: Vec<_> = backoff.iter_seeded(42).take(5).collect();
    /// assert_eq!(a, b); // reproducible, for tests
    /// ```
    pub fn iter_seeded(&self, seed: u64) -> BackoffIter {
        BackoffIter::new(*self, SplitMix64::new(seed))
    }
}

impl IntoIterator for &Backoff {
    type Item = Duration;
    type IntoIter = BackoffIter;

    fn into_iter(self) -> BackoffIter {
        self.iter()
    }
}

/// The infinite iterator of delays of a [`Backoff`]: item *n* is the delay before retry *n*.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
///
/// let delays: Vec<Duration> =
///     Backoff::exponential(Duration::from_millis(10)).iter().take(3).collect();
/// assert_eq!(delays, [10, 20, 40].map(Duration::from_millis));
/// ```
#[derive(Clone, Debug)]
pub struct BackoffIter {
    backoff: Backoff,
    retry: u32,
    previous: Duration,
    rng: SplitMix64,
}

/// A duration uniform in `[lo, hi]`, exact over the whole `Duration` range.
fn uniform(rng: &mut SplitMix64, lo: Duration, hi: Duration) -> Duration {
    let span = hi.saturating_sub(lo).as_nanos();
    if span == 0 {
        return lo;
    }
    let r = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) % (span + 1);
    let offset = Duration::new(
        u64::try_from(r / 1_000_000_000).unwrap_or(u64::MAX),
        (r % 1_000_000_000) as u32,
    );
    lo.saturating_add(offset)
}

impl BackoffIter {
    fn new(backoff: Backoff, rng: SplitMix64) -> Self {
        Self {
            backoff,
            retry: 0,
            previous: backoff.base,
            rng,
        }
    }

    /// How many delays have been yielded so far.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::{Backoff, BackoffKind, Jitter};
    ///
    /// let mut delays = Backoff::constant(Duration::from_millis(1)).iter();
    /// delays.next();
    /// delays.next();
    /// assert_eq!(delays.retries(), 2);
    /// ```
    pub fn retries(&self) -> u32 {
        self.retry
    }

    /// Draws the next delay.
    fn draw(&mut self) -> Duration {
        self.retry = self.retry.saturating_add(1);
        let nominal = self.backoff.nominal_delay(self.retry);
        match self.backoff.jitter {
            Jitter::None => nominal,
            Jitter::Full => uniform(&mut self.rng, Duration::ZERO, nominal),
            Jitter::Equal => uniform(&mut self.rng, nominal / 2, nominal),
            Jitter::Decorrelated => {
                let cap = self.backoff.max_delay.unwrap_or(Duration::MAX);
                let lo = self.backoff.base.min(cap);
                let hi = self.previous.saturating_mul(3).min(cap).max(lo);
                let d = uniform(&mut self.rng, lo, hi);
                self.previous = d;
                d
            }
        }
    }
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.draw())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn shapes_follow_their_formulas() {
        assert_eq!(
            Backoff::constant(ms(7)).iter().take(3).collect::<Vec<_>>(),
            [ms(7); 3]
        );
        let exp = Backoff::exponential(ms(10)).with_factor(3.0);
        assert_eq!(
            exp.iter().take(4).collect::<Vec<_>>(),
            [ms(10), ms(30), ms(90), ms(270)]
        );
        let frac = Backoff::exponential(ms(100)).with_factor(1.5);
        assert_eq!(frac.nominal_delay(3), ms(225));
    }

    #[test]
    fn huge_retry_numbers_saturate_instead_of_overflowing() {
        let exp = Backoff::exponential(Duration::from_secs(1));
        assert_eq!(exp.nominal_delay(u32::MAX), Duration::MAX);
        let capped = exp.with_max_delay(Duration::from_secs(60));
        assert_eq!(capped.nominal_delay(u32::MAX), Duration::from_secs(60));
        let lin = Backoff::linear(ms(1), Duration::MAX / 2);
        assert_eq!(lin.nominal_delay(10), Duration::MAX);
        let frac = Backoff::exponential(ms(1)).with_factor(1.5);
        assert_eq!(frac.nominal_delay(u32::MAX), Duration::MAX);
    }

    #[test]
    fn validation_rejects_what_cannot_work() {
        assert!(Backoff::default().validate().is_ok());
        assert!(matches!(
            Backoff::exponential(ms(1)).with_factor(0.5).validate(),
            Err(ConfigError::OutOfRange {
                field: "factor",
                ..
            })
        ));
        assert!(matches!(
            Backoff::exponential(ms(1)).with_factor(f64::NAN).validate(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert_eq!(
            Backoff::exponential(Duration::ZERO).validate(),
            Err(ConfigError::Zero { field: "base" })
        );
        assert!(matches!(
            Backoff::linear(ms(10), ms(1))
                .with_max_delay(ms(5))
                .validate(),
            Err(ConfigError::BelowMinimum {
                field: "max_delay",
                ..
            })
        ));
    }

    #[test]
    fn serde_form_is_readable_and_round_trips() -> Result<(), serde_json::Error> {
        let b: Backoff = serde_json::from_str(
            r#"{"kind":"exponential","base":"100ms","max_delay":"10s","jitter":"decorrelated"}"#,
        )?;
        assert_eq!(
            b,
            Backoff::exponential(ms(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter(Jitter::Decorrelated)
        );
        let text = serde_json::to_string(&b)?;
        assert_eq!(serde_json::from_str::<Backoff>(&text)?, b);
        let millis: Backoff = serde_json::from_str(r#"{"kind":"constant","base":250}"#)?;
        assert_eq!(millis, Backoff::constant(ms(250)));
        assert!(
            serde_json::from_str::<Backoff>(r#"{"kind":"constant","base":"1s","typo":1}"#).is_err()
        );
        Ok(())
    }

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        (
            0u8..3,
            1u64..10_000,
            0u64..10_000,
            1.0f64..10.0,
            prop::option::of(0u64..100_000),
            0u8..4,
        )
            .prop_map(|(kind, base, step, factor, max_extra, jitter)| {
                let base = Duration::from_micros(base);
                let b = match kind {
                    0 => Backoff::constant(base),
                    1 => Backoff::linear(base, Duration::from_micros(step)),
                    _ => Backoff::exponential(base).with_factor(factor),
                };
                let b = match max_extra {
                    Some(extra) => b.with_max_delay(base + Duration::from_micros(extra)),
                    None => b,
                };
                b.with_jitter(match jitter {
                    0 => Jitter::None,
                    1 => Jitter::Full,
                    2 => Jitter::Equal,
                    _ => Jitter::Decorrelated,
                })
            })
    }

    proptest! {
        #[test]
        fn every_delay_is_within_zero_and_the_cap(b in any_backoff(), seed: u64) {
            prop_assert!(b.validate().is_ok());
            let cap = b.max_delay().unwrap_or(Duration::MAX);
            for d in b.iter_seeded(seed).take(64) {
                prop_assert!(d <= cap);
            }
        }

        #[test]
        fn jitter_stays_within_its_documented_range(b in any_backoff(), seed: u64) {
            let cap = b.max_delay().unwrap_or(Duration::MAX);
            let mut previous = b.base();
            for (i, d) in b.iter_seeded(seed).take(64).enumerate() {
                let nominal = b.nominal_delay(i as u32 + 1);
                match b.jitter() {
                    Jitter::None => prop_assert_eq!(d, nominal),
                    Jitter::Full => prop_assert!(d <= nominal),
                    Jitter::Equal => prop_assert!(d >= nominal / 2 && d <= nominal),
                    Jitter::Decorrelated => {
                        prop_assert!(d >= b.base().min(cap));
                        prop_assert!(d <= previous.saturating_mul(3).min(cap).max(b.base()));
                        previous = d;
                    }
                }
            }
        }

        #[test]
        fn schedules_without_jitter_never_shrink(b in any_backoff()) {
            let b = b.with_jitter(Jitter::None);
            let delays: Vec<_> = b.iter().take(64).collect();
            for pair in delays.windows(2) {
                prop_assert!(pair[0] <= pair[1]);
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_schedule(b in any_backoff(), seed: u64) {
            let a: Vec<_> = b.iter_seeded(seed).take(16).collect();
            let c: Vec<_> = b.iter_seeded(seed).take(16).collect();
            prop_assert_eq!(a, c);
        }
    }
}
