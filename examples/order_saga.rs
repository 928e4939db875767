//! The front door: an order saga across four in-process services, persisted in SQLite
//! (or PostgreSQL), surviving a crash.
//!
//! ```text
//! cargo run --example order_saga                                 # run the scenarios
//! cargo run --example order_saga -- --crash-after charge_payment # die mid-saga...
//! cargo run --example order_saga                                 # ...and finish it
//! cargo run --example order_saga -- --database-url postgres://postgres@127.0.0.1/test
//! cargo run --example order_saga -- --help
//! ```
//!
//! The saga: `create_order` → `charge_payment` → `reserve_inventory` → `ship` (the
//! pivot: a shipping notification cannot be taken back). Each service is a tower service
//! wrapped in palisade-resilience layers: a timeout per call, a retry with backoff, and a
//! circuit breaker in front of the flaky inventory service.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::resilience::BoxError;
use palisade::resilience::backoff::Backoff;
use palisade::resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Outcome};
use palisade::resilience::retry::{RetryDecision, RetryEvent, RetryLayer};
use palisade::resilience::timeout::TimeoutLayer;
use palisade::saga::{
    HistoryEvent, ListFilter, Orchestrator, SagaDefinition, SagaId, SagaRecord, SagaState,
    SagaStore, SqliteStore, Step, StepError, StepInfo, StepPolicy,
};
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt, service_fn};

const USAGE: &str = "\
order_saga — an order saga across four services that survives crashes

USAGE:
    cargo run --example order_saga [-- OPTIONS]

OPTIONS:
    --crash-after <step>     exit the process (code 3) right after <step> of the first order
                             is recorded: create_order, charge_payment or reserve_inventory.
                             The next plain run resumes that saga and finishes it.
    --database-url <url>     sqlite://path/to/file.db (default: a file under the target
                             directory, path printed) or postgres://user@host/db
    -h, --help               this text

Each run takes over the sagas a crashed run left unfinished (after their 2 s lease),
then runs five orders: the happy path, a declined payment, an item out of stock, a
flaky inventory service (retries, then the breaker opens and closes again) and a
shipping service (the pivot) that hangs once. It ends with a summary line
and exit code 0.";

const STEPS: [&str; 4] = [
    "create_order",
    "charge_payment",
    "reserve_inventory",
    "ship",
];

// ---------------------------------------------------------------------------
// The saga context.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    number: u32,
    scenario: String,
    customer: String,
    item: String,
    quantity: u32,
    amount_cents: u64,
    payment_id: Option<String>,
    reservation_id: Option<String>,
    tracking: Option<String>,
}

// ---------------------------------------------------------------------------
// Four sample services. Each remembers the idempotency keys it has answered.
// ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("card declined")]
    Declined,
    #[error("out of stock")]
    OutOfStock,
    #[error("503 service unavailable")]
    Unavailable,
}

#[derive(Debug, Clone)]
struct Call {
    key: String,
    order: u32,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    CreateOrder,
    CancelOrder,
    Charge { customer: String, amount_cents: u64 },
    Refund { payment_id: String },
    Reserve { item: String, quantity: u32 },
    Release { reservation_id: String },
    Ship,
}

type Svc = BoxCloneSyncService<Call, String, BoxError>;

/// Answers each idempotency key once; a repeated key gets the first answer.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<String, String>>>);

impl Ledger {
    fn seen(&self, key: &str) -> Option<String> {
        self.0.lock().ok()?.get(key).cloned()
    }
    fn record(&self, key: &str, answer: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key.to_owned(), answer.to_owned());
        }
    }
}

fn line(service: &str, order: u32, text: &str) {
    println!("    #{order} {service:<9} {text}");
}

