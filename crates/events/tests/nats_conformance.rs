//! The conformance suite on NATS JetStream (skipped when NATS is down).
#![cfg(feature = "nats")]

use std::time::Duration;

use palisade_events::Error;
use palisade_events::backend::nats::{NatsBus, NatsOptions};
use palisade_events::conformance::{self, Backend, Failure};
use palisade_testkit::{Service, require};

struct Nats(String);

impl Backend for Nats {
    type Bus = NatsBus;

    /// A short ack wait, so a dead consumer's messages come back quickly.
    async fn connect(&self) -> Result<NatsBus, Error> {
        NatsBus::with_options(NatsOptions::new(&self.0).ack_wait(Duration::from_secs(1))).await
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Failure> {
            let Some(url) = require(Service::Nats).await else { return Ok(()) };
            conformance::$name(&Nats(url)).await
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
