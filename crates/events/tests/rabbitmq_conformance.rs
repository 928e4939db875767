//! The conformance suite on RabbitMQ (skipped when RabbitMQ is down).
#![cfg(feature = "rabbitmq")]

use palisade_events::conformance::{self, Failure};
use palisade_testkit::{Service, require};

mod exchange;

// Every client of one scenario uses the same (fresh) exchange.
use exchange::TestExchange;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Failure> {
            let Some(url) = require(Service::Amqp).await else { return Ok(()) };
            conformance::$name(&TestExchange::new(&url)).await
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
