//! The Redis Streams backend against the real server (skipped when Redis is down).
#![cfg(feature = "redis")]

mod brokers;

use std::time::Duration;

use palisade_events::backend::redis::{RedisBus, RedisOptions};
use palisade_events::{Envelope, Error, Publisher, Subscription};
use palisade_testkit::{FaultProxy, Service, require, unique_name};

/// Short claim and block times so redelivery after a consumer's death is quick (but
/// long enough that a loaded machine does not reclaim entries a test still holds).
async fn bus_at(url: &str) -> Result<RedisBus, Error> {
    RedisBus::with_options(
        RedisOptions::new(url)
            .claim_idle(Duration::from_millis(1500))
            .block(Duration::from_millis(100)),
    )
    .await
}

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Error> {
            let Some(url) = require(Service::Redis).await else {
                return Ok(());
            };
            let bus = bus_at(&url).await?;
            brokers::$name(&bus, &unique_name("stream")).await
        }
    };
}

scenario!(envelope_round_trips);
scenario!(confirmed_events_are_all_consumed);
scenario!(unacked_delivery_is_redelivered_after_consumer_death);
scenario!(retried_delivery_comes_back_after_the_delay);
scenario!(order_per_key_is_kept);
scenario!(group_members_share_the_work);
scenario!(separate_groups_each_get_every_event);
scenario!(retry_in_one_group_is_not_seen_by_another);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_carries_the_reason() -> Result<(), Error> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let bus = bus_at(&url).await?;
    let topic = unique_name("stream");
    brokers::dead_letter_carries_the_reason(&bus, &topic, &bus.dead_letter_topic(&topic)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_missing_attributes_is_delivered_malformed_and_dead_letters_intact()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let bus = bus_at(&url).await?;
    let topic = unique_name("stream");
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("ce_type")
        .arg("foreign")
        .arg("ce_data")
        .arg("raw")
        .query_async(&mut conn)
        .await?;
    let delivery = brokers::next(&mut stream).await;
    assert!(matches!(delivery.envelope(), Err(Error::Malformed { .. })));
    delivery.dead_letter("malformed").await?;
    // Still malformed in the dead-letter stream: the fields moved as they were.
    let letter = brokers::next(&mut dead).await;
    assert!(matches!(letter.envelope(), Err(Error::Malformed { .. })));
    letter.ack().await?;
    // The subscription keeps running after a malformed entry.
    brokers::keeps_running(&bus, &topic, &mut stream).await?;
    Ok(())
}

/// An entry whose field name is not UTF-8 (Redis does not check names, and a writer
/// other than ours may add one) between two of ours, read in one batch: it is
/// delivered malformed, in its place, and the entries around it as usual. Read through
/// redis-rs's stream replies, it was left out of the batch while Redis counted it
/// delivered: pending here, never delivered nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_name_that_is_not_utf8_is_malformed_and_the_batch_is_delivered()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let bus = bus_at(&url).await?;
    let topic = unique_name("stream");
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    let (before, after) = (
        Envelope::new("t", "test", "before"),
        Envelope::new("t", "test", "after"),
    );
    // All three written before the subscription reads: one batch.
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    bus.publish(&topic, before.clone()).await?;
    let foreign = Envelope::new("t", "foreign", "{}");
    let _: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("ce_id")
        .arg(foreign.id.to_string())
        .arg("ce_type")
        .arg("t")
        .arg("ce_source")
        .arg("foreign")
        .arg("ce_time")
        .arg(foreign.time.to_rfc3339())
        .arg("content-type")
        .arg("application/json")
        .arg(&b"tenant\xff"[..])
        .arg("acme")
        .arg("ce_data")
        .arg("{}")
        .query_async(&mut conn)
        .await?;
    bus.publish(&topic, after.clone()).await?;
    assert_eq!(
        brokers::envelope(&brokers::next(&mut stream).await).id,
        before.id
    );
    let delivery = brokers::next(&mut stream).await;
    match delivery.envelope() {
        Err(Error::Malformed { reason }) => assert!(reason.contains("not UTF-8"), "{reason}"),
        other => panic!("expected a malformed delivery, got {other:?}"),
    }
    delivery.dead_letter("malformed").await?;
    assert_eq!(
        brokers::envelope(&brokers::next(&mut stream).await).id,
        after.id
    );
    // The dead letter keeps the name as it was: still malformed for it.
    let letter = brokers::next(&mut dead).await;
    assert!(matches!(letter.envelope(), Err(Error::Malformed { .. })));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_unreachable_server_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Redis.host_port()).await?;
    let bus = bus_at(&proxy.url_for(&url)).await?;
    proxy.blackhole();
    proxy.cut();
    let result = bus
        .publish(&unique_name("stream"), Envelope::new("t", "test", "x"))
        .await;
    assert!(result.is_err(), "{result:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_publish_loses_no_confirmed_event()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Redis.host_port()).await?;
    let through_proxy = bus_at(&proxy.url_for(&url)).await?;
    let direct = bus_at(&url).await?;
    let topic = unique_name("stream");
    let subscription = Subscription::new(&topic, unique_name("g"));
    brokers::connection_cut_mid_publish_loses_no_confirmed_event(
        &through_proxy,
        &direct,
        &proxy,
        &topic,
        subscription,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_consume_reconnects_and_loses_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Redis).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Redis.host_port()).await?;
    let through_proxy = bus_at(&proxy.url_for(&url)).await?;
    let direct = bus_at(&url).await?;
    let topic = unique_name("stream");
    brokers::connection_cut_mid_consume_reconnects_and_loses_nothing(
        &through_proxy,
        &direct,
        &proxy,
        &topic,
    )
    .await
}
