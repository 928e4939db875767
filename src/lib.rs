//! # Palisade
//!
//! Palisade lets a tokio/tower service survive its dependencies and talk to other
//! services without losing or doubling work. This facade re-exports the four crates
//! behind cargo features, so one dependency line brings what a service needs:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`resilience`] | `palisade-resilience` | tower layers: retry, timeout, circuit breaker, bulkhead, fallback, rate limit, hedging, adaptive concurrency, chaos |
//! | [`events`] | `palisade-events` | one envelope, publishers and subscribers over in-memory, RabbitMQ, Kafka, Redis Streams and NATS JetStream, a consumer runtime and idempotent inboxes |
//! | [`outbox`] | `palisade-outbox` | a transactional outbox on sqlx and a relay that publishes through the event bus |
//! | [`saga`] | `palisade-saga` | a saga orchestrator whose state survives crashes |
//!
//! ## Features
//!
//! The default features (`resilience`, `events`, `outbox`, `saga`) need no database or
//! broker client. Backends are opt-in: `sqlite`, `postgres`, `rabbitmq`, `kafka`,
//! `redis`, `nats`, plus `metrics` for the `metrics` facade; `full` turns on all of them.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "resilience")]
#[doc(inline)]
pub use palisade_resilience as resilience;

#[cfg(feature = "events")]
#[doc(inline)]
pub use palisade_events as events;

#[cfg(feature = "outbox")]
#[doc(inline)]
pub use palisade_outbox as outbox;

#[cfg(feature = "saga")]
#[doc(inline)]
pub use palisade_saga as saga;
