//! Tower contract: readiness stays right when services are cloned inside `call` (as axum
//! does) and when driven through `tower::buffer::Buffer` by `ServiceBuilder`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_resilience::backoff::Backoff;
use palisade_resilience::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
use palisade_resilience::retry::RetryLayer;
use palisade_resilience::timeout::TimeoutLayer;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

struct Leaving(Arc<AtomicUsize>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend taking 100 ms per call that records its peak concurrency.
fn slow_backend(
    peak: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + Send + 'static
{
    let current = Arc::new(AtomicUsize::new(0));
    service_fn(move |x: u32| {
        let (current, peak) = (current.clone(), peak.clone());
        async move {
            let now = current.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let _leaving = Leaving(current);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(x)
        }
    })
}

/// The axum pattern: call the instance that was polled ready, keep a fresh clone.
async fn call_like_axum<S: Service<u32> + Clone>(
    svc: &mut S,
    req: u32,
) -> Result<S::Response, S::Error> {
    svc.ready().await?;
    let clone = svc.clone();
    let ready = std::mem::replace(svc, clone);
    ready.oneshot_ready(req).await
}

trait OneshotReady<Req>: Service<Req> + Sized {
    async fn oneshot_ready(mut self, req: Req) -> Result<Self::Response, Self::Error> {
        self.call(req).await
    }
}

impl<S: Service<Req>, Req> OneshotReady<Req> for S {}

#[tokio::test(start_paused = true)]
async fn a_clone_taken_after_poll_ready_does_not_inherit_the_permit() {
    let pool = Bulkhead::builder("c").max_concurrent(1).build().unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(pool.clone()))
        .service(slow_backend(peak.clone()));
    svc.ready().await.unwrap();
    // Calling a clone that was never polled ready is a contract violation: it must not
    // slip past the limit; it is refused, typed.
    let mut clone = svc.clone();
    let err = clone.call(1).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());
    // The instance that was polled holds the permit and goes through.
    assert_eq!(svc.call(2).await.unwrap(), 2);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn cloning_inside_call_like_axum_keeps_every_layer_ready() {
    let pool = Bulkhead::builder("axum").max_concurrent(2).build().unwrap();
    let limiter = RateLimiter::builder("axum")
        .rate(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().build().unwrap())
        .layer(RateLimitLayer::new(limiter))
        .layer(BulkheadLayer::new(pool.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(slow_backend(peak.clone()));
    for i in 0..20 {
        assert_eq!(call_like_axum(&mut svc, i).await.unwrap(), i);
    }
    assert_eq!(pool.in_flight(), 0);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_a_waiting_bulkhead_applies_backpressure_and_never_exceeds_its_limit() {
    let pool = Bulkhead::builder("buf")
        .max_concurrent(2)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .buffer(64)
        .layer(BulkheadLayer::new(pool.clone()))
        .service(slow_backend(peak.clone()));
    let start = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as u32);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    // Ten calls of 100 ms, two at a time.
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_fail_fast_rejections_do_not_poison_the_buffer() {
    let pool = Bulkhead::builder("ff").max_concurrent(1).build().unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .buffer(64)
        .layer(BulkheadLayer::new(pool.clone()))
        .service(slow_backend(peak.clone()));
    let calls: Vec<_> = (0..5)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    let mut ok = 0;
    let mut full = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                let e: BoxError = e;
                assert!(e.is::<BulkheadFull>(), "{e}");
                full += 1;
            }
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, full {full}");
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    // The buffer's worker is still healthy: later calls go through.
    assert_eq!(svc.clone().oneshot(99).await.unwrap(), 99);
}

#[tokio::test(start_paused = true)]
async fn retry_over_a_buffer_re_readies_the_inner_clone_before_each_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let flaky = service_fn(move |x: u32| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(std::io::Error::other("flaky"))
            } else {
                Ok(x)
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(5)
                .backoff(Backoff::constant(Duration::from_millis(5)))
                .build()
                .unwrap(),
        )
        .buffer(1)
        .service(flaky);
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_a_waiting_rate_limiter_paces_calls() {
    let limiter = RateLimiter::builder("pace")
        .rate(10, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .buffer(64)
        .layer(RateLimitLayer::new(limiter))
        .service(service_fn(
            |x: u32| async move { Ok::<_, std::io::Error>(x) },
        ));
    let start = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // The first at once, then one every 100 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(400));
}
