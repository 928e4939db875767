//! The NATS JetStream backend against the real server (skipped when NATS is down).
#![cfg(feature = "nats")]

mod brokers;

use std::time::Duration;

use palisade_events::backend::nats::{NatsBus, NatsOptions};
use palisade_events::{Envelope, Error, Publisher, Subscription};
use palisade_testkit::{FaultProxy, Service, require, unique_name};

/// A short ack wait so redelivery after a consumer's death is quick.
async fn bus_at(url: &str) -> Result<NatsBus, Error> {
    NatsBus::with_options(NatsOptions::new(url).ack_wait(Duration::from_secs(1))).await
}

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Error> {
            let Some(url) = require(Service::Nats).await else {
                return Ok(());
            };
            let bus = bus_at(&url).await?;
            brokers::$name(&bus, &unique_name("topic")).await
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
    let Some(url) = require(Service::Nats).await else {
        return Ok(());
    };
    let bus = bus_at(&url).await?;
    let topic = unique_name("topic");
    brokers::dead_letter_carries_the_reason(&bus, &topic, &bus.dead_letter_topic(&topic)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_missing_attributes_is_delivered_malformed_and_dead_letters_intact()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Nats).await else {
        return Ok(());
    };
    let bus = bus_at(&url).await?;
    let topic = unique_name("topic");
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    let client = async_nats::connect(url.as_str()).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce_type", "foreign");
    jetstream
        .publish_with_headers(topic.clone(), headers, "raw".into())
        .await?
        .await?;
    let delivery = brokers::next(&mut stream).await;
    assert!(matches!(delivery.envelope(), Err(Error::Malformed { .. })));
    delivery.dead_letter("malformed").await?;
    // Still malformed in the dead-letter stream: the headers moved as they were.
    let letter = brokers::next(&mut dead).await;
    assert!(matches!(letter.envelope(), Err(Error::Malformed { .. })));
    letter.ack().await?;
    // The subscription keeps running after a malformed entry.
    brokers::keeps_running(&bus, &topic, &mut stream).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_unreachable_server_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Nats).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Nats.host_port()).await?;
    let bus = bus_at(&proxy.url_for(&url)).await?;
    proxy.blackhole();
    proxy.cut();
    let result = bus
        .publish(&unique_name("topic"), Envelope::new("t", "test", "x"))
        .await;
    assert!(result.is_err(), "{result:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_publish_loses_no_confirmed_event()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Nats).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Nats.host_port()).await?;
    let through_proxy = bus_at(&proxy.url_for(&url)).await?;
    let direct = bus_at(&url).await?;
    let topic = unique_name("topic");
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
    let Some(url) = require(Service::Nats).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Nats.host_port()).await?;
    let through_proxy = bus_at(&proxy.url_for(&url)).await?;
    let direct = bus_at(&url).await?;
    let topic = unique_name("topic");
    brokers::connection_cut_mid_consume_reconnects_and_loses_nothing(
        &through_proxy,
        &direct,
        &proxy,
        &topic,
    )
    .await
}
