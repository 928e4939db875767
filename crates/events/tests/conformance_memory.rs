//! The conformance suite instantiated for the in-memory bus, one test per promise.

use std::time::Duration;

use palisade_events::conformance::{self, Backend, Capabilities, Failure};
use palisade_events::{Error, MemoryBus};

/// Every scenario connects to the same bus, like processes sharing one broker.
struct Memory(MemoryBus);

impl Backend for Memory {
    type Bus = MemoryBus;

    async fn connect(&self) -> Result<MemoryBus, Error> {
        Ok(self.0.clone())
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(100)
    }
}

fn backend() -> Memory {
    Memory(MemoryBus::new())
}

/// A bus whose groups hold at most this many events waiting. The scenarios publish one
/// batch each, which goes in whole, and send events back (redeliveries, retries, a
/// departed member's buffer) into groups already over it: none of that may wait for
/// room or be lost.
const CAPACITY: usize = 8;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() -> Result<(), Failure> {
                conformance::$name(&backend()).await
            }
        )*

        /// Every promise holds on a bounded bus too (`MemoryBus::with_capacity`).
        mod bounded {
            use super::*;

            $(
                #[tokio::test]
                async fn $name() -> Result<(), Failure> {
                    conformance::$name(&Memory(MemoryBus::with_capacity(CAPACITY))).await
                }
            )*
        }
    };
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

#[tokio::test]
async fn run_plays_every_scenario_whose_capability_is_on() -> Result<(), Failure> {
    let some = Capabilities {
        retry_with_delay: false,
        order_per_key: false,
        ..Capabilities::ALL
    };
    let ran = conformance::run(&backend(), some).await?;
    assert_eq!(ran.len(), 7);
    assert!(!ran.contains(&"retry_with_delay") && !ran.contains(&"order_per_key"));
    Ok(())
}
