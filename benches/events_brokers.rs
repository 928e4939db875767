//! Broker backends of palisade-events against raw client loops, side by side.
//!
//! For each backend reachable on this machine (Redis, RabbitMQ, NATS; Kafka on
//! librdkafka's in-process mock cluster), two figures, each measured for the raw
//! client and for our backend in the same run, with the same shape:
//!
//! - **publish**: persistent/durable messages of 256 B, in batches of 1000 whose
//!   confirmations are awaited together (raw: pipelined `XADD`s, lapin confirms,
//!   JetStream async acks, rdkafka delivery futures; ours: `publish_batch`);
//! - **consume+ack**: prefetch 1000, every message acked on its own, acks in flight
//!   concurrently (raw: `XREADGROUP`+`XACK`, `basic.consume`+`basic.ack`, pull
//!   consumer + `+ACK`, rdkafka `recv` + commit; ours: `subscribe` + `Delivery::ack`).
//!
//! The raw loops for Redis, RabbitMQ and NATS send the same metadata an envelope
//! carries (id, type, source, time, content type, key), precomputed once, so the
//! ratio measures the library (a fresh UUID v7, time formatting and header mapping
//! per event, the subscription task and its channel), not message size.
//!
//! Kafka consume is compared with three raw loops over the same records, because
//! librdkafka parses a record's headers only when asked: one that reads nothing, one
//! that reads headers and payload in place (what the other raw clients' protocol
//! parsers do for every message), and one that detaches each record (an owned copy,
//! what handing a record to other code takes).
//!
//! Rounds alternate which side goes first. Beside each rate, the CPU time this process
//! spent per message (all its threads), which shows a side's own cost apart from the
//! broker's and moves less between rounds than the rate.
//!
//! Run: `cargo bench -p palisade-benches --bench events_brokers` (set
//! `EVENTS_BENCH_SCALE=0.2` for a quick pass, `EVENTS_BENCH_ROUNDS` for other than 3
//! rounds, `EVENTS_BENCH_SKIP=redis,kafka` to leave backends out). Servers that are
//! down are skipped. `EVENTS_BENCH_KAFKA_COUNT=raw|palisade|none` instead consumes one
//! topic once, for counting instructions under callgrind (see `kafka_count`), and
//! `EVENTS_BENCH_KAFKA_COUNT=pairs` measures the in-place raw loop and ours in
//! alternating pairs (see `kafka_pairs`).
//! `EVENTS_BENCH_KAFKA_BUFFERED=2` starts each Kafka consume clock only after the first
//! record and a two-second wait, when librdkafka holds the whole topic locally (see
//! `kafka_buffered`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palisade_events::backend::kafka::{KafkaBus, KafkaOptions};
use palisade_events::backend::nats::NatsBus;
use palisade_events::backend::rabbitmq::{RabbitMqBus, RabbitMqOptions};
use palisade_events::backend::redis::RedisBus;
use palisade_events::{Envelope, Publisher, Subscriber, Subscription};
use palisade_testkit::{Service, reachable, unique_name};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

const PAYLOAD: usize = 256;
const BATCH: usize = 1000;
const PREFETCH: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(60);

fn payload() -> Vec<u8> {
    vec![b'x'; PAYLOAD]
}

/// The metadata a raw loop carries when it sends what an envelope carries (id, type,
/// source, time, content type, key), precomputed once: the "raw + headers" loops.
fn raw_headers() -> Vec<(&'static str, String)> {
    let e = Envelope::new("bench.event", "bench", payload()).with_key("7");
    vec![
        ("ce_id", e.id.to_string()),
        ("ce_type", e.event_type.to_string()),
        ("ce_source", e.source.to_string()),
        ("ce_time", e.time.to_rfc3339()),
        ("content-type", e.content_type.to_string()),
        ("ce_subject", "7".to_owned()),
    ]
}

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| Envelope::new("bench.event", "bench", payload()).with_key((i % 64).to_string()))
        .collect()
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("EVENTS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(BATCH)
}

struct Row {
    backend: &'static str,
    op: &'static str,
    raw: Side,
    ours: Side,
}

impl Row {
    fn new(backend: &'static str, op: &'static str, raw: Side, ours: Side) -> Self {
        Self {
            backend,
            op,
            raw,
            ours,
        }
    }
}

