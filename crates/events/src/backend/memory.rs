//! The in-memory bus: the embedded default, for tests, single-process services and
//! benchmarks.
//!
//! [`MemoryBus`] implements [`Publisher`] and [`Subscriber`] with the same semantics the
//! broker backends promise, so code tested against it behaves the same on a broker:
//!
//! - **Topics and groups.** Each consumer group of a topic gets every event published
//!   after the group was created (fan-out); the members of one group share them
//!   (competing consumers), each holding at most its subscription's `prefetch`
//!   unsettled deliveries (taken from the group up to 64 at a time, like a broker's
//!   prefetch: a member with room takes what is queued). Events published to a topic
//!   that has no group yet are kept for the first group that subscribes, so nothing is
//!   lost by subscribing late — in particular a dead-letter topic can be read after
//!   the fact.
//! - **At-least-once.** A delivery that is dropped without being settled goes back to
//!   its group at once (as if its consumer died), [`retry(delay)`](Delivery::retry)
//!   brings it back after `delay` (a `tokio::time` sleep, so paused clocks work), each
//!   time with [`attempt`](Delivery::attempt) one higher.
//! - **Dead letters.** [`dead_letter(reason)`](Delivery::dead_letter) publishes the
//!   envelope to `<topic>.dlq` with the reason in the `palisade-dead-letter-reason`
//!   header (and the group in `palisade-dead-letter-group`); subscribe to that topic to
//!   read them.
//! - **Order per key.** While a member holds unsettled deliveries of a key, further
//!   events of that key go to that member only, in publish order, so a member that
//!   settles in order sees each key in order and no two members work on one key at
//!   once. A redelivered event (dropped or retried) goes back in front of later events
//!   of its key that are still queued.
//! - **Confirmation.** `publish` returns once the event is queued for every group.
//! - **Capacity.** [`MemoryBus::new`] queues without a bound, as a broker with room
//!   to spare would. [`MemoryBus::with_capacity`] bounds what each group holds
//!   waiting: a publish waits while a group of its topic is full, so a publisher
//!   cannot outrun its slowest consumer group by more than that, and memory stays
//!   bounded.
//!
//! Nothing is persisted: the bus lives as long as its last clone.
//!
//! ```rust
//! use futures_util::StreamExt;
//! use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_events::Error> {
//! let bus = MemoryBus::new();
//! let mut deliveries = bus.subscribe(&Subscription::new("orders", "billing")).await?;
//! bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
//!
//! if let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     let event_type = delivery.envelope().map(|e| e.event_type.clone()).ok();
//!     assert_eq!(event_type.as_deref(), Some("order.placed"));
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::lock;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::{BoxFuture, Publisher};
use crate::subscriber::{Delivery, DeliveryStream, Subscriber, Subscription};

/// The bus's maps, keyed by topic and group names and by event keys, looked up on
/// every publish and every keyed delivery: hashed with a seeded fast hasher (SipHash,
/// std's default, cost about 150 instructions per lookup there).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Header naming the group that dead-lettered an event.
///
/// ```rust
/// use futures_util::StreamExt;
/// use palisade_events::backend::memory::{DEAD_LETTER_GROUP, DEAD_LETTER_REASON};
/// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let mut billing = bus.subscribe(&Subscription::new("orders", "billing")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
/// billing.next().await.expect("a delivery")?.dead_letter("no such customer").await?;
/// let mut dlq = bus.subscribe(&Subscription::new("orders.dlq", "ops")).await?;
/// let letter = dlq.next().await.expect("a dead letter")?;
/// let headers = &letter.envelope().expect("well formed").headers;
/// assert_eq!(headers[DEAD_LETTER_GROUP], "billing");
/// assert_eq!(headers[DEAD_LETTER_REASON], "no such customer");
/// # Ok(()) }
/// ```
pub const DEAD_LETTER_GROUP: &str = "palisade-dead-letter-group";
/// Header carrying a dead letter's reason (shared with the broker backends).
///
/// ```rust
/// use palisade_events::backend::memory::DEAD_LETTER_REASON;
///
/// // The same header name on every backend (see `DEAD_LETTER_GROUP` for a full example).
/// assert_eq!(DEAD_LETTER_REASON, "palisade-dead-letter-reason");
/// ```
pub const DEAD_LETTER_REASON: &str = super::headers::DEAD_LETTER_REASON;

/// The suffix of a topic's dead-letter topic.
///
/// ```rust
/// use palisade_events::backend::memory::DEAD_LETTER_SUFFIX;
///
/// assert_eq!(format!("orders{DEAD_LETTER_SUFFIX}"), "orders.dlq");
/// ```
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// An in-process event bus. Cheap to clone; clones share the topics.
///
/// See the [module docs](self) for its guarantees.
///
/// ```rust
/// use futures_util::StreamExt;
/// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let bus = MemoryBus::new();
/// let mut stream = bus.subscribe(&Subscription::new("orders", "billing")).await?;
/// bus.publish("orders", Envelope::new("order.placed", "shop", "{}").with_key("7")).await?;
/// let delivery = stream.next().await.expect("a delivery")?;
/// delivery.ack().await?;
/// assert_eq!(bus.pending("orders", "billing"), 0);
/// bus.close(); // subscriptions end
/// assert!(stream.next().await.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryBus {
    inner: Arc<Bus>,
}

#[derive(Debug, Default)]
struct Bus {
    topics: Mutex<Map<String, Topic>>,
    closed: AtomicBool,
    next_member: AtomicU64,
    /// How many events a group holds waiting before a publish waits for room; `None`:
    /// no bound.
    capacity: Option<usize>,
}

#[derive(Debug, Default)]
struct Topic {
    groups: Map<String, Arc<Group>>,
    /// Events published while the topic had no group, for the first group.
    backlog: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    attempt: u32,
    envelope: Body,
}

impl Entry {
    fn new(envelope: Body) -> Self {
        Self {
            seq: 0,
            attempt: 1,
            envelope,
        }
    }
}

/// An event as queued: by value while only one group holds it, so publishing to a
/// topic with one group allocates nothing (the consumer side wraps it in an `Arc`
/// when handing it out, on its own thread); shared when several groups do.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // by value on purpose: no allocation per publish
enum Body {
    Owned(Envelope),
    Shared(Arc<Envelope>),
}

impl Body {
    fn get(&self) -> &Envelope {
        match self {
            Self::Owned(envelope) => envelope,
            Self::Shared(envelope) => envelope,
        }
    }

    fn into_shared(self) -> Arc<Envelope> {
        match self {
            Self::Owned(envelope) => Arc::new(envelope),
            Self::Shared(envelope) => envelope,
        }
    }
}

