//! Load shedding by priority: when saturated, turn away the least important requests
//! first, so the important ones still get through.
//!
//! # What it protects against
//!
//! An overloaded service that treats every request alike fails them all alike: the
//! checkout times out together with the recommendation widget. Shedding gives each
//! request a priority (a function of the request: a header, a route, a tenant tier) and
//! each priority a share of the capacity it may fill: with the default shares
//! `[100 %, 90 %, 75 %, 50 %]`, priority 3 (the least important) is refused once half the
//! capacity is in use, priority 0 only when all of it is. A refused request fails at once
//! with [`Shed`], cheaply, instead of queueing and timing out.
//!
//! # When not to use it
//!
//! - When every request matters equally: a [`bulkhead`](crate::bulkhead) or an
//!   [adaptive limit](crate::adaptive) is simpler.
//! - As a queue: a shed request is gone; the caller decides whether to retry later.
//!
//! # How it composes
//!
//! Put it at the edge of the service, outermost, so shed requests cost nothing further.
//! The capacity is fixed ([`Capacity::Fixed`]) or follows an adaptive limiter
//! ([`Capacity::Adaptive`]), so shedding tightens as the dependency slows down. With
//! axum's `HandleErrorLayer`, map `Shed` to `503` with a `Retry-After`.
//!
//! # Cost and cancellation
//!
//! One compare-exchange on the in-flight count per call; the slot is given back when the
//! call completes or its future is dropped. `poll_ready` is the inner service's: the
//! priority is only known in `call`.
//!
//! Each shed request is a `debug` event (target `palisade_resilience::load_shed`) and,
//! with the `metrics` feature, a `palisade_load_shed_total` count labelled `name` and
//! `priority`.
//!
//! # Example
//!
//! ```rust
//! use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade_resilience::BoxError> {
//! // (priority, how long the call takes in ms)
//! let shed = LoadShedLayer::builder("edge", Capacity::Fixed(4))
//!     .shares(vec![1.0, 0.5])
//!     .build(|req: &(u8, u64)| req.0)?;
//! let svc = shed.layer(service_fn(|(_, ms): (u8, u64)| async move {
//!     tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
//!     Ok::<_, std::io::Error>(ms)
//! }));
//! let busy: Vec<_> = (0..2).map(|_| tokio::spawn(svc.clone().oneshot((0, 100)))).collect();
//! tokio::task::yield_now().await;
//! // Half the capacity in use: priority 1 is shed, priority 0 still passes.
//! let err = svc.clone().oneshot((1, 1)).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Shed>().map(|s| s.priority()), Some(1));
//! assert_eq!(svc.clone().oneshot((0, 1)).await?, 1);
//! for b in busy { b.await??; }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::adaptive::AdaptiveHandle;
use crate::{BoxError, ConfigError};

const COUNTED_PRIORITIES: usize = 8;

/// Where the capacity that priorities share comes from.
///
/// ```rust
/// use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
/// use palisade_resilience::load_shed::Capacity;
///
/// let fixed = Capacity::Fixed(100);
/// let limiter = AdaptiveConcurrencyLayer::new("db", Aimd::new(20, 1, 200)?);
/// let adaptive = Capacity::Adaptive(limiter.handle().clone());
/// assert_eq!(adaptive.current(), 20);
/// assert_eq!(fixed.current(), 100);
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub enum Capacity {
    /// A fixed number of calls in flight.
    Fixed(u32),
    /// The current limit of an adaptive limiter.
    Adaptive(AdaptiveHandle),
}

impl Capacity {
    /// The capacity now.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::Capacity;
    ///
    /// assert_eq!(Capacity::Fixed(64).current(), 64);
    /// ```
    pub fn current(&self) -> u32 {
        match self {
            Capacity::Fixed(n) => *n,
            Capacity::Adaptive(handle) => handle.limit(),
        }
    }
}

/// A request was refused because the service is too busy for its priority; the inner
/// service was not called.
///
/// ```rust
/// # use palisade_resilience::load_shed::Shed;
/// fn status(err: &palisade_resilience::BoxError) -> u16 {
///     if err.is::<Shed>() { 503 } else { 500 }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shed {
    name: Arc<str>,
    priority: u8,
    in_flight: u32,
    allowed: u32,
}

