//! Scenarios written once and run against every store (memory, SQLite, PostgreSQL).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use palisade_resilience::backoff::Backoff;
use palisade_saga::{
    Clock, Error, HistoryEntry, HistoryEvent, IdempotencyKey, ListFilter, Orchestrator,
    SagaDefinition, SagaId, SagaRecord, SagaState, SagaStore, Step, StepError, StepInfo, StepKind,
    StepPolicy, StoreError,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub const LEASE: Duration = Duration::from_secs(30);

pub fn fast_policy(attempts: u32) -> StepPolicy {
    StepPolicy::default()
        .max_attempts(attempts)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .timeout(Duration::from_secs(5))
}

// ---------------------------------------------------------------------------
// Crash injection: a store wrapper that "dies" at the n-th write, before or after
// applying it, and step bodies that die at the n-th call. Dying = never returning, and
// the test then drops the whole runtime, like a killed process.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    None,
    /// Before the n-th store write (0-based) is applied.
    BeforeWrite(u64),
    /// After the n-th store write is applied, before its reply.
    AfterWrite(u64),
    /// While the n-th action or compensation call runs.
    InCall(u64),
}

#[derive(Default)]
pub struct Crash {
    point: Mutex<Option<CrashPoint>>,
    writes: AtomicU64,
    calls: AtomicU64,
    pub crashed: Notify,
    pub happened: std::sync::atomic::AtomicBool,
}

impl Crash {
    pub fn new(point: CrashPoint) -> Arc<Self> {
        let c = Self::default();
        *c.point.lock().unwrap() = Some(point);
        Arc::new(c)
    }
    fn die(&self) {
        self.happened.store(true, Ordering::SeqCst);
        self.crashed.notify_waiters();
        self.crashed.notify_one();
    }
    pub fn disarm(&self) {
        *self.point.lock().unwrap() = None;
    }
    fn is_dead(&self) -> bool {
        self.happened.load(Ordering::SeqCst)
    }
    /// Called at each write; returns (die_before, die_after).
    fn on_write(&self) -> (bool, bool) {
        let point = *self.point.lock().unwrap();
        if self.is_dead() && point.is_some() {
            return (true, false);
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        match point {
            Some(CrashPoint::BeforeWrite(k)) if k == n => (true, false),
            Some(CrashPoint::AfterWrite(k)) if k == n => (false, true),
            _ => (false, false),
        }
    }
    async fn on_call(&self) {
        let point = *self.point.lock().unwrap();
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if (self.is_dead() && point.is_some()) || point == Some(CrashPoint::InCall(n)) {
            self.die();
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Clone)]
pub struct CrashStore<S> {
    pub inner: S,
    pub crash: Arc<Crash>,
}

impl<S: SagaStore> CrashStore<S> {
    async fn guard<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let (before, after) = self.crash.on_write();
        if before {
            self.crash.die();
            std::future::pending::<()>().await;
        }
        let out = write.await;
        if after {
            self.crash.die();
            std::future::pending::<()>().await;
        }
        out
    }
}

impl<S: SagaStore> SagaStore for CrashStore<S> {
    async fn create(
        &self,
        record: &SagaRecord,
        history: &[HistoryEntry],
    ) -> Result<Option<SagaRecord>, StoreError> {
        self.guard(self.inner.create(record, history)).await
    }
    async fn update(
        &self,
        record: &SagaRecord,
        expected_version: i64,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.guard(self.inner.update(record, expected_version, history))
            .await
    }
    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.guard(self.inner.renew_lease(id, owner, version, until))
            .await
    }
    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        definitions: &[String],
        limit: u32,
    ) -> Result<Vec<SagaRecord>, StoreError> {
        self.guard(
            self.inner
                .claim(owner, now, lease_until, definitions, limit),
        )
        .await
    }
    async fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaRecord>, StoreError> {
        self.inner.list(filter).await
    }
    async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(id).await
    }
}

// ---------------------------------------------------------------------------
// Random saga definitions whose steps log every call.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Succeed,
    /// Fails retryably this many times (over the saga's whole life), then succeeds.
    FailTimes(u32),
    Permanent,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub action: Behaviour,
    /// `None`: no compensation.
    pub compensation: Option<Behaviour>,
}

