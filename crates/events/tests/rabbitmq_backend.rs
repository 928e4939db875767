//! The RabbitMQ backend against the real broker (skipped when RabbitMQ is down).
#![cfg(feature = "rabbitmq")]

mod brokers;
mod exchange;

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use palisade_events::backend::rabbitmq::{RabbitMqBus, RabbitMqOptions};
use palisade_events::{Envelope, Error, Publisher, Subscriber, Subscription};
use palisade_testkit::{FaultProxy, Service, require, unique_name};

use crate::exchange::TestExchange;

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Error> {
            let Some(url) = require(Service::Amqp).await else {
                return Ok(());
            };
            // Each test on an exchange of its own.
            let exchange = TestExchange::new(&url);
            let bus = exchange.bus_at(&url).await?;
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
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let exchange = TestExchange::new(&url);
    let bus = exchange.bus_at(&url).await?;
    let topic = unique_name("topic");
    brokers::dead_letter_carries_the_reason(&bus, &topic, &bus.dead_letter_topic(&topic)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_no_queue_bound_is_an_error_not_a_silent_drop() -> Result<(), Error> {
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let exchange = TestExchange::new(&url);
    let bus = exchange.bus_at(&url).await?;
    let result = bus
        .publish(&unique_name("topic"), Envelope::new("t", "test", "x"))
        .await;
    assert!(
        matches!(result, Err(Error::NotConfirmed { .. })),
        "{result:?}"
    );
    // Declared ahead, the group keeps events published before anyone subscribes.
    let topic = unique_name("topic");
    let group = unique_name("g");
    bus.declare_group(&topic, &group).await?;
    let sent = Envelope::new("t", "test", "early");
    bus.publish(&topic, sent.clone()).await?;
    let mut stream = bus.subscribe(&Subscription::new(&topic, &group)).await?;
    let delivery = brokers::next(&mut stream).await;
    assert_eq!(brokers::envelope(&delivery), sent);
    delivery.ack().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_without_envelope_headers_is_delivered_malformed_and_can_be_dead_lettered()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let exchange = TestExchange::new(&url);
    let bus = exchange.bus_at(&url).await?;
    let topic = unique_name("topic");
    let (mut stream, mut dead) =
        brokers::with_dead_letters(&bus, &topic, &bus.dead_letter_topic(&topic)).await?;
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            exchange.name().into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            b"raw",
            BasicProperties::default(),
        )
        .await?;
    let delivery = brokers::next(&mut stream).await;
    assert!(matches!(delivery.envelope(), Err(Error::Malformed { .. })));
    delivery.dead_letter("malformed").await?;
    let letter = brokers::next(&mut dead).await;
    assert!(matches!(letter.envelope(), Err(Error::Malformed { .. })));
    letter.ack().await?;
    brokers::keeps_running(&bus, &topic, &mut stream).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_publish_loses_no_confirmed_event()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Amqp.host_port()).await?;
    let exchange = TestExchange::new(&url);
    let through_proxy = exchange.bus_at(&proxy.url_for(&url)).await?;
    let direct = exchange.bus_at(&url).await?;
    let topic = unique_name("topic");
    let subscription = Subscription::new(&topic, unique_name("g")).with_prefetch(100);
    brokers::connection_cut_mid_publish_loses_no_confirmed_event(
        &through_proxy,
        &direct,
        &proxy,
        &topic,
        subscription,
    )
    .await
}

/// A declaration that fails on a connection cut under it makes the next one connect
/// afresh: lapin may still call the old connection and channel open, and reusing them
/// would fail the same way until it notices; a step lapin would wait on for ever
/// times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_after_a_cut_reconnects() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Amqp.host_port()).await?;
    let exchange = TestExchange::new(&url);
    let bus = RabbitMqBus::with_options(
        RabbitMqOptions::new(proxy.url_for(&url))
            .exchange(exchange.name())
            .operation_timeout(Duration::from_secs(2)),
    )
    .await?;
    let topic = unique_name("topic");
    for round in 0..5 {
        proxy.cut();
        let mut failures = 0;
        while let Err(e) = bus.declare_group(&topic, "g").await {
            eprintln!("round {round}: declaring failed: {e}");
            failures += 1;
            assert!(
                failures <= 2,
                "round {round}: declaring still fails after {failures} tries: {e}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_consume_reconnects_and_loses_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = require(Service::Amqp).await else {
        return Ok(());
    };
    let proxy = FaultProxy::start(&Service::Amqp.host_port()).await?;
    let exchange = TestExchange::new(&url);
    let through_proxy = exchange.bus_at(&proxy.url_for(&url)).await?;
    let direct = exchange.bus_at(&url).await?;
    let topic = unique_name("topic");
    brokers::connection_cut_mid_consume_reconnects_and_loses_nothing(
        &through_proxy,
        &direct,
        &proxy,
        &topic,
    )
    .await
}
