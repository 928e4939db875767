use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ConfigError;

/// A named pool of call permits, shared by every service that holds a clone.
///
/// Give critical and non-critical dependencies separate bulkheads so the slow one cannot
/// take the permits the other needs; give several services one `Bulkhead` to make them
/// share a pool.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::bulkhead::Bulkhead;
///
/// let critical = Bulkhead::builder("payments").max_concurrent(32).build()?;
/// let optional = Bulkhead::builder("recommendations")
///     .max_concurrent(4)
///     .max_wait(Duration::from_millis(20))
///     .build()?;
/// assert_eq!(critical.available(), 32);
/// assert_eq!(optional.name(), "recommendations");
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Bulkhead {
    pub(crate) state: Arc<State>,
}

pub(crate) struct State {
    pub(crate) name: Arc<str>,
    in_use: AtomicUsize,
    waiters: AtomicUsize,
    notify: Notify,
    pub(crate) max_concurrent: usize,
    pub(crate) max_wait: Duration,
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.state.name)
            .field("max_concurrent", &self.state.max_concurrent)
            .field("max_wait", &self.state.max_wait)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Builds a [`Bulkhead`]; every setter names its default.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::bulkhead::Bulkhead;
///
/// let critical = Bulkhead::builder("auth").max_concurrent(32).build()?; // fail fast
/// let optional = Bulkhead::builder("recommendations")
///     .max_concurrent(4)
///     .max_wait(Duration::from_millis(20)) // queue a little
///     .build()?;
/// assert_eq!((critical.max_concurrent(), optional.max_wait()), (32, Duration::from_millis(20)));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: usize,
    max_wait: Duration,
}

impl BulkheadBuilder {
    /// Calls allowed in flight at once (default 25, resilience4j's default). Must be ≥ 1.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(2).build()?;
    /// assert_eq!(bulkhead.max_concurrent(), 2);
    /// assert!(Bulkhead::builder("none").max_concurrent(0).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// How long `poll_ready` waits for a permit before the call is rejected with
    /// [`BulkheadFull`](super::BulkheadFull) (default zero: fail fast, which is what a
    /// bulkhead is for — a queue in front of a saturated dependency only adds latency).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports")
    ///     .max_concurrent(1)
    ///     .max_wait(Duration::from_millis(50))
    ///     .build()?;
    /// let held = bulkhead.try_acquire().expect("free");
    /// let started = tokio::time::Instant::now();
    /// assert!(bulkhead.acquire().await.is_none()); // waited 50 ms, then gave up
    /// assert_eq!(started.elapsed(), Duration::from_millis(50));
    /// drop(held);
    /// # Ok(()) }
    /// ```
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Validates and builds the shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").build()?;
    /// assert_eq!(bulkhead.max_concurrent(), 25); // the default
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::Zero {
                field: "max_concurrent",
            });
        }
        Ok(Bulkhead {
            state: Arc::new(State {
                name: self.name,
                in_use: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                notify: Notify::new(),
                max_concurrent: self.max_concurrent,
                max_wait: self.max_wait,
            }),
        })
    }
}

impl Bulkhead {
    /// A builder for a bulkhead called `name` (the name appears in errors and events).
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(4).build()?;
    /// assert_eq!((bulkhead.name(), bulkhead.available()), ("reports", 4));
    /// # Ok(()) }
    /// ```
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadBuilder {
        BulkheadBuilder {
            name: name.into(),
            max_concurrent: 25,
            max_wait: Duration::ZERO,
        }
    }

    /// The bulkhead's name.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// assert_eq!(Bulkhead::builder("reports").build()?.name(), "reports");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The most calls in flight at once.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// assert_eq!(Bulkhead::builder("reports").max_concurrent(3).build()?.max_concurrent(), 3);
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent(&self) -> usize {
        self.state.max_concurrent
    }

    /// How long a call may wait for a permit.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// assert_eq!(Bulkhead::builder("reports").build()?.max_wait(), Duration::ZERO); // fail fast
    /// # Ok(()) }
    /// ```
    pub fn max_wait(&self) -> Duration {
        self.state.max_wait
    }

