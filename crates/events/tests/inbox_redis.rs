//! The Redis inbox against a real Redis: claim states, lease expiry (a crash mid-handler
//! is retried, not skipped), and two consumer instances sharing it.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_events::consumer::{Consumer, Context, HandlerError};
use palisade_events::inbox::{Claim, Inbox, RedisInbox};
use palisade_events::{Envelope, Error, Event, MemoryBus, Publisher, Subscription};
use palisade_testkit::{Service, require, unique_name};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn inbox() -> Option<RedisInbox> {
    let url = require(Service::Redis).await?;
    let inbox = RedisInbox::connect(&url).await.ok()?;
    Some(inbox.with_prefix(unique_name("inbox")))
}

#[tokio::test]
async fn claim_then_complete_marks_processed_per_consumer() -> Result<(), Error> {
    let Some(inbox) = inbox().await else {
        return Ok(());
    };
    let id = Uuid::now_v7();
    assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired);
    assert_eq!(inbox.claim("billing", id).await?, Claim::InProgress);
    inbox.complete("billing", id).await?;
    assert_eq!(inbox.claim("billing", id).await?, Claim::Processed);
    inbox.release("billing", id).await?; // a late release does not erase `processed`
    assert_eq!(inbox.claim("billing", id).await?, Claim::Processed);
    assert_eq!(inbox.claim("shipping", id).await?, Claim::Acquired);
    Ok(())
}

#[tokio::test]
async fn a_released_claim_is_retried_at_once() -> Result<(), Error> {
    let Some(inbox) = inbox().await else {
        return Ok(());
    };
    let id = Uuid::now_v7();
    assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
    inbox.release("c", id).await?;
    assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
    Ok(())
}

/// Redis expires keys on its own clock, so this one waits out a short real lease.
#[tokio::test]
async fn a_crashed_claim_expires_so_the_redelivery_is_handled_not_skipped() -> Result<(), Error> {
    let Some(inbox) = inbox().await else {
        return Ok(());
    };
    let inbox = inbox.with_lease(Duration::from_millis(200));
    let id = Uuid::now_v7();
    assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
    // ... the instance dies here, never completing or releasing ...
    assert_eq!(inbox.claim("c", id).await?, Claim::InProgress);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Shipped {
    n: u32,
}

impl Event for Shipped {
    const TYPE: &'static str = "test.shipped";
}

#[tokio::test]
async fn two_instances_sharing_the_redis_inbox_handle_each_event_once() -> Result<(), Error> {
    let Some(inbox) = inbox().await else {
        return Ok(());
    };
    let bus = MemoryBus::new();
    let effects = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for instance in 0..2 {
        let effects = Arc::clone(&effects);
        let consumer = Consumer::new(bus.clone(), Subscription::new("t", format!("i{instance}")))
            .name("shipping")
            .backoff(palisade_resilience::backoff::Backoff::constant(
                Duration::from_millis(20),
            ))
            .inbox(inbox.clone())
            .handle(move |_: Shipped, _: Context| {
                let effects = Arc::clone(&effects);
                async move {
                    effects.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, HandlerError>(())
                }
            });
        running.push(tokio::spawn(consumer.run(shutdown.clone())));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let events: Vec<Envelope> = (0..30)
        .map(|n| Envelope::from_event(&Shipped { n }, "test"))
        .collect::<Result<_, _>>()?;
    bus.publish_batch("t", events).await?;
    for _ in 0..500 {
        if bus.pending("t", "i0") == 0
            && bus.pending("t", "i1") == 0
            && effects.load(Ordering::SeqCst) >= 30
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    for task in running {
        task.await.map_err(|e| Error::Config(e.to_string()))??;
    }
    assert_eq!(effects.load(Ordering::SeqCst), 30);
    Ok(())
}