/// One side's measurement.
#[derive(Clone, Copy)]
struct Side {
    /// Messages per second.
    rate: f64,
    /// CPU time of this process per message, in microseconds (all its threads: the
    /// client's, librdkafka's, and for Kafka the mock broker's).
    cpu: f64,
}

/// CPU time used so far by every live thread of this process (scheduler statistics, in
/// nanoseconds): a side's own cost, apart from the broker's (another process, except
/// Kafka's mock cluster) and steadier than its rate.
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Runs `side` (which returns its rate over `n` messages) and measures the process CPU
/// time it took, per message.
async fn measure(n: usize, side: impl std::future::Future<Output = Result<f64>>) -> Result<Side> {
    let before = process_cpu();
    let rate = side.await?;
    let cpu = process_cpu().saturating_sub(before).as_secs_f64() * 1e6 / n as f64;
    Ok(Side { rate, cpu })
}

/// The middle value, or the mean of the two middle ones: with an even number of
/// rounds, half measured each side first, and neither order's rounds decide alone.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    match (
        values.len() % 2,
        values.get(half.wrapping_sub(1)),
        values.get(half),
    ) {
        (0, Some(low), Some(high)) => (low + high) / 2.0,
        (_, _, Some(middle)) => *middle,
        _ => f64::NAN,
    }
}

/// A summary row: medians of the rounds' rates, and the median per-round ratio over
/// all rounds, over those that measured the raw side first, and over those that
/// measured ours first.
struct Summary {
    row: Row,
    ratio: f64,
    raw_first: f64,
    ours_first: f64,
}

/// Per (backend, operation) of the first round: the median raw and our rate, and the
/// median ratio, over the rounds that measured it (round `i` measured ours first when
/// `i` is odd).
fn medians(rounds: &[Vec<Row>]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|row| {
            let same = |ours_first: Option<bool>| -> Vec<&Row> {
                rounds
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| ours_first.is_none_or(|o| (i % 2 == 1) == o))
                    .flat_map(|(_, rows)| rows)
                    .filter(|r| r.backend == row.backend && r.op == row.op)
                    .collect()
            };
            let all = same(None);
            let side = |of: fn(&Row) -> Side| Side {
                rate: median(all.iter().map(|r| of(r).rate).collect()),
                cpu: median(all.iter().map(|r| of(r).cpu).collect()),
            };
            let ratio =
                |rows: &[&Row]| median(rows.iter().map(|r| r.ours.rate / r.raw.rate).collect());
            Summary {
                row: Row::new(row.backend, row.op, side(|r| r.raw), side(|r| r.ours)),
                ratio: ratio(&all),
                raw_first: ratio(&same(Some(false))),
                ours_first: ratio(&same(Some(true))),
            }
        })
        .collect()
}

/// Runs the raw and our measurement, ours first when `ours_first`: rounds alternate
/// the order, so that neither side always meets the broker first (fresh, or still
/// busy with what the other side left).
async fn both<R, O>(ours_first: bool, n: usize, raw: R, ours: O) -> Result<(Side, Side)>
where
    R: std::future::Future<Output = Result<f64>>,
    O: std::future::Future<Output = Result<f64>>,
{
    if ours_first {
        let ours = measure(n, ours).await?;
        Ok((measure(n, raw).await?, ours))
    } else {
        let raw = measure(n, raw).await?;
        Ok((raw, measure(n, ours).await?))
    }
}

/// A raw publish loop against ours publishing `n` envelopes to `topic`, in the round's
/// order (our envelopes made before either starts).
async fn publish_both<P: Publisher>(
    ours_first: bool,
    n: usize,
    raw: impl std::future::Future<Output = Result<f64>>,
    bus: &P,
    topic: &str,
) -> Result<(Side, Side)> {
    both(ours_first, n, raw, publish_ours(bus, topic, batches(n))).await
}