#[derive(Debug, Clone)]
pub struct SagaSpec {
    pub steps: Vec<StepSpec>,
    pub pivot: Option<usize>,
}

pub const ATTEMPTS: u32 = 3;

fn behaviour(max_fail: u32, permanent: bool) -> impl Strategy<Value = Behaviour> {
    let mut options: Vec<BoxedStrategy<Behaviour>> = vec![
        Just(Behaviour::Succeed).boxed(),
        Just(Behaviour::Succeed).boxed(),
        (1..=max_fail).prop_map(Behaviour::FailTimes).boxed(),
    ];
    if permanent {
        options.push(Just(Behaviour::Permanent).boxed());
    }
    proptest::strategy::Union::new(options)
}

pub fn saga_spec() -> impl Strategy<Value = SagaSpec> {
    (1usize..=5, proptest::option::of(0usize..5)).prop_flat_map(|(n, pivot)| {
        let pivot = pivot.filter(|p| *p < n);
        let steps: Vec<_> = (0..n)
            .map(move |i| {
                let before_pivot = pivot.is_none_or(|p| i < p);
                let after_pivot = pivot.is_some_and(|p| i > p);
                // After the pivot, steps must eventually succeed within their budget.
                let action = if after_pivot {
                    behaviour(ATTEMPTS - 1, false).boxed()
                } else {
                    behaviour(ATTEMPTS + 1, true).boxed()
                };
                let compensation = if before_pivot {
                    proptest::option::weighted(
                        0.8,
                        prop_oneof![
                            8 => Just(Behaviour::Succeed),
                            4 => (1..=ATTEMPTS + 1).prop_map(Behaviour::FailTimes),
                            1 => Just(Behaviour::Permanent),
                        ],
                    )
                    .boxed()
                } else {
                    Just(None).boxed()
                };
                (action, compensation).prop_map(|(action, compensation)| StepSpec {
                    action,
                    compensation,
                })
            })
            .collect();
        (steps, Just(pivot)).prop_map(|(steps, pivot)| SagaSpec { steps, pivot })
    })
}

pub fn crash_point() -> impl Strategy<Value = CrashPoint> {
    prop_oneof![
        1 => Just(CrashPoint::None),
        3 => (0u64..10).prop_map(CrashPoint::BeforeWrite),
        3 => (0u64..10).prop_map(CrashPoint::AfterWrite),
        3 => (0u64..10).prop_map(CrashPoint::InCall),
    ]
}

#[derive(Debug, Clone)]
pub struct CallLog {
    pub saga: SagaId,
    pub step: usize,
    pub kind: StepKind,
    pub key: IdempotencyKey,
    pub ok: bool,
}

#[derive(Default)]
pub struct Observed {
    pub calls: Mutex<Vec<CallLog>>,
    /// Calls started, by (saga, step, kind), for the failure budgets.
    pub started: Mutex<HashMap<(SagaId, usize, bool), u32>>,
    pub in_flight: Mutex<HashMap<(SagaId, usize, bool), u32>>,
    pub overlap: std::sync::atomic::AtomicBool,
}

