//! Real HTTP on 127.0.0.1: an axum server whose handler can be switched to fail, hang or
//! recover, called through a hyper-util client wrapped in the pipeline; and the layers
//! used server-side under axum's `HandleErrorLayer`, each error mapped to its status.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_resilience::BoxError;
use palisade_resilience::backoff::Backoff;
use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
use palisade_resilience::circuit_breaker::CircuitOpen;
use palisade_resilience::pipeline::{PipelineError, PipelineLayer, RetryConfig};
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimited, RateLimiter};
use palisade_resilience::retry::RetryDecision;
use palisade_resilience::timeout::{Elapsed, TimeoutLayer};
use tokio::sync::Notify;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

const FAIL: u8 = 1;
const HANG: u8 = 2;

/// The switchable dependency.
#[derive(Clone, Default)]
struct Backend {
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU32>,
    /// Fail this many requests with 503 before answering normally.
    fail_first: Arc<AtomicU32>,
}

async fn backend_handler(backend: Backend) -> Response {
    backend.requests.fetch_add(1, Ordering::SeqCst);
    if backend
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match backend.mode.load(Ordering::SeqCst) {
        FAIL => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        HANG => std::future::pending().await,
        _ => "ok".into_response(),
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start_backend() -> (Backend, SocketAddr) {
    let backend = Backend::default();
    let state = backend.clone();
    let router = Router::new().route("/", get(move || backend_handler(state.clone())));
    (backend, serve(router).await)
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The client as a tower service from URI to status code.
fn http_service(
    client: Client<HttpConnector, Empty<Bytes>>,
) -> impl tower::Service<
    Uri,
    Response = StatusCode,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |uri: Uri| {
        let client = client.clone();
        async move { Ok(client.get(uri).await?.status()) }
    })
}

fn retry_5xx(_: &Uri, outcome: &Result<StatusCode, BoxError>) -> RetryDecision {
    match outcome {
        Ok(s) if s.is_server_error() => RetryDecision::Retry,
        Ok(_) => RetryDecision::DoNotRetry,
        Err(e) if e.is::<CircuitOpen>() => RetryDecision::DoNotRetry,
        Err(_) => RetryDecision::Retry,
    }
}

#[tokio::test]
async fn the_attempt_timeout_fires_on_a_hanging_handler() {
    let (backend, addr) = start_backend().await;
    backend.mode.store(HANG, Ordering::SeqCst);
    let pipeline = PipelineLayer::builder("hang")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let svc = pipeline.layer(http_service(client()));
    let started = std::time::Instant::now();
    let err = svc
        .oneshot(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::Timeout(e) if e.duration() == Duration::from_millis(200)),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_503_response_is_retried_and_the_recovered_server_answers() {
    let (backend, addr) = start_backend().await;
    backend.fail_first.store(2, Ordering::SeqCst);
    let pipeline = PipelineLayer::builder("flaky")
        .timeout(Duration::from_secs(2))
        .retry(RetryConfig {
            max_attempts: 4,
            backoff: Backoff::constant(Duration::from_millis(5)),
            ..RetryConfig::default()
        })
        .classify(retry_5xx)
        .build()
        .unwrap();
    let svc = pipeline.layer(http_service(client()));
    let status = svc
        .oneshot(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_server_that_keeps_failing_yields_its_last_5xx_after_max_attempts() {
    let (backend, addr) = start_backend().await;
    backend.mode.store(FAIL, Ordering::SeqCst);
    let pipeline = PipelineLayer::builder("down")
        .retry(RetryConfig {
            max_attempts: 3,
            backoff: Backoff::constant(Duration::from_millis(5)),
            ..RetryConfig::default()
        })
        .classify(retry_5xx)
        .build()
        .unwrap();
    let svc = pipeline.layer(http_service(client()));
    let status = svc
        .oneshot(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
}

/// Maps each layer's error, by type, to the status a client should see.
async fn status_for(err: BoxError) -> Response {
    if let Some(e) = err.downcast_ref::<RateLimited>() {
        let mut res = StatusCode::TOO_MANY_REQUESTS.into_response();
        let secs = e.retry_after().as_secs_f64().ceil().max(1.0) as u64;
        res.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
        return res;
    }
    if err.is::<Elapsed>() {
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    if err.is::<BulkheadFull>() || err.is::<CircuitOpen>() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

#[tokio::test]
async fn under_handle_error_layer_each_error_maps_to_its_status() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let limiter = RateLimiter::builder("api")
        .rate(1, Duration::from_secs(3600))
        .build()
        .unwrap();
    let pool = Bulkhead::builder("slow").max_concurrent(1).build().unwrap();
    let router = Router::new()
        .route(
            "/hang",
            get(std::future::pending::<&'static str>).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(status_for))
                    .layer(TimeoutLayer::new(Duration::from_millis(100))),
            ),
        )
        .route(
            "/limited",
            get(|| async { "ok" }).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(status_for))
                    .layer(RateLimitLayer::new(limiter)),
            ),
        )
        .route(
            "/slow",
            get(move || {
                let (entered, release) = (e.clone(), r.clone());
                async move {
                    entered.notify_one();
                    release.notified().await;
                    "done"
                }
            })
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(status_for))
                    .layer(BulkheadLayer::new(pool.clone())),
            ),
        );
    let addr = serve(router).await;
    let client = client();
    let get = |path: &str| {
        let client = client.clone();
        let uri: Uri = format!("http://{addr}{path}").parse().unwrap();
        async move { client.get(uri).await.unwrap() }
    };

    assert_eq!(get("/hang").await.status(), StatusCode::GATEWAY_TIMEOUT);

    assert_eq!(get("/limited").await.status(), StatusCode::OK);
    let limited = get("/limited").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_some());

    let first = tokio::spawn(get("/slow"));
    entered.notified().await;
    assert_eq!(get("/slow").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    release.notify_one();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    assert_eq!(pool.in_flight(), 0);
}
