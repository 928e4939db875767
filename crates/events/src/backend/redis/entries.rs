//! Stream entries read out of `XREADGROUP`, `XAUTOCLAIM` and `XCLAIM` replies as they
//! come, field names and values as bytes.
//!
//! redis-rs reads an entry's fields into a `HashMap<String, Value>`. An entry with a
//! field name that is not UTF-8 (Redis does not check names, and a writer other than
//! ours may add one) fails that conversion and is left out of the reply, though Redis
//! counts it delivered: it stayed pending with this consumer, was claimed again after
//! `claim_idle` and left out again, never delivered and never dead-lettered. Read
//! here, every entry comes through, and one whose fields do not make an envelope is
//! delivered malformed.

use bytes::Bytes;
use redis::Value;

/// One stream entry: its id, and its fields in the order they were written.
#[derive(Debug, PartialEq)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Vec<(Bytes, Bytes)>,
}

impl Entry {
    /// The value of the last field named `name`.
    pub(super) fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n.as_ref() == name.as_bytes())
            .map(|(_, value)| value)
    }
}

/// Why a reply could not be read: what was expected where.
pub(super) type Unreadable = String;

/// The entries of an `XREADGROUP` reply (nil when nothing came in time), of every
/// stream it names (we read one).
pub(super) fn read_reply(reply: Value) -> Result<Vec<Entry>, Unreadable> {
    if matches!(reply, Value::Nil) {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for (_stream, of_stream) in pairs(reply, "XREADGROUP streams")? {
        entries.extend(entries_of(of_stream)?);
    }
    Ok(entries)
}

/// The next cursor and the claimed entries of an `XAUTOCLAIM` reply (Redis 7 adds the
/// ids of entries deleted meanwhile, which it no longer holds: nothing to deliver).
pub(super) fn autoclaim_reply(reply: Value) -> Result<(String, Vec<Entry>), Unreadable> {
    let mut parts = array(reply, "XAUTOCLAIM reply")?.into_iter();
    let (Some(cursor), Some(claimed)) = (parts.next(), parts.next()) else {
        return Err("an XAUTOCLAIM reply without a cursor and entries".to_owned());
    };
    Ok((text(cursor, "XAUTOCLAIM cursor")?, entries_of(claimed)?))
}

/// The entries of an `XCLAIM` reply: those claimed.
pub(super) fn claim_reply(reply: Value) -> Result<Vec<Entry>, Unreadable> {
    entries_of(reply)
}

/// A list of entries, each `[id, [name, value, …]]`; an entry deleted since it was
/// delivered comes as nil (or with nil fields) and is skipped: there is nothing left
/// of it to deliver.
fn entries_of(value: Value) -> Result<Vec<Entry>, Unreadable> {
    let mut entries = Vec::new();
    for entry in array(value, "entries")? {
        if matches!(entry, Value::Nil) {
            continue;
        }
        let mut parts = array(entry, "entry")?.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err("an entry without an id and fields".to_owned());
        };
        if matches!(fields, Value::Nil) {
            continue;
        }
        let fields = match fields {
            Value::Map(fields) => fields,
            flat => {
                let flat = array(flat, "entry fields")?;
                if flat.len() % 2 != 0 {
                    return Err("entry fields that are not name-value pairs".to_owned());
                }
                let mut flat = flat.into_iter();
                std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
            }
        };
        let fields = fields
            .into_iter()
            .map(|(name, value)| Ok((bytes(name, "field name")?, bytes(value, "field value")?)))
            .collect::<Result<_, Unreadable>>()?;
        entries.push(Entry {
            id: text(id, "entry id")?,
            fields,
        });
    }
    Ok(entries)
}

/// A RESP3 map, or a RESP2 array of `[key, value]` arrays.
fn pairs(value: Value, what: &str) -> Result<Vec<(Value, Value)>, Unreadable> {
    if let Value::Map(pairs) = value {
        return Ok(pairs);
    }
    array(value, what)?
        .into_iter()
        .map(|pair| {
            let mut pair = array(pair, what)?.into_iter();
            match (pair.next(), pair.next(), pair.next()) {
                (Some(key), Some(value), None) => Ok((key, value)),
                _ => Err(format!("{what}: expected [key, value] pairs")),
            }
        })
        .collect()
}

fn array(value: Value, what: &str) -> Result<Vec<Value>, Unreadable> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(format!("{what}: expected an array, got {}", kind(&other))),
    }
}

fn bytes(value: Value, what: &str) -> Result<Bytes, Unreadable> {
    match value {
        Value::BulkString(bytes) => Ok(Bytes::from(bytes)),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Ok(Bytes::from(text)),
        Value::Int(number) => Ok(Bytes::from(number.to_string())),
        other => Err(format!("{what}: expected a string, got {}", kind(&other))),
    }
}

fn text(value: Value, what: &str) -> Result<String, Unreadable> {
    // The reply's own buffer, not a copy: a `Bytes` made from a `Vec` gives it back.
    String::from_utf8(Vec::from(bytes(value, what)?))
        .map_err(|e| format!("{what} is not UTF-8: {e}"))
}

/// A value's kind, for an error (never its content: an entry may be large).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Map(_) => "a map",
        Value::ServerError(_) => "an error",
        _ => "another kind of value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &[u8]) -> Value {
        Value::BulkString(text.to_vec())
    }

    fn entry(id: &str, fields: &[(&[u8], &[u8])]) -> Value {
        let flat = fields
            .iter()
            .flat_map(|(n, v)| [bulk(n), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id.as_bytes()), Value::Array(flat)])
    }

    #[test]
    fn every_entry_comes_through_whatever_its_field_names() -> Result<(), Unreadable> {
        let entries = vec![
            entry("1-0", &[(b"a", b"1")]),
            entry("2-0", &[(b"bad\xff", b"2"), (b"a", b"3")]),
            Value::Nil,
            Value::Array(vec![bulk(b"3-0"), Value::Nil]),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"stream"),
            Value::Array(entries.clone()),
        ])]);
        let resp3 = Value::Map(vec![(bulk(b"stream"), Value::Array(entries))]);
        for reply in [resp2, resp3] {
            let read = read_reply(reply)?;
            assert_eq!(read.len(), 2);
            assert_eq!(read[0].id, "1-0");
            assert_eq!(read[1].id, "2-0");
            assert_eq!(read[1].fields[0].0.as_ref(), b"bad\xff");
            assert_eq!(read[1].field("a").map(Bytes::as_ref), Some(&b"3"[..]));
        }
        assert!(read_reply(Value::Nil)?.is_empty());
        Ok(())
    }

    #[test]
    fn autoclaim_reply_gives_the_cursor_and_the_entries() -> Result<(), Unreadable> {
        let reply = Value::Array(vec![
            bulk(b"5-0"),
            Value::Array(vec![entry("4-0", &[(b"x", b"y")])]),
            Value::Array(vec![bulk(b"3-0")]),
        ]);
        let (cursor, claimed) = autoclaim_reply(reply)?;
        assert_eq!(cursor, "5-0");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].field("x").map(Bytes::as_ref), Some(&b"y"[..]));
        Ok(())
    }

    #[test]
    fn replies_of_another_shape_are_errors_not_panics() {
        assert!(read_reply(Value::Int(1)).is_err());
        assert!(read_reply(Value::Array(vec![Value::Int(1)])).is_err());
        let odd = Value::Array(vec![bulk(b"1-0"), Value::Array(vec![bulk(b"a")])]);
        assert!(claim_reply(Value::Array(vec![odd])).is_err());
        assert!(autoclaim_reply(Value::Array(vec![bulk(b"0-0")])).is_err());
    }
}
