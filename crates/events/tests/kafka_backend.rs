//! The Kafka backend against librdkafka's in-process mock cluster.
#![cfg(feature = "kafka")]

mod brokers;

use std::collections::HashSet;
use std::time::Duration;

use palisade_events::backend::kafka::{KafkaBus, KafkaOptions};
use palisade_events::{Envelope, Error, Publisher, Subscriber, Subscription};
use palisade_testkit::unique_name;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

type BoxResult = Result<(), Box<dyn std::error::Error>>;

/// A mock cluster with `topic` (3 partitions) and its dead-letter topic.
fn cluster(
    topic: &str,
) -> Result<(MockCluster<'static, DefaultProducerContext>, KafkaBus), Box<dyn std::error::Error>> {
    cluster_with(topic, |options| options)
}

fn cluster_with(
    topic: &str,
    tune: impl FnOnce(KafkaOptions) -> KafkaOptions,
) -> Result<(MockCluster<'static, DefaultProducerContext>, KafkaBus), Box<dyn std::error::Error>> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(topic, 3, 1)?;
    cluster.create_topic(&format!("{topic}.dlq"), 1, 1)?;
    let bus = KafkaBus::with_options(tune(
        KafkaOptions::new(cluster.bootstrap_servers())
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "500"),
    ))?;
    Ok((cluster, bus))
}

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> BoxResult {
            let topic = unique_name("topic");
            let (_cluster, bus) = cluster(&topic)?;
            brokers::$name(&bus, &topic).await?;
            Ok(())
        }
    };
}

scenario!(envelope_round_trips);
scenario!(confirmed_events_are_all_consumed);
scenario!(retried_delivery_comes_back_after_the_delay);
scenario!(order_per_key_is_kept);
scenario!(separate_groups_each_get_every_event);
scenario!(retry_in_one_group_is_not_seen_by_another);

/// The reader fills the envelopes of acked deliveries again with the records it reads
/// next: each record read that way holds exactly its own attributes, whether the one
/// before it in that envelope had a key, ids, free headers or a longer payload or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_filled_again_hold_only_their_own_record() -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster(&topic)?;
    let mut stream = bus
        .subscribe(&Subscription::new(&topic, unique_name("g")))
        .await?;
    let sent: Vec<Envelope> = (0..300_usize)
        .map(|i| {
            let mut envelope = Envelope::new("t", "test", vec![b'x'; i % 7 * 40]);
            if i % 2 == 0 {
                envelope = envelope.with_key(format!("key-{}", "k".repeat(i % 5)));
            }
            if i % 3 == 0 {
                envelope = envelope.with_correlation_id(format!("c{i}"));
            }
            if i % 5 == 0 {
                envelope = envelope.with_causation_id("z".repeat(i % 300));
            }
            if i % 4 == 0 {
                envelope = envelope.with_header("tenant", format!("t{i}"));
            }
            envelope
        })
        .collect();
    bus.publish_batch(&topic, sent.clone()).await?;
    let mut received = std::collections::HashMap::new();
    for _ in 0..sent.len() {
        let delivery = brokers::next(&mut stream).await;
        let envelope = brokers::envelope(&delivery);
        delivery.ack().await?;
        received.insert(envelope.id, envelope);
    }
    assert_eq!(received.len(), sent.len());
    for envelope in &sent {
        assert_eq!(received.get(&envelope.id), Some(envelope));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_carries_the_reason() -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster(&topic)?;
    brokers::dead_letter_carries_the_reason(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    Ok(())
}

/// Kafka has no delivery count, so the redelivery starts again at attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_record_is_redelivered_after_the_member_leaves() -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster(&topic)?;
    let group = unique_name("g");
    let mut first = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let sent = Envelope::new("t", "test", "x");
    bus.publish(&topic, sent.clone()).await?;
    let delivery = brokers::next(&mut first).await;
    assert_eq!(brokers::envelope(&delivery).id, sent.id);
    drop(delivery);
    drop(first);
    let mut second = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let again = brokers::next(&mut second).await;
    assert_eq!(brokers::envelope(&again).id, sent.id);
    again.ack().await?;
    Ok(())
}