struct InFlight {
    observed: Arc<Observed>,
    key: (SagaId, usize, bool),
}
impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.observed.in_flight.lock().unwrap().get_mut(&self.key) {
            *n -= 1;
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ctx {
    pub done: Vec<usize>,
}

async fn observed_call(
    observed: Arc<Observed>,
    crash: Option<Arc<Crash>>,
    b: Behaviour,
    index: usize,
    info: StepInfo,
) -> Result<(), StepError> {
    let compensation = info.kind == StepKind::Compensation;
    let key = (info.saga_id, index, compensation);
    let n = {
        let mut started = observed.started.lock().unwrap();
        let n = started.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    {
        let mut in_flight = observed.in_flight.lock().unwrap();
        let c = in_flight.entry(key).or_insert(0);
        *c += 1;
        if *c > 1 {
            observed.overlap.store(true, Ordering::SeqCst);
        }
    }
    let _guard = InFlight {
        observed: Arc::clone(&observed),
        key,
    };
    if let Some(crash) = &crash {
        crash.on_call().await;
    }
    tokio::task::yield_now().await;
    let result = match b {
        Behaviour::Succeed => Ok(()),
        Behaviour::FailTimes(k) if n <= k => Err(StepError::retryable("flaky")),
        Behaviour::FailTimes(_) => Ok(()),
        Behaviour::Permanent => Err(StepError::permanent("refused")),
    };
    observed.calls.lock().unwrap().push(CallLog {
        saga: info.saga_id,
        step: index,
        kind: info.kind,
        key: info.key.clone(),
        ok: result.is_ok(),
    });
    result
}

pub fn build_definition(
    name: &str,
    spec: &SagaSpec,
    observed: &Arc<Observed>,
    crash: Option<Arc<Crash>>,
) -> SagaDefinition<Ctx> {
    let mut builder = SagaDefinition::<Ctx>::builder(name, 1);
    for (i, s) in spec.steps.iter().enumerate() {
        let (obs, cr, b) = (Arc::clone(observed), crash.clone(), s.action);
        let mut step = Step::new(format!("s{i}"), move |mut ctx: Ctx, info| {
            let (obs, cr) = (Arc::clone(&obs), cr.clone());
            async move {
                observed_call(obs, cr, b, i, info).await?;
                ctx.done.push(i);
                Ok(ctx)
            }
        })
        .policy(fast_policy(ATTEMPTS));
        if let Some(cb) = s.compensation {
            let (obs, cr) = (Arc::clone(observed), crash.clone());
            step = step
                .compensate(move |_ctx: Ctx, info| {
                    observed_call(Arc::clone(&obs), cr.clone(), cb, i, info)
                })
                .compensation_policy(fast_policy(ATTEMPTS));
        }
        builder = if spec.pivot == Some(i) {
            builder.pivot(step)
        } else {
            builder.step(step)
        };
    }
    builder.build().unwrap()
}

/// Runs one crash-recovery case: start the sagas on an orchestrator that dies at
/// `point`, then finish them with a fresh orchestrator on the same store, and check
/// every promise. `make_store` is called once per life and must open the same store.
pub fn crash_recovery_case<S, F>(
    make_store: F,
    specs: Vec<SagaSpec>,
    point: CrashPoint,
    paused: bool,
) -> Result<(), TestCaseError>
where
    S: SagaStore + Clone,
    F: Fn(&tokio::runtime::Runtime) -> S,
{
    let runtime = || {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.enable_all();
        if paused {
            b.start_paused(true);
        }
        b.build().unwrap()
    };
    let clock = Clock::manual(Utc::now());
    let observed = Arc::new(Observed::default());
    let ids: Vec<SagaId> = specs.iter().map(|_| SagaId::new()).collect();

    // First life: dies at the crash point.
    let crash = Crash::new(point);
    let rt1 = runtime();
    let store = make_store(&rt1);
    {
        let crash_store = CrashStore {
            inner: store.clone(),
            crash: Arc::clone(&crash),
        };
        let defs: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                build_definition(&format!("t{i}"), s, &observed, Some(Arc::clone(&crash)))
            })
            .collect();
        let mut builder = Orchestrator::builder(crash_store)
            .clock(clock.clone())
            .lease(LEASE)
            .owner("first");
        for d in &defs {
            builder = builder.register(d);
        }
        let orch = builder.build().unwrap();
        rt1.block_on(async {
            let work = async {
                for (d, id) in defs.iter().zip(&ids) {
                    orch.start_with_id(d, *id, &Ctx::default()).await.unwrap();
                }
                for id in &ids {
                    orch.outcome(*id).await.unwrap();
                }
            };
            tokio::select! {
                () = work => {}
                () = crash.crashed.notified() => {}
            }
        });
    }
    drop(rt1); // the process dies: every task is dropped where it stood
    crash.disarm();

    // Second life: a fresh orchestrator after the lease expired.
    clock.advance(LEASE * 2);
    let rt2 = runtime();
    // A new process connects anew (a pool made on the dead runtime is dead with it).
    let store = make_store(&rt2);
    let defs: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| build_definition(&format!("t{i}"), s, &observed, None))
        .collect();
    let mut builder = Orchestrator::builder(store.clone())
        .clock(clock.clone())
        .lease(LEASE)
        .owner("second");
    for d in &defs {
        builder = builder.register(d);
    }
    let orch = builder.build().unwrap();
    let finals: Vec<Option<SagaRecord>> = rt2.block_on(async {
        orch.recover().await.unwrap();
        let mut out = Vec::new();
        for id in &ids {
            match orch.status(*id).await.unwrap() {
                None => out.push(None),
                Some(_) => out.push(Some(
                    tokio::time::timeout(Duration::from_secs(600), orch.outcome(*id))
                        .await
                        .expect("saga never finished")
                        .unwrap(),
                )),
            }
        }
        out
    });

    if std::env::var_os("SAGA_STATS").is_some() {
        eprintln!(
            "STATS crashed={} states={:?}",
            crash.happened.load(Ordering::SeqCst),
            finals
                .iter()
                .map(|f| f.as_ref().map(|r| r.state))
                .collect::<Vec<_>>()
        );
    }
    prop_assert!(
        !observed.overlap.load(Ordering::SeqCst),
        "a step ran concurrently with itself"
    );
    let calls = observed.calls.lock().unwrap().clone();
    let started = observed.started.lock().unwrap().clone();
    for ((spec, id), fin) in specs.iter().zip(&ids).zip(&finals) {
        let Some(fin) = fin else {
            // Never inserted: nothing may have run.
            prop_assert!(calls.iter().all(|c| c.saga != *id));
            continue;
        };
        let mine: Vec<&CallLog> = calls.iter().filter(|c| c.saga == *id).collect();
        for c in &mine {
            prop_assert_eq!(
                &c.key,
                &IdempotencyKey::new(*id, &format!("s{}", c.step), c.kind)
            );
        }
        let action_started = |i: usize| started.contains_key(&(*id, i, false));
        let action_ok = |i: usize| {
            mine.iter()
                .any(|c| c.step == i && c.kind == StepKind::Action && c.ok)
        };
        let comps: Vec<usize> = mine
            .iter()
            .filter(|c| c.kind == StepKind::Compensation)
            .map(|c| c.step)
            .collect();
        // Compensations only for steps whose action ran (or may have), in reverse order.
        for s in &comps {
            prop_assert!(action_started(*s), "compensated step {} never ran", s);
        }
        prop_assert!(
            comps.windows(2).all(|w| w[0] >= w[1]),
            "compensations out of order: {:?}",
            comps
        );
        match fin.state {
            SagaState::Completed => {
                for i in 0..spec.steps.len() {
                    prop_assert!(action_ok(i), "completed but step {} never succeeded", i);
                }
                prop_assert!(comps.is_empty());
                let ctx: Ctx = serde_json::from_value(fin.context.clone()).unwrap();
                prop_assert_eq!(ctx.done, (0..spec.steps.len()).collect::<Vec<_>>());
            }
            SagaState::Compensated => {
                // Pivot semantics: once the pivot succeeded, no way back.
                if let Some(p) = spec.pivot {
                    prop_assert!(!action_ok(p), "compensated after the pivot succeeded");
                }
                // Every step that succeeded and has a compensation was undone.
                for (i, s) in spec.steps.iter().enumerate() {
                    if s.compensation.is_some() && action_ok(i) {
                        prop_assert!(
                            mine.iter()
                                .any(|c| c.step == i && c.kind == StepKind::Compensation && c.ok),
                            "step {} succeeded but was not compensated",
                            i
                        );
                    }
                }
            }
            SagaState::Failed => {
                // Parked only when a compensation was made to fail.
                let failing = mine
                    .iter()
                    .any(|c| c.kind == StepKind::Compensation && !c.ok);
                prop_assert!(
                    failing,
                    "parked without a failing compensation: {:?}",
                    fin.error
                );
                prop_assert!(
                    fin.error
                        .as_deref()
                        .is_some_and(|e| e.contains("compensation"))
                );
            }
            other => prop_assert!(false, "saga ended {}", other),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

fn counting_step(name: &str, log: &Arc<Mutex<Vec<String>>>) -> Step<Ctx> {
    let (l1, l2) = (Arc::clone(log), Arc::clone(log));
    let n1 = name.to_owned();
    let n2 = name.to_owned();
    Step::new(name, move |ctx: Ctx, _| {
        let (l, n) = (Arc::clone(&l1), n1.clone());
        async move {
            l.lock().unwrap().push(format!("do {n}"));
            Ok(ctx)
        }
    })
    .policy(fast_policy(2))
    .compensate(move |_: Ctx, _| {
        let (l, n) = (Arc::clone(&l2), n2.clone());
        async move {
            l.lock().unwrap().push(format!("undo {n}"));
            Ok(())
        }
    })
    .compensation_policy(fast_policy(2))
}

fn failing_step(name: &str, log: &Arc<Mutex<Vec<String>>>) -> Step<Ctx> {
    let l = Arc::clone(log);
    let n = name.to_owned();
    Step::new(name, move |_: Ctx, _| {
        let (l, n) = (Arc::clone(&l), n.clone());
        async move {
            l.lock().unwrap().push(format!("fail {n}"));
            Err::<Ctx, _>(StepError::permanent("declined"))
        }
    })
    .policy(fast_policy(2))
}

fn orchestrator<S: SagaStore>(store: S, defs: &[&SagaDefinition<Ctx>]) -> Orchestrator<S> {
    let mut b = Orchestrator::builder(store).lease(LEASE);
    for d in defs {
        b = b.register(*d);
    }
    b.build().unwrap()
}

/// A successful 4-step saga costs 5 store writes and leaves a readable history.
pub async fn four_steps_complete_in_five_writes<S: SagaStore>(store: S) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let def = SagaDefinition::builder("four", 1)
        .step(counting_step("a", &log))
        .step(counting_step("b", &log))
        .step(counting_step("c", &log))
        .step(Step::new("d", |c: Ctx, _| async move { Ok(c) }))
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let id = orch.start(&def, &Ctx::default()).await.unwrap();
    let done = orch.outcome(id).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    assert_eq!(orch.store_writes(), 5, "writes per successful 4-step saga");
    assert_eq!(*log.lock().unwrap(), ["do a", "do b", "do c"]);
    let events: Vec<HistoryEvent> = orch
        .history(id)
        .await
        .unwrap()
        .iter()
        .map(|h| h.event)
        .collect();
    assert_eq!(
        events,
        [
            HistoryEvent::Created,
            HistoryEvent::ActionSucceeded,
            HistoryEvent::ActionSucceeded,
            HistoryEvent::ActionSucceeded,
            HistoryEvent::ActionSucceeded,
            HistoryEvent::Completed
        ]
    );
    assert_eq!(done.owner, None);
}

/// A permanent failure undoes the completed steps in reverse order.
pub async fn permanent_failure_compensates_in_reverse<S: SagaStore>(store: S) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let def = SagaDefinition::builder("reverse", 1)
        .step(counting_step("a", &log))
        .step(counting_step("b", &log))
        .step(failing_step("c", &log))
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let id = orch.start(&def, &Ctx::default()).await.unwrap();
    let done = orch.outcome(id).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert!(done.error.as_deref().unwrap().contains("declined"));
    assert_eq!(
        *log.lock().unwrap(),
        ["do a", "do b", "fail c", "undo b", "undo a"]
    );
    let history = orch.history(id).await.unwrap();
    let failed = history
        .iter()
        .find(|h| h.event == HistoryEvent::ActionFailed)
        .unwrap();
    assert_eq!(failed.step.as_deref(), Some("c"));
    assert!(failed.error.as_deref().unwrap().contains("declined"));
    assert_eq!(history.last().unwrap().event, HistoryEvent::Compensated);
}

