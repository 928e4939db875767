//! Where sagas live: the [`SagaStore`] trait and its implementations.
//!
//! A store keeps one row per saga and an append-only history. Every write is one
//! transaction guarded by an optimistic version check: a writer names the version it
//! read, and the write fails with [`StoreError::Conflict`] if anyone wrote since. Leases
//! are plain columns (`owner`, `lease_until`); [`claim`](SagaStore::claim) takes over
//! the active sagas whose lease expired, bumping their version so the previous owner's
//! next write is rejected.
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`MemoryStore`] | — | tests, benches, a single process that may lose its sagas on exit |
//! | `SqliteStore` | `sqlite` | one machine, no server (the example) |
//! | `PostgresStore` | `postgres` | several orchestrator instances |

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::record::{HistoryEntry, ListFilter, SagaId, SagaRecord};

mod memory;
pub use memory::MemoryStore;

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
mod sqlite;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_batch;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod migrate;

/// Persistence for sagas. See the [module docs](self).
///
/// Implementations must make each call atomic: all of its writes commit, or none, by the
/// time it returns. Concurrent calls may share a transaction as long as each one's effect
/// stands or falls on its own — `PostgresStore` groups concurrent
/// transitions into one statement (group commit), where a row that fails its version
/// check writes nothing and a failed statement is retried call by call. The orchestrator
/// retries writes that fail with a transient error and abandons the saga (to be resumed
/// after its lease) when they keep failing; it never assumes a failed write happened.
///
/// ```rust
/// use palisade_saga::{MemoryStore, SagaStore, SagaState, ListFilter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_saga::StoreError> {
/// // Any store answers the operator's questions the same way.
/// async fn parked<S: SagaStore>(store: &S) -> Result<usize, palisade_saga::StoreError> {
///     Ok(store.list(&ListFilter::default().state(SagaState::Failed)).await?.len())
/// }
/// assert_eq!(parked(&MemoryStore::new()).await?, 0);
/// # Ok(()) }
/// ```
pub trait SagaStore: Send + Sync + 'static {
    /// Inserts a new saga with its first history entries. If a saga with this id exists,
    /// writes nothing and returns it (so starting twice with one id is idempotent).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// // Creating an existing id writes nothing and returns what is stored.
    /// let existing = store.create(&record, &[]).await?;
    /// assert_eq!(existing.map(|r| r.id), Some(id));
    /// let fresh = palisade_saga::SagaRecord { id: palisade_saga::SagaId::new(), ..record };
    /// assert!(store.create(&fresh, &[]).await?.is_none()); // inserted
    /// # Ok(()) }
    /// ```
    fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// Replaces the saga's row with `record` (whose `version` is the new version) and
    /// appends `history`, if and only if the stored version is `expected_version`;
    /// otherwise fails with [`StoreError::Conflict`] and writes nothing.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// let mut next = record.clone();
    /// next.version += 1;
    /// store.update(&next, record.version, &[]).await?;
    /// // A writer holding the old version is refused: optimistic concurrency.
    /// let stale = store.update(&next, record.version, &[]).await;
    /// assert!(matches!(stale, Err(palisade_saga::StoreError::Conflict { .. })));
    /// # Ok(()) }
    /// ```
    fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease of `owner` on saga `id` at `version` to `until`; fails with
    /// [`StoreError::Conflict`] if the saga moved on or changed hands.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// // A finished saga has no owner to renew for.
    /// let until = chrono::Utc::now() + chrono::Duration::seconds(30);
    /// assert!(store.renew_lease(id, "someone-else", record.version, until).await.is_err());
    /// # Ok(()) }
    /// ```
    fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes over up to `limit` active sagas (running or compensating) whose lease
    /// expired before `now` (or that have no owner) and whose `type@version` is in
    /// `definitions`: sets `owner` and `lease_until`, bumps the version, returns them.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// // Nothing left in flight: a recovering instance finds nothing to take over.
    /// let now = chrono::Utc::now();
    /// let until = now + chrono::Duration::seconds(30);
    /// let taken = store.claim("node-b", now, until, &[record.definition_key()], 100).await?;
    /// assert!(taken.is_empty());
    /// # Ok(()) }
    /// ```
    fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        definitions: &[String],
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, StoreError>> + Send;

    /// Reads one saga.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// assert_eq!(record.context, 7);
    /// assert!(store.get(palisade_saga::SagaId::new()).await?.is_none());
    /// # Ok(()) }
    /// ```
    fn get(
        &self,
        id: SagaId,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// Lists sagas matching `filter`, least recently written first.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// let all = store.list(&palisade_saga::ListFilter::default()).await?;
    /// assert_eq!(all.len(), 1);
    /// # Ok(()) }
    /// ```
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, StoreError>> + Send;

    /// A saga's history, oldest first.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &7).await?;
    /// orchestrator.outcome(id).await?;
    /// let record = store.get(id).await?.expect("stored");
    /// let history = store.history(id).await?;
    /// assert!(history.len() >= 2); // created ... completed, oldest first
    /// # Ok(()) }
    /// ```
    fn history(
        &self,
        id: SagaId,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;
}
