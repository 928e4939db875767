//! The breaker's shared state: a packed state word, striped windows, transitions.
//!
//! Layout, and why:
//! - `hot` holds what every call reads and almost nothing writes (the state word and the
//!   settings the closed path needs) on its own cache lines, so readers never miss.
//! - Outcomes go to one of several *stripes*, each on its own cache lines with its own
//!   ring of outcome bytes (count window) or buckets (time window). A thread records into
//!   the stripe its thread-local hint names; a thread that finds another thread writing
//!   there moves its hint, so two threads hammering one breaker end up on different
//!   stripes and never share a written cache line. One thread alone always uses stripe 0, which makes
//!   the single-threaded behaviour exact.
//! - Transitions are rare: they take a mutex, re-check the state word, do their side
//!   effects, then publish the new word. The closed path never takes it, unless its
//!   outcome trips the breaker.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::config::{CircuitBreakerConfig, SlidingWindow, TIME_BUCKETS};
use super::{CircuitMetrics, CircuitOpen, CircuitState, Outcome, StateTransition};

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const STATE_BITS: u64 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

const fn pack(state: u64, generation: u64) -> u64 {
    (generation << STATE_BITS) | state
}

fn state_of(word: u64) -> CircuitState {
    match word & STATE_MASK {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        FORCED_OPEN => CircuitState::ForcedOpen,
        _ => CircuitState::Disabled,
    }
}

// Outcome bytes in a count window's ring.
const PRESENT: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

// Half-open counters, 16 bits each, in one word: admitted | succeeded | failed | slow.
const ADMITTED: u64 = 1;
const SUCCEEDED: u64 = 1 << 16;
const FAILED_PROBE: u64 = 1 << 32;
const SLOW_PROBE: u64 = 1 << 48;
const FIELD: u64 = 0xFFFF;

// A time bucket whose epoch is being replaced.
const ROLLING: u64 = u64::MAX;

/// Keeps its content on cache lines of its own.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

thread_local! {
    static STRIPE_HINT: Cell<u32> = const { Cell::new(0) };
    /// The count-window stripe this thread wrote last and the position it left there: if
    /// the position moved on meanwhile, another thread writes the same stripe.
    static LAST_WRITE: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
}

fn stripe_hint() -> usize {
    STRIPE_HINT.with(Cell::get) as usize
}

/// Moves this thread to another stripe after it met contention on `from`.
fn move_stripe(from: usize, mask: usize) {
    STRIPE_HINT.with(|hint| {
        // The cell's address differs per thread: two threads that collided move apart.
        let seed = std::ptr::from_ref(hint) as usize as u64;
        let mut x = seed ^ u64::from(hint.get()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        let mut next = (x as usize) & mask;
        if next == from & mask {
            next = (next + 1) & mask;
        }
        hint.set(next as u32);
    });
}

fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cpus * 2).next_power_of_two().clamp(4, 16)
    })
}

#[derive(Debug, Default)]
struct Bucket {
    /// Bucket index + 1 of the period the counts belong to; 0 empty; `ROLLING` in reset.
    epoch: AtomicU64,
    /// Calls in the low 32 bits, failures in the high 32.
    calls_failures: AtomicU64,
    slow: AtomicU32,
}

#[derive(Debug, Default)]
struct Stripe {
    /// Next ring position of a count window.
    pos: AtomicU32,
    /// The ring has wrapped at least once since the last reset.
    full: AtomicBool,
    /// Failures and slow calls currently in the ring (signed: see `clamp`).
    failures: AtomicU32,
    slow: AtomicU32,
    rejected: AtomicU64,
    buckets: [Bucket; TIME_BUCKETS as usize],
}

/// What the closed path reads: the state word and the settings it needs.
#[derive(Debug)]
struct Hot {
    word: AtomicU64,
    /// The count window has held `minimum_calls` since the last reset, so a success can no
    /// longer trip the breaker and needs no judgement.
    warm: AtomicBool,
    mask: usize,
    window_size: u32,
    /// Nanoseconds per bucket; 0 for a count window.
    bucket_nanos: u64,
    /// 0 when slow calls are not judged.
    slow_nanos: u64,
    consecutive: u32,
}

/// Bookkeeping of the wait in the open state.
#[derive(Debug, Default)]
struct Open {
    /// Nanoseconds since `epoch` at which the wait ends.
    until: u64,
    /// Openings since the breaker last closed.
    openings: u32,
}

