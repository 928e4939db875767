//! The one envelope every backend carries.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{Codec, JsonCodec};
use crate::error::Error;
use crate::event::Event;

/// An event on the wire: CloudEvents attributes, tracing ids, free headers and the
/// encoded payload.
///
/// Attribute names follow [CloudEvents 1.0](https://cloudevents.io) so an envelope maps
/// onto AMQP properties, Kafka headers, Redis stream fields and NATS headers without
/// loss. Every backend round-trips every field.
///
/// ```
/// use palisade_events::Envelope;
///
/// let envelope = Envelope::new("order.placed", "orders", b"{\"id\":7}".to_vec())
///     .with_key("order-7")
///     .with_header("tenant", "acme");
/// assert_eq!(envelope.event_type, "order.placed");
/// assert_eq!(envelope.key.as_deref(), Some("order-7"));
/// assert_eq!(envelope.id.get_version_num(), 7);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this event (`id`), a UUID v7 so ids sort by creation time.
    pub id: Uuid,
    /// Stable type name (`type`), e.g. `order.placed`. Borrowed when it is a
    /// `&'static str` (an [`Event::TYPE`]), so creating an envelope does not allocate
    /// for it.
    pub event_type: Cow<'static, str>,
    /// Who produced it (`source`), e.g. the service name (borrowed when static).
    pub source: Cow<'static, str>,
    /// Ordering and partition key (CloudEvents `subject`): events with one key are
    /// delivered in order.
    pub key: Option<String>,
    /// When the event happened (`time`).
    pub time: DateTime<Utc>,
    /// Media type of the payload (`datacontenttype`), e.g. `application/json`
    /// (borrowed when static).
    pub content_type: Cow<'static, str>,
    /// Id of the request or conversation this event belongs to.
    pub correlation_id: Option<String>,
    /// Id of the event or command that caused this one.
    pub causation_id: Option<String>,
    /// Free headers, carried as broker-native headers.
    pub headers: BTreeMap<String, String>,
    /// The encoded event (`data`).
    pub payload: Bytes,
}