/// Settling 0 and 2 but not 1 commits only past 0: a new member resumes at 1 — with
/// the periodic commit of stored offsets (the default) and with a commit per settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_up_to_the_first_unsettled_record() -> BoxResult {
    resumes_at_the_first_unsettled_record(|options| options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_at_every_settle_also_stops_at_the_first_unsettled_record() -> BoxResult {
    resumes_at_the_first_unsettled_record(|options| options.commit_interval(Duration::ZERO)).await
}

async fn resumes_at_the_first_unsettled_record(
    tune: impl FnOnce(KafkaOptions) -> KafkaOptions,
) -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster_with(&topic, tune)?;
    let group = unique_name("g");
    let mut first = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let sent: Vec<Envelope> = (0..3)
        .map(|n| Envelope::new("t", "test", n.to_string()).with_key("one-partition"))
        .collect();
    bus.publish_batch(&topic, sent.clone()).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(brokers::next(&mut first).await);
    }
    let ids: Vec<_> = got.iter().map(|d| brokers::envelope(d).id).collect();
    assert_eq!(ids, sent.iter().map(|e| e.id).collect::<Vec<_>>());
    let mut got = got.into_iter();
    let (zero, one, two) = (got.next(), got.next(), got.next());
    if let (Some(zero), Some(one), Some(two)) = (zero, one, two) {
        two.ack().await?;
        zero.ack().await?;
        drop(one);
    }
    // The commit is asynchronous; give it a moment to reach the broker before leaving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first);
    let mut second = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let resumed: Vec<_> = [
        brokers::next(&mut second).await,
        brokers::next(&mut second).await,
    ]
    .iter()
    .map(|d| brokers::envelope(d).id)
    .collect();
    assert_eq!(resumed, vec![sent[1].id, sent[2].id]);
    Ok(())
}

/// Members of one group split the partitions; together they see each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_the_partitions() -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster(&topic)?;
    let group = unique_name("g");
    let mut a = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let mut b = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let mut sent = HashSet::new();
    let mut from_a = HashSet::new();
    let mut from_b = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Publish in waves until both members have been assigned partitions and got work.
    while from_a.is_empty() || from_b.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "work was not shared"
        );
        let wave: Vec<Envelope> = (0..12)
            .map(|n| Envelope::new("t", "test", "x").with_key(n.to_string()))
            .collect();
        sent.extend(wave.iter().map(|e| e.id));
        bus.publish_batch(&topic, wave).await?;
        let wave_end = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let received = tokio::select! {
                d = brokers::next(&mut a) => (d, &mut from_a),
                d = brokers::next(&mut b) => (d, &mut from_b),
                () = tokio::time::sleep_until(wave_end) => break,
            };
            let (delivery, member) = received;
            member.insert(brokers::envelope(&delivery).id);
            delivery.ack().await?;
        }
    }
    // Everything published is eventually seen, and no event by both members.
    while from_a.len() + from_b.len() < sent.len() {
        let (delivery, member) = tokio::select! {
            d = brokers::next(&mut a) => (d, &mut from_a),
            d = brokers::next(&mut b) => (d, &mut from_b),
        };
        member.insert(brokers::envelope(&delivery).id);
        delivery.ack().await?;
    }
    assert!(from_a.is_disjoint(&from_b));
    assert_eq!(from_a.union(&from_b).copied().collect::<HashSet<_>>(), sent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_without_envelope_headers_is_delivered_malformed_and_can_be_dead_lettered()
-> BoxResult {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = unique_name("topic");
    let (cluster, bus) = cluster(&topic)?;
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()?;
    raw.send(
        FutureRecord::<str, str>::to(&topic).payload("raw"),
        Duration::from_secs(5),
    )
    .await
    .map_err(|(e, _)| e)?;
    let delivery = brokers::next(&mut stream).await;
    assert!(matches!(delivery.envelope(), Err(Error::Malformed { .. })));
    delivery.dead_letter("malformed").await?;
    let letter = brokers::next(&mut dead).await;
    assert!(matches!(letter.envelope(), Err(Error::Malformed { .. })));
    letter.ack().await?;
    brokers::keeps_running(&bus, &topic, &mut stream).await?;
    Ok(())
}

/// A record whose header name is not UTF-8 (Kafka does not check names, and a producer
/// other than ours may write one) is delivered malformed, with the name's error, and
/// the subscription goes on: reading it must not panic. Dead-lettered, it keeps its
/// headers as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_name_that_is_not_utf8_is_malformed_not_a_panic() -> BoxResult {
    let topic = unique_name("topic");
    let (cluster, bus) = cluster(&topic)?;
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    // Every attribute an envelope needs, and one free header with a bad name.
    let envelope = Envelope::new("order.placed", "shop", "{}");
    let (id, time) = (envelope.id.to_string(), envelope.time.to_rfc3339());
    let headers: [(&[u8], &[u8]); 6] = [
        (b"ce_id", id.as_bytes()),
        (b"ce_type", b"order.placed"),
        (b"ce_source", b"shop"),
        (b"ce_time", time.as_bytes()),
        (b"content-type", b"application/json"),
        (b"tenant\xff", b"acme"),
    ];
    produce_raw(&cluster.bootstrap_servers(), &topic, &headers, b"{}")?;
    let delivery = brokers::next(&mut stream).await;
    match delivery.envelope() {
        Err(Error::Malformed { reason }) => assert!(reason.contains("UTF-8"), "{reason}"),
        other => panic!("expected a malformed delivery, got {other:?}"),
    }
    delivery.dead_letter("malformed").await?;
    // The letter is malformed for the same name: its headers were copied as they were.
    let letter = brokers::next(&mut dead).await;
    match letter.envelope() {
        Err(Error::Malformed { reason }) => assert!(reason.contains("header name"), "{reason}"),
        other => panic!("expected a malformed letter, got {other:?}"),
    }
    letter.ack().await?;
    brokers::keeps_running(&bus, &topic, &mut stream).await?;
    Ok(())
}

