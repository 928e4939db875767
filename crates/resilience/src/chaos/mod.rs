//! Chaos: inject faults, latency and chosen outcomes into calls, deterministically from a
//! seed, to test that everything above copes.
//!
//! # What it is for
//!
//! A retry that never saw an error, a timeout that never fired and a breaker that never
//! opened are untested. This layer makes a healthy dependency misbehave on purpose: a
//! share of calls fail with [`InjectedFault`], a share answer with a response you choose
//! (a `503`, an empty list) without reaching the inner service, and a share are delayed
//! by a random latency in a range. Draws come from a tiny splitmix64 generator keyed by
//! the seed and the call's sequence number, so the same seed and the same call order give
//! the same injections: a failing test replays exactly.
//!
//! # When not to use it
//!
//! In production traffic without a switch: keep it behind configuration, and use the
//! [`ChaosHandle`] to turn it on and off at run time.
//!
//! # How it composes
//!
//! Put it innermost, right above the real dependency, so every strategy above sees the
//! faults as if they came from the dependency. Injected latency is added after the inner
//! call completes (the inner call runs meanwhile), so a timeout above sees it.
//!
//! With the `metrics` feature, injections count in `palisade_chaos_injections_total`
//! labelled `kind` (`fault`, `outcome`, `latency`).
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade_resilience::BoxError> {
//! let chaos = ChaosLayer::builder(42)
//!     .error_rate(0.3)
//!     .latency(0.5, Duration::from_millis(10), Duration::from_millis(100))
//!     .build()?;
//! let svc = chaos.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! let mut faults = 0;
//! for i in 0..100 {
//!     match svc.clone().oneshot(i).await {
//!         Ok(x) => assert_eq!(x, i),
//!         Err(e) if e.is::<InjectedFault>() => faults += 1,
//!         Err(e) => return Err(e),
//!     }
//! }
//! assert_eq!(faults, chaos.handle().faults());
//! assert!((15..=45).contains(&faults));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::rng::SplitMix64;
use crate::{BoxError, ConfigError};

/// The error of a call the chaos layer chose to fail; the inner service was not called.
///
/// ```rust
/// # use palisade_resilience::chaos::InjectedFault;
/// fn is_chaos(err: &palisade_resilience::BoxError) -> bool {
///     err.is::<InjectedFault>()
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    call: u64,
}

impl InjectedFault {
    /// The sequence number of the call (0 for the first since the layer was built).
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let error = svc.oneshot(1).await.expect_err("every call fails");
    /// assert_eq!(error.downcast_ref::<InjectedFault>().map(InjectedFault::call), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn call(&self) -> u64 {
        self.call
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chaos: injected fault on call #{}", self.call)
    }
}

impl std::error::Error for InjectedFault {}

/// Produces an injected response from the request.
///
/// Implemented for every `Fn(&Request) -> Response` and for [`NoOutcome`].
///
/// ```rust
/// use palisade_resilience::chaos::{InjectOutcome, NoOutcome};
///
/// let canned = |q: &&str| format!("cached answer to {q}");
/// assert_eq!(canned.outcome(&"q"), Some("cached answer to q".to_string()));
/// assert_eq!(InjectOutcome::<&str, String>::outcome(&NoOutcome, &"q"), None);
/// ```
pub trait InjectOutcome<Request, Response> {
    /// The response to answer with instead of calling the inner service.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::InjectOutcome;
    ///
    /// let canned = |path: &&str| format!("stub for {path}");
    /// assert_eq!(canned.outcome(&"/users"), Some("stub for /users".to_string()));
    /// ```
    fn outcome(&self, request: &Request) -> Option<Response>;
}

impl<Request, Response, F> InjectOutcome<Request, Response> for F
where
    F: Fn(&Request) -> Response,
{
    fn outcome(&self, request: &Request) -> Option<Response> {
        Some(self(request))
    }
}

/// No outcome injection (the default); see [`InjectOutcome`] for an example.
///
/// ```rust
/// use palisade_resilience::chaos::{InjectOutcome, NoOutcome};
///
/// assert_eq!(InjectOutcome::<u32, &str>::outcome(&NoOutcome, &7), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOutcome;

