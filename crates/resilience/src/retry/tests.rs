use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::backoff::{Backoff, Jitter};

type Outcome = Result<u16, std::io::Error>;

fn http_like(_: &u32, outcome: &Outcome) -> RetryDecision {
    match outcome {
        Ok(503) | Err(_) => RetryDecision::Retry,
        Ok(_) => RetryDecision::DoNotRetry,
    }
}

/// A server answering the given statuses in order (the last one forever), counting calls.
fn scripted(
    script: Vec<Result<u16, &'static str>>,
) -> (
    impl Service<u32, Response = u16, Error = std::io::Error, Future = impl Send> + Clone + Send,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |_: u32| {
        let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
        let step = script[n.min(script.len() - 1)];
        async move { step.map_err(std::io::Error::other) }
    });
    (svc, calls)
}

fn constant(ms: u64) -> Backoff {
    Backoff::constant(Duration::from_millis(ms))
}

#[tokio::test(start_paused = true)]
async fn a_503_response_is_retried_until_success() {
    let (server, calls) = scripted(vec![Ok(503), Ok(503), Ok(200)]);
    let layer = RetryLayer::builder()
        .classify(http_like)
        .max_attempts(5)
        .backoff(constant(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(server);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_400_response_is_never_retried() {
    let (server, calls) = scripted(vec![Ok(400), Ok(200)]);
    let layer = RetryLayer::builder().classify(http_like).build().unwrap();
    let mut svc = layer.layer(server);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 400);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_on_errors_yield_retries_exhausted_with_the_last_error() {
    let (server, calls) = scripted(vec![Err("refused")]);
    let layer = RetryLayer::builder()
        .classify(http_like)
        .max_attempts(4)
        .backoff(constant(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(server);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(exhausted.attempts(), 4);
    assert_eq!(exhausted.reason(), GiveUpReason::MaxAttempts);
    assert!(exhausted.last_error().is::<std::io::Error>());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_on_responses_return_the_last_response() {
    let (server, calls) = scripted(vec![Ok(503)]);
    let layer = RetryLayer::builder()
        .classify(http_like)
        .max_attempts(2)
        .backoff(constant(1))
        .build()
        .unwrap();
    assert_eq!(layer.layer(server).oneshot(1).await.unwrap(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_outcome_can_dictate_the_delay_like_retry_after() {
    let (server, _) = scripted(vec![Ok(429), Ok(200)]);
    let layer = RetryLayer::builder()
        .classify(|_: &u32, o: &Outcome| match o {
            Ok(429) => RetryDecision::RetryAfter(Duration::from_secs(7)),
            _ => RetryDecision::DoNotRetry,
        })
        .backoff(constant(1))
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(layer.layer(server).oneshot(1).await.unwrap(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries_and_says_so() {
    let budget = RetryBudget::builder()
        .retry_ratio(0.0)
        .min_per_sec(0)
        .max_balance(1)
        .build()
        .unwrap();
    let (server, calls) = scripted(vec![Err("down")]);
    let layer = RetryLayer::builder()
        .max_attempts(10)
        .budget(budget)
        .build()
        .unwrap();
    let err = layer.layer(server).oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(exhausted.reason(), GiveUpReason::BudgetExhausted);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_every_retry_and_the_give_up() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (server, _) = scripted(vec![Err("down")]);
    let layer = RetryLayer::builder()
        .name("orders")
        .max_attempts(3)
        .backoff(constant(5))
        .on_event(move |e| log.lock().unwrap().push(format!("{e:?}")))
        .build()
        .unwrap();
    let _ = layer.layer(server).oneshot(1).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].contains("Retrying") && seen[0].contains("attempt: 1"));
    assert!(seen[1].contains("attempt: 2"));
    assert!(
        seen[2].contains("GaveUp") && seen[2].contains("MaxAttempts") && seen[2].contains("orders")
    );
}

/// A request that cannot be cloned, and a client error that hands it back, like hyper's
/// `TrySendError`.
#[derive(Debug)]
struct Body(u32);

#[derive(Debug, thiserror::Error)]
#[error("not sent")]
struct NotSent(Option<Body>);

#[tokio::test(start_paused = true)]
async fn a_request_that_is_not_clone_is_restored_from_the_error() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let server = service_fn(move |req: Body| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(NotSent(Some(req)))
            } else {
                Ok(req.0)
            }
        }
    });
    let layer = RetryLayer::builder()
        .backoff(constant(1))
        .restore_with(|outcome: &mut Result<u32, NotSent>| {
            outcome.as_mut().err().and_then(|e| e.0.take())
        })
        .build()
        .unwrap();
    assert_eq!(layer.layer(server).oneshot(Body(42)).await.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_is_not_clone_can_be_rebuilt() {
    let (server, calls) = scripted(vec![Err("down"), Ok(200)]);
    let server = server.map_request(|b: Body| b.0);
    let layer = RetryLayer::builder()
        .backoff(constant(1))
        .rebuild_with(|b: &Body| Some(Body(b.0)))
        .build()
        .unwrap();
    assert_eq!(layer.layer(server).oneshot(Body(1)).await.unwrap(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn invalid_policies_are_config_errors() {
    assert!(matches!(
        RetryLayer::builder().max_attempts(0).build(),
        Err(crate::ConfigError::Zero {
            field: "max_attempts"
        })
    ));
    assert!(
        RetryLayer::builder()
            .backoff(Backoff::exponential(Duration::from_secs(1)).with_max_delay(Duration::ZERO))
            .build()
            .is_err()
    );
}

fn any_backoff() -> impl Strategy<Value = Backoff> {
    (1u64..500, 0u64..2000, 0u8..4, 0u8..3).prop_map(|(base, extra, jitter, kind)| {
        let base = Duration::from_millis(base);
        let b = match kind {
            0 => Backoff::constant(base),
            1 => Backoff::linear(base, base),
            _ => Backoff::exponential(base),
        };
        b.with_max_delay(base + Duration::from_millis(extra))
            .with_jitter(match jitter {
                0 => Jitter::None,
                1 => Jitter::Full,
                2 => Jitter::Equal,
                _ => Jitter::Decorrelated,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn retries_stay_within_attempts_delay_bounds_and_max_elapsed(
        backoff in any_backoff(),
        max_attempts in 1u32..12,
        max_elapsed_ms in prop::option::of(1u64..5_000),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let times = Arc::new(Mutex::new(Vec::new()));
            let log = times.clone();
            let start = Instant::now();
            let server = service_fn(move |_: u32| {
                log.lock().unwrap().push(start.elapsed());
                async { Err::<u16, _>(std::io::Error::other("down")) }
            });
            let mut builder = RetryLayer::builder().max_attempts(max_attempts).backoff(backoff);
            if let Some(ms) = max_elapsed_ms {
                builder = builder.max_elapsed(Duration::from_millis(ms));
            }
            let err = builder.build().unwrap().layer(server).oneshot(1).await.unwrap_err();
            let total = start.elapsed();
            let times = times.lock().unwrap();

            prop_assert!(times.len() as u32 <= max_attempts);
            let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
            prop_assert_eq!(exhausted.attempts() as usize, times.len());
            if let Some(ms) = max_elapsed_ms {
                prop_assert!(total <= Duration::from_millis(ms), "{total:?} > {ms} ms");
            } else {
                prop_assert_eq!(times.len() as u32, max_attempts);
            }
            let cap = backoff.max_delay().unwrap();
            for (i, pair) in times.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                prop_assert!(gap <= cap);
                if backoff.jitter() == Jitter::None {
                    prop_assert_eq!(gap, backoff.nominal_delay(i as u32 + 1));
                }
            }
            Ok(())
        })?;
    }
}
