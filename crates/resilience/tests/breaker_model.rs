//! The breaker against a small reference model: random configurations, random sequences
//! of outcomes, call durations, clock advances, resets and forced opens, under a paused
//! clock. Every transition, every admission and the window's counts must match.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_resilience::backoff::Backoff;
use palisade_resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, Outcome, SlidingWindow,
};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Success,
    Failure,
    Ignored,
    Cancelled,
}

#[derive(Clone, Debug)]
enum Op {
    Call { kind: Kind, millis: u64 },
    Advance(u64),
    Reset,
    ForceOpen,
    Disable,
}

const MS: u64 = 1_000_000;

#[derive(Debug)]
struct Model {
    cfg: CircuitBreakerConfig,
    state: CircuitState,
    now: u64,
    ring: VecDeque<(bool, bool)>,
    /// (tag, calls, failures, slow) per bucket.
    buckets: [(u64, u64, u64, u64); 10],
    open_until: u64,
    openings: u32,
    probes: (u64, u64, u64, u64),
    consecutive: u32,
    transitions: Vec<(CircuitState, CircuitState)>,
}

impl Model {
    fn new(cfg: CircuitBreakerConfig) -> Self {
        Self {
            cfg,
            state: CircuitState::Closed,
            now: 0,
            ring: VecDeque::new(),
            buckets: [(0, 0, 0, 0); 10],
            open_until: 0,
            openings: 0,
            probes: (0, 0, 0, 0),
            consecutive: 0,
            transitions: Vec::new(),
        }
    }

    fn bucket_nanos(&self) -> Option<u64> {
        match self.cfg.window {
            SlidingWindow::Count { .. } => None,
            SlidingWindow::Time { duration } => Some(duration.as_nanos() as u64 / 10),
        }
    }

    fn go(&mut self, to: CircuitState) {
        self.transitions.push((self.state, to));
        match to {
            CircuitState::Open => {
                self.openings += 1;
                self.open_until = self.now
                    + self
                        .cfg
                        .wait_in_open
                        .nominal_delay(self.openings)
                        .as_nanos() as u64;
            }
            CircuitState::HalfOpen => self.probes = (0, 0, 0, 0),
            CircuitState::Closed => {
                self.openings = 0;
                self.ring.clear();
                self.buckets = [(0, 0, 0, 0); 10];
                self.consecutive = 0;
            }
            _ => {}
        }
        self.state = to;
    }

