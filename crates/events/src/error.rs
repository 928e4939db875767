//! The crate's error type.

/// A boxed error from a broker client, a codec or a store, kept as the source.
///
/// ```rust
/// use palisade_events::BoxError;
///
/// // The source of `Error::Encode`, `Error::Decode`, handler errors and the like.
/// let source: BoxError = "unexpected end of JSON".into();
/// let error = palisade_events::Error::Decode(source);
/// assert_eq!(std::error::Error::source(&error).map(ToString::to_string).as_deref(), Some("unexpected end of JSON"));
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong publishing, consuming or deduplicating events.
///
/// Sources (broker client errors, serde errors) are kept, never stringified, so
/// `std::error::Error::source` walks down to the driver's own error.
///
/// ```rust
/// use palisade_events::Error;
///
/// let lost = Error::connection("rabbitmq", std::io::Error::other("connection reset"));
/// assert!(lost.is_transient()); // worth retrying after a backoff
/// let bad = Error::Malformed { reason: "truncated JSON".into() };
/// assert!(!bad.is_transient()); // dead-letter it instead
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload could not be encoded.
    #[error("failed to encode the event payload")]
    Encode(#[source] BoxError),
    /// The payload could not be decoded into the handler's type.
    #[error("failed to decode the event payload")]
    Decode(#[source] BoxError),
    /// The payload's content type is not one the codec reads.
    #[error("content type {found:?} is not readable by a codec for {expected:?}")]
    ContentType {
        /// The codec's content type.
        expected: String,
        /// The delivery's content type.
        found: String,
    },
    /// A broker message could not be mapped to an [`Envelope`](crate::Envelope)
    /// (a required attribute is missing or unreadable).
    #[error("malformed message: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The broker refused or did not confirm a publish: the event may not be stored.
    #[error("the broker did not confirm the publish: {reason}")]
    NotConfirmed {
        /// Why, as the broker said it.
        reason: String,
    },
    /// The connection to the broker or store failed or was lost.
    #[error("connection to {backend} failed")]
    Connection {
        /// The backend, e.g. `rabbitmq`.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// Any other error reported by a broker client.
    #[error("{backend} error")]
    Broker {
        /// The backend, e.g. `kafka`.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// An inbox (deduplication store) failed.
    #[error("inbox error")]
    Inbox(#[source] BoxError),
    /// The subscription or bus was closed.
    #[error("closed")]
    Closed,
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Wraps a broker client's error.
    ///
    /// ```rust
    /// use palisade_events::Error;
    ///
    /// let error = Error::broker("rabbitmq", "NOT_FOUND - no exchange 'orders'");
    /// assert!(error.to_string().contains("rabbitmq"));
    /// ```
    pub fn broker(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Broker {
            backend,
            source: source.into(),
        }
    }

    /// Wraps a connection error.
    ///
    /// ```rust
    /// use palisade_events::Error;
    ///
    /// let error = Error::connection("redis", std::io::Error::other("connection refused"));
    /// assert!(error.is_transient());
    /// ```
    pub fn connection(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Connection {
            backend,
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed (connection losses,
    /// unconfirmed publishes), as opposed to errors that will repeat (bad payloads).
    ///
    /// ```rust
    /// use palisade_events::Error;
    ///
    /// assert!(Error::connection("nats", "timed out").is_transient());
    /// assert!(!Error::Config("prefetch 0".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connection { .. }
                | Self::NotConfirmed { .. }
                | Self::Broker { .. }
                | Self::Inbox(_)
        )
    }
}
