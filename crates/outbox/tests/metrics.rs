//! With the `metrics` feature the relay reports what it published, failed and parked,
//! the backlog and the batch durations through the `metrics` facade, and its `stats()`
//! snapshot tells the same story.
#![cfg(all(feature = "metrics", feature = "sqlite"))]

mod common;

use std::time::Duration;

use common::{Recorder, event, eventually};
use palisade_outbox::{Outbox, Relay};
use palisade_testkit::metrics::CaptureRecorder;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn published_failed_parked_and_the_backlog_reach_the_metrics_facade() -> TestResult {
    let metrics = CaptureRecorder::default();
    let _guard = metrics.install();

    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let events: Vec<_> = (0..3).map(|n| event(&format!("order-{n}"), n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;

    // The broker refuses the second event: with one attempt allowed it is parked.
    let broker = Recorder::default();
    broker.refuse(events[1].id);
    let relay = Relay::builder(&outbox, &pool, broker.clone())
        .max_attempts(1)
        .stats_interval(Duration::from_millis(1))
        .poll_interval(Duration::from_millis(10))
        .build()?;
    let shutdown = CancellationToken::new();
    let table = outbox.table().to_owned();
    let labels = [("table", table.as_str())];
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        relay.run(shutdown)
    });
    let settled = eventually(Duration::from_secs(10), || {
        metrics.counter("palisade_outbox_parked_total", &labels) == 1
            && metrics.gauge("palisade_outbox_dead", &labels) == Some(1.0)
            && metrics.gauge("palisade_outbox_backlog", &labels) == Some(0.0)
    })
    .await;
    shutdown.cancel();
    running.await??;
    assert!(settled, "metrics seen: {:?}", metrics.names());

    // A refused event stops the broker's batch after the events before it were stored,
    // and the relay cannot know how far it got: it publishes those again (at least once).
    let mut delivered = broker.ids();
    delivered.sort();
    delivered.dedup();
    let mut expected = vec![events[0].id, events[2].id];
    expected.sort();
    assert_eq!(delivered, expected);
    assert_eq!(
        metrics.counter("palisade_outbox_published_total", &labels),
        2
    );
    assert_eq!(metrics.counter("palisade_outbox_failed_total", &labels), 1);
    assert_eq!(metrics.counter("palisade_outbox_errors_total", &labels), 0);
    assert_eq!(
        metrics.gauge("palisade_outbox_oldest_age_seconds", &labels),
        Some(0.0),
        "nothing pending: no age"
    );
    let batches = metrics.histogram("palisade_outbox_batch_seconds", &labels);
    assert!(!batches.is_empty());
    assert!(
        batches.iter().all(|s| (0.0..10.0).contains(s)),
        "{batches:?}"
    );
    Ok(())
}