impl Shed {
    /// The shedder's name.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(shed.name(), "edge");
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The refused request's priority (0 is the most important).
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(shed.priority(), 1);
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Calls in flight when it was refused.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(shed.in_flight(), 1); // when it was shed
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Calls in flight its priority may fill.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(shed.allowed(), 1); // half of 2
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn allowed(&self) -> u32 {
        self.allowed
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` shed a priority {} request ({} in flight, {} allowed at that priority)",
            self.name, self.priority, self.in_flight, self.allowed
        )
    }
}

impl std::error::Error for Shed {}

struct Shared {
    name: Arc<str>,
    capacity: Capacity,
    shares: Vec<f64>,
    in_flight: AtomicU32,
    shed: [AtomicU64; COUNTED_PRIORITIES],
}

impl Shared {
    fn allowed(&self, priority: u8) -> u32 {
        let share = self.shares[usize::from(priority).min(self.shares.len() - 1)];
        (f64::from(self.capacity.current()) * share).ceil() as u32
    }

    fn try_admit(&self, priority: u8) -> Result<(), Shed> {
        let allowed = self.allowed(priority);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= allowed {
                self.shed[usize::from(priority).min(COUNTED_PRIORITIES - 1)]
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Shed {
                    name: self.name.clone(),
                    priority,
                    in_flight: current,
                    allowed,
                });
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

/// The handle on a shedder: calls in flight and requests shed per priority.
///
/// ```rust
/// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
///
/// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(10)).build(|_: &()| 0)?;
/// assert_eq!((layer.handle().in_flight(), layer.handle().shed(3)), (0, 0));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct LoadShedHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for LoadShedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedHandle")
            .field("name", &self.shared.name)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl LoadShedHandle {
    /// Calls in flight now.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(layer.handle().in_flight(), 1);
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Requests of `priority` shed so far (priorities from 7 on are counted together).
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!((layer.handle().shed(1), layer.handle().shed(0)), (1, 0));
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn shed(&self, priority: u8) -> u64 {
        self.shared.shed[usize::from(priority).min(COUNTED_PRIORITIES - 1)].load(Ordering::Relaxed)
    }

    /// Calls in flight a request of `priority` may fill right now.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    ///
    /// let layer =
    ///     LoadShedLayer::builder("edge", Capacity::Fixed(100)).build(|priority: &u8| *priority)?;
    /// assert_eq!((layer.handle().allowed(0), layer.handle().allowed(2)), (100, 75));
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn allowed(&self, priority: u8) -> u32 {
        self.shared.allowed(priority)
    }
}

/// Builds a [`LoadShedLayer`].
///
/// ```rust
/// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
///
/// // Health checks (0) always pass; batch jobs (2) get a quarter of the capacity.
/// let layer = LoadShedLayer::builder("api", Capacity::Fixed(200))
///     .shares(vec![1.0, 0.8, 0.25])
///     .build(|path: &&str| match *path {
///         "/health" => 0,
///         p if p.starts_with("/batch") => 2,
///         _ => 1,
///     })?;
/// assert_eq!((layer.handle().allowed(0), layer.handle().allowed(2)), (200, 50));
/// let growing = LoadShedLayer::builder("bad", Capacity::Fixed(1)).shares(vec![0.5, 0.9]);
/// assert!(growing.build(|_: &()| 0).is_err());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoadShedBuilder {
    name: Arc<str>,
    capacity: Capacity,
    shares: Vec<f64>,
}

impl LoadShedBuilder {
    /// The share of the capacity each priority may fill: `shares[p]` for priority `p`,
    /// the last share for every priority beyond. Each in `(0, 1]`, non-increasing.
    /// Default `[1.0, 0.9, 0.75, 0.5]`.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    ///
    /// let layer =
    ///     LoadShedLayer::builder("edge", Capacity::Fixed(100)).build(|priority: &u8| *priority)?;
    /// let tiers = LoadShedLayer::builder("edge", Capacity::Fixed(100))
    ///     .shares(vec![1.0, 0.6])
    ///     .build(|priority: &u8| *priority)?;
    /// assert_eq!(tiers.handle().allowed(1), 60);
    /// assert_eq!(layer.handle().allowed(3), 50); // the default shares
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn shares(mut self, shares: Vec<f64>) -> Self {
        self.shares = shares;
        self
    }

    /// Validates and builds, with `priority` computing each request's priority (0 is the
    /// most important).
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    ///
    /// let layer =
    ///     LoadShedLayer::builder("edge", Capacity::Fixed(100)).build(|priority: &u8| *priority)?;
    /// assert_eq!(layer.handle().allowed(0), 100);
    /// // Shares must not grow with the priority number.
    /// let growing = LoadShedLayer::builder("bad", Capacity::Fixed(10)).shares(vec![0.5, 1.0]);
    /// assert!(growing.build(|_: &u8| 0).is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build<F>(self, priority: F) -> Result<LoadShedLayer<F>, ConfigError> {
        if self.shares.is_empty() {
            return Err(ConfigError::Zero { field: "shares" });
        }
        if let Some(bad) = self.shares.iter().find(|s| !(**s > 0.0 && **s <= 1.0)) {
            return Err(ConfigError::OutOfRange {
                field: "shares",
                value: *bad,
                min: 0.0,
                max: 1.0,
            });
        }
        if self.shares.windows(2).any(|w| w[1] > w[0]) {
            return Err(ConfigError::Invalid {
                field: "shares",
                reason: "a less important priority cannot have a larger share",
            });
        }
        if matches!(self.capacity, Capacity::Fixed(0)) {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        Ok(LoadShedLayer {
            handle: LoadShedHandle {
                shared: Arc::new(Shared {
                    name: self.name,
                    capacity: self.capacity,
                    shares: self.shares,
                    in_flight: AtomicU32::new(0),
                    shed: std::array::from_fn(|_| AtomicU64::new(0)),
                }),
            },
            priority,
        })
    }
}

/// Sheds requests by priority; see the [module docs](self) for a full example. Clones
/// share the capacity and the counters.
///
/// ```rust
/// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
///
/// let layer = LoadShedLayer::builder("api", Capacity::Fixed(8)).build(|_: &u8| 1)?;
/// let twin = layer.clone();
/// assert_eq!(twin.handle().allowed(1), layer.handle().allowed(1));
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoadShedLayer<F> {
    handle: LoadShedHandle,
    priority: F,
}

impl LoadShedLayer<()> {
    /// Starts a builder for a shedder called `name` over `capacity`.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    ///
    /// let layer =
    ///     LoadShedLayer::builder("edge", Capacity::Fixed(100)).build(|priority: &u8| *priority)?;
    /// assert_eq!(layer.handle().in_flight(), 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn builder(name: impl Into<Arc<str>>, capacity: Capacity) -> LoadShedBuilder {
        LoadShedBuilder {
            name: name.into(),
            capacity,
            shares: vec![1.0, 0.9, 0.75, 0.5],
        }
    }
}

