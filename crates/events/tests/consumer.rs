//! The consumer runtime over the in-memory bus: routing, retries, dead letters, order
//! per key, bounded concurrency, shutdown, re-subscription, malformed input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_events::consumer::{Consumer, Context, HandlerError, RetryMode, UnknownEvent};
use palisade_events::inbox::MemoryInbox;
use palisade_events::{
    Acknowledge, BoxFuture, Delivery, DeliveryStream, Envelope, Error, Event, MemoryBus, Publisher,
    Subscriber, Subscription,
};
use palisade_resilience::backoff::Backoff;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Numbered {
    key: String,
    n: u32,
}

impl Event for Numbered {
    const TYPE: &'static str = "test.numbered";
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

fn numbered(key: &str, n: u32) -> Envelope {
    let event = Numbered {
        key: key.to_owned(),
        n,
    };
    match Envelope::from_event(&event, "test") {
        Ok(e) => e,
        Err(e) => panic!("encode: {e}"),
    }
}

type Log = Arc<Mutex<Vec<(String, u32)>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Log) -> Vec<(String, u32)> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => panic!("consumer task failed: {e}"),
        }
    }
}

fn start<S: Subscriber, C: palisade_events::Codec>(consumer: Consumer<S, C>) -> Running {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    Running { shutdown, task }
}

/// Waits (on the paused clock: instantly) until `cond` holds, failing after an hour.
async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..36_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition never held");
}

async fn next(stream: &mut DeliveryStream) -> Delivery {
    match tokio::time::timeout(Duration::from_secs(3600), stream.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no delivery: {other:?}"),
    }
}

fn reason(delivery: &Delivery) -> String {
    delivery
        .envelope()
        .ok()
        .and_then(|e| e.headers.get("palisade-dead-letter-reason").cloned())
        .unwrap_or_default()
}

/// Publishes events 0..n to topic `t`, keyed round robin over `keys`.
async fn publish_round_robin(bus: &MemoryBus, keys: &[&str], n: u32) -> Result<(), Error> {
    let events = (0..n)
        .map(|i| numbered(keys[i as usize % keys.len()], i))
        .collect();
    bus.publish_batch("t", events).await
}

/// Each key's events were handled in increasing order.
fn assert_in_order_per_key(handled: &[(String, u32)]) {
    let mut last: HashMap<&str, u32> = HashMap::new();
    for (key, n) in handled {
        if let Some(previous) = last.insert(key, *n) {
            assert!(previous < *n, "key {key}: {n} after {previous}");
        }
    }
}

fn recorder(
    log: &Log,
) -> impl Fn(Numbered, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static
{
    let log = Arc::clone(log);
    move |event: Numbered, _ctx: Context| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            if let Ok(mut l) = log.lock() {
                l.push((event.key, event.n));
            }
            Ok(())
        })
    }
}

/// A handler that takes `delay` (a sleep: it waits, so it runs in a task), then logs.
fn slow_recorder(
    log: &Log,
    delay: Duration,
) -> impl Fn(Numbered, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static
{
    let log = Arc::clone(log);
    move |event: Numbered, _ctx: Context| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut l) = log.lock() {
                l.push((event.key, event.n));
            }
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn typed_handler_gets_decoded_events_and_they_are_acked() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let seen = log();
    let running =
        start(Consumer::new(bus.clone(), Subscription::new("t", "g")).handle(recorder(&seen)));
    bus.publish_batch("t", (0..5).map(|n| numbered("k", n)).collect())
        .await?;
    eventually(|| entries(&seen).len() == 5).await;
    running.stop().await?;
    assert_eq!(
        entries(&seen),
        (0..5).map(|n| ("k".to_owned(), n)).collect::<Vec<_>>()
    );
    assert_eq!(bus.pending("t", "g"), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn failing_handler_is_retried_with_backoff_then_dead_lettered_with_the_last_error()
-> Result<(), Error> {
    let bus = MemoryBus::new();
    let mut dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::from_secs(10)))
            .handle(move |_: Numbered, ctx: Context| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(format!("boom on attempt {}", ctx.attempt()))
                }
            }),
    );
    let started = tokio::time::Instant::now();
    bus.publish("t", numbered("k", 1)).await?;
    let letter = next(&mut dlq).await;
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        reason(&letter),
        "gave up after 3 attempts: boom on attempt 3"
    );
    running.stop().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn redeliver_mode_hands_retries_to_the_broker_and_counts_its_attempts() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let mut dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .max_attempts(4)
            .retry_mode(RetryMode::Redeliver)
            .backoff(Backoff::exponential(Duration::from_secs(1)))
            .handle(move |_: Numbered, ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    if let Ok(mut s) = seen.lock() {
                        s.push((ctx.attempt(), tokio::time::Instant::now()));
                    }
                    Err::<(), _>("nope")
                }
            }),
    );
    bus.publish("t", numbered("k", 1)).await?;
    let letter = next(&mut dlq).await;
    assert_eq!(reason(&letter), "gave up after 4 attempts: nope");
    let attempts = attempts.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Exponential: 1 s, 2 s, 4 s between attempts.
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4]);
    running.stop().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn permanent_error_dead_letters_at_once() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let mut dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g")).handle(
            move |_: Numbered, _: Context| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(HandlerError::permanent("order does not exist")) }
            },
        ),
    );
    bus.publish("t", numbered("k", 1)).await?;
    let letter = next(&mut dlq).await;
    assert_eq!(reason(&letter), "order does not exist");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    running.stop().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn bad_payloads_are_dead_lettered_at_once_with_the_reason_and_the_consumer_keeps_running()