#[derive(Debug)]
struct Group {
    topic: String,
    name: String,
    bus: Weak<Bus>,
    /// Where publishes go, under a lock of its own, so a publisher never waits for a
    /// member that holds the group's lock. Members move what arrived into `state` as
    /// they take.
    inbox: Mutex<Inbox>,
    state: Mutex<GroupState>,
    /// Members waiting for something to take, or for room to take it.
    waiters: Waiters,
    /// The bus's capacity, kept here: see [`Room`].
    room: Option<Room>,
}

/// A bounded group's count of waiting events, and the publishers waiting for it to
/// fall below the bus's capacity.
///
/// An event counts from its publish (or its return: a redelivery, a retry after its
/// delay, an event a leaving member had buffered) until a member takes it; one
/// reserved for the member owning its key still counts. Only bounded buses keep the
/// count, so an unbounded bus's publish does no more than before.
#[derive(Debug)]
struct Room {
    capacity: usize,
    waiting: AtomicUsize,
    /// Woken when `waiting` falls below `capacity`, and when the bus closes.
    freed: tokio::sync::Notify,
}

impl Room {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            waiting: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn full(&self) -> bool {
        self.waiting.load(Ordering::Acquire) >= self.capacity
    }

    fn added(&self, events: usize) {
        self.waiting.fetch_add(events, Ordering::AcqRel);
    }

    /// `events` were taken by a member: wakes the waiting publishers if that made room.
    fn taken(&self, events: usize) {
        // Saturating: were the count ever short, a wrap would leave the group full for
        // good and its publishers waiting for ever.
        let before = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(events))
            })
            .unwrap_or_else(|n| n);
        if before >= self.capacity && before.saturating_sub(events) < self.capacity {
            self.freed.notify_waiters();
        }
    }
}

#[derive(Debug)]
struct GroupState {
    /// The `seq` the next event out of the inbox gets.
    next_seq: u64,
    /// Events taken out of the inbox in one swap and not yet stamped, in publish
    /// order: all later than `queue`'s, all earlier than the inbox's.
    arrived: VecDeque<Entry>,
    /// How many events the last swap brought into `arrived`.
    received: usize,
    /// Available events, sorted by `seq`.
    queue: VecDeque<Entry>,
    /// Keys with unsettled or reserved deliveries: their member and how many. Up to
    /// [`KEPT_KEYS`] keys whose count fell to 0 stay, owned by nobody, for reuse.
    owners: Map<String, Owner>,
    /// Events reserved for the member owning their key, sorted by `seq`.
    direct: Map<u64, VecDeque<Entry>>,
    /// Events waiting out a retry delay.
    delayed: usize,
}

/// Events published to a group and not yet taken by a member.
///
/// Publishers push here under this lock alone; a member swaps the whole queue out
/// for its empty one, under the group's lock, when it has taken everything before.
/// So a publish costs one uncontended lock and a move into memory the members read
/// a batch ago, and the lock's line changes cores once per batch, not per event. (A
/// tokio channel here cost a third of the publishing thread's time: each send's
/// atomic on a slot bitmap the receiver polls moved a cache line between the cores
/// per event, and every 32 sends allocated a block the receiving thread freed.)
///
/// Lock order: the bus's topics or a group's state, then the group's inbox; nothing is
/// locked while the inbox is.
#[derive(Debug, Default)]
struct Inbox {
    entries: VecDeque<Entry>,
    /// A member found nothing to take and waits: the next publish wakes the waiters.
    armed: bool,
}

/// How many entries' room (about 250 bytes each) an inbox's buffers keep after a
/// burst grew them: the rest is given back when a member swaps a buffer out after
/// the burst (shrinking it during one cost 8% of a 2M-event burst's rate, in
/// regrowing it).
const INBOX_KEPT_CAPACITY: usize = 16 * 1024;

/// The wakers of a group's waiting members, one per member.
///
/// A member registers while it holds the group's lock, after finding nothing to take,
/// then arms the inbox; a publish wakes the waiters only when the inbox is armed, so
/// publishes while every member is busy wake nobody. Nothing takes the group's lock
/// or the inbox's while holding this one.
#[derive(Debug, Default)]
struct Waiters(Mutex<Vec<(u64, Waker)>>);

impl Waiters {
    fn register(&self, member: u64, waker: &Waker) {
        let mut waiters = lock(&self.0);
        match waiters.iter_mut().find(|(m, _)| *m == member) {
            Some((_, registered)) => registered.clone_from(waker),
            None => waiters.push((member, waker.clone())),
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *lock(&self.0));
        for (_, waker) in waiters {
            waker.wake();
        }
    }
}

/// How many released keys a group keeps (at count 0) in its owners map: a key seen
/// again then costs a lookup, not a copy of the key and an insertion and a removal
/// (with keyed events handled as they come, that was an allocation and a free per
/// event). Past this many entries, a released key is removed.
const KEPT_KEYS: usize = 1024;

#[derive(Debug)]
struct Owner {
    member: u64,
    /// Unsettled deliveries plus reserved events of this key.
    count: usize,
}

/// Gives a newly published event its place in its group's order: `next_seq`, which
/// moves on.
fn stamp(next_seq: &mut u64, entry: &mut Entry) {
    entry.seq = *next_seq;
    *next_seq += 1;
}

fn insert_sorted(queue: &mut VecDeque<Entry>, entry: Entry) {
    let at = queue.partition_point(|e| e.seq < entry.seq);
    queue.insert(at, entry);
}

impl GroupState {
    fn new() -> Self {
        Self {
            next_seq: 0,
            arrived: VecDeque::new(),
            received: 0,
            queue: VecDeque::new(),
            owners: Map::default(),
            direct: Map::default(),
            delayed: 0,
        }
    }

    fn push(&mut self, mut entry: Entry) {
        stamp(&mut self.next_seq, &mut entry);
        self.queue.push_back(entry);
    }

    /// Swaps what `inbox` holds into `arrived`, which must be empty; returns whether
    /// anything arrived.
    fn receive(&mut self, inbox: &Mutex<Inbox>) -> bool {
        debug_assert!(self.arrived.is_empty(), "swapping out events not yet taken");
        // The (empty) buffer going back to the publishers keeps the room a burst grew
        // it to while bursts go on; once the batch it held was small for its size,
        // the burst is over and it shrinks, outside the lock.
        if self.arrived.capacity() > INBOX_KEPT_CAPACITY
            && self.received < self.arrived.capacity() / 4
        {
            self.arrived
                .shrink_to(INBOX_KEPT_CAPACITY.max(2 * self.received));
        }
        let mut inbox = lock(inbox);
        if inbox.entries.is_empty() {
            return false;
        }
        std::mem::swap(&mut inbox.entries, &mut self.arrived);
        drop(inbox);
        self.received = self.arrived.len();
        true
    }

