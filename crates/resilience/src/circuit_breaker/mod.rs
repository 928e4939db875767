//! Circuit breaker: stop calling a dependency that is failing, give it room to recover,
//! and find out when it has.
//!
//! # What it protects against
//!
//! When a dependency is down or drowning, every call to it still costs a connection, a
//! worker and the caller's patience, and the retries pile more load on the thing that is
//! already failing. A breaker watches the outcomes of recent calls and, once too many fail
//! (or are too slow), *opens*: calls are rejected at once with [`CircuitOpen`] — no
//! connection, no waiting — so the caller can fail fast or degrade (see the `fallback`
//! layer), and the dependency gets a break. After a wait it turns *half-open* and lets a
//! few probe calls through: if they succeed it *closes* again, if not it reopens and waits
//! (longer, if the wait is a growing [`Backoff`](crate::backoff::Backoff)).
//!
//! ```text
//!            failure rate ≥ threshold            wait over, next call
//!  Closed ──────────────────────────────▶ Open ─────────────────────▶ HalfOpen
//!    ▲         (or n failures in a row)    ▲                              │
//!    │                                     └──── probes fail ─────────────┤
//!    └─────────────────────────── probes succeed ─────────────────────────┘
//!  ForcedOpen / Disabled: set by hand through the handle, left by `reset`.
//! ```
//!
//! # How it judges
//!
//! - The **window** is the last *n* calls ([`SlidingWindow::Count`]) or the calls of the
//!   last *d* ([`SlidingWindow::Time`], ten buckets of *d*/10). No judgement until it holds
//!   [`minimum_calls`](CircuitBreakerBuilder::minimum_calls) (for a count window, capped at
//!   its size); then the breaker opens when the failure rate reaches
//!   [`failure_rate_threshold`](CircuitBreakerBuilder::failure_rate_threshold), or the
//!   share of calls slower than [`slow_call_duration`](CircuitBreakerBuilder::slow_call_duration)
//!   reaches [`slow_call_rate_threshold`](CircuitBreakerBuilder::slow_call_rate_threshold).
//! - In [`consecutive_failures`](CircuitBreakerBuilder::consecutive_failures) mode it opens
//!   after *n* failures in a row instead, and any failed probe reopens it.
//! - Half-open, [`half_open_probes`](CircuitBreakerBuilder::half_open_probes) calls pass
//!   (more are rejected); once they have all completed the breaker closes, unless their
//!   failure (or slow) rate reaches the threshold, in which case it reopens.
//! - [`Classify`] decides what a result means: [`Outcome::Success`], [`Outcome::Failure`]
//!   or [`Outcome::Ignored`] (a 404 says nothing about the dependency's health). A call
//!   whose future is dropped is ignored too, and gives its probe place back. A call that
//!   started before a transition is not recorded after it.
//! - The open → half-open move happens on the first call after the wait: no timer task.
//!
//! # When not to use it
//!
//! - For a dependency you cannot do without and cannot wait for, a breaker only changes
//!   the error message: pair it with a fallback, or don't bother.
//! - In front of many independent targets (hosts, tenants) one breaker lets one bad target
//!   cut off the good ones: use a partitioned breaker
//!   ([`build_keyed`](CircuitBreakerBuilder::build_keyed)).
//! - With very little traffic a rate is noise: raise `minimum_calls` or use consecutive
//!   failures.
//!
//! # How it composes
//!
//! Put it *inside* the retry (each attempt is judged and an open breaker stops the retries
//! at once: retry only on errors that are not [`CircuitOpen`]) and *outside* the timeout
//! (so a timeout counts as a failure). The `pipeline` module stacks it so. Its errors are
//! [`BoxError`](crate::BoxError)s: `err.is::<CircuitOpen>()` tells a rejection from the
//! inner error.
//!
//! # Sharing and the handle
//!
//! A [`CircuitBreakerLayer`] *is* one breaker: every service it wraps and every clone
//! shares it, as do clones of its [`CircuitBreakerHandle`], which reads the state and
//! [`CircuitMetrics`], forces states ([`force_open`](CircuitBreakerHandle::force_open),
//! [`disable`](CircuitBreakerHandle::disable), [`reset`](CircuitBreakerHandle::reset)) and
//! reports every [`StateTransition`] to [`subscribe`](CircuitBreakerHandle::subscribe)rs
//! and [listeners](CircuitBreakerHandle::on_transition) (and to `tracing`, and to the
//! `metrics` facade with the `metrics` feature: `palisade_circuit_breaker_transitions_total`
//! labelled `name`, `from`, `to`, and `palisade_circuit_breaker_rejections_total` labelled
//! `name`, `state`; `tracing` target `palisade_resilience::circuit_breaker`, transitions
//! at `info`, rejections at `debug`).
//!
//! # Cost and guarantees
//!
//! The closed path takes no lock and allocates nothing: it reads one state word, and
//! records into a striped ring of atomic bytes; with a count window and no slow-call
//! judgement it does not even read the clock. Threads that contend on a stripe move to
//! another, so two threads hammering one breaker do not share a written cache line. Under
//! such contention a count window of *n* keeps the last *n* outcomes *per stripe in use*,
//! and the rates are computed over their union; a single thread is judged exactly as
//! documented above. Time comes from `tokio::time`, so a paused clock drives it in tests.
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade_resilience::BoxError> {
//! let breaker = CircuitBreakerLayer::builder("recommendations")
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .wait_in_open(Duration::from_secs(5))
//!     .half_open_probes(1)
//!     .build()?;
//! let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let flag = healthy.clone();
//! let mut svc = breaker.layer(service_fn(move |_: ()| {
//!     let up = flag.load(std::sync::atomic::Ordering::SeqCst);
//!     async move { if up { Ok("fresh") } else { Err(std::io::Error::other("down")) } }
//! }));
//!
//! for _ in 0..4 {
//!     assert!(svc.ready().await?.call(()).await.is_err()); // inner errors
//! }
//! assert_eq!(breaker.handle().state(), CircuitState::Open);
//! let err = svc.ready().await?.call(()).await.unwrap_err();
//! assert!(err.is::<CircuitOpen>()); // rejected without calling the dependency
//!
//! healthy.store(true, std::sync::atomic::Ordering::SeqCst);
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! assert_eq!(svc.ready().await?.call(()).await?, "fresh"); // the probe
//! assert_eq!(breaker.handle().state(), CircuitState::Closed);
//! # Ok(())
//! # }
//! ```

mod classify;
mod config;
mod error;
mod future;
mod handle;
mod keyed;
mod layer;
mod service;
mod state;

pub use classify::{AllErrorsAreFailures, Classify, Outcome};
pub use config::{CircuitBreakerConfig, SlidingWindow};
pub use error::CircuitOpen;
pub use future::ResponseFuture;
pub use handle::{CircuitBreakerHandle, CircuitMetrics, CircuitState, StateTransition};
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use service::CircuitBreaker;
