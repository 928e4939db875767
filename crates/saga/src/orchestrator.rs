//! The orchestrator: runs sagas step by step, persists every transition, compensates,
//! holds sagas under leases and resumes the ones whose owner died.

use std::collections::HashMap;
use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use palisade_resilience::ConfigError;
use palisade_resilience::backoff::Backoff;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::{Clock, to_chrono};
use crate::definition::{
    CallError, ErasedDefinition, IdempotencyKey, SagaDefinition, StepInfo, StepKind,
};
use crate::error::{Error, StepError, StoreError};
use crate::record::{HistoryEntry, HistoryEvent, ListFilter, SagaId, SagaRecord, SagaState};
use crate::store::SagaStore;

/// Runs sagas against a [`SagaStore`].
///
/// Cheap to clone (an `Arc`); clones share the definitions, the concurrency bound and
/// the sagas in flight. Build it with [`Orchestrator::builder`].
///
/// # Guarantees
///
/// - Every step transition is persisted (one store write, optimistic version check)
///   before the next action or compensation starts. A successful 4-step saga costs 5
///   writes: the insert and one per step, the last one also marking it completed.
/// - A step whose success was not persisted is run again with the same
///   [`IdempotencyKey`] when the saga resumes; it is never skipped.
/// - A saga is driven by one orchestrator at a time: its owner holds a lease, renewed
///   while a long step runs; another instance takes it over only after the lease
///   expired, and the old owner's next write is then rejected by the version check.
/// - Finished sagas are dropped from the orchestrator's memory at once; memory grows
///   with the sagas in flight (bounded by [`OrchestratorBuilder::concurrency`]), not
///   with the sagas ever run.
///
/// # Cancellation
///
/// Dropping the future of [`start`](Self::start) after it returned nothing loses
/// nothing: either the saga was inserted (and runs, or resumes after its lease) or not.
/// Sagas run on spawned tasks; if the process dies, its sagas resume elsewhere after
/// their lease expires.
///
/// # Example
///
/// ```rust
/// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaState, Step, StepError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let def = SagaDefinition::<Vec<String>>::builder("demo", 1)
///     .step(Step::new("a", |mut log: Vec<String>, _| async move {
///         log.push("a".into());
///         Ok::<_, StepError>(log)
///     }).compensate(|_, _| async move { Ok(()) }))
///     .step(Step::new("b", |_, _| async move {
///         Err::<Vec<String>, _>(StepError::permanent("no"))
///     }))
///     .build()?;
/// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&def).build()?;
/// let id = orchestrator.start(&def, &Vec::new()).await?;
/// let done = orchestrator.outcome(id).await?;
/// assert_eq!(done.state, SagaState::Compensated);
/// # Ok(()) }
/// ```
pub struct Orchestrator<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Orchestrator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> std::fmt::Debug for Orchestrator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("owner", &self.inner.owner)
            .field("lease", &self.inner.lease)
            .field("definitions", &self.inner.keys)
            .finish()
    }
}

/// The sagas in flight, each with the channel its final record is announced on
/// (`Err` when this instance abandoned it).
type RunningMap = HashMap<SagaId, watch::Sender<Option<Result<SagaRecord, SagaId>>>>;

struct Inner<S> {
    store: S,
    definitions: HashMap<String, Arc<ErasedDefinition>>,
    keys: Vec<String>,
    owner: String,
    lease: Duration,
    clock: Clock,
    permits: Arc<Semaphore>,
    running: Mutex<RunningMap>,
    running_count: watch::Sender<usize>,
    poll_interval: Duration,
    store_attempts: u32,
    store_backoff: Backoff,
    writes: AtomicU64,
    shutdown: CancellationToken,
}

/// Builds an [`Orchestrator`].
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saga = SagaDefinition::<u32>::builder("count", 1)
///     .step(Step::new("add", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
///     .build()?;
/// let orchestrator = Orchestrator::builder(MemoryStore::new())
///     .register(&saga)
///     .owner("instance-a")
///     .concurrency(128)
///     .lease(Duration::from_secs(30))
///     .store_retry(5, Backoff::exponential(Duration::from_millis(20)))
///     .build()?;
/// assert_eq!(orchestrator.owner(), "instance-a");
/// # Ok(()) }
/// ```
pub struct OrchestratorBuilder<S> {
    store: S,
    definitions: HashMap<String, Arc<ErasedDefinition>>,
    owner: Option<String>,
    lease: Duration,
    clock: Clock,
    concurrency: usize,
    poll_interval: Duration,
    store_attempts: u32,
    store_backoff: Backoff,
}