    /// Moves everything published so far into `queue`.
    fn drain_inbox(&mut self, inbox: &Mutex<Inbox>) {
        loop {
            while let Some(entry) = self.arrived.pop_front() {
                self.push(entry);
            }
            if !self.receive(inbox) {
                return;
            }
        }
    }

    /// Puts an event back in `seq` order, ahead of later events of its key: with the
    /// member owning the key if there is one.
    fn requeue(&mut self, entry: Entry) {
        if let Some(key) = &entry.envelope.get().key
            && let Some(owner) = self.owners.get_mut(key)
            && owner.count > 0
        {
            owner.count += 1;
            insert_sorted(self.direct.entry(owner.member).or_default(), entry);
            return;
        }
        insert_sorted(&mut self.queue, entry);
    }

    /// Moves up to `max` events `member` may take into `out`: reserved ones first, then
    /// the queue, then the inbox. Returns whether another member was handed work on
    /// the way.
    fn take(
        &mut self,
        inbox: &Mutex<Inbox>,
        member: u64,
        max: usize,
        out: &mut VecDeque<Entry>,
    ) -> bool {
        let mut handed_over = false;
        while out.len() < max {
            if let Some(entry) = self.direct.get_mut(&member).and_then(VecDeque::pop_front) {
                out.push_back(entry);
                continue;
            }
            if let Some(entry) = self.queue.pop_front() {
                handed_over |= self.hand_out(member, entry, out);
                continue;
            }
            // Nothing reserved for `member` and nothing queued: a run of unkeyed events
            // goes to it as it arrived, stamped in place and moved once (one at a time,
            // each was copied out and in again, and looked up in `direct` on the way).
            let run = self
                .arrived
                .iter()
                .take(max - out.len())
                .take_while(|entry| entry.envelope.get().key.is_none())
                .count();
            if run > 0 {
                for entry in self.arrived.range_mut(..run) {
                    stamp(&mut self.next_seq, entry);
                }
                out.extend(self.arrived.drain(..run));
                continue;
            }
            if let Some(mut entry) = self.arrived.pop_front() {
                stamp(&mut self.next_seq, &mut entry);
                handed_over |= self.hand_out(member, entry, out);
                continue;
            }
            if !self.receive(inbox) {
                break;
            }
        }
        handed_over
    }

    /// Hands `entry` to `member` (into `out`) or, when another member owns its key, to
    /// that member; returns whether it went to another member.
    fn hand_out(&mut self, member: u64, entry: Entry, out: &mut VecDeque<Entry>) -> bool {
        let Some(key) = &entry.envelope.get().key else {
            out.push_back(entry);
            return false;
        };
        match self.owners.get_mut(key) {
            Some(owner) if owner.count == 0 => {
                // Released and kept: `member` takes it.
                *owner = Owner { member, count: 1 };
                out.push_back(entry);
                false
            }
            Some(owner) if owner.member != member => {
                owner.count += 1;
                let owner = owner.member;
                self.direct.entry(owner).or_default().push_back(entry);
                true
            }
            Some(owner) => {
                owner.count += 1;
                out.push_back(entry);
                false
            }
            None => {
                self.owners.insert(key.clone(), Owner { member, count: 1 });
                out.push_back(entry);
                false
            }
        }
    }

    fn release_key(&mut self, member: u64, key: &str) {
        if let Some(owner) = self.owners.get_mut(key)
            && owner.member == member
        {
            owner.count = owner.count.saturating_sub(1);
            if owner.count == 0 && self.owners.len() > KEPT_KEYS {
                self.owners.remove(key);
            }
        }
    }

    /// A member left: its keys are released and its reserved events go back.
    fn leave(&mut self, member: u64) {
        self.owners.retain(|_, owner| owner.member != member);
        if let Some(reserved) = self.direct.remove(&member) {
            for entry in reserved {
                self.requeue(entry);
            }
        }
    }

    fn pending(&mut self, inbox: &Mutex<Inbox>) -> usize {
        self.drain_inbox(inbox);
        self.queue.len() + self.direct.values().map(VecDeque::len).sum::<usize>() + self.delayed
    }
}

impl Group {
    fn new(topic: &str, name: &str, bus: &Arc<Bus>) -> Self {
        Self {
            topic: topic.to_owned(),
            name: name.to_owned(),
            bus: Arc::downgrade(bus),
            inbox: Mutex::default(),
            state: Mutex::new(GroupState::new()),
            waiters: Waiters::default(),
            room: bus.capacity.map(Room::new),
        }
    }

    /// Queues published events for the group's members, waking them if one waits.
    fn publish(&self, entries: impl Iterator<Item = Entry>) {
        let armed = {
            let mut inbox = lock(&self.inbox);
            match &self.room {
                None => inbox.entries.extend(entries),
                Some(room) => {
                    let before = inbox.entries.len();
                    inbox.entries.extend(entries);
                    room.added(inbox.entries.len() - before);
                }
            }
            std::mem::take(&mut inbox.armed)
        };
        if armed {
            self.waiters.wake_all();
        }
    }

    /// Arms the inbox: the next publish wakes the waiters.
    fn arm(&self) {
        lock(&self.inbox).armed = true;
    }

    fn settle(&self, member: u64, held: &AtomicUsize, prefetch: usize, key: Option<&str>) {
        let before = held.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = key {
            lock(&self.state).release_key(member, key);
        }
        if before >= prefetch {
            // The member was at its prefetch limit and may take more now.
            self.waiters.wake_all();
        }
    }

    fn redeliver(&self, mut entry: Entry) {
        entry.attempt = entry.attempt.saturating_add(1);
        if let Some(room) = &self.room {
            room.added(1);
        }
        lock(&self.state).requeue(entry);
        self.waiters.wake_all();
    }
}

