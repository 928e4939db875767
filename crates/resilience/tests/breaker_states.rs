//! The breaker's states, waits and probes under a paused clock.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_resilience::BoxError;
use palisade_resilience::backoff::Backoff;
use palisade_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, Outcome,
};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt, service_fn};

/// A dependency whose health is switched by the test, counting the calls that reach it.
#[derive(Clone, Default)]
struct Dependency {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Dependency {
    fn service(
        &self,
    ) -> impl Service<Duration, Response = (), Error = std::io::Error, Future: Send> + Clone + use<>
    {
        let dep = self.clone();
        service_fn(move |latency: Duration| {
            let dep = dep.clone();
            async move {
                dep.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(latency).await;
                if dep.down.load(Ordering::SeqCst) {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }
        })
    }
}

fn open_error(result: Result<(), BoxError>) -> CircuitOpen {
    match result {
        Err(e) => match e.downcast::<CircuitOpen>() {
            Ok(open) => *open,
            Err(other) => panic!("expected CircuitOpen, got {other}"),
        },
        Ok(()) => panic!("expected CircuitOpen, got Ok"),
    }
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_and_rejects_without_calling_the_dependency() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder("db")
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(60.0)
        .wait_in_open(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(dep.service());
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(Duration::ZERO)
            .await
            .unwrap();
    }
    dep.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call(Duration::ZERO)
                .await
                .is_err()
        );
    }
    // 2 failures of 4 calls: below the minimum, still closed.
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(Duration::ZERO)
            .await
            .is_err()
    );
    // 3 of 5 = 60 %: open.
    assert_eq!(layer.handle().state(), CircuitState::Open);
    let before = dep.calls.load(Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(4)).await;
    let open = open_error(svc.ready().await.unwrap().call(Duration::ZERO).await);
    assert_eq!(open.name(), "db");
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.remaining_wait(), Some(Duration::from_secs(6)));
    assert_eq!(
        dep.calls.load(Ordering::SeqCst),
        before,
        "the dependency was not called"
    );
    let m = layer.handle().metrics();
    assert_eq!((m.rejected, m.openings), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_its_probes_then_closes_when_they_succeed() {
    let dep = Dependency::default();
    dep.down.store(true, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::builder("api")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(5))
        .half_open_probes(2)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    for _ in 0..2 {
        assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    }
    assert_eq!(layer.handle().state(), CircuitState::Open);
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(
        open_error(svc.clone().oneshot(Duration::ZERO).await).remaining_wait()
            == Some(Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    dep.down.store(false, Ordering::SeqCst);

    // Two slow probes in flight take both places; a third call is rejected.
    let first = tokio::spawn(svc.clone().oneshot(Duration::from_secs(1)));
    let second = tokio::spawn(svc.clone().oneshot(Duration::from_secs(2)));
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().state(), CircuitState::HalfOpen);
    let third = open_error(svc.clone().oneshot(Duration::ZERO).await);
    assert_eq!(third.state(), CircuitState::HalfOpen);
    first.await.unwrap().unwrap();
    assert_eq!(
        layer.handle().state(),
        CircuitState::HalfOpen,
        "one probe is still out"
    );
    second.await.unwrap().unwrap();
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert_eq!(layer.handle().metrics().openings, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_with_a_growing_wait() {
    let dep = Dependency::default();
    dep.down.store(true, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::builder("slowpoke")
        .consecutive_failures(1)
        .wait_in_open_backoff(
            Backoff::exponential(Duration::from_secs(1)).with_max_delay(Duration::from_secs(3)),
        )
        .half_open_probes(1)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    let mut events = layer.handle().subscribe();
    assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    let mut waits = Vec::new();
    for _ in 0..4 {
        let open = open_error(svc.clone().oneshot(Duration::ZERO).await);
        let wait = open.remaining_wait().unwrap();
        waits.push(wait);
        tokio::time::advance(wait).await;
        // The probe fails: reopen.
        let err = svc.clone().oneshot(Duration::ZERO).await.unwrap_err();
        assert!(!err.is::<CircuitOpen>(), "the probe reached the dependency");
    }
    assert_eq!(waits, [1, 2, 3, 3].map(Duration::from_secs));
    let mut seen = Vec::new();
    while let Ok(t) = events.try_recv() {
        seen.push(t.to);
    }
    use CircuitState::{HalfOpen, Open};
    assert_eq!(
        seen,
        [
            Open, HalfOpen, Open, HalfOpen, Open, HalfOpen, Open, HalfOpen, Open
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_place_back_and_counts_as_nothing() {
    let dep = Dependency::default();
    dep.down.store(true, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::builder("c")
        .consecutive_failures(1)
        .wait_in_open(Duration::from_secs(1))
        .half_open_probes(1)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    dep.down.store(false, Ordering::SeqCst);
    // The probe is abandoned after 10 ms of a 1 h call.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        svc.clone().oneshot(Duration::from_secs(3600)),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(layer.handle().state(), CircuitState::HalfOpen);
    // Its place is free again: the next probe passes and closes the breaker.
    svc.clone().oneshot(Duration::ZERO).await.unwrap();
    assert_eq!(layer.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_reserved_in_poll_ready_is_released_when_the_service_is_dropped() {
    let dep = Dependency::default();
    dep.down.store(true, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::builder("r")
        .consecutive_failures(1)
        .wait_in_open(Duration::from_secs(1))
        .half_open_probes(1)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut holder = svc.clone();
    holder.ready().await.unwrap(); // reserves the only probe place
    let blocked = open_error(svc.clone().oneshot(Duration::ZERO).await);
    assert_eq!(blocked.state(), CircuitState::HalfOpen);
    drop(holder);
    dep.down.store(false, Ordering::SeqCst);
    svc.clone().oneshot(Duration::ZERO).await.unwrap();
    assert_eq!(layer.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker_even_when_they_succeed() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder("slow")
        .count_window(4)
        .minimum_calls(4)
        .slow_call_duration(Duration::from_millis(500))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    for latency in [10, 600, 20, 499] {
        svc.clone()
            .oneshot(Duration::from_millis(latency))
            .await
            .unwrap();
    }
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert_eq!(layer.handle().metrics().slow_calls, 1);
    svc.clone()
        .oneshot(Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_failures_older_than_the_window() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder("t")
        .time_window(Duration::from_secs(10))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    dep.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(
        layer.handle().metrics().calls,
        0,
        "the failures left the window"
    );
    dep.down.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        svc.clone().oneshot(Duration::ZERO).await.unwrap();
    }
    dep.down.store(true, Ordering::SeqCst);
    assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    // 1 failure of 4 in the window: closed (the 3 old ones would have made it 4 of 7).
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    let m = layer.handle().metrics();
    assert_eq!((m.calls, m.failures, m.failure_rate), (4, 1, Some(25.0)));
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_and_calls_from_before_a_transition_are_not_recorded() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let layer = CircuitBreakerLayer::builder("i")
        .count_window(10)
        .minimum_calls(1)
        .classify(|r: &Result<u16, std::io::Error>| match r {
            Ok(404) => Outcome::Ignored,
            Ok(500..) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(move |status: u16| {
        let gate = gate.clone();
        async move {
            if status == 0 {
                gate.notified().await;
                return Ok(500);
            }
            Ok::<_, std::io::Error>(status)
        }
    }));
    assert_eq!(svc.clone().oneshot(404).await.unwrap(), 404);
    assert_eq!(layer.handle().metrics().calls, 0);
    // A call in flight across a reset: its failure belongs to no window.
    let in_flight = tokio::spawn(svc.clone().oneshot(0));
    tokio::task::yield_now().await;
    layer.handle().reset();
    release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), 500);
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert_eq!(layer.handle().metrics().calls, 0);
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn forced_open_and_disabled_hold_until_reset() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder("f")
        .consecutive_failures(1)
        .wait_in_open(Duration::from_millis(1))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    layer.handle().force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let open = open_error(svc.clone().oneshot(Duration::ZERO).await);
    assert_eq!(
        (open.state(), open.remaining_wait()),
        (CircuitState::ForcedOpen, None)
    );
    layer.handle().disable();
    dep.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert!(
            !svc.clone()
                .oneshot(Duration::ZERO)
                .await
                .unwrap_err()
                .is::<CircuitOpen>()
        );
    }
    assert_eq!(layer.handle().state(), CircuitState::Disabled);
    layer.handle().reset();
    assert!(svc.clone().oneshot(Duration::ZERO).await.is_err());
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn partitions_trip_independently() {
    let layer = CircuitBreakerLayer::builder("hosts")
        .consecutive_failures(2)
        .build_keyed(|req: &(u8, bool)| req.0)
        .unwrap();
    let svc = layer.layer(service_fn(|(_, fail): (u8, bool)| async move {
        if fail {
            Err(std::io::Error::other("no"))
        } else {
            Ok(())
        }
    }));
    let transitions = Arc::new(AtomicUsize::new(0));
    let count = transitions.clone();
    layer.handle().on_transition(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    for _ in 0..2 {
        assert!(svc.clone().oneshot((1, true)).await.is_err());
    }
    let open = open_error(svc.clone().oneshot((1, false)).await);
    assert_eq!(open.name(), "hosts[1]");
    svc.clone().oneshot((2, false)).await.unwrap();
    let mut keys = layer.handle().keys();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2]);
    assert_eq!(
        layer.handle().get(&2).unwrap().state(),
        CircuitState::Closed
    );
    assert_eq!(transitions.load(Ordering::SeqCst), 1);
}