/// The sample logic of all four services, by operation.
fn sample_service(
    name: &'static str,
) -> impl Service<Call, Response = String, Error = ServiceError, Future: Send> + Clone + Send {
    let ledger = Ledger::default();
    let flaky_failures = Arc::new(AtomicU32::new(0));
    let ship_timeouts = Arc::new(AtomicU32::new(0));
    let counter = Arc::new(AtomicU32::new(0));
    service_fn(move |call: Call| {
        let (ledger, flaky, slow, counter) = (
            ledger.clone(),
            flaky_failures.clone(),
            ship_timeouts.clone(),
            counter.clone(),
        );
        async move {
            if let Some(answer) = ledger.seen(&call.key) {
                line(
                    name,
                    call.order,
                    &format!(
                        "{:?} again with key …{} → {answer} (deduplicated)",
                        call.op,
                        short(&call.key)
                    ),
                );
                return Ok(answer);
            }
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = match &call.op {
                Op::CreateOrder => "created".to_owned(),
                Op::CancelOrder => "cancelled".to_owned(),
                Op::Charge {
                    customer,
                    amount_cents,
                } => {
                    if customer == "mallory" {
                        line(
                            name,
                            call.order,
                            &format!(
                                "charge {} for {customer} → card declined",
                                money(*amount_cents)
                            ),
                        );
                        return Err(ServiceError::Declined);
                    }
                    format!("pay-{n}")
                }
                Op::Refund { payment_id } => format!("refunded {payment_id}"),
                Op::Reserve { item, quantity } => {
                    if item == "unobtainium" {
                        line(
                            name,
                            call.order,
                            &format!("reserve {quantity} × {item} → out of stock"),
                        );
                        return Err(ServiceError::OutOfStock);
                    }
                    // The flaky widget warehouse answers 503 twice in a row.
                    if item == "flaky-widget" && flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                        line(
                            name,
                            call.order,
                            &format!("reserve {quantity} × {item} → 503"),
                        );
                        return Err(ServiceError::Unavailable);
                    }
                    format!("res-{n}")
                }
                Op::Release { reservation_id } => format!("released {reservation_id}"),
                Op::Ship => {
                    // The carrier hangs once for the slow-carrier order: the timeout fires.
                    if call.order == 1005 && slow.fetch_add(1, Ordering::SeqCst) == 0 {
                        line(name, call.order, "notify carrier → (hangs)");
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    format!("track-{n}")
                }
            };
            line(
                name,
                call.order,
                &format!("{:?} key …{} → {answer}", call.op, short(&call.key)),
            );
            ledger.record(&call.key, &answer);
            Ok(answer)
        }
    })
}

fn short(key: &str) -> &str {
    // "<uuid>/<step>/<kind>": show the tail of the uuid and the rest.
    key.get(28..).unwrap_or(key)
}

fn money(cents: u64) -> String {
    format!("€{}.{:02}", cents / 100, cents % 100)
}

/// Retry transient failures (503, timeouts), never a business refusal or an open breaker.
fn classify_retry(_: &Call, outcome: &Result<String, BoxError>) -> RetryDecision {
    match outcome {
        Err(e) if e.is::<CircuitOpen>() => RetryDecision::DoNotRetry,
        Err(e) => match e.downcast_ref::<ServiceError>() {
            Some(ServiceError::Declined | ServiceError::OutOfStock) => RetryDecision::DoNotRetry,
            _ => RetryDecision::Retry,
        },
        Ok(_) => RetryDecision::DoNotRetry,
    }
}

type RetryClassifier = fn(&Call, &Result<String, BoxError>) -> RetryDecision;

fn retry_layer(name: &'static str) -> Result<RetryLayer<RetryClassifier>, BoxError> {
    Ok(RetryLayer::builder()
        .name(name)
        .classify(classify_retry as RetryClassifier)
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .on_event(|event| {
            if let RetryEvent::Retrying {
                name,
                attempt,
                delay,
            } = event
            {
                println!(
                    "    ↻ {name}: call {attempt} failed, retrying in {delay:?} (tower retry layer)"
                );
            }
        })
        .build()?)
}

struct Services {
    order: Svc,
    payment: Svc,
    inventory: Svc,
    shipping: Svc,
}

