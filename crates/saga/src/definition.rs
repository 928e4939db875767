//! Saga definitions: ordered steps over a serde context, a pivot, a version, policies.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use palisade_resilience::backoff::Backoff;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DefinitionError, StepError};
use crate::record::{SagaId, definition_key};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Whether a call is a step's action or its compensation.
///
/// ```rust
/// use palisade_saga::{IdempotencyKey, SagaId, StepKind};
///
/// let id = SagaId::new();
/// let action = IdempotencyKey::new(id, "charge", StepKind::Action);
/// let refund = IdempotencyKey::new(id, "charge", StepKind::Compensation);
/// assert_ne!(action, refund); // the undo is a different operation for the payment service
/// assert!(refund.as_str().ends_with(StepKind::Compensation.as_str()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// The forward action.
    Action,
    /// The undo.
    Compensation,
}

impl StepKind {
    /// `"action"` or `"compensation"`, as it appears in the idempotency key.
    ///
    /// ```rust
    /// use palisade_saga::StepKind;
    /// assert_eq!(StepKind::Action.as_str(), "action");
    /// assert_eq!(StepKind::Compensation.as_str(), "compensation");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::Compensation => "compensation",
        }
    }
}

/// A stable key for one step of one saga, for the services a step calls to deduplicate:
/// `"<saga id>/<step name>/<action|compensation>"`.
///
/// Every attempt of the same step — retries, and re-runs after a crash or a takeover by
/// another orchestrator — carries the same key, so a payment service that remembers keys
/// charges once however many times the step runs.
///
/// ```rust
/// use palisade_saga::{IdempotencyKey, SagaId, StepKind};
///
/// let id: SagaId = "0190f3c4-6a2e-7cc1-9f1e-0d6d2a9b1c11".parse().unwrap();
/// let key = IdempotencyKey::new(id, "charge", StepKind::Action);
/// assert_eq!(key.as_str(), "0190f3c4-6a2e-7cc1-9f1e-0d6d2a9b1c11/charge/action");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `step` of saga `id`.
    ///
    /// ```rust
    /// use palisade_saga::{IdempotencyKey, SagaId, StepKind};
    /// let id = SagaId::new();
    /// let key = IdempotencyKey::new(id, "charge", StepKind::Action);
    /// assert_eq!(key.to_string(), format!("{id}/charge/action"));
    /// // The same on every attempt and after a crash: what the payment service deduplicates on.
    /// assert_eq!(key, IdempotencyKey::new(id, "charge", StepKind::Action));
    /// ```
    pub fn new(id: SagaId, step: &str, kind: StepKind) -> Self {
        Self(format!("{id}/{step}/{}", kind.as_str()))
    }

    /// The key as text.
    ///
    /// ```rust
    /// use palisade_saga::{IdempotencyKey, SagaId, StepKind};
    ///
    /// let key = IdempotencyKey::new(SagaId::new(), "refund", StepKind::Compensation);
    /// assert!(key.as_str().ends_with("/refund/compensation"));
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step's action or compensation is told about the call it is making.
///
/// ```rust
/// use palisade_saga::{Step, StepError, StepInfo, StepKind};
///
/// let charge = Step::new("charge", |amount: u64, step: StepInfo| async move {
///     assert_eq!((step.kind, &*step.step), (StepKind::Action, "charge"));
///     // payments.charge(amount, step.key.as_str()).await?;
///     Ok::<_, StepError>(amount)
/// });
/// # let _ = charge;
/// ```
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// The saga.
    pub saga_id: SagaId,
    /// The step's name.
    pub step: Arc<str>,
    /// The step's position (0-based).
    pub index: usize,
    /// Action or compensation.
    pub kind: StepKind,
    /// The attempt within this run of the orchestrator (1-based). A re-run after a crash
    /// starts again at 1; the idempotency key does not change.
    pub attempt: u32,
    /// The key to pass to the services the step calls.
    pub key: IdempotencyKey,
}

