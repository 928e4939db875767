//! `examples/outbox_relay.rs` end to end: every committed order's event is handled
//! exactly once in effect, no rolled-back order's event is, and re-published events
//! are absorbed by the inbox — on SQLite with the in-memory bus, on PostgreSQL, and
//! through each real broker the build has a feature for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{run_example, summary};

/// Runs the example and checks the promises on its summary.
fn assert_flow(args: &[&str], orders: usize) {
    let broker_dedups = args.iter().any(|a| a.starts_with("nats://"));
    let orders_arg = orders.to_string();
    let mut all = vec!["--orders", orders_arg.as_str()];
    all.extend_from_slice(args);
    let (out, stdout) = run_example("outbox_relay", &all);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rolled_back = orders / 10;
    let committed = orders - rolled_back;
    assert_eq!(summary(&stdout, "written"), committed, "{stdout}");
    assert_eq!(summary(&stdout, "rolled_back"), rolled_back, "{stdout}");
    // At least once: every committed event published; once in effect: one
    // notification each, whatever was redelivered.
    assert!(summary(&stdout, "published") >= committed, "{stdout}");
    assert_eq!(summary(&stdout, "handled"), committed, "{stdout}");
    // Re-published events reach the inbox, which absorbs them, unless the broker
    // drops them first by id (JetStream's dedup window).
    assert_eq!(summary(&stdout, "republished"), 10, "{stdout}");
    assert_eq!(
        summary(&stdout, "duplicates_absorbed") + summary(&stdout, "dropped_by_broker"),
        10,
        "{stdout}"
    );
    if broker_dedups {
        assert_eq!(summary(&stdout, "dropped_by_broker"), 10, "{stdout}");
    } else {
        assert_eq!(summary(&stdout, "duplicates_absorbed"), 10, "{stdout}");
    }
}

fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(palisade_testkit::unique_name("outbox_relay_example"));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("orders.db").display())
}

#[test]
fn sqlite_and_the_memory_bus_need_no_server() {
    assert_flow(&["--database-url", &sqlite_url()], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_with_listen_notify_wakeups() {
    let Some(db) = palisade_testkit::postgres::fresh_database().await else {
        return;
    };
    let url = db.url().to_owned();
    tokio::task::spawn_blocking(move || assert_flow(&["--database-url", &url], 300))
        .await
        .unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn through_redis_streams() {
    use palisade_testkit::{Service, require};
    let Some(url) = require(Service::Redis).await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        assert_flow(&["--database-url", &sqlite_url(), "--broker", &url], 100)
    })
    .await
    .unwrap();
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread")]
async fn through_rabbitmq() {
    use palisade_testkit::{Service, require};
    let Some(url) = require(Service::Amqp).await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        assert_flow(&["--database-url", &sqlite_url(), "--broker", &url], 100)
    })
    .await
    .unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread")]
async fn through_nats_jetstream() {
    use palisade_testkit::{Service, require};
    let Some(url) = require(Service::Nats).await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        assert_flow(&["--database-url", &sqlite_url(), "--broker", &url], 100)
    })
    .await
    .unwrap();
}

/// Through Kafka: librdkafka's mock cluster (a real Kafka-protocol broker, in this test
/// process) serves the example process over TCP; the example's topic is created on
/// first use, as on a broker with auto-creation.
#[cfg(feature = "kafka")]
#[test]
fn through_kafka() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let broker = format!("kafka:{}", cluster.bootstrap_servers());
    assert_flow(&["--database-url", &sqlite_url(), "--broker", &broker], 100);
}

#[test]
fn an_unknown_broker_is_a_clear_error() {
    let (out, _) = run_example(
        "outbox_relay",
        &[
            "--database-url",
            &sqlite_url(),
            "--broker",
            "carrier-pigeon://x",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not available"));
}