/// After the pivot succeeded a failing step retries forward; it never compensates.
pub async fn pivot_forbids_compensation_after_it_succeeded<S: SagaStore + Clone>(store: S) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let tries = Arc::new(AtomicU64::new(0));
    let t = Arc::clone(&tries);
    let def = SagaDefinition::builder("pivoted", 1)
        .step(counting_step("a", &log))
        .pivot(Step::new("email", |c: Ctx, _| async move { Ok(c) }))
        .step(
            Step::new("audit", move |c: Ctx, _| {
                let t = Arc::clone(&t);
                async move {
                    // Permanent errors after the pivot are retried, like retryable ones.
                    if t.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StepError::permanent("audit down"))
                    } else {
                        Ok(c)
                    }
                }
            })
            .policy(fast_policy(3)),
        )
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let id = orch.start(&def, &Ctx::default()).await.unwrap();
    assert_eq!(orch.outcome(id).await.unwrap().state, SagaState::Completed);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    assert_eq!(*log.lock().unwrap(), ["do a"]);

    // A step after the pivot that never succeeds parks the saga; nothing is undone.
    let log2 = Arc::new(Mutex::new(Vec::new()));
    let def2 = SagaDefinition::builder("pivoted-stuck", 1)
        .step(counting_step("a", &log2))
        .pivot(Step::new("email", |c: Ctx, _| async move { Ok(c) }))
        .step(failing_step("audit", &log2))
        .build()
        .unwrap();
    let orch2 = orchestrator(orch.store().clone(), &[&def2]);
    let id2 = orch2.start(&def2, &Ctx::default()).await.unwrap();
    let parked = orch2.outcome(id2).await.unwrap();
    assert_eq!(parked.state, SagaState::Failed);
    assert!(parked.error.as_deref().unwrap().contains("after the pivot"));
    assert_eq!(*log2.lock().unwrap(), ["do a", "fail audit", "fail audit"]);
}

