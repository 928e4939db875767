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

/// What a reader of many envelopes remembers of the last one it read: the minute of
/// its time, so that a time of the same minute is read from its seconds on, and its
/// type and source as kept names, so that the same ones are not looked up again. A
/// consumer reads many events of one minute, type and source in a row.
#[derive(Default)]
pub(crate) struct LastRead {
    /// `YYYY-MM-DDTHH:MM:` as last read.
    prefix: [u8; 17],
    /// The date, hour and minute it names, once one was read.
    minute: Option<(chrono::NaiveDate, u32, u32)>,
    /// The last type read, when it is a kept name.
    event_type: Option<&'static str>,
    /// The last source read, when it is a kept name.
    source: Option<&'static str>,
}

/// Reads a time in exactly the form [`format_time`] writes (`Z`, 0, 3, 6 or 9
/// fraction digits) from its bytes, without the general RFC 3339 parser; `None` for
/// anything else, which the caller hands to chrono.
fn parse_time(text: &[u8], last: &mut LastRead) -> Option<DateTime<Utc>> {
    let (head, rest) = text.split_first_chunk::<19>()?;
    let (prefix, &[s0, s1]) = head.split_first_chunk::<17>()? else {
        return None;
    };
    let (fraction, scale) = match rest {
        [b'Z'] => (&[][..], 0),
        [b'.', fraction @ .., b'Z'] => match fraction.len() {
            3 => (fraction, 1_000_000),
            6 => (fraction, 1_000),
            9 => (fraction, 1),
            _ => return None,
        },
        _ => return None,
    };
    // Every digit checked and added up without an early exit, so that the fixed-size
    // loops compile to straight-line code.
    let mut not_digit = false;
    let mut digit = |c: u8| {
        let d = c.wrapping_sub(b'0');
        not_digit |= d > 9;
        u32::from(d)
    };
    let second = digit(s0) * 10 + digit(s1);
    let nanos = fraction
        .iter()
        .fold(0_u32, |n, &c| n.wrapping_mul(10).wrapping_add(digit(c)))
        .wrapping_mul(scale);
    if not_digit {
        return None;
    }
    let (date, hour, minute) = match last.minute {
        Some(minute) if last.prefix == *prefix => minute,
        _ => {
            let minute = parse_minute(prefix)?;
            last.prefix = *prefix;
            last.minute = Some(minute);
            minute
        }
    };
    let time = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(time.and_utc())
}

