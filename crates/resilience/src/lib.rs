//! Tower layers that let a service survive its dependencies.
//!
//! Every call between services fails in new ways: the network drops, the dependency
//! slows down, a deploy restarts it, a burst overloads it. This crate gives a tokio/tower
//! service the classic defences as middleware, one module per strategy:
//!
//! | module | protects against |
//! |---|---|
//! | [`backoff`] | retry storms: spaces retries out, with jitter |
//! | [`retry`] | transient failures, with a shared [retry budget](retry::RetryBudget) |
//! | [`timeout`] | calls that hang |
//! | [`bulkhead`] | one slow dependency exhausting every worker |
//! | [`fallback`] | a failure reaching the user when a degraded answer would do |
//! | [`rate_limit`] | calling a dependency faster than it (or its contract) allows |
//! | [`pipeline`] | getting the order of all of the above wrong |
//!
//! Each layer's error is a concrete type ([`timeout::Elapsed`], [`retry::RetriesExhausted`],
//! [`bulkhead::BulkheadFull`], [`rate_limit::RateLimited`], [`fallback::FallbackFailed`])
//! returned through [`BoxError`] exactly as tower's own layers do, so axum's
//! `HandleErrorLayer` and tonic work unchanged and a caller tells a timeout from the inner
//! error by type (`err.is::<Elapsed>()`), never by string. The [`pipeline`] adds one typed
//! enum on top.
//!
//! Time comes from `tokio::time`, so every schedule is testable under a paused clock.
//! Configuration is validated when built: a bad value is a [`ConfigError`], never a panic.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod duration_serde;
mod error;
pub(crate) mod rng;

pub mod adaptive;
pub mod backoff;
pub mod bulkhead;
pub mod chaos;
pub mod circuit_breaker;
pub mod fallback;
pub mod hedge;
pub mod load_shed;
pub mod pipeline;
pub mod rate_limit;
pub mod retry;
pub mod telemetry;
pub mod timeout;

pub use error::ConfigError;

/// The error type every layer of this crate returns, as in tower.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::bulkhead::BulkheadFull;
///
/// // Every layer's error is a `BoxError`; ask it which strategy refused the call.
/// let err: BoxError = "dependency down".into();
/// assert!(!err.is::<BulkheadFull>());
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