/// Building a definition with a compensation after the pivot is rejected.
pub fn compensation_after_pivot_is_a_definition_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let err = SagaDefinition::builder("bad", 1)
        .pivot(Step::new("p", |c: Ctx, _| async move { Ok(c) }))
        .step(counting_step("after", &log))
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        palisade_saga::DefinitionError::CompensationAfterPivot { .. }
    ));
}

/// Past the saga deadline the running step is abandoned and everything is undone,
/// including that step (it may have taken effect).
pub async fn deadline_triggers_compensation<S: SagaStore>(store: S, deadline: Duration) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let def = SagaDefinition::builder("slow", 1)
        .step(counting_step("a", &log))
        .step(
            Step::new("slow", move |c: Ctx, _| {
                let l = Arc::clone(&l);
                async move {
                    l.lock().unwrap().push("do slow".into());
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(c)
                }
            })
            .policy(StepPolicy::default().no_timeout())
            .compensate(|_: Ctx, _| async move { Ok(()) }),
        )
        .step(counting_step("never", &log))
        .deadline(deadline)
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let id = orch.start(&def, &Ctx::default()).await.unwrap();
    let done = orch.outcome(id).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert_eq!(*log.lock().unwrap(), ["do a", "do slow", "undo a"]);
    let history = orch.history(id).await.unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.event == HistoryEvent::DeadlineExceeded)
    );
    assert!(history.iter().any(
        |h| h.event == HistoryEvent::CompensationSucceeded && h.step.as_deref() == Some("slow")
    ));
}

