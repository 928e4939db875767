//! The outbox's promises on a real PostgreSQL server.
#![cfg(feature = "postgres")]

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

#[tokio::test]
async fn a_committed_event_is_published_once_and_a_rolled_back_one_never() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let committed = event("order-1", 1).with_header("tenant", "acme");
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
    let (topic, got) = &published[0];
    assert_eq!(topic, "orders");
    assert_eq!(got.id, committed.id);
    assert_eq!(got.headers, committed.headers);
    assert_eq!(got.payload, committed.payload);
    assert_eq!(got.key, committed.key);
    assert_eq!(
        got.time.timestamp_micros(),
        committed.time.timestamp_micros()
    );
    assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    Ok(())
}

#[tokio::test]
async fn an_event_under_a_rolled_back_savepoint_is_not_published() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
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
async fn invalid_events_are_refused_before_writing_and_the_transaction_goes_on() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new().with_max_payload(8);
    let mut tx = pool.begin().await?;
    let err = outbox.enqueue(&mut tx, "", &event("k", 1)).await;
    assert!(matches!(err, Err(Error::EmptyTopic)), "{err:?}");
    let big = Envelope::new("t", "s", vec![0_u8; 9]);
    let err = outbox.enqueue(&mut tx, "orders", &big).await;
    assert!(
        matches!(err, Err(Error::PayloadTooLarge { size: 9, limit: 8 })),
        "{err:?}"
    );
    // One bad envelope in a batch: nothing of the batch is written.
    let err = outbox
        .enqueue_batch(&mut tx, "orders", &[Envelope::new("t", "s", vec![1]), big])
        .await;
    assert!(matches!(err, Err(Error::PayloadTooLarge { .. })), "{err:?}");
    // The transaction is still usable.
    let small = Envelope::new("t", "s", vec![1, 2]);
    outbox.enqueue(&mut tx, "orders", &small).await?;
    tx.commit().await?;
    assert_eq!(outbox.backlog(&pool).await?.pending, 1);
    Ok(())
}

