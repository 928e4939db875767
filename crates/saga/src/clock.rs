//! The wall clock leases and deadlines are measured with.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The wall clock an orchestrator reads for leases, deadlines and history timestamps.
///
/// Leases are compared across processes, so they need wall time, not `Instant`s. Tests
/// share a [`Clock::manual`] between orchestrators and move it forward to expire a lease
/// without sleeping; waiting itself (backoff, timeouts) uses `tokio::time`, so a paused
/// runtime drives it.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_saga::Clock;
///
/// let clock = Clock::manual(chrono::Utc::now());
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now() - before, chrono::Duration::seconds(60));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system's wall clock (the default).
    ///
    /// ```rust
    /// use palisade_saga::Clock;
    ///
    /// let before = chrono::Utc::now();
    /// assert!(Clock::system().now() >= before);
    /// ```
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still until [`advance`](Self::advance)d; clones share it.
    ///
    /// ```rust
    /// use palisade_saga::Clock;
    ///
    /// let start = chrono::Utc::now();
    /// let clock = Clock::manual(start);
    /// assert_eq!(clock.now(), start); // stands still
    /// ```
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// Now.
    ///
    /// ```rust
    /// use palisade_saga::Clock;
    ///
    /// let start = chrono::Utc::now();
    /// assert_eq!(Clock::manual(start).now(), start);
    /// ```
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(t) => *t.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::Clock;
    ///
    /// let start = chrono::Utc::now();
    /// let clock = Clock::manual(start);
    /// let shared = clock.clone(); // clones share the time
    /// clock.advance(Duration::from_secs(90));
    /// assert_eq!(shared.now() - start, chrono::Duration::seconds(90));
    /// ```
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.manual {
            let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
            *t += to_chrono(by);
        }
    }
}

pub(crate) fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