impl<F> LoadShedLayer<F> {
    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    ///
    /// let layer =
    ///     LoadShedLayer::builder("edge", Capacity::Fixed(100)).build(|priority: &u8| *priority)?;
    /// let handle = layer.handle().clone(); // for a metrics endpoint
    /// assert_eq!(handle.shed(0), 0);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn handle(&self) -> &LoadShedHandle {
        &self.handle
    }
}

impl<S, F: Clone> Layer<S> for LoadShedLayer<F> {
    type Service = LoadShed<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            handle: self.handle.clone(),
            priority: self.priority.clone(),
        }
    }
}

/// A service shedding by priority; built by [`LoadShedLayer`].
///
/// ```rust
/// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let layer = LoadShedLayer::builder("api", Capacity::Fixed(8)).build(|p: &u8| *p)?;
/// let svc = layer.layer(service_fn(|p: u8| async move { Ok::<_, std::io::Error>(p) }));
/// assert_eq!(svc.oneshot(3).await?, 3);
/// assert_eq!(layer.handle().in_flight(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LoadShed<S, F> {
    inner: S,
    handle: LoadShedHandle,
    priority: F,
}

impl<S, F> LoadShed<S, F> {
    /// The shared handle.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = LoadShedLayer::builder("edge", Capacity::Fixed(2))
    ///     .shares(vec![1.0, 0.5])
    ///     .build(|priority: &u8| *priority)?;
    /// let svc = layer.layer(service_fn(|_: u8| async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     Ok::<_, std::io::Error>(())
    /// }));
    /// let busy = tokio::spawn(svc.clone().oneshot(0)); // one call in flight: half the capacity
    /// tokio::task::yield_now().await;
    /// let error = svc.clone().oneshot(1).await.expect_err("priority 1 is shed");
    /// let shed = error.downcast_ref::<Shed>().expect("a Shed");
    /// assert_eq!(svc.handle().shed(1), 1); // the layer's counters
    /// busy.await??;
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &LoadShedHandle {
        &self.handle
    }
}

impl<S, F, Req> Service<Req> for LoadShed<S, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> u8,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let priority = (self.priority)(&req);
        match self.handle.shared.try_admit(priority) {
            Ok(()) => ResponseFuture {
                inner: Some(self.inner.call(req)),
                slot: Some(Slot(self.handle.shared.clone())),
                shed: None,
            },
            Err(shed) => {
                tracing::debug!(
                    target: "palisade_resilience::load_shed",
                    name = %shed.name,
                    priority,
                    in_flight = shed.in_flight,
                    "request shed"
                );
                #[cfg(feature = "metrics")]
                metrics::counter!(
                    "palisade_load_shed_total",
                    "name" => shed.name.to_string(),
                    "priority" => priority.to_string()
                )
                .increment(1);
                ResponseFuture {
                    inner: None,
                    slot: None,
                    shed: Some(shed),
                }
            }
        }
    }
}

struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot")
    }
}

pin_project! {
    /// The response future of [`LoadShed`]: holds the slot until the call completes or
    /// is dropped.
    ///
    /// ```rust
    /// use palisade_resilience::load_shed::{Capacity, LoadShedLayer};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let shed = LoadShedLayer::builder("edge", Capacity::Fixed(4)).build(|_: &u32| 0)?;
    /// let mut svc = shed.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // this future
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Option<Slot>,
        shed: Option<Shed>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => {
                let result = ready!(inner.poll(cx));
                this.slot.take();
                Poll::Ready(result.map_err(Into::into))
            }
            None => Poll::Ready(Err(match this.shed.take() {
                Some(shed) => shed.into(),
                None => "load shed future polled after completion".into(),
            })),
        }
    }
}
