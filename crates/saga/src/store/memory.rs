use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use super::SagaStore;
use crate::error::StoreError;
use crate::record::{HistoryEntry, ListFilter, SagaId, SagaRecord, SagaState};

/// A [`SagaStore`] in process memory, with the same version and lease rules as the
/// database stores.
///
/// Finished sagas (completed, compensated, resolved) are kept for reading until more
/// than [`with_finished_capacity`](Self::with_finished_capacity) of them exist (default
/// 10 000); then the oldest are dropped, so memory is bounded by the sagas in flight plus
/// that window. Parked (`Failed`) sagas are never dropped: they wait for an operator.
/// Clones share the same data.
///
/// ```rust
/// use palisade_saga::MemoryStore;
///
/// let store = MemoryStore::new().with_finished_capacity(0); // keep nothing finished
/// # let _ = store;
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    finished_capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    sagas: HashMap<SagaId, Entry>,
    finished: VecDeque<SagaId>,
}

#[derive(Debug)]
struct Entry {
    record: SagaRecord,
    history: Vec<HistoryEntry>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping the 10 000 most recently finished sagas.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let store = MemoryStore::new();
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// orchestrator.outcome(orchestrator.start(&saga, &1).await?).await?;
    /// assert_eq!(store.len(), 1); // clones share the sagas
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            finished_capacity: 10_000,
        }
    }

    /// Keeps at most `capacity` finished sagas (0: drop them as soon as they finish).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let store = MemoryStore::new().with_finished_capacity(2);
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// for n in 0..5 {
    ///     orchestrator.outcome(orchestrator.start(&saga, &n).await?).await?;
    /// }
    /// assert_eq!(store.len(), 2); // memory bounded by the sagas in flight plus two
    /// # Ok(()) }
    /// ```
    pub fn with_finished_capacity(mut self, capacity: usize) -> Self {
        self.finished_capacity = capacity;
        self
    }

    /// The number of sagas held (in flight, parked and retained finished ones).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let store = MemoryStore::new();
    /// assert_eq!(store.len(), 0);
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// orchestrator.outcome(orchestrator.start(&saga, &1).await?).await?;
    /// assert_eq!(store.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.lock().sagas.len()
    }

    /// Whether the store holds no saga.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let store = MemoryStore::new().with_finished_capacity(0);
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// orchestrator.outcome(orchestrator.start(&saga, &1).await?).await?;
    /// assert!(store.is_empty()); // finished sagas are not kept
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn retire(&self, inner: &mut Inner, record: &SagaRecord) {
        if matches!(
            record.state,
            SagaState::Completed | SagaState::Compensated | SagaState::Resolved
        ) {
            inner.finished.push_back(record.id);
            while inner.finished.len() > self.finished_capacity {
                let Some(old) = inner.finished.pop_front() else {
                    break;
                };
                if inner.sagas.get(&old).is_some_and(|e| {
                    !e.record.state.is_active() && e.record.state != SagaState::Failed
                }) {
                    inner.sagas.remove(&old);
                }
            }
        }
    }
}

impl SagaStore for MemoryStore {
    async fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> Result<Option<SagaRecord>, StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner.sagas.get(&record.id) {
            return Ok(Some(existing.record.clone()));
        }
        inner.sagas.insert(
            record.id,
            Entry {
                record: record.clone(),
                history: history.to_vec(),
            },
        );
        self.retire(&mut inner, record);
        Ok(None)
    }

    async fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let entry = inner
            .sagas
            .get_mut(&record.id)
            .ok_or(StoreError::NotFound(record.id))?;
        if entry.record.version != expected_version {
            return Err(StoreError::Conflict {
                id: record.id,
                expected: expected_version,
            });
        }
        entry.record = record.clone();
        entry.history.extend_from_slice(history);
        self.retire(&mut inner, record);
        Ok(())
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let entry = inner.sagas.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        if entry.record.version != version || entry.record.owner.as_deref() != Some(owner) {
            return Err(StoreError::Conflict {
                id,
                expected: version,
            });
        }
        entry.record.lease_until = Some(until);
        Ok(())
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        definitions: &[String],
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError> {
        let mut inner = self.lock();
        let mut claimed = Vec::new();
        for entry in inner.sagas.values_mut() {
            if claimed.len() >= limit as usize {
                break;
            }
            let r = &mut entry.record;
            if r.state.is_active()
                && r.lease_until.is_none_or(|t| t < now)
                && definitions.contains(&r.definition_key())
            {
                r.owner = Some(owner.to_owned());
                r.lease_until = Some(lease_until);
                r.version += 1;
                claimed.push(r.clone());
            }
        }
        Ok(claimed)
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        Ok(self.lock().sagas.get(&id).map(|e| e.record.clone()))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaRecord>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<SagaRecord> = inner
            .sagas
            .values()
            .filter(|e| filter.matches(&e.record))
            .map(|e| e.record.clone())
            .collect();
        out.sort_by_key(|r| (r.updated_at, r.id));
        out.truncate(filter.limit as usize);
        Ok(out)
    }

    async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self
            .lock()
            .sagas
            .get(&id)
            .map(|e| e.history.clone())
            .unwrap_or_default())
    }
}