impl Envelope {
    /// A new envelope with a fresh UUID v7 id, the current time and a JSON content type.
    ///
    /// `event_type` and `source` are `&'static str` (kept without a copy) or `String`.
    ///
    /// ```rust
    /// use std::borrow::Cow;
    /// use palisade_events::Envelope;
    ///
    /// let envelope = Envelope::new("order.placed", "shop", r#"{"id":7}"#);
    /// assert!(matches!(envelope.event_type, Cow::Borrowed("order.placed"))); // no copy
    /// assert_eq!(envelope.content_type, "application/json");
    /// assert_eq!(envelope.id.get_version_num(), 7);
    /// // Owned names work too.
    /// let service = String::from("shop-eu");
    /// assert_eq!(Envelope::new("order.placed", service, "{}").source, "shop-eu");
    /// ```
    pub fn new(
        event_type: impl Into<Cow<'static, str>>,
        source: impl Into<Cow<'static, str>>,
        payload: impl Into<Bytes>,
    ) -> Self {
        // One clock read for both the id's timestamp and `time`.
        let now = std::time::SystemTime::now();
        let (id, time) = match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(since_epoch) => (id_at(since_epoch), utc_at(since_epoch)),
            // A clock set before 1970.
            Err(_) => (id_at(std::time::Duration::ZERO), DateTime::<Utc>::from(now)),
        };
        Self {
            id,
            event_type: event_type.into(),
            source: source.into(),
            key: None,
            time,
            content_type: Cow::Borrowed(JsonCodec::CONTENT_TYPE),
            correlation_id: None,
            causation_id: None,
            headers: BTreeMap::new(),
            payload: payload.into(),
        }
    }

    /// Encodes a typed event with the JSON codec; the key comes from [`Event::key`].
    ///
    /// ```
    /// use palisade_events::{Envelope, Event};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct OrderPlaced { order_id: u64 }
    ///
    /// impl Event for OrderPlaced {
    ///     const TYPE: &'static str = "order.placed";
    ///     fn key(&self) -> Option<String> { Some(self.order_id.to_string()) }
    /// }
    ///
    /// let envelope = Envelope::from_event(&OrderPlaced { order_id: 7 }, "orders")?;
    /// assert_eq!(envelope.key.as_deref(), Some("7"));
    /// let back: OrderPlaced = envelope.decode()?;
    /// assert_eq!(back.order_id, 7);
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn from_event<E: Event>(
        event: &E,
        source: impl Into<Cow<'static, str>>,
    ) -> Result<Self, Error> {
        Self::from_event_with(&JsonCodec, event, source)
    }

    /// Encodes a typed event with the given codec.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Event, JsonCodec};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl Event for Placed {
    ///     const TYPE: &'static str = "order.placed";
    ///     fn key(&self) -> Option<String> { Some(self.id.to_string()) }
    /// }
    /// let envelope = Envelope::from_event_with(&JsonCodec, &Placed { id: 7 }, "shop")?;
    /// assert_eq!((envelope.event_type.as_ref(), envelope.key.as_deref()), ("order.placed", Some("7")));
    /// assert_eq!(envelope.content_type, "application/json");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn from_event_with<C: Codec, E: Event>(
        codec: &C,
        event: &E,
        source: impl Into<Cow<'static, str>>,
    ) -> Result<Self, Error> {
        let payload = codec.encode(event)?;
        let mut envelope = Self::new(E::TYPE, source, payload);
        envelope.key = event.key();
        if envelope.content_type != codec.content_type() {
            envelope.content_type = Cow::Owned(codec.content_type().to_owned());
        }
        Ok(envelope)
    }

    /// Decodes the payload with the JSON codec, checking the content type first.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Event};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl Event for Placed {
    ///     const TYPE: &'static str = "order.placed";
    ///     fn key(&self) -> Option<String> { Some(self.id.to_string()) }
    /// }
    /// let envelope = Envelope::new("order.placed", "shop", r#"{"id":7}"#);
    /// let placed: Placed = envelope.decode()?;
    /// assert_eq!(placed.id, 7);
    /// // A payload that is not the event is an error, not a panic.
    /// assert!(Envelope::new("order.placed", "shop", "{").decode::<Placed>().is_err());
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    pub fn decode<E: Event>(&self) -> Result<E, Error> {
        self.decode_with(&JsonCodec)
    }

    /// Decodes the payload with the given codec, checking the content type first.
    ///
    /// ```rust
    /// use palisade_events::{Envelope, Error, Event, JsonCodec};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Placed { id: u64 }
    /// impl Event for Placed {
    ///     const TYPE: &'static str = "order.placed";
    ///     fn key(&self) -> Option<String> { Some(self.id.to_string()) }
    /// }
    /// let xml = Envelope::new("order.placed", "shop", "<id>7</id>").with_content_type("application/xml");
    /// assert!(matches!(xml.decode_with::<_, Placed>(&JsonCodec), Err(Error::ContentType { .. })));
    /// ```
    pub fn decode_with<C: Codec, E: Event>(&self, codec: &C) -> Result<E, Error> {
        if !codec.accepts(&self.content_type) {
            return Err(Error::ContentType {
                expected: codec.content_type().to_owned(),
                found: self.content_type.clone().into_owned(),
            });
        }
        codec.decode(&self.payload)
    }

    /// Sets the ordering key.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let envelope = Envelope::new("order.placed", "shop", "{}").with_key("order-7");
    /// assert_eq!(envelope.key.as_deref(), Some("order-7"));
    /// ```
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the correlation id.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let envelope = Envelope::new("order.placed", "shop", "{}").with_correlation_id("checkout-42");
    /// assert_eq!(envelope.correlation_id.as_deref(), Some("checkout-42"));
    /// ```
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let command = Envelope::new("order.place", "web", "{}");
    /// let event = Envelope::new("order.placed", "shop", "{}").with_causation_id(command.id.to_string());
    /// assert_eq!(event.causation_id, Some(command.id.to_string()));
    /// ```
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a free header.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let envelope = Envelope::new("order.placed", "shop", "{}").with_header("tenant", "acme");
    /// assert_eq!(envelope.headers["tenant"], "acme");
    /// ```
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the content type.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let envelope = Envelope::new("order.placed", "shop", "{}")
    ///     .with_content_type("application/cloudevents+json");
    /// assert_eq!(envelope.content_type, "application/cloudevents+json");
    /// ```
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// A follow-up envelope caused by this one: same correlation id (or this id when
    /// none), causation id set to this id.
    ///
    /// ```rust
    /// use palisade_events::Envelope;
    ///
    /// let placed = Envelope::new("order.placed", "shop", "{}");
    /// let paid = placed.caused("payment.taken", "{}");
    /// assert_eq!(paid.causation_id, Some(placed.id.to_string()));
    /// // No correlation id on the cause: the conversation is named after it.
    /// assert_eq!(paid.correlation_id, Some(placed.id.to_string()));
    /// assert_eq!(paid.source, "shop");
    /// ```
    pub fn caused(
        &self,
        event_type: impl Into<Cow<'static, str>>,
        payload: impl Into<Bytes>,
    ) -> Self {
        let correlation = self
            .correlation_id
            .clone()
            .unwrap_or_else(|| self.id.to_string());
        Self::new(event_type, self.source.clone(), payload)
            .with_correlation_id(correlation)
            .with_causation_id(self.id.to_string())
    }
}

