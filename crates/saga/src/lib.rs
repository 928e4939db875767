//! A saga orchestrator with persisted state that survives crashes.
//!
//! There is no `BEGIN`/`COMMIT` across services. A saga replaces it with a sequence of
//! local transactions — steps — each with a compensating action: if a step fails for
//! good, the completed ones are undone in reverse order. Irreversible steps go last,
//! behind a **pivot**: once it succeeded, the saga only moves forward.
//!
//! This crate makes that durable and safe to run on several instances:
//!
//! - [`SagaDefinition`]: a named, versioned, ordered list of [`Step`]s over a serde
//!   context `C`, each with a [`StepPolicy`] (attempts, backoff from
//!   [`palisade_resilience::backoff`], a timeout per attempt), an optional compensation,
//!   an optional pivot and a saga deadline.
//! - [`Orchestrator`]: starts sagas (idempotently by id), drives many at once under a
//!   bound, persists context and state after **every** step transition before doing the
//!   next thing, compensates on a permanent failure or the deadline, retries
//!   compensations and parks the saga as [`SagaState::Failed`] with its reason when they
//!   keep failing. Operators list, read history, [`retry`](Orchestrator::retry) and
//!   [`resolve`](Orchestrator::resolve).
//! - [`SagaStore`]: one row per saga plus an append-only history, every write one
//!   transaction with an optimistic version check; leases let another instance resume
//!   a dead instance's sagas. [`MemoryStore`], `SqliteStore` (feature `sqlite`) and
//!   `PostgresStore` (feature `postgres`), with their migrations shipped.
//!
//! Every action and compensation receives an [`IdempotencyKey`] (saga id + step +
//! kind), the same on every attempt and every re-run after a crash, for the services
//! it calls to deduplicate: a step whose success was not persisted is run again, never
//! skipped.
//!
//! # Example
//!
//! ```rust
//! use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaState, Step, StepError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u32, charged: bool, shipped: bool }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let saga = SagaDefinition::<Order>::builder("order", 1)
//!     .step(
//!         Step::new("charge", |mut order: Order, step| async move {
//!             // payment.charge(order.id, step.key) — the key makes the charge happen once
//!             let _ = step.key;
//!             order.charged = true;
//!             Ok::<_, StepError>(order)
//!         })
//!         .compensate(|_order: Order, _step| async move { Ok(()) }), // refund
//!     )
//!     .pivot(Step::new("ship", |mut order: Order, _step| async move {
//!         order.shipped = true;
//!         Ok::<_, StepError>(order)
//!     }))
//!     .build()?;
//!
//! let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
//! let id = orchestrator.start(&saga, &Order { id: 7, charged: false, shipped: false }).await?;
//! let done = orchestrator.outcome(id).await?;
//! assert_eq!(done.state, SagaState::Completed);
//! assert_eq!(done.context["shipped"], true);
//! # Ok(()) }
//! ```
//!
//! # What is promised
//!
//! Every started saga ends completed, compensated, or parked failed with its reason —
//! across crashes of the orchestrator at any point, provided some instance with the
//! definition registered runs [`Orchestrator::recover`] (or
//! [`spawn_recovery`](Orchestrator::spawn_recovery)) after the dead one's lease expired.
//! Steps run at least once and must therefore be idempotent under their key;
//! compensations must accept "nothing to undo".
//!
//! # Departures from the design notes
//!
//! - Retried attempts are written to the history together with the step's next
//!   transition rather than one write each: a step that succeeds at its third attempt
//!   costs one write, and its history still shows both failures with their times. An
//!   attempt in progress when the process dies leaves no history line; the re-run does.
//! - The SQL stores apply their own migrations through a table of their own
//!   (`palisade_saga_migrations`) rather than sqlx's shared `_sqlx_migrations`, so the
//!   saga and outbox crates can migrate one database independently.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod definition;
mod error;
mod orchestrator;
mod record;
pub mod store;

pub use clock::Clock;
pub use definition::{
    IdempotencyKey, SagaBuilder, SagaDefinition, Step, StepInfo, StepKind, StepPolicy,
};
pub use error::{BoxError, DefinitionError, Error, StepError, StoreError};
pub use orchestrator::{Orchestrator, OrchestratorBuilder};
pub use record::{HistoryEntry, HistoryEvent, ListFilter, SagaId, SagaRecord, SagaState};
pub use store::{MemoryStore, SagaStore};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;
