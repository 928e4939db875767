//! Per-call overhead of Palisade's resilience layers, side by side with their nearest
//! peers, on a ready no-op service.
//!
//! Every layer is built outside the timed loop. A call is `poll_ready` + `call` + one poll
//! of the response future with a no-op waker (every service here is ready and answers on
//! the first poll), inside a tokio runtime context so timers can be created. That measures
//! the layer's own work — no executor scheduling, no I/O — the same way for every library.
//!
//! Per-call figures are in **CPU time of the calling thread** (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: on a shared 2-vCPU machine, time the thread spends descheduled while
//! other builds run would otherwise land in the figure at random. The two-thread
//! throughput group is in wall time, as throughput must be.
//!
//! Run: `cargo bench -p palisade-bench-resilience -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceBuilder, service_fn};

use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
use palisade_resilience::pipeline::{PipelineLayer, RetryConfig};
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
use palisade_resilience::retry::RetryLayer;
use palisade_resilience::timeout::TimeoutLayer;

type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, Infallible>>>;

fn noop() -> Noop {
    fn answer(x: u64) -> std::future::Ready<Result<u64, Infallible>> {
        std::future::ready(Ok(x))
    }
    service_fn(answer as fn(u64) -> _)
}

/// Polls `fut` with a no-op waker until it completes (once, for everything measured here).
fn finish<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a measured future did not complete without a wake-up");
}

/// One call through `svc`: readiness, call, response.
#[inline]
fn call_once<S>(svc: &mut S, req: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready = false;
    for _ in 0..1_000 {
        if let Poll::Ready(r) = svc.poll_ready(&mut cx) {
            r.expect("ready");
            ready = true;
            break;
        }
    }
    assert!(ready, "service never became ready");
    finish(svc.call(req)).expect("call succeeds")
}

/// CPU time consumed by the measuring thread, in nanoseconds.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = cpu_time::ThreadTime;
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }

    fn end(&self, start: Self::Intermediate) -> Self::Value {
        start.elapsed()
    }

    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }

    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Prints CPU nanoseconds as they are (every figure here is tens to thousands of them).
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns (cpu)"
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                *n as f64
            }
            _ => 1.0,
        };
        for v in values.iter_mut() {
            *v = per * 1e9 / *v;
        }
        "per cpu-second"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_service<S, M: Measurement>(c: &mut Criterion<M>, group: &str, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut g = c.benchmark_group(group);
    let mut i = 0u64;
    g.bench_function(name, |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(call_once(&mut svc, black_box(i)))
        })
    });
    g.finish();
}

/// A tower retry policy that never retries: the cost of the layer on the happy path.
#[derive(Clone)]
struct NeverRetry;