type Listener = Arc<dyn Fn(&StateTransition) + Send + Sync>;

pub(crate) struct Core {
    hot: Padded<Hot>,
    consecutive_failures: Padded<AtomicU32>,
    half_open: Padded<AtomicU64>,
    open_until: Padded<AtomicU64>,
    stripes: Box<[Padded<Stripe>]>,
    /// The rings of all stripes, `stride` bytes apart (padding keeps them off each other's
    /// cache lines).
    slots: Box<[AtomicU8]>,
    stride: usize,
    name: Arc<str>,
    config: CircuitBreakerConfig,
    epoch: Instant,
    open: Mutex<Open>,
    events: broadcast::Sender<StateTransition>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Lifetime token of a stripe. Futures hold one of these instead of the `Arc<Core>`, so
/// threads on different stripes never increment the same reference count.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Token {
    pub(crate) core: Arc<Core>,
}

/// What `poll_ready` granted and the future must give back.
#[derive(Debug)]
pub(crate) struct Permit {
    token: Arc<Token>,
    kind: PermitKind,
}

/// What a permit is for, packed in one word (`generation << 2 | tag`) so that a permit
/// is two words and moves cheaply through `poll_ready`, `call` and the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PermitKind(u64);

enum Kind {
    Closed(u64),
    Probe(u64),
    Disabled,
    Spent,
}

impl PermitKind {
    const DISABLED: Self = Self(2);
    const SPENT: Self = Self(3);

    const fn closed(generation: u64) -> Self {
        Self(generation << 2)
    }

    const fn probe(generation: u64) -> Self {
        Self((generation << 2) | 1)
    }

    #[inline]
    fn decode(self) -> Kind {
        match self.0 & 3 {
            0 => Kind::Closed(self.0 >> 2),
            1 => Kind::Probe(self.0 >> 2),
            2 => Kind::Disabled,
            _ => Kind::Spent,
        }
    }
}

impl Permit {
    /// The start time to pass to `complete`, read only when slow calls are judged.
    pub(crate) fn start(&self) -> u64 {
        let core = &self.token.core;
        if core.hot.0.slow_nanos != 0 && self.kind != PermitKind::DISABLED {
            core.now()
        } else {
            0
        }
    }

    /// Records the call's outcome (`start` from [`start`](Self::start)).
    pub(crate) fn complete(&mut self, outcome: Outcome, start: u64) {
        let kind = std::mem::replace(&mut self.kind, PermitKind::SPENT);
        let core = &self.token.core;
        match kind.decode() {
            Kind::Closed(generation) => core.record_closed(generation, outcome, start),
            Kind::Probe(generation) => core.record_probe(generation, outcome, start),
            Kind::Disabled | Kind::Spent => {}
        }
    }