/// Reads `YYYY-MM-DDTHH:MM:`: the date, hour and minute.
fn parse_minute(prefix: &[u8; 17]) -> Option<(chrono::NaiveDate, u32, u32)> {
    let &[
        y0,
        y1,
        y2,
        y3,
        b'-',
        mo0,
        mo1,
        b'-',
        d0,
        d1,
        b'T',
        h0,
        h1,
        b':',
        mi0,
        mi1,
        b':',
    ] = prefix
    else {
        return None;
    };
    let mut not_digit = false;
    let mut two = |a: u8, b: u8| {
        let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
        not_digit |= a > 9 || b > 9;
        u32::from(a) * 10 + u32::from(b)
    };
    let (century, year, month, day) = (two(y0, y1), two(y2, y3), two(mo0, mo1), two(d0, d1));
    let (hour, minute) = (two(h0, h1), two(mi0, mi1));
    if not_digit || hour > 23 || minute > 59 {
        return None;
    }
    // Four digits: below 10,000, so the conversion cannot fail.
    let year = i32::try_from(century * 100 + year).ok()?;
    Some((
        chrono::NaiveDate::from_ymd_opt(year, month, day)?,
        hour,
        minute,
    ))
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

/// How many pairs [`try_encode_each`] hands out for `envelope`, and how many bytes
/// their names and values hold together at most (but for a time past the year 9999),
/// found without formatting any: what a mapping that writes them all into one buffer
/// (a Redis command) reserves up front.
pub(crate) fn encoded_size(envelope: &Envelope) -> (usize, usize) {
    /// The five attributes always written, names and the id's text.
    const FIXED: usize = ID.len() + TYPE.len() + SOURCE.len() + TIME.len() + CONTENT_TYPE.len();
    /// An id's hyphenated text, and the longest time [`TimeText`] writes on the stack.
    const ID_TEXT: usize = 36;
    const TIME_TEXT: usize = 30;
    let optional = [
        (SUBJECT, &envelope.key),
        (CORRELATION_ID, &envelope.correlation_id),
        (CAUSATION_ID, &envelope.causation_id),
    ];
    let (mut pairs, mut bytes) = (
        5,
        FIXED
            + ID_TEXT
            + TIME_TEXT
            + envelope.event_type.len()
            + envelope.source.len()
            + envelope.content_type.len(),
    );
    for (name, value) in optional {
        if let Some(value) = value {
            pairs += 1;
            bytes += name.len() + value.len();
        }
    }
    for (name, value) in &envelope.headers {
        // An escaped name is one byte longer.
        pairs += 1;
        bytes += name.len() + 1 + value.len();
    }
    (pairs, bytes)
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

/// Builds an envelope back from wire pairs and the body, for pairs already read as
/// text; see [`Decoder`].
pub(crate) fn decode<'a, I>(pairs: I, payload: Bytes) -> Result<Envelope, Error>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    Decoder::of(pairs).finish(payload)
}

/// An envelope being read back from wire pairs, one pair at a time.
///
/// Missing or unreadable required attributes (`ce_id`, `ce_type`, `ce_source`,
/// `ce_time`, `content-type`) are [`Error::Malformed`], and so is a value that is not
/// UTF-8 where the envelope keeps it as text; `x-palisade-*` pairs are skipped;
/// everything else is a free header. Of a name given twice, the last value counts.
///
/// Values come as bytes, and only those kept as text are checked for UTF-8 (a broker
/// whose header values are bytes, Kafka, need not check them all first): the id and
/// the time are parsed from their bytes, and the type, source and content type are
/// compared with names already kept, so a usual record checks one value, its key.
#[derive(Default)]
pub(crate) struct Decoder<'a> {
    id: Option<&'a [u8]>,
    event_type: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    time: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    correlation_id: Option<&'a [u8]>,
    causation_id: Option<&'a [u8]>,
    /// The free headers, once there is one (none to drop for an envelope without).
    headers: Option<BTreeMap<String, String>>,
    /// The first free header that is not UTF-8.
    not_utf8: Option<Error>,
}

