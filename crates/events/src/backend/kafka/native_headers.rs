//! A consumed record's headers, read through librdkafka's own accessors, with names as
//! bytes.
//!
//! rdkafka's `Headers::try_get` hands a header's name out as `&str` and unwraps its
//! UTF-8 check: a record whose header name is not UTF-8 (Kafka does not check names,
//! and a producer other than ours may write one) panics the reader, and the record,
//! never committed, panics it again after every restart. Read here, a name is bytes;
//! the envelope decoder checks the names it keeps, and such a record is delivered
//! malformed, to be dead-lettered. Reading the names as bytes also spares the
//! attributes' names a UTF-8 check each: they are compared with our names as bytes.
//!
//! This is the crate's one module with `unsafe` code: three calls into librdkafka's C
//! API, which rdkafka wraps the same way.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::marker::PhantomData;

use rdkafka::bindings as rd;
use rdkafka::message::BorrowedMessage;

/// Header pairs by position: name and value as bytes, a value absent for a header
/// written without one.
pub(super) trait HeaderPairs<'a> {
    /// How many headers there are.
    fn count(&self) -> usize;
    /// The header at `at`, `None` past the last one.
    fn pair(&self, at: usize) -> Option<(&'a [u8], Option<&'a [u8]>)>;
}

/// The headers of one consumed record, borrowed from it.
pub(super) struct RecordHeaders<'a> {
    /// librdkafka's header list, which lives as long as its record.
    native: *const rd::rd_kafka_headers_t,
    count: usize,
    record: PhantomData<&'a BorrowedMessage<'a>>,
}

impl<'a> RecordHeaders<'a> {
    /// The headers of `record`; `None` when it has none.
    pub(super) fn of(record: &'a BorrowedMessage<'_>) -> Option<Self> {
        let mut native = std::ptr::null_mut();
        // SAFETY: `record.ptr()` is the live record `record` borrows. librdkafka parses
        // the record's headers once, keeps them with the record and hands out a pointer
        // to them, valid until the record is destroyed: after `'a`, since the record
        // is borrowed for `'a`. rdkafka's `Message::headers` makes the same call.
        let found = unsafe { rd::rd_kafka_message_headers(record.ptr(), &mut native) };
        if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
            return None;
        }
        // SAFETY: `native` is the record's live header list (above).
        let count = unsafe { rd::rd_kafka_header_cnt(native) };
        Some(Self {
            native,
            count,
            record: PhantomData,
        })
    }
}

impl<'a> HeaderPairs<'a> for RecordHeaders<'a> {
    #[inline]
    fn count(&self) -> usize {
        self.count
    }

    #[inline]
    fn pair(&self, at: usize) -> Option<(&'a [u8], Option<&'a [u8]>)> {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: `self.native` is the record's live header list (see `of`); librdkafka
        // checks `at` against the list's length and fills the three out-parameters only
        // for a header that is there.
        let found = unsafe {
            rd::rd_kafka_header_get_all(self.native, at, &mut name, &mut value, &mut size)
        };
        if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka keeps each header's name NUL-terminated and its value as
        // `size` bytes (or no value: a null pointer), both in the record's header list,
        // unchanged until the record is destroyed, after `'a`.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        Some((name, value))
    }
}