/// How a step's action (or compensation) is retried and timed out.
///
/// Defaults: 3 attempts for an action, 10 for a compensation, exponential backoff from
/// 100 ms capped at 10 s with full jitter ([`Backoff::default`]), a 30 s timeout per
/// attempt. A timed-out attempt counts as a retryable failure; the step "may have run",
/// so its retry carries the same idempotency key.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// use palisade_saga::StepPolicy;
///
/// let policy = StepPolicy::default()
///     .max_attempts(5)
///     .backoff(Backoff::constant(Duration::from_millis(20)))
///     .timeout(Duration::from_secs(2));
/// assert_eq!(policy.attempts(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPolicy {
    max_attempts: u32,
    backoff: Backoff,
    timeout: Option<Duration>,
}

impl Default for StepPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl StepPolicy {
    /// The default compensation policy: like the default but 10 attempts, because a
    /// compensation that gives up parks the saga for a human.
    ///
    /// ```rust
    /// use palisade_saga::StepPolicy;
    /// assert_eq!(StepPolicy::compensation_default().attempts(), 10);
    /// assert_eq!(StepPolicy::default().attempts(), 3);
    /// ```
    pub fn compensation_default() -> Self {
        Self {
            max_attempts: 10,
            ..Self::default()
        }
    }

    /// Total attempts, first included (must be at least 1).
    ///
    /// ```rust
    /// use palisade_saga::StepPolicy;
    /// assert_eq!(StepPolicy::default().max_attempts(5).attempts(), 5);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The delays between attempts.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::backoff::Backoff;
    /// use palisade_saga::StepPolicy;
    /// let policy = StepPolicy::default().backoff(Backoff::constant(Duration::from_millis(200)));
    /// assert!(format!("{policy:?}").contains("200ms"));
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The limit on each attempt.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::StepPolicy;
    /// let policy = StepPolicy::default().timeout(Duration::from_secs(5));
    /// assert!(format!("{policy:?}").contains("Some(5s)"));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No limit on an attempt (the saga deadline still applies before the pivot).
    ///
    /// ```rust
    /// use palisade_saga::StepPolicy;
    /// let policy = StepPolicy::default().no_timeout();
    /// assert!(format!("{policy:?}").contains("timeout: None"));
    /// ```
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// The configured attempt count.
    ///
    /// ```rust
    /// use palisade_saga::StepPolicy;
    /// assert_eq!(StepPolicy::default().attempts(), 3);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn backoff_schedule(&self) -> &Backoff {
        &self.backoff
    }

    pub(crate) fn attempt_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout must be greater than zero".into());
        }
        self.backoff.validate().map_err(|e| e.to_string())
    }
}

/// Why an erased call did not produce a context.
#[derive(Debug)]
pub(crate) enum CallError {
    Step(StepError),
    /// The stored context does not decode into the definition's type, or the new one
    /// does not encode.
    Context(serde_json::Error),
}

pub(crate) type ErasedCall = Arc<
    dyn Fn(serde_json::Value, StepInfo) -> BoxFuture<Result<serde_json::Value, CallError>>
        + Send
        + Sync,
>;

/// One step of a saga: a name, an action, an optional compensation and their policies.
///
/// The action takes the context by value and returns it (changed or not); it is persisted
/// before the next step starts. The compensation receives the context as of the last
/// transition.
///
/// ```rust
/// use palisade_saga::{Step, StepError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { paid: bool }
///
/// let charge = Step::new("charge", |mut order: Order, step| async move {
///     // call the payment service with step.key so it charges once
///     let _ = step.key;
///     order.paid = true;
///     Ok::<_, StepError>(order)
/// })
/// .compensate(|_order: Order, _step| async move { Ok(()) });
/// assert_eq!(charge.name(), "charge");
/// ```
pub struct Step<C> {
    name: Arc<str>,
    action: ErasedCall,
    compensation: Option<ErasedCall>,
    policy: StepPolicy,
    compensation_policy: StepPolicy,
    _context: PhantomData<fn(C) -> C>,
}