impl<E> tower::retry::Policy<u64, u64, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// The same, holding an `Arc` as any policy with a shared budget does: like-for-like with
/// ours, whose policy is shared behind one `Arc`.
#[derive(Clone)]
struct NeverRetryShared(#[allow(dead_code)] Arc<()>);

impl<E> tower::retry::Policy<u64, u64, E> for NeverRetryShared {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn resilience(c: &mut Criterion<ThreadCpu>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = rt.enter();
    let second = Duration::from_secs(1);

    bench_service(c, "baseline", "noop_service", noop());
    {
        // What one clock read costs here: every time-based layer (tower's included) pays it.
        let mut g = c.benchmark_group("baseline");
        g.bench_function("tokio_instant_now", |b| {
            b.iter(|| black_box(tokio::time::Instant::now()))
        });
        g.finish();
    }

    // Timeout.
    bench_service(
        c,
        "timeout",
        "palisade",
        TimeoutLayer::new(second).layer(noop()),
    );
    bench_service(
        c,
        "timeout",
        "tower",
        tower::timeout::TimeoutLayer::new(second).layer(noop()),
    );
    bench_service(
        c,
        "timeout",
        "tower_resilience",
        tower_resilience::timelimiter::TimeLimiterLayer::builder()
            .timeout_duration(second)
            .build()
            .layer(noop()),
    );

    // Retry, no retry needed.
    let ours = RetryLayer::builder()
        .max_attempts(3)
        .build()
        .expect("retry");
    bench_service(c, "retry", "palisade", ours.layer(noop()));
    bench_service(
        c,
        "retry",
        "tower",
        tower::retry::RetryLayer::new(NeverRetry).layer(noop()),
    );
    bench_service(
        c,
        "retry",
        "tower_arc_policy",
        tower::retry::RetryLayer::new(NeverRetryShared(Arc::new(()))).layer(noop()),
    );
    bench_service(
        c,
        "retry",
        "tower_resilience",
        tower_resilience::retry::RetryLayer::<u64, u64, Infallible>::builder()
            .max_attempts(3)
            .fixed_backoff(Duration::from_millis(10))
            .build()
            .layer(noop()),
    );

    // Bulkhead, unsaturated.
    let pool = Bulkhead::builder("bench")
        .max_concurrent(1_000)
        .build()
        .expect("bulkhead");
    bench_service(
        c,
        "bulkhead",
        "palisade",
        BulkheadLayer::new(pool).layer(noop()),
    );
    bench_service(
        c,
        "bulkhead",
        "tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(1_000).layer(noop()),
    );
    bench_service(
        c,
        "bulkhead",
        "tower_resilience",
        tower_resilience::bulkhead::BulkheadLayer::builder()
            .max_concurrent_calls(1_000)
            .build()
            .expect("bulkhead")
            .layer(noop()),
    );

    // Rate limiter, never limiting: the decision itself, then our layer.
    let ours = RateLimiter::builder("bench")
        .rate(u32::MAX, Duration::from_secs(1))
        .build()
        .expect("limiter");
    let theirs = governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(u32::MAX).expect("non-zero"),
    ));
    let ours_tsc = RateLimiter::builder("bench")
        .rate(u32::MAX, Duration::from_secs(1))
        .tsc_clock()
        .build()
        .expect("limiter");
    {
        let mut g = c.benchmark_group("rate_limiter_decision");
        g.bench_function("palisade", |b| {
            b.iter(|| black_box(ours.try_acquire().is_ok()))
        });
        g.bench_function("palisade_tsc_clock", |b| {
            b.iter(|| black_box(ours_tsc.try_acquire().is_ok()))
        });
        g.bench_function("governor", |b| b.iter(|| black_box(theirs.check().is_ok())));
        g.finish();
    }
    bench_service(
        c,
        "rate_limit_layer",
        "palisade",
        RateLimitLayer::new(ours).layer(noop()),
    );
    bench_service(
        c,
        "rate_limit_layer",
        "palisade_tsc_clock",
        RateLimitLayer::new(ours_tsc).layer(noop()),
    );
    bench_service(
        c,
        "rate_limit_layer",
        "tower",
        tower::limit::RateLimitLayer::new(u64::MAX, second).layer(noop()),
    );

    // Circuit breaker, closed.
    let ours = CircuitBreakerLayer::builder("bench")
        .build()
        .expect("breaker");
    bench_service(c, "circuit_breaker", "palisade", ours.layer(noop()));
    bench_service(
        c,
        "circuit_breaker",
        "tower_resilience",
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .build()
            .expect("breaker")
            .layer(noop()),
    );
    {
        use failsafe::futures::CircuitBreaker as _;
        let breaker = failsafe::Config::new().build();
        let mut g = c.benchmark_group("circuit_breaker");
        let mut i = 0u64;
        g.bench_function("failsafe_futures", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let fut = breaker.call(std::future::ready(Ok::<u64, ()>(black_box(i))));
                black_box(finish(fut).expect("closed"))
            })
        });
        let breaker = failsafe::Config::new().build();
        g.bench_function("failsafe_sync", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let out = failsafe::CircuitBreaker::call(&breaker, || Ok::<u64, ()>(black_box(i)));
                black_box(out.expect("closed"))
            })
        });
        g.finish();
    }

    // Four strategies: retry > breaker > bulkhead > timeout.
    let ours = PipelineLayer::builder("bench")
        .retry(RetryConfig {
            max_attempts: 3,
            ..RetryConfig::default()
        })
        .circuit_breaker(
            CircuitBreakerLayer::builder("bench")
                .build()
                .expect("breaker"),
        )
        .bulkhead(
            Bulkhead::builder("bench")
                .max_concurrent(1_000)
                .build()
                .expect("bulkhead"),
        )
        .timeout(second)
        .build_with_breaker()
        .expect("pipeline");
    bench_service(
        c,
        "four_strategy_stack",
        "palisade_pipeline",
        ours.layer(noop()),
    );
    let ours_manual = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .build()
                .expect("retry"),
        )
        .layer(
            CircuitBreakerLayer::builder("bench2")
                .build()
                .expect("breaker"),
        )
        .layer(BulkheadLayer::new(
            Bulkhead::builder("bench2")
                .max_concurrent(1_000)
                .build()
                .expect("bulkhead"),
        ))
        .layer(TimeoutLayer::new(second))
        .service(noop());
    bench_service(
        c,
        "four_strategy_stack",
        "palisade_service_builder",
        ours_manual,
    );
    type TrError = tower_resilience::circuitbreaker::CircuitBreakerError<
        tower_resilience::bulkhead::BulkheadServiceError<
            tower_resilience::timelimiter::TimeLimiterError<Infallible>,
        >,
    >;
    let theirs = ServiceBuilder::new()
        .layer(
            tower_resilience::retry::RetryLayer::<u64, u64, TrError>::builder()
                .max_attempts(3)
                .fixed_backoff(Duration::from_millis(10))
                .build(),
        )
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .build()
                .expect("breaker"),
        )
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(1_000)
                .build()
                .expect("bulkhead"),
        )
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(second)
                .build(),
        )
        .service(noop());
    bench_service(c, "four_strategy_stack", "tower_resilience", theirs);
}