/// Starting twice with one id runs the saga once.
pub async fn starting_twice_with_one_id_runs_once<S: SagaStore>(store: S) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let def = SagaDefinition::builder("once", 1)
        .step(counting_step("a", &log))
        .build()
        .unwrap();
    let other = SagaDefinition::builder("other", 1)
        .step(counting_step("z", &log))
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def, &other]);
    let id = SagaId::new();
    assert_eq!(
        orch.start_with_id(&def, id, &Ctx::default()).await.unwrap(),
        id
    );
    assert_eq!(
        orch.start_with_id(&def, id, &Ctx { done: vec![9] })
            .await
            .unwrap(),
        id
    );
    let done = orch.outcome(id).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    assert_eq!(
        orch.start_with_id(&def, id, &Ctx::default()).await.unwrap(),
        id
    );
    orch.idle().await;
    assert_eq!(*log.lock().unwrap(), ["do a"]);
    assert!(matches!(
        orch.start_with_id(&other, id, &Ctx::default()).await,
        Err(Error::IdInUse { .. })
    ));
}

#[derive(Debug, Serialize, Deserialize)]
struct CtxV2 {
    required_new_field: String,
}

/// A context that no longer decodes parks that saga with a clear error; others run on.
/// An unknown saga type at resume is a clear error, not a panic.
pub async fn bad_context_parks_the_saga_and_unknown_type_is_an_error<S: SagaStore + Clone>(
    store: S,
) {
    let clock = Clock::manual(Utc::now());
    let log = Arc::new(Mutex::new(Vec::new()));
    // Version 1 started a saga, then the process died before it finished.
    let v1 = SagaDefinition::builder("evolving", 1)
        .step(counting_step("a", &log))
        .build()
        .unwrap();
    let now = clock.now();
    let stuck = |id: SagaId, saga_type: &str, version: u32| SagaRecord {
        id,
        saga_type: saga_type.into(),
        definition_version: version,
        state: SagaState::Running,
        cursor: 0,
        backward: false,
        context: serde_json::json!({ "done": [] }),
        error: None,
        version: 1,
        owner: Some("dead".into()),
        lease_until: Some(now),
        deadline: None,
        created_at: now,
        updated_at: now,
    };
    let bad = SagaId::new();
    let unknown = SagaId::new();
    store.create(&stuck(bad, "evolving", 1), &[]).await.unwrap();
    store
        .create(&stuck(unknown, "retired", 7), &[])
        .await
        .unwrap();
    // The redeploy changed the context type but kept version 1: a bug we must survive.
    let v1_changed = SagaDefinition::<CtxV2>::builder("evolving", 1)
        .step(Step::new("a", |c: CtxV2, _| async move { Ok(c) }))
        .build()
        .unwrap();
    let fine = SagaDefinition::builder("fine", 1)
        .step(counting_step("f", &log))
        .build()
        .unwrap();
    clock.advance(LEASE);
    let orch = Orchestrator::builder(store.clone())
        .clock(clock.clone())
        .register(&v1_changed)
        .register(&fine)
        .build()
        .unwrap();
    let _ = v1;
    assert_eq!(
        orch.recover().await.unwrap(),
        1,
        "only the known type is taken over"
    );
    let ok = orch.start(&fine, &Ctx::default()).await.unwrap();
    let parked = orch.outcome(bad).await.unwrap();
    assert_eq!(parked.state, SagaState::Failed);
    let reason = parked.error.unwrap();
    assert!(
        reason.contains("does not decode") && reason.contains("evolving"),
        "{reason}"
    );
    assert_eq!(orch.outcome(ok).await.unwrap().state, SagaState::Completed);
    match orch.resume(unknown).await {
        Err(Error::UnknownDefinition { name, version }) => {
            assert_eq!((name.as_str(), version), ("retired", 7))
        }
        other => panic!("expected UnknownDefinition, got {other:?}"),
    }
    // Still there, visible to an operator.
    let running = orch
        .list(&ListFilter::default().state(SagaState::Running))
        .await
        .unwrap();
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), [unknown]);
}