impl<C> fmt::Debug for Step<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensable", &self.compensation.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<C> Step<C>
where
    C: Serialize + DeserializeOwned + Send + 'static,
{
    /// A step named `name` (unique within the saga) running `action`.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// let step = Step::new("reserve", |stock: u32, info| async move {
    ///     // inventory.reserve(info.key) — the key makes a re-run harmless
    ///     let _ = info.key;
    ///     Ok::<_, StepError>(stock - 1)
    /// });
    /// assert_eq!(step.name(), "reserve");
    /// ```
    pub fn new<F, Fut>(name: impl Into<String>, action: F) -> Self
    where
        F: Fn(C, StepInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, StepError>> + Send + 'static,
    {
        let action = Arc::new(action);
        let erased: ErasedCall = Arc::new(move |value, info| {
            let action = Arc::clone(&action);
            Box::pin(async move {
                let ctx: C = serde_json::from_value(value).map_err(CallError::Context)?;
                let out = action(ctx, info).await.map_err(CallError::Step)?;
                serde_json::to_value(out).map_err(CallError::Context)
            })
        });
        Self {
            name: Arc::from(name.into()),
            action: erased,
            compensation: None,
            policy: StepPolicy::default(),
            compensation_policy: StepPolicy::compensation_default(),
            _context: PhantomData,
        }
    }

    /// The undo of this step. Not allowed on the pivot or after it.
    ///
    /// It may be called for an action that never took effect (the orchestrator died while
    /// the action ran and the saga deadline passed before it resumed), so it must treat
    /// "nothing to undo" as success; use the key in [`StepInfo`] to find what to undo.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// let step = Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) })
    ///     .compensate(|_n: u32, _| async move { Ok(()) }); // release the reservation
    /// assert!(format!("{step:?}").contains("compensable: true"));
    /// ```
    pub fn compensate<F, Fut>(mut self, compensation: F) -> Self
    where
        F: Fn(C, StepInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let compensation = Arc::new(compensation);
        self.compensation = Some(Arc::new(move |value, info| {
            let compensation = Arc::clone(&compensation);
            Box::pin(async move {
                let ctx: C = serde_json::from_value(value.clone()).map_err(CallError::Context)?;
                compensation(ctx, info).await.map_err(CallError::Step)?;
                Ok(value)
            })
        }));
        self
    }
}

impl<C> Step<C> {
    /// The policy of the action (default [`StepPolicy::default`]).
    ///
    /// ```rust
    /// use palisade_saga::{Step, StepError, StepPolicy};
    /// let step = Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) })
    ///     .policy(StepPolicy::default().max_attempts(5));
    /// assert_eq!(step.name(), "charge");
    /// ```
    pub fn policy(mut self, policy: StepPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy of the compensation (default [`StepPolicy::compensation_default`]).
    ///
    /// ```rust
    /// use palisade_saga::{Step, StepError, StepPolicy};
    /// let step = Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) })
    ///     .compensate(|_: u32, _| async move { Ok(()) })
    ///     .compensation_policy(StepPolicy::compensation_default().max_attempts(20));
    /// assert_eq!(step.name(), "charge");
    /// ```
    pub fn compensation_policy(mut self, policy: StepPolicy) -> Self {
        self.compensation_policy = policy;
        self
    }

    /// The step's name.
    ///
    /// ```rust
    /// use palisade_saga::{Step, StepError};
    ///
    /// let step = Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) });
    /// assert_eq!(step.name(), "charge");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A saga type: a name, a version and an ordered list of steps over a context `C`.
///
/// Build it with [`SagaDefinition::builder`], register it with the orchestrator, start
/// sagas of it. A saga resumes only under the `(name, version)` it started with: change
/// the steps, bump the version, and keep the old definition registered until its sagas
/// are done.
///
/// ```rust
/// use palisade_saga::{SagaDefinition, Step, StepError};
///
/// let def = SagaDefinition::<u32>::builder("counter", 1)
///     .step(Step::new("one", |n: u32, _| async move { Ok::<_, StepError>(n + 1) })
///         .compensate(|_: u32, _| async move { Ok(()) }))
///     .pivot(Step::new("announce", |n: u32, _| async move { Ok::<_, StepError>(n) }))
///     .build()?;
/// assert_eq!(def.steps(), 2);
/// # Ok::<(), palisade_saga::DefinitionError>(())
/// ```
pub struct SagaDefinition<C> {
    pub(crate) erased: Arc<ErasedDefinition>,
    _context: PhantomData<fn(C) -> C>,
}

impl<C> Clone for SagaDefinition<C> {
    fn clone(&self) -> Self {
        Self {
            erased: Arc::clone(&self.erased),
            _context: PhantomData,
        }
    }
}

impl<C> fmt::Debug for SagaDefinition<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.erased.name)
            .field("version", &self.erased.version)
            .field("steps", &self.erased.steps.len())
            .field("pivot", &self.erased.pivot)
            .field("deadline", &self.erased.deadline)
            .finish()
    }
}

