//! Property: whatever mix of duplicates, cross-key reordering, delays and transient
//! handler failures the bus delivers, an inbox-protected handler applies each event's
//! effect exactly once, and each key's effects in publish order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_events::consumer::{Consumer, Context, HandlerError};
use palisade_events::inbox::MemoryInbox;
use palisade_events::{Envelope, Error, Event, MemoryBus, Publisher, Subscription};
use palisade_resilience::backoff::Backoff;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Step {
    key: String,
    n: u32,
}

impl Event for Step {
    const TYPE: &'static str = "test.step";
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// splitmix64: enough randomness to shape a schedule from proptest's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The publish schedule: each key's events in order, keys interleaved at random, each
/// event duplicated up to twice at random later positions, random gaps between
/// publishes.
fn schedule(counts: &[u32], seed: u64) -> Result<Vec<(Envelope, Duration)>, Error> {
    let mut rng = Rng(seed);
    let mut queues: Vec<VecDeque<Envelope>> = Vec::new();
    for (k, count) in counts.iter().enumerate() {
        let mut q = VecDeque::new();
        for n in 0..*count {
            let step = Step {
                key: format!("k{k}"),
                n,
            };
            q.push_back(Envelope::from_event(&step, "test")?);
        }
        queues.push(q);
    }
    let mut order: Vec<Envelope> = Vec::new();
    loop {
        let live: Vec<usize> = (0..queues.len())
            .filter(|i| !queues[*i].is_empty())
            .collect();
        if live.is_empty() {
            break;
        }
        let pick = live[rng.below(live.len())];
        if let Some(e) = queues[pick].pop_front() {
            order.push(e);
        }
    }
    let originals = order.clone();
    for (i, original) in originals.iter().enumerate() {
        for _ in 0..rng.below(3) {
            let first = order.iter().position(|e| e.id == original.id).unwrap_or(i);
            let at = first + 1 + rng.below(order.len() - first);
            order.insert(at.min(order.len()), original.clone());
        }
    }
    Ok(order
        .into_iter()
        .map(|e| (e, Duration::from_millis(rng.below(4) as u64 * 5)))
        .collect())
}

type Effects = Arc<Mutex<Vec<(String, u32)>>>;

async fn run_case(
    counts: Vec<u32>,
    seed: u64,
    concurrency: usize,
) -> Result<(Vec<(String, u32)>, usize), Error> {
    let bus = MemoryBus::new();
    let effects: Effects = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&effects);
    let consumer = Consumer::new(bus.clone(), Subscription::new("steps", "g"))
        .concurrency(concurrency)
        .backoff(Backoff::constant(Duration::from_millis(7)))
        .inbox(MemoryInbox::new())
        .handle(move |step: Step, ctx: Context| {
            let log = Arc::clone(&log);
            async move {
                // About a third of first attempts fail transiently.
                if ctx.attempt() == 1 && ctx.event_id().as_u128().is_multiple_of(3) {
                    return Err(HandlerError::transient("flaky dependency"));
                }
                tokio::time::sleep(Duration::from_millis(u64::from(step.n % 3))).await;
                if let Ok(mut l) = log.lock() {
                    l.push((step.key, step.n));
                }
                Ok(())
            }
        });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    tokio::task::yield_now().await;
    let plan = schedule(&counts, seed)?;
    for (envelope, gap) in plan {
        tokio::time::sleep(gap).await;
        bus.publish("steps", envelope).await?;
    }
    let unique: usize = counts.iter().map(|c| *c as usize).sum();
    for _ in 0..10_000 {
        let done = effects.lock().map(|e| e.len()).unwrap_or(0) >= unique;
        if done && bus.pending("steps", "g") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give any stray duplicate time to (wrongly) take effect.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    running
        .await
        .map_err(|e| Error::Config(format!("consumer task: {e}")))??;
    let effects = effects.lock().map(|e| e.clone()).unwrap_or_default();
    Ok((effects, unique))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn each_effect_happens_once_and_in_order_per_key(
        counts in prop::collection::vec(1u32..8, 1..5),
        seed in any::<u64>(),
        concurrency in 1usize..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (effects, unique) = runtime
            .block_on(run_case(counts.clone(), seed, concurrency))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(effects.len(), unique, "effects {:?}", effects);
        let distinct: HashSet<_> = effects.iter().cloned().collect();
        prop_assert_eq!(distinct.len(), unique, "an effect happened twice: {:?}", effects);
        let mut last: HashMap<&str, u32> = HashMap::new();
        for (key, n) in &effects {
            if let Some(previous) = last.insert(key, *n) {
                prop_assert!(previous < *n, "key {}: {} after {}", key, n, previous);
            }
        }
    }
}