/// A compensation that keeps failing parks the saga; an operator retries it or marks it
/// resolved.
pub async fn failing_compensation_parks_then_operator_retries_and_resolves<S: SagaStore>(store: S) {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = Arc::clone(&healthy);
    let log = Arc::new(Mutex::new(Vec::new()));
    let def = SagaDefinition::builder("refund", 1)
        .step(
            Step::new("charge", |c: Ctx, _| async move { Ok(c) })
                .compensate(move |_: Ctx, _| {
                    let h = Arc::clone(&h);
                    async move {
                        if h.load(Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(StepError::retryable("refunds down"))
                        }
                    }
                })
                .compensation_policy(fast_policy(3)),
        )
        .step(failing_step("reserve", &log))
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let a = orch.start(&def, &Ctx::default()).await.unwrap();
    let b = orch.start(&def, &Ctx::default()).await.unwrap();
    for id in [a, b] {
        let parked = orch.outcome(id).await.unwrap();
        assert_eq!(parked.state, SagaState::Failed);
        assert!(parked.error.as_deref().unwrap().contains("refunds down"));
    }
    let listed = orch
        .list(&ListFilter::default().state(SagaState::Failed))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let retries = orch
        .history(a)
        .await
        .unwrap()
        .iter()
        .filter(|h| h.event == HistoryEvent::CompensationRetry)
        .count();
    assert_eq!(
        retries, 2,
        "two failed attempts were retried, the third parked"
    );

    assert!(matches!(
        orch.retry(SagaId::new()).await,
        Err(Error::Store(StoreError::NotFound(_)))
    ));
    healthy.store(true, Ordering::SeqCst);
    orch.retry(a).await.unwrap();
    assert_eq!(orch.outcome(a).await.unwrap().state, SagaState::Compensated);
    assert!(matches!(orch.retry(a).await, Err(Error::WrongState { .. })));
    let resolved = orch.resolve(b, "refunded by hand").await.unwrap();
    assert_eq!(resolved.state, SagaState::Resolved);
    let last = orch.history(b).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.event, last.error.as_deref()),
        (HistoryEvent::Resolved, Some("refunded by hand"))
    );
}