impl<C> SagaDefinition<C> {
    /// Starts a definition of saga type `name`, version `version`.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// let saga = SagaDefinition::<u32>::builder("order", 2)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// assert_eq!((saga.name(), saga.version(), saga.steps()), ("order", 2, 1));
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder<C> {
        SagaBuilder {
            name: name.into(),
            version,
            steps: Vec::new(),
            pivot: None,
            second_pivot: false,
            deadline: None,
        }
    }

    /// The type name.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    ///
    /// let saga = SagaDefinition::<u32>::builder("order", 3)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// assert_eq!(saga.name(), "order");
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.erased.name
    }

    /// The version.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    ///
    /// let saga = SagaDefinition::<u32>::builder("order", 3)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// assert_eq!(saga.version(), 3); // started sagas keep running on the version they began with
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn version(&self) -> u32 {
        self.erased.version
    }

    /// The number of steps.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    ///
    /// let saga = SagaDefinition::<u32>::builder("order", 3)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// assert_eq!(saga.steps(), 1);
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn steps(&self) -> usize {
        self.erased.steps.len()
    }
}

/// Builds a [`SagaDefinition`]; see there.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_saga::{SagaDefinition, Step, StepError};
///
/// let saga = SagaDefinition::<u32>::builder("transfer", 2)
///     .step(Step::new("debit", |n: u32, _| async move { Ok::<_, StepError>(n) })
///         .compensate(|_: u32, _| async move { Ok(()) }))
///     .pivot(Step::new("notify", |n: u32, _| async move { Ok::<_, StepError>(n) }))
///     .deadline(Duration::from_secs(60))
///     .build()?;
/// assert_eq!((saga.name(), saga.version(), saga.steps()), ("transfer", 2, 2));
/// # Ok::<(), palisade_saga::DefinitionError>(())
/// ```
pub struct SagaBuilder<C> {
    name: String,
    version: u32,
    steps: Vec<Step<C>>,
    pivot: Option<usize>,
    second_pivot: bool,
    deadline: Option<Duration>,
}

impl<C> fmt::Debug for SagaBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .finish()
    }
}

impl<C> SagaBuilder<C> {
    /// Appends a step.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .step(Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build()?;
    /// assert_eq!(saga.steps(), 2);
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn step(mut self, step: Step<C>) -> Self {
        self.steps.push(step);
        self
    }

    /// Appends the pivot: the irreversible step (send the email, ship the parcel). Once it
    /// succeeded the saga only goes forward: later failures are retried, and a step that
    /// keeps failing parks the saga instead of compensating. If the pivot itself fails
    /// for good, the steps before it are compensated.
    ///
    /// ```rust
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// let builder = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .pivot(Step::new("ship", |n: u32, _| async move { Ok::<_, StepError>(n) }));
    /// assert_eq!(builder.build()?.steps(), 2);
    /// // A step after the pivot cannot be undone, so it may not have a compensation.
    /// let invalid = SagaDefinition::<u32>::builder("order", 1)
    ///     .pivot(Step::new("ship", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .step(Step::new("notify", |n: u32, _| async move { Ok::<_, StepError>(n) })
    ///         .compensate(|_: u32, _| async move { Ok(()) }));
    /// assert!(invalid.build().is_err());
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn pivot(mut self, step: Step<C>) -> Self {
        if self.pivot.is_some() {
            self.second_pivot = true;
        }
        self.pivot = Some(self.steps.len());
        self.steps.push(step);
        self
    }