impl MemoryBus {
    /// An empty bus.
    ///
    /// ```rust
    /// use palisade_events::MemoryBus;
    ///
    /// let bus = MemoryBus::new();
    /// assert_eq!(bus.pending("orders", "billing"), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus whose groups each hold at most about `capacity` events waiting: a publish
    /// to a topic waits while one of its groups holds `capacity` or more events that
    /// no member has taken yet, and goes on once members took some (or fails with
    /// [`Error::Closed`] when the bus closes meanwhile). So a publisher cannot run
    /// further ahead of its slowest group than that, and memory stays bounded.
    ///
    /// The bound is soft by what is let through once there is room: a batch is queued
    /// whole (`publish_batch` of more than `capacity` events still goes through, into
    /// a group with room), and publishes racing for the same room all go in. Events
    /// coming back are never held up — a redelivery, a retry, an event a leaving member
    /// had buffered, a dead letter (a consumer settling must not wait for publishers)
    /// — nor are events kept for a topic's first group while it has none. A capacity
    /// of 0 is taken as 1.
    ///
    /// [`MemoryBus::new`] has no bound, like a broker with room to spare.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let bus = MemoryBus::with_capacity(2);
    /// let mut billing = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// for id in 0..2 {
    ///     bus.publish("orders", Envelope::new("order.placed", "shop", format!("{{\"id\":{id}}}"))).await?;
    /// }
    /// // The group is full: the next publish waits until a member takes an event.
    /// let third = bus.publish("orders", Envelope::new("order.placed", "shop", "{}"));
    /// assert!(tokio::time::timeout(Duration::from_secs(1), third).await.is_err());
    /// billing.next().await.expect("a delivery")?.ack().await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Bus {
                capacity: Some(capacity.max(1)),
                ..Bus::default()
            }),
        }
    }

    /// Closes the bus: publishing fails with [`Error::Closed`] and every subscription
    /// stream ends once it has nothing left to hand out.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, MemoryBus, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = MemoryBus::new();
    /// bus.close();
    /// let refused = bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await;
    /// assert!(matches!(refused, Err(Error::Closed)));
    /// # }
    /// ```
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for topic in lock(&self.inner.topics).values() {
            for group in topic.groups.values() {
                group.waiters.wake_all();
                if let Some(room) = &group.room {
                    room.freed.notify_waiters();
                }
            }
        }
    }

    /// How many events of `topic` wait to be delivered to `group` (queued or waiting
    /// out a retry delay; unsettled deliveries are not counted).
    ///
    /// ```rust
    /// use palisade_events::{Envelope, MemoryBus, Publisher, Subscriber, Subscription};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let bus = MemoryBus::new();
    /// let _billing = bus.subscribe(&Subscription::new("orders", "billing")).await?;
    /// bus.publish("orders", Envelope::new("order.placed", "shop", "{}")).await?;
    /// assert_eq!(bus.pending("orders", "billing"), 1);
    /// # Ok(()) }
    /// ```
    pub fn pending(&self, topic: &str, group: &str) -> usize {
        let topics = lock(&self.inner.topics);
        match topics.get(topic) {
            Some(t) => match t.groups.get(group) {
                Some(g) => lock(&g.state).pending(&g.inbox),
                None if t.groups.is_empty() => t.backlog.len(),
                None => 0,
            },
            None => 0,
        }
    }

    /// Waits until no group of `topic` is full.
    async fn room(&self, topic: &str) -> Result<(), Error> {
        loop {
            self.open()?;
            let full = {
                let topics = lock(&self.inner.topics);
                topics.get(topic).and_then(|t| {
                    t.groups
                        .values()
                        .find(|g| g.room.as_ref().is_some_and(Room::full))
                        .cloned()
                })
            };
            let Some(group) = full else {
                return Ok(());
            };
            let Some(room) = &group.room else {
                return Ok(());
            };
            let freed = room.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking again: room made (or a close) after the look
            // wakes this wait.
            freed.as_mut().enable();
            if room.full() && !self.inner.closed.load(Ordering::SeqCst) {
                freed.await;
            }
        }
    }

    fn open(&self) -> Result<&Bus, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(&self.inner)
    }
}

impl Bus {
    /// Queues `envelopes` for every group of `topic` (in each group's inbox), or in the
    /// topic's backlog while it has none. Holds the topics lock throughout, so a group
    /// created meanwhile gets either the backlog or the inbox; the lock order is always
    /// topics, then a group's state.
    fn publish_each(&self, topic: &str, envelopes: impl Iterator<Item = Envelope>) {
        let mut topics = lock(&self.topics);
        let t = match topics.get_mut(topic) {
            Some(t) => t,
            None => topics.entry(topic.to_owned()).or_default(),
        };
        let mut groups = t.groups.values();
        match (groups.next(), groups.next()) {
            (None, _) => t
                .backlog
                .extend(envelopes.map(|e| Entry::new(Body::Owned(e)))),
            (Some(group), None) => {
                group.publish(envelopes.map(|envelope| Entry::new(Body::Owned(envelope))));
            }
            (Some(_), Some(_)) => {
                // One allocation per event, shared by every group's entry.
                let shared: Vec<Arc<Envelope>> = envelopes.map(Arc::new).collect();
                for group in t.groups.values() {
                    group.publish(
                        shared
                            .iter()
                            .map(|envelope| Entry::new(Body::Shared(Arc::clone(envelope)))),
                    );
                }
            }
        }
    }

    fn group(self: &Arc<Self>, topic: &str, name: &str) -> Arc<Group> {
        let mut topics = lock(&self.topics);
        let t = topics.entry(topic.to_owned()).or_default();
        if let Some(group) = t.groups.get(name) {
            return Arc::clone(group);
        }
        let group = Arc::new(Group::new(topic, name, self));
        {
            let mut state = lock(&group.state);
            if let Some(room) = &group.room {
                room.added(t.backlog.len());
            }
            for entry in std::mem::take(&mut t.backlog) {
                state.push(entry);
            }
        }
        t.groups.insert(name.to_owned(), Arc::clone(&group));
        group
    }
}

impl Publisher for MemoryBus {
    // Each writes the wait and the queueing out rather than sharing a helper: through
    // one (an `async fn` taking the envelopes, or its future returned as is), the
    // envelope moved once more and the publishing thread did 28-36 instructions more
    // per event (callgrind, events_count).
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), Error> {
        if self.inner.capacity.is_some() {
            // Boxed: kept inline, the wait made every publish's future larger.
            Box::pin(self.room(topic)).await?;
        }
        self.open()?.publish_each(topic, std::iter::once(envelope));
        Ok(())
    }

    async fn publish_batch(&self, topic: &str, envelopes: Vec<Envelope>) -> Result<(), Error> {
        if self.inner.capacity.is_some() {
            Box::pin(self.room(topic)).await?;
        }
        self.open()?.publish_each(topic, envelopes.into_iter());
        Ok(())
    }
}

/// One member's view of its group, ending the membership when dropped.
struct Member {
    seat: Arc<Seat>,
    /// Events taken in one batch under the lock, not yet handed out. Each goes into
    /// the `Arc` its delivery shares only when handed out: allocated one at a time,
    /// between the frees of the deliveries handled meanwhile, the allocation comes
    /// from the thread's cache; allocated a batch at a time, most went to the arena
    /// (glibc's cache holds 7 chunks of a size), which cost more than moving the
    /// envelope once more.
    buffer: VecDeque<Entry>,
}