#[tokio::test]
async fn a_batch_enqueue_is_one_statement_and_publishes_in_order() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..50).map(|n| event(&format!("k{}", n % 3), n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(7)
        .build()?;
    assert_eq!(drain(&mut relay).await?, 50);
    assert_eq!(
        recorder.ids(),
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn a_typed_event_is_enqueued_with_its_key() -> TestResult {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Placed {
        order: u32,
    }
    impl palisade_events::Event for Placed {
        const TYPE: &'static str = "order.placed";
        fn key(&self) -> Option<String> {
            Some(self.order.to_string())
        }
    }
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let mut tx = pool.begin().await?;
    let written = outbox
        .enqueue_event(&mut tx, "orders", "shop", &Placed { order: 9 })
        .await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    drain(&mut relay).await?;
    let published = recorder.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].1.id, written.id);
    assert_eq!(published[0].1.key.as_deref(), Some("9"));
    let back: Placed = published[0].1.decode()?;
    assert_eq!(back.order, 9);
    Ok(())
}

async fn concurrent_relays_keep_order_without_duplicates(relays: usize) -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    let mut handles = Vec::new();
    for _ in 0..relays {
        let relay = Relay::builder(&outbox, &pool, recorder.clone())
            .batch_size(16)
            .poll_interval(Duration::from_millis(20))
            .build()?;
        handles.push(relay.spawn());
    }
    // Writers enqueue while the relays run: 4 writers, each its own keys, in order.
    let mut expected: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut writers = Vec::new();
    for w in 0..4 {
        let pool = pool.clone();
        let outbox = outbox.clone();
        let events: Vec<Envelope> = (0..200)
            .map(|n| event(&format!("w{w}-k{}", n % 5), n))
            .collect();
        for e in &events {
            expected
                .entry(e.key.clone().unwrap_or_default())
                .or_default()
                .push(e.id);
        }
        writers.push(tokio::spawn(async move {
            for chunk in events.chunks(3) {
                let mut tx = pool.begin().await?;
                for e in chunk {
                    outbox.enqueue(&mut tx, "orders", e).await?;
                }
                tx.commit().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    assert!(
        eventually(Duration::from_secs(30), || recorder.len() >= 800).await,
        "published {} of 800",
        recorder.len()
    );
    for h in handles {
        h.shutdown().await?;
    }
    let published = recorder.published();
    assert_eq!(published.len(), 800);
    assert_no_duplicates(&published);
    assert_order_per_key(&published, &expected);
    Ok(())
}

#[tokio::test]
async fn two_relays_publish_everything_in_order_per_key_without_duplicates() -> TestResult {
    concurrent_relays_keep_order_without_duplicates(2).await
}

#[tokio::test]
async fn three_relays_publish_everything_in_order_per_key_without_duplicates() -> TestResult {
    concurrent_relays_keep_order_without_duplicates(3).await
}

#[tokio::test]
async fn a_relay_killed_between_publish_and_delete_leaves_its_rows_to_be_published_again()
-> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..20).map(|n| event(&format!("k{}", n % 2), n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;

    let recorder = Recorder::default();
    let (hook, mut reached) = stall_at(FaultPoint::Published);
    let doomed = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(10)
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    assert_eq!(recorder.len(), 10, "the first batch was published");
    doomed.abort();

    let mut survivor = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(10)
        .build()?;
    // The dead relay's socket closes, the server rolls its claim back, and its rows
    // come back (without waiting for the lease: the connection is gone).
    let mut republished = 0;
    for _ in 0..200 {
        republished += drain(&mut survivor).await?;
        if republished == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(republished, 20);
    let published = recorder.published();
    assert_eq!(published.len(), 30, "ten published twice, none lost");
    let expected = common::first_seen_per_key(
        &events
            .iter()
            .map(|e| (String::new(), e.clone()))
            .collect::<Vec<_>>(),
    );
    assert_order_per_key(&published, &expected);
    assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    Ok(())
}

#[tokio::test]
async fn a_hung_relay_loses_its_claim_when_the_lease_expires() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let e = event("k", 1);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &e).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    // Stalls after claiming, without dying: only the lease can free the row.
    let (hook, mut reached) = stall_at(FaultPoint::Claimed);
    let hung = Relay::builder(&outbox, &pool, recorder.clone())
        .lease(Duration::from_millis(300))
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    let mut other = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    assert_eq!(other.run_once().await?.claimed, 0, "the row is claimed");
    let mut published = 0;
    for _ in 0..100 {
        published += drain(&mut other).await?;
        if published > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published, 1);
    assert_eq!(recorder.ids(), vec![e.id]);
    hung.abort();
    Ok(())
}

#[tokio::test]
async fn while_one_relay_holds_a_key_no_other_relay_starts_it_in_the_middle() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..4).map(|n| event("k", n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    // The first relay takes the head of the key (two rows) and stalls before publishing.
    let (hook, mut reached) = stall_at(FaultPoint::Claimed);
    let first = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(2)
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    let mut second = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    for _ in 0..3 {
        assert_eq!(
            second.run_once().await?.claimed,
            0,
            "rows 3 and 4 must wait for 1 and 2"
        );
    }
    // The first relay dies before publishing: the second starts the key at its head.
    first.abort();
    let mut published = 0;
    for _ in 0..100 {
        published += drain(&mut second).await?;
        if published == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        recorder.ids(),
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_cut_mid_batch_loses_nothing_and_keeps_order() -> TestResult {
    let Some((pool, db)) = common::postgres().await else {
        return Ok(());
    };
    let proxy =
        palisade_testkit::FaultProxy::start(&palisade_testkit::Service::Postgres.host_port())
            .await?;
    let relay_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&proxy.url_for(db.url()))
        .await?;
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..60).map(|n| event(&format!("k{}", n % 4), n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;

    let recorder = Recorder::default();
    let (hook, mut reached) = stall_at(FaultPoint::Claimed);
    // The hook stalls the first batch; we cut the database connection under it, then
    // let the relay go on by aborting and restarting it from the same pool.
    let first = Relay::builder(&outbox, &relay_pool, recorder.clone())
        .batch_size(10)
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    proxy.cut();
    first.abort();
    proxy.restore();
    let handle = Relay::builder(&outbox, &relay_pool, recorder.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(20))
        .error_backoff(Backoff::constant(Duration::from_millis(20)))
        .build()?
        .spawn();
    // A second cut while draining: the relay reconnects on its own.
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(20), || common::first_seen_per_key(
            &recorder.published()
        )
        .values()
        .map(Vec::len)
        .sum::<usize>()
            == 60)
        .await,
        "published {} distinct of 60",
        common::first_seen_per_key(&recorder.published())
            .values()
            .map(Vec::len)
            .sum::<usize>()
    );
    // A batch published just before a cut keeps its rows (the delete never committed):
    // they are published again and deleted by a later claim, so wait for the table to
    // empty before stopping the relay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outbox.backlog(&pool).await?.pending != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await?;
    let expected = common::first_seen_per_key(
        &events
            .iter()
            .map(|e| (String::new(), e.clone()))
            .collect::<Vec<_>>(),
    );
    assert_order_per_key(&recorder.published(), &expected);
    assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    Ok(())
}

#[tokio::test]
async fn while_the_broker_is_down_the_backlog_grows_then_drains_in_order() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    recorder.set_down(true);
    let relay = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(8)
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .max_attempts(2)
        .stats_interval(Duration::from_millis(20))
        .build()?;
    let handle = relay.spawn();
    let events: Vec<Envelope> = (0..40).map(|n| event(&format!("k{}", n % 3), n)).collect();
    for chunk in events.chunks(4) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, "orders", chunk).await?;
        tx.commit().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backlog = outbox.backlog(&pool).await?;
    assert_eq!(
        backlog.pending, 40,
        "nothing lost, nothing parked while the broker is down"
    );
    assert_eq!(backlog.dead, 0);
    assert!(handle.stats().failed > 0);
    assert_eq!(recorder.len(), 0);
    recorder.set_down(false);
    assert!(eventually(Duration::from_secs(20), || recorder.len() >= 40).await);
    handle.shutdown().await?;
    let published = recorder.published();
    assert_no_duplicates(&published);
    let expected = common::first_seen_per_key(
        &events
            .iter()
            .map(|e| (String::new(), e.clone()))
            .collect::<Vec<_>>(),
    );
    assert_order_per_key(&published, &expected);
    Ok(())
}

#[tokio::test]
async fn a_failing_row_is_parked_dead_blocks_only_its_key_and_is_redriven() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
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
        .max_attempts(3)
        .build()?;
    for _ in 0..20 {
        relay.run_once().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        recorder.ids(),
        vec![other.id],
        "the other key is not blocked; `after` waits"
    );
    let dead = outbox.dead_rows(&pool, 10).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.id, poison.id);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("refused")
    );
    assert_eq!(outbox.backlog(&pool).await?.dead, 1);
    assert_eq!(relay.stats().parked, 1);

    recorder.accept(poison.id);
    assert_eq!(outbox.redrive(&pool, &[poison.id]).await?, 1);
    drain(&mut relay).await?;
    assert_eq!(recorder.ids(), vec![other.id, poison.id, after.id]);
    assert!(outbox.dead_rows(&pool, 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn rows_of_a_transaction_that_commits_late_are_not_skipped() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let early = event("a", 1);
    let late = event("b", 2);
    // `early` gets the lower seq but its transaction commits last.
    let mut slow = pool.begin().await?;
    outbox.enqueue(&mut slow, "orders", &early).await?;
    let mut fast = pool.begin().await?;
    outbox.enqueue(&mut fast, "orders", &late).await?;
    fast.commit().await?;
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    assert_eq!(drain(&mut relay).await?, 1);
    slow.commit().await?;
    assert_eq!(drain(&mut relay).await?, 1);
    assert_eq!(recorder.ids(), vec![late.id, early.id]);
    Ok(())
}

#[tokio::test]
async fn many_writers_committing_out_of_order_lose_no_row() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .poll_interval(Duration::from_millis(10))
        .build()?
        .spawn();
    let mut writers = Vec::new();
    let mut all = Vec::new();
    for w in 0..8_u64 {
        let pool = pool.clone();
        let outbox = outbox.clone();
        let events: Vec<Envelope> = (0..25).map(|n| event(&format!("w{w}"), n)).collect();
        all.extend(events.iter().map(|e| e.id));
        writers.push(tokio::spawn(async move {
            for (i, e) in events.iter().enumerate() {
                let mut tx = pool.begin().await?;
                outbox.enqueue(&mut tx, "orders", e).await?;
                // Hold some transactions open so later seqs commit first.
                tokio::time::sleep(Duration::from_millis(((i as u64 * 7 + w * 3) % 5) * 2)).await;
                tx.commit().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    assert!(eventually(Duration::from_secs(20), || recorder.len() >= all.len()).await);
    handle.shutdown().await?;
    let mut got = recorder.ids();
    got.sort();
    all.sort();
    assert_eq!(got, all);
    Ok(())
}

#[tokio::test]
async fn notify_wakes_the_relay_long_before_the_poll_interval() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let recorder = Recorder::default();
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .poll_interval(Duration::from_secs(3600))
        .build()?
        .spawn();
    // Let it go idle and start listening.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..3 {
        let e = event("k", n);
        let mut tx = pool.begin().await?;
        outbox.enqueue(&mut tx, "orders", &e).await?;
        tx.commit().await?;
        let started = std::time::Instant::now();
        assert!(
            eventually(Duration::from_secs(5), || recorder.ids().contains(&e.id)).await,
            "not woken"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    handle.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn wake_after_commit_wakes_the_relay_when_enqueue_does_not_notify() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new().with_notify(false);
    let recorder = Recorder::default();
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .poll_interval(Duration::from_secs(3600))
        .build()?
        .spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = event("k", 1);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "orders", &e).await?;
    tx.commit().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.len(), 0, "no notify, no poll: not published yet");
    outbox.wake(&pool).await?;
    assert!(eventually(Duration::from_secs(2), || recorder.ids() == vec![e.id]).await);
    handle.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_finishes_the_batch_in_hand() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..5).map(|n| event("k", n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let recorder = Recorder::default();
    // The hook holds the batch between claim and publish until shutdown was asked for.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let hook_gate = gate.clone();
    let hook: palisade_outbox::FaultHook = std::sync::Arc::new(move |p| {
        let gate = hook_gate.clone();
        let reached = reached_tx.clone();
        Box::pin(async move {
            if p == FaultPoint::Claimed {
                let _ = reached.send(());
                gate.notified().await;
            }
        })
    });
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .fault_hook(hook)
        .build()?
        .spawn();
    reached.recv().await;
    let stopping = tokio::spawn(handle.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    stopping.await??;
    assert_eq!(recorder.len(), 5);
    assert_eq!(outbox.backlog(&pool).await?.pending, 0);
    Ok(())
}

#[tokio::test]
async fn stats_report_backlog_age_and_throughput() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let events: Vec<Envelope> = (0..30).map(|n| event("k", n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let backlog = outbox.backlog(&pool).await?;
    assert_eq!(backlog.pending, 30);
    assert!(backlog.oldest.is_some());
    let recorder = Recorder::default();
    let handle = Relay::builder(&outbox, &pool, recorder.clone())
        .batch_size(10)
        .stats_interval(Duration::from_millis(10))
        .build()?
        .spawn();
    assert!(eventually(Duration::from_secs(10), || handle.stats().published == 30).await);
    let stats = handle.stats();
    assert_eq!(stats.batches, 3);
    assert!(stats.published_per_second > 0.0);
    assert!(stats.backlog.is_some());
    handle.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_schema_qualified_table_works_alongside_the_default_one() -> TestResult {
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    sqlx::query("CREATE SCHEMA billing").execute(&pool).await?;
    let outbox = Outbox::new().with_table("billing.outbox")?;
    outbox.migrate(&pool).await?;
    outbox.migrate(&pool).await?; // idempotent
    let e = event("k", 1);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, "invoices", &e).await?;
    tx.commit().await?;
    assert_eq!(Outbox::new().backlog(&pool).await?.pending, 0);
    let recorder = Recorder::default();
    let mut relay = Relay::builder(&outbox, &pool, recorder.clone()).build()?;
    drain(&mut relay).await?;
    assert_eq!(recorder.ids(), vec![e.id]);
    Ok(())
}

#[tokio::test]
async fn events_reach_subscribers_of_the_memory_bus() -> TestResult {
    use futures_util::StreamExt;
    use palisade_events::{MemoryBus, Subscriber, Subscription};
    let Some((pool, _db)) = common::postgres().await else {
        return Ok(());
    };
    let outbox = Outbox::new();
    let bus = MemoryBus::new();
    let mut stream = bus
        .subscribe(&Subscription::new("orders", "billing"))
        .await?;
    let events: Vec<Envelope> = (0..10).map(|n| event("k", n)).collect();
    let mut tx = pool.begin().await?;
    outbox.enqueue_batch(&mut tx, "orders", &events).await?;
    tx.commit().await?;
    let handle = Relay::builder(&outbox, &pool, bus.clone()).build()?.spawn();
    let mut got = Vec::new();
    while got.len() < 10 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or("stream ended")??;
        got.push(delivery.envelope().map_err(|e| e.to_string())?.id);
        delivery.ack().await?;
    }
    handle.shutdown().await?;
    assert_eq!(got, events.iter().map(|e| e.id).collect::<Vec<_>>());
    Ok(())
}
