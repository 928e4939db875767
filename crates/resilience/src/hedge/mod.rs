//! Hedging: when a request is slower than usual, send a copy and take whichever answer
//! comes first.
//!
//! # What it protects against
//!
//! Tail latency. Most slow requests are slow because of the replica they landed on (a GC
//! pause, a cold cache, a noisy neighbour), not because of the request. After a delay —
//! fixed, or the p95 of recent calls — a hedge sends the same request again (to a clone
//! of the inner service, which a load balancer routes elsewhere); the first success wins
//! and the losers are dropped, which cancels them. Google's "The Tail at Scale" reports
//! p99.9 cut from 1800 ms to 74 ms for 2 % extra requests this way.
//!
//! # When not to use it
//!
//! - For requests that are not idempotent: a hedge *is* a second execution.
//! - Against an overloaded dependency: hedges are extra load. Bound them with
//!   [`max_hedges`](HedgeBuilder::max_hedges) and a shared
//!   [`RetryBudget`](crate::retry::RetryBudget) ([`HedgeBuilder::budget`]): each request
//!   deposits, each hedge withdraws, so retries and hedges together stay within one share
//!   of the traffic.
//! - For failures: an error does not trigger a hedge (that is the retry's job); a failed
//!   attempt only stops the call when no other attempt is running.
//!
//! # How it composes
//!
//! Put it inside the retry and the timeout (the deadline covers every attempt) and over
//! the load balancer or connection pool that spreads attempts. Requests must be `Clone`
//! and so must the inner service. Errors are [`BoxError`](crate::BoxError)s, with the
//! inner error's type kept.
//!
//! # Cost
//!
//! A call that answers before the delay costs a request clone, a service clone and one
//! timer entry; hedges are boxed. With a percentile delay every success records its
//! latency in a lock-free histogram shared by the layer's clones.
//!
//! Each hedge sent is a `debug` event (target `palisade_resilience::hedge`) and, with the
//! `metrics` feature, a `palisade_hedges_total` count.
//!
//! # Example
//!
//! ```rust
//! use std::time::Duration;
//! use palisade_resilience::hedge::HedgeLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade_resilience::BoxError> {
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! // The first attempt lands on a slow replica (1 s), the hedge on a fast one (5 ms).
//! let replicas = tower::service_fn(move |q: &'static str| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         tokio::time::sleep(Duration::from_millis(if n == 0 { 1000 } else { 5 })).await;
//!         Ok::<_, std::io::Error>(format!("{q} from replica {n}"))
//!     }
//! });
//! let hedging = HedgeLayer::fixed(Duration::from_millis(50)).build()?;
//! let started = tokio::time::Instant::now();
//! let answer = hedging.layer(replicas).oneshot("q").await?;
//! assert_eq!(answer, "q from replica 1");
//! assert_eq!(started.elapsed(), Duration::from_millis(55));
//! assert_eq!(hedging.hedges_won(), 1);
//! # Ok(())
//! # }
//! ```

mod future;
mod histogram;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{HedgeBuilder, HedgeDelay, HedgeLayer};
pub use service::Hedge;
