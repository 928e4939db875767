//! The backend conformance suite: what every [`Publisher`] + [`Subscriber`] must do,
//! written once and run against each backend.
//!
//! A backend describes how to connect and which promises it makes ([`Capabilities`],
//! like Watermill's per-backend feature flags); [`run`] plays every scenario whose
//! capability is on, against the real broker. Each scenario is also a public function,
//! so a backend's test file can give every promise its own `#[tokio::test]`.
//!
//! Scenarios never panic: a broken promise is a [`Failure::Violated`] naming the
//! scenario and what was seen, a client error is a [`Failure::Backend`].
//!
//! ```rust
//! use palisade_events::conformance::{self, Backend, Capabilities};
//! use palisade_events::{Error, MemoryBus};
//!
//! struct Memory(MemoryBus);
//!
//! impl Backend for Memory {
//!     type Bus = MemoryBus;
//!     async fn connect(&self) -> Result<MemoryBus, Error> {
//!         Ok(self.0.clone())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), conformance::Failure> {
//! let ran = conformance::run(&Memory(MemoryBus::new()), Capabilities::ALL).await?;
//! assert!(ran.contains(&"dead_lettering"));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use crate::backend::headers::DEAD_LETTER_REASON;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::publisher::Publisher;
use crate::subscriber::{Delivery, DeliveryStream, Subscriber, Subscription};

/// How the suite reaches a backend.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend, Capabilities};
///
/// /// The suite's view of the in-memory bus: every `connect` shares one bus, as clients
/// /// of one broker do.
/// struct Memory(MemoryBus);
/// impl Backend for Memory {
///     type Bus = MemoryBus;
///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> {
///         Ok(self.0.clone())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let ran = conformance::run(&Memory(MemoryBus::new()), Capabilities::ALL).await?;
/// assert!(ran.contains(&"order_per_key"));
/// # Ok(()) }
/// ```
pub trait Backend: Send + Sync {
    /// The backend's client: publisher and subscriber.
    type Bus: Publisher + Subscriber;

    /// A new client, as a separate process would have (its own connection). Scenarios
    /// about consumer death drop a client and connect another.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// # tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(async {
    /// let _client = backend.connect().await.expect("connected");
    /// # });
    /// ```
    fn connect(&self) -> impl Future<Output = Result<Self::Bus, Error>> + Send;

    /// Makes sure `topic` (and its dead-letter topic) exists before a scenario uses it.
    /// Default: nothing, for brokers that create topics on first use.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// # tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(async {
    /// // The memory bus creates topics on first use: the default does nothing.
    /// assert!(backend.prepare_topic("orders").await.is_ok());
    /// # });
    /// ```
    fn prepare_topic(&self, topic: &str) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = topic;
        async { Ok(()) }
    }

    /// A fresh topic name for one scenario. Default: `conformance-<uuid>`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// assert!(backend.topic().starts_with("conformance-"));
    /// assert_ne!(backend.topic(), backend.topic()); // fresh per scenario
    /// ```
    fn topic(&self) -> String {
        format!("conformance-{}", Uuid::now_v7().simple())
    }

    /// Where dead letters of `topic` go. Default: `<topic>.dlq`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// assert_eq!(backend.dead_letter_topic("orders"), "orders.dlq");
    /// ```
    fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// How long a scenario waits for a delivery that must come (including redelivery
    /// of an unacked event after its consumer died). Default: 20 s.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// assert_eq!(backend.patience(), Duration::from_secs(20));
    /// ```
    fn patience(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// Whether a redelivery after a consumer's death carries a higher
    /// [`attempt`](Delivery::attempt) (Kafka keeps no delivery count: `false` there).
    /// Default: `true`.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// assert!(backend.counts_redeliveries()); // Kafka's backend says false
    /// ```
    fn counts_redeliveries(&self) -> bool {
        true
    }

    /// How long a scenario waits to be sure that nothing more arrives. Default: 300 ms.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_events::MemoryBus;
    /// use palisade_events::conformance::Backend;
    ///
    /// struct Memory(MemoryBus);
    /// impl Backend for Memory {
    ///     type Bus = MemoryBus;
    ///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
    /// }
    /// let backend = Memory(MemoryBus::new());
    /// assert_eq!(backend.quiet_period(), Duration::from_millis(300));
    /// ```
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(300)
    }
}

