//! The in-memory inbox.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{Claim, Inbox};
use crate::error::Error;
use crate::publisher::BoxFuture;

/// An in-process [`Inbox`] with a bounded size and a time to live.
///
/// Handled events are remembered for `ttl` (default 24 h) and at most `capacity`
/// (default 100 000) of them: beyond that the oldest are forgotten first, so a
/// duplicate arriving later than that is handled again. Claims are leases of `lease`
/// (default 30 s). Time comes from `tokio::time`, so a paused clock drives expiry.
/// It protects one process only: instances of a service each have their own.
///
/// ```rust
/// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_events::Error> {
/// let inbox = MemoryInbox::new();
/// let id = uuid::Uuid::now_v7();
/// assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired);
/// assert_eq!(inbox.claim("billing", id).await?, Claim::InProgress);
/// inbox.complete("billing", id).await?;
/// assert_eq!(inbox.claim("billing", id).await?, Claim::Processed);
/// assert_eq!(inbox.claim("shipping", id).await?, Claim::Acquired);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryInbox {
    capacity: usize,
    ttl: Duration,
    lease: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(String, Uuid), Entry>,
    /// Completed keys in completion order, for eviction (may hold stale keys).
    order: VecDeque<((String, Uuid), Instant)>,
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Processing { until: Instant },
    Processed { at: Instant },
}

impl Default for MemoryInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryInbox {
    /// An inbox with the defaults: 100 000 entries, 24 h TTL, 30 s lease.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// assert!(inbox.is_empty());
    /// assert_eq!(inbox.claim("billing", Uuid::now_v7()).await?, Claim::Acquired);
    /// assert_eq!(inbox.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            state: Mutex::new(State::default()),
        }
    }

    /// How many handled events to remember (default 100 000; at least 1).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new().with_capacity(2);
    /// for _ in 0..3 {
    ///     let id = Uuid::now_v7();
    ///     inbox.claim("billing", id).await?;
    ///     inbox.complete("billing", id).await?;
    /// }
    /// assert_eq!(inbox.len(), 2); // the oldest handled event was forgotten
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How long to remember a handled event (default 24 h).
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new().with_ttl(Duration::from_secs(60));
    /// let id = Uuid::now_v7();
    /// inbox.claim("billing", id).await?;
    /// inbox.complete("billing", id).await?;
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Processed);
    /// tokio::time::advance(Duration::from_secs(61)).await;
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired); // forgotten
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a claim lasts without being completed (default 30 s): longer than
    /// the slowest handler, or a live handler's event may run twice.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new().with_lease(Duration::from_secs(5));
    /// let id = Uuid::now_v7();
    /// inbox.claim("billing", id).await?; // a handler that then crashes
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::InProgress);
    /// tokio::time::advance(Duration::from_secs(6)).await;
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired); // the lease ran out
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many events are remembered as handled or claimed.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// inbox.claim("billing", Uuid::now_v7()).await?;
    /// inbox.claim("shipping", Uuid::now_v7()).await?;
    /// assert_eq!(inbox.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is remembered.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    /// use uuid::Uuid;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// assert!(inbox.is_empty());
    /// let id = Uuid::now_v7();
    /// inbox.claim("billing", id).await?;
    /// inbox.release("billing", id).await?; // the handler failed: claim given back
    /// assert!(inbox.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    fn evict(&self, state: &mut State, now: Instant) {
        while let Some((key, at)) = state.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            let over = state.order.len() > self.capacity;
            if !expired && !over {
                break;
            }
            let (key, at) = (key.clone(), *at);
            state.order.pop_front();
            if let Some(Entry::Processed { at: done }) = state.entries.get(&key)
                && *done == at
            {
                state.entries.remove(&key);
            }
        }
    }

    fn claim_now(&self, consumer: &str, event_id: Uuid) -> Claim {
        let now = Instant::now();
        let mut state = self.lock();
        self.evict(&mut state, now);
        if state.entries.len() > self.capacity.saturating_mul(2) {
            // Claims whose holder died and whose event never came back.
            state
                .entries
                .retain(|_, e| !matches!(e, Entry::Processing { until } if *until <= now));
        }
        let key = (consumer.to_owned(), event_id);
        match state.entries.get(&key) {
            Some(Entry::Processed { .. }) => Claim::Processed,
            Some(Entry::Processing { until }) if *until > now => Claim::InProgress,
            _ => {
                state.entries.insert(
                    key,
                    Entry::Processing {
                        until: now + self.lease,
                    },
                );
                Claim::Acquired
            }
        }
    }

    fn complete_now(&self, consumer: &str, event_id: Uuid) {
        let now = Instant::now();
        let mut state = self.lock();
        let key = (consumer.to_owned(), event_id);
        state
            .entries
            .insert(key.clone(), Entry::Processed { at: now });
        state.order.push_back((key, now));
        self.evict(&mut state, now);
    }

    fn release_now(&self, consumer: &str, event_id: Uuid) {
        let mut state = self.lock();
        let key = (consumer.to_owned(), event_id);
        if let Some(Entry::Processing { .. }) = state.entries.get(&key) {
            state.entries.remove(&key);
        }
    }
}

impl Inbox for MemoryInbox {
    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        let claim = self.claim_now(consumer, event_id);
        Box::pin(async move { Ok(claim) })
    }

    fn complete<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.complete_now(consumer, event_id);
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.release_now(consumer, event_id);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_expired_claim_can_be_taken_again_so_a_crash_is_retried() -> Result<(), Error> {
        let inbox = MemoryInbox::new().with_lease(Duration::from_secs(5));
        let id = Uuid::now_v7();
        assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(inbox.claim("c", id).await?, Claim::InProgress);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
        Ok(())
    }

    #[tokio::test]
    async fn a_released_claim_is_available_at_once() -> Result<(), Error> {
        let inbox = MemoryInbox::new();
        let id = Uuid::now_v7();
        assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
        inbox.release("c", id).await?;
        assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn handled_events_are_forgotten_after_the_ttl() -> Result<(), Error> {
        let inbox = MemoryInbox::new().with_ttl(Duration::from_secs(60));
        let id = Uuid::now_v7();
        inbox.claim("c", id).await?;
        inbox.complete("c", id).await?;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(inbox.claim("c", id).await?, Claim::Processed);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(inbox.claim("c", id).await?, Claim::Acquired);
        Ok(())
    }

    #[tokio::test]
    async fn size_stays_within_capacity_forgetting_the_oldest_first() -> Result<(), Error> {
        let inbox = MemoryInbox::new().with_capacity(3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            inbox.claim("c", *id).await?;
            inbox.complete("c", *id).await?;
        }
        assert_eq!(inbox.len(), 3);
        assert_eq!(inbox.claim("c", ids[4]).await?, Claim::Processed);
        assert_eq!(inbox.claim("c", ids[0]).await?, Claim::Acquired);
        Ok(())
    }
}