/// A raw consume loop against ours reading `topic` as group `g`, in the round's order.
async fn consume_both<S: Subscriber>(
    ours_first: bool,
    n: usize,
    raw: impl std::future::Future<Output = Result<f64>>,
    bus: &S,
    topic: &str,
) -> Result<(Side, Side)> {
    let subscription = Subscription::new(topic, "g").with_prefetch(PREFETCH);
    both(
        ours_first,
        n,
        raw,
        consume_ours(bus, &subscription, n, Duration::ZERO),
    )
    .await
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// `n` envelopes in batches of [`BATCH`], made before a clock starts (the raw loops'
/// messages are prepared up front too).
fn batches(n: usize) -> Vec<Vec<Envelope>> {
    let mut all = envelopes(n).into_iter();
    (0..n.div_ceil(BATCH))
        .map(|_| all.by_ref().take(BATCH).collect())
        .collect()
}

/// Publishes `batches` with `publish_batch`; returns envelopes per second.
async fn publish_ours<P: Publisher>(
    bus: &P,
    topic: &str,
    batches: Vec<Vec<Envelope>>,
) -> Result<f64> {
    let n: usize = batches.iter().map(Vec::len).sum();
    let started = Instant::now();
    for batch in batches {
        bus.publish_batch(topic, batch).await?;
    }
    Ok(rate(n, started.elapsed()))
}

/// Consumes and acks `n` deliveries, acks in flight concurrently.
async fn consume_ours<S: Subscriber>(
    bus: &S,
    subscription: &Subscription,
    n: usize,
    wait_after_first: Duration,
) -> Result<f64> {
    let mut stream = bus.subscribe(subscription).await?;
    let mut acks = JoinSet::new();
    let mut started = None;
    for _ in 0..n {
        let delivery = tokio::time::timeout(TIMEOUT, stream.next())
            .await?
            .ok_or("subscription ended")??;
        if started.is_none() && !wait_after_first.is_zero() {
            tokio::time::sleep(wait_after_first).await;
        }
        started.get_or_insert_with(Instant::now);
        // As the consumer runtime settles: at once when the ack needs no I/O (Kafka
        // stores an offset), in a task of its own when it waits for the broker. The
        // ack future comes boxed, to poll here or to spawn as it is.
        let mut ack = delivery.ack();
        match futures_util::FutureExt::now_or_never(ack.as_mut()) {
            Some(done) => done?,
            None => {
                acks.spawn(ack);
            }
        }
        // Only when an ack went into a task: an empty set's look locks its lists.
        while !acks.is_empty()
            && let Some(done) = acks.try_join_next()
        {
            done??;
        }
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    Ok(rate(n, started.map(|s| s.elapsed()).unwrap_or_default()))
}

// ---------------------------------------------------------------------------- Redis

async fn redis_rows(url: &str, ours_first: bool, rows: &mut Vec<Row>) -> Result<()> {
    let n = scaled(100_000);
    let client = redis::Client::open(url)?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let bus = RedisBus::connect(url).await?;

    // Raw publish: pipelined XADD MAXLEN ~, the envelope's fields precomputed.
    let raw_stream = unique_name("bench-raw");
    let body = payload();
    let fields = raw_headers();
    let topic = unique_name("bench-ours");
    let raw_publish = async {
        let mut conn = conn.clone();
        let started = Instant::now();
        for _ in 0..n / BATCH {
            let mut pipe = redis::pipe();
            for _ in 0..BATCH {
                pipe.cmd("XADD")
                    .arg(&raw_stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1_000_000)
                    .arg("*");
                for (name, value) in &fields {
                    pipe.arg(*name).arg(value);
                }
                pipe.arg("data").arg(&body[..]);
            }
            let _: Vec<String> = pipe.query_async(&mut conn).await?;
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = publish_both(ours_first, n, raw_publish, &bus, &topic).await?;
    rows.push(Row::new("redis", "publish (batch 1000)", raw, ours));

    // Raw consume: XREADGROUP + concurrent XACKs, at most PREFETCH unacked (read when
    // at least half the window is free, COUNT = what is free), as our subscription does.
    let raw_consume = async {
        let mut conn = conn.clone();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&raw_stream)
            .arg("g")
            .arg("0")
            .query_async(&mut conn)
            .await?;
        let reader = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let started = Instant::now();
        let mut done = 0;
        let mut acks = JoinSet::new();
        while done < n {
            while acks.len() > PREFETCH / 2 {
                if let Some(r) = acks.join_next().await {
                    r??;
                }
            }
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(PREFETCH - acks.len())
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&raw_stream)
                .arg(">")
                .query_async(&mut reader.clone())
                .await?;
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    let mut ack_conn = conn.clone();
                    let stream = raw_stream.clone();
                    acks.spawn(async move {
                        redis::cmd("XACK")
                            .arg(stream)
                            .arg("g")
                            .arg(entry.id)
                            .query_async::<i64>(&mut ack_conn)
                            .await
                    });
                    done += 1;
                }
            }
            while let Some(r) = acks.try_join_next() {
                r??;
            }
        }
        while let Some(r) = acks.join_next().await {
            r??;
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = consume_both(ours_first, n, raw_consume, &bus, &topic).await?;
    rows.push(Row::new("redis", "consume+ack (prefetch 1000)", raw, ours));
    let _: () = redis::cmd("DEL")
        .arg(&raw_stream)
        .arg(&topic)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------- RabbitMQ

async fn rabbitmq_rows(url: &str, ours_first: bool, rows: &mut Vec<Row>) -> Result<()> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let n = scaled(20_000);
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let raw_queue = unique_name("bench-raw");
    channel
        .queue_declare(
            raw_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    // Routed as ours is: through a durable topic exchange the queue is bound to.
    let raw_exchange = unique_name("bench-raw-x");
    channel
        .exchange_declare(
            raw_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            raw_queue.as_str().into(),
            raw_exchange.as_str().into(),
            raw_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let body = payload();
    let mut table = FieldTable::default();
    let fields = raw_headers();
    for (name, value) in &fields {
        table.insert(
            (*name).into(),
            lapin::types::AMQPValue::LongString(value.as_str().into()),
        );
    }
    // The properties ours sets besides the headers, for tools that read them.
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table)
        .with_message_id(field("ce_id").into())
        .with_timestamp(1_700_000_000)
        .with_type(field("ce_type").into())
        .with_app_id(field("ce_source").into())
        .with_content_type(field("content-type").into());
    let exchange = unique_name("bench-x");
    let bus = RabbitMqBus::with_options(RabbitMqOptions::new(url).exchange(&exchange)).await?;
    let topic = unique_name("bench-ours");
    bus.declare_group(&topic, "g").await?;
    let raw_publish = async {
        let started = Instant::now();
        for _ in 0..n / BATCH {
            let mut confirms = Vec::with_capacity(BATCH);
            for _ in 0..BATCH {
                confirms.push(
                    channel
                        .basic_publish(
                            raw_exchange.as_str().into(),
                            raw_queue.as_str().into(),
                            // Mandatory, as ours publishes by default.
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &body,
                            properties.clone(),
                        )
                        .await?,
                );
            }
            for confirm in confirms {
                if !confirm.await?.is_ack() {
                    return Err("nack".into());
                }
            }
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = publish_both(ours_first, n, raw_publish, &bus, &topic).await?;
    rows.push(Row::new(
        "rabbitmq",
        "publish (batch 1000, confirms)",
        raw,
        ours,
    ));

    let raw_consume = async {
        let consumer_channel = connection.create_channel().await?;
        consumer_channel
            .basic_qos(PREFETCH as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = consumer_channel
            .basic_consume(
                raw_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut acks = JoinSet::new();
        let mut started = None;
        for _ in 0..n {
            let delivery = tokio::time::timeout(TIMEOUT, consumer.next())
                .await?
                .ok_or("consumer ended")??;
            started.get_or_insert_with(Instant::now);
            acks.spawn(async move { delivery.acker.ack(BasicAckOptions::default()).await });
            while let Some(r) = acks.try_join_next() {
                r??;
            }
        }
        while let Some(r) = acks.join_next().await {
            r??;
        }
        Ok(rate(n, started.map(|s| s.elapsed()).unwrap_or_default()))
    };
    let (raw, ours) = consume_both(ours_first, n, raw_consume, &bus, &topic).await?;
    rows.push(Row::new(
        "rabbitmq",
        "consume+ack (prefetch 1000)",
        raw,
        ours,
    ));
    for queue in [
        raw_queue,
        bus.queue_name(&topic, "g"),
        bus.dead_letter_topic(&topic),
    ] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [raw_exchange, exchange] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- NATS

async fn nats_rows(url: &str, ours_first: bool, rows: &mut Vec<Row>) -> Result<()> {
    use async_nats::jetstream::{self, consumer, stream};

    let n = scaled(50_000);
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let raw_subject = unique_name("bench-raw");
    let raw_stream = js
        .get_or_create_stream(stream::Config {
            name: raw_subject.clone(),
            subjects: vec![raw_subject.clone()],
            ..stream::Config::default()
        })
        .await?;
    let body = bytes::Bytes::from(payload());
    let nats_headers = raw_headers();
    // Our backend sends each event's id as `Nats-Msg-Id` too (JetStream deduplicates on
    // it), so the raw loop sends a distinct one per message: the same server work.
    let bus = NatsBus::connect(url).await?;
    let topic = unique_name("bench-ours");
    let raw_publish = async {
        let started = Instant::now();
        for batch in 0..n / BATCH {
            let mut acks = Vec::with_capacity(BATCH);
            for i in 0..BATCH {
                let mut headers = async_nats::HeaderMap::new();
                for (name, value) in &nats_headers {
                    headers.insert(*name, value.as_str());
                }
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{raw_subject}-{batch}-{i}").as_str(),
                );
                acks.push(
                    js.publish_with_headers(raw_subject.clone(), headers, body.clone())
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = publish_both(ours_first, n, raw_publish, &bus, &topic).await?;
    rows.push(Row::new("nats", "publish (batch 1000, PubAck)", raw, ours));

    let raw_consume = async {
        let pull: consumer::PullConsumer = raw_stream
            .get_or_create_consumer(
                "g",
                consumer::pull::Config {
                    durable_name: Some("g".to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: PREFETCH as i64,
                    ..consumer::pull::Config::default()
                },
            )
            .await?;
        let mut done = 0;
        let mut acks = JoinSet::new();
        let started = Instant::now();
        while done < n {
            let mut batch = pull
                .batch()
                .max_messages(PREFETCH - acks.len().min(PREFETCH - 1))
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            while let Some(message) = batch.next().await {
                let message = message?;
                acks.spawn(async move { message.ack().await });
                done += 1;
            }
            while let Some(r) = acks.try_join_next() {
                r?.map_err(|e| e.to_string())?;
            }
        }
        while let Some(r) = acks.join_next().await {
            r?.map_err(|e| e.to_string())?;
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = consume_both(ours_first, n, raw_consume, &bus, &topic).await?;
    rows.push(Row::new("nats", "consume+ack (prefetch 1000)", raw, ours));
    js.delete_stream(&raw_subject).await?;
    js.delete_stream(bus.stream_name(&topic)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------- Kafka (mock)

async fn kafka_rows(ours_first: bool, rows: &mut Vec<Row>) -> Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let n = scaled(50_000);
    // Leaked: destroying a mock cluster while consumers are connected blocks.
    let cluster = Box::leak(Box::new(rdkafka::mocking::MockCluster::new(1)?));
    let raw_topic = unique_name("bench-raw");
    let topic = unique_name("bench-ours");
    cluster.create_topic(&raw_topic, 1, 1)?;
    cluster.create_topic(&topic, 1, 1)?;
    let servers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let body = payload();
    let fields = raw_headers();
    let headers = || {
        fields.iter().fold(
            OwnedHeaders::new_with_capacity(fields.len()),
            |h, (name, value)| {
                h.insert(Header {
                    key: name,
                    value: Some(value.as_str()),
                })
            },
        )
    };
    // Both producers connected, and their idempotence set up, before the clock starts:
    // else the first side measured pays for it.
    producer
        .send(
            FutureRecord::to(&raw_topic)
                .key("0")
                .payload(&body)
                .headers(headers()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let bus = KafkaBus::with_options(KafkaOptions::new(&servers))?;
    bus.publish(&topic, Envelope::new("bench.event", "bench", payload()))
        .await?;
    let raw_publish = async {
        let started = Instant::now();
        for _ in 0..n / BATCH {
            let mut reports = Vec::with_capacity(BATCH);
            for i in 0..BATCH {
                let key = (i % 64).to_string();
                let record = FutureRecord::to(&raw_topic)
                    .key(&key)
                    .payload(&body)
                    .headers(headers());
                reports.push(producer.send_result(record).map_err(|(e, _)| e)?);
            }
            for report in reports {
                report.await?.map_err(|(e, _)| e)?;
            }
        }
        Ok(rate(n, started.elapsed()))
    };
    let (raw, ours) = publish_both(ours_first, n, raw_publish, &bus, &topic).await?;
    rows.push(Row::new(
        "kafka (mock)",
        "publish (batch 1000, acks=all)",
        raw,
        ours,
    ));

    // The mock cluster keeps only the last 5 MB (and 100k records) of a partition, so
    // the consume figures read at most 80k records from 8 partitions, the same records
    // for both: fresh topics filled by our bus (keys spread them over the partitions).
    // More records would not measure the clients: the in-process broker fetches far
    // faster than either side consumes, and once a consumer's local queue holds
    // `queued.min.messages` (100k) records librdkafka postpones the next fetch by
    // `fetch.queue.backoff.ms` (1 s). With 192k records over 32 partitions, every side
    // fell into that stall in some rounds (150k records/s instead of 400–600k).
    let n = scaled(80_000).min(80_000);
    let topic = unique_name("bench-ours-consume");
    cluster.create_topic(&topic, PARTITIONS, 1)?;
    publish_ours(&bus, &topic, batches(n)).await?;
    // librdkafka parses a record's headers only when asked, so a raw loop that never
    // looks at a record does not pay for them, while the other raw clients parse every
    // message's metadata in their protocol code. Three raw loops, each over a copy of
    // the same records: one that reads each record in place (headers and payload, as a
    // handler inside the loop would: the like-for-like one), one that reads nothing,
    // and one that keeps each record past the `recv` borrow (what handing it to other
    // code takes in rdkafka: `detach`, which copies payload and headers).
    let mut raws = Vec::new();
    for (read, group, op) in [
        (
            RawRead::Nothing,
            "raw-nothing",
            "consume+ack (prefetch 1000), raw loop reads nothing",
        ),
        (
            RawRead::Detach,
            "raw-detach",
            "consume+ack, raw loop detaches each record",
        ),
        (
            RawRead::InPlace,
            "raw-read",
            "consume+ack, raw loop reads headers and payload in place",
        ),
    ] {
        let copy = unique_name("bench-raw-consume");
        cluster.create_topic(&copy, PARTITIONS, 1)?;
        publish_ours(&bus, &copy, batches(n)).await?;
        raws.push((read, group, op, copy));
    }
    // Ours next to the in-place loop: last after it, or first before it.
    if ours_first {
        raws.reverse();
    }
    let subscription = Subscription::new(&topic, "ours").with_prefetch(PREFETCH);
    let buffered = kafka_buffered();
    let mut ours = None;
    if ours_first {
        ours = Some(measure(n, consume_ours(&bus, &subscription, n, buffered)).await?);
    }
    let mut measured = Vec::new();
    for (read, group, op, copy) in raws {
        let raw = raw_kafka_consume(&servers, &copy, group, n, read, buffered);
        measured.push((op, measure(n, raw).await?));
    }
    let ours = match ours {
        Some(ours) => ours,
        None => measure(n, consume_ours(&bus, &subscription, n, buffered)).await?,
    };
    measured.sort_by_key(|&(op, _)| !op.contains("in place"));
    for (op, raw) in measured {
        rows.push(Row::new("kafka (mock)", op, raw, ours));
    }
    Ok(())
}

/// For instruction counts (`valgrind --tool=callgrind --separate-threads=yes`, see
/// BENCHMARKS.md), not time: fills a topic of the mock cluster with
/// `scaled(20_000)` records through our bus, then consumes them once on this (the
/// main) thread with the in-place raw loop (`raw`), our backend (`palisade`) or not at
/// all (`none`: the publishing to subtract).
async fn kafka_count(side: &str) -> Result<()> {
    let n = scaled(20_000);
    // Leaked, as in `kafka_rows`.
    let cluster = Box::leak(Box::new(rdkafka::mocking::MockCluster::new(1)?));
    let topic = unique_name("bench-count");
    cluster.create_topic(&topic, PARTITIONS, 1)?;
    let servers = cluster.bootstrap_servers();
    let bus = KafkaBus::with_options(KafkaOptions::new(&servers))?;
    let buffered = kafka_buffered();
    if side == "pairs" {
        return kafka_pairs(cluster, &bus, n, buffered).await;
    }
    publish_ours(&bus, &topic, batches(n)).await?;
    let rate = match side {
        "raw" => {
            raw_kafka_consume(&servers, &topic, "raw-count", n, RawRead::InPlace, buffered).await?
        }
        "palisade" => {
            let subscription = Subscription::new(&topic, "ours-count").with_prefetch(PREFETCH);
            consume_ours(&bus, &subscription, n, buffered).await?
        }
        "none" => 0.0,
        other => {
            return Err(format!(
                "EVENTS_BENCH_KAFKA_COUNT is raw, palisade or none, not {other:?}"
            )
            .into());
        }
    };
    println!("kafka {side}: {n} records consumed at {rate:.0}/s");
    Ok(())
}

/// `EVENTS_BENCH_KAFKA_COUNT=pairs`: `EVENTS_BENCH_ROUNDS` pairs (default 6) of the
/// in-place raw loop and our backend, each over a fresh topic of `scaled(20_000)`
/// records, alternating which goes first; prints each pair's ratio and their median.
/// Pairs measured seconds apart in one process share the machine's state, which on
/// these shared machines moves single measurements by up to a factor of two.
async fn kafka_pairs(
    cluster: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bus: &KafkaBus,
    n: usize,
    buffered: Duration,
) -> Result<()> {
    let rounds = rounds(6);
    let servers = cluster.bootstrap_servers();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let raw_topic = unique_name("bench-pairs-raw");
        let topic = unique_name("bench-pairs-ours");
        for topic in [&raw_topic, &topic] {
            cluster.create_topic(topic, PARTITIONS, 1)?;
            publish_ours(bus, topic, batches(n)).await?;
        }
        let raw_group = unique_name("raw-pairs");
        let raw = raw_kafka_consume(
            &servers,
            &raw_topic,
            &raw_group,
            n,
            RawRead::InPlace,
            buffered,
        );
        let subscription =
            Subscription::new(&topic, unique_name("ours-pairs")).with_prefetch(PREFETCH);
        let ours = consume_ours(bus, &subscription, n, buffered);
        let (raw, ours) = if round % 2 == 0 {
            let raw = raw.await?;
            (raw, ours.await?)
        } else {
            let ours = ours.await?;
            (raw.await?, ours)
        };
        println!(
            "pair {round}: raw {raw:.0}, ours {ours:.0}, {:.3}x",
            ours / raw
        );
        ratios.push(ours / raw);
    }
    println!("median of {rounds} pairs: {:.3}x", median(ratios));
    Ok(())
}

/// `EVENTS_BENCH_ROUNDS`, or `default`; at least one.
fn rounds(default: usize) -> usize {
    std::env::var("EVENTS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// `EVENTS_BENCH_KAFKA_BUFFERED=<seconds>`: each Kafka consume measurement takes its
/// first record, waits this long (librdkafka meanwhile fetches the rest of the topic
/// into its local queue), and only then starts the clock; 0 (the default) starts it
/// at the first record. Buffered, a measurement counts the client's own consume path
/// without racing librdkafka's fetcher, whose progress made single rounds swing from
/// 0.5× to 1.5×.
fn kafka_buffered() -> Duration {
    std::env::var("EVENTS_BENCH_KAFKA_BUFFERED")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::ZERO)
}

/// Partitions of the topics the Kafka consume figures read.
const PARTITIONS: i32 = 8;

/// What a raw Kafka consume loop does with each record before storing its offset.
#[derive(Clone, Copy)]
enum RawRead {
    /// Nothing: neither headers nor payload are looked at.
    Nothing,
    /// Reads every header (name and UTF-8 value) and every byte of the payload (as
    /// UTF-8), in place.
    InPlace,
    /// Detaches the record (an owned copy of payload and headers).
    Detach,
}

/// A raw rdkafka consume loop over `n` records of `topic`: `recv`, `read` the record,
/// store its offset (`store_offset_from_message`, the cheapest store rdkafka offers)
/// for librdkafka's commit every second — the commit mode our backend
/// uses by default. Returns records per second from the first record on.
async fn raw_kafka_consume(
    servers: &str,
    topic: &str,
    group: &str,
    n: usize,
    read: RawRead,
    wait_after_first: Duration,
) -> Result<f64> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        // A group of its own: were it shared with ours, our member's join would wait for
        // this idle member to rejoin (a rebalance stalled until its poll interval).
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut started = None;
    for i in 0..n {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .map_err(|_| format!("raw consume: no message within the deadline after {i}"))??;
        if started.is_none() && !wait_after_first.is_zero() {
            tokio::time::sleep(wait_after_first).await;
        }
        started.get_or_insert_with(Instant::now);
        match read {
            RawRead::Nothing => {}
            RawRead::InPlace => {
                for header in message.headers().iter().flat_map(|h| h.iter()) {
                    let value = header.value.map(std::str::from_utf8);
                    std::hint::black_box((header.key, value));
                }
                // Every byte read, as our backend reads each (it copies the payload into
                // the envelope): a slice passed on unread would leave the record's bytes
                // in memory the loop never touches.
                std::hint::black_box(message.payload().map(std::str::from_utf8));
            }
            RawRead::Detach => {
                std::hint::black_box(message.detach());
            }
        }
        consumer.store_offset_from_message(&message)?;
    }
    let rate = rate(n, started.map(|s| s.elapsed()).unwrap_or_default());
    // Closed on a thread of its own, as our backend closes its consumer: closing leaves
    // the group, which blocks until the mock broker answers. Left open (leaked), the
    // raw consumers kept running beside every later measurement of the run.
    let closing = std::thread::Builder::new()
        .name("raw-kafka-close".to_owned())
        .spawn(move || drop(consumer));
    if let Err(e) = closing {
        println!("raw consume: could not spawn a thread to close the consumer: {e}");
    }
    Ok(rate)
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rounds = rounds(3);
    let skip = |name: &str| {
        std::env::var("EVENTS_BENCH_SKIP").is_ok_and(|skip| skip.split(',').any(|s| s == name))
    };
    if let Ok(side) = std::env::var("EVENTS_BENCH_KAFKA_COUNT") {
        runtime.block_on(kafka_count(&side))?;
        std::process::exit(0)
    }
    runtime.block_on(async {
        // Every round measures raw and ours for each backend, raw first in odd rounds and
        // ours first in even ones; the table shows the median of each, and the median of
        // the per-round ratios (the broker shares the 2 cores with the client, so single
        // rounds are noisy).
        let mut all: Vec<Vec<Row>> = Vec::new();
        for round in 0..rounds {
            let ours_first = round % 2 == 1;
            let mut rows = Vec::new();
            for (service, name) in [
                (Service::Redis, "redis"),
                (Service::Amqp, "rabbitmq"),
                (Service::Nats, "nats"),
            ] {
                if skip(name) {
                    continue;
                }
                if !reachable(service).await {
                    println!("skipped: {name} unreachable at {}", service.url());
                    continue;
                }
                let url = service.url();
                let result = match service {
                    Service::Redis => redis_rows(&url, ours_first, &mut rows).await,
                    Service::Amqp => rabbitmq_rows(&url, ours_first, &mut rows).await,
                    _ => nats_rows(&url, ours_first, &mut rows).await,
                };
                if let Err(e) = result {
                    println!("{name}: failed: {e}");
                }
            }
            if !skip("kafka")
                && let Err(e) = kafka_rows(ours_first, &mut rows).await
            {
                println!("kafka: failed: {e}");
            }
            for row in &rows {
                println!(
                    "round {}: {} {}: raw {:.0}, ours {:.0} ({:.2}x); CPU µs/msg raw {:.2}, ours {:.2}",
                    round + 1,
                    row.backend,
                    row.op,
                    row.raw.rate,
                    row.ours.rate,
                    row.ours.rate / row.raw.rate,
                    row.raw.cpu,
                    row.ours.cpu,
                );
            }
            all.push(rows);
        }
        let rows = medians(&all);
        println!();
        println!("Medians of {rounds} rounds:");
        println!();
        println!(
            "| backend | operation | raw client msg/s | palisade msg/s | ratio (median of rounds) | raw first / ours first | CPU µs/msg raw | CPU µs/msg palisade |"
        );
        println!("|---|---|---:|---:|---:|---|---:|---:|");
        for Summary {
            row,
            ratio,
            raw_first,
            ours_first,
        } in &rows
        {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.2}x / {:.2}x | {:.2} | {:.2} |",
                row.backend,
                row.op,
                row.raw.rate,
                row.ours.rate,
                ratio,
                raw_first,
                ours_first,
                row.raw.cpu,
                row.ours.cpu
            );
        }
        Ok::<(), BoxError>(())
    })?;
    // Kafka clients of the mock cluster would block a clean shutdown.
    std::process::exit(0)
}
