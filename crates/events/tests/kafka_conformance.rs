//! The conformance suite on Kafka (librdkafka's in-process mock cluster).
//!
//! Two promises are Kafka's own and checked in `kafka_backend.rs` instead:
//! Kafka does not count deliveries, so a redelivery after a consumer's death starts
//! again at attempt 1 (`unsettled_record_is_redelivered_after_the_member_leaves`), and
//! a group's members split partitions, not messages, so an exact prefetch split is not
//! promised (`group_members_share_the_partitions`).
#![cfg(feature = "kafka")]

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use palisade_events::Error;
use palisade_events::backend::kafka::{KafkaBus, KafkaOptions};
use palisade_events::conformance::{self, Backend, Capabilities};
use rdkafka::mocking::MockCluster;

type Create = (String, Sender<Result<(), String>>);

/// A mock cluster on a thread of its own (it is neither `Send` nor `Sync`), which
/// creates topics on request and is never destroyed (destroying it while consumers
/// are connected blocks).
struct Kafka {
    servers: String,
    create: Mutex<Sender<Create>>,
}

impl Kafka {
    fn start() -> Result<Self, Error> {
        let (create, requests) = channel::<Create>();
        let (servers_tx, servers_rx) = channel();
        std::thread::spawn(move || {
            let cluster = match MockCluster::new(1) {
                Ok(cluster) => cluster,
                Err(e) => {
                    let _ = servers_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = servers_tx.send(Ok(cluster.bootstrap_servers()));
            for (topic, reply) in requests {
                let _ = reply.send(
                    cluster
                        .create_topic(&topic, 3, 1)
                        .map_err(|e| e.to_string()),
                );
            }
            std::mem::forget(cluster);
        });
        let servers = servers_rx
            .recv()
            .map_err(|e| Error::Config(e.to_string()))?
            .map_err(Error::Config)?;
        Ok(Self {
            servers,
            create: Mutex::new(create),
        })
    }

    fn create_topic(&self, topic: &str) -> Result<(), Error> {
        let (reply, answer) = channel();
        self.create
            .lock()
            .map_err(|e| Error::Config(e.to_string()))?
            .send((topic.to_owned(), reply))
            .map_err(|e| Error::Config(e.to_string()))?;
        answer
            .recv()
            .map_err(|e| Error::Config(e.to_string()))?
            .map_err(Error::Config)
    }
}

impl Backend for Kafka {
    type Bus = KafkaBus;

    async fn connect(&self) -> Result<KafkaBus, Error> {
        KafkaBus::with_options(
            KafkaOptions::new(&self.servers)
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500"),
        )
    }

    async fn prepare_topic(&self, topic: &str) -> Result<(), Error> {
        self.create_topic(topic)?;
        self.create_topic(&format!("{topic}.dlq"))
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Box<dyn std::error::Error>> {
            conformance::$name(&Kafka::start()?).await?;
            Ok(())
        }
    )*};
}

scenarios!(
    envelope_round_trip,
    confirm_before_return,
    retry_with_delay,
    dead_lettering,
    order_per_key,
    fan_out,
    shutdown_loses_nothing,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_plays_every_scenario_kafka_promises() -> Result<(), Box<dyn std::error::Error>> {
    let kafka = Capabilities {
        redelivery_after_consumer_death: false,
        groups_share_work: false,
        ..Capabilities::ALL
    };
    let ran = conformance::run(&Kafka::start()?, kafka).await?;
    assert_eq!(ran.len(), 7);
    Ok(())
}
