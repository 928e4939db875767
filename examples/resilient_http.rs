//! A task service that survives its dependencies, over real HTTP on 127.0.0.1.
//!
//! Three axum servers run in this process:
//!
//! - **auth** — a *critical* dependency: without it no task can be served, so when it is
//!   slow, failing or down the task service fails fast with `503` and says why;
//! - **recommendations** — a *non-critical* dependency: when it fails the task is still
//!   served, with the last good recommendations (or none), marked `degraded`;
//! - **tasks** — the service under test, calling each dependency through its own
//!   palisade-resilience pipeline: its own bulkhead (so a slow recommender cannot take
//!   the permits auth needs), an attempt timeout, retries, and a circuit breaker.
//!
//! With no flags it plays a scripted story (healthy → recommender fails → recommender
//! recovers → auth hangs) and prints every request, every breaker transition and a
//! summary. With flags it holds each dependency in one mode:
//!
//! ```text
//! cargo run --example resilient_http
//! cargo run --example resilient_http -- --recs fail --requests 20
//! cargo run --example resilient_http -- --auth down
//! ```

use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::resilience::BoxError;
use palisade::resilience::backoff::Backoff;
use palisade::resilience::bulkhead::Bulkhead;
use palisade::resilience::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use palisade::resilience::fallback::FallbackLayer;
use palisade::resilience::pipeline::{PipelineError, PipelineLayer, RetryConfig};
use serde_json::{Value, json};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

const HELP: &str = "\
resilient_http: a task service calling a critical (auth) and a non-critical
(recommendations) dependency over HTTP through palisade-resilience pipelines.

USAGE:
    cargo run --example resilient_http [-- OPTIONS]

OPTIONS:
    --auth <MODE>      hold auth in MODE: ok, slow, fail or down
    --recs <MODE>      hold recommendations in MODE: ok, slow, fail or down
    --requests <N>     requests to send when a mode is given [default: 12]
    -h, --help         print this help

With no --auth/--recs, a scripted story runs: healthy, the recommender fails
(degraded answers, its breaker opens), it recovers (the breaker probes and
closes), then auth hangs (503 after the timeout, then fast 503 while open).";

/// How a sample dependency behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Slow,
    Fail,
    Down,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(Self::Ok),
            "slow" => Ok(Self::Slow),
            "fail" => Ok(Self::Fail),
            "down" => Ok(Self::Down),
            other => Err(format!(
                "unknown mode {other:?}: expected ok, slow, fail or down"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Slow => "slow",
            Self::Fail => "fail",
            Self::Down => "down",
        })
    }
}

/// A sample dependency whose behaviour can be switched while it runs.
#[derive(Clone)]
struct Dependency {
    mode: Arc<AtomicU8>,
    body: Value,
}

impl Dependency {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Ok,
            1 => Mode::Slow,
            2 => Mode::Fail,
            _ => Mode::Down,
        }
    }
}

async fn dependency_handler(State(dep): State<Dependency>) -> Response {
    match dep.mode() {
        Mode::Ok => Json(dep.body.clone()).into_response(),
        // Slow enough that every attempt times out.
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(dep.body.clone()).into_response()
        }
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response(),
        // A "down" server is one that never started (connection refused); if it is
        // switched down while running, answer as a proxy in front of it would.
        Mode::Down => (StatusCode::BAD_GATEWAY, "down").into_response(),
    }
}

