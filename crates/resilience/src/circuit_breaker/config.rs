//! The breaker's settings, their defaults and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::backoff::Backoff;
use crate::duration_serde;

/// Largest count-based window (each stripe keeps one byte per call of the window).
pub(crate) const MAX_WINDOW_CALLS: u32 = 100_000;
/// Largest number of half-open probes (they are packed in 16-bit counters).
pub(crate) const MAX_PROBES: u32 = 10_000;
/// Number of buckets a time-based window is divided into.
pub(crate) const TIME_BUCKETS: u64 = 10;

/// Which recent calls the failure and slow-call rates are computed over.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::circuit_breaker::SlidingWindow;
///
/// let last_hundred_calls = SlidingWindow::Count { size: 100 };
/// let last_minute = SlidingWindow::Time { duration: Duration::from_secs(60) };
/// assert_ne!(last_hundred_calls, last_minute);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SlidingWindow {
    /// The outcomes of the last `size` calls (at most 100 000).
    Count {
        /// Number of calls in the window.
        size: u32,
    },
    /// The outcomes of the calls that completed in the last `duration`, kept in ten
    /// buckets of `duration / 10` each: the window slides one bucket at a time.
    Time {
        /// Length of the window.
        #[serde(with = "duration_serde")]
        duration: Duration,
    },
}

/// Plain-data settings of a circuit breaker, loadable from a config file.
///
/// Build a breaker from it with
/// [`CircuitBreakerLayer::from_config`](super::CircuitBreakerLayer::from_config); the
/// fluent [`CircuitBreakerBuilder`](super::CircuitBreakerBuilder) sets the same fields.
/// Every field is optional in a config file and defaults to the value named on it.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// let cfg: CircuitBreakerConfig = serde_json::from_str(r#"{
///     "window": { "kind": "time", "duration": "30s" },
///     "failure_rate_threshold": 25.0,
///     "slow_call_duration": "2s",
///     "wait_in_open": { "kind": "exponential", "base": "5s", "max_delay": "5m" }
/// }"#)?;
/// cfg.validate()?;
/// assert_eq!(cfg.minimum_calls, 20);
/// # Ok::<(), palisade_resilience::BoxError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// The window the rates are computed over. Default: the last 100 calls.
    pub window: SlidingWindow,
    /// Open when at least this percentage of the window's calls failed, in `(0, 100]`.
    /// Default 50: half of the calls failing is an outage, not noise.
    pub failure_rate_threshold: f64,
    /// Calls slower than this count as slow (whatever their outcome). Default: none, no
    /// call is slow and no clock is read on the closed path.
    #[serde(
        with = "duration_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_call_duration: Option<Duration>,
    /// Open when at least this percentage of the window's calls were slow, in `(0, 100]`.
    /// Default 100: only when every call is slow.
    pub slow_call_rate_threshold: f64,
    /// No judgement before the window holds this many calls (for a count window, capped at
    /// its size). Default 20: a rate over fewer calls is noise.
    pub minimum_calls: u32,
    /// `Some(n)`: ignore rates and open after `n` failures in a row instead. Default: none.
    pub consecutive_failures: Option<u32>,
    /// How long to stay open before probing, indexed by the number of openings since the
    /// breaker last closed (`nominal_delay(1)` for the first opening, `(2)` for a reopening
    /// after failed probes, …). Default: constant 30 s.
    pub wait_in_open: Backoff,
    /// Calls let through while half-open; the breaker judges them once all have completed.
    /// Default 3.
    pub half_open_probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: SlidingWindow::Count { size: 100 },
            failure_rate_threshold: 50.0,
            slow_call_duration: None,
            slow_call_rate_threshold: 100.0,
            minimum_calls: 20,
            consecutive_failures: None,
            wait_in_open: Backoff::constant(Duration::from_secs(30)),
            half_open_probes: 3,
        }
    }
}

fn percent(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min: 0.0,
            max: 100.0,
        })
    }
}

