//! A RabbitMQ test's exchange, deleted when the test ends, and the buses on it, shared
//! by the RabbitMQ test files. Queues go away by themselves (the bus declares them with `x-expires`), but a
//! durable exchange stays until deleted: without this, every CI run left one exchange
//! per RabbitMQ test on the broker.
#![allow(dead_code, unreachable_pub)]

use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use palisade_events::Error;
use palisade_events::backend::rabbitmq::{RabbitMqBus, RabbitMqOptions};
use palisade_events::conformance::Backend;
use palisade_testkit::unique_name;

/// A fresh exchange name, deleted from the broker at `url` on drop: also when the test
/// fails or panics.
pub struct TestExchange {
    url: String,
    name: String,
}

impl TestExchange {
    /// A fresh exchange for a test against the broker at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: unique_name("x"),
        }
    }

    /// Its name, for `RabbitMqOptions::exchange`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A bus on this exchange, connected through `url`: the broker's, or a fault
    /// proxy's in front of it.
    pub async fn bus_at(&self, url: &str) -> Result<RabbitMqBus, Error> {
        RabbitMqBus::with_options(RabbitMqOptions::new(url).exchange(self.name())).await
    }
}

/// The conformance suite's backend: every client of one scenario a bus of its own on
/// this exchange, connected to the broker directly.
impl Backend for TestExchange {
    type Bus = RabbitMqBus;

    async fn connect(&self) -> Result<RabbitMqBus, Error> {
        self.bus_at(&self.url).await
    }
}

impl Drop for TestExchange {
    /// Deletes the exchange on a thread of its own with a runtime of its own: a drop
    /// cannot await, and it may run inside the test's runtime or while it unwinds.
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let deleting = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| e.to_string())?;
                channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                connection
                    .close(0, "test done".into())
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        match deleting.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete test exchange {}: {e}", self.name),
            Err(_) => eprintln!("deleting test exchange {} panicked", self.name),
        }
    }
}