    /// Whether this permit still matches the breaker's state (a closed permit taken before
    /// the breaker opened no longer does).
    pub(crate) fn is_current(&self) -> bool {
        match self.kind.decode() {
            Kind::Closed(generation) => {
                self.token.core.hot.0.word.load(Ordering::Acquire) == pack(CLOSED, generation)
            }
            _ => true,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A probe dropped before completing (cancelled, or the service dropped between
        // `poll_ready` and `call`) gives its place back: it is neither success nor failure.
        if let Kind::Probe(generation) = self.kind.decode() {
            self.token.core.release_probe(generation);
        }
    }
}

fn clamp(counter: u32, calls: u64) -> u64 {
    // Counters may dip below zero for an instant when a reset races a recording thread.
    u64::try_from(counter as i32).unwrap_or(0).min(calls)
}

impl Core {
    pub(crate) fn new(name: Arc<str>, config: CircuitBreakerConfig) -> Arc<Core> {
        let stripes = stripe_count();
        let (window_size, bucket_nanos) = match config.window {
            SlidingWindow::Count { size } => (size, 0),
            SlidingWindow::Time { duration } => (
                0,
                u64::try_from(duration.as_nanos() / u128::from(TIME_BUCKETS))
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        };
        let stride = if window_size == 0 {
            0
        } else {
            (window_size as usize).div_ceil(64) * 64 + 128
        };
        let slots = (0..stride * stripes).map(|_| AtomicU8::new(0)).collect();
        let hot = Hot {
            word: AtomicU64::new(pack(CLOSED, 0)),
            warm: AtomicBool::new(false),
            mask: stripes - 1,
            window_size,
            bucket_nanos,
            slow_nanos: config
                .slow_call_duration
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            consecutive: config.consecutive_failures.unwrap_or(0),
        };
        let (events, _) = broadcast::channel(64);
        Arc::new(Core {
            hot: Padded(hot),
            consecutive_failures: Padded::default(),
            half_open: Padded::default(),
            open_until: Padded::default(),
            stripes: (0..stripes).map(|_| Padded::default()).collect(),
            slots,
            stride,
            name,
            config,
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
            events,
            listeners: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn tokens(core: &Arc<Core>) -> Arc<[Arc<Token>]> {
        (0..core.stripes.len())
            .map(|_| Arc::new(Token { core: core.clone() }))
            .collect()
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.hot.0.word.load(Ordering::Acquire))
    }

    /// Admits a call, or says why not. Never blocks; takes the transition lock only to move
    /// from open to half-open.
    pub(crate) fn acquire(&self, tokens: &[Arc<Token>]) -> Result<Permit, Box<CircuitOpen>> {
        let hot = &self.hot.0;
        let token = || tokens[stripe_hint() & hot.mask].clone();
        loop {
            let word = hot.word.load(Ordering::Acquire);
            let generation = word >> STATE_BITS;
            match word & STATE_MASK {
                CLOSED => {
                    return Ok(Permit {
                        token: token(),
                        kind: PermitKind::closed(generation),
                    });
                }
                DISABLED => {
                    return Ok(Permit {
                        token: token(),
                        kind: PermitKind::DISABLED,
                    });
                }
                FORCED_OPEN => return Err(self.reject(CircuitState::ForcedOpen, None)),
                OPEN => {
                    let now = self.now();
                    let until = self.open_until.0.load(Ordering::Acquire);
                    if now < until {
                        let remaining = Duration::from_nanos(until - now);
                        return Err(self.reject(CircuitState::Open, Some(remaining)));
                    }
                    self.transition(word, HALF_OPEN, now);
                }
                _ => {
                    let mut probes = self.half_open.0.load(Ordering::Acquire);
                    loop {
                        if probes & FIELD >= u64::from(self.config.half_open_probes) {
                            return Err(self.reject(CircuitState::HalfOpen, None));
                        }
                        match self.half_open.0.compare_exchange(
                            probes,
                            probes + ADMITTED,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break,
                            Err(actual) => probes = actual,
                        }
                    }
                    if hot.word.load(Ordering::Acquire) == word {
                        return Ok(Permit {
                            token: token(),
                            kind: PermitKind::probe(generation),
                        });
                    }
                    // The breaker moved on while we took the place: give it back, retry.
                    self.release_probe(generation);
                }
            }
        }
    }

    /// Counts a rejection and builds its error, boxed here once: it becomes the call's
    /// `BoxError` as is, and keeps the admission result two words wide.
    fn reject(&self, state: CircuitState, remaining: Option<Duration>) -> Box<CircuitOpen> {
        self.stripes[stripe_hint() & self.hot.0.mask]
            .0
            .rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "palisade_resilience::circuit_breaker",
            name = %self.name,
            state = state.as_str(),
            "call rejected"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "palisade_circuit_breaker_rejections_total",
            "name" => self.name.to_string(),
            "state" => state.as_str()
        )
        .increment(1);
        Box::new(CircuitOpen::new(self.name.clone(), state, remaining))
    }

    fn record_closed(&self, generation: u64, outcome: Outcome, start: u64) {
        let hot = &self.hot.0;
        if hot.word.load(Ordering::Acquire) != pack(CLOSED, generation) {
            return; // the call started before a transition: it belongs to no window now
        }
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return,
        };
        if hot.consecutive != 0 {
            let counter = &self.consecutive_failures.0;
            if failed {
                if counter.fetch_add(1, Ordering::AcqRel) + 1 >= hot.consecutive {
                    self.transition(pack(CLOSED, generation), OPEN, self.now());
                }
            } else if counter.load(Ordering::Relaxed) != 0 {
                counter.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut now = 0;
        let slow = hot.slow_nanos != 0 && {
            now = self.now();
            now.saturating_sub(start) >= hot.slow_nanos
        };
        let code = PRESENT | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let judge = if hot.bucket_nanos == 0 {
            self.record_count(code);
            failed || slow || !hot.warm.load(Ordering::Relaxed)
        } else {
            if now == 0 {
                now = self.now();
            }
            self.record_time(code, now);
            true
        };
        if judge {
            self.judge_closed(generation);
        }
    }

    fn record_count(&self, code: u8) {
        let hot = &self.hot.0;
        let index = stripe_hint() & hot.mask;
        let stripe = &self.stripes[index].0;
        let size = hot.window_size;
        // A plain load and store, no read-modify-write: two threads racing here may write
        // the same slot (one outcome overwritten, as if the window were one call shorter
        // for a moment), but the counters stay exact because they follow the slot's
        // compare-exchange below. Racing is what moves a thread to another stripe.
        let pos = stripe.pos.load(Ordering::Relaxed);
        let next = if pos + 1 >= size { 0 } else { pos + 1 };
        stripe.pos.store(next, Ordering::Relaxed);
        let me = std::ptr::from_ref(stripe) as usize;
        let contended = LAST_WRITE.with(|last| {
            let (stripe, expected) = last.replace((me, next));
            // Position 0 is also where a reset (or a new breaker at a reused address)
            // leaves a stripe: only a mismatch elsewhere proves another writer.
            stripe == me && expected != pos && pos != 0
        });
        if pos + 1 >= size && !stripe.full.load(Ordering::Relaxed) {
            stripe.full.store(true, Ordering::Relaxed);
        }
        let slot = &self.slots[index * self.stride + 64 + pos as usize];
        let mut old = slot.load(Ordering::Relaxed);
        while old != code {
            match slot.compare_exchange(old, code, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    adjust(&stripe.failures, old & FAILED != 0, code & FAILED != 0);
                    adjust(&stripe.slow, old & SLOW != 0, code & SLOW != 0);
                    break;
                }
                Err(actual) => old = actual,
            }
        }
        if contended {
            move_stripe(index, hot.mask);
        }
    }

    fn record_time(&self, code: u8, now: u64) {
        let hot = &self.hot.0;
        let index = stripe_hint() & hot.mask;
        let stripe = &self.stripes[index].0;
        let period = now / hot.bucket_nanos;
        let tag = period + 1;
        let bucket = &stripe.buckets[(period % TIME_BUCKETS) as usize];
        let epoch = bucket.epoch.load(Ordering::Acquire);
        if epoch != tag {
            if epoch == ROLLING || epoch > tag {
                return; // another thread is resetting it, or our clock read is stale
            }
            if bucket
                .epoch
                .compare_exchange(epoch, ROLLING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            bucket.calls_failures.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
            bucket.epoch.store(tag, Ordering::Release);
        }
        let add = 1 | if code & FAILED != 0 { 1 << 32 } else { 0 };
        let mut counts = bucket.calls_failures.load(Ordering::Relaxed);
        let mut contended = false;
        while let Err(actual) = bucket.calls_failures.compare_exchange(
            counts,
            counts.wrapping_add(add),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            counts = actual;
            contended = true;
        }
        if code & SLOW != 0 {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        if contended {
            move_stripe(index, hot.mask);
        }
    }

    /// Calls, failures and slow calls in the window now.
    fn window_counts(&self) -> (u64, u64, u64) {
        let hot = &self.hot.0;
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        let period = if hot.bucket_nanos == 0 {
            None // a count window: no need to read the clock
        } else {
            self.now().checked_div(hot.bucket_nanos)
        };
        if let Some(period) = period {
            let tag = period + 1;
            for stripe in self.stripes.iter() {
                for bucket in &stripe.0.buckets {
                    let epoch = bucket.epoch.load(Ordering::Acquire);
                    if epoch == 0 || epoch == ROLLING || epoch > tag || tag - epoch >= TIME_BUCKETS
                    {
                        continue;
                    }
                    let counts = bucket.calls_failures.load(Ordering::Relaxed);
                    let n = counts & 0xFFFF_FFFF;
                    calls += n;
                    failures += (counts >> 32).min(n);
                    slow += u64::from(bucket.slow.load(Ordering::Relaxed)).min(n);
                }
            }
        } else {
            for stripe in self.stripes.iter() {
                let s = &stripe.0;
                let n = if s.full.load(Ordering::Relaxed) {
                    u64::from(hot.window_size)
                } else {
                    u64::from(s.pos.load(Ordering::Relaxed))
                };
                calls += n;
                failures += clamp(s.failures.load(Ordering::Relaxed), n);
                slow += clamp(s.slow.load(Ordering::Relaxed), n);
            }
        }
        (calls, failures, slow)
    }

    fn minimum_calls(&self) -> u64 {
        let hot = &self.hot.0;
        let minimum = u64::from(self.config.minimum_calls);
        if hot.bucket_nanos == 0 {
            minimum.min(u64::from(hot.window_size))
        } else {
            minimum
        }
    }

    fn rates_trip(&self, calls: u64, failures: u64, slow: u64) -> bool {
        let calls = calls as f64;
        failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls
            || (self.hot.0.slow_nanos != 0
                && slow as f64 * 100.0 >= self.config.slow_call_rate_threshold * calls)
    }

    fn judge_closed(&self, generation: u64) {
        let (calls, failures, slow) = self.window_counts();
        if calls < self.minimum_calls() {
            return;
        }
        if self.hot.0.bucket_nanos == 0 {
            self.hot.0.warm.store(true, Ordering::Relaxed);
        }
        if self.rates_trip(calls, failures, slow) {
            self.transition(pack(CLOSED, generation), OPEN, self.now());
        }
    }

    fn record_probe(&self, generation: u64, outcome: Outcome, start: u64) {
        let word = pack(HALF_OPEN, generation);
        if self.hot.0.word.load(Ordering::Acquire) != word {
            return;
        }
        let add = match outcome {
            Outcome::Ignored => return self.release_probe(generation),
            Outcome::Success => SUCCEEDED,
            Outcome::Failure => FAILED_PROBE,
        };
        let slow =
            self.hot.0.slow_nanos != 0 && self.now().saturating_sub(start) >= self.hot.0.slow_nanos;
        let add = add + if slow { SLOW_PROBE } else { 0 };
        let mut probes = self.half_open.0.load(Ordering::Acquire);
        loop {
            let done = ((probes >> 16) & FIELD) + ((probes >> 32) & FIELD);
            if done >= probes & FIELD {
                return; // counters were reset under us
            }
            match self.half_open.0.compare_exchange(
                probes,
                probes + add,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => probes = actual,
            }
        }
        let probes = probes + add;
        let succeeded = (probes >> 16) & FIELD;
        let failed = (probes >> 32) & FIELD;
        let slow = (probes >> 48) & FIELD;
        let wanted = u64::from(self.config.half_open_probes);
        let now = self.now();
        if self.hot.0.consecutive != 0 {
            if failed > 0 {
                self.transition(word, OPEN, now);
            } else if succeeded >= wanted {
                self.transition(word, CLOSED, now);
            }
        } else if succeeded + failed >= wanted {
            let to = if self.rates_trip(wanted, failed, slow) {
                OPEN
            } else {
                CLOSED
            };
            self.transition(word, to, now);
        }
    }

    fn release_probe(&self, generation: u64) {
        if self.hot.0.word.load(Ordering::Acquire) != pack(HALF_OPEN, generation) {
            return;
        }
        let mut probes = self.half_open.0.load(Ordering::Acquire);
        loop {
            let done = ((probes >> 16) & FIELD) + ((probes >> 32) & FIELD);
            if probes & FIELD <= done {
                return;
            }
            match self.half_open.0.compare_exchange(
                probes,
                probes - ADMITTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => probes = actual,
            }
        }
    }

    fn reset_window(&self) {
        for stripe in self.stripes.iter() {
            let s = &stripe.0;
            s.pos.store(0, Ordering::Relaxed);
            s.full.store(false, Ordering::Relaxed);
            s.failures.store(0, Ordering::Relaxed);
            s.slow.store(0, Ordering::Relaxed);
            for bucket in &s.buckets {
                bucket.epoch.store(0, Ordering::Relaxed);
                bucket.calls_failures.store(0, Ordering::Relaxed);
                bucket.slow.store(0, Ordering::Relaxed);
            }
        }
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.hot.0.warm.store(false, Ordering::Relaxed);
        self.consecutive_failures.0.store(0, Ordering::Relaxed);
    }

    /// Moves from the state `expected` (a whole word: state and generation) to `to`, unless
    /// another thread moved first. Returns whether this call made the move.
    fn transition(&self, expected: u64, to: u64, now: u64) -> bool {
        let event = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let word = self.hot.0.word.load(Ordering::Acquire);
            if word != expected {
                return false;
            }
            match to {
                OPEN => {
                    open.openings = open.openings.saturating_add(1);
                    let wait = self.config.wait_in_open.nominal_delay(open.openings);
                    open.until =
                        now.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
                    self.open_until.0.store(open.until, Ordering::Release);
                }
                HALF_OPEN => self.half_open.0.store(0, Ordering::Release),
                CLOSED => {
                    open.openings = 0;
                    self.reset_window();
                }
                _ => {}
            }
            let next = pack(to, (word >> STATE_BITS) + 1);
            self.hot.0.word.store(next, Ordering::Release);
            StateTransition {
                name: self.name.clone(),
                from: state_of(word),
                to: state_of(next),
            }
        };
        self.emit(&event);
        true
    }

    fn emit(&self, event: &StateTransition) {
        tracing::info!(
            target: "palisade_resilience::circuit_breaker",
            name = %event.name,
            from = event.from.as_str(),
            to = event.to.as_str(),
            "circuit breaker state changed"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "palisade_circuit_breaker_transitions_total",
            "name" => event.name.to_string(),
            "from" => event.from.as_str(),
            "to" => event.to.as_str()
        )
        .increment(1);
        let _ = self.events.send(event.clone());
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in listeners {
            listener(event);
        }
    }

    /// Forces the breaker into `to` (closed after a reset, forced-open or disabled).
    pub(crate) fn force(&self, to: CircuitState) {
        let to = match to {
            CircuitState::Closed => CLOSED,
            CircuitState::ForcedOpen => FORCED_OPEN,
            CircuitState::Disabled => DISABLED,
            CircuitState::Open => OPEN,
            CircuitState::HalfOpen => HALF_OPEN,
        };
        loop {
            let word = self.hot.0.word.load(Ordering::Acquire);
            if self.transition(word, to, self.now()) {
                return;
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.events.subscribe()
    }

    pub(crate) fn on_transition(&self, listener: Listener) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    pub(crate) fn metrics(&self) -> CircuitMetrics {
        let word = self.hot.0.word.load(Ordering::Acquire);
        let (calls, failures, slow) = if self.hot.0.consecutive != 0 {
            (0, 0, 0)
        } else {
            self.window_counts()
        };
        let rate = |n: u64| (calls > 0).then(|| n as f64 * 100.0 / calls as f64);
        let openings = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .openings;
        let remaining_wait = (word & STATE_MASK == OPEN).then(|| {
            Duration::from_nanos(
                self.open_until
                    .0
                    .load(Ordering::Acquire)
                    .saturating_sub(self.now()),
            )
        });
        CircuitMetrics {
            state: state_of(word),
            calls,
            failures,
            slow_calls: slow,
            failure_rate: rate(failures),
            slow_call_rate: rate(slow),
            consecutive_failures: self.consecutive_failures.0.load(Ordering::Relaxed),
            rejected: self
                .stripes
                .iter()
                .map(|s| s.0.rejected.load(Ordering::Relaxed))
                .sum(),
            openings,
            remaining_wait,
        }
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_match_the_rings_after_threads_race_on_them() {
        let config = CircuitBreakerConfig {
            window: SlidingWindow::Count { size: 64 },
            failure_rate_threshold: 100.0,
            ..CircuitBreakerConfig::default()
        };
        let core = Core::new("race".into(), config);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let core = &core;
                s.spawn(move || {
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..200_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let outcome = if x % 10 < 3 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        core.record_closed(0, outcome, 0);
                    }
                });
            }
        });
        assert_eq!(core.state(), CircuitState::Closed);
        let mut total = 0;
        for (i, stripe) in core.stripes.iter().enumerate() {
            let ring = &core.slots[i * core.stride + 64..i * core.stride + 64 + 64];
            let failed = ring
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) & FAILED != 0)
                .count() as u32;
            assert_eq!(
                stripe.0.failures.load(Ordering::Relaxed),
                failed,
                "stripe {i}"
            );
            total += ring
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) != 0)
                .count();
        }
        let m = core.metrics();
        assert_eq!(m.calls as usize, total);
        let rate = m.failure_rate.unwrap_or_default();
        assert!((15.0..45.0).contains(&rate), "about 30 % failures: {rate}");
    }

    #[test]
    fn a_thread_that_meets_another_writer_moves_to_another_stripe() {
        let mask = stripe_count() - 1;
        let moved = std::thread::spawn(move || {
            let before = stripe_hint() & mask;
            move_stripe(before, mask);
            stripe_hint() & mask != before
        })
        .join();
        assert!(matches!(moved, Ok(true)));
    }
}
