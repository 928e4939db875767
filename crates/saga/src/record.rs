//! The persisted shape of a saga: its row, its state and its history.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one saga run (a UUID, v7 when the orchestrator makes it up).
///
/// ```rust
/// use palisade_saga::SagaId;
///
/// let id = SagaId::new();
/// let parsed: SagaId = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(pub Uuid);

impl SagaId {
    /// A fresh, time-ordered id (UUID v7).
    ///
    /// ```rust
    /// use palisade_saga::SagaId;
    ///
    /// let (a, b) = (SagaId::new(), SagaId::new());
    /// assert_ne!(a, b);
    /// assert_eq!(a.0.get_version_num(), 7); // UUID v7: ids sort by creation time
    /// ```
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SagaId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for SagaId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// Where a saga is in its life.
///
/// `Running` and `Compensating` are active (an orchestrator holds them under a lease);
/// the others are final, except that an operator may [retry](crate::Orchestrator::retry)
/// a `Failed` saga.
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
/// let id = orchestrator.start(&saga, &Order { id: 7 }).await?;
/// let record = orchestrator.outcome(id).await?;
/// assert_eq!(record.state, palisade_saga::SagaState::Completed);
/// assert_eq!(record.state.as_str(), "completed"); // as stored
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Running its steps forward.
    Running,
    /// Undoing its completed steps in reverse order.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was undone.
    Compensated,
    /// Parked for an operator, with the reason in [`SagaRecord::error`]: a compensation
    /// kept failing, a step after the pivot kept failing, or the context no longer
    /// decodes.
    Failed,
    /// An operator marked a parked saga as handled by hand.
    Resolved,
}

impl SagaState {
    /// Every state, in declaration order.
    pub const ALL: [SagaState; 6] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Failed,
        Self::Resolved,
    ];

    /// The name stored in the database.
    ///
    /// ```rust
    /// use palisade_saga::SagaState;
    ///
    /// assert_eq!(SagaState::Compensated.as_str(), "compensated");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
            Self::Resolved => "resolved",
        }
    }

    /// Whether an orchestrator is (or should be) driving the saga.
    ///
    /// ```rust
    /// use palisade_saga::SagaState;
    ///
    /// assert!(SagaState::Running.is_active() && SagaState::Compensating.is_active());
    /// assert!(!SagaState::Completed.is_active() && !SagaState::Failed.is_active());
    /// ```
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }

    /// Parses a stored name.
    ///
    /// ```rust
    /// use palisade_saga::SagaState;
    ///
    /// assert_eq!(SagaState::parse("failed"), Some(SagaState::Failed));
    /// assert_eq!(SagaState::parse("FAILED"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One saga as the store holds it: a single row, rewritten at every transition under an
/// optimistic version check.
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
/// let id = orchestrator.start(&saga, &Order { id: 7 }).await?;
/// let record = orchestrator.outcome(id).await?;
/// assert_eq!((record.saga_type.as_str(), record.definition_version), ("order", 1));
/// assert_eq!(record.context["id"], 7);
/// assert_eq!(record.error, None);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga's id.
    pub id: SagaId,
    /// The definition's type name.
    pub saga_type: String,
    /// The definition's version; the saga resumes only under this version.
    pub definition_version: u32,
    /// Where the saga is.
    pub state: SagaState,
    /// Going forward, the index of the next step to run (it may have started already:
    /// a resumed saga runs it again with the same idempotency key). Going backward, the
    /// number of steps still to undo: the next compensation is for step `cursor - 1`.
    pub cursor: u32,
    /// `true` when the saga is undoing (also kept while it is parked, so a retry knows
    /// which way to go).
    pub backward: bool,
    /// The saga's context as JSON, as of the last transition.
    pub context: serde_json::Value,
    /// Why the saga failed or was parked.
    pub error: Option<String>,
    /// The optimistic concurrency version, bumped by every write.
    pub version: i64,
    /// The orchestrator instance holding the saga.
    pub owner: Option<String>,
    /// Until when the owner holds it.
    pub lease_until: Option<DateTime<Utc>>,
    /// When the saga must be finished by; past it, it compensates (before its pivot).
    pub deadline: Option<DateTime<Utc>>,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

impl SagaRecord {
    /// The `type@version` key used to match records with registered definitions.
    ///
    /// ```rust
    /// use palisade_saga::{MemoryStore, Orchestrator, SagaDefinition, Step, StepError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let saga = SagaDefinition::<u32>::builder("order", 2)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// let orchestrator = Orchestrator::builder(MemoryStore::new()).register(&saga).build()?;
    /// let record = orchestrator.outcome(orchestrator.start(&saga, &1).await?).await?;
    /// assert_eq!(record.definition_key(), "order@2");
    /// # Ok(()) }
    /// ```
    pub fn definition_key(&self) -> String {
        definition_key(&self.saga_type, self.definition_version)
    }
}

pub(crate) fn definition_key(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}

/// What happened, in one history entry.
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
/// use palisade_saga::HistoryEvent;
/// let id = orchestrator.start(&saga, &Order { id: 7 }).await?;
/// orchestrator.outcome(id).await?;
/// let history = orchestrator.history(id).await?;
/// let events: Vec<HistoryEvent> = history.iter().map(|h| h.event).collect();
/// let expected = [HistoryEvent::Created, HistoryEvent::ActionSucceeded, HistoryEvent::Completed];
/// assert_eq!(events, expected);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// The saga was created.
    Created,
    /// An orchestrator took the saga over after the previous owner's lease expired (or an
    /// operator's retry).
    Resumed,
    /// An action attempt failed and will be retried (error attached).
    ActionRetry,
    /// An action succeeded.
    ActionSucceeded,
    /// An action failed for good (error attached).
    ActionFailed,
    /// The saga turned around to undo its completed steps.
    CompensationStarted,
    /// A compensation attempt failed and will be retried (error attached).
    CompensationRetry,
    /// A compensation succeeded.
    CompensationSucceeded,
    /// A compensation failed for good (error attached).
    CompensationFailed,
    /// The saga deadline passed before the pivot.
    DeadlineExceeded,
    /// Every step succeeded.
    Completed,
    /// Every completed step was undone.
    Compensated,
    /// The saga was parked as failed (reason attached).
    Parked,
    /// An operator asked to retry a parked saga.
    OperatorRetry,
    /// An operator marked the saga resolved (note attached).
    Resolved,
}