/// A writer holding an old version is rejected and writes nothing.
pub async fn stale_writer_is_rejected<S: SagaStore>(store: S) {
    let now = Utc::now();
    let mut record = SagaRecord {
        id: SagaId::new(),
        saga_type: "t".into(),
        definition_version: 1,
        state: SagaState::Running,
        cursor: 0,
        backward: false,
        context: serde_json::json!({}),
        error: None,
        version: 1,
        owner: Some("a".into()),
        lease_until: Some(now),
        deadline: None,
        created_at: now,
        updated_at: now,
    };
    assert!(store.create(&record, &[]).await.unwrap().is_none());
    // Another instance takes it over after the lease.
    let later = now + chrono::Duration::seconds(1);
    let claimed = store
        .claim(
            "b",
            later,
            later + chrono::Duration::seconds(30),
            &["t@1".into()],
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].version, claimed[0].owner.as_deref()),
        (2, Some("b"))
    );
    // Nothing left to claim while b holds it.
    assert!(
        store
            .claim("c", later, later, &["t@1".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The old owner's write is rejected.
    record.version = 2;
    record.cursor = 1;
    let err = store.update(&record, 1, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(store.renew_lease(record.id, "a", 1, later).await.is_err());
    let stored = store.get(record.id).await.unwrap().unwrap();
    assert_eq!((stored.cursor, stored.owner.as_deref()), (0, Some("b")));
    // The new owner's write goes through and round-trips every field.
    let mut mine = claimed[0].clone();
    mine.version = 3;
    mine.cursor = 1;
    mine.context = serde_json::json!({"k": [1, 2]});
    mine.error = Some("e".into());
    store
        .update(
            &mine,
            2,
            &[HistoryEntry {
                event: HistoryEvent::ActionSucceeded,
                step: Some("s".into()),
                attempt: 1,
                error: None,
                started_at: later,
                at: later,
            }],
        )
        .await
        .unwrap();
    let stored = store.get(record.id).await.unwrap().unwrap();
    assert_eq!(stored.context, mine.context);
    assert_eq!(
        (stored.version, stored.cursor, stored.error.as_deref()),
        (3, 1, Some("e"))
    );
    assert_eq!(store.history(record.id).await.unwrap().len(), 1);
}

/// Like [`four_steps_complete_in_five_writes`], on a store that fails writes: the saga
/// completes, each step ran once, and the history holds each transition once.
pub async fn four_steps_complete_despite_write_failures<S: SagaStore>(store: S) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let def = SagaDefinition::builder("four-flaky", 1)
        .step(counting_step("a", &log))
        .step(counting_step("b", &log))
        .step(counting_step("c", &log))
        .build()
        .unwrap();
    let orch = orchestrator(store, &[&def]);
    let id = orch.start(&def, &Ctx::default()).await.unwrap();
    let done = orch.outcome(id).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    assert_eq!(*log.lock().unwrap(), ["do a", "do b", "do c"]);
    let succeeded = orch
        .history(id)
        .await
        .unwrap()
        .iter()
        .filter(|h| h.event == HistoryEvent::ActionSucceeded)
        .count();
    assert_eq!(succeeded, 3);
    assert!(orch.store_writes() > 4, "the failed writes were retried");
}