/// The promises a backend makes; the suite checks the ones that are on.
///
/// ```rust
/// use palisade_events::conformance::Capabilities;
///
/// // A backend that cannot carry every header checks the rest.
/// let caps = Capabilities { envelope_round_trip: false, ..Capabilities::ALL };
/// assert!(caps.confirm_before_return);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Once `publish`/`publish_batch` returned, every event is there to be consumed.
    pub confirm_before_return: bool,
    /// Every attribute, header and payload byte comes back as published.
    pub envelope_round_trip: bool,
    /// An unacked delivery whose consumer died goes to another member of the group.
    pub redelivery_after_consumer_death: bool,
    /// `retry(delay)` brings the event back after the delay, with a higher attempt.
    pub retry_with_delay: bool,
    /// `dead_letter(reason)` moves the event to the dead-letter topic with its reason.
    pub dead_lettering: bool,
    /// A member that settles in order sees each key's events in publish order.
    pub order_per_key: bool,
    /// Members of one group share the events (each within its prefetch).
    pub groups_share_work: bool,
    /// Each group gets every event.
    pub fan_out: bool,
    /// A consumer that stops with events unsettled loses none of them.
    pub shutdown_loses_nothing: bool,
}

impl Capabilities {
    /// Every promise.
    pub const ALL: Self = Self {
        confirm_before_return: true,
        envelope_round_trip: true,
        redelivery_after_consumer_death: true,
        retry_with_delay: true,
        dead_lettering: true,
        order_per_key: true,
        groups_share_work: true,
        fan_out: true,
        shutdown_loses_nothing: true,
    };
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::ALL
    }
}

/// Why a scenario failed.
///
/// ```rust
/// use palisade_events::conformance::Failure;
///
/// let failure = Failure::Violated { scenario: "fan_out", message: "group b saw 2 of 3".into() };
/// assert_eq!(failure.to_string(), "fan_out: group b saw 2 of 3");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The backend broke the scenario's promise.
    #[error("{scenario}: {message}")]
    Violated {
        /// The scenario.
        scenario: &'static str,
        /// What was seen.
        message: String,
    },
    /// A client call failed.
    #[error("{scenario}: backend error")]
    Backend {
        /// The scenario.
        scenario: &'static str,
        /// The error.
        #[source]
        source: Error,
    },
}

type Outcome = Result<(), Failure>;

/// One scenario's context: its name, patience and helpers returning [`Failure`]s.
struct Scenario<'a, B: Backend> {
    name: &'static str,
    backend: &'a B,
}

impl<'a, B: Backend> Scenario<'a, B> {
    fn new(name: &'static str, backend: &'a B) -> Self {
        Self { name, backend }
    }

    fn violated(&self, message: impl Into<String>) -> Failure {
        Failure::Violated {
            scenario: self.name,
            message: message.into(),
        }
    }

    fn check(&self, ok: bool, message: impl FnOnce() -> String) -> Outcome {
        if ok {
            Ok(())
        } else {
            Err(self.violated(message()))
        }
    }