    /// The time a saga of this type has to reach its pivot (or finish, without a pivot).
    /// Past it, it compensates; the step running at that moment is treated as possibly
    /// done and compensated too. Default: none.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_saga::{SagaDefinition, Step, StepError};
    /// // Reach the pivot within 15 minutes or compensate.
    /// let saga = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("reserve", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .deadline(Duration::from_secs(15 * 60))
    ///     .build()?;
    /// assert!(format!("{saga:?}").contains("900s"));
    /// # Ok::<(), palisade_saga::DefinitionError>(())
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Checks and builds the definition.
    ///
    /// ```rust
    /// use palisade_saga::{DefinitionError, SagaDefinition, Step, StepError};
    /// let empty = SagaDefinition::<u32>::builder("order", 1).build();
    /// assert!(matches!(empty, Err(DefinitionError::NoSteps(_))));
    /// let twice = SagaDefinition::<u32>::builder("order", 1)
    ///     .step(Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .step(Step::new("charge", |n: u32, _| async move { Ok::<_, StepError>(n) }))
    ///     .build();
    /// assert!(matches!(twice, Err(DefinitionError::DuplicateStep { .. })));
    /// ```
    pub fn build(self) -> Result<SagaDefinition<C>, DefinitionError> {
        let name = self.name;
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps(name));
        }
        if self.second_pivot {
            return Err(DefinitionError::SecondPivot(name));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(DefinitionError::DuplicateStep {
                    saga: name,
                    step: step.name.to_string(),
                });
            }
            if self.pivot.is_some_and(|p| i >= p) && step.compensation.is_some() {
                return Err(DefinitionError::CompensationAfterPivot {
                    saga: name,
                    step: step.name.to_string(),
                });
            }
            for policy in [&step.policy, &step.compensation_policy] {
                policy
                    .validate()
                    .map_err(|reason| DefinitionError::Policy {
                        saga: name.clone(),
                        step: step.name.to_string(),
                        reason,
                    })?;
            }
        }
        let steps = self
            .steps
            .into_iter()
            .map(|s| ErasedStep {
                name: s.name,
                action: s.action,
                compensation: s.compensation,
                policy: s.policy,
                compensation_policy: s.compensation_policy,
            })
            .collect();
        Ok(SagaDefinition {
            erased: Arc::new(ErasedDefinition {
                key: definition_key(&name, self.version),
                name,
                version: self.version,
                steps,
                pivot: self.pivot,
                deadline: self.deadline,
            }),
            _context: PhantomData,
        })
    }
}

pub(crate) struct ErasedStep {
    pub(crate) name: Arc<str>,
    pub(crate) action: ErasedCall,
    pub(crate) compensation: Option<ErasedCall>,
    pub(crate) policy: StepPolicy,
    pub(crate) compensation_policy: StepPolicy,
}

pub(crate) struct ErasedDefinition {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) key: String,
    pub(crate) steps: Vec<ErasedStep>,
    pub(crate) pivot: Option<usize>,
    pub(crate) deadline: Option<Duration>,
}

impl ErasedDefinition {
    /// Whether step `index` is the pivot or after it (forward only).
    pub(crate) fn forward_only(&self, index: usize) -> bool {
        self.pivot.is_some_and(|p| index > p)
    }

    /// The highest `cursor' <= cursor` such that step `cursor' - 1` has a compensation,
    /// or 0 when nothing below `cursor` needs undoing.
    pub(crate) fn next_compensable(&self, cursor: u32) -> u32 {
        let mut c = cursor.min(self.steps.len() as u32);
        while c > 0 {
            if self.steps[c as usize - 1].compensation.is_some() {
                return c;
            }
            c -= 1;
        }
        0
    }
}
