//! Payload codecs.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Turns typed events into payload bytes and back.
///
/// JSON ([`JsonCodec`]) is the default; implement this trait to carry another format.
///
/// ```rust
/// use palisade_events::codec::{Codec, JsonCodec};
///
/// let codec = JsonCodec;
/// let bytes = codec.encode(&vec![1, 2, 3])?;
/// assert_eq!(codec.content_type(), "application/json");
/// assert_eq!(codec.decode::<Vec<u8>>(&bytes)?, [1, 2, 3]);
/// assert!(!codec.accepts("application/protobuf"));
/// # Ok::<(), palisade_events::Error>(())
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The content type this codec writes.
    ///
    /// ```rust
    /// use palisade_events::{Codec, JsonCodec};
    ///
    /// assert_eq!(JsonCodec.content_type(), "application/json");
    /// ```
    fn content_type(&self) -> &str;

    /// Whether this codec can read a payload of the given content type.
    ///
    /// ```rust
    /// use palisade_events::{Codec, JsonCodec};
    ///
    /// assert!(JsonCodec.accepts("application/json; charset=utf-8"));
    /// assert!(JsonCodec.accepts("application/cloudevents+json"));
    /// assert!(!JsonCodec.accepts("text/plain"));
    /// ```
    fn accepts(&self, content_type: &str) -> bool {
        content_type == self.content_type()
    }

    /// Encodes a value.
    ///
    /// ```rust
    /// use palisade_events::{Codec, JsonCodec};
    ///
    /// assert_eq!(&JsonCodec.encode(&[1, 2])?[..], b"[1,2]");
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, Error>;

    /// Decodes a value.
    ///
    /// ```rust
    /// use palisade_events::{Codec, JsonCodec};
    ///
    /// assert_eq!(JsonCodec.decode::<Vec<u8>>(b"[1,2]")?, [1, 2]);
    /// assert!(JsonCodec.decode::<Vec<u8>>(b"[1,").is_err()); // truncated: an error, not a panic
    /// # Ok::<(), palisade_events::Error>(())
    /// ```
    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error>;
}

/// The JSON codec (`application/json`).
///
/// ```
/// use palisade_events::{Codec, JsonCodec};
///
/// let bytes = JsonCodec.encode(&vec![1, 2, 3])?;
/// let back: Vec<u32> = JsonCodec.decode(&bytes)?;
/// assert_eq!(back, [1, 2, 3]);
/// assert!(JsonCodec.decode::<Vec<u32>>(b"[1, 2").is_err());
/// # Ok::<(), palisade_events::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl JsonCodec {
    /// `application/json`.
    pub const CONTENT_TYPE: &'static str = "application/json";
}

impl Codec for JsonCodec {
    fn content_type(&self) -> &str {
        Self::CONTENT_TYPE
    }

    fn accepts(&self, content_type: &str) -> bool {
        if content_type == Self::CONTENT_TYPE {
            return true;
        }
        // `application/json; charset=utf-8` and `application/cloudevents+json` are JSON too.
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        essence == Self::CONTENT_TYPE || essence.ends_with("+json")
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, Error> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::Encode(Box::new(e)))
    }

    #[inline]
    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(payload).map_err(|e| Error::Decode(Box::new(e)))
    }
}