    /// Calls in flight now (permits taken).
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").build()?;
    /// let _permit = bulkhead.try_acquire();
    /// assert_eq!(bulkhead.in_flight(), 1);
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> usize {
        self.state.in_use.load(Ordering::Relaxed)
    }

    /// Permits free now.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(2).build()?;
    /// let permit = bulkhead.try_acquire();
    /// assert_eq!(bulkhead.available(), 1);
    /// drop(permit);
    /// assert_eq!(bulkhead.available(), 2);
    /// # Ok(()) }
    /// ```
    pub fn available(&self) -> usize {
        self.state.max_concurrent.saturating_sub(self.in_flight())
    }

    /// Takes a permit if one is free, without waiting. The permit is returned when
    /// dropped.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(1).build()?;
    /// let permit = bulkhead.try_acquire().expect("free");
    /// assert!(bulkhead.try_acquire().is_none()); // full: fail fast
    /// drop(permit);
    /// assert!(bulkhead.try_acquire().is_some());
    /// # Ok(()) }
    /// ```
    pub fn try_acquire(&self) -> Option<Permit> {
        State::try_acquire(&self.state)
    }

    /// Takes a permit, waiting up to `max_wait` for one; `None` when none came in time.
    ///
    /// Cancellation safe: dropping the future gives up the wait and takes no permit.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::Bulkhead;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // Guard work that is not a tower service with the same bulkhead.
    /// let bulkhead = Bulkhead::builder("reports").max_concurrent(1).build()?;
    /// let permit = bulkhead.acquire().await.expect("free");
    /// assert_eq!(bulkhead.in_flight(), 1);
    /// drop(permit);
    /// # Ok(()) }
    /// ```
    pub fn acquire(&self) -> impl Future<Output = Option<Permit>> + Send + Sync + 'static {
        wait_for_permit(self.state.clone())
    }
}

impl State {
    /// The hot path: one CAS on the in-use counter, no lock.
    #[inline]
    fn try_acquire(this: &Arc<State>) -> Option<Permit> {
        let mut current = this.in_use.load(Ordering::Relaxed);
        loop {
            if current >= this.max_concurrent {
                return None;
            }
            match this.in_use.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        state: this.clone(),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn release(&self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        // Waiters are woken only when there are any: the unsaturated path takes no lock.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}

/// One call's share of a [`Bulkhead`]; dropping it returns the permit.
///
/// ```rust
/// use palisade_resilience::bulkhead::Bulkhead;
///
/// let pool = Bulkhead::builder("exports").max_concurrent(2).build()?;
/// let permit = pool.try_acquire().expect("a free permit");
/// assert_eq!(pool.available(), 1);
/// drop(permit); // the permit goes back
/// assert_eq!(pool.available(), 2);
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub struct Permit {
    state: Arc<State>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bulkhead", &self.state.name)
            .finish()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.state.release();
    }
}

struct WaiterGuard<'a>(&'a State);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits up to `max_wait` for a permit. Not FIFO: a caller arriving while a permit is
/// free takes it even when others wait; that is what keeps the fast path lock-free.
pub(crate) async fn wait_for_permit(state: Arc<State>) -> Option<Permit> {
    if let Some(permit) = State::try_acquire(&state) {
        return Some(permit);
    }
    if state.max_wait.is_zero() {
        return None;
    }
    let started = tokio::time::Instant::now();
    state.waiters.fetch_add(1, Ordering::SeqCst);
    let _guard = WaiterGuard(&state);
    let permit = tokio::time::timeout(state.max_wait, async {
        loop {
            let mut notified = pin!(state.notify.notified());
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            if let Some(permit) = State::try_acquire(&state) {
                return permit;
            }
            notified.await;
        }
    })
    .await
    .ok();
    crate::telemetry::bulkhead_waited(&state.name, started.elapsed());
    permit
}
