//! The envelope ↔ broker header mapping shared by the broker backends.
//!
//! Every broker carries string name/value pairs next to a binary body (AMQP headers,
//! Kafka headers, Redis stream fields, NATS headers), so one mapping serves all of
//! them:
//!
//! - envelope attributes travel under their CloudEvents binary-mode names with the
//!   `ce_` prefix (`ce_id`, `ce_type`, `ce_source`, `ce_subject`, `ce_time`), plus
//!   `content-type`, `ce_correlationid` and `ce_causationid`;
//! - free headers travel under their own names, except that a name which would read
//!   as a reserved one (starting with `ce_`, `x-palisade-` or `\`, or equal to
//!   `content-type`, or owned by a broker such as `x-death` or `Nats-Msg-Id`) is
//!   escaped with a leading `\`, so no free header can overwrite an attribute or be
//!   mistaken for broker metadata, and every name comes back exactly;
//! - names starting with `x-palisade-` are the backends' own transport metadata
//!   (attempt counters), never shown as free headers.
//!
//! Times are written as RFC 3339 with nanoseconds, so they round-trip exactly.

use std::borrow::Cow::Borrowed;
use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::Error;

/// `id`.
pub(crate) const ID: &str = "ce_id";
/// `type`.
pub(crate) const TYPE: &str = "ce_type";
/// `source`.
pub(crate) const SOURCE: &str = "ce_source";
/// `subject`, our ordering key.
pub(crate) const SUBJECT: &str = "ce_subject";
/// `time`.
pub(crate) const TIME: &str = "ce_time";
/// `datacontenttype` (binary mode uses the transport's content type header).
pub(crate) const CONTENT_TYPE: &str = "content-type";
/// Correlation id (a CloudEvents extension attribute).
pub(crate) const CORRELATION_ID: &str = "ce_correlationid";
/// Causation id (a CloudEvents extension attribute).
pub(crate) const CAUSATION_ID: &str = "ce_causationid";
/// Prefix of the backends' own transport metadata.
pub(crate) const INTERNAL_PREFIX: &str = "x-palisade-";
/// Free header carrying a dead letter's reason.
pub(crate) const DEAD_LETTER_REASON: &str = "palisade-dead-letter-reason";

const ESCAPE: char = '\\';

/// Names a broker sets on its own (RabbitMQ dead-lettering and quorum queues, NATS),
/// which the backends skip when reading; free headers with such names are escaped.
pub(crate) fn broker_owned(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name == "x-received-from"
        || name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("nats-"))
}

fn needs_escape(name: &str) -> bool {
    broker_owned(name)
        || name.starts_with("ce_")
        || name.starts_with(INTERNAL_PREFIX)
        || name.starts_with(ESCAPE)
        || name == CONTENT_TYPE
}