impl HistoryEvent {
    const ALL: [HistoryEvent; 15] = [
        Self::Created,
        Self::Resumed,
        Self::ActionRetry,
        Self::ActionSucceeded,
        Self::ActionFailed,
        Self::CompensationStarted,
        Self::CompensationRetry,
        Self::CompensationSucceeded,
        Self::CompensationFailed,
        Self::DeadlineExceeded,
        Self::Completed,
        Self::Compensated,
        Self::Parked,
        Self::OperatorRetry,
        Self::Resolved,
    ];

    /// The name stored in the database.
    ///
    /// ```rust
    /// use palisade_saga::HistoryEvent;
    ///
    /// assert_eq!(HistoryEvent::ActionRetry.as_str(), "action_retry");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Resumed => "resumed",
            Self::ActionRetry => "action_retry",
            Self::ActionSucceeded => "action_succeeded",
            Self::ActionFailed => "action_failed",
            Self::CompensationStarted => "compensation_started",
            Self::CompensationRetry => "compensation_retry",
            Self::CompensationSucceeded => "compensation_succeeded",
            Self::CompensationFailed => "compensation_failed",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Parked => "parked",
            Self::OperatorRetry => "operator_retry",
            Self::Resolved => "resolved",
        }
    }

    /// Parses a stored name.
    ///
    /// ```rust
    /// use palisade_saga::HistoryEvent;
    ///
    /// for event in [HistoryEvent::Created, HistoryEvent::CompensationRetry, HistoryEvent::Resolved] {
    ///     assert_eq!(HistoryEvent::parse(event.as_str()), Some(event));
    /// }
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a saga's append-only history.
///
/// Attempts that failed and were retried are buffered and written with the step's next
/// transition, so a step that succeeds on its third attempt costs one write and still
/// shows its two failures with their times.
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
/// let id = orchestrator.start(&saga, &Order { id: 7 }).await?;
/// orchestrator.outcome(id).await?;
/// let history = orchestrator.history(id).await?;
/// let step = history.iter().find(|h| h.step.is_some()).expect("a step entry");
/// assert_eq!(step.event, palisade_saga::HistoryEvent::ActionSucceeded);
/// assert_eq!((step.step.as_deref(), step.attempt), (Some("reserve"), 1));
/// assert!(step.started_at <= step.at);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// What happened.
    pub event: HistoryEvent,
    /// The step concerned, if any.
    pub step: Option<String>,
    /// The attempt number (1-based) for step events, 0 otherwise.
    pub attempt: u32,
    /// The error or note.
    pub error: Option<String>,
    /// When the attempt started (step events) or the event happened.
    pub started_at: DateTime<Utc>,
    /// When the event happened.
    pub at: DateTime<Utc>,
}

impl HistoryEntry {
    pub(crate) fn saga(event: HistoryEvent, at: DateTime<Utc>, error: Option<String>) -> Self {
        Self {
            event,
            step: None,
            attempt: 0,
            error,
            started_at: at,
            at,
        }
    }
}

/// Which sagas [`SagaStore::list`](crate::SagaStore::list) returns.
///
/// ```rust
/// use palisade_saga::{ListFilter, SagaState};
///
/// let parked = ListFilter::default().state(SagaState::Failed).limit(50);
/// assert_eq!(parked.states, vec![SagaState::Failed]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ListFilter {
    /// Only these states (all states when empty).
    pub states: Vec<SagaState>,
    /// Only sagas last written before this instant (the stuck ones).
    pub updated_before: Option<DateTime<Utc>>,
    /// At most this many, oldest first. Default 100.
    pub limit: u32,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            updated_before: None,
            limit: 100,
        }
    }
}

impl ListFilter {
    /// Adds a state to the filter.
    ///
    /// ```rust
    /// use palisade_saga::{ListFilter, SagaState};
    ///
    /// let filter = ListFilter::default().state(SagaState::Failed).state(SagaState::Compensating);
    /// assert_eq!(filter.states, [SagaState::Failed, SagaState::Compensating]);
    /// ```
    pub fn state(mut self, state: SagaState) -> Self {
        self.states.push(state);
        self
    }

    /// Only sagas not written since `instant`.
    ///
    /// ```rust
    /// use palisade_saga::ListFilter;
    ///
    /// // Sagas no instance has touched for an hour: stuck, or their owner died.
    /// let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    /// assert_eq!(ListFilter::default().updated_before(hour_ago).updated_before, Some(hour_ago));
    /// ```
    pub fn updated_before(mut self, instant: DateTime<Utc>) -> Self {
        self.updated_before = Some(instant);
        self
    }

    /// Caps the number of rows.
    ///
    /// ```rust
    /// use palisade_saga::ListFilter;
    ///
    /// assert_eq!(ListFilter::default().limit, 100);
    /// assert_eq!(ListFilter::default().limit(10).limit, 10);
    /// ```
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    pub(crate) fn matches(&self, r: &SagaRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.state))
            && self.updated_before.is_none_or(|t| r.updated_at < t)
    }
}
