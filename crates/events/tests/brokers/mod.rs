//! Scenarios every broker backend must pass, shared by `tests/{redis,rabbitmq,nats,kafka}_backend.rs`.
//!
//! Each takes a bus (publisher + subscriber) and fresh names; the caller supplies the
//! skip rule. Names are unique per test, so tests run in parallel.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_events::{
    Delivery, DeliveryStream, Envelope, Error, Publisher, Subscriber, Subscription,
};
use palisade_testkit::unique_name;

/// A subscription to `topic` and one to `dead_letter_topic`, each in a group of its
/// own (both made before anything is published, so that no broker drops what comes).
pub async fn with_dead_letters<B: Subscriber>(
    bus: &B,
    topic: &str,
    dead_letter_topic: &str,
) -> Result<(DeliveryStream, DeliveryStream), Error> {
    let stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let dead = bus
        .subscribe(&Subscription::new(dead_letter_topic, unique_name("dlq")))
        .await?;
    Ok((stream, dead))
}

/// Publishes one more event to `topic` and checks that it is `stream`'s next delivery:
/// the subscription kept running (after a malformed message, say).
pub async fn keeps_running<B: Publisher>(
    bus: &B,
    topic: &str,
    stream: &mut DeliveryStream,
) -> Result<(), Error> {
    let sent = Envelope::new("t", "test", "after");
    bus.publish(topic, sent.clone()).await?;
    assert_eq!(envelope(&next(stream).await).id, sent.id);
    Ok(())
}

/// How long a scenario waits for a delivery that must come.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The next delivery, failing the test after [`PATIENCE`].
pub async fn next(stream: &mut DeliveryStream) -> Delivery {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("subscription failed: {e:?}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no delivery within {PATIENCE:?}"),
    }
}

/// Asserts nothing arrives within `wait`.
pub async fn nothing_within(stream: &mut DeliveryStream, wait: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(wait, stream.next()).await {
        panic!("unexpected delivery: {item:?}");
    }
}

/// The envelope of a well-formed delivery.
pub fn envelope(delivery: &Delivery) -> Envelope {
    match delivery.envelope() {
        Ok(e) => e.clone(),
        Err(e) => panic!("malformed delivery: {e:?}"),
    }
}

/// An envelope using every attribute, tricky header names and a binary payload.
pub fn full_envelope() -> Envelope {
    Envelope::new("order.placed", "shop", vec![0u8, 1, 2, 255, 254, b'{'])
        .with_key("order-7")
        .with_correlation_id("req-1")
        .with_causation_id("cmd-9")
        .with_content_type("application/octet-stream")
        .with_header("tenant", "acme")
        .with_header("ce_type", "must not override the type")
        .with_header("content-type", "must not override the content type")
        .with_header("x-palisade-attempt", "must not override the attempt")
        .with_header("unicode", "grüße ✓")
        .with_header("empty", "")
}

fn numbered(topic_key: &str, n: usize) -> Envelope {
    Envelope::new("n", "test", n.to_string()).with_key(topic_key)
}

fn number(envelope: &Envelope) -> usize {
    std::str::from_utf8(&envelope.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Every attribute, header and payload byte comes back as published.
pub async fn envelope_round_trips<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let sent = full_envelope();
    bus.publish(topic, sent.clone()).await?;
    let delivery = next(&mut stream).await;
    assert_eq!(envelope(&delivery), sent);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await
}

/// Once `publish`/`publish_batch` returned, every event is there to be consumed, in order.
pub async fn confirmed_events_are_all_consumed<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")).with_prefetch(50))
        .await?;
    bus.publish(topic, numbered("k", 0)).await?;
    bus.publish_batch(topic, (1..100).map(|n| numbered("k", n)).collect())
        .await?;
    for expected in 0..100 {
        let delivery = next(&mut stream).await;
        assert_eq!(number(&envelope(&delivery)), expected);
        delivery.ack().await?;
    }
    Ok(())
}

