//! The handle shared by every clone of a breaker: read state and metrics, force, subscribe.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::CircuitOpen;
use super::config::CircuitBreakerConfig;
use super::state::{Core, Permit, Token};

/// The state of a breaker.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::CircuitState;
///
/// assert!(CircuitState::Closed.admits_calls());
/// assert!(!CircuitState::ForcedOpen.admits_calls());
/// assert_eq!(CircuitState::HalfOpen.to_string(), "half-open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; outcomes are recorded and judged.
    Closed,
    /// Calls are rejected with [`CircuitOpen`] until the open wait has passed.
    Open,
    /// A bounded number of probe calls pass; their outcomes close or reopen the breaker.
    HalfOpen,
    /// Every call is rejected until [`reset`](CircuitBreakerHandle::reset): set by hand.
    ForcedOpen,
    /// Every call passes and nothing is recorded until `reset`: set by hand.
    Disabled,
}

impl CircuitState {
    /// Whether calls (all of them, or probes) can pass in this state.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitState;
    ///
    /// assert!(CircuitState::HalfOpen.admits_calls());
    /// assert!(!CircuitState::ForcedOpen.admits_calls());
    /// ```
    pub fn admits_calls(self) -> bool {
        !matches!(self, CircuitState::Open | CircuitState::ForcedOpen)
    }

    /// A stable lower-case name, as used in logs and metric labels.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitState;
    ///
    /// assert_eq!(CircuitState::HalfOpen.as_str(), "half-open"); // the metrics label
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
            CircuitState::ForcedOpen => "forced-open",
            CircuitState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, as sent to [`subscribe`](CircuitBreakerHandle::subscribe)rs and
/// [`on_transition`](CircuitBreakerHandle::on_transition) listeners.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder("search").build()?;
/// let mut events = layer.handle().subscribe();
/// layer.handle().force_open();
/// let t = events.try_recv().expect("one transition");
/// assert_eq!(
///     (t.name.as_ref(), t.from, t.to),
///     ("search", CircuitState::Closed, CircuitState::ForcedOpen)
/// );
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateTransition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state it left.
    pub from: CircuitState,
    /// The state it entered.
    pub to: CircuitState,
}

/// A snapshot of a breaker's window and counters.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder("search").build()?;
/// let m = layer.handle().metrics();
/// assert_eq!((m.state, m.calls, m.failure_rate), (CircuitState::Closed, 0, None));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CircuitMetrics {
    /// The current state.
    pub state: CircuitState,
    /// Calls in the sliding window (0 in consecutive-failures mode).
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// `failures / calls` in percent, `None` with no calls.
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls` in percent, `None` with no calls.
    pub slow_call_rate: Option<f64>,
    /// Failures in a row (consecutive-failures mode only).
    pub consecutive_failures: u32,
    /// Calls rejected since the breaker was built.
    pub rejected: u64,
    /// Openings since the breaker last closed (indexes the open wait).
    pub openings: u32,
    /// Time left in the open state, when open.
    pub remaining_wait: Option<Duration>,
}

/// A shared handle on one breaker: every service built from the same
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer), and every clone of them, uses
/// this breaker. Cloning the handle is cheap and the clone refers to the same breaker.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder("ledger").build()?;
/// let handle = layer.handle().clone();
/// handle.force_open();                 // e.g. from an admin endpoint
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.disable();                    // let everything through, record nothing
/// assert_eq!(handle.state(), CircuitState::Disabled);
/// handle.reset();                      // closed, empty window
/// assert_eq!(handle.state(), CircuitState::Closed);
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) tokens: Arc<[Arc<Token>]>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

impl CircuitBreakerHandle {
    /// A breaker from an already validated config.
    pub(crate) fn new_unchecked(name: Arc<str>, config: CircuitBreakerConfig) -> Self {
        let core = Core::new(name, config);
        let tokens = Core::tokens(&core);
        Self { core, tokens }
    }

    pub(crate) fn acquire(&self) -> Result<Permit, Box<CircuitOpen>> {
        self.core.acquire(&self.tokens)
    }

    /// The breaker's name, as carried by its errors, events and metrics.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// assert_eq!(handle.name(), "orders");
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The settings it was built with.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// assert_eq!(handle.config().half_open_probes, 3); // the default
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn config(&self) -> &CircuitBreakerConfig {
        self.core.config()
    }

    /// The current state. An open breaker whose wait has passed still reads
    /// [`Open`](CircuitState::Open) until the next call turns it half-open.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// A snapshot of the window and counters.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// let metrics = handle.metrics();
    /// let seen = (metrics.state, metrics.calls, metrics.failure_rate);
    /// assert_eq!(seen, (CircuitState::Closed, 0, None));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn metrics(&self) -> CircuitMetrics {
        self.core.metrics()
    }

    /// Rejects every call until [`reset`](Self::reset) (or [`disable`](Self::disable)).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// handle.force_open(); // maintenance: reject every call until reset
    /// assert_eq!(handle.state(), CircuitState::ForcedOpen);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn force_open(&self) {
        self.core.force(CircuitState::ForcedOpen);
    }

    /// Lets every call through and records nothing until [`reset`](Self::reset).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// handle.disable(); // let everything through, record nothing
    /// assert_eq!(handle.state(), CircuitState::Disabled);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn disable(&self) {
        self.core.force(CircuitState::Disabled);
    }

    /// Closes the breaker with an empty window and forgets past openings.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// handle.force_open();
    /// handle.reset();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn reset(&self) {
        self.core.force(CircuitState::Closed);
    }

    /// A receiver of every later state change (a tokio broadcast channel holding the last
    /// 64; a receiver that falls further behind gets `RecvError::Lagged`).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let handle = CircuitBreakerLayer::builder("orders").build()?.handle().clone();
    /// let mut transitions = handle.subscribe();
    /// handle.force_open();
    /// let change = transitions.try_recv().expect("a transition");
    /// assert_eq!((change.from, change.to), (CircuitState::Closed, CircuitState::ForcedOpen));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.core.subscribe()
    }

    /// Calls `listener` on every later state change, on the thread that made it, after the
    /// change is visible. The listener may use this handle (e.g. to `force_open`).
    ///
    /// ```rust
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("mail").build()?;
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let counter = seen.clone();
    /// layer.handle().on_transition(move |t| {
    ///     println!("{} went {} -> {}", t.name, t.from, t.to);
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// layer.handle().force_open();
    /// assert_eq!(seen.load(Ordering::Relaxed), 1);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn on_transition(&self, listener: impl Fn(&StateTransition) + Send + Sync + 'static) {
        self.core.on_transition(Arc::new(listener));
    }
}
