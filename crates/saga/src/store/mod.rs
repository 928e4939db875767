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
    fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// Replaces the saga's row with `record` (whose `version` is the new version) and
    /// appends `history`, if and only if the stored version is `expected_version`;
    /// otherwise fails with [`StoreError::Conflict`] and writes nothing.
    fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease of `owner` on saga `id` at `version` to `until`; fails with
    /// [`StoreError::Conflict`] if the saga moved on or changed hands.
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
    fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        definitions: &[String],
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, StoreError>> + Send;

    /// Reads one saga.
    fn get(
        &self,
        id: SagaId,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// Lists sagas matching `filter`, least recently written first.
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, StoreError>> + Send;

    /// A saga's history, oldest first.
    fn history(
        &self,
        id: SagaId,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;
}
