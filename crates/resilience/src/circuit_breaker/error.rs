//! The error a breaker answers with instead of calling the inner service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::CircuitState;

/// The breaker did not let the call through: it is open, forced open, or half-open with
/// every probe place taken.
///
/// It reaches the caller through [`BoxError`](crate::BoxError) like tower's own errors;
/// tell it apart by type. The inner service was not called.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let layer = CircuitBreakerLayer::builder("payments").build()?;
/// layer.handle().force_open();
/// let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// let err = svc.ready().await?.call(1).await.unwrap_err();
/// let open = err.downcast_ref::<CircuitOpen>().expect("typed error");
/// assert_eq!(open.name(), "payments");
/// assert_eq!(open.state(), CircuitState::ForcedOpen);
/// assert_eq!(open.remaining_wait(), None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    name: Arc<str>,
    state: CircuitState,
    remaining: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(name: Arc<str>, state: CircuitState, remaining: Option<Duration>) -> Self {
        Self {
            name,
            state,
            remaining,
        }
    }

    /// The name of the breaker that rejected the call.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder("payments").build()?;
    /// breaker.handle().force_open();
    /// let svc = ServiceBuilder::new()
    ///     .layer(breaker)
    ///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let error = svc.oneshot(1).await.expect_err("rejected");
    /// let open = error.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
    /// assert_eq!(open.name(), "payments");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state it was in: [`Open`](CircuitState::Open),
    /// [`ForcedOpen`](CircuitState::ForcedOpen) or [`HalfOpen`](CircuitState::HalfOpen)
    /// (all probe places taken).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder("payments").build()?;
    /// breaker.handle().force_open();
    /// let svc = ServiceBuilder::new()
    ///     .layer(breaker)
    ///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let error = svc.oneshot(1).await.expect_err("rejected");
    /// let open = error.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
    /// assert_eq!(open.state(), CircuitState::ForcedOpen);
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// How long until the breaker lets a probe through, when it is open and that is known
    /// (`None` when forced open or half-open). A good `Retry-After`.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let breaker = CircuitBreakerLayer::builder("payments").build()?;
    /// breaker.handle().force_open();
    /// let svc = ServiceBuilder::new()
    ///     .layer(breaker)
    ///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let error = svc.oneshot(1).await.expect_err("rejected");
    /// let open = error.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
    /// assert_eq!(open.remaining_wait(), None); // forced open: no set end
    /// # Ok(()) }
    /// ```
    pub fn remaining_wait(&self) -> Option<Duration> {
        self.remaining
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker `{}` is {}", self.name, self.state)?;
        match self.remaining {
            Some(wait) => write!(f, "; next probe in {wait:?}"),
            None if self.state == CircuitState::HalfOpen => f.write_str("; all probes taken"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CircuitOpen {}