/// A delivery neither acked nor retried, whose consumer went away, goes to another member.
pub async fn unacked_delivery_is_redelivered_after_consumer_death<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let group = unique_name("g");
    let mut first = bus.subscribe(&Subscription::new(topic, &group)).await?;
    let sent = Envelope::new("t", "test", "x");
    bus.publish(topic, sent.clone()).await?;
    let delivery = next(&mut first).await;
    assert_eq!(envelope(&delivery).id, sent.id);
    drop(delivery);
    drop(first);
    let mut second = bus.subscribe(&Subscription::new(topic, &group)).await?;
    let again = next(&mut second).await;
    assert_eq!(envelope(&again).id, sent.id);
    assert!(again.attempt() >= 2, "attempt {}", again.attempt());
    again.ack().await?;
    Ok(())
}

/// `retry(delay)` delivers the event again, not before the delay, with a higher attempt.
pub async fn retried_delivery_comes_back_after_the_delay<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let sent = Envelope::new("t", "test", "x");
    bus.publish(topic, sent.clone()).await?;
    let delivery = next(&mut stream).await;
    let started = tokio::time::Instant::now();
    delivery.retry(Duration::from_millis(300)).await?;
    let again = next(&mut stream).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(envelope(&again), sent);
    assert_eq!(again.attempt(), 2);
    again.ack().await
}

/// A retry in one group is not seen again by another group.
pub async fn retry_in_one_group_is_not_seen_by_another<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut retrying = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let mut other = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let sent = Envelope::new("t", "test", "x");
    bus.publish(topic, sent.clone()).await?;
    let delivery = next(&mut retrying).await;
    delivery.retry(Duration::from_millis(50)).await?;
    let again = next(&mut retrying).await;
    assert_eq!(envelope(&again).id, sent.id);
    again.ack().await?;
    let once = next(&mut other).await;
    assert_eq!(envelope(&once).id, sent.id);
    once.ack().await?;
    nothing_within(&mut other, Duration::from_millis(500)).await;
    Ok(())
}

/// A dead letter goes to the dead-letter topic with its reason, and not back to the group.
pub async fn dead_letter_carries_the_reason<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
    dead_letter_topic: &str,
) -> Result<(), Error> {
    let mut dead = bus
        .subscribe(&Subscription::new(dead_letter_topic, unique_name("dlq")))
        .await?;
    let mut stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")))
        .await?;
    let sent = Envelope::new("t", "test", "x").with_header("tenant", "acme");
    bus.publish(topic, sent.clone()).await?;
    let delivery = next(&mut stream).await;
    delivery.dead_letter("handler gave up: boom").await?;
    let letter = next(&mut dead).await;
    let got = envelope(&letter);
    assert_eq!(got.id, sent.id);
    assert_eq!(got.payload, sent.payload);
    assert_eq!(got.headers.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(
        got.headers
            .get("palisade-dead-letter-reason")
            .map(String::as_str),
        Some("handler gave up: boom")
    );
    letter.ack().await?;
    nothing_within(&mut stream, Duration::from_millis(500)).await;
    Ok(())
}

/// One member sees each key's events in publish order.
pub async fn order_per_key_is_kept<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut stream = bus
        .subscribe(&Subscription::new(topic, unique_name("g")).with_prefetch(64))
        .await?;
    let keys = ["a", "b", "c"];
    let batch: Vec<Envelope> = (0..60).map(|n| numbered(keys[n % 3], n)).collect();
    bus.publish_batch(topic, batch).await?;
    let mut last: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let delivery = next(&mut stream).await;
        let e = envelope(&delivery);
        let n = number(&e);
        let key = e.key.clone().unwrap_or_default();
        if let Some(previous) = last.insert(key.clone(), n) {
            assert!(previous < n, "key {key}: {n} after {previous}");
        }
        delivery.ack().await?;
    }
    Ok(())
}

/// Two members of one group split the events; together they see each exactly once.
///
/// With `prefetch` 5 each and 10 events held unsettled, each member must take 5.
pub async fn group_members_share_the_work<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let group = unique_name("g");
    let prefetch = 5;
    let mut a = bus
        .subscribe(&Subscription::new(topic, &group).with_prefetch(prefetch))
        .await?;
    let mut b = bus
        .subscribe(&Subscription::new(topic, &group).with_prefetch(prefetch))
        .await?;
    let total = 2 * prefetch;
    bus.publish_batch(
        topic,
        (0..total).map(|n| numbered(&n.to_string(), n)).collect(),
    )
    .await?;
    let mut held_a = Vec::new();
    let mut held_b = Vec::new();
    let mut seen = HashSet::new();
    while seen.len() < total {
        let (delivery, member) = tokio::select! {
            d = next(&mut a) => (d, &mut held_a),
            d = next(&mut b) => (d, &mut held_b),
        };
        assert!(seen.insert(number(&envelope(&delivery))), "duplicate");
        member.push(delivery);
    }
    assert_eq!((held_a.len(), held_b.len()), (prefetch, prefetch));
    for delivery in held_a.into_iter().chain(held_b) {
        delivery.ack().await?;
    }
    nothing_within(&mut a, Duration::from_millis(300)).await;
    nothing_within(&mut b, Duration::from_millis(300)).await;
    Ok(())
}