impl<Request, Response> InjectOutcome<Request, Response> for NoOutcome {
    fn outcome(&self, _: &Request) -> Option<Response> {
        None
    }
}

#[derive(Debug)]
struct Shared {
    seed: u64,
    error_rate: f64,
    outcome_rate: f64,
    latency_rate: f64,
    latency: (Duration, Duration),
    enabled: AtomicBool,
    calls: AtomicU64,
    faults: AtomicU64,
    outcomes: AtomicU64,
    delays: AtomicU64,
}

enum Injection {
    Fault(u64),
    Outcome,
    Pass,
}

impl Shared {
    /// The injections of the next call: what to do, and how long to delay it.
    fn draw(&self) -> (Injection, Option<Duration>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return (Injection::Pass, None);
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = SplitMix64::new(self.seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let what = rng.next_f64();
        let injection = if what < self.error_rate {
            self.faults.fetch_add(1, Ordering::Relaxed);
            Injection::Fault(n)
        } else if what < self.error_rate + self.outcome_rate {
            self.outcomes.fetch_add(1, Ordering::Relaxed);
            Injection::Outcome
        } else {
            Injection::Pass
        };
        let delay = (rng.next_f64() < self.latency_rate).then(|| {
            self.delays.fetch_add(1, Ordering::Relaxed);
            let (lo, hi) = self.latency;
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rng.between(nanos(lo), nanos(hi)))
        });
        (injection, delay)
    }
}

/// The handle on a chaos layer: switch it on and off, count what it injected.
///
/// ```rust
/// use palisade_resilience::chaos::ChaosLayer;
///
/// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
/// chaos.handle().disable();
/// assert!(!chaos.handle().is_enabled());
/// chaos.handle().enable();
/// assert_eq!(chaos.handle().faults(), 0);
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ChaosHandle {
    shared: Arc<Shared>,
}

impl ChaosHandle {
    /// Injects from now on (the default).
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// chaos.handle().disable();
    /// assert_eq!(svc.clone().oneshot(1).await?, 1);
    /// chaos.handle().enable(); // e.g. from an admin endpoint in a staging environment
    /// assert!(svc.oneshot(1).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn enable(&self) {
        self.shared.enabled.store(true, Ordering::Relaxed);
    }

    /// Lets every call through untouched from now on (no draw, no sequence number).
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// chaos.handle().disable();
    /// assert_eq!(svc.oneshot(1).await?, 1); // untouched
    /// assert_eq!(chaos.handle().faults(), 0);
    /// # Ok(()) }
    /// ```
    pub fn disable(&self) {
        self.shared.enabled.store(false, Ordering::Relaxed);
    }

    /// Whether it injects.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// assert!(chaos.handle().is_enabled()); // injecting from the start
    /// chaos.handle().disable();
    /// assert!(!chaos.handle().is_enabled());
    /// # Ok(()) }
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let _ = svc.clone().oneshot(1).await;
    /// let _ = svc.oneshot(2).await;
    /// assert_eq!(chaos.handle().faults(), 2);
    /// # Ok(()) }
    /// ```
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::Relaxed)
    }

    /// Outcomes injected so far.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).outcome(1.0, |_: &u32| 0_u32).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// assert_eq!(svc.oneshot(5).await?, 0); // answered by the injected outcome
    /// assert_eq!(chaos.handle().outcomes(), 1);
    /// # Ok(()) }
    /// ```
    pub fn outcomes(&self) -> u64 {
        self.shared.outcomes.load(Ordering::Relaxed)
    }

    /// Calls delayed so far.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let delay = Duration::from_millis(300);
    /// let chaos = ChaosLayer::builder(7).latency(1.0, delay, delay).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let started = tokio::time::Instant::now();
    /// assert_eq!(svc.oneshot(1).await?, 1);
    /// assert_eq!(started.elapsed(), Duration::from_millis(300));
    /// assert_eq!(chaos.handle().delays(), 1);
    /// # Ok(()) }
    /// ```
    pub fn delays(&self) -> u64 {
        self.shared.delays.load(Ordering::Relaxed)
    }
}

