//! With the `metrics` feature, every rejection, retry, timeout, transition and fallback
//! reaches the `metrics` facade under its documented name and labels; a healthy call
//! records nothing.

#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use palisade_resilience::backoff::Backoff;
use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
use palisade_resilience::fallback::FallbackLayer;
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
use palisade_resilience::retry::RetryLayer;
use palisade_resilience::timeout::TimeoutLayer;
use palisade_testkit::metrics::CaptureRecorder;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn failing() -> impl Service<(), Response = (), Error = std::io::Error, Future: Send> + Clone {
    service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) })
}

fn ok() -> impl Service<(), Response = (), Error = std::io::Error, Future: Send> + Clone {
    service_fn(|_: ()| async { Ok::<(), std::io::Error>(()) })
}

#[tokio::test(start_paused = true)]
async fn a_healthy_call_through_every_layer_records_nothing() {
    let recorder = CaptureRecorder::default();
    let _guard = recorder.install();
    let breaker = CircuitBreakerLayer::builder("quiet").build().unwrap();
    let pool = Bulkhead::builder("quiet")
        .max_concurrent(4)
        .build()
        .unwrap();
    let limiter = RateLimiter::builder("quiet").build().unwrap();
    let retry = RetryLayer::builder().name("quiet").build().unwrap();
    let svc = retry.layer(breaker.layer(BulkheadLayer::new(pool).layer(
        RateLimitLayer::new(limiter).layer(TimeoutLayer::new(Duration::from_secs(1)).layer(ok())),
    )));
    svc.oneshot(()).await.unwrap();
    assert_eq!(recorder.names(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn retries_and_the_give_up_are_counted_with_their_delays() {
    let recorder = CaptureRecorder::default();
    let _guard = recorder.install();
    let retry = RetryLayer::builder()
        .name("orders")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(40)))
        .build()
        .unwrap();
    assert!(retry.layer(failing()).oneshot(()).await.is_err());

    assert_eq!(
        recorder.counter("palisade_retries_total", &[("name", "orders")]),
        2
    );
    assert_eq!(
        recorder.histogram("palisade_retry_delay_seconds", &[("name", "orders")]),
        vec![0.04, 0.04]
    );
    assert_eq!(
        recorder.counter(
            "palisade_retries_exhausted_total",
            &[("name", "orders"), ("reason", "max_attempts")]
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_transitions_and_rejections_are_counted_by_state() {
    let recorder = CaptureRecorder::default();
    let _guard = recorder.install();
    let layer = CircuitBreakerLayer::builder("payments")
        .count_window(2)
        .minimum_calls(2)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(5))
        .half_open_probes(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(failing());
    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
    }
    // Open now: three calls rejected without reaching the service.
    for _ in 0..3 {
        let err: BoxError = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.to_string().contains("payments"), "{err}");
    }
    assert_eq!(
        recorder.counter(
            "palisade_circuit_breaker_transitions_total",
            &[("name", "payments"), ("from", "closed"), ("to", "open")]
        ),
        1
    );
    assert_eq!(
        recorder.counter(
            "palisade_circuit_breaker_rejections_total",
            &[("name", "payments"), ("state", "open")]
        ),
        3
    );

    // After the wait a probe goes through (and fails): open → half-open → open.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    for (from, to) in [("open", "half-open"), ("half-open", "open")] {
        assert_eq!(
            recorder.counter(
                "palisade_circuit_breaker_transitions_total",
                &[("name", "payments"), ("from", from), ("to", to)]
            ),
            1,
            "{from} -> {to}"
        );
    }
    assert_eq!(
        recorder.counter_sum("palisade_circuit_breaker_transitions_total"),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn bulkhead_rate_limit_timeout_and_fallback_are_counted() {
    let recorder = CaptureRecorder::default();
    let _guard = recorder.install();

    // Bulkhead of one, failing fast: the second concurrent call is rejected.
    let pool = Bulkhead::builder("inventory")
        .max_concurrent(1)
        .build()
        .unwrap();
    let slow = service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<(), std::io::Error>(())
    });
    let layer = BulkheadLayer::new(pool);
    let first = tokio::spawn(layer.layer(slow).oneshot(()));
    tokio::task::yield_now().await;
    assert!(layer.layer(slow).oneshot(()).await.is_err());
    first.await.unwrap().unwrap();
    assert_eq!(
        recorder.counter(
            "palisade_bulkhead_rejections_total",
            &[("name", "inventory")]
        ),
        1
    );

    // A rate limit of one per second: the second call in the same instant is refused.
    let limiter = RateLimiter::builder("geo")
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let limited = RateLimitLayer::new(limiter);
    limited.layer(ok()).oneshot(()).await.unwrap();
    assert!(limited.layer(ok()).oneshot(()).await.is_err());
    assert_eq!(
        recorder.counter("palisade_rate_limited_total", &[("name", "geo")]),
        1
    );

    // A hanging call times out.
    let hang = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
    assert!(
        TimeoutLayer::new(Duration::from_millis(10))
            .layer(hang)
            .oneshot(())
            .await
            .is_err()
    );
    assert_eq!(recorder.counter_sum("palisade_timeouts_total"), 1);

    // A fallback answers, then a fallback that fails too.
    let answered = FallbackLayer::from_fn(|_: &Result<(), BoxError>| Ok(()))
        .named("recommendations")
        .layer(failing());
    answered.oneshot(()).await.unwrap();
    let broken = FallbackLayer::from_fn(|_: &Result<(), BoxError>| Err("cache cold".into()))
        .named("recommendations")
        .layer(failing());
    assert!(broken.oneshot(()).await.is_err());
    assert_eq!(
        recorder.counter("palisade_fallbacks_total", &[("name", "recommendations")]),
        2
    );
    assert_eq!(
        recorder.counter(
            "palisade_fallback_failures_total",
            &[("name", "recommendations")]
        ),
        1
    );
}
