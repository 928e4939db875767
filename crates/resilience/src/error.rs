//! The configuration error every builder in this crate returns.

use std::time::Duration;

/// A policy was configured with values that cannot work.
///
/// Every builder in this crate validates its configuration when it is built (or when
/// [`validate`](crate::backoff::Backoff::validate) is called), so a failure-rate threshold
/// of 140 %, a zero window or a maximum below its base is reported here, before the first
/// call, instead of panicking or misbehaving under load.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::{backoff::Backoff, ConfigError};
///
/// let err = Backoff::exponential(Duration::from_secs(1))
///     .with_max_delay(Duration::from_millis(10))
///     .validate()
///     .unwrap_err();
/// assert!(matches!(err, ConfigError::BelowMinimum { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that must be positive is zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The setting, e.g. `"max_concurrent"`.
        field: &'static str,
    },
    /// A number lies outside the range it is meaningful in.
    #[error("`{field}` is {value}, outside [{min}, {max}]")]
    OutOfRange {
        /// The setting, e.g. `"failure_rate_threshold"`.
        field: &'static str,
        /// The value given.
        value: f64,
        /// The smallest accepted value.
        min: f64,
        /// The largest accepted value.
        max: f64,
    },
    /// A duration is below another one it must not be below (a max below its base).
    #[error("`{field}` ({value:?}) must not be below `{minimum_field}` ({minimum:?})")]
    BelowMinimum {
        /// The setting that is too small, e.g. `"max_delay"`.
        field: &'static str,
        /// Its value.
        value: Duration,
        /// The setting it must not be below, e.g. `"base"`.
        minimum_field: &'static str,
        /// That setting's value.
        minimum: Duration,
    },
    /// Settings that cannot be combined, with the reason.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// The setting at fault.
        field: &'static str,
        /// Why it cannot work.
        reason: &'static str,
    },
    /// An error inside one section of a [`PipelineConfig`](crate::pipeline::PipelineConfig).
    #[error("in `{section}`: {source}")]
    InSection {
        /// The section, e.g. `"retry"`.
        section: &'static str,
        /// What is wrong in it.
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// Wraps this error with the name of the config section it was found in.
    ///
    /// ```rust
    /// use palisade_resilience::ConfigError;
    ///
    /// let error = ConfigError::Zero { field: "max_attempts" }.in_section("retry");
    /// assert!(error.to_string().starts_with("in `retry`: "));
    /// ```
    pub fn in_section(self, section: &'static str) -> Self {
        ConfigError::InSection {
            section,
            source: Box::new(self),
        }
    }
}
