//! The outbox's promises on SQLite (a temporary database file per test).
#![cfg(feature = "sqlite")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Recorder, assert_no_duplicates, assert_order_per_key, event, eventually, stall_at};
use palisade_events::Envelope;
use palisade_outbox::{Error, FaultPoint, Outbox, Relay};
use palisade_resilience::backoff::Backoff;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn drain<S: palisade_outbox::Store, P: palisade_events::Publisher>(
    relay: &mut Relay<S, P>,
) -> Result<usize, Error> {
    let mut total = 0;
    loop {
        let report = relay.run_once().await?;
        total += report.published;
        if report.claimed == 0 {
            return Ok(total);
        }
    }
}

fn expected_of(events: &[Envelope]) -> HashMap<String, Vec<Uuid>> {
    common::first_seen_per_key(
        &events
            .iter()
            .map(|e| (String::new(), e.clone()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn a_committed_event_is_published_once_and_a_rolled_back_one_never() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let committed = event("order-1", 1)
        .with_header("tenant", "acme")
        .with_correlation_id("c-1");
    let rolled_back = event("order-2", 2);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &committed).await?;
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &rolled_back).await?;
    tx.rollback().await?;

    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    assert_eq!(drain(&mut relay).await?, 1);
    assert_eq!(drain(&mut relay).await?, 0);
    let published = recorder.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "orders");
    assert_eq!(
        published[0].1, committed,
        "every envelope field survives SQLite"
    );
    Ok(())
}

#[tokio::test]
async fn an_event_under_a_rolled_back_savepoint_is_not_published() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let kept = event("k", 1);
    let undone = event("k", 2);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &kept).await?;
    {
        let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
        outbox.enqueue(&mut savepoint, "orders", &undone).await?;
        savepoint.rollback().await?;
    }
    tx.commit().await?;
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    drain(&mut relay).await?;
    assert_eq!(recorder.ids(), vec![kept.id]);
    Ok(())
}

#[tokio::test]
async fn invalid_events_are_refused_before_writing() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new().with_max_payload(2);
    let mut tx = pool.begin().await?;
    assert!(matches!(
        outbox.enqueue(&mut tx, "", &event("k", 1)).await,
        Err(Error::EmptyTopic)
    ));
    assert!(matches!(
        outbox
            .enqueue(&mut tx, "t", &Envelope::new("t", "s", vec![0; 3]))
            .await,
        Err(Error::PayloadTooLarge { size: 3, limit: 2 })
    ));
    tx.commit().await?;
    assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    Ok(())
}

#[tokio::test]
async fn a_large_batch_enqueue_publishes_in_order() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..1234)
        .map(|n| event(&format!("k{}", n % 7), n))
        .collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(100)
        .build()?;
    assert_eq!(drain(&mut relay).await?, 1234);
    assert_eq!(
        recorder.ids(),
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    Ok(())
}

async fn concurrent_relays(relays: usize) -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    let mut handles = Vec::new();
    for _ in 0..relays {
        handles.push(
            Relay::builder(&outbox, &pool, recorder.clone())
                .batch_size(8)
                .poll_interval(Duration::from_millis(5))
                .build()?
                .spawn(),
        );
    }
    let events: Vec<Envelope> = (0..300).map(|n| event(&format!("k{}", n % 6), n)).collect();
    for chunk in events.chunks(5) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, "orders", chunk).await?;
        tx.commit().await?;
    }
    assert!(
        eventually(Duration::from_secs(30), || recorder.len() >= 300).await,
        "{}",
        recorder.len()
    );
    for h in handles {
        h.shutdown().await?;
    }
    let published = recorder.published();
    assert_eq!(published.len(), 300);
    assert_no_duplicates(&published);
    assert_order_per_key(&published, &expected_of(&events));
    Ok(())
}

#[tokio::test]
async fn two_relays_publish_everything_in_order_per_key_without_duplicates() -> TestResult {
    concurrent_relays(2).await
}

#[tokio::test]
async fn three_relays_publish_everything_in_order_per_key_without_duplicates() -> TestResult {
    concurrent_relays(3).await
}

#[tokio::test]
async fn a_relay_killed_between_publish_and_delete_is_taken_over_after_its_lease() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..12).map(|n| event(&format!("k{}", n % 2), n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    let (hook, mut reached) = stall_at(FaultPoint::Published);
    let doomed = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(6)
        .lease(Duration::from_millis(300))
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    doomed.abort();
    assert_eq!(recorder.len(), 6);
    let mut survivor = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    // While the lease lives, the rows and the later rows of their keys stay put.
    assert_eq!(survivor.run_once().await?.claimed, 0);
    let mut republished = 0;
    for _ in 0..100 {
        republished += drain(&mut survivor).await?;
        if republished == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(republished, 12);
    let published = recorder.published();
    assert_eq!(published.len(), 18);
    assert_order_per_key(&published, &expected_of(&events));
    Ok(())
}

#[tokio::test]
async fn while_the_broker_is_down_the_backlog_grows_then_drains_in_order() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    recorder.set_down(true);
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(4)
        .poll_interval(Duration::from_millis(10))
        .backoff(Backoff::constant(Duration::from_millis(30)))
        .max_attempts(1)
        .build()?
        .spawn();
    let events: Vec<Envelope> = (0..30).map(|n| event(&format!("k{}", n % 3), n)).collect();
    for chunk in events.chunks(3) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, "orders", chunk).await?;
        tx.commit().await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backlog = outbox.backlog(&pool).await?;
    assert_eq!((backlog.pending, backlog.dead), (30, 0));
    recorder.set_down(false);
    assert!(eventually(Duration::from_secs(20), || recorder.len() >= 30).await);
    handle.shutdown().await?;
    let published = recorder.published();
    assert_no_duplicates(&published);
    assert_order_per_key(&published, &expected_of(&events));
    Ok(())
}

#[tokio::test]
async fn a_failing_row_is_parked_dead_blocks_only_its_key_and_is_redriven() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let poison = event("bad", 1);
    let after = event("bad", 2);
    let other = event("good", 3);
    let mut tx = pool.begin().await?;
    outbox
        .enqueue_batch(
            &mut tx,
            "orders",
            &[poison.clone(), after.clone(), other.clone()],
        )
        .await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    recorder.refuse(poison.id);
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone())
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .max_attempts(2)
        .build()?;
    for _ in 0..10 {
        relay.run_once().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(recorder.ids(), vec![other.id]);
    let dead = outbox.dead_rows(&pool, 10).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope, poison);
    assert_eq!(dead[0].attempts, 2);
    recorder.accept(poison.id);
    assert_eq!(outbox.redrive(&pool, &[poison.id]).await?, 1);
    drain(&mut relay).await?;
    assert_eq!(recorder.ids(), vec![other.id, poison.id, after.id]);
    Ok(())
}

#[tokio::test]
async fn a_relay_dropped_mid_batch_releases_on_its_next_claim() -> TestResult {
    let pool = common::sqlite().await;
    let outbox = Outbox::new();
    let e = event("k", 1);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &e).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    let (hook, _reached) = stall_at(FaultPoint::Claimed);
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone())
        .fault_hook(hook)
        .build()?;
    // Cancel the batch while it is stalled after the claim.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), relay.run_once())
            .await
            .is_err()
    );
    // The next call releases the stale claim first and publishes the row (the hook
    // stalls only once).
    assert_eq!(drain(&mut relay).await?, 1);
    assert_eq!(recorder.ids(), vec![e.id]);
    Ok(())
}