impl<S> std::fmt::Debug for OrchestratorBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorBuilder")
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl<S: SagaStore> OrchestratorBuilder<S> {
    /// Registers a definition; sagas of its `(name, version)` can be started and resumed.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// assert!(format!("{orchestrator:?}").contains("order"));
    /// orchestrator.start(&saga, &1).await?; // only registered definitions can be started
    /// # Ok(()) }
    /// ```
    pub fn register<C>(mut self, definition: &SagaDefinition<C>) -> Self {
        self.definitions.insert(
            definition.erased.key.clone(),
            Arc::clone(&definition.erased),
        );
        self
    }

    /// The maximum number of sagas this orchestrator drives at once (default 64).
    /// [`start`](Orchestrator::start) waits for a free slot, so callers feel the bound.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let builder = Orchestrator::builder(MemoryStore::new()).register(&saga).concurrency(8);
    /// assert!(format!("{builder:?}").contains("concurrency: 8"));
    /// let _orchestrator = builder.build()?;
    /// # Ok(()) }
    /// ```
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long a saga stays with this orchestrator without a write or a renewal
    /// (default 30 s). Shorter: faster takeover after a crash; longer: fewer renewals
    /// during slow steps. Renewals happen every third of it while a step runs.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let builder = Orchestrator::builder(MemoryStore::new())
    ///     .register(&saga)
    ///     .lease(Duration::from_secs(120));
    /// assert!(format!("{builder:?}").contains("lease: 120s"));
    /// let _orchestrator = builder.build()?;
    /// # Ok(()) }
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// This instance's name in the `owner` column (default: a fresh UUID). Two live
    /// instances must not share one.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let builder = Orchestrator::builder(MemoryStore::new()).register(&saga).owner("orders-7f9c");
    /// assert!(format!("{builder:?}").contains("orders-7f9c"));
    /// let _orchestrator = builder.build()?;
    /// # Ok(()) }
    /// ```
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The wall clock for leases and deadlines (default [`Clock::system`]).
    ///
    /// ```rust
    /// use palisade_saga::Clock;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let clock = Clock::manual(chrono::Utc::now());
    /// let orchestrator = Orchestrator::builder(MemoryStore::new())
    ///     .register(&saga)
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// // Records are stamped by the orchestrator's clock.
    /// assert_eq!(orchestrator.outcome(id).await?.created_at, clock.now());
    /// # Ok(()) }
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How often [`outcome`](Orchestrator::outcome) reads the store for a saga another
    /// instance drives (default 100 ms).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new())
    ///     .register(&saga)
    ///     .poll_interval(Duration::from_millis(200))
    ///     .build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// assert_eq!(orchestrator.outcome(id).await?.context, 2);
    /// # Ok(()) }
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How a failing store write is retried before the saga is abandoned to a later
    /// recovery (default 8 attempts, exponential from 50 ms capped at 2 s, full jitter).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new())
    ///     .register(&saga)
    ///     .store_retry(5, Backoff::constant(Duration::from_millis(50)))
    ///     .build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// assert_eq!(orchestrator.outcome(id).await?.context, 2);
    /// # Ok(()) }
    /// ```
    pub fn store_retry(mut self, attempts: u32, backoff: Backoff) -> Self {
        self.store_attempts = attempts;
        self.store_backoff = backoff;
        self
    }

    /// Checks the configuration and builds the orchestrator.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// // A zero bound is a configuration error, not an orchestrator that never runs.
    /// let builder = Orchestrator::builder(MemoryStore::new()).register(&saga);
    /// assert!(builder.concurrency(0).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Orchestrator<S>, ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::Zero {
                field: "concurrency",
            });
        }
        if self.lease.is_zero() {
            return Err(ConfigError::Zero { field: "lease" });
        }
        if self.store_attempts == 0 {
            return Err(ConfigError::Zero {
                field: "store_attempts",
            });
        }
        self.store_backoff.validate()?;
        let mut keys: Vec<String> = self.definitions.keys().cloned().collect();
        keys.sort();
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                definitions: self.definitions,
                keys,
                owner: self
                    .owner
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                lease: self.lease,
                clock: self.clock,
                permits: Arc::new(Semaphore::new(self.concurrency)),
                running: Mutex::default(),
                running_count: watch::Sender::new(0),
                poll_interval: self.poll_interval,
                store_attempts: self.store_attempts,
                store_backoff: self.store_backoff,
                writes: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
            }),
        })
    }
}

