//! The in-memory publish → handler setup that `events` (criterion, against time) and
//! `events_count` (a fixed number of events, for instruction counts) both measure: the
//! event, the handler on each side, and the latch the measuring thread waits on.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use palisade_events::consumer::{Consumer, Context, HandlerError};
use palisade_events::{Envelope, Event, MemoryBus, Publisher, Subscription};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub quantity: u32,
}

impl Event for Order {
    const TYPE: &'static str = "order.placed";
}

pub fn body() -> Vec<u8> {
    br#"{"id":1000000,"quantity":37}"#.to_vec()
}

pub fn runtime() -> Runtime {
    match Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

/// Counts handled events down and wakes the measuring thread on the last one.
#[derive(Clone, Default)]
pub struct Latch(Arc<(AtomicUsize, Notify)>);

impl Latch {
    pub fn expect(&self, n: usize) {
        self.0.0.store(n, Ordering::Release);
    }

    pub fn arrived(&self) {
        if self.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.1.notify_one();
        }
    }

    pub async fn drained(&self) {
        while self.0.0.load(Ordering::Acquire) > 0 {
            self.0.1.notified().await;
        }
    }
}

/// One measured round: expects `n` handled events on `latch`, runs `publish` on `rt`
/// and waits until the handler has counted them all; the time that took.
pub fn round(rt: &Runtime, latch: &Latch, n: usize, publish: impl Future<Output = ()>) -> Duration {
    latch.expect(n);
    let started = Instant::now();
    rt.block_on(async {
        publish.await;
        latch.drained().await;
    });
    started.elapsed()
}

/// Our side: a consumer of `orders` on `bus` whose handler decodes each event and counts
/// it down on `latch` (spawn its `run`).
pub fn palisade_consumer(bus: &MemoryBus, latch: &Latch) -> Consumer<MemoryBus> {
    let latch = latch.clone();
    Consumer::new(
        bus.clone(),
        Subscription::new("orders", "bench").with_prefetch(4096),
    )
    .concurrency(1024)
    .handle(move |order: Order, _: Context| {
        black_box((order.id, order.quantity));
        latch.arrived();
        async { Ok::<_, HandlerError>(()) }
    })
}

/// Publishes `n` events one by one, each with a payload buffer of its own, and with
/// one of `keys` ordering keys when `keys` is not zero.
pub async fn palisade_publish(bus: &MemoryBus, body: &[u8], n: usize, keys: usize) {
    for i in 0..n {
        let mut envelope = Envelope::new(Order::TYPE, "bench", Bytes::copy_from_slice(body));
        if keys > 0 {
            envelope = envelope.with_key(format!("order-{}", i % keys));
        }
        if let Err(e) = bus.publish("orders", envelope).await {
            panic!("publish: {e}");
        }
    }
}

/// The peer's side: a ruststream app on its in-memory broker, subscribed to `orders`
/// with a handler that counts down on `latch`; returns the running app (keep it) and a
/// publisher.
pub fn ruststream_app(
    rt: &Runtime,
    latch: &Latch,
) -> (
    ruststream::memory::prelude::RunningApp,
    ruststream::memory::MemoryPublisher,
) {
    use ruststream::memory::prelude::*;

    let broker = MemoryBroker::new();
    let state = latch.clone();
    let app = RustStream::new(AppInfo::new("bench", "0.0.0"))
        .on_startup(async move |()| Ok::<_, Infallible>(state))
        .with_broker(broker.clone(), |b| {
            b.include(subscriber("orders", rs::Consume).build());
        });
    match rt.block_on(app.start()) {
        Ok(running) => (running, broker.publisher()),
        Err(e) => panic!("ruststream app: {e}"),
    }
}

/// Publishes `n` messages one by one through ruststream (which copies `body` into a
/// buffer of its own for each).
pub async fn ruststream_publish(
    publisher: &ruststream::memory::MemoryPublisher,
    body: &[u8],
    n: usize,
) {
    use ruststream::OutgoingMessage;
    use ruststream::memory::prelude::*;

    for _ in 0..n {
        if let Err(e) = publisher
            .publish(OutgoingMessage::new("orders", body), None)
            .await
        {
            panic!("publish: {e}");
        }
    }
}

mod rs {
    use std::future::{Future, ready};

    use ruststream::memory::prelude::*;

    use super::{Latch, Order};

    pub struct Consume;

    impl Handle<Order, (), (), (), Latch> for Consume {
        fn handle(
            &self,
            order: &Order,
            _outs: &(),
            ctx: &mut Context<'_, (), Latch>,
        ) -> impl Future<Output = Result<(), HandlerOutcome>> + Send {
            std::hint::black_box((order.id, order.quantity));
            ctx.state().arrived();
            ready(Ok(()))
        }
    }
}