/// One breaker shared by 1 and by 2 threads, and (the ceiling) 2 threads each with a
/// breaker of its own. In wall time (`shared_breaker_throughput`: time per call across
/// all threads, so throughput ratio = 1-thread time / 2-thread time) and in CPU time
/// summed over the workers (`shared_breaker_cpu`: what a call costs each thread, which
/// contention on shared cache lines would raise).
fn shared_breaker<M: Measurement<Value = Duration>>(c: &mut Criterion<M>, group: &str, cpu: bool) {
    let rt = runtime();
    let shared = CircuitBreakerLayer::builder("shared")
        .build()
        .expect("breaker");
    let handle = rt.handle().clone();
    let mut g = c.benchmark_group(group);
    for (name, threads, shared_by_all) in [
        ("palisade_1_threads", 1usize, true),
        ("palisade_2_threads", 2, true),
        ("unshared_2_threads", 2, false),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let barrier = Arc::new(Barrier::new(threads + 1));
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let mut svc = if shared_by_all {
                            shared.layer(noop())
                        } else {
                            CircuitBreakerLayer::builder("unshared")
                                .build()
                                .expect("breaker")
                                .layer(noop())
                        };
                        let barrier = barrier.clone();
                        let handle = handle.clone();
                        std::thread::spawn(move || {
                            let _context = handle.enter();
                            barrier.wait();
                            let start = cpu_time::ThreadTime::now();
                            for i in 0..per_thread {
                                black_box(call_once(&mut svc, i));
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                let mut spent = Duration::ZERO;
                for w in workers {
                    spent += w.join().expect("worker");
                }
                if cpu { spent } else { start.elapsed() }
            })
        });
    }
    g.finish();
}

fn shared_breaker_wall(c: &mut Criterion) {
    shared_breaker(c, "shared_breaker_throughput", false);
}

fn shared_breaker_cpu(c: &mut Criterion<ThreadCpu>) {
    shared_breaker(c, "shared_breaker_cpu", true);
}

criterion_group! {
    name = per_call;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = resilience, shared_breaker_cpu
}
criterion_group!(throughput, shared_breaker_wall);
criterion_main!(per_call, throughput);