impl<S: SagaStore> Orchestrator<S> {
    /// Starts building an orchestrator over `store`.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &41).await?;
    /// assert_eq!(orchestrator.outcome(id).await?.context, 42);
    /// # Ok(()) }
    /// ```
    pub fn builder(store: S) -> OrchestratorBuilder<S> {
        OrchestratorBuilder {
            store,
            definitions: HashMap::new(),
            owner: None,
            lease: Duration::from_secs(30),
            clock: Clock::system(),
            concurrency: 64,
            poll_interval: Duration::from_millis(100),
            store_attempts: 8,
            store_backoff: Backoff::exponential(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter(palisade_resilience::backoff::Jitter::Full),
        }
    }

    /// The store.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// assert!(!orchestrator.store().is_empty()); // finished sagas are kept (bounded)
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// This instance's owner name.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new())
    ///     .register(&saga)
    ///     .owner("node-a")
    ///     .build()?;
    /// assert_eq!(orchestrator.owner(), "node-a");
    /// # Ok(()) }
    /// ```
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Store writes made by this orchestrator so far (inserts, transitions, lease
    /// renewals, operator actions; recovery claims count one per call).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// assert!(orchestrator.store_writes() >= 2); // created, then completed
    /// # Ok(()) }
    /// ```
    pub fn store_writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// The number of sagas this instance is driving now.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// assert_eq!(orchestrator.in_flight(), 0);
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// orchestrator.idle().await;
    /// assert_eq!(orchestrator.in_flight(), 0);
    /// # Ok(()) }
    /// ```
    pub fn in_flight(&self) -> usize {
        *self.inner.running_count.borrow()
    }

    /// Starts a saga with a fresh id and returns the id once it is persisted.
    ///
    /// Waits for a free concurrency slot first.
    ///
    /// ```rust
    /// use palisade_saga::SagaState;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// assert_eq!(orchestrator.outcome(id).await?.state, SagaState::Completed);
    /// # Ok(()) }
    /// ```
    pub async fn start<C: Serialize>(
        &self,
        definition: &SagaDefinition<C>,
        context: &C,
    ) -> Result<SagaId, Error> {
        self.start_with_id(definition, SagaId::new(), context).await
    }

    /// Starts a saga with the caller's id. Starting again with an id that exists does
    /// nothing and returns the id (the first context wins); an id used by another saga
    /// type is [`Error::IdInUse`].
    ///
    /// ```rust
    /// use palisade_saga::{ListFilter, SagaId};
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// // The id from the request: a retried request starts nothing new.
    /// let id = SagaId::new();
    /// orchestrator.start_with_id(&saga, id, &1).await?;
    /// orchestrator.start_with_id(&saga, id, &1).await?;
    /// assert_eq!(orchestrator.list(&ListFilter::default()).await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn start_with_id<C: Serialize>(
        &self,
        definition: &SagaDefinition<C>,
        id: SagaId,
        context: &C,
    ) -> Result<SagaId, Error> {
        let def = self
            .inner
            .definition(&definition.erased.name, definition.erased.version)?;
        let context = serde_json::to_value(context)?;
        let permit = self.inner.acquire().await?;
        let now = self.inner.clock.now();
        let record = SagaRecord {
            id,
            saga_type: def.name.clone(),
            definition_version: def.version,
            state: SagaState::Running,
            cursor: 0,
            backward: false,
            context,
            error: None,
            version: 1,
            owner: Some(self.inner.owner.clone()),
            lease_until: Some(now + to_chrono(self.inner.lease)),
            deadline: def.deadline.map(|d| now + to_chrono(d)),
            created_at: now,
            updated_at: now,
        };
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let history = [HistoryEntry::saga(HistoryEvent::Created, now, None)];
        match self.inner.store.create(&record, &history).await? {
            Some(existing) if existing.saga_type != def.name => Err(Error::IdInUse {
                id,
                existing: existing.saga_type,
            }),
            Some(_) => Ok(id),
            None => {
                Inner::spawn(&self.inner, record, def, permit, false, Vec::new());
                Ok(id)
            }
        }
    }

    /// Waits until the saga is finished (completed, compensated, resolved) or parked
    /// (`Failed`) and returns its record. A saga driven by another instance is polled in
    /// the store; wrap the call in a timeout if nobody may be driving it.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// let done = orchestrator.outcome(id).await?; // waits for the end
    /// assert!(!done.state.is_active());
    /// # Ok(()) }
    /// ```
    pub async fn outcome(&self, id: SagaId) -> Result<SagaRecord, Error> {
        let receiver = self.inner.lock_running().get(&id).map(|s| s.subscribe());
        if let Some(mut receiver) = receiver {
            let result = receiver
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| r.clone());
            match result {
                Some(Ok(record)) if !record.state.is_active() => return Ok(record),
                // Abandoned or lost: fall through to the store, where whoever resumes it
                // will write.
                _ => {}
            }
        }
        loop {
            match self.inner.store.get(id).await? {
                None => return Err(StoreError::NotFound(id).into()),
                Some(r) if !r.state.is_active() => return Ok(r),
                Some(_) => tokio::time::sleep(self.inner.poll_interval).await,
            }
        }
    }

