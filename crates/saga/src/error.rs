//! Errors of the saga crate: one for steps, one for stores, one for the orchestrator.

use crate::record::SagaId;

/// A boxed error as tower and most async libraries carry it.
///
/// ```rust
/// use palisade_saga::{BoxError, StepError};
///
/// let cause: BoxError = "card declined".into();
/// let error = StepError::permanent(cause);
/// assert!(!error.is_retryable());
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a step's action or compensation returns when it did not succeed.
///
/// The distinction drives the orchestrator: a retryable error is retried under the
/// step's policy; a permanent one (or a retryable one whose retries are exhausted) makes
/// the saga compensate, unless the pivot already succeeded, in which case the saga keeps
/// retrying forward and is parked when the policy gives up.
///
/// ```rust
/// use palisade_saga::StepError;
///
/// let declined = StepError::permanent("card declined");
/// assert!(!declined.is_retryable());
/// let flaky = StepError::retryable(std::io::Error::other("connection reset"));
/// assert!(flaky.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A failure that may go away if the same call is made again (timeout, 503, reset).
    #[error("retryable: {0}")]
    Retryable(#[source] BoxError),
    /// A failure that will not go away (payment declined, out of stock, invalid input).
    #[error("permanent: {0}")]
    Permanent(#[source] BoxError),
}

impl StepError {
    /// A failure worth retrying.
    ///
    /// ```rust
    /// use palisade_saga::StepError;
    ///
    /// let error = StepError::retryable(std::io::Error::other("payment service timed out"));
    /// assert!(error.is_retryable());
    /// ```
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::Retryable(error.into())
    }

    /// A failure that retrying will not fix.
    ///
    /// ```rust
    /// use palisade_saga::StepError;
    ///
    /// // Retrying cannot help: the saga compensates at once.
    /// assert!(!StepError::permanent("card declined").is_retryable());
    /// ```
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// Whether the orchestrator may retry the call.
    ///
    /// ```rust
    /// use palisade_saga::StepError;
    ///
    /// assert!(StepError::retryable("busy").is_retryable());
    /// assert!(!StepError::permanent("out of stock").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// What a [`SagaStore`](crate::SagaStore) reports when a read or a write did not happen.
///
/// ```rust
/// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)]
/// # struct Order { id: u32 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saga = SagaDefinition::<Order>::builder("order", 1)
///     .step(Step::new("reserve", |o: Order, _| async move { Ok::<_, StepError>(o) })
///         .compensate(|_: Order, _| async move { Ok(()) }))
///     .build()?;
/// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
/// use palisade_saga::{Error, SagaId, StoreError};
/// // Asking for a saga that does not exist.
/// match orchestrator.retry(SagaId::new()).await {
///     Err(Error::Store(StoreError::NotFound(_))) => {}
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The optimistic version check failed: someone else wrote the saga since it was
    /// read (another orchestrator took it over after its lease expired). The write did
    /// not happen.
    #[error("saga {id} was changed by another writer (expected version {expected})")]
    Conflict {
        /// The saga.
        id: SagaId,
        /// The version the writer expected to find.
        expected: i64,
    },
    /// The saga does not exist.
    #[error("saga {0} not found")]
    NotFound(SagaId),
    /// A stored row could not be read back (unknown state name, malformed JSON…).
    #[error("corrupt saga row: {0}")]
    Corrupt(String),
    /// The database failed (connection lost, timeout, constraint, I/O).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Another backend failed; the source says how.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl StoreError {
    /// Whether the same write may succeed if tried again (connection trouble), as opposed
    /// to a conflict or a missing row, which retrying cannot fix.
    ///
    /// ```rust
    /// use palisade_saga::{SagaId, StoreError};
    ///
    /// let lost = StoreError::Unavailable("connection reset".into());
    /// assert!(lost.is_transient());
    /// assert!(!StoreError::NotFound(SagaId::new()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Conflict { .. } | Self::NotFound(_) | Self::Corrupt(_) => false,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Self::Database(e) => !matches!(
                e,
                sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::ColumnNotFound(_)
            ),
            Self::Unavailable(_) => true,
        }
    }
}

