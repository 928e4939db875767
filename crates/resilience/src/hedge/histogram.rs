//! A small lock-free latency histogram: 64 buckets, each √2 wider than the last, from 1 µs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 64;

/// Latencies of recent calls, decayed by halving every `2 × min_samples` records so the
/// percentile follows the dependency as it changes.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    total: AtomicU64,
    recorded: AtomicU64,
    /// The cached delay in nanoseconds (0: not enough samples yet).
    cached: AtomicU64,
    percentile: f64,
    min_samples: u64,
}

fn bucket_of(latency: Duration) -> usize {
    let micros = latency.as_nanos() / 1_000;
    if micros <= 1 {
        return 0;
    }
    // 2 × log2(micros), in integer steps of √2.
    let log2 = 127 - micros.leading_zeros() as u64;
    let half = u64::from((micros >> log2.saturating_sub(1)) & 1 == 1 && log2 > 0);
    ((2 * log2 + half) as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket.
fn upper_bound(bucket: usize) -> Duration {
    let log2 = (bucket / 2) as u32;
    let base = 1u64 << log2.min(62);
    let micros = if bucket.is_multiple_of(2) {
        base + base / 2
    } else {
        base * 2
    };
    Duration::from_micros(micros)
}

impl LatencyHistogram {
    pub(crate) fn new(percentile: f64, min_samples: u32) -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            percentile,
            min_samples: u64::from(min_samples.max(1)),
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        self.buckets[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let n = self.recorded.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(16) || n == self.min_samples {
            self.recompute();
        }
        if n.is_multiple_of(2 * self.min_samples.max(512)) {
            for bucket in &self.buckets {
                let v = bucket.load(Ordering::Relaxed);
                bucket.fetch_sub(v / 2, Ordering::Relaxed);
                self.total.fetch_sub(v / 2, Ordering::Relaxed);
            }
        }
    }

    fn recompute(&self) {
        let total = self.total.load(Ordering::Relaxed);
        if total < self.min_samples {
            return;
        }
        let wanted = ((total as f64) * self.percentile / 100.0).ceil() as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= wanted.max(1) {
                let nanos = u64::try_from(upper_bound(i).as_nanos()).unwrap_or(u64::MAX);
                self.cached.store(nanos, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The estimated percentile, once `min_samples` latencies were recorded.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        match self.cached.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_root_two_and_contain_their_values() {
        for micros in [1u64, 2, 3, 5, 10, 100, 999, 1_000, 12_345, 1_000_000] {
            let d = Duration::from_micros(micros);
            let b = bucket_of(d);
            assert!(
                upper_bound(b) >= d,
                "{micros} µs in bucket {b} bounded by {:?}",
                upper_bound(b)
            );
            if b > 0 {
                assert!(
                    upper_bound(b - 1) <= d,
                    "{micros} µs should not fit bucket {}",
                    b - 1
                );
            }
        }
    }

    #[test]
    fn percentile_estimate_is_within_one_bucket() {
        let h = LatencyHistogram::new(90.0, 100);
        assert_eq!(h.estimate(), None);
        for i in 1..=100u64 {
            h.record(Duration::from_millis(i));
        }
        let p90 = h.estimate().expect("enough samples");
        assert!(
            p90 >= Duration::from_millis(90) && p90 <= Duration::from_millis(90 * 3 / 2),
            "{p90:?}"
        );
    }
}