    /// Returns whether the call is admitted.
    fn admit(&mut self) -> bool {
        match self.state {
            CircuitState::Closed | CircuitState::Disabled => true,
            CircuitState::ForcedOpen => false,
            CircuitState::Open => {
                if self.now < self.open_until {
                    false
                } else {
                    self.go(CircuitState::HalfOpen);
                    self.admit()
                }
            }
            CircuitState::HalfOpen => {
                if self.probes.0 < u64::from(self.cfg.half_open_probes) {
                    self.probes.0 += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn window(&self) -> (u64, u64, u64) {
        match self.bucket_nanos() {
            None => self.ring.iter().fold((0, 0, 0), |(c, f, s), &(fl, sl)| {
                (c + 1, f + u64::from(fl), s + u64::from(sl))
            }),
            Some(width) => {
                let tag = self.now / width + 1;
                self.buckets
                    .iter()
                    .filter(|b| b.0 != 0 && b.0 <= tag && tag - b.0 < 10)
                    .fold((0, 0, 0), |(c, f, s), b| (c + b.1, f + b.2, s + b.3))
            }
        }
    }

    fn trips(&self, calls: u64, failures: u64, slow: u64) -> bool {
        failures as f64 * 100.0 >= self.cfg.failure_rate_threshold * calls as f64
            || (self.cfg.slow_call_duration.is_some()
                && slow as f64 * 100.0 >= self.cfg.slow_call_rate_threshold * calls as f64)
    }

    fn record(&mut self, kind: Kind, millis: u64) {
        let slow = self
            .cfg
            .slow_call_duration
            .is_some_and(|d| Duration::from_millis(millis) >= d);
        match self.state {
            CircuitState::Closed => {
                let failed = match kind {
                    Kind::Success => false,
                    Kind::Failure => true,
                    Kind::Ignored | Kind::Cancelled => return,
                };
                if let Some(n) = self.cfg.consecutive_failures {
                    self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                    if self.consecutive >= n {
                        self.go(CircuitState::Open);
                    }
                    return;
                }
                let minimum = match self.bucket_nanos() {
                    None => {
                        let SlidingWindow::Count { size } = self.cfg.window else {
                            unreachable!()
                        };
                        if self.ring.len() == size as usize {
                            self.ring.pop_front();
                        }
                        self.ring.push_back((failed, slow));
                        u64::from(self.cfg.minimum_calls.min(size))
                    }
                    Some(width) => {
                        let tag = self.now / width + 1;
                        let b = &mut self.buckets[((tag - 1) % 10) as usize];
                        if b.0 != tag {
                            *b = (tag, 0, 0, 0);
                        }
                        b.1 += 1;
                        b.2 += u64::from(failed);
                        b.3 += u64::from(slow);
                        u64::from(self.cfg.minimum_calls)
                    }
                };
                let (calls, failures, slows) = self.window();
                if calls >= minimum && self.trips(calls, failures, slows) {
                    self.go(CircuitState::Open);
                }
            }
            CircuitState::HalfOpen => {
                match kind {
                    Kind::Ignored | Kind::Cancelled => {
                        self.probes.0 -= 1;
                        return;
                    }
                    Kind::Success => self.probes.1 += 1,
                    Kind::Failure => self.probes.2 += 1,
                }
                self.probes.3 += u64::from(slow);
                let wanted = u64::from(self.cfg.half_open_probes);
                let (_, succeeded, failed, slows) = self.probes;
                if self.cfg.consecutive_failures.is_some() {
                    if failed > 0 {
                        self.go(CircuitState::Open);
                    } else if succeeded >= wanted {
                        self.go(CircuitState::Closed);
                    }
                } else if succeeded + failed >= wanted {
                    if self.trips(wanted, failed, slows) {
                        self.go(CircuitState::Open);
                    } else {
                        self.go(CircuitState::Closed);
                    }
                }
            }
            _ => {}
        }
    }
}

fn config() -> impl Strategy<Value = CircuitBreakerConfig> {
    (
        prop_oneof![
            (1u32..20).prop_map(|size| SlidingWindow::Count { size }),
            (100u64..2000).prop_map(|ms| SlidingWindow::Time {
                duration: Duration::from_millis(ms)
            }),
        ],
        prop::sample::select(vec![10.0, 25.0, 50.0, 75.0, 100.0]),
        1u32..10,
        prop::option::of(5u64..50),
        prop::sample::select(vec![30.0, 50.0, 100.0]),
        prop::option::weighted(0.25, 1u32..5),
        prop_oneof![
            (10u64..200).prop_map(|ms| Backoff::constant(Duration::from_millis(ms))),
            (10u64..100).prop_map(|ms| Backoff::exponential(Duration::from_millis(ms))
                .with_max_delay(Duration::from_millis(700))),
        ],
        1u32..5,
    )
        .prop_map(
            |(window, threshold, minimum, slow, slow_threshold, consecutive, wait, probes)| {
                let mut cfg = CircuitBreakerConfig::default();
                cfg.window = window;
                cfg.failure_rate_threshold = threshold;
                cfg.minimum_calls = minimum;
                cfg.consecutive_failures = consecutive;
                cfg.slow_call_duration = if consecutive.is_some() {
                    None
                } else {
                    slow.map(Duration::from_millis)
                };
                cfg.slow_call_rate_threshold = slow_threshold;
                cfg.wait_in_open = wait;
                cfg.half_open_probes = probes;
                cfg
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (
            prop::sample::select(vec![
                Kind::Success,
                Kind::Success,
                Kind::Failure,
                Kind::Failure,
                Kind::Ignored,
                Kind::Cancelled
            ]),
            0u64..60
        )
            .prop_map(|(kind, millis)| Op::Call { kind, millis }),
        4 => (0u64..400).prop_map(Op::Advance),
        1 => Just(Op::Reset),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Disable),
    ]
}

fn run(cfg: CircuitBreakerConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(async move {
        let layer = CircuitBreakerLayer::builder("model")
            .config(cfg.clone())
            .classify(|r: &Result<u8, std::io::Error>| match r {
                Ok(1) => Outcome::Ignored,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            })
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let handle = layer.handle().clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        handle.on_transition(move |t| sink.lock().unwrap().push((t.from, t.to)));
        let mut svc = layer.layer(service_fn(|(kind, millis): (Kind, u64)| async move {
            if kind == Kind::Cancelled {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(millis)).await;
            match kind {
                Kind::Failure => Err(std::io::Error::other("boom")),
                Kind::Ignored => Ok(1u8),
                _ => Ok(0u8),
            }
        }));
        let start = tokio::time::Instant::now();
        let mut model = Model::new(cfg);

        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Call { kind, millis } => {
                    let admitted = model.admit();
                    let ready = svc
                        .ready()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let fut = ready.call((kind, millis));
                    let result = if kind == Kind::Cancelled {
                        tokio::time::timeout(Duration::from_millis(millis), fut)
                            .await
                            .ok()
                    } else {
                        Some(fut.await)
                    };
                    let rejected = matches!(&result, Some(Err(e)) if e.is::<CircuitOpen>());
                    prop_assert_eq!(!rejected, admitted, "op {}: admission of {:?}", i, kind);
                    if admitted {
                        model.now += millis * MS;
                        model.record(kind, millis);
                    }
                }
                Op::Advance(millis) => {
                    tokio::time::advance(Duration::from_millis(millis)).await;
                    model.now += millis * MS;
                }
                Op::Reset => {
                    handle.reset();
                    model.go(CircuitState::Closed);
                }
                Op::ForceOpen => {
                    handle.force_open();
                    model.go(CircuitState::ForcedOpen);
                }
                Op::Disable => {
                    handle.disable();
                    model.go(CircuitState::Disabled);
                }
            }
            prop_assert_eq!(
                tokio::time::Instant::now().duration_since(start).as_nanos() as u64,
                model.now,
                "op {}: clock",
                i
            );
            prop_assert_eq!(handle.state(), model.state, "op {}: state", i);
            if model.state == CircuitState::Closed && model.cfg.consecutive_failures.is_none() {
                let (calls, failures, slow) = model.window();
                let m = handle.metrics();
                prop_assert_eq!(
                    (m.calls, m.failures, m.slow_calls),
                    (calls, failures, slow),
                    "op {}: window",
                    i
                );
            }
            prop_assert_eq!(
                &*seen.lock().unwrap(),
                &model.transitions,
                "op {}: transitions",
                i
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_reference_model(cfg in config(), ops in prop::collection::vec(op(), 1..80)) {
        run(cfg, ops)?;
    }
}