    fn err(&self) -> impl Fn(Error) -> Failure + '_ {
        move |source| Failure::Backend {
            scenario: self.name,
            source,
        }
    }

    async fn connect(&self) -> Result<B::Bus, Failure> {
        self.backend.connect().await.map_err(self.err())
    }

    async fn topic(&self) -> Result<String, Failure> {
        let topic = self.backend.topic();
        self.backend
            .prepare_topic(&topic)
            .await
            .map_err(self.err())?;
        Ok(topic)
    }

    async fn subscribe(
        &self,
        bus: &B::Bus,
        subscription: &Subscription,
    ) -> Result<DeliveryStream, Failure> {
        bus.subscribe(subscription).await.map_err(self.err())
    }

    async fn next(&self, stream: &mut DeliveryStream) -> Result<Delivery, Failure> {
        let patience = self.backend.patience();
        match tokio::time::timeout(patience, stream.next()).await {
            Ok(Some(Ok(delivery))) => Ok(delivery),
            Ok(Some(Err(e))) => Err(self.err()(e)),
            Ok(None) => Err(self.violated("the subscription ended")),
            Err(_) => Err(self.violated(format!("no delivery within {patience:?}"))),
        }
    }

    async fn nothing_more(&self, stream: &mut DeliveryStream) -> Outcome {
        let quiet = self.backend.quiet_period();
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(Ok(d))) => Err(self.violated(format!("unexpected delivery {d:?}"))),
            _ => Ok(()),
        }
    }

    fn envelope(&self, delivery: &Delivery) -> Result<Envelope, Failure> {
        delivery
            .envelope()
            .cloned()
            .map_err(|e| self.violated(format!("malformed delivery: {e}")))
    }

    async fn settle(&self, result: Result<(), Error>) -> Outcome {
        result.map_err(self.err())
    }
}

fn group() -> String {
    format!("g-{}", Uuid::now_v7().simple())
}

fn numbered(key: &str, n: usize) -> Envelope {
    Envelope::new("conformance.numbered", "conformance", n.to_string()).with_key(key)
}

fn number(envelope: &Envelope) -> usize {
    std::str::from_utf8(&envelope.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

/// An envelope using every attribute, header names that look like attributes, and a
/// binary payload.
///
/// ```rust
/// let envelope = palisade_events::conformance::full_envelope();
/// assert_eq!(envelope.key.as_deref(), Some("order-7"));
/// assert_eq!(envelope.headers["tenant"], "acme");
/// ```
pub fn full_envelope() -> Envelope {
    Envelope::new("order.placed", "shop", vec![0u8, 1, 2, 255, 254, b'{'])
        .with_key("order-7")
        .with_correlation_id("req-1")
        .with_causation_id("cmd-9")
        .with_content_type("application/octet-stream")
        .with_header("tenant", "acme")
        .with_header("ce_type", "must not override the type")
        .with_header("content-type", "must not override the content type")
        .with_header("x-palisade-attempt", "must not override the attempt")
        .with_header("unicode", "grüße ✓")
        .with_header("empty", "")
}

/// Runs every scenario whose capability is on, in order; returns the names it ran.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend, Capabilities};
///
/// /// The suite's view of the in-memory bus: every `connect` shares one bus, as clients
/// /// of one broker do.
/// struct Memory(MemoryBus);
/// impl Backend for Memory {
///     type Bus = MemoryBus;
///     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> {
///         Ok(self.0.clone())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let ran = conformance::run(&Memory(MemoryBus::new()), Capabilities::ALL).await?;
/// assert!(ran.contains(&"order_per_key"));
/// # Ok(()) }
/// ```
pub async fn run<B: Backend>(
    backend: &B,
    caps: Capabilities,
) -> Result<Vec<&'static str>, Failure> {
    let mut ran = Vec::new();
    if caps.envelope_round_trip {
        envelope_round_trip(backend).await?;
        ran.push("envelope_round_trip");
    }
    if caps.confirm_before_return {
        confirm_before_return(backend).await?;
        ran.push("confirm_before_return");
    }
    if caps.redelivery_after_consumer_death {
        redelivery_after_consumer_death(backend).await?;
        ran.push("redelivery_after_consumer_death");
    }
    if caps.retry_with_delay {
        retry_with_delay(backend).await?;
        ran.push("retry_with_delay");
    }
    if caps.dead_lettering {
        dead_lettering(backend).await?;
        ran.push("dead_lettering");
    }
    if caps.order_per_key {
        order_per_key(backend).await?;
        ran.push("order_per_key");
    }
    if caps.groups_share_work {
        groups_share_work(backend).await?;
        ran.push("groups_share_work");
    }
    if caps.fan_out {
        fan_out(backend).await?;
        ran.push("fan_out");
    }
    if caps.shutdown_loses_nothing {
        shutdown_loses_nothing(backend).await?;
        ran.push("shutdown_loses_nothing");
    }
    Ok(ran)
}

/// Every attribute, header and payload byte comes back as published, at attempt 1.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::envelope_round_trip(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn envelope_round_trip<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("envelope_round_trip", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let mut stream = s
        .subscribe(&bus, &Subscription::new(&topic, group()))
        .await?;
    let sent = full_envelope();
    bus.publish(&topic, sent.clone()).await.map_err(s.err())?;
    let delivery = s.next(&mut stream).await?;
    let got = s.envelope(&delivery)?;
    s.check(got == sent, || format!("sent {sent:?}, got {got:?}"))?;
    s.check(delivery.attempt() == 1, || {
        format!("first delivery has attempt {}", delivery.attempt())
    })?;
    s.settle(delivery.ack().await).await
}