    /// The saga's current record.
    ///
    /// ```rust
    /// use palisade_saga::SagaId;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// assert!(orchestrator.status(SagaId::new()).await?.is_none());
    /// let id = orchestrator.start(&saga, &1).await?;
    /// assert!(orchestrator.status(id).await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, id: SagaId) -> Result<Option<SagaRecord>, Error> {
        Ok(self.inner.store.get(id).await?)
    }

    /// Sagas by state and age (operator API).
    ///
    /// ```rust
    /// use palisade_saga::{ListFilter, SagaState};
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// let parked = orchestrator.list(&ListFilter::default().state(SagaState::Failed)).await?;
    /// assert!(parked.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaRecord>, Error> {
        Ok(self.inner.store.list(filter).await?)
    }

    /// A saga's full history, oldest first (operator API).
    ///
    /// ```rust
    /// use palisade_saga::HistoryEvent;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// let history = orchestrator.history(id).await?;
    /// let events: Vec<HistoryEvent> = history.iter().map(|h| h.event).collect();
    /// assert_eq!(events.first(), Some(&HistoryEvent::Created));
    /// assert_eq!(events.last(), Some(&HistoryEvent::Completed));
    /// # Ok(()) }
    /// ```
    pub async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self.inner.store.history(id).await?)
    }

    /// Retries a parked (`Failed`) saga where it stopped: its compensation if it was
    /// compensating, its forward step otherwise (operator API). Returns once the saga is
    /// taken back; await [`outcome`](Self::outcome) for the result.
    ///
    /// ```rust
    /// use palisade_saga::Error;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// // Only a parked (failed) saga can be retried.
    /// assert!(matches!(orchestrator.retry(id).await, Err(Error::WrongState { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn retry(&self, id: SagaId) -> Result<(), Error> {
        let record = self.get_existing(id).await?;
        if record.state != SagaState::Failed {
            return Err(Error::WrongState {
                id,
                state: record.state,
                needed: "failed",
            });
        }
        let def = self
            .inner
            .definition(&record.saga_type, record.definition_version)?;
        let permit = self.inner.acquire().await?;
        let now = self.inner.clock.now();
        let expected = record.version;
        let mut record = record;
        record.state = if record.backward {
            SagaState::Compensating
        } else {
            SagaState::Running
        };
        record.error = None;
        record.version += 1;
        record.owner = Some(self.inner.owner.clone());
        record.lease_until = Some(now + to_chrono(self.inner.lease));
        record.updated_at = now;
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let history = [HistoryEntry::saga(HistoryEvent::OperatorRetry, now, None)];
        self.inner.store.update(&record, expected, &history).await?;
        Inner::spawn(&self.inner, record, def, permit, true, Vec::new());
        Ok(())
    }

    /// Marks a parked (`Failed`) saga as resolved by hand, with a note for the history
    /// (operator API).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// // Resolving is for parked sagas an operator fixed by hand.
    /// assert!(orchestrator.resolve(id, "refunded by hand, ticket 4711").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn resolve(&self, id: SagaId, note: &str) -> Result<SagaRecord, Error> {
        let mut record = self.get_existing(id).await?;
        if record.state != SagaState::Failed {
            return Err(Error::WrongState {
                id,
                state: record.state,
                needed: "failed",
            });
        }
        let now = self.inner.clock.now();
        let expected = record.version;
        record.state = SagaState::Resolved;
        record.version += 1;
        record.owner = None;
        record.lease_until = None;
        record.updated_at = now;
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let history = [HistoryEntry::saga(
            HistoryEvent::Resolved,
            now,
            Some(note.to_owned()),
        )];
        self.inner.store.update(&record, expected, &history).await?;
        Ok(record)
    }

    /// Takes over one active saga whose lease expired (or that nobody owns) and drives
    /// it. A saga of a type this orchestrator does not know is
    /// [`Error::UnknownDefinition`]; one still leased by a live owner is
    /// [`Error::WrongState`].
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let id = orchestrator.start(&saga, &1).await?;
    /// orchestrator.outcome(id).await?;
    /// // A finished saga has nothing to resume.
    /// assert!(orchestrator.resume(id).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, id: SagaId) -> Result<(), Error> {
        let mut record = self.get_existing(id).await?;
        if !record.state.is_active() {
            return Err(Error::WrongState {
                id,
                state: record.state,
                needed: "running or compensating",
            });
        }
        let def = self
            .inner
            .definition(&record.saga_type, record.definition_version)?;
        let now = self.inner.clock.now();
        if record.lease_until.is_some_and(|t| t >= now) {
            return Err(Error::WrongState {
                id,
                state: record.state,
                needed: "with an expired lease",
            });
        }
        let permit = self.inner.acquire().await?;
        let expected = record.version;
        record.version += 1;
        record.owner = Some(self.inner.owner.clone());
        record.lease_until = Some(now + to_chrono(self.inner.lease));
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let history = [HistoryEntry::saga(HistoryEvent::Resumed, now, None)];
        self.inner.store.update(&record, expected, &history).await?;
        Inner::spawn(&self.inner, record, def, permit, true, Vec::new());
        Ok(())
    }

    /// One recovery sweep: claims every active saga of a registered type whose lease
    /// expired and drives it, as concurrency allows. Returns how many it took over
    /// (they keep running after it returns; see [`idle`](Self::idle)).
    ///
    /// Sagas of unregistered types are left alone for an instance that knows them; they
    /// show up in [`list`](Self::list) as running with an expired lease, and
    /// [`resume`](Self::resume) names the missing definition.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// // At startup: take over the sagas of dead instances whose leases ran out.
    /// assert_eq!(orchestrator.recover().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn recover(&self) -> Result<usize, Error> {
        const BATCH: usize = 256;
        let mut total = 0;
        if self.inner.keys.is_empty() {
            return Ok(0);
        }
        loop {
            let mut permits = vec![self.inner.acquire().await?];
            while permits.len() < BATCH {
                match Arc::clone(&self.inner.permits).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            let now = self.inner.clock.now();
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
            let claimed = self
                .inner
                .store
                .claim(
                    &self.inner.owner,
                    now,
                    now + to_chrono(self.inner.lease),
                    &self.inner.keys,
                    wanted as u32,
                )
                .await?;
            let n = claimed.len();
            for record in claimed {
                let Some(permit) = permits.pop() else { break };
                let def = self
                    .inner
                    .definition(&record.saga_type, record.definition_version)?;
                info!(saga_id = %record.id, saga_type = %record.saga_type, cursor = record.cursor, "saga taken over after its lease expired");
                let history = vec![HistoryEntry::saga(HistoryEvent::Resumed, now, None)];
                Inner::spawn(&self.inner, record, def, permit, true, history);
            }
            total += n;
            if n < wanted {
                return Ok(total);
            }
        }
    }

    /// Runs [`recover`](Self::recover) every `interval` in a background task until
    /// [`shutdown`](Self::shutdown). Errors are logged and the sweep goes on.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, SagaId, SagaRecord};
    /// use palisade_saga::{SagaState, SagaStore, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let store = MemoryStore::new();
    /// let orchestrator = Orchestrator::builder(store.clone()).register(&saga).build()?;
    /// # let done = orchestrator.outcome(orchestrator.start(&saga, &1).await?).await?;
    /// // A saga left half-done by a crashed instance, nobody holding it.
    /// let orphan = SagaRecord { id: SagaId::new(), state: SagaState::Running, cursor: 0,
    ///     context: 41.into(), owner: None, lease_until: None, ..done };
    /// store.create(&orphan, &[]).await?;
    /// let recovery = orchestrator.spawn_recovery(Duration::from_secs(30));
    /// assert_eq!(orchestrator.outcome(orphan.id).await?.context, 42);
    /// orchestrator.shutdown(); // ends the recovery loop too
    /// recovery.await?;
    /// # Ok(()) }
    /// ```
    pub fn spawn_recovery(&self, interval: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = this.recover().await {
                    warn!(%error, "saga recovery sweep failed");
                }
                tokio::select! {
                    () = this.inner.shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        })
    }

    /// Stops the recovery task and refuses new sagas; sagas in flight finish their
    /// current run (await [`idle`](Self::idle)).
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// orchestrator.shutdown();
    /// // No new sagas after shutdown.
    /// assert!(orchestrator.start(&saga, &1).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.permits.close();
    }

    /// Waits until this instance drives no saga.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n + 1) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// orchestrator.start(&saga, &1).await?;
    /// orchestrator.idle().await; // every saga of this instance settled
    /// assert_eq!(orchestrator.in_flight(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn idle(&self) {
        let mut receiver = self.inner.running_count.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this cannot fail.
        let _ = receiver.wait_for(|n| *n == 0).await;
    }

    async fn get_existing(&self, id: SagaId) -> Result<SagaRecord, Error> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id).into())
    }
}

