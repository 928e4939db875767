use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::circuit_breaker::CircuitBreakerConfig;
use crate::duration_serde;

/// Every policy of a [`PipelineLayer`](super::PipelineLayer) as plain data, so a service
/// loads them from its config file. Absent sections are strategies left out.
///
/// ```rust
/// use palisade_resilience::pipeline::{PipelineConfig, PipelineLayer};
///
/// let config: PipelineConfig = serde_json::from_str(r#"{
///     "timeout": "2s",
///     "total_timeout": "10s",
///     "retry": {
///         "max_attempts": 4,
///         "backoff": {
///             "kind": "exponential", "base": "100ms", "max_delay": "2s", "jitter": "full"
///         }
///     },
///     "circuit_breaker": { "failure_rate_threshold": 50.0 },
///     "bulkhead": { "max_concurrent": 64 },
///     "rate_limit": { "rate": 500, "period": "1s" }
/// }"#)?;
/// let layer = PipelineLayer::builder("payments").config(config).build()?;
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// A deadline on the whole call, retries included (outermost). Default: none.
    #[serde(
        with = "duration_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_timeout: Option<Duration>,
    /// Retries of failed attempts. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// The circuit breaker (r2's [`CircuitBreakerConfig`]). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The rate limiter. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// The bulkhead. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadConfig>,
    /// A deadline on each attempt (innermost). Default: none.
    #[serde(
        with = "duration_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

fn three() -> u32 {
    3
}

/// Retry settings; see [`RetryBuilder`](crate::retry::RetryBuilder) for their meaning.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// use palisade_resilience::pipeline::RetryConfig;
///
/// let retry = RetryConfig {
///     max_attempts: 4,
///     backoff: Backoff::constant(Duration::from_millis(50)),
///     ..RetryConfig::default()
/// };
/// assert_eq!(retry.max_elapsed, None);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Most attempts, the first included. Default 3.
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// No retry starts after this much time since the first call. Default: none.
    #[serde(
        default,
        with = "duration_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_elapsed: Option<Duration>,
    /// Delays between attempts. Default [`Backoff::default`].
    #[serde(default)]
    pub backoff: Backoff,
    /// A retry budget private to this pipeline (pass a shared one with
    /// [`PipelineBuilder::retry_budget`](super::PipelineBuilder::retry_budget)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_elapsed: None,
            backoff: Backoff::default(),
            budget: None,
        }
    }
}

/// Retry budget settings; see [`RetryBudget`](crate::retry::RetryBudget).
///
/// ```rust
/// use palisade_resilience::pipeline::PipelineConfig;
///
/// let config: PipelineConfig = serde_json::from_str(
///     r#"{ "retry": { "max_attempts": 3, "budget": { "retry_ratio": 0.1, "min_per_sec": 5 } } }"#,
/// )?;
/// let budget = config.retry.and_then(|r| r.budget).expect("a budget");
/// assert_eq!((budget.retry_ratio, budget.min_per_sec), (0.1, 5));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Share of requests that may be retried. Default 0.2.
    #[serde(default = "default_ratio")]
    pub retry_ratio: f64,
    /// Retries per second allowed whatever the traffic. Default 10.
    #[serde(default = "default_min_per_sec")]
    pub min_per_sec: u32,
    /// Most tokens banked. Default `max(10 × min_per_sec, 10)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<u32>,
}

fn default_ratio() -> f64 {
    0.2
}

fn default_min_per_sec() -> u32 {
    10
}

/// Rate limiter settings; see [`RateLimiterBuilder`](crate::rate_limit::RateLimiterBuilder).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::pipeline::PipelineConfig;
///
/// let config: PipelineConfig =
///     serde_json::from_str(r#"{ "rate_limit": { "rate": 600, "period": "1m", "burst": 20 } }"#)?;
/// let limit = config.rate_limit.expect("a rate limit");
/// assert_eq!((limit.rate, limit.period, limit.burst), (600, Duration::from_secs(60), Some(20)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Calls per `period`.
    pub rate: u32,
    /// The period. Default 1 s.
    #[serde(default = "one_second", with = "duration_serde")]
    pub period: Duration,
    /// Calls allowed back to back. Default: `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Longest wait for a slot before rejecting. Default zero.
    #[serde(default, with = "duration_serde")]
    pub max_wait: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// Bulkhead settings; see [`BulkheadBuilder`](crate::bulkhead::BulkheadBuilder).
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::pipeline::PipelineConfig;
///
/// let config: PipelineConfig =
///     serde_json::from_str(r#"{ "bulkhead": { "max_concurrent": 8, "max_wait": "20ms" } }"#)?;
/// let bulkhead = config.bulkhead.expect("a bulkhead");
/// assert_eq!((bulkhead.max_concurrent, bulkhead.max_wait), (8, Duration::from_millis(20)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls in flight at once.
    pub max_concurrent: usize,
    /// Longest wait for a permit before rejecting. Default zero.
    #[serde(default, with = "duration_serde")]
    pub max_wait: Duration,
}
