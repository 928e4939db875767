//! Load shedding by priority: lower priorities are refused first, the capacity can follow
//! an adaptive limit, and a model proptest of admissions over random arrivals and
//! departures (completed or cancelled).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;

use palisade_resilience::BoxError;
use palisade_resilience::adaptive::{AdaptiveConcurrencyLayer, Aimd};
use palisade_resilience::load_shed::{Capacity, LoadShedLayer, Shed};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt, service_fn};

type Call = Pin<Box<dyn Future<Output = Result<u8, BoxError>> + Send>>;

/// A request: its priority and the signal that completes it.
type Req = (u8, oneshot::Receiver<()>);

fn held() -> impl Service<Req, Response = u8, Error = std::io::Error, Future: Send + 'static> + Clone
{
    service_fn(|(p, done): Req| async move {
        let _ = done.await;
        Ok::<_, std::io::Error>(p)
    })
}

async fn start<S>(svc: &mut S, priority: u8) -> (Call, oneshot::Sender<()>)
where
    S: Service<Req, Response = u8, Error = BoxError>,
    S::Future: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let fut = svc.ready().await.unwrap().call((priority, rx));
    (Box::pin(fut), tx)
}

#[tokio::test]
async fn lower_priorities_are_shed_first_as_load_rises() {
    let layer = LoadShedLayer::builder("edge", Capacity::Fixed(10))
        .shares(vec![1.0, 0.8, 0.5])
        .build(|r: &Req| r.0)
        .unwrap();
    let mut svc = layer.layer(held());
    let mut running = Vec::new();
    for _ in 0..5 {
        running.push(start(&mut svc, 2).await);
    }
    // 5 of 10 in flight: priority 2 (50 %) is now shed, 1 and 0 are not.
    let (shed, _tx) = start(&mut svc, 2).await;
    let err = shed.await.unwrap_err();
    let shed = err.downcast_ref::<Shed>().unwrap();
    assert_eq!(
        (shed.priority(), shed.in_flight(), shed.allowed()),
        (2, 5, 5)
    );
    for _ in 0..3 {
        running.push(start(&mut svc, 1).await);
    }
    let (shed, _tx) = start(&mut svc, 1).await;
    assert!(shed.await.unwrap_err().is::<Shed>());
    for _ in 0..2 {
        running.push(start(&mut svc, 0).await);
    }
    let (shed, _tx) = start(&mut svc, 0).await;
    assert!(shed.await.unwrap_err().is::<Shed>());
    assert_eq!(layer.handle().in_flight(), 10);
    assert_eq!(
        (
            layer.handle().shed(0),
            layer.handle().shed(1),
            layer.handle().shed(2)
        ),
        (1, 1, 1)
    );
    // Completing and cancelling both give capacity back.
    let (fut, tx) = running.pop().unwrap();
    tx.send(()).unwrap();
    assert_eq!(fut.await.unwrap(), 0);
    running.pop();
    assert_eq!(layer.handle().in_flight(), 8);
}

#[tokio::test]
async fn the_capacity_can_follow_an_adaptive_limit() {
    let limiter = AdaptiveConcurrencyLayer::new("db", Aimd::new(4, 1, 100).unwrap());
    let layer = LoadShedLayer::builder("edge", Capacity::Adaptive(limiter.handle().clone()))
        .shares(vec![1.0, 0.5])
        .build(|r: &Req| r.0)
        .unwrap();
    assert_eq!(
        (layer.handle().allowed(0), layer.handle().allowed(1)),
        (4, 2)
    );
    let mut svc = layer.layer(held());
    let _a = start(&mut svc, 1).await;
    let _b = start(&mut svc, 1).await;
    let (third, _tx) = start(&mut svc, 1).await;
    assert!(third.await.unwrap_err().is::<Shed>());
}

#[derive(Clone, Debug)]
enum Op {
    Arrive(u8),
    Leave { index: usize, cancel: bool },
}

proptest! {
    #[test]
    fn admissions_match_the_shares_model(
        capacity in 1u32..12,
        mut shares in prop::collection::vec(1u32..=100, 1..5),
        ops in prop::collection::vec(prop_oneof![
            (0u8..6).prop_map(Op::Arrive),
            (any::<usize>(), any::<bool>()).prop_map(|(index, cancel)| Op::Leave { index, cancel }),
        ], 1..80),
    ) {
        shares.sort_unstable_by(|a, b| b.cmp(a));
        let shares: Vec<f64> = shares.into_iter().map(|s| f64::from(s) / 100.0).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let layer = LoadShedLayer::builder("p", Capacity::Fixed(capacity))
                .shares(shares.clone())
                .build(|r: &Req| r.0)
                .unwrap();
            let mut svc = layer.layer(held());
            let mut running: Vec<(Call, oneshot::Sender<()>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Arrive(p) => {
                        let allowed = (f64::from(capacity) * shares[usize::from(p).min(shares.len() - 1)]).ceil() as usize;
                        let admitted = running.len() < allowed;
                        let (fut, tx) = start(&mut svc, p).await;
                        if admitted {
                            running.push((fut, tx));
                        } else {
                            let err = fut.await.unwrap_err();
                            prop_assert!(err.is::<Shed>());
                            // Every less important priority is refused now too.
                            for q in p..6 {
                                prop_assert!(layer.handle().allowed(q) <= running.len() as u32);
                            }
                        }
                    }
                    Op::Leave { index, cancel } if !running.is_empty() => {
                        let (fut, tx) = running.swap_remove(index % running.len());
                        if !cancel {
                            tx.send(()).unwrap();
                            fut.await.unwrap();
                        }
                    }
                    Op::Leave { .. } => {}
                }
                prop_assert_eq!(layer.handle().in_flight() as usize, running.len());
            }
            Ok(())
        })?;
    }
}