/// Each group gets every event.
pub async fn separate_groups_each_get_every_event<B: Publisher + Subscriber>(
    bus: &B,
    topic: &str,
) -> Result<(), Error> {
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(
            bus.subscribe(&Subscription::new(topic, unique_name("g")))
                .await?,
        );
    }
    bus.publish_batch(topic, (0..10).map(|n| numbered("k", n)).collect())
        .await?;
    for stream in &mut streams {
        let mut got = BTreeMap::new();
        for _ in 0..10 {
            let delivery = next(stream).await;
            got.insert(number(&envelope(&delivery)), ());
            delivery.ack().await?;
        }
        assert_eq!(got.len(), 10);
    }
    Ok(())
}

/// Publishes 300 events through `proxy`, cutting it twice: every publish either
/// errors or is confirmed, only publishes within ten of a cut fail, and every
/// confirmed event reaches a subscriber of `direct`.
///
/// A cut need not surface as an error: a backend that has seen the reset before the
/// next publish reconnects inside it.
pub async fn connection_cut_mid_publish_loses_no_confirmed_event<B: Publisher + Subscriber>(
    through_proxy: &B,
    direct: &B,
    proxy: &palisade_testkit::FaultProxy,
    topic: &str,
    subscription: Subscription,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut stream = direct.subscribe(&subscription).await?;
    let mut confirmed = HashSet::new();
    let mut failed = Vec::new();
    for n in 0..300 {
        if n == 100 || n == 200 {
            proxy.cut();
        }
        let envelope = Envelope::new("t", "test", n.to_string());
        let id = envelope.id;
        match through_proxy.publish(topic, envelope).await {
            Ok(()) => {
                confirmed.insert(id);
            }
            Err(e) => failed.push((n, format!("{e:?}"))),
        }
    }
    assert_eq!(confirmed.len() + failed.len(), 300);
    // The bus recovers from each cut: only the publishes right after it fail.
    assert!(
        failed.iter().all(|(n, _)| n % 100 < 10),
        "publishes long after a cut failed: {failed:?}"
    );
    let mut seen = HashSet::new();
    while !confirmed.is_subset(&seen) {
        let delivery = next(&mut stream).await;
        seen.insert(envelope(&delivery).id);
        delivery.ack().await?;
    }
    Ok(())
}

/// Consumes through `proxy` (prefetch 10), cuts it after 20 of 100 events: the
/// subscription reconnects and every event arrives.
pub async fn connection_cut_mid_consume_reconnects_and_loses_nothing<B: Publisher + Subscriber>(
    through_proxy: &B,
    direct: &B,
    proxy: &palisade_testkit::FaultProxy,
    topic: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut stream = through_proxy
        .subscribe(&Subscription::new(topic, unique_name("g")).with_prefetch(10))
        .await?;
    let first: Vec<Envelope> = (0..50)
        .map(|n| Envelope::new("t", "test", n.to_string()))
        .collect();
    let second: Vec<Envelope> = (50..100)
        .map(|n| Envelope::new("t", "test", n.to_string()))
        .collect();
    let all: HashSet<_> = first.iter().chain(&second).map(|e| e.id).collect();
    direct.publish_batch(topic, first).await?;

    let mut seen = HashSet::new();
    for _ in 0..20 {
        let delivery = next(&mut stream).await;
        seen.insert(envelope(&delivery).id);
        delivery.ack().await?;
    }
    proxy.cut();
    direct.publish_batch(topic, second).await?;
    while seen.len() < all.len() {
        let delivery = next(&mut stream).await;
        seen.insert(envelope(&delivery).id);
        // An ack lost with the connection only means a duplicate later.
        let _ = delivery.ack().await;
    }
    assert_eq!(seen, all);
    Ok(())
}
