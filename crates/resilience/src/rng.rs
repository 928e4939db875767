//! A tiny seeded PRNG (splitmix64): enough for jitter and fault injection, no `rand`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// splitmix64 (Steele, Lea, Flood 2014): passes BigCrush, one `u64` of state.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

/// A seed from the process's hash randomness and a process-wide counter.
fn hashed_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the process's hash randomness and a counter, so two
    /// generators created in a row differ. The hashing is done once per thread; each
    /// call then draws its seed from that thread's own splitmix64 stream.
    pub(crate) fn from_entropy() -> Self {
        thread_local! {
            static SEEDS: std::cell::Cell<u64> = std::cell::Cell::new(hashed_seed());
        }
        SEEDS.with(|seeds| {
            let mut stream = SplitMix64(seeds.get());
            let seed = stream.next_u64();
            seeds.set(stream.0);
            Self(seed)
        })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value uniform in `lo..=hi` (`lo` when `hi <= lo`).
    #[allow(dead_code)]
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        let r = self.next_u64();
        if span == u64::MAX {
            r
        } else {
            lo + r % (span + 1)
        }
    }

    /// A value uniform in `[0, 1)`.
    #[allow(dead_code)]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_bounds_hold() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.between(10, 20);
            assert_eq!(x, b.between(10, 20));
            assert!((10..=20).contains(&x));
            let f = a.next_f64();
            b.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert_ne!(
            SplitMix64::from_entropy().next_u64(),
            SplitMix64::from_entropy().next_u64()
        );
    }
}