impl<'a> Decoder<'a> {
    /// A decoder that took `pairs`, read as text, each with [`pair`](Self::pair).
    pub(crate) fn of<I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut decoder = Self::default();
        for (name, value) in pairs {
            decoder.pair(name.as_bytes(), value.as_bytes());
        }
        decoder
    }

    /// Takes one wire pair. Its name comes as bytes, compared with the attributes' names
    /// as they are; only a free header's name must be UTF-8 (else the envelope is
    /// malformed), since it is kept as text.
    pub(crate) fn pair(&mut self, name: &[u8], value: &'a [u8]) {
        // By length first: one comparison of lengths picks the only attribute the name
        // can be (two for seven bytes), where a `match` on the names compared them in
        // turn, calling `memcmp` for each.
        let slot = match name.len() {
            5 if name == ID.as_bytes() => &mut self.id,
            7 if name == TYPE.as_bytes() => &mut self.event_type,
            7 if name == TIME.as_bytes() => &mut self.time,
            9 if name == SOURCE.as_bytes() => &mut self.source,
            10 if name == SUBJECT.as_bytes() => &mut self.key,
            12 if name == CONTENT_TYPE.as_bytes() => &mut self.content_type,
            14 if name == CAUSATION_ID.as_bytes() => &mut self.causation_id,
            16 if name == CORRELATION_ID.as_bytes() => &mut self.correlation_id,
            _ => return self.free(name, value),
        };
        *slot = Some(value);
    }

    /// Takes the attributes [`try_encode_each`] writes first, in its order, from the
    /// pairs `at` yields by position (`None` past the last one, or for a pair to leave
    /// to [`pair`](Self::pair)); returns the position of the first pair not taken,
    /// from which the caller goes on with `pair`. Taking a pair here is what `pair`
    /// does with it, so the envelope read is the same either way.
    ///
    /// Each attribute is checked at a branch of its own, which a stream of like records
    /// takes the same way every time: the CPU predicts it. `pair`'s `match` on the
    /// name's length jumps through a table to a different arm for each pair of a
    /// record, and over Kafka headers (read between calls into librdkafka) that jump
    /// missed nearly every time: on an AMD EPYC, `pair` alone was 4% of a consuming
    /// thread's time, at twelve instructions a call (see BENCHMARKS.md, session 15).
    #[inline]
    pub(crate) fn leading(&mut self, at: impl Fn(usize) -> Option<(&'a [u8], &'a [u8])>) -> usize {
        let mut next = 0;
        let mut pair = at(next);
        macro_rules! take {
            ($name:expr, $field:ident, or $missing:expr) => {
                match pair {
                    Some((name, value)) if name == $name.as_bytes() => {
                        self.$field = Some(value);
                        next += 1;
                        pair = at(next);
                    }
                    _ => $missing,
                }
            };
        }
        take!(ID, id, or return next);
        take!(TYPE, event_type, or return next);
        take!(SOURCE, source, or return next);
        take!(TIME, time, or return next);
        take!(CONTENT_TYPE, content_type, or return next);
        take!(SUBJECT, key, or());
        take!(CORRELATION_ID, correlation_id, or());
        // The last one, without reading the pair after it.
        match pair {
            Some((name, value)) if name == CAUSATION_ID.as_bytes() => {
                self.causation_id = Some(value);
                next + 1
            }
            _ => next,
        }
    }

    /// A pair that is no attribute. Never inlined: kept out of [`pair`](Self::pair), its
    /// formatting and allocating would make every attribute pay for saving registers.
    #[inline(never)]
    fn free(&mut self, name: &[u8], value: &[u8]) {
        if name.starts_with(INTERNAL_PREFIX.as_bytes()) {
            return;
        }
        let name = match std::str::from_utf8(name) {
            Ok(name) => name,
            Err(e) => {
                self.not_utf8.get_or_insert_with(|| {
                    let name = String::from_utf8_lossy(name);
                    malformed(format!("header name {name:?} is not UTF-8: {e}"))
                });
                return;
            }
        };
        match std::str::from_utf8(value) {
            Ok(value) => {
                let name = name.strip_prefix(ESCAPE).unwrap_or(name);
                self.headers
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name.to_owned(), value.to_owned());
            }
            Err(e) => {
                self.not_utf8.get_or_insert_with(|| not_utf8(name, e));
            }
        }
    }

    /// The envelope, with `payload` as its body.
    pub(crate) fn finish(self, payload: Bytes) -> Result<Envelope, Error> {
        self.finish_after(payload, &mut LastRead::default())
    }

    /// [`finish`](Self::finish) for a reader of many envelopes, which remembers what it
    /// read last in `last`.
    pub(crate) fn finish_after(
        self,
        payload: Bytes,
        last: &mut LastRead,
    ) -> Result<Envelope, Error> {
        let mut envelope = Envelope {
            id: Uuid::nil(),
            event_type: Borrowed(""),
            source: Borrowed(""),
            key: None,
            time: DateTime::UNIX_EPOCH,
            content_type: Borrowed(""),
            correlation_id: None,
            causation_id: None,
            headers: BTreeMap::new(),
            payload: Bytes::new(),
        };
        self.fill(payload, last, &mut envelope)?;
        Ok(envelope)
    }

    /// [`finish_after`](Self::finish_after) into an envelope read before, every field
    /// overwritten: the key and the two ids go into the strings already there, so a
    /// reader that is handed its envelopes back does not allocate them again. After an
    /// error, `envelope` holds some fields of each and is fit only to be filled again.
    pub(crate) fn fill(
        self,
        payload: Bytes,
        last: &mut LastRead,
        envelope: &mut Envelope,
    ) -> Result<(), Error> {
        if let Some(error) = self.not_utf8 {
            return Err(error);
        }
        let text =
            |name: &str, value: &'a [u8]| std::str::from_utf8(value).map_err(|e| not_utf8(name, e));
        let owned = |name: &str, value: Option<&'a [u8]>, into: &mut Option<String>| {
            match (value, into) {
                (None, into) => *into = None,
                (Some(value), Some(into)) => {
                    let value = text(name, value)?;
                    into.clear();
                    into.push_str(value);
                }
                (Some(value), into) => *into = Some(text(name, value)?.to_owned()),
            }
            Ok::<_, Error>(())
        };
        let kept = |name: &str, value: &[u8]| {
            super::names::name_of_bytes(value).map_err(|e| not_utf8(name, e))
        };
        // The kept name read last for this attribute when `value` is it, else the one
        // looked up (and then remembered).
        let kept_as = |name: &str, value: &[u8], last: &mut Option<&'static str>| {
            if let Some(same) = last.filter(|same| same.as_bytes() == value) {
                return Ok(Borrowed(same));
            }
            let kept = kept(name, value)?;
            *last = match kept {
                Borrowed(kept) => Some(kept),
                std::borrow::Cow::Owned(_) => None,
            };
            Ok::<_, Error>(kept)
        };
        let id = required(ID, self.id)?;
        envelope.id = Uuid::try_parse_ascii(id)
            .map_err(|e| malformed(format!("{ID} {:?}: {e}", String::from_utf8_lossy(id))))?;
        let time = required(TIME, self.time)?;
        envelope.time = match parse_time(time, last) {
            Some(time) => time,
            None => {
                let time = text(TIME, time)?;
                DateTime::parse_from_rfc3339(time)
                    .map_err(|e| malformed(format!("{TIME} {time:?}: {e}")))?
                    .with_timezone(&Utc)
            }
        };
        let content_type = required(CONTENT_TYPE, self.content_type)?;
        envelope.event_type =
            kept_as(TYPE, required(TYPE, self.event_type)?, &mut last.event_type)?;
        envelope.source = kept_as(SOURCE, required(SOURCE, self.source)?, &mut last.source)?;
        owned(SUBJECT, self.key, &mut envelope.key)?;
        // The common one is kept without an allocation.
        envelope.content_type = if content_type == crate::codec::JsonCodec::CONTENT_TYPE.as_bytes()
        {
            Borrowed(crate::codec::JsonCodec::CONTENT_TYPE)
        } else {
            kept(CONTENT_TYPE, content_type)?
        };
        owned(
            CORRELATION_ID,
            self.correlation_id,
            &mut envelope.correlation_id,
        )?;
        owned(CAUSATION_ID, self.causation_id, &mut envelope.causation_id)?;
        // An empty map left as it is (the usual case): dropping one walks it.
        match self.headers {
            Some(headers) => envelope.headers = headers,
            None if envelope.headers.is_empty() => {}
            None => envelope.headers = BTreeMap::new(),
        }
        envelope.payload = payload;
        Ok(())
    }
}

