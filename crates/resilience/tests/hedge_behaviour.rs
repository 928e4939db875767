//! Hedging under a paused clock: when hedges go out, who wins, what gets cancelled, and
//! a proptest of the schedule against a model.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_resilience::hedge::HedgeLayer;
use palisade_resilience::retry::RetryBudget;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

/// Attempt `k` (in call order) takes `plan[k].0` ms and succeeds when `plan[k].1`.
/// Counts calls, and attempts dropped before they finished.
#[derive(Clone, Default)]
struct Replicas {
    plan: Arc<Vec<(u64, bool)>>,
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

struct CancelGuard(Arc<AtomicUsize>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Replicas {
    fn new(plan: Vec<(u64, bool)>) -> Self {
        Self {
            plan: Arc::new(plan),
            ..Self::default()
        }
    }

    fn service(
        &self,
    ) -> impl tower::Service<(), Response = usize, Error = std::io::Error, Future: Send> + Clone + use<>
    {
        let this = self.clone();
        service_fn(move |()| {
            let k = this.calls.fetch_add(1, Ordering::SeqCst);
            let (millis, ok) = this.plan.get(k).copied().unwrap_or((1_000_000, false));
            let guard = CancelGuard(this.cancelled.clone(), false);
            async move {
                let mut guard = guard; // the whole guard moves in, not just its flag
                tokio::time::sleep(Duration::from_millis(millis)).await;
                guard.1 = true;
                if ok {
                    Ok(k)
                } else {
                    Err(std::io::Error::other(format!("attempt {k} failed")))
                }
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_sends_no_hedge() {
    let replicas = Replicas::new(vec![(5, true)]);
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .build()
        .unwrap();
    assert_eq!(
        layer.layer(replicas.service()).oneshot(()).await.unwrap(),
        0
    );
    assert_eq!(replicas.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.hedges_sent(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_after_the_delay_and_the_loser_is_cancelled() {
    let replicas = Replicas::new(vec![(1_000, true), (3, true)]);
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(
        layer.layer(replicas.service()).oneshot(()).await.unwrap(),
        1
    );
    assert_eq!(start.elapsed(), Duration::from_millis(13));
    assert_eq!(
        replicas.cancelled.load(Ordering::SeqCst),
        1,
        "the slow original was dropped"
    );
    assert_eq!((layer.hedges_sent(), layer.hedges_won()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn hedges_stop_at_max_hedges() {
    let replicas = Replicas::new(vec![(100, true), (100, true), (100, true), (1, true)]);
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .max_hedges(2)
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(
        layer.layer(replicas.service()).oneshot(()).await.unwrap(),
        0
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(replicas.calls.load(Ordering::SeqCst), 3);
    assert_eq!(replicas.cancelled.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_sends_no_hedge() {
    let budget = RetryBudget::builder()
        .retry_ratio(0.0)
        .min_per_sec(0)
        .build()
        .unwrap();
    let replicas = Replicas::new(vec![(100, true), (1, true)]);
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .budget(budget)
        .build()
        .unwrap();
    assert_eq!(
        layer.layer(replicas.service()).oneshot(()).await.unwrap(),
        0
    );
    assert_eq!(replicas.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_with_retries_one_token_per_hedge() {
    // 10 requests at ratio 0.2 earn 2 tokens: only 2 of them are hedged.
    let budget = RetryBudget::builder()
        .retry_ratio(0.2)
        .min_per_sec(0)
        .build()
        .unwrap();
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let replicas = Replicas::new((0..40).map(|_| (50, true)).collect());
    let svc = layer.layer(replicas.service());
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(layer.hedges_sent(), 2);
    assert!(!budget.try_withdraw());
}

#[tokio::test(start_paused = true)]
async fn a_failed_original_waits_for_a_running_hedge() {
    let replicas = Replicas::new(vec![(20, false), (15, true)]);
    let layer = HedgeLayer::fixed(Duration::from_millis(10))
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(
        layer.layer(replicas.service()).oneshot(()).await.unwrap(),
        1
    );
    assert_eq!(start.elapsed(), Duration::from_millis(25));
}

#[tokio::test(start_paused = true)]
async fn a_percentile_delay_follows_the_observed_latency() {
    let replicas = Replicas::new(
        (0..200)
            .map(|k| (if k < 100 { 20 } else { 1 }, true))
            .collect(),
    );
    let layer = HedgeLayer::percentile(90.0, Duration::from_secs(1))
        .min_samples(50)
        .build()
        .unwrap();
    assert_eq!(layer.current_delay(), Duration::from_secs(1));
    let svc = layer.layer(replicas.service());
    for _ in 0..100 {
        svc.clone().oneshot(()).await.unwrap();
    }
    let delay = layer.current_delay();
    assert!(
        delay >= Duration::from_millis(20) && delay <= Duration::from_millis(30),
        "{delay:?}"
    );
    assert_eq!(layer.hedges_sent(), 0);
}

/// The model: attempt k is sent at k × delay while no answer came and k ≤ max; the first
/// success wins; when every sent attempt failed, the call fails.
fn model(plan: &[(u64, bool)], delay: u64, max: usize) -> (Result<usize, ()>, u64, usize) {
    let mut running: Vec<usize> = vec![0];
    let mut sent = 1;
    let mut now;
    loop {
        let next_launch = (sent <= max).then(|| sent as u64 * delay);
        let next_finish = running
            .iter()
            .map(|&k| (k as u64 * delay + plan[k].0, k))
            .min();
        match (next_launch, next_finish) {
            (Some(l), Some((f, _))) if l < f => {
                running.push(sent);
                sent += 1;
            }
            (_, Some((f, k))) => {
                now = f;
                running.retain(|&r| r != k);
                if plan[k].1 {
                    return (Ok(k), now, sent);
                }
                if running.is_empty() {
                    return (Err(()), now, sent);
                }
            }
            (_, None) => unreachable!("an attempt is always running"),
        }
    }
}

proptest! {
    #[test]
    fn hedging_matches_its_model(
        plan in prop::collection::vec((0u64..50, any::<bool>()), 4),
        delay in 1u64..20,
        max in 1usize..4,
    ) {
        // Odd finish times and even launch times never tie; distinct finishes neither.
        let plan: Vec<(u64, bool)> = plan.into_iter().map(|(ms, ok)| (ms * 2 + 1, ok)).collect();
        let delay = delay * 2;
        let finishes: Vec<u64> = (0..=max).map(|k| k as u64 * delay + plan[k].0).collect();
        let mut unique = finishes.clone();
        unique.sort_unstable();
        unique.dedup();
        prop_assume!(unique.len() == finishes.len());

        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let (expected, at, sent) = model(&plan, delay, max);
        let replicas = Replicas::new(plan.clone());
        let layer = HedgeLayer::fixed(Duration::from_millis(delay)).max_hedges(max as u32).build().unwrap();
        let (result, elapsed) = rt.block_on(async {
            let start = Instant::now();
            let result = layer.layer(replicas.service()).oneshot(()).await;
            (result.map_err(|_| ()), start.elapsed())
        });
        prop_assert_eq!(result, expected);
        prop_assert_eq!(elapsed, Duration::from_millis(at));
        prop_assert_eq!(replicas.calls.load(Ordering::SeqCst), sent);
        prop_assert!(sent <= max + 1);
    }
}
