//! The outbox handle: table name, limits, validation and the shipped migrations.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::collections::BTreeMap;
use std::sync::Arc;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use palisade_events::inbox::EmbeddedMigrations;
use palisade_events::{Envelope, Event};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use sqlx::migrate::Migrator;

use crate::error::Error;

/// The default table name.
///
/// ```rust
/// use palisade_outbox::{DEFAULT_TABLE, Outbox};
///
/// assert_eq!(Outbox::new().table(), DEFAULT_TABLE);
/// assert_eq!(Outbox::new().with_table("billing.outbox")?.table(), "billing.outbox");
/// # Ok::<(), palisade_outbox::Error>(())
/// ```
pub const DEFAULT_TABLE: &str = "palisade_outbox";

/// The default payload limit: 1 MiB, below every broker's own message limit
/// (RabbitMQ 128 MiB, Kafka 1 MB by default, NATS 1 MiB) so an event the outbox
/// accepted can be published.
///
/// ```rust
/// use palisade_outbox::{DEFAULT_MAX_PAYLOAD, Outbox};
///
/// assert_eq!(Outbox::new().max_payload(), DEFAULT_MAX_PAYLOAD);
/// assert_eq!(Outbox::new().with_max_payload(4096).max_payload(), 4096);
/// ```
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A transactional outbox: where events are written, inside the caller's own
/// transaction, to be published later by a [`Relay`](crate::Relay).
///
/// Cheap to clone. The table name, payload limit and (PostgreSQL) notification
/// channel are fixed when it is built; [`Outbox::new`] uses [`DEFAULT_TABLE`].
///
/// ```
/// use palisade_outbox::Outbox;
///
/// let outbox = Outbox::new().with_table("billing.outbox")?.with_max_payload(64 * 1024);
/// assert_eq!(outbox.table(), "billing.outbox");
/// assert_eq!(outbox.channel(), "billing_outbox");
/// # Ok::<(), palisade_outbox::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    table: String,
    name: String,
    channel: String,
    max_payload: usize,
    notify: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    /// An outbox on the table [`DEFAULT_TABLE`] with a [`DEFAULT_MAX_PAYLOAD`] limit
    /// and LISTEN/NOTIFY wake-ups on PostgreSQL.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// let outbox = Outbox::new();
    /// assert_eq!(outbox.table(), palisade_outbox::DEFAULT_TABLE);
    /// assert_eq!(outbox.max_payload(), palisade_outbox::DEFAULT_MAX_PAYLOAD);
    /// assert!(outbox.notifies());
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                table: DEFAULT_TABLE.to_owned(),
                name: DEFAULT_TABLE.to_owned(),
                channel: DEFAULT_TABLE.to_owned(),
                max_payload: DEFAULT_MAX_PAYLOAD,
                notify: true,
            }),
        }
    }

    /// Uses another table: `name` or `schema.name`, lowercase ASCII letters, digits and
    /// underscores, each part at most 48 characters (so derived index names fit
    /// PostgreSQL's 63). The notification channel becomes the name with `.` → `_`.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// let outbox = Outbox::new().with_table("billing.outbox")?;
    /// assert_eq!(outbox.channel(), "billing_outbox");
    /// assert!(Outbox::new().with_table("Outbox; DROP TABLE x").is_err());
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn with_table(self, table: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = table.split('.').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && p.len() <= 48
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(valid_part) {
            return Err(Error::InvalidTableName(table.to_owned()));
        }
        let name = parts.last().copied().unwrap_or(table).to_owned();
        Ok(self.map(|inner| {
            inner.table = table.to_owned();
            inner.name = name;
            inner.channel = table.replace('.', "_");
        }))
    }

    /// Sets the largest payload [`enqueue`](Self::enqueue) accepts (default
    /// [`DEFAULT_MAX_PAYLOAD`]).
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// let outbox = Outbox::new().with_max_payload(64 * 1024);
    /// assert_eq!(outbox.max_payload(), 65_536);
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    #[must_use]
    pub fn with_max_payload(self, bytes: usize) -> Self {
        self.map(|inner| inner.max_payload = bytes)
    }

    /// Turns the `pg_notify` in PostgreSQL enqueues on or off (default on). Off, relays
    /// find new rows by polling, or when the application calls
    /// [`wake`](Self::wake) after its commit.
    ///
    /// A `NOTIFY` makes PostgreSQL take a database-wide lock when the transaction
    /// commits and hold it until the commit is flushed, so transactions that enqueue
    /// commit one at a time. With a fast WAL flush that is no limit (measured here:
    /// 1 000 commits/s offered, all committed, commit → publish p99 3.6 ms); on slow
    /// disks or CPU-starved hosts it becomes one (about 400/s on the same machine
    /// saturated by compilers). There, turn it off and call `wake` after commit.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// // Relays poll (or the application calls `wake` after commit) instead.
    /// assert!(!Outbox::new().with_notify(false).notifies());
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    #[must_use]
    pub fn with_notify(self, notify: bool) -> Self {
        self.map(|inner| inner.notify = notify)
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The table name, possibly schema-qualified.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// assert_eq!(Outbox::new().with_table("shop_outbox")?.table(), "shop_outbox");
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The PostgreSQL notification channel relays listen on.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// assert_eq!(Outbox::new().with_table("shop.outbox")?.channel(), "shop_outbox");
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The payload limit in bytes.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// assert_eq!(Outbox::new().with_max_payload(1024).max_payload(), 1024);
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload
    }

    /// Whether PostgreSQL enqueues notify the channel.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// assert!(Outbox::new().notifies()); // on by default
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn notifies(&self) -> bool {
        self.inner.notify
    }

    /// Checks a row before anything is written.
    pub(crate) fn validate(&self, topic: &str, envelope: &Envelope) -> Result<(), Error> {
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        if envelope.payload.len() > self.inner.max_payload {
            return Err(Error::PayloadTooLarge {
                size: envelope.payload.len(),
                limit: self.inner.max_payload,
            });
        }
        Ok(())
    }

    /// Encodes a typed event into an envelope with the JSON codec.
    pub(crate) fn envelope_for<E: Event>(event: &E, source: &str) -> Result<Envelope, Error> {
        Envelope::from_event(event, source.to_owned()).map_err(Error::Encode)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// A stable 31-bit number naming this table in advisory locks and migration versions.
    pub(crate) fn table_hash(&self) -> i32 {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in self.inner.table.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        i32::try_from(h & 0x7fff_ffff).unwrap_or(0)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// Replaces `{{table}}` and `{{name}}` in a shipped SQL file.
    pub(crate) fn render(&self, sql: &str) -> String {
        sql.replace("{{table}}", &self.inner.table)
            .replace("{{name}}", &self.inner.name)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The migrations for this table as `(version, description, sql)`, to fold into an
    /// application's own migrations instead of calling `migrate`.
    ///
    /// Versions are `7_000_000_000_000 + (table hash % 1_000_000) * 100 + n`: derived
    /// from the table name, so two outboxes in one database (and an application's own
    /// counter or timestamp versions) never collide.
    fn migrations(&self, files: &[(&'static str, &'static str)]) -> Vec<(i64, String, String)> {
        let base = 7_000_000_000_000_i64 + i64::from(self.table_hash() % 1_000_000) * 100;
        files
            .iter()
            .enumerate()
            .map(|(i, (description, sql))| {
                (
                    base + i64::try_from(i).unwrap_or(0) + 1,
                    format!("{description} ({})", self.inner.table),
                    self.render(sql),
                )
            })
            .collect()
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn migrator(
        &self,
        files: &[(&'static str, &'static str)],
    ) -> impl Future<Output = Result<Migrator, Error>> + Send + 'static {
        let source = EmbeddedMigrations(self.migrations(files));
        async move {
            let mut migrator = Migrator::new(source).await?;
            // The application's own migrator shares `_sqlx_migrations`; ours must not
            // fail because it sees versions it does not know, nor the other way round
            // (set `ignore_missing` on yours too, or fold ours in).
            migrator.set_ignore_missing(true);
            Ok(migrator)
        }
    }
}

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[(
    "create outbox",
    include_str!("../migrations/postgres/0001_create_outbox.sql"),
)];

#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_MIGRATIONS: &[(&str, &str)] = &[(
    "create outbox",
    include_str!("../migrations/sqlite/0001_create_outbox.sql"),
)];

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
impl Outbox {
    /// The PostgreSQL migrations rendered for this table, as `(version, description,
    /// sql)`, for applications that fold them into their own migrations instead of
    /// calling [`migrate`](Self::migrate).
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// // To fold the outbox's migrations into the application's own migrator.
    /// let migrations = Outbox::new().with_table("shop_outbox")?.postgres_migrations();
    /// assert!(migrations.iter().any(|(_, _, sql)| sql.contains("shop_outbox")));
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn postgres_migrations(&self) -> Vec<(i64, String, String)> {
        self.migrations(POSTGRES_MIGRATIONS)
    }
}

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
impl Outbox {
    /// The SQLite migrations rendered for this table, as `(version, description, sql)`.
    ///
    /// ```rust
    /// use palisade_outbox::Outbox;
    ///
    /// let migrations = Outbox::new().sqlite_migrations();
    /// assert!(migrations.iter().all(|(version, _, _)| *version > 0));
    /// assert!(!migrations.is_empty());
    /// # Ok::<(), palisade_outbox::Error>(())
    /// ```
    pub fn sqlite_migrations(&self) -> Vec<(i64, String, String)> {
        self.migrations(SQLITE_MIGRATIONS)
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Encodes headers for the `headers` column.
pub(crate) fn encode_headers(headers: &BTreeMap<String, String>) -> String {
    if headers.is_empty() {
        return "{}".to_owned();
    }
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Decodes the `headers` column.
pub(crate) fn decode_headers(seq: i64, json: &str) -> Result<BTreeMap<String, String>, Error> {
    if json == "{}" {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(json).map_err(|e| Error::MalformedRow {
        seq,
        reason: format!("headers: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        assert!(Outbox::new().with_table("outbox").is_ok());
        assert!(Outbox::new().with_table("app.outbox_2").is_ok());
        for bad in ["", "a.b.c", "Outbox", "x;drop", "1abc", "a..b", "\"q\""] {
            assert!(
                matches!(
                    Outbox::new().with_table(bad),
                    Err(Error::InvalidTableName(_))
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn empty_topic_and_oversized_payload_are_rejected() {
        let outbox = Outbox::new().with_max_payload(4);
        let small = Envelope::new("t", "s", b"1234".to_vec());
        let big = Envelope::new("t", "s", b"12345".to_vec());
        assert!(outbox.validate("orders", &small).is_ok());
        assert!(matches!(
            outbox.validate("", &small),
            Err(Error::EmptyTopic)
        ));
        assert!(matches!(
            outbox.validate("orders", &big),
            Err(Error::PayloadTooLarge { size: 5, limit: 4 })
        ));
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn migrations_are_rendered_for_the_table_with_distinct_versions() {
        let a = Outbox::new();
        let b = Outbox::new()
            .with_table("app.events_out")
            .unwrap_or_default();
        let files = &[(
            "x",
            "CREATE TABLE {{table}} (); CREATE INDEX {{name}}_i ON {{table}} (a);",
        )];
        let ma = a.migrations(files);
        let mb = b.migrations(files);
        assert_eq!(
            ma[0].2,
            "CREATE TABLE palisade_outbox (); CREATE INDEX palisade_outbox_i ON palisade_outbox (a);"
        );
        assert_eq!(
            mb[0].2,
            "CREATE TABLE app.events_out (); CREATE INDEX events_out_i ON app.events_out (a);"
        );
        assert_ne!(ma[0].0, mb[0].0);
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn headers_round_trip() -> Result<(), Error> {
        let mut h = BTreeMap::new();
        h.insert("tenant".to_owned(), "acme \"x\"".to_owned());
        assert_eq!(decode_headers(1, &encode_headers(&h))?, h);
        assert!(decode_headers(1, "{}")?.is_empty());
        assert!(decode_headers(1, "[1]").is_err());
        Ok(())
    }
}
