//! A `metrics` recorder that keeps what it is given, so a test can assert on the
//! counters, gauges and histograms the code under test emitted.
//!
//! Install it for the current thread with [`CaptureRecorder::install`] (a
//! `current_thread` tokio test runs every task on that thread), run the code, then read
//! the values back by name and labels.
//!
//! ```
//! use palisade_testkit::metrics::CaptureRecorder;
//!
//! let recorder = CaptureRecorder::default();
//! {
//!     let _guard = recorder.install();
//!     metrics::counter!("jobs_total", "queue" => "mail").increment(2);
//! }
//! assert_eq!(recorder.counter("jobs_total", &[("queue", "mail")]), 2);
//! assert_eq!(recorder.counter_sum("jobs_total"), 2);
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, LocalRecorderGuard,
    Metadata, Recorder, SharedString, Unit,
};

/// One metric's identity: its name and its labels, sorted.
type Id = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Store {
    counters: BTreeMap<Id, Arc<CounterCell>>,
    gauges: BTreeMap<Id, Arc<GaugeCell>>,
    histograms: BTreeMap<Id, Arc<HistogramCell>>,
}

/// Keeps every metric it is handed; cheap to clone (clones share the values).
#[derive(Clone, Debug, Default)]
pub struct CaptureRecorder {
    store: Arc<Mutex<Store>>,
}

fn id_of(key: &Key) -> Id {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

fn id(name: &str, labels: &[(&str, &str)]) -> Id {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

impl CaptureRecorder {
    /// Makes this recorder the current thread's until the guard drops.
    pub fn install(&self) -> LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(self)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counter `name` with exactly these labels (0 if never incremented).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.store()
            .counters
            .get(&id(name, labels))
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    /// The counter `name` summed over every label set.
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.store()
            .counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// The last value of gauge `name` with these labels, if it was ever set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.store()
            .gauges
            .get(&id(name, labels))
            .map(|g| f64::from_bits(g.0.load(Ordering::Relaxed)))
    }

    /// Every value recorded into histogram `name` with these labels, in order.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.store()
            .histograms
            .get(&id(name, labels))
            .map(|h| h.0.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// The names of every metric registered so far, sorted and deduplicated.
    pub fn names(&self) -> Vec<String> {
        let store = self.store();
        let mut names: Vec<String> = store
            .counters
            .keys()
            .chain(store.gauges.keys())
            .chain(store.histograms.keys())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Debug, Default)]
struct CounterCell(AtomicU64);

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct GaugeCell(AtomicU64);

impl GaugeCell {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            });
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct HistogramCell(Mutex<Vec<f64>>);

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }
}

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self.store().counters.entry(id_of(key)).or_default().clone();
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self.store().gauges.entry(id_of(key)).or_default().clone();
        Gauge::from_arc(cell)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = self
            .store()
            .histograms
            .entry(id_of(key))
            .or_default()
            .clone();
        Histogram::from_arc(cell)
    }
}