/// What a member and its deliveries' ackers share (one `Arc` per delivery).
struct Seat {
    id: u64,
    prefetch: usize,
    group: Arc<Group>,
    /// Events taken from the group (buffered here or handed out) and not yet settled.
    held: AtomicUsize,
}

/// How many events a member takes from its group under one lock.
const TAKE_BATCH: usize = 64;

impl Drop for Member {
    fn drop(&mut self) {
        // Deliveries still out keep settling through their ackers; buffered ones go back.
        let mut state = lock(&self.seat.group.state);
        state.leave(self.seat.id);
        if let Some(room) = &self.seat.group.room {
            room.added(self.buffer.len());
        }
        for entry in self.buffer.drain(..) {
            state.requeue(entry);
        }
        drop(state);
        self.seat.group.waiters.wake_all();
    }
}

impl Member {
    fn closed(&self) -> bool {
        self.seat
            .group
            .bus
            .upgrade()
            .is_none_or(|bus| bus.closed.load(Ordering::SeqCst))
    }

    /// The next delivery, or `None` once the bus is closed or gone.
    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                return Poll::Ready(Some(self.deliver(entry)));
            }
            if self.refill(cx.waker()) {
                continue;
            }
            // Registered for a wake-up after finding nothing: a close after the
            // registration wakes us, a close before it is seen here.
            if self.closed() {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }

    fn deliver(&self, entry: Entry) -> Delivery {
        let acker = MemoryAck {
            seat: Arc::clone(&self.seat),
            seq: entry.seq,
        };
        Delivery::in_memory(entry.envelope.into_shared(), entry.attempt, acker)
    }

    /// Takes a batch from the group into the (empty) buffer, within the prefetch
    /// budget; returns whether it got any, and registers `waker` if not.
    fn refill(&mut self, waker: &Waker) -> bool {
        let mut handed_over = false;
        let mut registered = false;
        {
            let mut state = lock(&self.seat.group.state);
            loop {
                let budget = (self.seat.prefetch)
                    .saturating_sub(self.seat.held.load(Ordering::Acquire))
                    .min(TAKE_BATCH);
                if budget > 0 {
                    handed_over |= state.take(
                        &self.seat.group.inbox,
                        self.seat.id,
                        budget,
                        &mut self.buffer,
                    );
                }
                self.seat
                    .held
                    .fetch_add(self.buffer.len(), Ordering::AcqRel);
                if !self.buffer.is_empty() || registered {
                    break;
                }
                // Nothing to take, or no room: register, arm the inbox, and look once
                // more, so that a publish or a settle in between is not missed (a
                // settle frees room before it wakes the waiters).
                self.seat.group.waiters.register(self.seat.id, waker);
                self.seat.group.arm();
                registered = true;
            }
        }
        // Events of keys other members own went to them: wake them.
        if handed_over {
            self.seat.group.waiters.wake_all();
        }
        // The buffer was empty: all it holds now was taken.
        if let Some(room) = &self.seat.group.room
            && !self.buffer.is_empty()
        {
            room.taken(self.buffer.len());
        }
        !self.buffer.is_empty()
    }
}

impl futures_util::Stream for Member {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx).map(|d| d.map(Ok))
    }
}

impl Subscriber for MemoryBus {
    async fn subscribe(&self, subscription: &Subscription) -> Result<DeliveryStream, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let group = self.inner.group(&subscription.topic, &subscription.group);
        let member = Member {
            seat: Arc::new(Seat {
                id: self.inner.next_member.fetch_add(1, Ordering::Relaxed),
                prefetch: subscription.prefetch.max(1),
                group,
                held: AtomicUsize::new(0),
            }),
            buffer: VecDeque::new(),
        };
        Ok(Box::pin(member))
    }
}

/// Settles one in-memory delivery, kept inline in its [`Delivery`], which holds the
/// envelope: the delivery hands it over to settle (and, dropped unsettled, to put the
/// event back).
pub(crate) struct MemoryAck {
    seat: Arc<Seat>,
    /// The event's place in its group's order.
    seq: u64,
}

impl MemoryAck {
    /// Gives back the delivery's prefetch room and its key.
    fn release(&self, envelope: Option<&Envelope>) {
        let seat = &self.seat;
        seat.group.settle(
            seat.id,
            &seat.held,
            seat.prefetch,
            envelope.and_then(|e| e.key.as_deref()),
        );
    }

    /// The event again, as its group queues it (`attempt` is the delivery's: the group
    /// counts one up when it takes it back).
    fn entry(&self, envelope: Arc<Envelope>, attempt: u32) -> Entry {
        Entry {
            seq: self.seq,
            attempt,
            envelope: Body::Shared(envelope),
        }
    }

    /// The delivery was dropped unsettled: the event goes back to its group at once.
    pub(crate) fn dropped(self, message: Result<Arc<Envelope>, Error>, attempt: u32) {
        self.release(message.as_deref().ok());
        if let Ok(envelope) = message {
            self.seat.group.redeliver(self.entry(envelope, attempt));
        }
    }