-> Result<(), Error> {
    let bus = MemoryBus::new();
    let mut dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
    let seen = log();
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .max_payload(1024)
            .handle(recorder(&seen)),
    );
    let truncated = Envelope::new(Numbered::TYPE, "test", r#"{"key":"k","n":"#);
    let wrong_shape = Envelope::new(Numbered::TYPE, "test", r#"{"key":"k"}"#);
    let wrong_type = numbered("k", 1).with_content_type("application/xml");
    let oversized = Envelope::new(Numbered::TYPE, "test", vec![b' '; 2048]);
    for bad in [&truncated, &wrong_shape, &wrong_type, &oversized] {
        bus.publish("t", bad.clone()).await?;
    }
    bus.publish("t", numbered("k", 2)).await?;
    let mut reasons = HashMap::new();
    for _ in 0..4 {
        let letter = next(&mut dlq).await;
        let id = letter.envelope().map(|e| e.id).unwrap_or_default();
        reasons.insert(id, reason(&letter));
        letter.ack().await?;
    }
    assert!(
        reasons[&truncated.id].starts_with("failed to decode the event payload: EOF"),
        "{reasons:?}"
    );
    assert!(
        reasons[&wrong_shape.id].contains("missing field `n`"),
        "{reasons:?}"
    );
    assert!(
        reasons[&wrong_type.id].contains("\"application/xml\""),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[&oversized.id],
        "payload of 2048 bytes exceeds the limit of 1024 bytes"
    );
    eventually(|| entries(&seen) == [("k".to_owned(), 2)]).await;
    running.stop().await?;
    Ok(())
}

/// A subscriber yielding one message that is not an envelope, then the bus's deliveries.
struct WithMalformed {
    bus: MemoryBus,
    dead: Arc<Mutex<Vec<String>>>,
}

struct RecordingAck(Arc<Mutex<Vec<String>>>);

impl Acknowledge for RecordingAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn retry(self: Box<Self>, _: Duration) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        if let Ok(mut d) = self.0.lock() {
            d.push(reason);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Subscriber for WithMalformed {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let malformed = Delivery::malformed(
            Error::Malformed {
                reason: "missing required attribute ce_id".to_owned(),
            },
            1,
            Box::new(RecordingAck(Arc::clone(&self.dead))),
        );
        let rest = self.bus.subscribe(subscription).await?;
        Ok(Box::pin(
            futures_util::stream::once(async { Ok(malformed) }).chain(rest),
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_missing_a_required_header_is_dead_lettered_and_the_next_is_handled()
-> Result<(), Error> {
    let bus = MemoryBus::new();
    let dead = Arc::new(Mutex::new(Vec::new()));
    let seen = log();
    let subscriber = WithMalformed {
        bus: bus.clone(),
        dead: Arc::clone(&dead),
    };
    let running =
        start(Consumer::new(subscriber, Subscription::new("t", "g")).handle(recorder(&seen)));
    bus.publish("t", numbered("k", 1)).await?;
    eventually(|| entries(&seen).len() == 1).await;
    running.stop().await?;
    let dead = dead.lock().map(|d| d.clone()).unwrap_or_default();
    assert_eq!(
        dead,
        ["malformed message: missing required attribute ce_id"]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn unknown_event_types_are_acked_by_default_or_dead_lettered_when_configured()
-> Result<(), Error> {
    let bus = MemoryBus::new();
    let mut dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
    let seen = log();
    let acking =
        start(Consumer::new(bus.clone(), Subscription::new("t", "a")).handle(recorder(&seen)));
    let strict = start(
        Consumer::new(bus.clone(), Subscription::new("t", "b"))
            .unknown_events(UnknownEvent::DeadLetter)
            .handle(recorder(&seen)),
    );
    // Both groups exist before the event is published (a topic with no group yet
    // keeps its events for the first group only).
    tokio::time::sleep(Duration::from_millis(10)).await;
    bus.publish("t", Envelope::new("test.unheard.of", "test", "{}"))
        .await?;
    let letter = next(&mut dlq).await;
    assert_eq!(
        reason(&letter),
        "no handler for event type \"test.unheard.of\""
    );
    assert_eq!(
        letter
            .envelope()
            .ok()
            .and_then(|e| e.headers.get("palisade-dead-letter-group").cloned()),
        Some("b".to_owned())
    );
    eventually(|| bus.pending("t", "a") == 0).await;
    acking.stop().await?;
    strict.stop().await?;
    assert!(entries(&seen).is_empty());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn order_per_key_is_kept_while_different_keys_run_in_parallel() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let seen = log();
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (log2, now2, most2) = (
        Arc::clone(&seen),
        Arc::clone(&running_now),
        Arc::clone(&most),
    );
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .concurrency(8)
            .handle(move |e: Numbered, _: Context| {
                let (log, now, most) = (Arc::clone(&log2), Arc::clone(&now2), Arc::clone(&most2));
                async move {
                    let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(current, Ordering::SeqCst);
                    // Uneven work, so a key that ran ahead would show.
                    tokio::time::sleep(Duration::from_millis(u64::from((e.n * 7919) % 13))).await;
                    if let Ok(mut l) = log.lock() {
                        l.push((e.key, e.n));
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }),
    );
    let keys = ["a", "b", "c", "d", "e", "f"];
    publish_round_robin(&bus, &keys, 300).await?;
    eventually(|| entries(&seen).len() == 300).await;
    running.stop().await?;
    assert_in_order_per_key(&entries(&seen));
    let most = most.load(Ordering::SeqCst);
    assert!(most > 1, "keys never ran in parallel");
    assert!(
        most <= 6,
        "two events of one key ran at once: {most} running"
    );
    Ok(())
}

/// Handlers that finish without waiting run inline in the consumer's loop, those that
/// wait run as tasks: mixing both keeps order per key, and a key stuck in a slow
/// handler holds up neither quick keys nor its own later events' order.
#[tokio::test(start_paused = true)]
async fn quick_and_waiting_handlers_mix_without_breaking_order_per_key() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let seen = log();
    let log2 = Arc::clone(&seen);
    let running = start(
        // Room for the slow key's 50 events waiting behind its first (each holds a
        // place in `concurrency`) and the quick keys' events besides.
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .concurrency(64)
            .handle(move |e: Numbered, _: Context| {
                let log = Arc::clone(&log2);
                async move {
                    match (e.key.as_str(), e.n % 3) {
                        // One key waits an hour on its first event.
                        ("slow", _) if e.n < 3 => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        (_, 0) => tokio::time::sleep(Duration::from_millis(5)).await,
                        _ => {}
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push((e.key, e.n));
                    }
                    Ok::<_, HandlerError>(())
                }
            }),
    );
    let keys = ["slow", "a", "b", "c"];
    publish_round_robin(&bus, &keys, 200).await?;
    // Every event of the quick keys is handled long before the slow key's hour is up.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let early = entries(&seen);
    assert_eq!(early.iter().filter(|(k, _)| k != "slow").count(), 150);
    assert!(early.iter().all(|(k, _)| k != "slow"), "slow key ran ahead");
    eventually(|| entries(&seen).len() == 200).await;
    running.stop().await?;
    assert_in_order_per_key(&entries(&seen));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn concurrency_bounds_how_many_handlers_run_at_once() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let done = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (done2, now2, most2) = (Arc::clone(&done), Arc::clone(&now), Arc::clone(&most));
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .concurrency(4)
            .handle(move |_: Numbered, _: Context| {
                let (done, now, most) = (Arc::clone(&done2), Arc::clone(&now2), Arc::clone(&most2));
                async move {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }),
    );
    bus.publish_batch("t", (0..40).map(|n| numbered(&n.to_string(), n)).collect())
        .await?;
    eventually(|| done.load(Ordering::SeqCst) == 40).await;
    running.stop().await?;
    assert_eq!(most.load(Ordering::SeqCst), 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_and_acks_in_flight_work_then_stops_fetching() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s2, f2) = (Arc::clone(&started), Arc::clone(&finished));
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .concurrency(3)
            .handle(move |_: Numbered, _: Context| {
                let (s, f) = (Arc::clone(&s2), Arc::clone(&f2));
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }),
    );
    bus.publish_batch("t", (0..5).map(|n| numbered(&n.to_string(), n)).collect())
        .await?;
    eventually(|| started.load(Ordering::SeqCst) == 3).await;
    let before = tokio::time::Instant::now();
    running.stop().await?;
    assert!(
        before.elapsed() >= Duration::from_secs(4),
        "returned before in-flight work finished"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 3);
    // The three in flight were acked; the other two wait for the next consumer.
    assert_eq!(bus.pending("t", "g"), 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(started.load(Ordering::SeqCst), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_an_in_process_backoff_hands_the_event_back() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .backoff(Backoff::constant(Duration::from_secs(3600)))
            .handle(move |_: Numbered, _: Context| {
                c2.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("down") }
            }),
    );
    bus.publish("t", numbered("k", 1)).await?;
    eventually(|| calls.load(Ordering::SeqCst) == 1).await;
    let before = tokio::time::Instant::now();
    running.stop().await?;
    assert!(before.elapsed() < Duration::from_secs(1));
    assert_eq!(bus.pending("t", "g"), 1);
    Ok(())
}

/// Fails the first `failures` subscriptions with a stream error.
struct Flaky {
    bus: MemoryBus,
    subscribes: Arc<AtomicUsize>,
    failures: usize,
}

impl Subscriber for Flaky {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        let n = self.subscribes.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            let lost = Error::connection(
                "test",
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            );
            return Ok(Box::pin(futures_util::stream::iter([Err(lost)])));
        }
        self.bus.subscribe(subscription).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_subscription_is_re_established_with_backoff() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let subscribes = Arc::new(AtomicUsize::new(0));
    let seen = log();
    let flaky = Flaky {
        bus: bus.clone(),
        subscribes: Arc::clone(&subscribes),
        failures: 3,
    };
    let started = tokio::time::Instant::now();
    let running = start(
        Consumer::new(flaky, Subscription::new("t", "g"))
            .reconnect_backoff(Backoff::exponential(Duration::from_secs(1)))
            .handle(recorder(&seen)),
    );
    bus.publish("t", numbered("k", 1)).await?;
    eventually(|| entries(&seen).len() == 1).await;
    assert_eq!(subscribes.load(Ordering::SeqCst), 4);
    // 1 s + 2 s + 4 s of backoff before the fourth subscription.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    running.stop().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_retried_like_a_failure() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .backoff(Backoff::constant(Duration::from_millis(10)))
            .handle(move |_: Numbered, ctx: Context| {
                c2.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(ctx.attempt() > 1, "first attempt panics");
                    Ok::<_, HandlerError>(())
                }
            }),
    );
    bus.publish("t", numbered("k", 1)).await?;
    eventually(|| calls.load(Ordering::SeqCst) == 2 && bus.pending("t", "g") == 0).await;
    running.stop().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn with_an_inbox_a_duplicate_event_has_its_effect_once() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let seen = log();
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g"))
            .inbox(MemoryInbox::new())
            .handle(recorder(&seen)),
    );
    let event = numbered("k", 1);
    bus.publish_batch(
        "t",
        vec![event.clone(), event.clone(), numbered("k", 2), event],
    )
    .await?;
    eventually(|| bus.pending("t", "g") == 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop().await?;
    assert_eq!(entries(&seen), [("k".to_owned(), 1), ("k".to_owned(), 2)]);
    Ok(())
}

#[tokio::test]
async fn an_invalid_backoff_is_a_config_error_not_a_panic() {
    let bus = MemoryBus::new();
    let result = Consumer::new(bus, Subscription::new("t", "g"))
        .backoff(Backoff::exponential(Duration::ZERO))
        .run(CancellationToken::new())
        .await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn a_closed_bus_ends_the_consumer_with_closed() -> Result<(), Error> {
    let bus = MemoryBus::new();
    let seen = log();
    let running =
        start(Consumer::new(bus.clone(), Subscription::new("t", "g")).handle(recorder(&seen)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    bus.close();
    let result = running.task.await;
    assert!(matches!(result, Ok(Err(Error::Closed))), "{result:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn events_a_stopped_consumer_did_not_finish_are_handled_by_the_next_once() -> Result<(), Error>
{
    let bus = MemoryBus::new();
    let seen = log();
    let sub = Subscription::new("t", "g").with_prefetch(4);
    let first = start(
        Consumer::new(bus.clone(), sub.clone())
            .concurrency(4)
            .handle(slow_recorder(&seen, Duration::from_secs(1))),
    );
    bus.publish_batch("t", (0..20).map(|n| numbered(&n.to_string(), n)).collect())
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.stop().await?;
    let by_first = entries(&seen).len();
    assert!((4..20).contains(&by_first), "{by_first}");
    let second = start(
        Consumer::new(bus.clone(), sub)
            .concurrency(4)
            .handle(slow_recorder(&seen, Duration::from_secs(1))),
    );
    eventually(|| entries(&seen).len() >= 20).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    second.stop().await?;
    let mut all: Vec<u32> = entries(&seen).into_iter().map(|(_, n)| n).collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    Ok(())
}

/// Counts the spans named `event` it is asked to make, with everything enabled.
struct EventSpans(Arc<AtomicUsize>);

impl tracing::Subscriber for EventSpans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if span.metadata().name() == "event" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// With spans recorded, each delivery is handled in a span of its own (the path that
/// does not reuse the route's slot), and every event is handled once.
#[test]
fn with_spans_recorded_each_delivery_is_handled_in_its_span() -> Result<(), Error> {
    let spans = Arc::new(AtomicUsize::new(0));
    let (handled, mut done) = tokio::sync::mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
    tracing::subscriber::with_default(EventSpans(Arc::clone(&spans)), || {
        runtime.block_on(async {
            let bus = MemoryBus::new();
            let consumer = Consumer::new(bus.clone(), Subscription::new("t", "g")).handle(
                move |event: Numbered, _: Context| {
                    let _ = handled.send(event.n);
                    async { Ok::<_, HandlerError>(()) }
                },
            );
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(consumer.run(shutdown.clone()));
            for n in 0..5 {
                bus.publish("t", numbered(&format!("k{n}"), n)).await?;
            }
            let mut got = Vec::new();
            for _ in 0..5 {
                match tokio::time::timeout(Duration::from_secs(5), done.recv()).await {
                    Ok(Some(n)) => got.push(n),
                    other => panic!("handled {got:?}, then {other:?}"),
                }
            }
            got.sort_unstable();
            assert_eq!(got, vec![0, 1, 2, 3, 4]);
            shutdown.cancel();
            task.await.map_err(|e| Error::Config(e.to_string()))?
        })
    })?;
    assert_eq!(spans.load(Ordering::SeqCst), 5);
    Ok(())
}

/// A bounded bus holds a fast publisher back to its slow consumer: every publish
/// returns with no more than the capacity waiting, and every event is handled once, in
/// order per key.
#[tokio::test(start_paused = true)]
async fn a_bounded_bus_holds_a_publisher_to_its_slow_consumer() -> Result<(), Error> {
    const CAPACITY: usize = 16;
    let bus = MemoryBus::with_capacity(CAPACITY);
    let seen = log();
    let running = start(
        Consumer::new(bus.clone(), Subscription::new("t", "g").with_prefetch(4))
            .concurrency(4)
            .handle(slow_recorder(&seen, Duration::from_millis(5))),
    );
    let keys = ["a", "b", "c"];
    // Once the consumer's group exists: events for a topic without one are kept for it
    // whatever the capacity.
    bus.publish("t", numbered("a", 0)).await?;
    eventually(|| entries(&seen).len() == 1).await;
    let started = tokio::time::Instant::now();
    let mut most = 0;
    for n in 1..300_u32 {
        bus.publish("t", numbered(keys[n as usize % 3], n)).await?;
        let waiting = bus.pending("t", "g");
        assert!(waiting <= CAPACITY, "{waiting} waiting after publish {n}");
        most = most.max(waiting);
    }
    // Held back: publishing took about as long as handling (299 events, 3 keys at a
    // time, 5 ms each), not no time at all.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(most, CAPACITY, "the bound was never reached");
    eventually(|| entries(&seen).len() == 300).await;
    running.stop().await?;
    let handled = entries(&seen);
    assert_in_order_per_key(&handled);
    let mut numbers: Vec<u32> = handled.iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..300).collect::<Vec<_>>());
    Ok(())
}