/// A saga definition that cannot work, reported when it is built.
///
/// ```rust
/// use palisade_saga::{DefinitionError, SagaDefinition, Step, StepError};
///
/// let twice = SagaDefinition::<u32>::builder("dup", 1)
///     .step(Step::new("a", |n: u32, _| async move { Ok::<_, StepError>(n) }))
///     .step(Step::new("a", |n: u32, _| async move { Ok::<_, StepError>(n) }))
///     .build();
/// assert!(matches!(twice, Err(DefinitionError::DuplicateStep { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The saga has no steps.
    #[error("saga `{0}` has no steps")]
    NoSteps(String),
    /// Two steps share a name (names are part of the idempotency key).
    #[error("saga `{saga}` has two steps named `{step}`")]
    DuplicateStep {
        /// The saga type.
        saga: String,
        /// The repeated name.
        step: String,
    },
    /// A step at or after the pivot has a compensation: those steps only go forward.
    #[error("saga `{saga}`: step `{step}` is at or after the pivot and cannot have a compensation")]
    CompensationAfterPivot {
        /// The saga type.
        saga: String,
        /// The step.
        step: String,
    },
    /// More than one step is marked as the pivot.
    #[error("saga `{0}` has more than one pivot")]
    SecondPivot(String),
    /// A step policy is invalid (a zero attempt count, a bad backoff).
    #[error("saga `{saga}`, step `{step}`: {reason}")]
    Policy {
        /// The saga type.
        saga: String,
        /// The step.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// What the [`Orchestrator`](crate::Orchestrator) API returns when a call fails.
///
/// ```rust
/// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)]
/// # struct Order { id: u32 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saga = SagaDefinition::<Order>::builder("order", 1)
///     .step(Step::new("reserve", |o: Order, _| async move { Ok::<_, StepError>(o) })
///         .compensate(|_: Order, _| async move { Ok(()) }))
///     .build()?;
/// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
/// use palisade_saga::Error;
/// let other = SagaDefinition::<Order>::builder("refund", 1)
///     .step(Step::new("pay back", |o: Order, _| async move { Ok::<_, StepError>(o) }))
///     .build()?;
/// // Not registered with this orchestrator: a clear error, not a panic.
/// match orchestrator.start(&other, &Order { id: 1 }).await {
///     Err(Error::UnknownDefinition { name, version }) => {
///         assert_eq!((name.as_str(), version), ("refund", 1));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No definition with this type name and version is registered in this orchestrator.
    #[error("unknown saga type `{name}` version {version}: no such definition is registered")]
    UnknownDefinition {
        /// The saga type name.
        name: String,
        /// The definition version.
        version: u32,
    },
    /// The saga id is already used by a saga of another type.
    #[error("saga {id} already exists with type `{existing}`")]
    IdInUse {
        /// The saga.
        id: SagaId,
        /// The type it was started with.
        existing: String,
    },
    /// The initial context could not be serialized.
    #[error("context does not serialize: {0}")]
    Context(#[from] serde_json::Error),
    /// The operation needs the saga in another state (e.g. retrying a saga that is not
    /// parked).
    #[error("saga {id} is {state}, the operation needs it {needed}")]
    WrongState {
        /// The saga.
        id: SagaId,
        /// Its state.
        state: crate::SagaState,
        /// The state the operation needs.
        needed: &'static str,
    },
    /// The orchestrator lost the saga (its lease was taken over or the store kept
    /// failing); it will be resumed by whoever holds it or by the next recovery sweep.
    #[error("saga {0} was abandoned by this orchestrator; it resumes after its lease expires")]
    Abandoned(SagaId),
    /// The orchestrator was shut down and takes no new work.
    #[error("the orchestrator is shut down")]
    ShutDown,
    /// The orchestrator's configuration cannot work.
    #[error(transparent)]
    Config(#[from] palisade_resilience::ConfigError),
    /// A saga definition cannot work.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
}
