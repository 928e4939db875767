//! The conformance suite (`palisade_events::conformance`) instantiated for the four
//! broker backends against the real servers (Kafka: librdkafka's mock cluster), each
//! with the capabilities it promises. Skipped per the testkit rule when a server is down.

use palisade_events::conformance::{self, Capabilities};

#[cfg(feature = "rabbitmq")]
mod exchange;

/// Runs the suite and prints which scenarios ran.
#[allow(dead_code)]
async fn check<B: conformance::Backend>(name: &str, backend: &B, caps: Capabilities) {
    match conformance::run(backend, caps).await {
        Ok(ran) => println!("{name}: {} scenarios passed: {ran:?}", ran.len()),
        Err(failure) => panic!("{name}: {failure} ({failure:?})"),
    }
}

#[cfg(feature = "redis")]
mod redis {
    use std::time::Duration;

    use palisade_events::Error;
    use palisade_events::backend::redis::{RedisBus, RedisOptions};
    use palisade_events::conformance::{Backend, Capabilities};
    use palisade_testkit::{Service, require};

    struct Redis(String);

    impl Backend for Redis {
        type Bus = RedisBus;

        async fn connect(&self) -> Result<RedisBus, Error> {
            RedisBus::with_options(
                RedisOptions::new(&self.0)
                    .claim_idle(Duration::from_millis(1500))
                    .block(Duration::from_millis(100)),
            )
            .await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_streams_pass_the_conformance_suite() {
        let Some(url) = require(Service::Redis).await else {
            return;
        };
        super::check("redis", &Redis(url), Capabilities::ALL).await;
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use palisade_events::conformance::Capabilities;
    use palisade_testkit::{Service, require};

    use crate::exchange::TestExchange;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_passes_the_conformance_suite() {
        let Some(url) = require(Service::Amqp).await else {
            return;
        };
        super::check("rabbitmq", &TestExchange::new(&url), Capabilities::ALL).await;
    }
}

#[cfg(feature = "nats")]
mod nats {
    use std::time::Duration;

    use palisade_events::Error;
    use palisade_events::backend::nats::{NatsBus, NatsOptions};
    use palisade_events::conformance::{Backend, Capabilities};
    use palisade_testkit::{Service, require};

    struct Nats(String);

    impl Backend for Nats {
        type Bus = NatsBus;

        async fn connect(&self) -> Result<NatsBus, Error> {
            NatsBus::with_options(NatsOptions::new(&self.0).ack_wait(Duration::from_secs(1))).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_jetstream_passes_the_conformance_suite() {
        let Some(url) = require(Service::Nats).await else {
            return;
        };
        super::check("nats", &Nats(url), Capabilities::ALL).await;
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Mutex;

    use palisade_events::Error;
    use palisade_events::backend::kafka::{KafkaBus, KafkaOptions};
    use palisade_events::conformance::{Backend, Capabilities};
    use palisade_testkit::unique_name;
    use rdkafka::mocking::MockCluster;

    /// Topics are created up front on the mock cluster (it is not `Send`, so the
    /// backend holds only its address and the names).
    struct Kafka {
        bootstrap: String,
        topics: Mutex<Vec<String>>,
    }

    impl Backend for Kafka {
        type Bus = KafkaBus;

        async fn connect(&self) -> Result<KafkaBus, Error> {
            KafkaBus::with_options(
                KafkaOptions::new(&self.bootstrap)
                    .set("session.timeout.ms", "6000")
                    .set("heartbeat.interval.ms", "500")
                    .set("topic.metadata.refresh.interval.ms", "500"),
            )
        }

        fn topic(&self) -> String {
            self.topics
                .lock()
                .ok()
                .and_then(|mut t| t.pop())
                .unwrap_or_else(|| unique_name("missing"))
        }

        fn counts_redeliveries(&self) -> bool {
            false
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_passes_the_conformance_suite() -> Result<(), Box<dyn std::error::Error>> {
        let cluster = MockCluster::new(1)?;
        let mut topics = Vec::new();
        for _ in 0..12 {
            let topic = unique_name("topic");
            cluster.create_topic(&topic, 3, 1)?;
            cluster.create_topic(&format!("{topic}.dlq"), 1, 1)?;
            topics.push(topic);
        }
        let backend = Kafka {
            bootstrap: cluster.bootstrap_servers(),
            topics: Mutex::new(topics),
        };
        // Members of a Kafka group share partitions, not single records: a member holds
        // whole partitions, so "five each with prefetch five" is not a Kafka promise
        // (the backend's own test checks partition sharing).
        let caps = Capabilities {
            groups_share_work: false,
            ..Capabilities::ALL
        };
        super::check("kafka", &backend, caps).await;
        drop(cluster);
        Ok(())
    }
}