/// The UUID v7 of an event created at `now`: 48 bits of Unix milliseconds, a 42-bit counter that starts at a
/// random point each millisecond and counts up within it (so ids from one thread sort in
/// creation order, as `Uuid::now_v7` promises), 32 random bits.
///
/// `Uuid::now_v7` takes a process-wide lock and asks the OS for randomness on every
/// call; this keeps the state per thread and draws from a splitmix64 seeded once per
/// thread from std's randomly keyed hasher, which is what a bus publishing hundreds of
/// thousands of events a second can afford. Uniqueness across threads and processes
/// rests on the random counter start and the random tail (74 random bits per
/// millisecond and thread).
fn id_at(since_epoch: std::time::Duration) -> Uuid {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};

    thread_local! {
        static STATE: Cell<(u64, u64, u64)> = Cell::new((0, 0, {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        }));
    }
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let now = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX) & ((1 << 48) - 1);
    STATE.with(|cell| {
        let (last, counter, mut rng) = cell.get();
        let (ms, counter) = if now > last || counter >= (1 << 42) - 1 {
            // A new millisecond (or, rarely, a spent counter): restart at a random
            // point in the lower half so there is room to count up.
            (
                now.max(last + u64::from(now <= last)),
                splitmix(&mut rng) & ((1 << 41) - 1),
            )
        } else {
            // Same millisecond, or the clock went back: stay on `last`, count up.
            (last, counter + 1)
        };
        let tail = splitmix(&mut rng) & 0xffff_ffff;
        cell.set((ms, counter, rng));
        let rand_a = (counter >> 30) & 0xfff;
        let rand_b = ((counter & ((1 << 30) - 1)) << 32) | tail;
        let value = (u128::from(ms) << 80)
            | (0x7 << 76)
            | (u128::from(rand_a) << 64)
            | (0b10 << 62)
            | u128::from(rand_b);
        Uuid::from_u128(value)
    })
}

