//! The conformance suite on RabbitMQ (skipped when RabbitMQ is down).
#![cfg(feature = "rabbitmq")]

use palisade_events::Error;
use palisade_events::backend::rabbitmq::{RabbitMqBus, RabbitMqOptions};
use palisade_events::conformance::{self, Backend, Failure};
use palisade_testkit::{Service, require};

mod exchange;

use exchange::TestExchange;

/// Every client of one scenario uses the same (fresh) exchange.
struct RabbitMq {
    url: String,
    exchange: TestExchange,
}

impl Backend for RabbitMq {
    type Bus = RabbitMqBus;

    async fn connect(&self) -> Result<RabbitMqBus, Error> {
        RabbitMqBus::with_options(RabbitMqOptions::new(&self.url).exchange(self.exchange.name()))
            .await
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Failure> {
            let Some(url) = require(Service::Amqp).await else { return Ok(()) };
            let exchange = TestExchange::new(&url);
            conformance::$name(&RabbitMq { url, exchange }).await
        }
    )*};
}

scenarios!(
    envelope_round_trip,
    confirm_before_return,
    redelivery_after_consumer_death,
    retry_with_delay,
    dead_lettering,
    order_per_key,
    groups_share_work,
    fan_out,
    shutdown_loses_nothing,
);