/// Builds a [`ChaosLayer`]; every rate defaults to 0.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::chaos::ChaosLayer;
///
/// let chaos = ChaosLayer::builder(2024)
///     .error_rate(0.05)
///     .latency(0.1, Duration::from_millis(100), Duration::from_secs(2))
///     .build()?;
/// assert!(ChaosLayer::builder(0).error_rate(2.0).build().is_err());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ChaosBuilder<O = NoOutcome> {
    seed: u64,
    error_rate: f64,
    outcome_rate: f64,
    outcome: O,
    latency_rate: f64,
    latency: (Duration, Duration),
}

impl<O> ChaosBuilder<O> {
    /// Fails this share of calls with [`InjectedFault`], in `[0, 1]`.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// assert!(svc.oneshot(1).await.is_err()); // rate 1: every call
    /// # Ok(()) }
    /// ```
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// Delays this share of calls by a latency uniform in `[min, max]`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7)
    ///     .latency(1.0, Duration::from_millis(10), Duration::from_millis(50))
    ///     .build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let started = tokio::time::Instant::now();
    /// svc.oneshot(1).await?;
    /// let took = started.elapsed();
    /// assert!(took >= Duration::from_millis(10) && took <= Duration::from_millis(50));
    /// # Ok(()) }
    /// ```
    pub fn latency(mut self, rate: f64, min: Duration, max: Duration) -> Self {
        self.latency_rate = rate;
        self.latency = (min, max);
        self
    }

    /// Answers this share of calls with `outcome(&request)` instead of calling the inner
    /// service (faults and outcomes together may not exceed 1).
    ///
    /// ```rust
    /// use palisade_resilience::chaos::ChaosLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// // Every call gets a canned 503 (use e.g. 0.1 for every tenth).
    /// let chaos = ChaosLayer::builder(1)
    ///     .outcome(1.0, |_: &http::Request<()>| {
    ///         http::Response::builder().status(503).body(()).unwrap_or_default()
    ///     })
    ///     .build()?;
    /// let ok = service_fn(|_| async { Ok::<_, std::io::Error>(http::Response::new(())) });
    /// let res = chaos.layer(ok).oneshot(http::Request::new(())).await?;
    /// assert_eq!(res.status(), 503);
    /// # Ok(()) }
    /// ```
    pub fn outcome<O2>(self, rate: f64, outcome: O2) -> ChaosBuilder<O2> {
        ChaosBuilder {
            seed: self.seed,
            error_rate: self.error_rate,
            outcome_rate: rate,
            outcome,
            latency_rate: self.latency_rate,
            latency: self.latency,
        }
    }

    /// Validates (rates in `[0, 1]`, faults + outcomes ≤ 1, latency min ≤ max) and builds.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::ChaosLayer;
    ///
    /// assert!(ChaosLayer::builder(1).error_rate(0.1).build().is_ok());
    /// assert!(ChaosLayer::builder(1).error_rate(-0.1).build().is_err());
    /// ```
    pub fn build(self) -> Result<ChaosLayer<O>, ConfigError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("outcome_rate", self.outcome_rate),
            ("latency_rate", self.latency_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: rate,
                    min: 0.0,
                    max: 1.0,
                });
            }
        }
        if self.error_rate + self.outcome_rate > 1.0 {
            return Err(ConfigError::Invalid {
                field: "outcome_rate",
                reason: "error_rate + outcome_rate exceeds 1",
            });
        }
        if self.latency.1 < self.latency.0 {
            return Err(ConfigError::BelowMinimum {
                field: "latency max",
                value: self.latency.1,
                minimum_field: "latency min",
                minimum: self.latency.0,
            });
        }
        Ok(ChaosLayer {
            handle: ChaosHandle {
                shared: Arc::new(Shared {
                    seed: self.seed,
                    error_rate: self.error_rate,
                    outcome_rate: self.outcome_rate,
                    latency_rate: self.latency_rate,
                    latency: self.latency,
                    enabled: AtomicBool::new(true),
                    calls: AtomicU64::new(0),
                    faults: AtomicU64::new(0),
                    outcomes: AtomicU64::new(0),
                    delays: AtomicU64::new(0),
                }),
            },
            outcome: self.outcome,
        })
    }
}