/// Once `publish` and `publish_batch` returned, every event is there to be consumed.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::confirm_before_return(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn confirm_before_return<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("confirm_before_return", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let mut stream = s
        .subscribe(&bus, &Subscription::new(&topic, group()).with_prefetch(50))
        .await?;
    bus.publish(&topic, numbered("k0", 0))
        .await
        .map_err(s.err())?;
    bus.publish_batch(
        &topic,
        (1..100)
            .map(|n| numbered(&format!("k{}", n % 7), n))
            .collect(),
    )
    .await
    .map_err(s.err())?;
    let mut seen = BTreeSet::new();
    while seen.len() < 100 {
        let delivery = s.next(&mut stream).await?;
        seen.insert(number(&s.envelope(&delivery)?));
        s.settle(delivery.ack().await).await?;
    }
    s.check(seen.iter().copied().eq(0..100), || format!("saw {seen:?}"))
}

/// A delivery that was neither acked nor retried, whose consumer (client) went away,
/// is delivered to another member of the group with a higher attempt.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::redelivery_after_consumer_death(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn redelivery_after_consumer_death<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("redelivery_after_consumer_death", backend);
    let topic = s.topic().await?;
    let group = group();
    let sent = Envelope::new("conformance.once", "conformance", "x");
    {
        let first = s.connect().await?;
        let mut stream = s
            .subscribe(&first, &Subscription::new(&topic, &group))
            .await?;
        first.publish(&topic, sent.clone()).await.map_err(s.err())?;
        let delivery = s.next(&mut stream).await?;
        s.check(s.envelope(&delivery)?.id == sent.id, || {
            "another event".into()
        })?;
        // The consumer dies holding it: delivery, stream and client dropped unsettled.
    }
    let second = s.connect().await?;
    let mut stream = s
        .subscribe(&second, &Subscription::new(&topic, &group))
        .await?;
    let again = s.next(&mut stream).await?;
    s.check(s.envelope(&again)?.id == sent.id, || "another event".into())?;
    s.check(
        !backend.counts_redeliveries() || again.attempt() >= 2,
        || format!("redelivery has attempt {}", again.attempt()),
    )?;
    s.settle(again.ack().await).await
}

/// `retry(delay)` delivers the event again, not much before the delay, attempt 2.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::retry_with_delay(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn retry_with_delay<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("retry_with_delay", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let mut stream = s
        .subscribe(&bus, &Subscription::new(&topic, group()))
        .await?;
    let sent = Envelope::new("conformance.retry", "conformance", "x");
    bus.publish(&topic, sent.clone()).await.map_err(s.err())?;
    let delivery = s.next(&mut stream).await?;
    let delay = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    s.settle(delivery.retry(delay).await).await?;
    let again = s.next(&mut stream).await?;
    let waited = started.elapsed();
    // Brokers with coarse timers may come back a little early.
    s.check(waited >= delay * 4 / 5, || format!("back after {waited:?}"))?;
    s.check(s.envelope(&again)? == sent, || {
        "the retried event changed".into()
    })?;
    s.check(again.attempt() == 2, || {
        format!("retry has attempt {}", again.attempt())
    })?;
    s.settle(again.ack().await).await
}