/// The wire name of a free header.
pub(crate) fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if needs_escape(name) {
        std::borrow::Cow::Owned(format!("{ESCAPE}{name}"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Formats a time so it parses back to the same instant, nanoseconds included: RFC 3339
/// in UTC with `Z`, and 0, 3, 6 or 9 fraction digits, as few as keep every nanosecond
/// (chrono's `SecondsFormat::AutoSi`, written here digit by digit because it runs once
/// per published event).
pub(crate) fn format_time(time: &DateTime<Utc>) -> String {
    TimeText::of(time).as_str().to_owned()
}

/// ASCII text being written into a fixed buffer (what does not fit is dropped: the
/// buffer is sized for the longest time).
pub(crate) struct Ascii {
    bytes: [u8; 30],
    len: usize,
}

impl Ascii {
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// `value`'s last `width` decimal digits, zero-padded (written from the last digit
    /// back, so each step divides by the constant 10, which compiles to a multiply).
    fn digits(&mut self, mut value: u32, width: usize) {
        let end = self.len + width;
        let Some(out) = self.bytes.get_mut(self.len..end) else {
            return;
        };
        for slot in out.iter_mut().rev() {
            // A remainder by 10 is below 10: the cast loses nothing.
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len = end;
    }

    fn as_str(&self) -> &str {
        self.bytes
            .get(..self.len)
            .and_then(|ascii| std::str::from_utf8(ascii).ok())
            .unwrap_or_default()
    }
}

/// A time as [`format_time`] writes it, formatted on the stack (only the general
/// formatter's rare cases allocate): what [`encode_each`] hands out per published event.
pub(crate) enum TimeText {
    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`: at most 30 ASCII bytes.
    Short(Ascii),
    /// Five-digit years and leap seconds, from chrono's formatter.
    Long(String),
}

impl TimeText {
    pub(crate) fn of(time: &DateTime<Utc>) -> Self {
        use chrono::{Datelike, Timelike};

        // The calendar fields of the naive UTC time: `DateTime`'s own accessors each
        // convert to local time first (adding a zero offset), seven times over.
        let naive = time.naive_utc();
        let (date, clock) = (naive.date(), naive.time());
        let (year, nanos) = (date.year(), clock.nanosecond());
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return Self::Long(time.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
        let mut out = Ascii {
            bytes: [0; 30],
            len: 0,
        };
        out.digits(year.unsigned_abs(), 4);
        out.push(b'-');
        out.digits(date.month(), 2);
        out.push(b'-');
        out.digits(date.day(), 2);
        out.push(b'T');
        out.digits(clock.hour(), 2);
        out.push(b':');
        out.digits(clock.minute(), 2);
        out.push(b':');
        out.digits(clock.second(), 2);
        if nanos != 0 {
            out.push(b'.');
            if nanos % 1_000_000 == 0 {
                out.digits(nanos / 1_000_000, 3);
            } else if nanos % 1_000 == 0 {
                out.digits(nanos / 1_000, 6);
            } else {
                out.digits(nanos, 9);
            }
        }
        out.push(b'Z');
        Self::Short(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Short(ascii) => ascii.as_str(),
            Self::Long(text) => text,
        }
    }
}

/// Reads a time in exactly the form [`format_time`] writes (`Z`, 0, 3, 6 or 9
/// fraction digits), without the general RFC 3339 parser; `None` for anything else,
/// which the caller hands to chrono.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0_u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return None;
    }
    let punctuation = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punctuation.iter().any(|&(at, c)| b.get(at) != Some(&c)) {
        return None;
    }
    let nanos = match b.len() - 20 {
        0 => 0,
        digits @ (4 | 7 | 10) if b.get(19) == Some(&b'.') => {
            number(20..b.len() - 1)? * 10_u32.pow(10 - u32::try_from(digits).ok()?)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(0..4)?).ok()?,
        number(5..7)?,
        number(8..10)?,
    )?;
    let time = date.and_hms_nano_opt(number(11..13)?, number(14..16)?, number(17..19)?, nanos)?;
    Some(time.and_utc())
}

/// Hands `pair` each of the envelope's attributes and free headers as a wire pair (the
/// payload travels as the body, separately), without allocating: the id and the time
/// are formatted on the stack. Absent optional attributes are left out. Stops at the
/// first pair the broker's mapping refuses, with its error.
pub(crate) fn try_encode_each<E>(
    envelope: &Envelope,
    mut pair: impl FnMut(&str, &str) -> Result<(), E>,
) -> Result<(), E> {
    let mut id = Uuid::encode_buffer();
    pair(ID, envelope.id.hyphenated().encode_lower(&mut id))?;
    pair(TYPE, &envelope.event_type)?;
    pair(SOURCE, &envelope.source)?;
    pair(TIME, TimeText::of(&envelope.time).as_str())?;
    pair(CONTENT_TYPE, &envelope.content_type)?;
    if let Some(key) = &envelope.key {
        pair(SUBJECT, key)?;
    }
    if let Some(id) = &envelope.correlation_id {
        pair(CORRELATION_ID, id)?;
    }
    if let Some(id) = &envelope.causation_id {
        pair(CAUSATION_ID, id)?;
    }
    for (name, value) in &envelope.headers {
        pair(&escape(name), value)?;
    }
    Ok(())
}

/// [`try_encode_each`] for a mapping that takes every pair.
pub(crate) fn encode_each(envelope: &Envelope, mut pair: impl FnMut(&str, &str)) {
    let Ok(()) = try_encode_each::<std::convert::Infallible>(envelope, |name, value| {
        pair(name, value);
        Ok(())
    });
}

/// The pairs of [`encode_each`], collected.
#[cfg(test)]
pub(crate) fn encode(
    envelope: &Envelope,
) -> Vec<(
    std::borrow::Cow<'static, str>,
    std::borrow::Cow<'static, str>,
)> {
    use std::borrow::Cow::Owned;

    let mut pairs = Vec::with_capacity(8 + envelope.headers.len());
    encode_each(envelope, |name, value| {
        pairs.push((Owned(name.to_owned()), Owned(value.to_owned())));
    });
    pairs
}

/// Builds an envelope back from wire pairs and the body.
///
/// Missing or unreadable required attributes (`ce_id`, `ce_type`, `ce_source`,
/// `ce_time`, `content-type`) are [`Error::Malformed`]; `x-palisade-*` pairs are
/// skipped; everything else is a free header.
pub(crate) fn decode<'a, I>(pairs: I, payload: Bytes) -> Result<Envelope, Error>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut id = None;
    let mut event_type = None;
    let mut source = None;
    let mut time = None;
    let mut content_type = None;
    let mut key = None;
    let mut correlation_id = None;
    let mut causation_id = None;
    let mut headers = BTreeMap::new();
    for (name, value) in pairs {
        match name {
            ID => id = Some(value),
            TYPE => event_type = Some(value),
            SOURCE => source = Some(value),
            TIME => time = Some(value),
            CONTENT_TYPE => content_type = Some(value),
            SUBJECT => key = Some(value.to_owned()),
            CORRELATION_ID => correlation_id = Some(value.to_owned()),
            CAUSATION_ID => causation_id = Some(value.to_owned()),
            _ if name.starts_with(INTERNAL_PREFIX) => {}
            _ => {
                let name = name.strip_prefix(ESCAPE).unwrap_or(name);
                headers.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    let id = required(ID, id)?;
    let id = Uuid::parse_str(id).map_err(|e| malformed(format!("{ID} {id:?}: {e}")))?;
    let time = required(TIME, time)?;
    let time = match parse_time(time) {
        Some(time) => time,
        None => DateTime::parse_from_rfc3339(time)
            .map_err(|e| malformed(format!("{TIME} {time:?}: {e}")))?
            .with_timezone(&Utc),
    };
    Ok(Envelope {
        id,
        event_type: super::names::name(required(TYPE, event_type)?),
        source: super::names::name(required(SOURCE, source)?),
        key,
        time,
        content_type: match required(CONTENT_TYPE, content_type)? {
            // The common one is kept without an allocation.
            json if json == crate::codec::JsonCodec::CONTENT_TYPE => {
                Borrowed(crate::codec::JsonCodec::CONTENT_TYPE)
            }
            other => super::names::name(other),
        },
        correlation_id,
        causation_id,
        headers,
        payload,
    })
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, Error> {
    value.ok_or_else(|| malformed(format!("missing required attribute {name}")))
}

/// An [`Error::Malformed`] with `reason`.
pub(crate) fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;

    fn decode_pairs(
        pairs: &[(Cow<'_, str>, Cow<'_, str>)],
        payload: Bytes,
    ) -> Result<Envelope, Error> {
        decode(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())), payload)
    }

    #[test]
    fn full_envelope_round_trips() -> Result<(), Error> {
        let envelope = Envelope::new("order.placed", "orders", b"{}".to_vec())
            .with_key("k")
            .with_correlation_id("c")
            .with_causation_id("z")
            .with_header("tenant", "acme")
            .with_header("ce_type", "sneaky")
            .with_header("content-type", "text/plain")
            .with_header("x-palisade-attempt", "9")
            .with_header("x-death", "free")
            .with_header("Nats-Msg-Id", "free")
            .with_header("\\odd", "1");
        let pairs = encode(&envelope);
        let back = decode_pairs(&pairs, envelope.payload.clone())?;
        assert_eq!(back, envelope);
        Ok(())
    }

    #[test]
    fn missing_required_attribute_is_malformed_not_a_panic() {
        let envelope = Envelope::new("t", "s", Vec::new());
        for required in [ID, TYPE, SOURCE, TIME, CONTENT_TYPE] {
            let pairs: Vec<_> = encode(&envelope)
                .into_iter()
                .filter(|(n, _)| n != required)
                .collect();
            let result = decode_pairs(&pairs, Bytes::new());
            assert!(matches!(result, Err(Error::Malformed { .. })), "{required}");
        }
    }

    /// `envelope`'s wire pairs with the value of `name` replaced by `value`.
    fn encode_with<'a>(
        envelope: &'a Envelope,
        name: &str,
        value: &'a str,
    ) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        encode(envelope)
            .into_iter()
            .map(|(n, v)| {
                if n == name {
                    (n, Cow::Borrowed(value))
                } else {
                    (n, v)
                }
            })
            .collect()
    }

    #[test]
    fn unreadable_id_or_time_is_malformed() {
        let envelope = Envelope::new("t", "s", Vec::new());
        for (name, bad) in [(ID, "not-a-uuid"), (TIME, "yesterday")] {
            let pairs = encode_with(&envelope, name, bad);
            assert!(matches!(
                decode_pairs(&pairs, Bytes::new()),
                Err(Error::Malformed { .. })
            ));
        }
    }

    #[test]
    fn times_in_other_rfc3339_forms_still_parse() -> Result<(), Error> {
        let envelope = Envelope::new("t", "s", Vec::new());
        for (text, expected) in [
            ("2026-11-24T06:00:00+01:00", "2026-11-24T05:00:00Z"),
            ("2026-11-24t05:00:00.5z", "2026-11-24T05:00:00.500Z"),
            ("2026-11-24T05:00:00.12Z", "2026-11-24T05:00:00.120Z"),
        ] {
            let pairs = encode_with(&envelope, TIME, text);
            let back = decode_pairs(&pairs, Bytes::new())?;
            assert_eq!(format_time(&back.time), expected, "{text}");
        }
        assert!(parse_time("2026-13-24T05:00:00Z").is_none());
        Ok(())
    }

    proptest! {
        #[test]
        fn times_format_as_chrono_does(nanos in any::<i64>(), whole in 0_u8..3) {
            // Whole seconds and milliseconds as often as arbitrary nanoseconds.
            let nanos = match whole {
                0 => nanos - nanos % 1_000_000_000,
                1 => nanos - nanos % 1_000_000,
                _ => nanos,
            };
            let time = DateTime::from_timestamp_nanos(nanos);
            prop_assert_eq!(format_time(&time), time.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }

        #[test]
        fn any_envelope_round_trips(
            event_type in ".*",
            source in ".*",
            key in proptest::option::of(".*"),
            correlation in proptest::option::of(".*"),
            causation in proptest::option::of(".*"),
            headers in proptest::collection::btree_map(".*", ".*", 0..6),
            nanos in 0i64..4_000_000_000_000_000_000,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut envelope = Envelope::new(event_type, source, payload);
            envelope.key = key;
            envelope.correlation_id = correlation;
            envelope.causation_id = causation;
            envelope.headers = headers;
            envelope.time = DateTime::from_timestamp_nanos(nanos);
            let pairs = encode(&envelope);
            let back = decode_pairs(&pairs, envelope.payload.clone());
            prop_assert_eq!(back.ok(), Some(envelope));
        }
    }
}
