//! The chaos layer: deterministic from its seed, rates honoured, latency within range,
//! outcomes injected without reaching the inner service, and a switch.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_resilience::chaos::{ChaosLayer, InjectedFault};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

/// Runs `n` calls and records, per call: Ok(value) or Err(fault call number), and its
/// duration in µs.
async fn trace(layer: &ChaosLayer, n: u32) -> Vec<(Result<u32, u64>, u128)> {
    let svc = layer.layer(service_fn(
        |x: u32| async move { Ok::<_, std::io::Error>(x) },
    ));
    let mut out = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        let result = svc
            .clone()
            .oneshot(i)
            .await
            .map_err(|e| e.downcast::<InjectedFault>().unwrap().call());
        out.push((result, start.elapsed().as_micros()));
    }
    out
}

fn layer(seed: u64) -> ChaosLayer {
    ChaosLayer::builder(seed)
        .error_rate(0.2)
        .latency(0.3, Duration::from_millis(5), Duration::from_millis(50))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_replays_the_same_injections() {
    let a = trace(&layer(99), 300).await;
    let b = trace(&layer(99), 300).await;
    assert_eq!(a, b);
    let c = trace(&layer(100), 300).await;
    assert_ne!(a, c, "another seed, other injections");
}

#[tokio::test(start_paused = true)]
async fn rates_are_honoured_and_latency_stays_in_range() {
    let chaos = layer(7);
    let calls = trace(&chaos, 5_000).await;
    let faults = calls.iter().filter(|(r, _)| r.is_err()).count();
    let delayed: Vec<u128> = calls
        .iter()
        .map(|(_, us)| *us)
        .filter(|us| *us > 0)
        .collect();
    assert!(
        (850..=1150).contains(&faults),
        "{faults} faults of 5000 at 20 %"
    );
    assert!(
        (1300..=1700).contains(&delayed.len()),
        "{} delays of 5000 at 30 %",
        delayed.len()
    );
    assert!(delayed.iter().all(|us| (5_000..=50_000).contains(us)));
    assert_eq!(chaos.handle().faults(), faults as u64);
    assert_eq!(chaos.handle().delays(), delayed.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn injected_outcomes_do_not_reach_the_inner_service() {
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    let chaos = ChaosLayer::builder(3)
        .outcome(1.0, |req: &u32| req + 1000)
        .build()
        .unwrap();
    let svc = chaos.layer(service_fn(move |x: u32| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(x) }
    }));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1001);
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    chaos.handle().disable();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    assert_eq!(chaos.handle().outcomes(), 1);
}

#[test]
fn bad_rates_are_config_errors() {
    assert!(ChaosLayer::builder(0).error_rate(1.5).build().is_err());
    assert!(
        ChaosLayer::builder(0)
            .error_rate(0.6)
            .outcome(0.6, |_: &()| ())
            .build()
            .is_err()
    );
    assert!(
        ChaosLayer::builder(0)
            .latency(0.1, Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .is_err()
    );
}

proptest! {
    #[test]
    fn any_seed_is_deterministic_and_keeps_latency_in_range(seed in any::<u64>(), lo in 0u64..20, span in 0u64..20) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let make = || ChaosLayer::builder(seed)
            .error_rate(0.5)
            .latency(0.5, Duration::from_millis(lo), Duration::from_millis(lo + span))
            .build()
            .unwrap();
        let (a, b) = rt.block_on(async { (trace(&make(), 50).await, trace(&make(), 50).await) });
        prop_assert_eq!(&a, &b);
        for (_, us) in a {
            prop_assert!(us == 0 || (u128::from(lo) * 1000..=u128::from(lo + span) * 1000).contains(&us));
        }
    }
}