/// Produces one record to partition 0 of `topic` with `headers`, names given as bytes:
/// rdkafka's safe API takes header names as `&str`, so a name that is not UTF-8 is
/// written through librdkafka's C API.
#[allow(unsafe_code)]
fn produce_raw(
    servers: &str,
    topic: &str,
    headers: &[(&[u8], &[u8])],
    payload: &[u8],
) -> BoxResult {
    use rdkafka::bindings as rd;
    use rdkafka::producer::{BaseProducer, Producer};
    use std::ffi::{CString, c_int, c_void};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    let topic = CString::new(topic)?;
    let ok = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    // SAFETY: a new, empty header list, owned here until `rd_kafka_producev` takes it.
    let list = unsafe { rd::rd_kafka_headers_new(headers.len()) };
    for (name, value) in headers {
        // SAFETY: `list` is the live list above; librdkafka copies `name` and `value`,
        // each read for exactly its given length.
        let added = unsafe {
            rd::rd_kafka_header_add(
                list,
                name.as_ptr().cast(),
                isize::try_from(name.len())?,
                value.as_ptr().cast(),
                isize::try_from(value.len())?,
            )
        };
        assert_eq!(added, ok);
    }
    // SAFETY: the arguments are librdkafka's documented (type, value...) pairs, ended by
    // `RD_KAFKA_VTYPE_END`; the producer's handle, the topic name and the payload outlive
    // the call, and `RD_KAFKA_MSG_F_COPY` makes librdkafka copy the payload. On success
    // librdkafka owns `list`.
    let produced = unsafe {
        rd::rd_kafka_producev(
            producer.client().native_client().ptr(),
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC as c_int,
            topic.as_ptr(),
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION as c_int,
            0 as c_int,
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE as c_int,
            payload.as_ptr().cast_mut().cast::<c_void>(),
            payload.len(),
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS as c_int,
            list,
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS as c_int,
            rd::RD_KAFKA_MSG_F_COPY as c_int,
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END as c_int,
        )
    };
    if produced != ok {
        // SAFETY: not taken by librdkafka: still ours to free.
        unsafe { rd::rd_kafka_headers_destroy(list) };
        return Err(format!("rd_kafka_producev: {produced:?}").into());
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// The broker goes down in the middle of 300 publishes and comes back a second later:
/// no publish is confirmed while it is down (each waits, or errors, past 200 ms), and
/// every confirmed event is consumed (librdkafka reconnects; nothing confirmed is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_mid_publish_loses_no_confirmed_event() -> BoxResult {
    let topic = unique_name("topic");
    let (cluster, bus) = cluster(&topic)?;
    let mut stream = bus
        .subscribe(&Subscription::new(&topic, unique_name("g")))
        .await?;
    let mut confirmed = HashSet::new();
    let mut failed = 0;
    for n in 0..300 {
        if n == 100 {
            cluster.broker_down(1)?;
        }
        if n == 110 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.broker_up(1)?;
        }
        let envelope = Envelope::new("t", "test", n.to_string());
        let id = envelope.id;
        let publish =
            tokio::time::timeout(Duration::from_millis(200), bus.publish(&topic, envelope));
        match publish.await {
            Ok(Ok(())) => {
                confirmed.insert(id);
            }
            // An error, or no confirmation yet: either way the caller does not count it.
            Ok(Err(_)) | Err(_) => failed += 1,
        }
    }
    assert_eq!(confirmed.len() + failed, 300);
    assert!(
        failed >= 1,
        "publishing to a down broker must not be confirmed"
    );
    assert!(confirmed.len() >= 150, "{} confirmed", confirmed.len());
    let mut seen = HashSet::new();
    while !confirmed.is_subset(&seen) {
        let delivery = brokers::next(&mut stream).await;
        seen.insert(brokers::envelope(&delivery).id);
        delivery.ack().await?;
    }
    Ok(())
}

