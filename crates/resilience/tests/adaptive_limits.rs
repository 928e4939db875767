//! Adaptive concurrency under a paused clock: rejection over the limit, slots given back
//! on cancellation, AIMD and gradient movement, and properties of both algorithms.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_resilience::adaptive::{
    AdaptiveConcurrencyLayer, Aimd, Gradient, LimitAlgorithm, LimitExceeded, Sample,
};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

/// A dependency taking `ms` per call, failing when `ms` is odd, tracking concurrency.
fn dependency(
    now: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
) -> impl Service<u64, Response = u64, Error = std::io::Error, Future: Send> + Clone + use<> {
    service_fn(move |ms: u64| {
        let (now, peak) = (now.clone(), peak.clone());
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            struct Leave(Arc<AtomicU32>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(now);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ms % 2 == 1 {
                Err(std::io::Error::other("overloaded"))
            } else {
                Ok(ms)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_calls_are_rejected_and_cancelled_calls_give_their_slot_back() {
    let layer = AdaptiveConcurrencyLayer::new("dep", Aimd::new(2, 1, 2).unwrap());
    let svc = layer.layer(dependency(Arc::default(), Arc::default()));
    let a = tokio::spawn(svc.clone().oneshot(1_000));
    let b = tokio::spawn(svc.clone().oneshot(1_000));
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().in_flight(), 2);
    let err = svc.clone().oneshot(2).await.unwrap_err();
    let exceeded = err.downcast_ref::<LimitExceeded>().unwrap();
    assert_eq!((exceeded.name(), exceeded.limit()), ("dep", 2));
    a.abort();
    let _ = a.await;
    assert_eq!(
        layer.handle().in_flight(),
        1,
        "the cancelled call gave its slot back"
    );
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
    b.abort();
    let _ = b.await;
    assert_eq!(layer.handle().in_flight(), 0);
    // A slot reserved by poll_ready and never used is given back with the service.
    let mut holder = svc.clone();
    holder.ready().await.unwrap();
    assert_eq!(layer.handle().in_flight(), 1);
    drop(holder);
    assert_eq!(layer.handle().in_flight(), 0);
    assert_eq!(layer.handle().rejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn aimd_grows_while_the_limit_is_used_and_backs_off_on_failures() {
    let layer = AdaptiveConcurrencyLayer::new("dep", Aimd::new(4, 1, 100).unwrap());
    let svc = layer.layer(dependency(Arc::default(), Arc::default()));
    // Four at a time, all succeeding: the limit climbs.
    for _ in 0..5 {
        let batch: Vec<_> = (0..4)
            .map(|_| tokio::spawn(svc.clone().oneshot(10)))
            .collect();
        for call in batch {
            call.await.unwrap().unwrap();
        }
    }
    let grown = layer.handle().limit();
    assert!(grown > 4, "{grown}");
    // Failures (odd latencies) cut it by 10 % each.
    for _ in 0..5 {
        assert!(svc.clone().oneshot(11).await.is_err());
    }
    let cut = layer.handle().limit();
    assert_eq!(
        cut,
        (0..5).fold(grown, |l, _| (f64::from(l) * 0.9).floor() as u32)
    );
}

#[tokio::test(start_paused = true)]
async fn the_gradient_limit_shrinks_when_latency_rises() {
    let layer = AdaptiveConcurrencyLayer::new("dep", Gradient::new(10, 1, 1_000).unwrap());
    let svc = layer.layer(dependency(Arc::default(), Arc::default()));
    let run = |ms: u64, rounds: usize| {
        let svc = svc.clone();
        let handle = layer.handle().clone();
        async move {
            for _ in 0..rounds {
                let n = handle.limit().min(50);
                let batch: Vec<_> = (0..n)
                    .map(|_| tokio::spawn(svc.clone().oneshot(ms)))
                    .collect();
                for call in batch {
                    let _ = call.await.unwrap();
                }
            }
        }
    };
    run(10, 10).await;
    let steady = layer.handle().limit();
    assert!(
        steady > 10,
        "steady latency, limit fully used: it grows ({steady})"
    );
    run(200, 3).await;
    let congested = layer.handle().limit();
    assert!(
        congested < steady / 2,
        "latency ×20: it shrinks ({steady} -> {congested})"
    );
}

fn sample() -> impl Strategy<Value = Sample> {
    (0u64..1_000, 0u32..300, any::<bool>()).prop_map(|(ms, in_flight, dropped)| Sample {
        latency: Duration::from_millis(ms),
        in_flight,
        dropped,
    })
}

proptest! {
    #[test]
    fn algorithms_keep_the_limit_within_bounds(
        min in 1u32..10,
        span in 0u32..200,
        samples in prop::collection::vec(sample(), 1..300),
    ) {
        let max = min + span;
        let mut aimd = Aimd::new(min, min, max).unwrap();
        let mut gradient = Gradient::new(max, min, max).unwrap();
        let (mut a, mut g) = (aimd.initial_limit(), gradient.initial_limit());
        for s in samples {
            a = aimd.update(a, s);
            g = gradient.update(g, s);
            prop_assert!((min..=max).contains(&a), "aimd {a} outside [{min}, {max}]");
            prop_assert!((min..=max).contains(&g), "gradient {g} outside [{min}, {max}]");
        }
    }

    #[test]
    fn concurrency_never_exceeds_the_highest_limit_and_every_slot_comes_back(
        calls in prop::collection::vec((0u64..50, 0u64..60), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let (now, peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
            let layer = AdaptiveConcurrencyLayer::new("p", Aimd::new(3, 1, 6).unwrap());
            let svc = layer.layer(dependency(now.clone(), peak.clone()));
            let tasks: Vec<_> = calls
                .into_iter()
                .map(|(ms, give_up)| {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        // Some callers give up before the answer: their call is dropped.
                        let _ = tokio::time::timeout(Duration::from_millis(give_up), svc.oneshot(ms)).await;
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            prop_assert!(peak.load(Ordering::SeqCst) <= 6);
            prop_assert_eq!(layer.handle().in_flight(), 0);
            prop_assert_eq!(now.load(Ordering::SeqCst), 0);
            Ok(())
        })?;
    }
}
