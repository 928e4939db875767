use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tokio::time::Instant;

use crate::ConfigError;

/// Milli-tokens per token: ratios resolve to 0.001.
const SCALE: i64 = 1000;

/// A token bucket bounding retries across every service that shares it.
///
/// Each original request deposits `retry_ratio` of a token, each retry withdraws one
/// token, and `min_per_sec` tokens accrue every second whatever the traffic, so a quiet
/// service can still retry. Over any period of `t` seconds with `n` requests the retries
/// it allows are at most
///
/// > `initial + min_per_sec × t + retry_ratio × n`
///
/// where `initial = min_per_sec` (one second's floor), and no more than `max_balance`
/// tokens are ever banked, so a long quiet spell does not save up a retry storm. This is
/// the shape of Finagle's and tower's `TpsBudget`; it caps retries at a *share* of real
/// traffic, which is what keeps retries from amplifying an outage.
///
/// The bucket is two atomics: depositing and withdrawing take no lock. Share it by
/// cloning the `Arc` into several [`RetryLayer`](super::RetryLayer)s (and into hedging).
///
/// ```rust
/// use palisade_resilience::retry::RetryBudget;
///
/// let budget = RetryBudget::builder().retry_ratio(0.1).min_per_sec(0).build()?;
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw()); // 20 requests × 10 % = 2 retries
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicI64,
    /// Nanoseconds since `epoch` up to which the floor has been credited.
    credited_until: AtomicU64,
    epoch: Instant,
    deposit: i64,
    floor_per_sec: i64,
    max_balance: i64,
}

/// Builds a [`RetryBudget`]; see each setter for its default.
///
/// ```rust
/// use palisade_resilience::retry::RetryBudget;
///
/// // Retries may add 10% to the traffic, plus 5 per second whatever the traffic.
/// let budget = RetryBudget::builder().retry_ratio(0.1).min_per_sec(5).build()?;
/// assert_eq!(budget.min_per_sec(), 5);
/// for _ in 0..100 {
///     budget.deposit(); // every first attempt deposits
/// }
/// assert!(budget.try_withdraw()); // a retry withdraws
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RetryBudgetBuilder {
    retry_ratio: f64,
    min_per_sec: u32,
    max_balance: Option<u32>,
}

impl RetryBudgetBuilder {
    /// The share of requests that may be retried, in `[0, 1000]` (default 0.2: at most
    /// one retry per five requests, tower's and Finagle's default).
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(0).retry_ratio(0.5).build()?;
    /// budget.deposit();
    /// budget.deposit(); // two requests earn one retry at 0.5
    /// assert!(budget.try_withdraw());
    /// assert!(!budget.try_withdraw());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn retry_ratio(mut self, ratio: f64) -> Self {
        self.retry_ratio = ratio;
        self
    }

    /// Retries allowed per second whatever the traffic (default 10).
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(5).build()?;
    /// assert_eq!(budget.min_per_sec(), 5);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// The most tokens the bucket banks (default: `max(10 × min_per_sec, 10)`).
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(0).retry_ratio(1.0).max_balance(2).build()?;
    /// for _ in 0..10 {
    ///     budget.deposit();
    /// }
    /// assert_eq!(budget.balance(), 2); // banked tokens are capped
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn max_balance(mut self, n: u32) -> Self {
        self.max_balance = Some(n);
        self
    }

    /// Validates and builds the shared budget.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// assert!(RetryBudget::builder().build().is_ok());
    /// assert!(RetryBudget::builder().retry_ratio(-1.0).build().is_err());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn build(self) -> Result<std::sync::Arc<RetryBudget>, ConfigError> {
        if !self.retry_ratio.is_finite() || !(0.0..=1000.0).contains(&self.retry_ratio) {
            return Err(ConfigError::OutOfRange {
                field: "retry_ratio",
                value: self.retry_ratio,
                min: 0.0,
                max: 1000.0,
            });
        }
        let max_balance = self
            .max_balance
            .unwrap_or_else(|| self.min_per_sec.saturating_mul(10).max(10));
        if max_balance == 0 {
            return Err(ConfigError::Zero {
                field: "max_balance",
            });
        }
        let max_balance = i64::from(max_balance) * SCALE;
        let floor_per_sec = i64::from(self.min_per_sec) * SCALE;
        Ok(std::sync::Arc::new(RetryBudget {
            tokens: AtomicI64::new(floor_per_sec.min(max_balance)),
            credited_until: AtomicU64::new(0),
            epoch: Instant::now(),
            deposit: (self.retry_ratio * SCALE as f64).round() as i64,
            floor_per_sec,
            max_balance,
        }))
    }
}

