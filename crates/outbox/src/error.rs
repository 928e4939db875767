//! The crate's error type.

/// Everything that can go wrong enqueueing, relaying or administering outbox rows.
///
/// Validation errors ([`EmptyTopic`](Error::EmptyTopic),
/// [`PayloadTooLarge`](Error::PayloadTooLarge)) are returned before anything is
/// written, so the caller's transaction is untouched and may go on. Driver errors keep
/// the [`sqlx::Error`] as their source.
///
/// ```rust
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use palisade_events::Envelope;
/// use palisade_outbox::{Error, Outbox};
///
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let outbox = Outbox::new().with_max_payload(8);
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// // Checked before anything is written: the caller's transaction is untouched.
/// let too_big = Envelope::new("t", "shop", "a payload over eight bytes");
/// assert!(matches!(outbox.enqueue(&mut tx, "orders", &too_big).await, Err(Error::PayloadTooLarge { .. })));
/// assert!(matches!(outbox.enqueue(&mut tx, "", &Envelope::new("t", "shop", "{}")).await, Err(Error::EmptyTopic)));
/// tx.commit().await?;
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topic is empty.
    #[error("the topic is empty")]
    EmptyTopic,
    /// The payload is larger than [`Outbox::max_payload`](crate::Outbox::max_payload).
    #[error("payload of {size} bytes exceeds the outbox limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A table name that is not `name` or `schema.name` of lowercase letters, digits and
    /// underscores.
    #[error("invalid outbox table name {0:?}: use `name` or `schema.name` of [a-z0-9_]")]
    InvalidTableName(String),
    /// A relay or outbox setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A typed event could not be encoded into an envelope.
    #[error("failed to encode the event")]
    Encode(#[source] palisade_events::Error),
    /// The database refused or failed a statement.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Running the shipped migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be turned back into an envelope (its headers column is not
    /// a JSON object of strings).
    #[error("outbox row {seq} is malformed: {reason}")]
    MalformedRow {
        /// The row's sequence number.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
}