/// Starts a dependency on a free port; in `Down` mode it reserves a port and listens
/// on nothing, so calls see "connection refused".
async fn start_dependency(body: Value, mode: Mode) -> Result<(Dependency, SocketAddr), BoxError> {
    let dep = Dependency {
        mode: Arc::new(AtomicU8::new(mode as u8)),
        body,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    if mode == Mode::Down {
        drop(listener);
        return Ok((dep, addr));
    }
    let app = Router::new()
        .route("/", get(dependency_handler))
        .with_state(dep.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((dep, addr))
}

/// A dependency's reply as the task service sees it.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0} answered {1}")]
    Status(&'static str, StatusCode),
    #[error("{0} is unreachable")]
    Transport(&'static str, #[source] BoxError),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A tower service that GETs `http://addr/` and decodes JSON; 5xx is an error.
fn http_call(
    client: HttpClient,
    name: &'static str,
    addr: SocketAddr,
) -> impl tower::Service<(), Response = Value, Error = CallError, Future: Send> + Clone + Send {
    service_fn(move |()| {
        let client = client.clone();
        async move {
            let uri = format!("http://{addr}/")
                .parse::<http::Uri>()
                .map_err(|e| CallError::Transport(name, e.into()))?;
            let response = client
                .get(uri)
                .await
                .map_err(|e| CallError::Transport(name, e.into()))?;
            let status = response.status();
            if status.is_server_error() {
                return Err(CallError::Status(name, status));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Transport(name, e.into()))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| CallError::Transport(name, e.into()))
        }
    })
}

/// The recommendations as served: live, or the fallback's last good copy.
#[derive(Clone, Debug)]
struct Recommendations {
    items: Value,
    degraded: bool,
}

#[derive(Clone)]
struct AppState {
    auth: BoxCloneSyncService<(), Value, PipelineError>,
    recommendations: BoxCloneSyncService<(), Recommendations, BoxError>,
}

async fn task_handler(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Response {
    // Critical: no user, no task. Fail fast and say which strategy stopped the call.
    let user = match state.auth.clone().oneshot(()).await {
        Ok(user) => user,
        Err(error) => {
            let reason = match &error {
                PipelineError::Timeout(_) => "auth timed out".to_owned(),
                PipelineError::CircuitOpen(_) => "auth circuit open".to_owned(),
                PipelineError::BulkheadFull(_) => "auth bulkhead full".to_owned(),
                PipelineError::RateLimited(_) => "auth rate limited".to_owned(),
                PipelineError::RetriesExhausted(e) => format!(
                    "auth failed after {} attempts: {}",
                    e.attempts(),
                    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
                ),
                _ => "auth failed".to_owned(),
            };
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": reason, "detail": error.to_string() })),
            )
                .into_response();
        }
    };
    // Non-critical: the fallback always answers, degraded when it had to.
    let recommendations = match state.recommendations.clone().oneshot(()).await {
        Ok(recommendations) => recommendations,
        Err(_) => Recommendations {
            items: json!([]),
            degraded: true,
        },
    };
    Json(json!({
        "task": id,
        "user": user["user"],
        "recommendations": recommendations.items,
        "degraded": recommendations.degraded,
    }))
    .into_response()
}

/// Builds the two pipelines and returns the app state plus the breakers' handles.
fn build_state(
    auth_addr: SocketAddr,
    recs_addr: SocketAddr,
) -> Result<(AppState, CircuitBreakerHandle, CircuitBreakerHandle), BoxError> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let retry = RetryConfig {
        max_attempts: 2,
        backoff: Backoff::constant(Duration::from_millis(20)),
        ..RetryConfig::default()
    };

    // Separate pools: a hanging recommender can hold at most its own 8 permits.
    let critical_pool = Bulkhead::builder("critical").max_concurrent(32).build()?;
    let non_critical_pool = Bulkhead::builder("non-critical")
        .max_concurrent(8)
        .build()?;

    let auth_breaker = CircuitBreakerLayer::builder("auth")
        .count_window(10)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(800))
        .half_open_probes(1)
        .build()?;
    let recs_breaker = CircuitBreakerLayer::builder("recommendations")
        .count_window(10)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(800))
        .half_open_probes(1)
        .build()?;
    let auth_handle = auth_breaker.handle().clone();
    let recs_handle = recs_breaker.handle().clone();

    let auth = PipelineLayer::builder("auth")
        .timeout(Duration::from_millis(300))
        .retry(retry.clone())
        .bulkhead(critical_pool)
        .circuit_breaker(auth_breaker)
        .build_with_breaker()?
        .layer(http_call(client.clone(), "auth", auth_addr));

    // The last good answer, kept by the layer below the fallback and served by it.
    let last_good: Arc<Mutex<Value>> = Arc::new(Mutex::new(json!([])));
    let remember = Arc::clone(&last_good);
    let recs_pipeline = PipelineLayer::builder("recommendations")
        .timeout(Duration::from_millis(150))
        .retry(retry)
        .bulkhead(non_critical_pool)
        .circuit_breaker(recs_breaker)
        .build_with_breaker()?;
    let recommendations = ServiceBuilder::new()
        .layer(FallbackLayer::from_fn(
            move |_failed: &Result<Recommendations, BoxError>| {
                let items = last_good.lock().map(|v| v.clone()).unwrap_or(json!([]));
                Ok::<_, BoxError>(Recommendations {
                    items,
                    degraded: true,
                })
            },
        ))
        .map_response(move |items: Value| {
            if let Ok(mut slot) = remember.lock() {
                *slot = items.clone();
            }
            Recommendations {
                items,
                degraded: false,
            }
        })
        .layer(recs_pipeline)
        .service(http_call(client, "recommendations", recs_addr));

    Ok((
        AppState {
            auth: BoxCloneSyncService::new(auth),
            recommendations: BoxCloneSyncService::new(recommendations),
        },
        auth_handle,
        recs_handle,
    ))
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    degraded: AtomicUsize,
    failed: AtomicUsize,
    transitions: AtomicUsize,
}

