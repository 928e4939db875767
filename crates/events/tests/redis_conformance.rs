//! The conformance suite on Redis Streams (skipped when Redis is down).
#![cfg(feature = "redis")]

use std::time::Duration;

use palisade_events::Error;
use palisade_events::backend::redis::{RedisBus, RedisOptions};
use palisade_events::conformance::{self, Backend, Failure};
use palisade_testkit::{Service, require};

struct Redis(String);

impl Backend for Redis {
    type Bus = RedisBus;

    /// A short claim time, so a dead consumer's entries are claimed quickly.
    async fn connect(&self) -> Result<RedisBus, Error> {
        RedisBus::with_options(
            RedisOptions::new(&self.0)
                .claim_idle(Duration::from_millis(1500))
                .block(Duration::from_millis(100)),
        )
        .await
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Failure> {
            let Some(url) = require(Service::Redis).await else { return Ok(()) };
            conformance::$name(&Redis(url)).await
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
