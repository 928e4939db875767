//! A fixed number of small JSON events published one by one and handled on the
//! in-memory bus (`SIDE=palisade`, the default) or on ruststream 0.7's in-memory broker
//! (`SIDE=ruststream`), the same setup as the `events` bench's
//! `memory_publish_to_handler`, once, then exit: for counting instructions, which
//! unlike time do not move with the machine's load. `KEYS=k` gives our events one of
//! `k` ordering keys each (the peer's have none).
//!
//! ```text
//! cargo bench -p palisade-benches --bench events_count --no-run
//! SIDE=palisade N=200000 valgrind --tool=callgrind --separate-threads=yes \
//!     target/release/deps/events_count-<hash>
//! ```
//!
//! With `--separate-threads=yes` callgrind writes one count per thread: the publishing
//! thread (`-01`) and the runtime's workers, one of which runs the consumer. Divide by
//! `N`; the difference between two values of `N` removes the start-up. Also prints the
//! rate, which under valgrind means nothing. `ROUNDS=r` repeats the publish-and-drain
//! `r` times on one consumer, as criterion's iterations do, and prints the median
//! round's rate: for timing two builds against each other without criterion.
#![allow(missing_docs, unreachable_pub)]

use palisade_events::MemoryBus;
use tokio_util::sync::CancellationToken;

#[path = "events_memory.rs"]
mod memory;

use memory::{Latch, body, runtime};

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let side = std::env::var("SIDE").unwrap_or_else(|_| "palisade".to_owned());
    let keys: usize = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let rt = runtime();
    let latch = Latch::default();
    let body = body();
    let mut times = Vec::with_capacity(rounds);
    match side.as_str() {
        "ruststream" => {
            let (running, publisher) = memory::ruststream_app(&rt, &latch);
            for _ in 0..rounds {
                let publish = memory::ruststream_publish(&publisher, &body, n);
                times.push(memory::round(&rt, &latch, n, publish));
            }
            drop(running);
        }
        "palisade" => {
            let bus = MemoryBus::new();
            let shutdown = CancellationToken::new();
            let running = rt.spawn(memory::palisade_consumer(&bus, &latch).run(shutdown.clone()));
            for _ in 0..rounds {
                let publish = memory::palisade_publish(&bus, &body, n, keys);
                times.push(memory::round(&rt, &latch, n, publish));
            }
            shutdown.cancel();
            if let Ok(Err(e)) = rt.block_on(running) {
                panic!("consumer: {e}");
            }
        }
        other => panic!("SIDE is palisade or ruststream, not {other:?}"),
    }
    times.sort();
    let elapsed = times[times.len() / 2];
    println!(
        "{side}: {n} events, {:.2}M events/s (median of {rounds} rounds)",
        n as f64 / elapsed.as_secs_f64() / 1e6
    );
}