impl RetryBudget {
    /// A builder with the defaults: ratio 0.2, 10 per second.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().build()?; // ratio 0.2, 10 per second
    /// assert_eq!(budget.min_per_sec(), 10);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            retry_ratio: 0.2,
            min_per_sec: 10,
            max_balance: None,
        }
    }

    /// Records an original request (not a retry): adds `retry_ratio` of a token.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(0).retry_ratio(1.0).build()?;
    /// assert_eq!(budget.balance(), 0);
    /// budget.deposit();
    /// assert_eq!(budget.balance(), 1);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    #[inline]
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let before = self.tokens.fetch_add(self.deposit, Ordering::Relaxed);
        if before + self.deposit > self.max_balance {
            self.tokens.fetch_min(self.max_balance, Ordering::Relaxed);
        }
    }

    /// Takes one token for a retry; `false` when the budget is spent.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(0).retry_ratio(1.0).build()?;
    /// assert!(!budget.try_withdraw()); // nothing earned yet
    /// budget.deposit();
    /// assert!(budget.try_withdraw());
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn try_withdraw(&self) -> bool {
        self.credit_floor();
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                (t >= SCALE).then_some(t - SCALE)
            })
            .is_ok()
    }

    /// Whole tokens available now (retries the budget would allow right away).
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().min_per_sec(3).build()?;
    /// assert_eq!(budget.balance(), 3); // the floor is available from the start
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn balance(&self) -> u64 {
        self.credit_floor();
        u64::try_from(self.tokens.load(Ordering::Relaxed) / SCALE).unwrap_or(0)
    }

    /// Credits the per-second floor for the time since it was last credited. Only whole
    /// milli-tokens are credited and only the time they stand for is consumed, so frequent
    /// calls lose nothing to rounding.
    fn credit_floor(&self) {
        if self.floor_per_sec == 0 {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let since = self.credited_until.load(Ordering::Acquire);
        if now <= since {
            return;
        }
        let floor = self.floor_per_sec as u128;
        let add = (u128::from(now - since) * floor / 1_000_000_000) as i64;
        if add == 0 {
            return;
        }
        let used = (add as u128 * 1_000_000_000).div_ceil(floor) as u64;
        if self
            .credited_until
            .compare_exchange(since, since + used, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let before = self.tokens.fetch_add(add, Ordering::AcqRel);
            if before + add > self.max_balance {
                self.tokens.fetch_min(self.max_balance, Ordering::AcqRel);
            }
        }
    }

    /// The floor credited per second, in tokens.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryBudget;
    ///
    /// assert_eq!(RetryBudget::builder().min_per_sec(7).build()?.min_per_sec(), 7);
    /// # Ok::<(), palisade_resilience::ConfigError>(())
    /// ```
    pub fn min_per_sec(&self) -> u64 {
        (self.floor_per_sec / SCALE) as u64
    }

    /// For tests: the time the floor has been credited up to.
    #[cfg(test)]
    fn credited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.credited_until.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time_without_rounding_loss() {
        let b = RetryBudget::builder()
            .retry_ratio(0.0)
            .min_per_sec(10)
            .build()
            .unwrap();
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        // 1 ms steps are 1/100 of a token each; ten of them make one token.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(1)).await;
            b.balance();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        assert!(b.credited() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_quiet_spell_banks_no_more_than_max_balance() {
        let b = RetryBudget::builder()
            .min_per_sec(5)
            .max_balance(7)
            .build()
            .unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.balance(), 7);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(b.balance(), 7);
    }

    #[test]
    fn nonsense_configuration_is_rejected() {
        assert!(matches!(
            RetryBudget::builder().retry_ratio(-0.1).build(),
            Err(ConfigError::OutOfRange {
                field: "retry_ratio",
                ..
            })
        ));
        assert!(matches!(
            RetryBudget::builder().max_balance(0).build(),
            Err(ConfigError::Zero {
                field: "max_balance"
            })
        ));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Request,
        Retry,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Request),
            4 => Just(Op::Retry),
            1 => (0u64..3_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn the_budget_never_allows_more_retries_than_its_formula(
            ratio in 0.0f64..2.0,
            floor in 0u32..20,
            max_balance in 1u32..50,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let b = RetryBudget::builder()
                    .retry_ratio(ratio)
                    .min_per_sec(floor)
                    .max_balance(max_balance)
                    .build()
                    .unwrap();
                let ratio = (ratio * 1000.0).round() / 1000.0;
                let (mut requests, mut retries, mut elapsed_ms) = (0u64, 0u64, 0u64);
                for op in ops {
                    match op {
                        Op::Request => { b.deposit(); requests += 1; }
                        Op::Retry => if b.try_withdraw() { retries += 1 },
                        Op::Advance(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                            elapsed_ms += ms;
                        }
                    }
                    let initial = f64::from(floor.min(max_balance));
                    let bound = initial
                        + f64::from(floor) * elapsed_ms as f64 / 1000.0
                        + ratio * requests as f64;
                    prop_assert!(retries as f64 <= bound + 1e-9,
                        "{retries} retries > bound {bound}");
                    prop_assert!(b.balance() <= u64::from(max_balance));
                }
                Ok(())
            })?;
        }
    }
}
