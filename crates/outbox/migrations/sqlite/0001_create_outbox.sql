-- The outbox table. `{{table}}` is the configured table name, `{{name}}` the same
-- without a schema. Times the relay compares are unix milliseconds (INTEGER).
--
-- SQLite allows one writer at a time, so a relay cannot hold a transaction open while
-- it publishes: it leases rows instead (lease_owner, lease_until), and another relay
-- takes them over once the lease has expired.
CREATE TABLE IF NOT EXISTS {{table}} (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB    NOT NULL,
    topic           TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    event_key       TEXT,
    event_time      TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    headers         TEXT    NOT NULL DEFAULT '{}',
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    dead            INTEGER NOT NULL DEFAULT 0
);

-- Rows that are leased, failing or dead may block later rows of their key; the claim
-- probes this small index for every candidate row.
CREATE INDEX IF NOT EXISTS {{name}}_blocking ON {{table}} (event_key, seq)
    WHERE lease_owner IS NOT NULL OR attempts > 0 OR dead <> 0;