impl CircuitBreakerConfig {
    /// Checks every setting: thresholds in `(0, 100]`, a non-empty window of at most
    /// 100 000 calls, a non-zero minimum, 1 to 10 000 probes, a valid non-zero open wait,
    /// and no slow-call duration in consecutive-failures mode (which ignores it).
    ///
    /// ```rust
    /// use palisade_resilience::{circuit_breaker::CircuitBreakerConfig, ConfigError};
    ///
    /// let mut cfg = CircuitBreakerConfig::default();
    /// cfg.failure_rate_threshold = 140.0;
    /// assert!(matches!(cfg.validate(), Err(ConfigError::OutOfRange { .. })));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        percent("failure_rate_threshold", self.failure_rate_threshold)?;
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        match self.window {
            SlidingWindow::Count { size: 0 } => return Err(ConfigError::Zero { field: "window" }),
            SlidingWindow::Count { size } if size > MAX_WINDOW_CALLS => {
                return Err(ConfigError::OutOfRange {
                    field: "window",
                    value: f64::from(size),
                    min: 1.0,
                    max: f64::from(MAX_WINDOW_CALLS),
                });
            }
            SlidingWindow::Time { duration } if duration < Duration::from_nanos(TIME_BUCKETS) => {
                return Err(ConfigError::Zero { field: "window" });
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::Zero {
                field: "minimum_calls",
            });
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return Err(ConfigError::OutOfRange {
                field: "half_open_probes",
                value: f64::from(self.half_open_probes),
                min: 1.0,
                max: f64::from(MAX_PROBES),
            });
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::Zero {
                field: "consecutive_failures",
            });
        }
        if self.slow_call_duration == Some(Duration::ZERO) {
            return Err(ConfigError::Zero {
                field: "slow_call_duration",
            });
        }
        if self.consecutive_failures.is_some() && self.slow_call_duration.is_some() {
            return Err(ConfigError::Invalid {
                field: "slow_call_duration",
                reason: "consecutive-failures mode does not judge slow calls",
            });
        }
        self.wait_in_open
            .validate()
            .map_err(|e| e.in_section("wait_in_open"))?;
        if self.wait_in_open.base().is_zero() {
            return Err(ConfigError::Zero {
                field: "wait_in_open",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_config_errors() {
        assert_eq!(CircuitBreakerConfig::default().validate(), Ok(()));
        let bad: Vec<fn(&mut CircuitBreakerConfig)> = vec![
            |c| c.failure_rate_threshold = 140.0,
            |c| c.failure_rate_threshold = 0.0,
            |c| c.failure_rate_threshold = f64::NAN,
            |c| c.slow_call_rate_threshold = 100.5,
            |c| c.window = SlidingWindow::Count { size: 0 },
            |c| c.window = SlidingWindow::Count { size: 1_000_000 },
            |c| {
                c.window = SlidingWindow::Time {
                    duration: Duration::ZERO,
                }
            },
            |c| c.minimum_calls = 0,
            |c| c.half_open_probes = 0,
            |c| c.consecutive_failures = Some(0),
            |c| c.slow_call_duration = Some(Duration::ZERO),
            |c| {
                c.consecutive_failures = Some(3);
                c.slow_call_duration = Some(Duration::from_secs(1));
            },
            |c| c.wait_in_open = Backoff::constant(Duration::ZERO),
            |c| {
                c.wait_in_open = Backoff::exponential(Duration::from_secs(2))
                    .with_max_delay(Duration::from_secs(1))
            },
        ];
        for (i, set) in bad.into_iter().enumerate() {
            let mut cfg = CircuitBreakerConfig::default();
            set(&mut cfg);
            assert!(
                cfg.validate().is_err(),
                "case {i} should be rejected: {cfg:?}"
            );
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = CircuitBreakerConfig {
            window: SlidingWindow::Time {
                duration: Duration::from_secs(10),
            },
            slow_call_duration: Some(Duration::from_millis(250)),
            ..CircuitBreakerConfig::default()
        };
        let text = serde_json::to_string(&cfg).unwrap();
        let back: CircuitBreakerConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }
}
