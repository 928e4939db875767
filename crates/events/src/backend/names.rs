//! Event types and sources read off the wire, and consumers' names, each kept once per
//! process.
//!
//! A consumer sees the same few event types and sources over and over, and after the
//! payload, allocating a `String` for each of them was the largest cost of decoding an
//! envelope. A name of at most [`MAX_LEN`] bytes is therefore kept once, as a
//! `&'static str` the envelope borrows. At most [`MAX_NAMES`] names are kept (64 KiB
//! at most, never freed): a producer that sends ever-new names cannot grow memory
//! without bound; past the cap, names are allocated per delivery as before.
//!
//! Each thread remembers the last [`RECENT`] names it looked up, so the usual lookup
//! compares a few strings and takes no lock.
//!
//! A consumer keeps its own name here once per run, so that each handler's context
//! copies a `&'static str` instead of taking and giving back a reference count.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The longest name kept; longer ones are allocated per delivery.
const MAX_LEN: usize = 128;
/// How many names the process keeps.
#[cfg(not(test))]
const MAX_NAMES: usize = 512;
/// In this crate's unit tests, room for every name its property tests decode (each of
/// `headers`' round trips keeps a random type and source, 512 names in all): with the
/// process's cap, the tests that check a name is kept failed whenever those ran first.
/// The cap itself is tested on a `Names` of its own.
#[cfg(test)]
const MAX_NAMES: usize = 1 << 16;
/// How many names each thread remembers without the lock.
const RECENT: usize = 8;

thread_local! {
    /// The last names this thread looked up, and where the next one goes.
    static RECENT_NAMES: RefCell<([&'static str; RECENT], usize)> =
        const { RefCell::new(([""; RECENT], 0)) };
}

/// `value` as a name the envelope can hold: borrowed from the kept names when it is
/// (or can become) one of them, else owned.
pub(crate) fn name(value: &str) -> Cow<'static, str> {
    if value.len() > MAX_LEN {
        return Cow::Owned(value.to_owned());
    }
    if let Some(kept) = recent(value.as_bytes()) {
        return Cow::Borrowed(kept);
    }
    static KEPT: OnceLock<Mutex<Names>> = OnceLock::new();
    let kept = super::lock(KEPT.get_or_init(|| Mutex::new(Names::new(MAX_NAMES)))).keep(value);
    match kept {
        Some(kept) => {
            // A thread being torn down has no cache: the name is still right.
            let _ = RECENT_NAMES.try_with(|recent| {
                let (names, next) = &mut *recent.borrow_mut();
                names[*next] = kept;
                *next = (*next + 1) % RECENT;
            });
            Cow::Borrowed(kept)
        }
        None => Cow::Owned(value.to_owned()),
    }
}

/// [`name`] for a value read as bytes: a value equal to a name this thread looked up
/// lately is that name, with no UTF-8 check (every kept name is text, so equal bytes
/// are too); any other is checked, then looked up as [`name`] does.
pub(crate) fn name_of_bytes(value: &[u8]) -> Result<Cow<'static, str>, std::str::Utf8Error> {
    if value.len() <= MAX_LEN
        && let Some(kept) = recent(value)
    {
        return Ok(Cow::Borrowed(kept));
    }
    std::str::from_utf8(value).map(name)
}

/// The name equal to `value` among the last ones this thread looked up.
fn recent(value: &[u8]) -> Option<&'static str> {
    RECENT_NAMES
        .try_with(|recent| {
            recent
                .borrow()
                .0
                .iter()
                .copied()
                .find(|n| n.as_bytes() == value)
        })
        .ok()
        .flatten()
}

/// The names kept, up to a cap.
struct Names {
    kept: HashSet<&'static str>,
    cap: usize,
}

impl Names {
    fn new(cap: usize) -> Self {
        Self {
            kept: HashSet::new(),
            cap,
        }
    }

    /// The kept copy of `value`, kept now if there is room; `None` when full.
    fn keep(&mut self, value: &str) -> Option<&'static str> {
        if let Some(kept) = self.kept.get(value) {
            return Some(kept);
        }
        if self.kept.len() >= self.cap {
            return None;
        }
        let kept: &'static str = Box::leak(value.to_owned().into_boxed_str());
        self.kept.insert(kept);
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_once_and_borrowed_after() {
        let first = name("order.placed.names-test");
        let second = name("order.placed.names-test");
        let (Cow::Borrowed(first), Cow::Borrowed(second)) = (first, second) else {
            panic!("a short name is borrowed from the kept ones");
        };
        assert_eq!(first, "order.placed.names-test");
        assert!(std::ptr::eq(first, second), "one copy per process");
    }

    #[test]
    fn a_name_seen_on_another_thread_is_the_same_copy() {
        let here = name("orders.names-test-threads");
        let there = std::thread::spawn(|| name("orders.names-test-threads"))
            .join()
            .expect("thread");
        assert!(
            matches!((&here, &there), (Cow::Borrowed(a), Cow::Borrowed(b)) if std::ptr::eq(*a, *b))
        );
    }

    #[test]
    fn bytes_resolve_to_the_same_kept_name_and_are_checked() -> Result<(), std::str::Utf8Error> {
        let text = name("order.placed.names-test-bytes");
        let bytes = name_of_bytes(b"order.placed.names-test-bytes")?;
        assert!(
            matches!((&text, &bytes), (Cow::Borrowed(a), Cow::Borrowed(b)) if std::ptr::eq(*a, *b))
        );
        assert!(name_of_bytes(b"not \xff text").is_err());
        let long = "y".repeat(MAX_LEN + 1);
        assert!(matches!(name_of_bytes(long.as_bytes())?, Cow::Owned(owned) if owned == long));
        Ok(())
    }

    #[test]
    fn a_long_name_is_owned() {
        let long = "x".repeat(MAX_LEN + 1);
        assert!(matches!(name(&long), Cow::Owned(owned) if owned == long));
    }

    #[test]
    fn past_the_cap_nothing_more_is_kept() {
        let mut names = Names::new(2);
        assert!(names.keep("a").is_some());
        assert!(names.keep("b").is_some());
        assert_eq!(names.keep("c"), None, "full");
        assert_eq!(names.keep("a"), Some("a"), "kept ones are still found");
        assert_eq!(names.kept.len(), 2);
    }

    #[test]
    fn more_names_than_a_thread_remembers_still_resolve() {
        let values: Vec<String> = (0..RECENT * 3)
            .map(|i| format!("type-{i}.names-test"))
            .collect();
        for _ in 0..2 {
            for value in &values {
                assert_eq!(name(value), value.as_str());
            }
        }
    }
}
