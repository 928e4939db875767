//! The unsaturated path of every layer r1 owns — and the whole pipeline — allocates
//! nothing per call: counted with a counting global allocator (this binary only).

#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_resilience::BoxError;
use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
use palisade_resilience::fallback::FallbackLayer;
use palisade_resilience::pipeline::{PipelineLayer, RetryConfig};
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
use palisade_resilience::retry::{RetryBudget, RetryLayer};
use palisade_resilience::timeout::TimeoutLayer;
use tower::{Layer, Service, service_fn};

struct Counting;

thread_local! {
    // Per thread: the test harness allocates on its own threads meanwhile.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn noop() -> impl Service<
    u64,
    Response = u64,
    Error = std::io::Error,
    Future = std::future::Ready<Result<u64, std::io::Error>>,
> + Clone {
    service_fn(|x: u64| std::future::ready(Ok::<_, std::io::Error>(x)))
}

/// Allocations made by 1000 calls after one warm-up call.
fn allocations_per_1000_calls<S>(mut svc: S) -> usize
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut one_call = |i: u64| {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let mut fut = pin!(svc.call(i));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(x)) => assert_eq!(x, i),
            other => panic!("not ready at once: {:?}", other.map(|r| r.map(|_| ()))),
        }
    };
    one_call(0);
    let before = allocations();
    for i in 1..=1000 {
        one_call(i);
    }
    allocations() - before
}

#[test]
fn unsaturated_calls_allocate_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = rt.enter();
    let second = Duration::from_secs(1);

    let timeout = TimeoutLayer::new(second).layer(noop());
    assert_eq!(allocations_per_1000_calls(timeout), 0, "timeout");

    let budget = RetryBudget::builder().build().unwrap();
    let retry = RetryLayer::builder()
        .budget(budget)
        .build()
        .unwrap()
        .layer(noop());
    assert_eq!(allocations_per_1000_calls(retry), 0, "retry");

    let pool = Bulkhead::builder("b").max_concurrent(4).build().unwrap();
    let bulkhead = BulkheadLayer::new(pool).layer(noop());
    assert_eq!(allocations_per_1000_calls(bulkhead), 0, "bulkhead");

    let limiter = RateLimiter::builder("r")
        .rate(1_000_000, Duration::from_millis(1))
        .build()
        .unwrap();
    let rate_limit = RateLimitLayer::new(limiter).layer(noop());
    assert_eq!(allocations_per_1000_calls(rate_limit), 0, "rate limit");

    let fallback = FallbackLayer::from_fn(|_: &Result<u64, BoxError>| Ok(0)).layer(noop());
    assert_eq!(allocations_per_1000_calls(fallback), 0, "fallback");

    let pipeline = PipelineLayer::builder("p")
        .timeout(second)
        .total_timeout(2 * second)
        .retry(RetryConfig::default())
        .rate_limiter(
            RateLimiter::builder("p")
                .rate(1_000_000, Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .bulkhead(Bulkhead::builder("p").max_concurrent(4).build().unwrap())
        .circuit_breaker(CircuitBreakerLayer::builder("p").build().unwrap())
        .build_with_breaker()
        .unwrap()
        .layer(noop());
    assert_eq!(
        allocations_per_1000_calls(pipeline),
        0,
        "pipeline of six strategies"
    );
}