fn not_utf8(name: &str, error: std::str::Utf8Error) -> Error {
    malformed(format!("header {name:?} is not UTF-8: {error}"))
}

fn required<'a>(name: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], Error> {
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
        let last = &mut LastRead::default();
        assert!(parse_time(b"2026-13-24T05:00:00Z", last).is_none());
        assert!(parse_time(b"2026-11-24T24:00:00Z", last).is_none());
        assert!(parse_time(b"2026-11-24T05:60:00Z", last).is_none());
        assert!(parse_time(b"2026-11-24T05:00:61Z", last).is_none());
        Ok(())
    }

    #[test]
    fn a_value_that_is_not_utf8_is_malformed_where_it_is_kept_as_text() {
        let envelope = Envelope::new("t", "s", Vec::new())
            .with_key("k")
            .with_header("tenant", "acme");
        let bad: &[u8] = b"\xff\xfe";
        for name in [ID, TYPE, SOURCE, TIME, CONTENT_TYPE, SUBJECT, "tenant"] {
            let mut decoder = Decoder::default();
            let pairs = encode(&envelope);
            for (n, v) in &pairs {
                decoder.pair(n.as_bytes(), if n == name { bad } else { v.as_bytes() });
            }
            let result = decoder.finish(Bytes::new());
            assert!(
                matches!(&result, Err(Error::Malformed { .. })),
                "{name}: {result:?}"
            );
        }
    }

    /// A free header's name is kept as text: one that is not UTF-8 makes the envelope
    /// malformed, with the name (lossily) in the reason. Our own internal headers are
    /// skipped by their prefix, whatever follows it.
    #[test]
    fn a_free_header_name_that_is_not_utf8_is_malformed() -> Result<(), Error> {
        let envelope = Envelope::new("t", "s", Vec::new());
        let pairs = encode(&envelope);
        let mut decoder = Decoder::of(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
        decoder.pair(b"tenant\xff", b"acme");
        match decoder.finish(Bytes::new()) {
            Err(Error::Malformed { reason }) => {
                assert!(reason.contains("tenant\u{fffd}"), "{reason}");
            }
            other => panic!("expected a malformed envelope, got {other:?}"),
        }
        let mut decoder = Decoder::of(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
        decoder.pair(b"x-palisade-\xff", b"1");
        assert_eq!(decoder.finish(Bytes::new())?.id, envelope.id);
        Ok(())
    }

    #[test]
    fn the_last_value_of_a_repeated_attribute_counts() -> Result<(), Error> {
        let envelope = Envelope::new("t", "s", Vec::new());
        let pairs = encode(&envelope);
        let mut decoder = Decoder::of(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
        decoder.pair(TYPE.as_bytes(), b"later");
        assert_eq!(decoder.finish(Bytes::new())?.event_type, "later");
        Ok(())
    }

    /// What `pairs` (a null value as `None`) read as Kafka reads them: the leading
    /// attributes through `leading` when `leading` is set, every other pair through
    /// `pair`, null values skipped; the outcome as text, to compare.
    fn read(pairs: &[(String, Option<String>)], leading: bool) -> String {
        let mut decoder = Decoder::default();
        let first = if leading {
            decoder.leading(|at| {
                let (name, value) = pairs.get(at)?;
                Some((name.as_bytes(), value.as_deref()?.as_bytes()))
            })
        } else {
            0
        };
        for (name, value) in pairs.iter().skip(first) {
            if let Some(value) = value {
                decoder.pair(name.as_bytes(), value.as_bytes());
            }
        }
        format!("{:?}", decoder.finish(Bytes::from_static(b"{}")))
    }

    proptest! {
        /// `leading` reads what `pair` would: over the pairs our encoder writes, in its
        /// order or with some swapped, with pairs dropped, repeated, given null or other
        /// values, and free headers among them.
        #[test]
        fn leading_reads_what_pair_reads(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), 0_u8..5), 0..12),
            swaps in proptest::collection::vec(
                (any::<proptest::sample::Index>(), any::<proptest::sample::Index>()),
                0..4,
            ),
        ) {
            let envelope = Envelope::new("order.placed", "orders", b"{}".to_vec())
                .with_key("k")
                .with_correlation_id("c")
                .with_causation_id("z")
                .with_header("tenant", "acme");
            let mut pairs: Vec<(String, Option<String>)> = encode(&envelope)
                .into_iter()
                .map(|(n, v)| (n.into_owned(), Some(v.into_owned())))
                .collect();
            for (at, edit) in edits {
                let at = at.index(pairs.len().max(1));
                match edit {
                    // Dropped, made null, given another value, repeated, or a free
                    // header put in its place.
                    0 if !pairs.is_empty() => { pairs.remove(at); }
                    1 if !pairs.is_empty() => pairs[at].1 = None,
                    2 if !pairs.is_empty() => pairs[at].1 = Some("other".to_owned()),
                    3 if !pairs.is_empty() => pairs.insert(at, pairs[at].clone()),
                    _ => pairs.insert(at.min(pairs.len()), ("free".to_owned(), Some("1".to_owned()))),
                }
            }
            for (i, j) in swaps {
                if !pairs.is_empty() {
                    let n = pairs.len();
                    pairs.swap(i.index(n), j.index(n));
                }
            }
            prop_assert_eq!(read(&pairs, true), read(&pairs, false));
        }

        /// The fast time parser reads what chrono reads, or leaves the text to it: one
        /// byte of a written time replaced by any other never makes it read a
        /// different instant.
        #[test]
        fn time_parser_agrees_with_chrono(
            seconds in 0_i64..253_402_300_800,
            nanos in 0_u32..1_000_000_000,
            digits in 0_u32..4,
            at in 0_usize..30,
            byte in any::<u8>(),
        ) {
            // Up to the year 9999, with 0, 3, 6 or 9 fraction digits as often as not.
            let nanos = nanos - nanos % 10_u32.pow(9 - 3 * digits);
            let time = DateTime::from_timestamp(seconds, nanos)
                .ok_or_else(|| TestCaseError::fail("in range"))?;
            let mut text = format_time(&time).into_bytes();
            let last = &mut LastRead::default();
            prop_assert_eq!(parse_time(&text, last), Some(time));
            let at = at % text.len();
            text[at] = byte;
            // Read after the original (its minute remembered), and afresh.
            let after = parse_time(&text, last);
            prop_assert_eq!(after, parse_time(&text, &mut LastRead::default()));
            if let Some(fast) = after {
                let text = std::str::from_utf8(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let chrono = DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc));
                prop_assert_eq!(Ok(fast), chrono);
            }
        }

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

        /// Any envelope reads back as written, also into an envelope read before, and
        /// [`encoded_size`] foresees what is written.
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
            // What a writer reserves for them is enough.
            let (count, bytes) = encoded_size(&envelope);
            prop_assert_eq!(count, pairs.len());
            prop_assert!(bytes >= pairs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>());
            let back = decode_pairs(&pairs, envelope.payload.clone());
            prop_assert_eq!(back.as_ref().ok(), Some(&envelope));
            // Read again into an envelope that had every optional attribute: only this
            // one's are left.
            let mut again = Envelope::new("before", "before", b"before".to_vec())
                .with_key("before")
                .with_correlation_id("before")
                .with_causation_id("before")
                .with_header("before", "before");
            // Read after that envelope's own pairs, then once more: what the reader
            // remembers of the last one (its minute, type and source) changes nothing.
            let last = &mut LastRead::default();
            let fill = |pairs: &[(Cow<'static, str>, Cow<'static, str>)], payload: &Bytes, last: &mut LastRead, into: &mut Envelope| {
                Decoder::of(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
                    .fill(payload.clone(), last, into)
            };
            let before = again.clone();
            fill(&encode(&before), &before.payload, last, &mut again)?;
            prop_assert_eq!(&again, &before);
            for _ in 0..2 {
                fill(&pairs, &envelope.payload, last, &mut again)?;
                prop_assert_eq!(&again, &envelope);
            }
        }
    }
}
