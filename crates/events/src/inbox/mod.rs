//! Idempotent consumers: an inbox remembers which events a consumer has handled, keyed
//! by (consumer name, event id), so a redelivered or duplicated event has its effect
//! once.
//!
//! At-least-once delivery means every consumer sees duplicates: a redelivery after a
//! lost ack, a publisher retrying an unconfirmed publish, two instances racing on a
//! rebalance. Two kinds of inbox answer that:
//!
//! - **Transactional (SQL).** [`SqlInbox`] (features `postgres`,
//!   `sqlite`) inserts the inbox row in the handler's **own** sqlx transaction, next to
//!   the handler's writes: both commit or neither does, so the effect happens exactly
//!   once even across crashes and concurrent instances. Use it whenever the handler
//!   writes to that database.
//! - **Claim-based.** An [`Inbox`] — [`MemoryInbox`], or `RedisInbox` (feature
//!   `redis`) — is consulted by the [`Consumer`](crate::consumer::Consumer) runtime
//!   around the handler: [`claim`](Inbox::claim) before, [`complete`](Inbox::complete)
//!   after success, [`release`](Inbox::release) after failure. A claim is a lease: if
//!   the instance dies mid-handler, the claim expires and a redelivery runs the handler
//!   again (retried, not skipped). Use it for handlers whose effect is not in a
//!   database you can share a transaction with; a crash between the effect and
//!   `complete` can still repeat the effect once.

mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
mod sql;

pub use memory::MemoryInbox;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisInbox;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[doc(hidden)]
pub use sql::EmbeddedMigrations;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use sql::SqlInbox;

use uuid::Uuid;

use crate::error::Error;
use crate::publisher::BoxFuture;

/// The answer to [`Inbox::claim`].
///
/// ```rust
/// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_events::Error> {
/// let inbox = MemoryInbox::new();
/// let id = uuid::Uuid::now_v7();
/// assert_eq!(inbox.claim("mailer", id).await?, Claim::Acquired);
/// assert_eq!(inbox.claim("mailer", id).await?, Claim::InProgress); // a concurrent duplicate
/// inbox.complete("mailer", id).await?;
/// assert_eq!(inbox.claim("mailer", id).await?, Claim::Processed); // a later duplicate
/// assert_eq!(inbox.claim("audit", id).await?, Claim::Acquired); // another consumer
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This caller may run the handler; it must [`complete`](Inbox::complete) or
    /// [`release`](Inbox::release) the claim.
    Acquired,
    /// The event was already handled: skip it (and ack it).
    Processed,
    /// Another caller holds a live claim: try again later (the claim either completes
    /// or expires).
    InProgress,
}

/// A claim-based deduplication store keyed by (consumer name, event id).
///
/// Object safe: the runtime holds an `Arc<dyn Inbox>`.
///
/// ```rust
/// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_events::Error> {
/// let inbox = MemoryInbox::new();
/// let id = uuid::Uuid::now_v7();
/// assert_eq!(inbox.claim("mailer", id).await?, Claim::Acquired);
/// inbox.release("mailer", id).await?; // the handler failed: the next delivery may try
/// assert_eq!(inbox.claim("mailer", id).await?, Claim::Acquired);
/// # Ok(()) }
/// ```
pub trait Inbox: Send + Sync + 'static {
    /// Claims `(consumer, event_id)` for processing.
    ///
    /// ```rust
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// let id = uuid::Uuid::now_v7();
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired); // handle it
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::InProgress); // another instance has it
    /// # Ok(()) }
    /// ```
    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Claim, Error>>;

    /// Marks a claimed event as handled: later claims answer [`Claim::Processed`].
    ///
    /// ```rust
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// let id = uuid::Uuid::now_v7();
    /// inbox.claim("billing", id).await?;
    /// inbox.complete("billing", id).await?;
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Processed); // a duplicate: ack it
    /// # Ok(()) }
    /// ```
    fn complete<'a>(
        &'a self,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Gives a claim up after a failed attempt, so the next delivery may claim it.
    ///
    /// ```rust
    /// use palisade_events::inbox::{Claim, Inbox, MemoryInbox};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_events::Error> {
    /// let inbox = MemoryInbox::new();
    /// let id = uuid::Uuid::now_v7();
    /// inbox.claim("billing", id).await?;
    /// inbox.release("billing", id).await?; // the handler failed
    /// assert_eq!(inbox.claim("billing", id).await?, Claim::Acquired); // the retry may run
    /// # Ok(()) }
    /// ```
    fn release<'a>(&'a self, consumer: &'a str, event_id: Uuid)
    -> BoxFuture<'a, Result<(), Error>>;
}