/// The UTC time `since_epoch` after the Unix epoch, as `DateTime::from(SystemTime)`
/// gives it, for less: the calendar date is chrono's costly part (a chain of
/// divisions from a day count), and it changes once a day, so each thread keeps the
/// last day's date. Part of every `Envelope::new`: a tenth of the time a publisher
/// spent on the in-memory bus went to the conversion.
fn utc_at(since_epoch: std::time::Duration) -> DateTime<Utc> {
    use std::cell::Cell;

    use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

    const DAY: u64 = 86_400;
    thread_local! {
        static LAST_DAY: Cell<Option<(u64, NaiveDate)>> = const { Cell::new(None) };
    }
    let secs = since_epoch.as_secs();
    let day = secs / DAY;
    let date = LAST_DAY.with(|last| match last.get() {
        Some((cached, date)) if cached == day => Some(date),
        _ => {
            let midnight = i64::try_from(day * DAY).ok()?;
            let date = DateTime::from_timestamp(midnight, 0)?.date_naive();
            last.set(Some((day, date)));
            Some(date)
        }
    });
    let time = u32::try_from(secs % DAY).ok().and_then(|second| {
        NaiveTime::from_num_seconds_from_midnight_opt(second, since_epoch.subsec_nanos())
    });
    match (date, time) {
        (Some(date), Some(time)) => NaiveDateTime::new(date, time).and_utc(),
        // Past chrono's range (year 262143): what the conversion from `SystemTime` does.
        _ => DateTime::<Utc>::from(std::time::UNIX_EPOCH + since_epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_id() -> Uuid {
        id_at(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    proptest::proptest! {
        /// The cached-day conversion agrees with chrono's own, across days (each case
        /// runs three times on one thread, so the cache is hit and missed), to the
        /// nanosecond, up to the year 9999 and at the edges of a day.
        #[test]
        fn utc_at_matches_chrono(
            secs in 0_u64..253_402_300_800,
            nanos in 0_u32..1_000_000_000,
            edge in proptest::option::of(0_u64..2),
        ) {
            let secs = match edge {
                // The last and the first second of a day.
                Some(side) => (secs / 86_400) * 86_400 + side * 86_399,
                None => secs,
            };
            for since in [
                std::time::Duration::new(secs, nanos),
                std::time::Duration::new(secs.saturating_add(86_400), nanos),
                std::time::Duration::new(secs, nanos),
            ] {
                let expected = DateTime::<Utc>::from(std::time::UNIX_EPOCH + since);
                proptest::prop_assert_eq!(utc_at(since), expected);
            }
        }
    }

    #[test]
    fn fast_ids_are_v7_rfc_variant_increasing_and_unique_across_threads() {
        let mut previous = next_id();
        for _ in 0..100_000 {
            let id = next_id();
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert!(id > previous);
            previous = id;
        }
        let ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let (secs, _) = previous
            .get_timestamp()
            .map(|t| t.to_unix())
            .unwrap_or_default();
        assert!(secs.abs_diff(ms / 1000) <= 2);
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..50_000).map(|_| next_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap_or_default() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
    }

    #[test]
    fn ids_are_v7_and_sort_by_creation() {
        let a = Envelope::new("t", "s", Vec::new());
        let b = Envelope::new("t", "s", Vec::new());
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
    }

    #[test]
    fn caused_envelope_links_correlation_and_causation() {
        let first = Envelope::new("a", "svc", Vec::new()).with_correlation_id("req-1");
        let next = first.caused("b", Vec::new());
        assert_eq!(next.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(next.causation_id, Some(first.id.to_string()));
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Placed {
        id: u64,
    }

    impl Event for Placed {
        const TYPE: &'static str = "placed";
    }

    #[test]
    fn decoding_bad_payloads_gives_typed_errors_not_panics() {
        let truncated = Envelope::new("placed", "s", &b"{\"id\": 7"[..]);
        assert!(matches!(
            truncated.decode::<Placed>(),
            Err(Error::Decode(_))
        ));
        let wrong_shape = Envelope::new("placed", "s", &b"{\"id\": \"seven\"}"[..]);
        assert!(matches!(
            wrong_shape.decode::<Placed>(),
            Err(Error::Decode(_))
        ));
        let xml =
            Envelope::new("placed", "s", &b"<id>7</id>"[..]).with_content_type("application/xml");
        assert!(matches!(
            xml.decode::<Placed>(),
            Err(Error::ContentType { found, .. }) if found == "application/xml"
        ));
        let charset = Envelope::new("placed", "s", &b"{\"id\": 7}"[..])
            .with_content_type("application/json; charset=utf-8");
        assert!(matches!(charset.decode::<Placed>(), Ok(Placed { id: 7 })));
    }

    #[test]
    fn envelope_serde_round_trip_keeps_every_field() -> Result<(), serde_json::Error> {
        let envelope = Envelope::new("order.placed", "orders", b"{\"x\":1}".to_vec())
            .with_key("k")
            .with_correlation_id("c")
            .with_causation_id("z")
            .with_header("h", "v");
        let json = serde_json::to_vec(&envelope)?;
        let back: Envelope = serde_json::from_slice(&json)?;
        assert_eq!(back, envelope);
        Ok(())
    }
}