    pub(crate) fn ack(self, envelope: Option<&Envelope>) -> BoxFuture<'static, Result<(), Error>> {
        self.release(envelope);
        super::settled()
    }

    pub(crate) fn retry(
        self,
        message: Result<Arc<Envelope>, Error>,
        attempt: u32,
        delay: Duration,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.release(message.as_deref().ok());
        // An in-memory delivery always holds an envelope.
        let Ok(envelope) = message else {
            return super::settled();
        };
        let entry = self.entry(envelope, attempt);
        let group = Arc::clone(&self.seat.group);
        if delay.is_zero() {
            group.redeliver(entry);
            return super::settled();
        }
        lock(&group.state).delayed += 1;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            {
                let mut state = lock(&group.state);
                state.delayed = state.delayed.saturating_sub(1);
            }
            group.redeliver(entry);
        });
        super::settled()
    }

    pub(crate) fn dead_letter(
        self,
        message: Result<Arc<Envelope>, Error>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.release(message.as_deref().ok());
        let Ok(envelope) = message else {
            return super::settled();
        };
        let Some(bus) = self.seat.group.bus.upgrade() else {
            return Box::pin(async { Err(Error::Closed) });
        };
        let mut envelope = Arc::unwrap_or_clone(envelope);
        envelope
            .headers
            .insert(DEAD_LETTER_REASON.to_owned(), reason);
        envelope
            .headers
            .insert(DEAD_LETTER_GROUP.to_owned(), self.seat.group.name.clone());
        let topic = format!("{}{DEAD_LETTER_SUFFIX}", self.seat.group.topic);
        bus.publish_each(&topic, std::iter::once(envelope));
        super::settled()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use futures_util::{FutureExt, StreamExt};

    use super::*;

    async fn next(stream: &mut DeliveryStream) -> Delivery {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!("no delivery: {other:?}"),
        }
    }

    /// A publish expected to go through: fails the test rather than hang it when it
    /// waits for room instead.
    async fn goes_in(publish: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
        tokio::time::timeout(Duration::from_secs(5), publish)
            .await
            .map_err(|_| Error::Config("the publish waited for room".into()))?
    }

    /// Whether a publish still waits for room after a minute (of a paused clock); given
    /// up, it leaves nothing queued.
    async fn held_back(publish: impl Future<Output = Result<(), Error>>) -> bool {
        tokio::time::timeout(Duration::from_secs(60), publish)
            .await
            .is_err()
    }

    /// A publish of `envelope` to `t` in a task of its own, to wait for room there.
    fn publishing(
        bus: &MemoryBus,
        envelope: Envelope,
    ) -> tokio::task::JoinHandle<Result<(), Error>> {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish("t", envelope).await })
    }

    /// What a publish spawned by [`publishing`] returned, once it ended within a
    /// second; an error of its own (failing the test) when it still waits, or panicked.
    async fn finished(
        waiting: tokio::task::JoinHandle<Result<(), Error>>,
    ) -> Result<Result<(), Error>, Error> {
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .map_err(|_| Error::Config("the publish still waits".into()))?
            .map_err(|e| Error::Config(e.to_string()))
    }

    async fn nothing(stream: &mut DeliveryStream) {
        let got = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(got.is_err(), "unexpected delivery {got:?}");
    }

    fn id(d: &Delivery) -> uuid::Uuid {
        d.envelope().map(|e| e.id).unwrap_or_default()
    }

    fn keyed(key: &str, n: u32) -> Envelope {
        Envelope::new("n", "test", n.to_string()).with_key(key)
    }

    fn number(d: &Delivery) -> u32 {
        d.envelope()
            .ok()
            .and_then(|e| std::str::from_utf8(&e.payload).ok()?.parse().ok())
            .unwrap_or(u32::MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_delivery_is_redelivered_with_a_higher_attempt() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        bus.publish("t", Envelope::new("e", "s", "1")).await?;
        let first = next(&mut s).await;
        let first_id = id(&first);
        drop(first);
        let again = next(&mut s).await;
        assert_eq!(id(&again), first_id);
        assert_eq!(again.attempt(), 2);
        again.ack().await?;
        nothing(&mut s).await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_out_the_delay_on_a_paused_clock() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        bus.publish("t", Envelope::new("e", "s", "1")).await?;
        let start = tokio::time::Instant::now();
        next(&mut s).await.retry(Duration::from_secs(3)).await?;
        assert_eq!(bus.pending("t", "g"), 1);
        let again = next(&mut s).await;
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert_eq!(again.attempt(), 2);
        again.ack().await?;
        assert_eq!(bus.pending("t", "g"), 0);
        Ok(())
    }

    #[tokio::test]
    async fn dead_letters_land_on_the_dlq_topic_with_reason_even_when_read_later()
    -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("orders", "g")).await?;
        bus.publish("orders", Envelope::new("e", "s", "1")).await?;
        next(&mut s).await.dead_letter("boom").await?;
        let mut dlq = bus
            .subscribe(&Subscription::new("orders.dlq", "ops"))
            .await?;
        let letter = next(&mut dlq).await;
        let headers = letter
            .envelope()
            .map(|e| e.headers.clone())
            .unwrap_or_default();
        assert_eq!(
            headers.get(DEAD_LETTER_REASON).map(String::as_str),
            Some("boom")
        );
        assert_eq!(
            headers.get(DEAD_LETTER_GROUP).map(String::as_str),
            Some("g")
        );
        letter.ack().await?;
        nothing(&mut s).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_key_held_by_one_member_is_not_given_to_another() -> Result<(), Error> {
        let bus = MemoryBus::new();
        // Prefetch 1, so `a` does not take (and hold) everything in one batch.
        let mut a = bus
            .subscribe(&Subscription::new("t", "g").with_prefetch(1))
            .await?;
        bus.publish_batch("t", vec![keyed("k", 0), keyed("k", 1), keyed("j", 2)])
            .await?;
        let first = next(&mut a).await;
        assert_eq!(number(&first), 0);
        let mut b = bus.subscribe(&Subscription::new("t", "g")).await?;
        // b may only take key j while a holds k.
        let other = next(&mut b).await;
        assert_eq!(number(&other), 2);
        nothing(&mut b).await;
        // a gets the rest of k, in order, once its prefetch has room.
        first.ack().await?;
        let second = next(&mut a).await;
        assert_eq!(number(&second), 1);
        for d in [second, other] {
            d.ack().await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_burst_does_not_leave_the_inbox_holding_its_memory() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        let burst = 3 * INBOX_KEPT_CAPACITY;
        bus.publish_batch(
            "t",
            (0..burst).map(|_| Envelope::new("e", "s", "x")).collect(),
        )
        .await?;
        for _ in 0..burst {
            next(&mut s).await.ack().await?;
        }
        // The burst's buffer goes back to the publishers at the next swap and, once a
        // small batch has been in it, shrinks at the one after.
        for _ in 0..3 {
            bus.publish("t", Envelope::new("e", "s", "x")).await?;
            next(&mut s).await.ack().await?;
        }
        let topics = lock(&bus.inner.topics);
        let group = topics.get("t").and_then(|t| t.groups.get("g"));
        let held = group.map_or(usize::MAX, |g| {
            lock(&g.inbox).entries.capacity() + lock(&g.state).arrived.capacity()
        });
        assert!(
            held <= 2 * INBOX_KEPT_CAPACITY,
            "room for {held} entries kept"
        );
        Ok(())
    }

    #[tokio::test]
    async fn released_keys_are_kept_for_reuse_up_to_a_bound() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        let kept = |bus: &MemoryBus| {
            let topics = lock(&bus.inner.topics);
            let group = topics.get("t").and_then(|t| t.groups.get("g"));
            group.map_or(0, |g| lock(&g.state).owners.len())
        };
        for n in 0..3 * u32::try_from(KEPT_KEYS).unwrap_or(u32::MAX) {
            bus.publish("t", keyed(&format!("k{n}"), n)).await?;
            let d = next(&mut s).await;
            assert_eq!(number(&d), n);
            d.ack().await?;
        }
        assert!(kept(&bus) <= KEPT_KEYS + 1, "{} keys kept", kept(&bus));
        // A kept key, released, is handed out again and held while unsettled.
        let mut other = bus.subscribe(&Subscription::new("t", "g")).await?;
        bus.publish_batch("t", vec![keyed("k0", 0), keyed("k0", 1)])
            .await?;
        let first = next(&mut s).await;
        nothing(&mut other).await;
        let second = next(&mut s).await;
        assert_eq!((number(&first), number(&second)), (0, 1));
        first.ack().await?;
        second.ack().await?;
        Ok(())
    }

    #[tokio::test]
    async fn released_key_moves_to_another_member_in_order() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let sub = Subscription::new("t", "g").with_prefetch(1);
        let mut a = bus.subscribe(&sub).await?;
        let mut b = bus.subscribe(&sub).await?;
        bus.publish_batch("t", (0..4).map(|n| keyed("k", n)).collect())
            .await?;
        let mut seen = Vec::new();
        // Whoever got event 0 holds key k; with prefetch 1 nobody else gets 1 until 0 is acked.
        let d = tokio::select! { d = next(&mut a) => d, d = next(&mut b) => d };
        seen.push(number(&d));
        d.ack().await?;
        for _ in 1..4 {
            let d = tokio::select! { d = next(&mut a) => d, d = next(&mut b) => d };
            seen.push(number(&d));
            d.ack().await?;
        }
        assert_eq!(seen, [0, 1, 2, 3]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_group_holds_a_publish_until_a_member_takes() -> Result<(), Error> {
        let bus = MemoryBus::with_capacity(3);
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        goes_in(bus.publish_batch("t", (0..3).map(|n| keyed("k", n)).collect())).await?;
        assert!(
            held_back(bus.publish("t", keyed("k", 9))).await,
            "published into a full group"
        );
        assert_eq!(bus.pending("t", "g"), 3);
        let waiting = publishing(&bus, keyed("k", 3));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        // The member takes what is queued (all three, into its buffer): room again.
        let first = next(&mut s).await;
        finished(waiting).await??;
        first.ack().await?;
        for n in 1..4 {
            let d = next(&mut s).await;
            assert_eq!(number(&d), n);
            d.ack().await?;
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn events_kept_for_the_first_group_count_against_its_capacity() -> Result<(), Error> {
        let bus = MemoryBus::with_capacity(2);
        // No group yet: kept for the first one, whatever the capacity.
        goes_in(bus.publish_batch("t", (0..3).map(|n| keyed("k", n)).collect())).await?;
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        assert!(
            held_back(bus.publish("t", keyed("k", 3))).await,
            "the first group took the backlog over its capacity"
        );
        for n in 0..3 {
            let d = next(&mut s).await;
            assert_eq!(number(&d), n);
            d.ack().await?;
        }
        goes_in(bus.publish("t", keyed("k", 3))).await?;
        assert_eq!(number(&next(&mut s).await), 3);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_publish_waits_for_the_slowest_group() -> Result<(), Error> {
        let bus = MemoryBus::with_capacity(2);
        let mut fast = bus.subscribe(&Subscription::new("t", "fast")).await?;
        let mut slow = bus.subscribe(&Subscription::new("t", "slow")).await?;
        for n in 0..2 {
            goes_in(bus.publish("t", keyed("k", n))).await?;
            next(&mut fast).await.ack().await?;
        }
        assert!(
            held_back(bus.publish("t", keyed("k", 2))).await,
            "ran ahead of the slow group"
        );
        next(&mut slow).await.ack().await?;
        goes_in(bus.publish("t", keyed("k", 2))).await?;
        assert_eq!(number(&next(&mut fast).await), 2);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_bus_fails_a_waiting_publish() -> Result<(), Error> {
        let bus = MemoryBus::with_capacity(1);
        let _s = bus.subscribe(&Subscription::new("t", "g")).await?;
        goes_in(bus.publish("t", keyed("k", 0))).await?;
        let waiting = publishing(&bus, keyed("k", 1));
        tokio::task::yield_now().await;
        bus.close();
        let outcome = finished(waiting).await?;
        assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn events_coming_back_are_not_held_by_the_bound() -> Result<(), Error> {
        let bus = MemoryBus::with_capacity(1);
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        let _dlq = bus.subscribe(&Subscription::new("t.dlq", "ops")).await?;
        goes_in(bus.publish_batch("t", (0..3).map(|n| keyed(&n.to_string(), n)).collect())).await?;
        let (a, b, c) = (next(&mut s).await, next(&mut s).await, next(&mut s).await);
        // Full again; settling never waits for room.
        goes_in(bus.publish("t", keyed("3", 3))).await?;
        drop(a);
        assert!(b.retry(Duration::from_secs(1)).now_or_never().is_some());
        assert!(c.dead_letter("bad").now_or_never().is_some());
        // The dead letter filled its topic's group: a publish there waits.
        assert!(held_back(bus.publish("t.dlq", keyed("5", 5))).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Over the capacity with what came back: the dropped event, the retried one.
        assert_eq!(bus.pending("t", "g"), 3);
        let mut seen: Vec<u32> = Vec::new();
        for _ in 0..3 {
            let d = next(&mut s).await;
            seen.push(number(&d));
            d.ack().await?;
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn each_group_gets_every_event_and_members_share() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let sub = Subscription::new("t", "shared").with_prefetch(3);
        let mut a = bus.subscribe(&sub).await?;
        let mut b = bus.subscribe(&sub).await?;
        let mut other = bus.subscribe(&Subscription::new("t", "other")).await?;
        bus.publish_batch("t", (0..6).map(|n| keyed(&n.to_string(), n)).collect())
            .await?;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next(&mut a).await);
            held.push(next(&mut b).await);
        }
        let shared: HashSet<u32> = held.iter().map(number).collect();
        assert_eq!(shared.len(), 6);
        let mut all = HashSet::new();
        for _ in 0..6 {
            let d = next(&mut other).await;
            all.insert(number(&d));
            d.ack().await?;
        }
        assert_eq!(all, shared);
        Ok(())
    }

    #[tokio::test]
    async fn events_published_before_any_group_go_to_the_first_group() -> Result<(), Error> {
        let bus = MemoryBus::new();
        bus.publish("t", Envelope::new("e", "s", "early")).await?;
        assert_eq!(bus.pending("t", "g"), 1);
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        next(&mut s).await.ack().await?;
        Ok(())
    }

    #[tokio::test]
    async fn closed_bus_refuses_publishes_and_ends_streams() -> Result<(), Error> {
        let bus = MemoryBus::new();
        let mut s = bus.subscribe(&Subscription::new("t", "g")).await?;
        bus.close();
        assert!(matches!(
            bus.publish("t", Envelope::new("e", "s", "")).await,
            Err(Error::Closed)
        ));
        assert!(s.next().await.is_none());
        Ok(())
    }

    mod model {
        //! The bus as a state machine under random publishes, takes, acks, drops and
        //! members leaving: its invariants hold after every step.
        use std::collections::HashMap;

        use futures_util::FutureExt;
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            Publish { key: u8 },
            Take { member: usize },
            Ack { member: usize, pick: usize },
            Drop { member: usize, pick: usize },
            Leave { member: usize },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..4).prop_map(|key| Op::Publish { key }),
                4 => (0usize..3).prop_map(|member| Op::Take { member }),
                3 => (0usize..3, any::<usize>()).prop_map(|(member, pick)| Op::Ack { member, pick }),
                1 => (0usize..3, any::<usize>()).prop_map(|(member, pick)| Op::Drop { member, pick }),
                1 => (0usize..3).prop_map(|member| Op::Leave { member }),
            ]
        }

        struct Member {
            stream: DeliveryStream,
            held: Vec<(String, u32, Delivery)>,
        }

        const PREFETCH: usize = 3;

        fn join(bus: &MemoryBus) -> Result<Member, TestCaseError> {
            let stream = bus
                .subscribe(&Subscription::new("t", "g").with_prefetch(PREFETCH))
                .now_or_never()
                .ok_or_else(|| TestCaseError::fail("subscribe pending"))?
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            Ok(Member {
                stream,
                held: Vec::new(),
            })
        }

        fn parse(d: &Delivery) -> (String, u32) {
            let e = d.envelope().ok();
            let key = e.and_then(|e| e.key.clone()).unwrap_or_default();
            let n = e
                .and_then(|e| std::str::from_utf8(&e.payload).ok()?.parse().ok())
                .unwrap_or(u32::MAX);
            (key, n)
        }

        proptest! {
            #[test]
            fn invariants_hold_under_any_schedule(
                ops in prop::collection::vec(op(), 1..120),
                only_acks in any::<bool>(),
                capacity in prop::option::of(1usize..8),
            ) {
                let bus = capacity.map_or_else(MemoryBus::new, MemoryBus::with_capacity);
                let mut members: Vec<Member> = (0..3).map(|_| join(&bus)).collect::<Result<_, _>>()?;
                let mut published = 0u32;
                let mut acked: Vec<u32> = Vec::new();
                let mut last_seen: HashMap<String, u32> = HashMap::new();
                let mut dropped_any = false;
                for op in ops {
                    match op {
                        Op::Publish { key } => {
                            let e = Envelope::new("n", "t", published.to_string()).with_key(format!("k{key}"));
                            // Bounded: a publish goes in exactly while the group holds
                            // fewer than `capacity` events no member has taken.
                            let before = bus.pending("t", "g");
                            let admitted = bus.publish("t", e).now_or_never();
                            if capacity.is_some_and(|c| before >= c) {
                                prop_assert!(admitted.is_none(), "published into a full group ({} waiting)", before);
                            } else {
                                prop_assert!(matches!(admitted, Some(Ok(()))));
                                prop_assert_eq!(bus.pending("t", "g"), before + 1);
                                published += 1;
                            }
                        }
                        Op::Take { member } => {
                            let m = &mut members[member];
                            if let Some(Some(Ok(d))) = m.stream.next().now_or_never() {
                                let (key, n) = parse(&d);
                                if only_acks {
                                    // Settling in order, nothing redelivered: publish order per key.
                                    if let Some(prev) = last_seen.insert(key.clone(), n) {
                                        prop_assert!(prev < n, "key {}: {} after {}", key, n, prev);
                                    }
                                }
                                m.held.push((key, n, d));
                            }
                        }
                        Op::Ack { member, pick } | Op::Drop { member, pick } if only_acks || matches!(op, Op::Ack { .. }) => {
                            let m = &mut members[member];
                            if !m.held.is_empty() {
                                // In-order settling: the oldest held delivery of the picked key.
                                let key = m.held[pick % m.held.len()].0.clone();
                                let at = m.held.iter().position(|h| h.0 == key).unwrap_or(0);
                                let (_, n, d) = m.held.remove(at);
                                acked.push(n);
                                prop_assert!(d.ack().now_or_never().is_some());
                            }
                        }
                        Op::Drop { member, pick } => {
                            let m = &mut members[member];
                            if !m.held.is_empty() {
                                let i = pick % m.held.len();
                                drop(m.held.remove(i));
                                dropped_any = true;
                            }
                        }
                        Op::Leave { member } => {
                            if !only_acks {
                                members[member] = join(&bus)?;
                                dropped_any = true;
                            }
                        }
                        Op::Ack { .. } => {}
                    }
                    // Prefetch is respected and no key is held by two members at once.
                    let mut holder: HashMap<&str, usize> = HashMap::new();
                    for (i, m) in members.iter().enumerate() {
                        prop_assert!(m.held.len() <= PREFETCH);
                        for (key, _, _) in &m.held {
                            let owner = *holder.entry(key.as_str()).or_insert(i);
                            prop_assert_eq!(owner, i, "key {} held by two members", key);
                        }
                    }
                }
                // Drain: every published event is acked at least once, nothing is left.
                for m in &mut members {
                    for (_, n, d) in m.held.drain(..) {
                        acked.push(n);
                        prop_assert!(d.ack().now_or_never().is_some());
                    }
                }
                let mut rounds = 0;
                // Members may hold taken events in their prefetch buffer: drain until
                // nobody yields anything more.
                let mut yielded = true;
                while (yielded || bus.pending("t", "g") > 0) && rounds < 10_000 {
                    rounds += 1;
                    yielded = false;
                    for m in &mut members {
                        if let Some(Some(Ok(d))) = m.stream.next().now_or_never() {
                            yielded = true;
                            acked.push(parse(&d).1);
                            prop_assert!(d.ack().now_or_never().is_some());
                        }
                    }
                }
                prop_assert_eq!(bus.pending("t", "g"), 0);
                let distinct: std::collections::BTreeSet<u32> = acked.iter().copied().collect();
                prop_assert_eq!(distinct.len() as u32, published);
                if !dropped_any {
                    prop_assert_eq!(acked.len() as u32, published, "acked twice without a redelivery");
                }
            }
        }
    }
}