/// The broker goes down after 20 of 100 events were consumed and comes back: the
/// subscription resumes and every event arrives (an ack lost with the broker only
/// means a redelivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_mid_consume_resumes_and_loses_nothing() -> BoxResult {
    let topic = unique_name("topic");
    let (cluster, bus) = cluster(&topic)?;
    let mut stream = bus
        .subscribe(&Subscription::new(&topic, unique_name("g")).with_prefetch(10))
        .await?;
    let first: Vec<Envelope> = (0..50)
        .map(|n| Envelope::new("t", "test", n.to_string()))
        .collect();
    let second: Vec<Envelope> = (50..100)
        .map(|n| Envelope::new("t", "test", n.to_string()))
        .collect();
    let all: HashSet<_> = first.iter().chain(&second).map(|e| e.id).collect();
    bus.publish_batch(&topic, first).await?;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let delivery = brokers::next(&mut stream).await;
        seen.insert(brokers::envelope(&delivery).id);
        delivery.ack().await?;
    }
    cluster.broker_down(1)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.broker_up(1)?;
    bus.publish_batch(&topic, second).await?;
    while seen.len() < all.len() {
        let delivery = brokers::next(&mut stream).await;
        seen.insert(brokers::envelope(&delivery).id);
        let _ = delivery.ack().await;
    }
    assert_eq!(seen, all);
    Ok(())
}

/// At most `prefetch` deliveries are unsettled: with three held, the fourth waits
/// (though librdkafka holds it locally) until one is settled or dropped, and each
/// settle or drop lets exactly one more through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_the_unsettled_deliveries() -> BoxResult {
    let topic = unique_name("topic");
    let (_cluster, bus) = cluster(&topic)?;
    let subscription = Subscription::new(&topic, unique_name("g")).with_prefetch(3);
    let mut stream = bus.subscribe(&subscription).await?;
    let events: Vec<Envelope> = (0..6)
        .map(|n| Envelope::new("t", "test", n.to_string()).with_key("one"))
        .collect();
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    bus.publish_batch(&topic, events).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(brokers::next(&mut stream).await);
    }
    brokers::nothing_within(&mut stream, Duration::from_secs(1)).await;
    // A settle makes room for one.
    held.remove(0).ack().await?;
    held.push(brokers::next(&mut stream).await);
    brokers::nothing_within(&mut stream, Duration::from_millis(500)).await;
    // So does a delivery dropped unsettled.
    drop(held.remove(0));
    held.push(brokers::next(&mut stream).await);
    brokers::nothing_within(&mut stream, Duration::from_millis(500)).await;
    let order: Vec<_> = held.iter().map(|d| brokers::envelope(d).id).collect();
    assert_eq!(order, ids[2..5], "one key: in order");
    for delivery in held {
        delivery.ack().await?;
    }
    let last = brokers::next(&mut stream).await;
    assert_eq!(brokers::envelope(&last).id, ids[5]);
    last.ack().await?;
    drop(stream);
    Ok(())
}