fn services() -> Result<Services, BoxError> {
    let timeout = TimeoutLayer::new(Duration::from_millis(500));
    let breaker = CircuitBreakerLayer::builder("inventory")
        .count_window(4)
        .minimum_calls(3)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(300))
        .half_open_probes(1)
        // A refusal (declined, out of stock) says nothing about the service's health.
        .classify(|r: &Result<String, BoxError>| match r {
            Ok(_) => Outcome::Success,
            Err(e)
                if matches!(
                    e.downcast_ref::<ServiceError>(),
                    Some(ServiceError::Declined | ServiceError::OutOfStock)
                ) =>
            {
                Outcome::Ignored
            }
            Err(_) => Outcome::Failure,
        })
        .build()?;
    breaker.handle().on_transition(|t| {
        println!("    ⚡ breaker `{}`: {} → {}", t.name, t.from, t.to);
    });
    let plain = |name: &'static str| -> Result<Svc, BoxError> {
        Ok(BoxCloneSyncService::new(
            retry_layer(name)?.layer(timeout.layer(sample_service(name))),
        ))
    };
    Ok(Services {
        order: plain("order")?,
        payment: plain("payment")?,
        inventory: BoxCloneSyncService::new(
            retry_layer("inventory")?
                .layer(breaker.layer(timeout.layer(sample_service("inventory")))),
        ),
        shipping: plain("shipping")?,
    })
}

/// Calls a service and sorts its error: business refusals are permanent, the rest
/// (timeouts, 503 after retries, an open breaker) retryable.
async fn call(svc: &Svc, step: &StepInfo, order: u32, op: Op) -> Result<String, StepError> {
    let request = Call {
        key: step.key.to_string(),
        order,
        op,
    };
    match svc.clone().oneshot(request).await {
        Ok(answer) => Ok(answer),
        Err(error) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
            while let Some(e) = source {
                if let Some(ServiceError::Declined | ServiceError::OutOfStock) =
                    e.downcast_ref::<ServiceError>()
                {
                    return Err(StepError::permanent(e.to_string()));
                }
                source = e.source();
            }
            println!(
                "    ✗ step `{}` attempt {} failed: {error}",
                step.step, step.attempt
            );
            Err(StepError::Retryable(error))
        }
    }
}

// ---------------------------------------------------------------------------
// The saga definition.
// ---------------------------------------------------------------------------

fn crash_if(crash_after: Option<&str>, previous: &str, order: u32) {
    if crash_after == Some(previous) && order == 1001 {
        println!(
            "\n💥 simulated crash: `{previous}` of order #{order} is recorded; exiting mid-saga (exit code 3)"
        );
        println!("   run again without --crash-after to resume it");
        std::process::exit(3);
    }
}

