//! The closed path allocates nothing: counted with a counting global allocator.

#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
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

#[test]
fn closed_path_calls_allocate_nothing() {
    for layer in [
        CircuitBreakerLayer::builder("count").build().unwrap(),
        CircuitBreakerLayer::builder("slow")
            .slow_call_duration(std::time::Duration::from_secs(1))
            .build()
            .unwrap(),
        CircuitBreakerLayer::builder("time")
            .time_window(std::time::Duration::from_secs(10))
            .build()
            .unwrap(),
    ] {
        let mut svc = layer.layer(service_fn(|x: u64| {
            std::future::ready(Ok::<_, std::io::Error>(x))
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut one_call = |i: u64| {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let fut = pin!(svc.call(i));
            match fut.poll(&mut cx) {
                Poll::Ready(Ok(x)) => assert_eq!(x, i),
                _ => panic!("a ready no-op call completes at once"),
            }
        };
        // Warm up: thread-locals, the stripe's ring, lazy statics.
        for i in 0..1_000 {
            one_call(i);
        }
        let before = allocations();
        for i in 0..10_000 {
            one_call(i);
        }
        let after = allocations();
        assert_eq!(after - before, 0, "{} allocated", layer.handle().name());
        assert!(
            layer.handle().metrics().calls >= 100,
            "the calls were recorded"
        );
    }
}
