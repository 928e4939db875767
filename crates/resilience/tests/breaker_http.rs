//! Real HTTP on 127.0.0.1: an axum server switched between healthy, failing (500) and
//! hanging, called through a hyper-util client behind the breaker (and a timeout for the
//! hang). The breaker opens on 5xx responses, rejects at once while open without reaching
//! the server, reopens when the probe hangs, and closes once the server recovers.
//!
//! This test runs on the real clock: tokio's paused clock auto-advances whenever the
//! runtime parks, which it does while bytes are in flight on a socket, so it would fire
//! the timeout at random. The breaker's timing logic itself is covered under the paused
//! clock in `breaker_states.rs` and `breaker_model.rs`; here the waits only have to be
//! long enough for the server to answer on loopback even on a busy machine (1 s timeout,
//! 1.5 s open wait).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_resilience::BoxError;
use palisade_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, Outcome,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;

#[tokio::test]
async fn breaker_opens_on_5xx_rejects_while_open_and_closes_after_recovery() {
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let hits = Arc::new(AtomicUsize::new(0));
    let (m, h) = (mode.clone(), hits.clone());
    let app = Router::new().route(
        "/",
        get(move || {
            let (mode, hits) = (m.clone(), h.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                match mode.load(Ordering::SeqCst) {
                    FAILING => (StatusCode::INTERNAL_SERVER_ERROR, "broken"),
                    HANGING => std::future::pending().await,
                    _ => (StatusCode::OK, "fine"),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let breaker = CircuitBreakerLayer::builder("http-upstream")
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(1_500))
        .half_open_probes(1)
        .classify(
            |r: &Result<http::Response<hyper::body::Incoming>, BoxError>| match r {
                Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
        )
        .build()
        .unwrap();
    let handle = breaker.handle().clone();
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(1))
        .service(service_fn(move |req| client.request(req)));
    let get = |svc: &_| {
        let svc: tower::util::BoxCloneService<_, _, BoxError> =
            tower::util::BoxCloneService::clone(svc);
        let req = http::Request::get(url.as_str())
            .body(Empty::<Bytes>::new())
            .unwrap();
        svc.oneshot(req)
    };
    let svc = tower::util::BoxCloneService::new(svc);

    for _ in 0..3 {
        assert_eq!(get(&svc).await.unwrap().status(), StatusCode::OK);
    }
    mode.store(FAILING, Ordering::SeqCst);
    let mut failures = 0;
    while handle.state() == CircuitState::Closed {
        let resp = get(&svc).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        failures += 1;
        assert!(failures <= 5, "should have opened by now");
    }
    assert_eq!(failures, 3, "3 failures of 6 calls reach 50 %");

    // Open: rejected at once, the server sees nothing.
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        let err = get(&svc).await.unwrap_err();
        let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
        assert!(open.remaining_wait().unwrap() <= Duration::from_millis(1_500));
    }
    assert_eq!(hits.load(Ordering::SeqCst), before);
    assert_eq!(handle.metrics().rejected, 20);

    // The server now hangs: the probe times out, which counts as a failure: reopen.
    mode.store(HANGING, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let err = get(&svc).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "got {err}");
    assert_eq!(handle.state(), CircuitState::Open);

    // Recovery: the next probe succeeds and closes the breaker.
    mode.store(HEALTHY, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(get(&svc).await.unwrap().status(), StatusCode::OK);
    assert_eq!(handle.state(), CircuitState::Closed);
    for _ in 0..5 {
        assert_eq!(get(&svc).await.unwrap().status(), StatusCode::OK);
    }
    server.abort();
}