/// A dead letter reaches the dead-letter topic with its reason and headers, and does
/// not come back to the group.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::dead_lettering(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn dead_lettering<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("dead_lettering", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let dead_topic = backend.dead_letter_topic(&topic);
    let mut dead = s
        .subscribe(&bus, &Subscription::new(&dead_topic, group()))
        .await?;
    let mut stream = s
        .subscribe(&bus, &Subscription::new(&topic, group()))
        .await?;
    let sent =
        Envelope::new("conformance.poison", "conformance", "x").with_header("tenant", "acme");
    bus.publish(&topic, sent.clone()).await.map_err(s.err())?;
    let delivery = s.next(&mut stream).await?;
    s.settle(delivery.dead_letter("handler gave up: boom").await)
        .await?;
    let letter = s.next(&mut dead).await?;
    let got = s.envelope(&letter)?;
    s.check(got.id == sent.id && got.payload == sent.payload, || {
        format!("dead letter {got:?} is not {sent:?}")
    })?;
    s.check(
        got.headers.get("tenant").map(String::as_str) == Some("acme"),
        || format!("headers lost: {:?}", got.headers),
    )?;
    s.check(
        got.headers.get(DEAD_LETTER_REASON).map(String::as_str) == Some("handler gave up: boom"),
        || format!("no reason in {:?}", got.headers),
    )?;
    s.settle(letter.ack().await).await?;
    s.nothing_more(&mut stream).await
}

/// A single member that settles in order sees each key's events in publish order.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::order_per_key(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn order_per_key<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("order_per_key", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let mut stream = s
        .subscribe(&bus, &Subscription::new(&topic, group()).with_prefetch(64))
        .await?;
    let keys = ["a", "b", "c"];
    let batch: Vec<Envelope> = (0..60).map(|n| numbered(keys[n % 3], n)).collect();
    bus.publish_batch(&topic, batch).await.map_err(s.err())?;
    let mut last: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let delivery = s.next(&mut stream).await?;
        let e = s.envelope(&delivery)?;
        let n = number(&e);
        let key = e.key.clone().unwrap_or_default();
        if let Some(previous) = last.insert(key.clone(), n) {
            s.check(previous < n, || format!("key {key}: {n} after {previous}"))?;
        }
        s.settle(delivery.ack().await).await?;
    }
    Ok(())
}

/// Two members of one group, each holding `prefetch` (5) unsettled, split 10 events
/// five and five, each event once.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::groups_share_work(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn groups_share_work<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("groups_share_work", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let group = group();
    let prefetch = 5;
    let sub = Subscription::new(&topic, &group).with_prefetch(prefetch);
    let mut a = s.subscribe(&bus, &sub).await?;
    let mut b = s.subscribe(&bus, &sub).await?;
    let total = 2 * prefetch;
    bus.publish_batch(
        &topic,
        (0..total).map(|n| numbered(&n.to_string(), n)).collect(),
    )
    .await
    .map_err(s.err())?;
    let mut held_a = Vec::new();
    let mut held_b = Vec::new();
    let mut seen = BTreeSet::new();
    while seen.len() < total {
        let (delivery, held) = tokio::select! {
            d = s.next(&mut a) => (d?, &mut held_a),
            d = s.next(&mut b) => (d?, &mut held_b),
        };
        let n = number(&s.envelope(&delivery)?);
        s.check(seen.insert(n), || format!("event {n} delivered twice"))?;
        held.push(delivery);
    }
    s.check(held_a.len() == prefetch && held_b.len() == prefetch, || {
        format!("split {} / {}", held_a.len(), held_b.len())
    })?;
    for delivery in held_a.into_iter().chain(held_b) {
        s.settle(delivery.ack().await).await?;
    }
    s.nothing_more(&mut a).await?;
    s.nothing_more(&mut b).await
}

/// Two groups each get all 10 events.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::fan_out(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn fan_out<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("fan_out", backend);
    let bus = s.connect().await?;
    let topic = s.topic().await?;
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(
            s.subscribe(&bus, &Subscription::new(&topic, group()))
                .await?,
        );
    }
    bus.publish_batch(&topic, (0..10).map(|n| numbered("k", n)).collect())
        .await
        .map_err(s.err())?;
    for stream in &mut streams {
        let mut got = BTreeSet::new();
        while got.len() < 10 {
            let delivery = s.next(stream).await?;
            got.insert(number(&s.envelope(&delivery)?));
            s.settle(delivery.ack().await).await?;
        }
        s.check(got.iter().copied().eq(0..10), || {
            format!("group saw {got:?}")
        })?;
    }
    Ok(())
}