impl<S: SagaStore> Inner<S> {
    fn definition(&self, name: &str, version: u32) -> Result<Arc<ErasedDefinition>, Error> {
        self.definitions
            .get(&crate::record::definition_key(name, version))
            .cloned()
            .ok_or_else(|| Error::UnknownDefinition {
                name: name.to_owned(),
                version,
            })
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, Error> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::ShutDown)
    }

    fn lock_running(&self) -> MutexGuard<'_, RunningMap> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(
        this: &Arc<Self>,
        record: SagaRecord,
        def: Arc<ErasedDefinition>,
        permit: OwnedSemaphorePermit,
        resumed: bool,
        pending: Vec<HistoryEntry>,
    ) {
        let id = record.id;
        {
            let mut running = this.lock_running();
            running.insert(id, watch::Sender::new(None));
            let n = running.len();
            this.running_count.send_replace(n);
        }
        let span = info_span!("saga", saga_id = %id, saga_type = %def.name);
        let this = Arc::clone(this);
        tokio::spawn(
            async move {
                let runner = Runner {
                    inner: &this,
                    def: &def,
                    record,
                    pending,
                    cursor_may_have_run: resumed,
                };
                let result = runner.run().await;
                let sender = {
                    let mut running = this.lock_running();
                    let sender = running.remove(&id);
                    let n = running.len();
                    this.running_count.send_replace(n);
                    sender
                };
                if let Some(sender) = sender {
                    sender.send_replace(Some(result.map_err(|_| id)));
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Drives one saga until it is final, parked or lost.
struct Runner<'a, S> {
    inner: &'a Inner<S>,
    def: &'a ErasedDefinition,
    record: SagaRecord,
    /// History not yet written: retried attempts, a takeover.
    pending: Vec<HistoryEntry>,
    /// Whether the step at the cursor may have started before this run (a resumed saga).
    cursor_may_have_run: bool,
}

/// How a step call (all its attempts) ended.
/// Which attempt settled a call, and when it started: what its history entry records.
#[derive(Clone, Copy)]
struct Attempt {
    number: u32,
    started: DateTime<Utc>,
}

enum CallOutcome {
    Done(serde_json::Value, Attempt),
    Failed(String, Attempt),
    BadContext(String),
    DeadlinePassed,
    LeaseLost,
}

struct Abandoned;

impl<S: SagaStore> Runner<'_, S> {
    async fn run(mut self) -> Result<SagaRecord, Abandoned> {
        while self.record.state.is_active() {
            if self.record.backward {
                self.compensate_next().await?;
            } else {
                self.run_next().await?;
            }
        }
        Ok(self.record)
    }

    fn deadline_passed(&self) -> bool {
        self.record
            .deadline
            .is_some_and(|d| self.inner.clock.now() >= d)
    }

    async fn run_next(&mut self) -> Result<(), Abandoned> {
        let index = self.record.cursor as usize;
        let now = self.inner.clock.now();
        if index >= self.def.steps.len() {
            self.record.state = SagaState::Completed;
            return self
                .persist(vec![HistoryEntry::saga(HistoryEvent::Completed, now, None)])
                .await;
        }
        // The deadline bounds the way to the pivot; after it the saga only goes forward.
        let deadline_applies = self.def.pivot.is_none_or(|p| index <= p);
        let is_pivot = self.def.pivot == Some(index);
        if deadline_applies && self.deadline_passed() && !(is_pivot && self.cursor_may_have_run) {
            let cursor = if self.cursor_may_have_run {
                index + 1
            } else {
                index
            };
            return self
                .turn_back(
                    cursor as u32,
                    HistoryEvent::DeadlineExceeded,
                    "saga deadline passed".into(),
                )
                .await;
        }
        let race_deadline = if deadline_applies && !is_pivot {
            self.record.deadline
        } else {
            None
        };
        let forward_only = self.def.forward_only(index);
        let outcome = self
            .call(index, StepKind::Action, race_deadline, forward_only)
            .await;
        let step = &self.def.steps[index];
        let now = self.inner.clock.now();
        match outcome {
            CallOutcome::Done(context, attempt) => {
                self.record.context = context;
                self.record.cursor += 1;
                let mut history = vec![step_entry(
                    HistoryEvent::ActionSucceeded,
                    &step.name,
                    attempt.number,
                    None,
                    attempt.started,
                    now,
                )];
                if self.record.cursor as usize == self.def.steps.len() {
                    self.record.state = SagaState::Completed;
                    history.push(HistoryEntry::saga(HistoryEvent::Completed, now, None));
                }
                self.persist(history).await?;
                self.cursor_may_have_run = false;
                Ok(())
            }
            CallOutcome::Failed(error, attempt) if forward_only => {
                let reason = format!("step `{}` failed after the pivot: {error}", step.name);
                let history = vec![step_entry(
                    HistoryEvent::ActionFailed,
                    &step.name,
                    attempt.number,
                    Some(error),
                    attempt.started,
                    now,
                )];
                self.park(reason, history).await
            }
            CallOutcome::Failed(error, attempt) => {
                self.pending.push(step_entry(
                    HistoryEvent::ActionFailed,
                    &step.name,
                    attempt.number,
                    Some(error.clone()),
                    attempt.started,
                    now,
                ));
                let reason = format!("step `{}` failed: {error}", step.name);
                self.turn_back(index as u32, HistoryEvent::CompensationStarted, reason)
                    .await
            }
            CallOutcome::BadContext(error) => {
                let reason = format!(
                    "context of saga type `{}` v{} does not decode at step `{}`: {error}",
                    self.def.name, self.def.version, step.name
                );
                self.park(reason, Vec::new()).await
            }
            CallOutcome::DeadlinePassed => {
                // The step was running: it may have taken effect, so it is undone too.
                self.turn_back(
                    index as u32 + 1,
                    HistoryEvent::DeadlineExceeded,
                    "saga deadline passed".into(),
                )
                .await
            }
            CallOutcome::LeaseLost => Err(Abandoned),
        }
    }

    /// Switches to compensating the steps below `cursor`, in one write.
    async fn turn_back(
        &mut self,
        cursor: u32,
        event: HistoryEvent,
        reason: String,
    ) -> Result<(), Abandoned> {
        let now = self.inner.clock.now();
        warn!(cursor, %reason, "saga compensating");
        self.record.backward = true;
        self.record.error = Some(reason.clone());
        self.record.cursor = self.def.next_compensable(cursor);
        let mut history = vec![HistoryEntry::saga(event, now, Some(reason))];
        if event != HistoryEvent::CompensationStarted {
            history.push(HistoryEntry::saga(
                HistoryEvent::CompensationStarted,
                now,
                None,
            ));
        }
        if self.record.cursor == 0 {
            self.record.state = SagaState::Compensated;
            history.push(HistoryEntry::saga(HistoryEvent::Compensated, now, None));
        } else {
            self.record.state = SagaState::Compensating;
        }
        self.persist(history).await
    }

    async fn compensate_next(&mut self) -> Result<(), Abandoned> {
        let cursor = self.def.next_compensable(self.record.cursor);
        let now = self.inner.clock.now();
        if cursor == 0 {
            self.record.cursor = 0;
            self.record.state = SagaState::Compensated;
            return self
                .persist(vec![HistoryEntry::saga(
                    HistoryEvent::Compensated,
                    now,
                    None,
                )])
                .await;
        }
        let index = cursor as usize - 1;
        let outcome = self.call(index, StepKind::Compensation, None, false).await;
        let step = &self.def.steps[index];
        let now = self.inner.clock.now();
        match outcome {
            CallOutcome::Done(_, attempt) => {
                self.record.cursor = self.def.next_compensable(index as u32);
                let mut history = vec![step_entry(
                    HistoryEvent::CompensationSucceeded,
                    &step.name,
                    attempt.number,
                    None,
                    attempt.started,
                    now,
                )];
                if self.record.cursor == 0 {
                    self.record.state = SagaState::Compensated;
                    history.push(HistoryEntry::saga(HistoryEvent::Compensated, now, None));
                }
                self.persist(history).await
            }
            CallOutcome::Failed(error, attempt) => {
                let reason = format!("compensation of step `{}` failed: {error}", step.name);
                let history = vec![step_entry(
                    HistoryEvent::CompensationFailed,
                    &step.name,
                    attempt.number,
                    Some(error),
                    attempt.started,
                    now,
                )];
                self.park(reason, history).await
            }
            CallOutcome::BadContext(error) => {
                let reason = format!(
                    "context of saga type `{}` v{} does not decode at the compensation of step `{}`: {error}",
                    self.def.name, self.def.version, step.name
                );
                self.park(reason, Vec::new()).await
            }
            CallOutcome::DeadlinePassed | CallOutcome::LeaseLost => Err(Abandoned),
        }
    }

    async fn park(
        &mut self,
        reason: String,
        mut history: Vec<HistoryEntry>,
    ) -> Result<(), Abandoned> {
        warn!(%reason, "saga parked as failed");
        let now = self.inner.clock.now();
        self.record.state = SagaState::Failed;
        self.record.error = Some(reason.clone());
        history.push(HistoryEntry::saga(HistoryEvent::Parked, now, Some(reason)));
        self.persist(history).await
    }

    /// Runs all attempts of one call under the step's policy, racing the saga deadline
    /// and renewing the lease meanwhile.
    async fn call(
        &mut self,
        index: usize,
        kind: StepKind,
        deadline: Option<DateTime<Utc>>,
        forward_only: bool,
    ) -> CallOutcome {
        let mut attempts_log = Vec::new();
        let outcome = {
            let work = attempts(
                self.inner,
                self.def,
                &self.record,
                index,
                kind,
                forward_only,
                &mut attempts_log,
            );
            let deadline_sleep = async {
                match deadline {
                    Some(d) => {
                        let left = (d - self.inner.clock.now())
                            .to_std()
                            .unwrap_or(Duration::ZERO);
                        tokio::time::sleep(left).await;
                    }
                    None => pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                outcome = work => outcome,
                () = deadline_sleep => CallOutcome::DeadlinePassed,
                () = self.renew_lease() => CallOutcome::LeaseLost,
            }
        };
        self.pending.append(&mut attempts_log);
        outcome
    }

    /// Renews the lease every third of it; returns only when the lease is lost.
    async fn renew_lease(&self) {
        let period = self.inner.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            let until = self.inner.clock.now() + to_chrono(self.inner.lease);
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
            match self
                .inner
                .store
                .renew_lease(
                    self.record.id,
                    &self.inner.owner,
                    self.record.version,
                    until,
                )
                .await
            {
                Ok(()) => debug!("lease renewed"),
                Err(e) if e.is_transient() => warn!(error = %e, "lease renewal failed; retrying"),
                Err(e) => {
                    warn!(error = %e, "lease lost; abandoning the saga");
                    return;
                }
            }
        }
    }

    /// Writes the record (new version, lease extended) with the pending history, retrying
    /// transient store errors. A write whose reply was lost but which landed is detected by
    /// reading the row back.
    async fn persist(&mut self, history: Vec<HistoryEntry>) -> Result<(), Abandoned> {
        let now = self.inner.clock.now();
        let expected = self.record.version;
        self.record.version += 1;
        self.record.updated_at = now;
        if self.record.state.is_active() {
            self.record.owner = Some(self.inner.owner.clone());
            self.record.lease_until = Some(now + to_chrono(self.inner.lease));
        } else {
            self.record.owner = None;
            self.record.lease_until = None;
        }
        let mut all = std::mem::take(&mut self.pending);
        all.extend(history);
        let mut delays = self.inner.store_backoff.iter();
        let mut uncertain = false;
        for attempt in 1..=self.inner.store_attempts {
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
            match self.inner.store.update(&self.record, expected, &all).await {
                Ok(()) => {
                    debug!(state = %self.record.state, cursor = self.record.cursor, version = self.record.version, "saga persisted");
                    #[cfg(feature = "metrics")]
                    if !self.record.state.is_active() {
                        metrics::counter!("palisade_saga_finished_total", "state" => self.record.state.as_str()).increment(1);
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) if uncertain => {
                    // An earlier attempt may have landed without us hearing back.
                    if let Ok(Some(stored)) = self.inner.store.get(self.record.id).await
                        && stored.version == self.record.version
                        && stored.owner == self.record.owner
                        && stored.state == self.record.state
                        && stored.cursor == self.record.cursor
                    {
                        return Ok(());
                    }
                    warn!("saga taken over by another orchestrator; abandoning it");
                    return Err(Abandoned);
                }
                Err(e) if e.is_transient() => {
                    uncertain = true;
                    warn!(error = %e, attempt, "saga store write failed; retrying");
                    if attempt < self.inner.store_attempts {
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "saga write rejected; abandoning the saga");
                    return Err(Abandoned);
                }
            }
        }
        warn!("saga store kept failing; the saga resumes after its lease expires");
        Err(Abandoned)
    }
}

fn step_entry(
    event: HistoryEvent,
    step: &str,
    attempt: u32,
    error: Option<String>,
    started_at: DateTime<Utc>,
    at: DateTime<Utc>,
) -> HistoryEntry {
    HistoryEntry {
        event,
        step: Some(step.to_owned()),
        attempt,
        error,
        started_at,
        at,
    }
}

/// The attempt loop of one call. Failed attempts that will be retried go to `log`.
async fn attempts<S>(
    inner: &Inner<S>,
    def: &ErasedDefinition,
    record: &SagaRecord,
    index: usize,
    kind: StepKind,
    forward_only: bool,
    log: &mut Vec<HistoryEntry>,
) -> CallOutcome {
    let step = &def.steps[index];
    let (call, policy) = match kind {
        StepKind::Action => (&step.action, &step.policy),
        StepKind::Compensation => match &step.compensation {
            Some(c) => (c, &step.compensation_policy),
            None => {
                let nothing_to_undo = Attempt {
                    number: 0,
                    started: inner.clock.now(),
                };
                return CallOutcome::Done(record.context.clone(), nothing_to_undo);
            }
        },
    };
    let key = IdempotencyKey::new(record.id, &step.name, kind);
    let mut delays = policy.backoff_schedule().iter();
    let retry_event = match kind {
        StepKind::Action => HistoryEvent::ActionRetry,
        StepKind::Compensation => HistoryEvent::CompensationRetry,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let info = StepInfo {
            saga_id: record.id,
            step: Arc::clone(&step.name),
            index,
            kind,
            attempt,
            key: key.clone(),
        };
        let started = inner.clock.now();
        let future = call(record.context.clone(), info);
        let result = match policy.attempt_timeout() {
            Some(limit) => match tokio::time::timeout(limit, future).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Step(StepError::retryable(format!(
                    "attempt timed out after {limit:?}"
                )))),
            },
            None => future.await,
        };
        let ran = Attempt {
            number: attempt,
            started,
        };
        let error = match result {
            Ok(value) => return CallOutcome::Done(value, ran),
            Err(CallError::Context(e)) => return CallOutcome::BadContext(e.to_string()),
            Err(CallError::Step(e)) => e,
        };
        // After the pivot a permanent error is retried too: the saga cannot go back.
        let retry = (error.is_retryable() || forward_only) && attempt < policy.attempts();
        if !retry {
            return CallOutcome::Failed(error.to_string(), ran);
        }
        debug!(step = %step.name, kind = kind.as_str(), attempt, %error, "step attempt failed; retrying");
        log.push(step_entry(
            retry_event,
            &step.name,
            attempt,
            Some(error.to_string()),
            started,
            inner.clock.now(),
        ));
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
    }
}
