//! # palisade-testkit
//!
//! Test support shared by every Palisade crate (dev-only, never published):
//!
//! - [`Service`] and its URL: one place that knows where PostgreSQL, Redis, RabbitMQ
//!   and NATS listen, with `PALISADE_*_URL` overrides.
//! - [`require`]: the skip rule. A test whose server is unreachable prints
//!   `skipped: <service> unreachable at <url>` and returns, unless
//!   `PALISADE_REQUIRE_SERVICES=1` (set by CI), when it fails.
//! - [`unique_name`] and [`postgres::fresh_database`]: names and databases of a test's
//!   own, so tests run in parallel without seeing each other.
//! - [`FaultProxy`]: an in-process TCP proxy a test puts between a client and a real
//!   server to cut, blackhole, delay or restore the connection.
//! - [`metrics::CaptureRecorder`] (feature `metrics`): a recorder that keeps what the
//!   code under test emitted through the `metrics` facade, for assertions.
//!
//! ```no_run
//! use palisade_testkit::{require, Service};
//!
//! # async fn test() {
//! let Some(url) = require(Service::Redis).await else { return };
//! // ... connect to `url` ...
//! # let _ = url;
//! # }
//! ```

#[cfg(feature = "metrics")]
pub mod metrics;
mod names;
#[cfg(feature = "postgres")]
pub mod postgres;
mod proxy;
mod service;

pub use names::unique_name;
pub use proxy::{FaultMode, FaultProxy};
pub use service::{Service, reachable, require, require_services};