/// Injects faults, latency and outcomes; see the [module docs](self). Clones (and the
/// services they build) share one call sequence, so the draws follow the global call
/// order. See the [module docs](self) for a full example.
///
/// ```rust
/// use palisade_resilience::chaos::ChaosLayer;
///
/// let chaos = ChaosLayer::builder(1).error_rate(0.5).build()?;
/// assert!(chaos.handle().is_enabled());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ChaosLayer<O = NoOutcome> {
    handle: ChaosHandle,
    outcome: O,
}

impl ChaosLayer {
    /// Starts a builder whose draws are fixed by `seed`.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// // The same seed draws the same faults: a failing test run can be replayed.
    /// let replay = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// assert_eq!(replay.handle().faults(), chaos.handle().faults());
    /// # Ok(()) }
    /// ```
    pub fn builder(seed: u64) -> ChaosBuilder {
        ChaosBuilder {
            seed,
            error_rate: 0.0,
            outcome_rate: 0.0,
            outcome: NoOutcome,
            latency_rate: 0.0,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }
}

impl<O> ChaosLayer<O> {
    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// let handle = chaos.handle().clone(); // kept to switch chaos on and off at runtime
    /// handle.disable();
    /// assert_eq!(svc.oneshot(1).await?, 1);
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &ChaosHandle {
        &self.handle
    }
}

impl<S, O: Clone> Layer<S> for ChaosLayer<O> {
    type Service = Chaos<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos {
            inner,
            handle: self.handle.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// A service with injected chaos; built by [`ChaosLayer`].
///
/// ```rust
/// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let svc = ChaosLayer::builder(9).error_rate(1.0).build()?
///     .layer(service_fn(|x: u8| async move { Ok::<_, std::io::Error>(x) }));
/// assert!(svc.clone().oneshot(1).await.unwrap_err().is::<InjectedFault>());
/// svc.handle().disable();
/// assert_eq!(svc.oneshot(1).await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Chaos<S, O> {
    inner: S,
    handle: ChaosHandle,
    outcome: O,
}

impl<S, O> Chaos<S, O> {
    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).error_rate(1.0).build()?;
    /// let svc = chaos.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// svc.handle().disable(); // the layer's handle, shared
    /// assert!(!chaos.handle().is_enabled());
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &ChaosHandle {
        &self.handle
    }
}

impl<S, O, Req> Service<Req> for Chaos<S, O>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    O: InjectOutcome<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (injection, delay) = self.handle.shared.draw();
        #[cfg(feature = "metrics")]
        {
            let kind = match injection {
                Injection::Pass => None,
                Injection::Fault(_) => Some("fault"),
                Injection::Outcome => Some("outcome"),
            };
            for kind in kind.into_iter().chain(delay.map(|_| "latency")) {
                metrics::counter!("palisade_chaos_injections_total", "kind" => kind).increment(1);
            }
        }
        let delay = delay.map(tokio::time::sleep);
        let (inner, result) = match injection {
            Injection::Pass => (Some(self.inner.call(req)), None),
            Injection::Fault(call) => (None, Some(Err(InjectedFault { call }.into()))),
            Injection::Outcome => match self.outcome.outcome(&req) {
                Some(response) => (None, Some(Ok(response))),
                None => (Some(self.inner.call(req)), None),
            },
        };
        ResponseFuture {
            inner,
            delay,
            result,
        }
    }
}

pin_project! {
    /// The response future of [`Chaos`].
    ///
    /// ```rust
    /// use palisade_resilience::chaos::ChaosLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let chaos = ChaosLayer::builder(7).build()?; // no fault configured
    /// let mut svc = chaos.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // this future
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<F, T> {
        #[pin]
        inner: Option<F>,
        #[pin]
        delay: Option<Sleep>,
        result: Option<Result<T, BoxError>>,
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("delayed", &self.delay.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(inner) = this.inner.as_mut().as_pin_mut()
            && let Poll::Ready(result) = inner.poll(cx)
        {
            *this.result = Some(result.map_err(Into::into));
            this.inner.set(None);
        }
        if let Some(delay) = this.delay.as_mut().as_pin_mut() {
            ready!(delay.poll(cx));
            this.delay.set(None);
        }
        match this.result.take() {
            Some(result) => Poll::Ready(result),
            None if this.inner.is_some() => Poll::Pending,
            None => Poll::Ready(Err("chaos future polled after completion".into())),
        }
    }
}