fn definition(
    s: Arc<Services>,
    crash_after: Option<String>,
) -> Result<SagaDefinition<Order>, BoxError> {
    let policy = StepPolicy::default()
        .max_attempts(5)
        .backoff(
            Backoff::exponential(Duration::from_millis(200)).with_max_delay(Duration::from_secs(1)),
        )
        .timeout(Duration::from_secs(5));
    let crash = Arc::new(crash_after);
    let (s1, s2, s3, s4, s5, s6, s7) = (
        s.clone(),
        s.clone(),
        s.clone(),
        s.clone(),
        s.clone(),
        s.clone(),
        s.clone(),
    );
    let (c2, c3, c4) = (crash.clone(), crash.clone(), crash.clone());
    Ok(SagaDefinition::builder("order", 1)
        .step(
            Step::new("create_order", move |o: Order, step| {
                let s = s1.clone();
                async move {
                    call(&s.order, &step, o.number, Op::CreateOrder).await?;
                    Ok(o)
                }
            })
            .compensate(move |o: Order, step| {
                let s = s2.clone();
                async move {
                    call(&s.order, &step, o.number, Op::CancelOrder)
                        .await
                        .map(drop)
                }
            })
            .policy(policy),
        )
        .step(
            Step::new("charge_payment", move |mut o: Order, step| {
                let (s, crash) = (s3.clone(), c2.clone());
                async move {
                    crash_if(crash.as_deref(), "create_order", o.number);
                    let op = Op::Charge {
                        customer: o.customer.clone(),
                        amount_cents: o.amount_cents,
                    };
                    o.payment_id = Some(call(&s.payment, &step, o.number, op).await?);
                    Ok(o)
                }
            })
            .compensate(move |o: Order, step| {
                let s = s4.clone();
                async move {
                    // Nothing to refund if the charge never went through.
                    let Some(payment_id) = o.payment_id else {
                        return Ok(());
                    };
                    call(&s.payment, &step, o.number, Op::Refund { payment_id })
                        .await
                        .map(drop)
                }
            })
            .policy(policy),
        )
        .step(
            Step::new("reserve_inventory", move |mut o: Order, step| {
                let (s, crash) = (s5.clone(), c3.clone());
                async move {
                    crash_if(crash.as_deref(), "charge_payment", o.number);
                    let op = Op::Reserve {
                        item: o.item.clone(),
                        quantity: o.quantity,
                    };
                    o.reservation_id = Some(call(&s.inventory, &step, o.number, op).await?);
                    Ok(o)
                }
            })
            .compensate(move |o: Order, step| {
                let s = s6.clone();
                async move {
                    let Some(reservation_id) = o.reservation_id else {
                        return Ok(());
                    };
                    call(
                        &s.inventory,
                        &step,
                        o.number,
                        Op::Release { reservation_id },
                    )
                    .await
                    .map(drop)
                }
            })
            .policy(policy),
        )
        .pivot(
            Step::new("ship", move |mut o: Order, step| {
                let (s, crash) = (s7.clone(), c4.clone());
                async move {
                    crash_if(crash.as_deref(), "reserve_inventory", o.number);
                    o.tracking = Some(call(&s.shipping, &step, o.number, Op::Ship).await?);
                    Ok(o)
                }
            })
            .policy(policy),
        )
        .deadline(Duration::from_secs(60))
        .build()?)
}

// ---------------------------------------------------------------------------
// Running it.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    completed: u32,
    compensated: u32,
    failed: u32,
}

impl Tally {
    fn add(&mut self, record: &SagaRecord) {
        match record.state {
            SagaState::Completed => self.completed += 1,
            SagaState::Compensated => self.compensated += 1,
            _ => self.failed += 1,
        }
    }
}

async fn report<S: SagaStore>(
    orchestrator: &Orchestrator<S>,
    record: &SagaRecord,
) -> Result<(), BoxError> {
    let history = orchestrator.history(record.id).await?;
    let start = history.first().map(|h| h.at).unwrap_or(record.created_at);
    println!("    timeline (from the store):");
    for h in &history {
        let ms = (h.at - start).num_milliseconds();
        let step = h
            .step
            .as_deref()
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        let attempt = if h.attempt > 0 {
            format!(" attempt {}", h.attempt)
        } else {
            String::new()
        };
        let error = h
            .error
            .as_deref()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default();
        println!("      +{ms:>5} ms  {}{step}{attempt}{error}", h.event);
    }
    let order: Order = serde_json::from_value(record.context.clone())?;
    let mark = match record.state {
        SagaState::Completed => "✔",
        SagaState::Compensated => "↩",
        _ => "✖",
    };
    let detail = match record.state {
        SagaState::Completed => format!(
            "payment {}, tracking {}",
            order.payment_id.unwrap_or_default(),
            order.tracking.unwrap_or_default()
        ),
        _ => record.error.clone().unwrap_or_default(),
    };
    println!(
        "  {mark} order #{} {}: {detail}\n",
        order.number, record.state
    );
    let _ = history.iter().any(|h| h.event == HistoryEvent::Resumed);
    Ok(())
}

