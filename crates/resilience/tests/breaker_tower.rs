//! Tower contract: readiness stays right when the breaker is cloned inside `call`, driven
//! through `Buffer`, or wraps a service that is not ready.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_resilience::BoxError;
use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

fn flaky(
    down: Arc<AtomicBool>,
) -> impl Service<u32, Response = u32, Error = std::io::Error, Future: Send> + Clone + Send + 'static
{
    service_fn(move |x: u32| {
        let down = down.load(Ordering::SeqCst);
        async move {
            if down {
                Err(std::io::Error::other("down"))
            } else {
                Ok(x)
            }
        }
    })
}

fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder("contract")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(1))
        .half_open_probes(1)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_clone_called_without_poll_ready_asks_the_breaker_in_call() {
    let layer = breaker();
    let svc = layer.layer(flaky(Arc::default()));
    // Closed: a fresh clone called directly goes through.
    assert_eq!(svc.clone().call(7).await.unwrap(), 7);
    layer.handle().force_open();
    let err = svc.clone().call(7).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
}

/// The pattern of tower's retry and of many user layers: call the *ready* service and
/// leave a fresh clone in its place.
#[derive(Clone)]
struct SwapInCall<S>(S);

impl<S> Service<u32> for SwapInCall<S>
where
    S: Service<u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: u32) -> Self::Future {
        let clone = self.0.clone();
        let mut ready = std::mem::replace(&mut self.0, clone);
        Box::pin(async move { ready.call(req).await })
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_reserved_in_poll_ready_survives_a_clone_and_swap_in_call() {
    let down = Arc::new(AtomicBool::new(true));
    let layer = breaker();
    let mut svc = SwapInCall(layer.layer(flaky(down.clone())));
    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(1).await.is_err());
    }
    assert_eq!(layer.handle().state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    down.store(false, Ordering::SeqCst);
    // poll_ready reserves the single probe place; the swapped-in clone has none, the
    // swapped-out ready one carries it into the call.
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 5);
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert_eq!(layer.handle().metrics().rejected, 0);
}

#[tokio::test(start_paused = true)]
async fn behind_buffer_an_open_breaker_rejects_each_call_and_the_buffer_survives_to_recover() {
    let down = Arc::new(AtomicBool::new(true));
    let layer = breaker();
    let svc = ServiceBuilder::new()
        .buffer(16)
        .layer(layer.clone())
        .service(flaky(down.clone()));
    for _ in 0..2 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(!err.is::<CircuitOpen>());
    }
    for _ in 0..5 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "got {err}");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    down.store(false, Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(9).await.unwrap(), 9);
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    for i in 0..10 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
    }
}

/// A service that never becomes ready.
#[derive(Clone)]
struct NeverReady;

impl Service<u32> for NeverReady {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Pending
    }

    fn call(&mut self, req: u32) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

#[tokio::test(start_paused = true)]
async fn while_open_poll_ready_answers_at_once_even_if_the_inner_service_is_not_ready() {
    let layer = breaker();
    let mut svc = layer.layer(NeverReady);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(
        svc.poll_ready(&mut cx).is_pending(),
        "closed: readiness is the inner's"
    );
    layer.handle().force_open();
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    layer.handle().reset();
    assert!(
        svc.poll_ready(&mut cx).is_pending(),
        "closed again: back to the inner's"
    );
}

/// An inner service with per-instance readiness, like tower's `ConcurrencyLimit` or
/// `Buffer`: a clone starts unready, and `call` on an unready instance is a contract
/// violation (reported as an error here instead of tower's panic).
#[derive(Default)]
struct ReadinessProbe {
    ready: bool,
}

impl Clone for ReadinessProbe {
    fn clone(&self) -> Self {
        Self { ready: false }
    }
}

impl Service<u32> for ReadinessProbe {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        let was_ready = std::mem::replace(&mut self.ready, false);
        std::future::ready(if was_ready {
            Ok(req)
        } else {
            Err("tower contract violated: call without poll_ready".into())
        })
    }
}

async fn exercise<S>(mut svc: S)
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone,
{
    for i in 0..20 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
        // Also through clones made and readied independently, as Buffer workers and
        // retries do.
        let mut clone = svc.clone();
        assert_eq!(clone.ready().await.unwrap().call(i).await.unwrap(), i);
    }
}

#[tokio::test(start_paused = true)]
async fn every_layer_calls_the_instance_that_was_polled_ready() {
    use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
    use palisade_resilience::chaos::ChaosLayer;
    use palisade_resilience::hedge::HedgeLayer;
    use palisade_resilience::load_shed::{Capacity, LoadShedLayer};

    exercise(breaker().layer(ReadinessProbe::default())).await;
    let keyed = CircuitBreakerLayer::builder("k")
        .build_keyed(|x: &u32| x % 3)
        .unwrap();
    exercise(keyed.layer(ReadinessProbe::default())).await;
    exercise(
        AdaptiveConcurrencyLayer::new("a", Aimd::new(4, 1, 8).unwrap())
            .layer(ReadinessProbe::default()),
    )
    .await;
    exercise(
        LoadShedLayer::builder("s", Capacity::Fixed(4))
            .build(|_: &u32| 0)
            .unwrap()
            .layer(ReadinessProbe::default()),
    )
    .await;
    exercise(
        ChaosLayer::builder(1)
            .latency(0.5, Duration::ZERO, Duration::from_millis(5))
            .build()
            .unwrap()
            .layer(ReadinessProbe::default()),
    )
    .await;
    exercise(
        HedgeLayer::fixed(Duration::from_millis(1))
            .build()
            .unwrap()
            .layer(ReadinessProbe::default()),
    )
    .await;
}

/// The original attempt takes 100 ms and the hedge (sent after 1 ms) 1 ms, so the answer
/// comes from the hedge's clone, which the hedge must drive to readiness itself.
#[tokio::test(start_paused = true)]
async fn a_hedge_drives_its_own_clone_to_readiness() {
    use palisade_resilience::hedge::HedgeLayer;
    use std::sync::atomic::AtomicUsize;

    let calls = Arc::new(AtomicUsize::new(0));
    let slow_first = tower::ServiceBuilder::new()
        .map_future(move |f: std::future::Ready<Result<u32, BoxError>>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                tokio::time::sleep(Duration::from_millis(if first { 100 } else { 1 })).await;
                f.await
            }
        })
        .service(ReadinessProbe::default());
    let layer = HedgeLayer::fixed(Duration::from_millis(1)).build().unwrap();
    let mut svc = layer.layer(slow_first);
    let start = tokio::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(2),
        "the hedge answered"
    );
    assert_eq!((layer.hedges_sent(), layer.hedges_won()), (1, 1));
}
