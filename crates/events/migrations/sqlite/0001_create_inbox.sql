-- The inbox: one row per (consumer, event) handled. `{{table}}` is the configured table
-- name, `{{name}}` the same without a schema.
--
-- The primary key is the deduplication: a handler inserts its row with
-- ON CONFLICT DO NOTHING in its own transaction. `event_id` holds the UUID's 16 bytes,
-- `processed_at` Unix milliseconds.
CREATE TABLE IF NOT EXISTS {{table}} (
    consumer     TEXT    NOT NULL,
    event_id     BLOB    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS {{name}}_processed_at ON {{table}} (processed_at);