async fn run<S: SagaStore + Clone>(store: S, crash_after: Option<String>) -> Result<(), BoxError> {
    let services = Arc::new(services()?);
    let def = definition(services, crash_after)?;
    let orchestrator = Orchestrator::builder(store.clone())
        .register(&def)
        .lease(Duration::from_secs(2))
        .concurrency(16)
        .build()?;
    let mut tally = Tally::default();

    // 1. Sagas a crashed run left behind.
    let active = ListFilter::default()
        .state(SagaState::Running)
        .state(SagaState::Compensating)
        .limit(1000);
    let unfinished = orchestrator.list(&active).await?;
    if !unfinished.is_empty() {
        let until = unfinished.iter().filter_map(|r| r.lease_until).max();
        println!(
            "▶ {} unfinished saga(s) from an earlier run; their owner's lease runs until {}",
            unfinished.len(),
            until.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
        if let Some(wait) =
            until.and_then(|t| (t - palisade::saga::Clock::system().now()).to_std().ok())
        {
            println!(
                "  waiting {wait:.1?} for the lease to expire, then resuming from the last recorded step"
            );
            tokio::time::sleep(wait + Duration::from_millis(50)).await;
        }
        let resumed = orchestrator.recover().await?;
        println!("  resumed {resumed} saga(s)\n");
        for r in &unfinished {
            let done = orchestrator.outcome(r.id).await?;
            report(&orchestrator, &done).await?;
            tally.add(&done);
        }
    }

    // 2. This run's orders, one after the other so the output reads as a story.
    let orders = [
        (1001, "happy path", "alice", "widget", 2, 2_500),
        (
            1002,
            "payment declined → order cancelled",
            "mallory",
            "widget",
            1,
            1_250,
        ),
        (
            1003,
            "out of stock → payment refunded, order cancelled",
            "bob",
            "unobtainium",
            1,
            99_900,
        ),
        (
            1004,
            "flaky inventory → retries, breaker opens and closes",
            "carol",
            "flaky-widget",
            3,
            3_600,
        ),
        (
            1005,
            "the carrier hangs at the pivot → timeout and retry, never undone",
            "dave",
            "widget",
            1,
            1_250,
        ),
    ];
    for (number, scenario, customer, item, quantity, amount_cents) in orders {
        println!("▶ order #{number}: {scenario}");
        let order = Order {
            number,
            scenario: scenario.into(),
            customer: customer.into(),
            item: item.into(),
            quantity,
            amount_cents,
            payment_id: None,
            reservation_id: None,
            tracking: None,
        };
        let id = SagaId::new();
        println!("    saga {id}");
        orchestrator.start_with_id(&def, id, &order).await?;
        let done = orchestrator.outcome(id).await?;
        report(&orchestrator, &done).await?;
        tally.add(&done);
    }
    println!(
        "summary: completed {}, compensated {}, failed {} ({} store writes)",
        tally.completed,
        tally.compensated,
        tally.failed,
        orchestrator.store_writes()
    );
    Ok(())
}

fn default_sqlite_url() -> Result<String, BoxError> {
    // target/<profile>/examples/order_saga → target/<profile>/order_saga.db
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    Ok(format!("sqlite://{}", dir.join("order_saga.db").display()))
}

async fn main_inner() -> Result<ExitCode, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut crash_after = None;
    let mut url = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            "--crash-after" => {
                let step = args.next().ok_or("--crash-after needs a step name")?;
                if !STEPS[..3].contains(&step.as_str()) {
                    return Err(format!("--crash-after: `{step}` is not one of create_order, charge_payment, reserve_inventory").into());
                }
                crash_after = Some(step);
            }
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a URL")?),
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let url = match url {
        Some(url) => url,
        None => default_sqlite_url()?,
    };
    if url.starts_with("postgres") {
        println!("store: PostgreSQL at {url}\n");
        let store = palisade::saga::PostgresStore::connect(&url).await?;
        store.migrate().await?;
        run(store, crash_after).await?;
    } else {
        println!(
            "store: SQLite file {}\n",
            url.trim_start_matches("sqlite://")
        );
        let store = SqliteStore::connect(&url).await?;
        store.migrate().await?;
        run(store, crash_after).await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