struct Options {
    auth: Option<Mode>,
    recs: Option<Mode>,
    requests: usize,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut options = Options {
        auth: None,
        recs: None,
        requests: 12,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--auth" => options.auth = Some(value("--auth")?.parse()?),
            "--recs" => options.recs = Some(value("--recs")?.parse()?),
            "--requests" => {
                options.requests = value("--requests")?
                    .parse()
                    .map_err(|e| format!("--requests: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Some(options))
}

async fn send(
    client: &HttpClient,
    tasks: SocketAddr,
    id: u64,
    started: Instant,
    tally: &Tally,
) -> Result<(), BoxError> {
    let call_started = Instant::now();
    let response = client
        .get(format!("http://{tasks}/tasks/{id}").parse()?)
        .await?;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    let took = call_started.elapsed().as_millis();
    let at = started.elapsed().as_millis();
    if status.is_success() {
        let degraded = body["degraded"].as_bool().unwrap_or(false);
        if degraded {
            tally.degraded.fetch_add(1, Ordering::SeqCst);
        } else {
            tally.ok.fetch_add(1, Ordering::SeqCst);
        }
        println!(
            "{at:>6} ms  GET /tasks/{id:<3} {status} in {took:>4} ms  recommendations={}{}",
            body["recommendations"],
            if degraded {
                "  (degraded: fallback)"
            } else {
                ""
            }
        );
    } else {
        tally.failed.fetch_add(1, Ordering::SeqCst);
        println!(
            "{at:>6} ms  GET /tasks/{id:<3} {status} in {took:>4} ms  {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    Ok(())
}

async fn run(options: Options) -> Result<Counts, BoxError> {
    let scripted = options.auth.is_none() && options.recs.is_none();
    let (auth, auth_addr) =
        start_dependency(json!({ "user": "alice" }), options.auth.unwrap_or(Mode::Ok)).await?;
    let (recs, recs_addr) = start_dependency(
        json!(["Designing Data-Intensive Applications", "Release It!"]),
        options.recs.unwrap_or(Mode::Ok),
    )
    .await?;
    let (state, auth_breaker, recs_breaker) = build_state(auth_addr, recs_addr)?;

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    for handle in [&auth_breaker, &recs_breaker] {
        let tally = Arc::clone(&tally);
        handle.on_transition(move |t| {
            tally.transitions.fetch_add(1, Ordering::SeqCst);
            println!(
                "{:>6} ms  breaker {:<16} {} -> {}",
                started.elapsed().as_millis(),
                t.name,
                t.from.as_str(),
                t.to.as_str()
            );
        });
    }

    let app = Router::new()
        .route("/tasks/{id}", get(task_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tasks = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "task service on http://{tasks}  (auth on {auth_addr}, recommendations on {recs_addr})"
    );

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut id = 0;
    let mut burst = |n: usize| {
        let start = id;
        id += n as u64;
        start..id
    };
    if scripted {
        let story: [(&str, Mode, Mode, usize, u64); 4] = [
            ("both dependencies healthy", Mode::Ok, Mode::Ok, 4, 0),
            (
                "recommendations start failing: degraded answers, then its breaker opens",
                Mode::Ok,
                Mode::Fail,
                8,
                0,
            ),
            (
                "recommendations recover: after the open wait one probe closes the breaker",
                Mode::Ok,
                Mode::Ok,
                4,
                900,
            ),
            // At most 16: the breaker's count window keeps the last 10 outcomes per
            // stripe in use, so when the healthy calls before were recorded on two
            // stripes, up to 16 of them can still count against the failures. The
            // phase ends three fast answers after the breaker opened.
            (
                "auth hangs: 503 after the timeout, then fast 503 while its breaker is open",
                Mode::Slow,
                Mode::Ok,
                16,
                0,
            ),
        ];
        for (title, auth_mode, recs_mode, requests, pause_ms) in story {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            println!("\n--- {title} (auth={auth_mode}, recommendations={recs_mode})");
            auth.set(auth_mode);
            recs.set(recs_mode);
            let mut answered_open = 0;
            for n in burst(requests) {
                let open = auth_breaker.state() == CircuitState::Open;
                send(&client, tasks, n, started, &tally).await?;
                if auth_mode == Mode::Slow && open {
                    answered_open += 1;
                    if answered_open == 3 {
                        break;
                    }
                }
            }
        }
    } else {
        println!(
            "\n--- auth={}, recommendations={}",
            options.auth.unwrap_or(Mode::Ok),
            options.recs.unwrap_or(Mode::Ok)
        );
        for n in burst(options.requests) {
            send(&client, tasks, n, started, &tally).await?;
        }
    }
    println!(
        "\nbreakers now: auth={}, recommendations={}",
        auth_breaker.state().as_str(),
        recs_breaker.state().as_str()
    );
    Ok(Counts {
        ok: tally.ok.load(Ordering::SeqCst),
        degraded: tally.degraded.load(Ordering::SeqCst),
        failed: tally.failed.load(Ordering::SeqCst),
        transitions: tally.transitions.load(Ordering::SeqCst),
    })
}

struct Counts {
    ok: usize,
    degraded: usize,
    failed: usize,
    transitions: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(counts) => {
            println!(
                "summary: ok={} degraded={} failed={} breaker_transitions={}",
                counts.ok, counts.degraded, counts.failed, counts.transitions,
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