/// A consumer that acks some events and stops (stream and client dropped) while
/// holding others unsettled loses nothing: the next member gets every event it did
/// not ack.
///
/// ```rust
/// use palisade_events::MemoryBus;
/// use palisade_events::conformance::{self, Backend};
///
/// # struct Memory(MemoryBus);
/// # impl Backend for Memory {
/// #     type Bus = MemoryBus;
/// #     async fn connect(&self) -> Result<MemoryBus, palisade_events::Error> { Ok(self.0.clone()) }
/// # }
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), conformance::Failure> {
/// // One scenario on its own (`conformance::run` plays them all).
/// conformance::shutdown_loses_nothing(&Memory(MemoryBus::new())).await?;
/// # Ok(()) }
/// ```
pub async fn shutdown_loses_nothing<B: Backend>(backend: &B) -> Outcome {
    let s = Scenario::new("shutdown_loses_nothing", backend);
    let topic = s.topic().await?;
    let group = group();
    let total = 40;
    let mut acked = BTreeSet::new();
    {
        let first = s.connect().await?;
        let mut stream = s
            .subscribe(&first, &Subscription::new(&topic, &group).with_prefetch(10))
            .await?;
        first
            .publish_batch(
                &topic,
                (0..total)
                    .map(|n| numbered(&format!("k{}", n % 4), n))
                    .collect(),
            )
            .await
            .map_err(s.err())?;
        let mut unsettled = Vec::new();
        for i in 0..10 {
            let delivery = s.next(&mut stream).await?;
            if i % 2 == 0 {
                acked.insert(number(&s.envelope(&delivery)?));
                s.settle(delivery.ack().await).await?;
            } else {
                unsettled.push(delivery);
            }
        }
        // Stop: the unsettled deliveries, the stream and the client go away together.
        drop(stream);
        drop(unsettled);
    }
    let second = s.connect().await?;
    let mut stream = s
        .subscribe(
            &second,
            &Subscription::new(&topic, &group).with_prefetch(50),
        )
        .await?;
    let mut seen = acked.clone();
    while seen.len() < total {
        let delivery = s.next(&mut stream).await?;
        seen.insert(number(&s.envelope(&delivery)?));
        s.settle(delivery.ack().await).await?;
    }
    s.check(seen.iter().copied().eq(0..total), || {
        format!("saw {seen:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBus;

    struct Memory(MemoryBus);

    impl Backend for Memory {
        type Bus = MemoryBus;
        async fn connect(&self) -> Result<MemoryBus, Error> {
            Ok(self.0.clone())
        }
        fn patience(&self) -> Duration {
            Duration::from_secs(2)
        }
        fn quiet_period(&self) -> Duration {
            Duration::from_millis(50)
        }
    }

    #[tokio::test]
    async fn a_backend_that_never_delivers_fails_with_a_named_violation() {
        struct Deaf;
        impl Publisher for Deaf {
            async fn publish(&self, _: &str, _: Envelope) -> Result<(), Error> {
                Ok(())
            }
        }
        impl Subscriber for Deaf {
            async fn subscribe(&self, _: &Subscription) -> Result<DeliveryStream, Error> {
                Ok(Box::pin(futures_util::stream::pending()))
            }
        }
        struct DeafBackend;
        impl Backend for DeafBackend {
            type Bus = Deaf;
            async fn connect(&self) -> Result<Deaf, Error> {
                Ok(Deaf)
            }
            fn patience(&self) -> Duration {
                Duration::from_millis(20)
            }
        }
        let result = envelope_round_trip(&DeafBackend).await;
        assert!(
            matches!(
                result,
                Err(Failure::Violated {
                    scenario: "envelope_round_trip",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn memory_bus_passes_every_scenario() -> Result<(), Failure> {
        let ran = run(&Memory(MemoryBus::new()), Capabilities::ALL).await?;
        assert_eq!(ran.len(), 9);
        Ok(())
    }
}
